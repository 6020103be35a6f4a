"""Odd videos handled truthfully: text, still images, truncated files, rotation, VFR, FFmpeg errors.

Every case writes its own small file; the old decoder answered each of them silently (text
drawn as frames, a truncated file's first part, sideways phone videos, index-spaced VFR
frames) or with raw FFmpeg error numbers.
"""

from __future__ import annotations

import struct
from fractions import Fraction

import numpy as np
import pytest

av = pytest.importorskip("av")

from spava.media.sampling import FrameSampling, plan_frame_sampling  # noqa: E402
from spava.media.synthetic import make_synthetic_frames, read_frame_index, write_synthetic_video  # noqa: E402
from spava.media.video import (  # noqa: E402
    VideoDecodeError,
    decode_video,
    decode_video_into,
    plan_video_sampling,
    probe_video,
)

H264 = "libx264" if "libx264" in av.codecs_available else "mpeg4"


def _plain_decode(path) -> np.ndarray:
    """All frames as stored (no rotation), by plain PyAV: the reference."""
    with av.open(str(path)) as container:
        return np.stack([frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)])


def _error(source, sampling=None, **kwargs) -> str:
    with pytest.raises(VideoDecodeError) as info:
        decode_video(source, sampling or FrameSampling(), **kwargs)
    return str(info.value)


# --- not videos ---------------------------------------------------------------------------


def test_text_file_is_refused_naming_what_ffmpeg_found(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("minutes of the meeting, not a video\n" * 40)
    message = _error(path)
    assert "is text, not a video" in message
    assert "'tty'" in message and "video: ansi" in message  # the demuxer and the stream it made
    with pytest.raises(VideoDecodeError, match="is text"):
        probe_video(path)


@pytest.mark.parametrize("suffix, codec, format_name", [(".png", "png", "png_pipe"), (".jpg", "mjpeg", "jpeg_pipe")])
def test_still_image_is_refused_with_a_hint(tmp_path, suffix, codec, format_name):
    path = tmp_path / f"photo{suffix}"
    with av.open(str(path), mode="w", format="image2") as container:
        stream = container.add_stream(codec, rate=1)
        stream.width, stream.height = 48, 32
        stream.pix_fmt = "rgb24" if codec == "png" else "yuvj420p"
        frame = av.VideoFrame.from_ndarray(make_synthetic_frames(1, 32, 48)[0], format="rgb24")
        for packet in stream.encode(frame.reformat(format=stream.pix_fmt)):
            container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    message = _error(path.read_bytes())  # from bytes FFmpeg probes the content: "<codec>_pipe"
    assert "still image" in message and format_name in message and "[1, H, W, 3]" in message


def test_subtitles_only_are_refused_naming_format_and_streams(tmp_path):
    path = tmp_path / "talk.srt"
    path.write_text("1\n00:00:01,000 --> 00:00:02,000\nHello\n\n2\n00:00:03,000 --> 00:00:04,000\nWorld\n")
    message = _error(path)
    assert "no video stream (found: subtitle)" in message and "'srt'" in message


# --- FFmpeg errors ------------------------------------------------------------------------


@pytest.mark.parametrize("data", [b"\x00" * 64, b"RIFF" + b"\x13" * 300], ids=["zeros", "fake_riff"])
def test_ffmpeg_errors_are_readable(data):
    message = _error(data)
    assert "[Errno" not in message and "1094995529" not in message
    assert "invalid data found when processing input" in message
    assert not message.lower().startswith("video:")  # the stage adds its own prefix


# --- truncated files ----------------------------------------------------------------------


def _faststart_video(path, num_frames=40, fps=8):
    """moov first, so a cut file still opens and declares the full length (5 s)."""
    with av.open(str(path), mode="w", options={"movflags": "faststart"}) as container:
        stream = container.add_stream(H264, rate=Fraction(fps))
        stream.width, stream.height, stream.pix_fmt = 96, 64, "yuv420p"
        stream.codec_context.gop_size = 8
        for rgb in make_synthetic_frames(num_frames, 64, 96, seed=4):
            for packet in stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path.read_bytes()


def _cut_after_frames(data: bytes, num_frames: int) -> bytes:
    """Cut the file in the middle of the packet that follows the first ``num_frames`` in file order."""
    with av.open(__import__("io").BytesIO(data)) as container:
        positions = sorted(p.pos for p in container.demux(video=0) if p.size)
    return data[: positions[num_frames] + 10]


def test_truncated_file_fails_below_min_decoded_fraction(tmp_path):
    truncated = _cut_after_frames(_faststart_video(tmp_path / "full.mp4"), 17)
    info = probe_video(truncated)
    assert info.container_duration == pytest.approx(5.0)
    assert info.num_frames == 17 and info.duration == pytest.approx(17 / 8)
    message = _error(truncated)  # default min_decoded_fraction=0.9
    assert "cover 2.12 s of the 5.00 s" in message and "42%" in message
    assert "min_decoded_fraction=0.9" in message and "video.min_decoded_fraction" in message


def test_truncated_file_above_the_threshold_is_answered_with_a_warning(tmp_path):
    truncated = _cut_after_frames(_faststart_video(tmp_path / "full.mp4"), 17)
    decoded = decode_video(truncated, FrameSampling(fps=2.0), min_decoded_fraction=0.4)
    assert [read_frame_index(frame) for frame in decoded.frames] == list(decoded.plan.indices)
    assert max(decoded.plan.indices) == 16
    assert decoded.report.decoded_fraction == pytest.approx(17 / 40)
    (warning,) = decoded.report.warnings
    assert "2.12 s of the 5.00 s" in warning and "truncated" in warning


def test_complete_file_has_no_warning(tmp_path):
    decoded = decode_video(_faststart_video(tmp_path / "full.mp4"), FrameSampling(fps=2.0))
    assert decoded.report.warnings == [] and decoded.report.decoded_fraction == pytest.approx(1.0)


# --- rotation -----------------------------------------------------------------------------


@pytest.mark.parametrize("rotation", [90, 180, 270])
def test_rotation_is_applied(tmp_path, rotation):
    path = write_synthetic_video(tmp_path / f"phone{rotation}.mp4", num_frames=12, height=64, width=96,
                                 rotation=rotation, codec=H264)
    info = probe_video(path)
    assert info.rotation == rotation
    assert (info.width, info.height) == ((64, 96) if rotation in (90, 270) else (96, 64))
    decoded = decode_video(path, FrameSampling(fps=None, num_frames=4))
    stored = _plain_decode(path)[list(decoded.plan.indices)]
    # Clockwise by `rotation`: numpy's rot90 turns counter-clockwise for positive k.
    np.testing.assert_array_equal(decoded.frames, np.rot90(stored, -rotation // 90, axes=(1, 2)))
    turned_back = np.rot90(decoded.frames, rotation // 90, axes=(1, 2))
    assert [read_frame_index(frame) for frame in turned_back] == list(decoded.plan.indices)


def _set_tkhd_matrix(data: bytes, matrix: tuple[int, ...]) -> bytes:
    """Overwrite the video track header's transformation matrix (ISO 14496-12 'tkhd')."""
    at = data.index(b"tkhd") + 4
    version = data[at]
    offset = at + (52 if version == 1 else 40)  # version/flags, times, track id, duration, layer...
    return data[:offset] + struct.pack(">9i", *matrix) + data[offset + 36 :]


def test_iphone_portrait_matrix_turns_frames_clockwise(tmp_path):
    # The matrix an iPhone writes for a portrait recording: a=0, b=1, c=-1, d=0 (16.16 fixed
    # point), which players show turned a quarter clockwise (ffprobe: rotation of -90 degrees).
    path = write_synthetic_video(tmp_path / "landscape.mp4", num_frames=6, height=64, width=96, codec=H264)
    portrait = tmp_path / "portrait.mov"
    one, w_one = 1 << 16, 1 << 30
    portrait.write_bytes(_set_tkhd_matrix(path.read_bytes(), (0, one, 0, -one, 0, 0, 64 * one, 0, w_one)))
    info = probe_video(portrait)
    assert (info.rotation, info.width, info.height) == (90, 64, 96)
    decoded = decode_video(portrait, FrameSampling(fps=None, num_frames=2))
    stored = _plain_decode(path)[list(decoded.plan.indices)]
    np.testing.assert_array_equal(decoded.frames, np.rot90(stored, -1, axes=(1, 2)))
    # The index code sits in the stored top-left corner, which a clockwise turn moves to the top-right.
    assert read_frame_index(np.rot90(decoded.frames[1], 1)) == decoded.plan.indices[1]


def test_rotated_video_into_out_uses_displayed_shape(tmp_path):
    path = write_synthetic_video(tmp_path / "r.mp4", num_frames=8, height=64, width=96, rotation=90, codec=H264)
    info = probe_video(path)
    plan = plan_video_sampling(info, FrameSampling(fps=None, num_frames=4))
    with pytest.raises(ValueError, match=r"\(4, 96, 64, 3\)"):
        decode_video_into(path, plan, np.zeros((4, 64, 96, 3), np.uint8), info=info)


# --- variable frame rate ------------------------------------------------------------------

# Quick frames, a 1.7 s freeze, quick frames, a 1.6 s freeze (like a screen recording). The
# encoders give the last frame the typical spacing, 0.1 s: the video ends at 4.1 s.
VFR_TIMES = [0.0, 0.1, 0.2, 0.3, 2.0, 2.1, 2.2, 2.3, 3.9, 4.0]


@pytest.mark.parametrize("codec", [H264, "mpeg4"])
def test_vfr_video_is_sampled_by_presentation_time(tmp_path, codec):
    path = write_synthetic_video(tmp_path / "screen.mkv", num_frames=10, frame_times=VFR_TIMES, fps=10.0, codec=codec)
    info = probe_video(path)
    assert info.is_vfr
    assert info.frame_times[:-1] == pytest.approx(VFR_TIMES, abs=1e-3)
    decoded = decode_video(path, FrameSampling(fps=2.0))
    # The frames displayed at uniform times are the real ones, timestamps and grid spacing included.
    expected = plan_frame_sampling(10, info.fps, FrameSampling(fps=2.0), frame_times=info.frame_times)
    assert decoded.plan == expected
    assert [read_frame_index(frame) for frame in decoded.frames] == list(expected.indices)
    assert decoded.timestamps == pytest.approx([VFR_TIMES[i] for i in expected.indices], abs=1e-3)
    assert expected.second_per_grid == pytest.approx(2 * (info.frame_times[-1] / expected.num_frames))


def test_vfr_plan_has_no_index_spaced_gaps(tmp_path):
    path = write_synthetic_video(tmp_path / "screen.mp4", num_frames=10, frame_times=VFR_TIMES, fps=10.0, codec=H264)
    info = probe_video(path)
    plan = plan_video_sampling(info, FrameSampling(fps=2.0))
    by_index = plan_frame_sampling(info.num_frames, info.fps, FrameSampling(fps=2.0))
    # 2 fps over 4.1 s: 8 targets from 0.05 s (middle of frame 0) to 4.05 s (middle of frame 9),
    # 4/7 s apart: 0.05, 0.62, 1.19, 1.76 | 2.34, 2.91, 3.48 | 4.05. Frame 3 is on screen from 0.3 s
    # to 2.0 s and frame 7 from 2.3 s to 3.9 s, so each freeze is sampled three times, as watched.
    assert plan.indices == (0, 3, 3, 3, 7, 7, 7, 9)
    assert plan.timestamps == pytest.approx((0.0, 0.3, 0.3, 0.3, 2.3, 2.3, 2.3, 4.0), abs=1e-3)
    assert plan.second_per_grid == pytest.approx(2 * 4.1 / 8, abs=1e-3)
    # By index the same count bunches 6 of 8 frames into 0.3 s and 0.3 s, with 1.7 s gaps between.
    assert by_index.indices == (0, 1, 3, 4, 5, 6, 8, 9)


def test_constant_rate_video_is_not_vfr(tmp_path):
    path = write_synthetic_video(tmp_path / "cfr.mkv", num_frames=30, fps=12.0, codec="mpeg4")  # ms timestamps
    info = probe_video(path)
    assert not info.is_vfr and info.frame_times is None
    assert plan_video_sampling(info, FrameSampling()) == plan_frame_sampling(30, 12.0, FrameSampling())


# --- containers whose timestamps cannot identify frames -------------------------------------


@pytest.mark.parametrize("suffix", [".avi", ".h264", ".ts"])
def test_containers_with_decode_order_or_missing_timestamps(tmp_path, suffix):
    # AVI stores decoding times as presentation times (H.264 with B-frames: the frames come out
    # carrying other frames' times); a raw .h264 stream has none; MPEG-TS has real ones.
    path = write_synthetic_video(tmp_path / f"clip{suffix}", num_frames=40, fps=8.0, codec=H264)
    sampling = FrameSampling(fps=None, num_frames=8)
    decoded = decode_video(path, sampling, num_workers=2)
    assert [read_frame_index(frame) for frame in decoded.frames] == list(decoded.plan.indices)
    np.testing.assert_array_equal(decoded.frames, _plain_decode(path)[list(decoded.plan.indices)])
