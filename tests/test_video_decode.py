"""Tests for spava.media.video (decode_video, probe_video) and spava.media.synthetic.

Small synthetic videos are written to a temporary directory; every frame carries its own
index (see spava.media.synthetic), so the tests check that the decoded frames are exactly
the planned source frames.
"""

from __future__ import annotations

import importlib.util
from fractions import Fraction

import numpy as np
import pytest

av = pytest.importorskip("av")

from spava.media import pyav_decoder  # noqa: E402
from spava.media.sampling import FrameSampling, plan_frame_sampling  # noqa: E402
from spava.media.synthetic import make_synthetic_frames, read_frame_index, write_synthetic_video  # noqa: E402
from spava.media.video import DecodedVideo, VideoDecodeError, decode_video, probe_video  # noqa: E402

H264 = "libx264" if "libx264" in av.codecs_available else "mpeg4"

# name -> (file name, write_synthetic_video kwargs)
VIDEO_SPECS = {
    "h264_mp4": ("h264.mp4", {"num_frames": 40, "height": 64, "width": 96, "fps": 8.0, "codec": H264}),
    "mpeg4_odd_size": ("odd.mp4", {"num_frames": 24, "height": 66, "width": 98, "fps": 10.0, "codec": "mpeg4"}),
    "mpeg4_mkv": ("clip.mkv", {"num_frames": 30, "height": 48, "width": 64, "fps": 12.0, "codec": "mpeg4"}),
    "long_small_gop": (
        "long.mp4",
        {"num_frames": 300, "height": 64, "width": 96, "fps": 25.0, "codec": H264, "keyframe_interval": 12},
    ),
}


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    """Write each synthetic video once per module; name -> (path, kwargs)."""
    folder = tmp_path_factory.mktemp("videos")
    return {
        name: (write_synthetic_video(folder / file_name, seed=index, **kwargs), kwargs)
        for index, (name, (file_name, kwargs)) in enumerate(VIDEO_SPECS.items())
    }


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory):
    """Files that must be rejected with a helpful VideoDecodeError; name -> path."""
    folder = tmp_path_factory.mktemp("bad")
    (folder / "empty.mp4").write_bytes(b"")
    (folder / "random.mp4").write_bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    (folder / "notes.mp4").write_text("these are meeting notes, not a video\n" * 20)
    _write_audio_only(folder / "audio.m4a")
    # A Matroska file whose codec id FFmpeg does not know: demuxes, but has no decoder.
    mkv = write_synthetic_video(folder / "known.mkv", num_frames=8, codec="mpeg4").read_bytes()
    (folder / "unknown_codec.mkv").write_bytes(mkv.replace(b"V_MPEG4/ISO/ASP", b"V_ZZZZZ/ISO/ASP"))
    return folder


def _write_audio_only(path):
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("aac", rate=16000)
        stream.layout = "mono"
        for _ in range(8):
            frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
            frame.sample_rate = 16000
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def _check_decoded(decoded: DecodedVideo, kwargs: dict, sampling: FrameSampling) -> None:
    """Shapes, dtype, plan and the frame indices encoded in the pixels all agree."""
    fps, num_frames = kwargs["fps"], kwargs["num_frames"]
    expected_plan = plan_frame_sampling(num_frames, fps, sampling)
    assert decoded.plan == expected_plan
    assert decoded.frames.dtype == np.uint8
    assert decoded.frames.shape == (expected_plan.num_frames, kwargs["height"], kwargs["width"], 3)
    assert [read_frame_index(frame) for frame in decoded.frames] == [i % 256 for i in expected_plan.indices]
    assert decoded.timestamps == pytest.approx(list(expected_plan.timestamps), abs=1e-3)
    assert decoded.source_fps == pytest.approx(fps)
    assert decoded.num_source_frames == num_frames
    assert decoded.duration == pytest.approx(num_frames / fps, abs=0.2)


SAMPLINGS = {
    "default_fps2": FrameSampling(),
    "fps_4": FrameSampling(fps=4.0),
    "exact_6": FrameSampling(fps=None, num_frames=6),
    "window": FrameSampling(fps=8.0, start_time=0.5, end_time=1.75),
    "exact_2_max": FrameSampling(fps=None, num_frames=2, max_frames=2),
}


@pytest.mark.parametrize("sampling_name", list(SAMPLINGS))
@pytest.mark.parametrize("video_name", list(VIDEO_SPECS))
def test_decode_from_path_matches_plan(videos, video_name, sampling_name):
    path, kwargs = videos[video_name]
    sampling = SAMPLINGS[sampling_name]
    decoded = decode_video(path, sampling)
    assert decoded.backend == "pyav"
    _check_decoded(decoded, kwargs, sampling)


@pytest.mark.parametrize("wrap", [bytes, bytearray, memoryview], ids=["bytes", "bytearray", "memoryview"])
@pytest.mark.parametrize("video_name", ["h264_mp4", "mpeg4_mkv"])
def test_decode_from_bytes_equals_path(videos, video_name, wrap):
    path, kwargs = videos[video_name]
    sampling = FrameSampling(fps=4.0)
    from_path = decode_video(path, sampling)
    from_bytes = decode_video(wrap(path.read_bytes()), sampling)
    np.testing.assert_array_equal(from_bytes.frames, from_path.frames)
    assert from_bytes.timestamps == from_path.timestamps
    _check_decoded(from_bytes, kwargs, sampling)


@pytest.mark.parametrize("backend, num_threads", [("auto", 0), ("pyav", 1), ("pyav", 3)])
def test_backend_auto_and_thread_counts_agree(videos, backend, num_threads):
    path, _ = videos["h264_mp4"]
    reference = decode_video(path, FrameSampling(fps=4.0))
    decoded = decode_video(path, FrameSampling(fps=4.0), backend=backend, num_threads=num_threads)
    assert decoded.backend == "pyav"
    np.testing.assert_array_equal(decoded.frames, reference.frames)


SPARSE_SAMPLINGS = [
    FrameSampling(fps=0.5),
    FrameSampling(fps=None, num_frames=8),
    FrameSampling(fps=1.0, start_time=6.0),
]


def _decode_all_frames(path) -> np.ndarray:
    """Independent reference: every frame, decoded from the start by plain PyAV."""
    with av.open(str(path)) as container:
        return np.stack([frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)])


@pytest.mark.parametrize("num_workers", [1, 3])
@pytest.mark.parametrize("sampling", SPARSE_SAMPLINGS, ids=["fps_0.5", "exact_8", "late_window"])
def test_sparse_plan_seeks_and_matches_sequential(videos, monkeypatch, sampling, num_workers):
    path, kwargs = videos["long_small_gop"]
    num_seeks = []
    real_seek = pyav_decoder._seek
    monkeypatch.setattr(pyav_decoder, "_seek", lambda *args: num_seeks.append(args[2]) or real_seek(*args))
    seeked = decode_video(path, sampling, num_workers=num_workers)
    _check_decoded(seeked, kwargs, sampling)
    assert num_seeks, "a sparse plan on a video with keyframes every 12 frames should seek"
    assert seeked.report.num_decoded_frames < max(seeked.plan.indices) + 1  # seeking skipped frames
    np.testing.assert_array_equal(seeked.frames, _decode_all_frames(path)[list(seeked.plan.indices)])


def test_seek_miss_falls_back_to_sequential(videos, monkeypatch):
    path, kwargs = videos["long_small_gop"]
    real_seek = pyav_decoder._seek

    def seek_too_far(container, stream, keyframe_pts):
        # A demuxer that lands after the requested keyframe: the wanted frame never comes out.
        return real_seek(container, stream, keyframe_pts + int(1 / (stream.time_base * kwargs["fps"])) * 24)

    monkeypatch.setattr(pyav_decoder, "_seek", seek_too_far)
    sampling = FrameSampling(fps=0.5)
    decoded = decode_video(path, sampling, num_workers=2)
    _check_decoded(decoded, kwargs, sampling)
    assert decoded.report.num_seek_fallbacks >= 1


def test_truncated_file_is_planned_over_frames_that_exist(tmp_path):
    # moov atom first ("faststart"), then cut the media data: the header promises 60 frames.
    frames = make_synthetic_frames(60, 64, 96, seed=3)
    path = tmp_path / "faststart.mp4"
    with av.open(str(path), mode="w", options={"movflags": "faststart"}) as container:
        stream = container.add_stream(H264, rate=Fraction(8))
        stream.width, stream.height, stream.pix_fmt = 96, 64, "yuv420p"
        for rgb in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    data = path.read_bytes()
    truncated = data[: int(len(data) * 0.6)]
    info = probe_video(truncated)
    assert info.container_num_frames == 60 and 0 < info.num_frames < 60
    decoded = decode_video(truncated, FrameSampling(fps=None, num_frames=8), min_decoded_fraction=0.0)
    assert 0 < decoded.num_source_frames < 60
    assert max(decoded.plan.indices) == decoded.num_source_frames - 1
    assert [read_frame_index(frame) for frame in decoded.frames] == list(decoded.plan.indices)
    assert "truncated" in " ".join(decoded.report.warnings)


def test_frame_list_input(videos):
    frames = make_synthetic_frames(10, 66, 98, seed=1)
    decoded = decode_video(list(frames), FrameSampling())  # assumed 2 fps, sampled at 2 fps: every frame
    assert decoded.backend == "frames"
    np.testing.assert_array_equal(decoded.frames, frames)
    assert decoded.timestamps == pytest.approx([i / 2.0 for i in range(10)])
    assert (decoded.source_fps, decoded.num_source_frames, decoded.duration) == (2.0, 10, 5.0)


@pytest.mark.parametrize(
    "sampling, expected_indices",
    [
        (FrameSampling(fps=None, num_frames=4), (0, 3, 6, 9)),  # assumed 2.0 fps
        (FrameSampling(fps=1.0), tuple(range(10))),  # assumed 1 fps: 10 s -> 10 frames
        (FrameSampling(fps=2.0, start_time=1.0, end_time=3.0), (2, 3, 4, 5)),
    ],
)
def test_frame_array_input(sampling, expected_indices):
    frames = make_synthetic_frames(10, 32, 48, seed=2)
    decoded = decode_video(frames, sampling)
    assert decoded.plan.indices == expected_indices
    assert decoded.source_fps == (sampling.fps or 2.0)
    np.testing.assert_array_equal(decoded.frames, frames[list(decoded.plan.indices)])


@pytest.mark.parametrize(
    "frames, needle",
    [
        ([], "empty"),
        ([np.zeros((8, 8, 3), np.uint8), np.zeros((8, 10, 3), np.uint8)], "frame 1 has shape"),
        (np.zeros((2, 8, 8, 3), np.float32), "uint8"),
        (np.zeros((8, 8, 3), np.uint8), "[T, H, W, 3]"),
        (np.zeros((2, 8, 8, 4), np.uint8), "[T, H, W, 3]"),
    ],
    ids=["empty", "mixed_sizes", "float", "single_frame", "rgba"],
)
def test_bad_frame_input(frames, needle):
    with pytest.raises(VideoDecodeError) as info:
        decode_video(frames, FrameSampling())
    assert needle in str(info.value)


BAD_FILES = [
    ("missing.mp4", "not found"),
    ("empty.mp4", "empty (0 bytes)"),
    ("random.mp4", "not a readable video container"),
    ("notes.mp4", "not a readable video container"),
    ("audio.m4a", "no video stream (found: audio)"),
    ("unknown_codec.mkv", "not supported"),
    (".", "not a regular file"),
]


@pytest.mark.parametrize("name, needle", BAD_FILES, ids=[entry[0] for entry in BAD_FILES])
@pytest.mark.parametrize("function", ["decode", "probe"])
def test_bad_files_raise_helpful_errors(bad_files, function, name, needle):
    path = bad_files / name
    with pytest.raises(VideoDecodeError) as info:
        if function == "decode":
            decode_video(path, FrameSampling())
        else:
            probe_video(path)
    message = str(info.value)
    assert needle in message
    assert isinstance(info.value, ValueError)
    if name not in ("missing.mp4", ".", "empty.mp4"):
        assert "ffmpeg -i" in message or "contains video" in message  # says what to do


@pytest.mark.parametrize("data, needle", [(b"", "empty"), (b"\x00" * 64, "not a readable video container")])
def test_bad_bytes_raise_helpful_errors(data, needle):
    with pytest.raises(VideoDecodeError, match=needle):
        decode_video(data, FrameSampling())


def test_start_time_past_end_is_a_sampling_error(videos):
    path, _ = videos["h264_mp4"]  # 5 s
    with pytest.raises(ValueError, match="start_time"):
        decode_video(path, FrameSampling(start_time=9.0))


@pytest.mark.parametrize(
    "kwargs, error, needle",
    [
        ({"backend": "opencv"}, ValueError, "backend must be one of"),
        ({"num_threads": -1}, ValueError, "num_threads"),
        ({"sampling": {"fps": 2.0}}, TypeError, "FrameSampling"),
        ({"source": 42}, TypeError, "source must be"),
    ],
)
def test_bad_arguments(videos, kwargs, error, needle):
    path, _ = videos["h264_mp4"]
    arguments = {"source": path, "sampling": FrameSampling(), **kwargs}
    source, sampling = arguments.pop("source"), arguments.pop("sampling")
    with pytest.raises(error, match=needle):
        decode_video(source, sampling, **arguments)


@pytest.mark.parametrize("backend", ["decord", "torchcodec"])
def test_optional_backends(videos, backend):
    path, kwargs = videos["h264_mp4"]
    sampling = FrameSampling(fps=4.0)
    if importlib.util.find_spec(backend) is None:
        with pytest.raises(ImportError, match=f"pip install {backend}"):
            decode_video(path, sampling, backend=backend)
    else:
        decoded = decode_video(path, sampling, backend=backend)
        assert decoded.backend == backend
        _check_decoded(decoded, kwargs, sampling)


@pytest.mark.parametrize("video_name", list(VIDEO_SPECS))
def test_probe_video_metadata(videos, video_name):
    path, kwargs = videos[video_name]
    for source in (path, str(path), path.read_bytes()):
        info = probe_video(source)
        assert (info.width, info.height) == (kwargs["width"], kwargs["height"])
        assert info.num_frames == kwargs["num_frames"]
        assert info.fps == pytest.approx(kwargs["fps"])
        assert info.duration == pytest.approx(kwargs["num_frames"] / kwargs["fps"], abs=0.2)
        assert info.codec == ("h264" if kwargs["codec"] == "libx264" else kwargs["codec"])
    # Matroska records no frame count; the packet index counts the frames all the same.
    assert not info.is_num_frames_estimated
    assert info.container_num_frames == (None if path.name.endswith(".mkv") else kwargs["num_frames"])


def test_probe_frames_input():
    info = probe_video(make_synthetic_frames(6, 32, 48))
    assert (info.width, info.height, info.num_frames, info.fps, info.codec) == (48, 32, 6, 2.0, "raw")


def test_synthetic_frames_encode_index_and_seed():
    frames = make_synthetic_frames(300, 40, 64, seed=5)
    assert frames.shape == (300, 40, 64, 3) and frames.dtype == np.uint8
    assert [read_frame_index(frame) for frame in frames] == [i % 256 for i in range(300)]
    np.testing.assert_array_equal(frames, make_synthetic_frames(300, 40, 64, seed=5))  # deterministic
    assert not np.array_equal(make_synthetic_frames(4, 40, 64, seed=5), make_synthetic_frames(4, 40, 64, seed=6))
    assert not np.array_equal(frames[0], frames[1])  # the picture moves


@pytest.mark.parametrize(
    "kwargs, needle",
    [({"height": 65, "width": 96}, "even"), ({"height": 8, "width": 96}, "height >= 12")],
)
def test_synthetic_writer_rejects_bad_sizes(tmp_path, kwargs, needle):
    with pytest.raises(ValueError, match=needle):
        write_synthetic_video(tmp_path / "bad.mp4", **kwargs)
