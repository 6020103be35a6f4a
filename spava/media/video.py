"""Video decoding: a path, raw bytes or in-memory frames in, sampled RGB frames out.

Role
----
The public entry point of :mod:`spava.media`. The video stage runs three steps:

1. :func:`probe_video` reads everything planning needs without decoding more than the
   first frame: displayed size (rotation applied), frame count, fps, real duration, the
   container's declared duration, and per-frame times when the frame rate varies. It
   demuxes the packet index once (cheap: no decoding) and keeps it in the result.
2. :func:`plan_video_sampling` turns that into a :class:`~spava.media.sampling.SamplingPlan`
   (by presentation time for variable-frame-rate streams).
3. :func:`decode_video_into` decodes the planned frames into a caller-provided uint8
   ``[T, H, W, 3]`` array (e.g. a shared-memory mapping), several decoders in parallel,
   reporting each written range of slots through ``on_frames`` so that a consumer can
   start on the first frames while later ones decode (see :class:`DecodeProgress`).

:func:`decode_video` does all three and returns a :class:`DecodedVideo`.

Inputs
------
``source`` is one of:

* a path (``str`` or ``os.PathLike``) to an encoded video file;
* ``bytes`` / ``bytearray`` / ``memoryview`` holding an encoded video file in memory;
* already-decoded frames: a ``[T, H, W, 3]`` uint8 RGB array, or a sequence of
  ``[H, W, 3]`` uint8 arrays of one size. These have no frame rate of their own, so
  they are taken to be ``sampling.fps`` frames per second -- or 2.0 fps when
  ``sampling`` asks for ``num_frames`` -- and the plan runs over them at that rate
  (``start_time``/``end_time`` are in that time base too). With the default
  ``fps=2.0`` that keeps every frame up to ``max_frames``, rounded down to a multiple
  of ``frame_multiple``.

Outputs
-------
Frames are uint8 ``[T, H, W, 3]`` RGB at the stored resolution, turned upright by the
stream's rotation (no resizing here: ``min_pixels``/``max_pixels`` are for the image
processor), ``T == plan.num_frames``; timestamps are the frames' real presentation times
in seconds from the first frame.

Odd inputs, handled truthfully
------------------------------
Text that FFmpeg would draw as frames (its ``tty`` demuxer), still images, audio- or
subtitle-only files are refused, naming the format and streams found. A truncated file
is sampled over the part that decodes, and the report says how much of the declared
duration that is; below ``min_decoded_fraction`` the decode fails instead. Rotation
metadata (display matrix) is applied. FFmpeg errors are given as readable text.

Backends
--------
``"pyav"`` (the default; ``"auto"`` picks it) decodes in parallel threads; ``"decord"``
and ``"torchcodec"`` (CPU; imported only when asked for, a clear ImportError names the
pip package if missing) decode the same plan in one batch. The probe always uses PyAV.

Errors
------
:class:`VideoDecodeError` (a ``ValueError``) for a missing, empty, corrupt, truncated or
undecodable source, one without a video stream, or an unsupported codec; the message
says what was wrong and what to do. :class:`DecodeCancelled` when ``should_stop()``
stopped a decode.

Module layout
-------------
* :mod:`spava.media.video_types` -- errors, dataclasses, source checks, the slot writer;
* :mod:`spava.media.pyav_probe` -- opening, stream checks, packet index, rotation;
* :mod:`spava.media.parallel_decode` / :mod:`spava.media.decode_segments` -- the parallel
  PyAV driver and its segment split; :mod:`spava.media.pyav_decoder` -- one segment's decoder;
* :mod:`spava.media.other_decoders` -- the decord and torchcodec backends;
* :mod:`spava.media.progress` -- :class:`DecodeProgress`.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np

from spava.media.other_decoders import decode_decord, decode_torchcodec
from spava.media.parallel_decode import decode_pyav_into
from spava.media.progress import DecodeProgress
from spava.media.pyav_probe import probe_pyav
from spava.media.sampling import FrameSampling, SamplingPlan, plan_frame_sampling
from spava.media.video_types import (
    BACKENDS,
    DEFAULT_FRAMES_FPS,
    DecodeCancelled,
    DecodedVideo,
    DecodeReport,
    VideoDecodeError,
    VideoInfo,
    VideoSource,
    _as_encoded_source,
    _as_frame_array,
    _EncodedSource,
    _is_frames_source,
    _SlotWriter,
)

__all__ = [
    "BACKENDS",
    "DEFAULT_MIN_DECODED_FRACTION",
    "DecodeCancelled",
    "DecodeProgress",
    "DecodeReport",
    "DecodedVideo",
    "VideoDecodeError",
    "VideoInfo",
    "VideoSource",
    "decode_video",
    "decode_video_into",
    "plan_video_sampling",
    "probe_video",
]

# A request fails when its frames cover less than this share of the duration the container
# declares. Sound files cover all of it; a stream a few frames short of its header (a cut
# at the end, a lost last GOP) stays well above 0.9, while a download that stopped early
# would otherwise be answered from its first part without anyone noticing.
DEFAULT_MIN_DECODED_FRACTION = 0.9


def probe_video(source: VideoSource) -> VideoInfo:
    """Read what planning needs, decoding only the first frame (uses PyAV).

    The frame count, real duration and frame times come from demuxing the packets (no
    decoding); the first frame gives the picture size and the rotation. In-memory frames
    report their shape, ``fps=2.0`` and ``codec="raw"``.

    Raises:
        VideoDecodeError: Missing, empty, corrupt or undecodable source, text or a still
            image, or no video stream.
    """
    if _is_frames_source(source):
        frames = _as_frame_array(source)
        num_frames, height, width = frames.shape[:3]
        fps = DEFAULT_FRAMES_FPS
        return VideoInfo(width, height, num_frames, fps, num_frames / fps, "raw")
    return probe_pyav(_as_encoded_source(source))


def plan_video_sampling(info: VideoInfo, sampling: FrameSampling) -> SamplingPlan:
    """The sampling plan for a probed video: by presentation time when ``info.is_vfr``.

    In-memory frames (``info.codec == "raw"``) run at ``sampling.fps`` (or 2.0), as
    :func:`decode_video` assumes.

    Raises:
        ValueError: Sampling that cannot apply to this video (e.g. start_time past its end).
    """
    if info.codec == "raw":
        fps = float(sampling.fps) if sampling.fps is not None else DEFAULT_FRAMES_FPS
        return plan_frame_sampling(info.num_frames, fps, sampling)
    return plan_frame_sampling(info.num_frames, info.fps, sampling, frame_times=info.frame_times)


def _check_arguments(backend: str, num_threads: int, num_workers: int, min_decoded_fraction: float) -> None:
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}; use backend='auto'.")
    counts = (("num_threads", num_threads, "decoder's choice"), ("num_workers", num_workers, "auto"))
    for name, value, meaning in counts:
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise ValueError(f"{name} must be an integer >= 0 (0 = {meaning}), got {value!r}.")
    if not isinstance(min_decoded_fraction, (int, float)) or not 0.0 <= min_decoded_fraction <= 1.0:
        raise ValueError(f"min_decoded_fraction must be a number in [0, 1], got {min_decoded_fraction!r}.")


def _check_out(out: np.ndarray, plan: SamplingPlan, info: VideoInfo) -> None:
    expected = (plan.num_frames, info.height, info.width, 3)
    if not isinstance(out, np.ndarray) or out.dtype != np.uint8 or out.shape != expected:
        got = f"{out.dtype} {out.shape}" if isinstance(out, np.ndarray) else type(out).__name__
        raise ValueError(
            f"out must be a uint8 array of shape [T, H, W, 3] = {expected} (plan frames, displayed height "
            f"and width of the probe), got {got}."
        )
    if not out.flags.writeable:
        raise ValueError("out is read-only; pass a writable array (e.g. a writable shared-memory mapping).")
    if any(b < a for a, b in zip(plan.indices, plan.indices[1:])):
        raise ValueError("plan.indices must be non-decreasing, as plan_frame_sampling makes them.")
    if plan.indices and (plan.indices[0] < 0 or plan.indices[-1] >= info.num_frames):
        raise ValueError(
            f"plan indices run from {plan.indices[0]} to {plan.indices[-1]} but the video has {info.num_frames} "
            "frames; make the plan from this video's probe (plan_video_sampling)."
        )


def _truncation(src_label: str, info: VideoInfo, min_decoded_fraction: float) -> list[str]:
    """Warnings for a video shorter than declared; raises when below ``min_decoded_fraction``."""
    declared = info.container_duration
    if not declared or info.duration >= declared - max(2.0 / info.fps, 0.01 * declared):
        return []
    fraction = info.decodable_fraction
    what = (
        f"the frames of {src_label} cover {info.duration:.2f} s of the {declared:.2f} s its container declares "
        f"({fraction:.0%}; the file is probably truncated)"
    )
    if fraction < min_decoded_fraction:
        raise VideoDecodeError(
            f"{what}, below min_decoded_fraction={min_decoded_fraction:g} (config video.min_decoded_fraction); "
            "fetch the complete file, or lower that setting to answer from the part that decodes."
        )
    return [f"{what}; frames were sampled from the part that decodes."]


def _decode_warnings(stats, writer: _SlotWriter, info: VideoInfo) -> list[str]:
    warnings = []
    num_corrupt = info.packet_index.num_corrupt_packets if info.packet_index is not None else 0
    if num_corrupt:
        warnings.append(
            f"{num_corrupt} packets flagged corrupt by the demuxer were skipped; nearby frames may show artifacts."
        )
    if stats.num_bad_packets:
        warnings.append(
            f"{stats.num_bad_packets} damaged packets were skipped (FFmpeg: {stats.last_packet_error or 'cut short'}); "
            "frames decoded after them may show artifacts."
        )
    if stats.resized_from:
        height, width = writer.stored_size
        sizes = ", ".join(f"{w}x{h}" for w, h in sorted(stats.resized_from))
        warnings.append(
            f"the picture size changed mid-stream ({sizes}); those frames were rescaled to {width}x{height}."
        )
    return warnings


def decode_video_into(
    source: VideoSource,
    plan: SamplingPlan,
    out: np.ndarray,
    *,
    info: VideoInfo | None = None,
    num_workers: int = 0,
    num_threads: int = 0,
    on_frames: Callable[[int, int], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    backend: str = "auto",
    min_decoded_fraction: float = DEFAULT_MIN_DECODED_FRACTION,
) -> DecodeReport:
    """Decode the frames of ``plan`` into ``out``, in parallel, reporting progress as slots fill.

    Args:
        source: Path, encoded bytes, or in-memory frames (see the module docstring).
        plan: From :func:`plan_video_sampling` on this video's probe; frame ``plan.indices[k]``
            goes to ``out[k]`` (repeated indices fill every slot that names them).
        out: Caller-provided uint8 ``[T, H, W, 3]`` with ``T = plan.num_frames`` and ``H, W``
            the probe's displayed size; written in place (may be a shared-memory mapping).
        info: The probe of ``source`` (skips probing again, and keeps the plan and the
            decode on the same packet index); None probes here.
        num_workers: Parallel decoders, each on a contiguous segment of the plan with its own
            container: 0 chooses from the CPU count and the plan, 1 decodes in the calling
            thread.
        num_threads: FFmpeg threads per decoder; 0: FFmpeg's choice for one decoder, else the
            cores shared out among the decoders.
        on_frames: ``on_frames(start, stop)`` once slots ``[start, stop)`` of ``out`` are
            written, called from whichever decoder thread wrote them, in no global order; a
            :class:`DecodeProgress` turns these calls into the complete leading prefix. An
            exception it raises fails the decode.
        should_stop: Polled by every decoder between packets and frames (keep it cheap, e.g.
            an ``Event.is_set``); returning True stops them all within a frame's decode time
            and raises :class:`DecodeCancelled`; ``out`` then holds only some slots.
        backend: ``"auto"`` / ``"pyav"`` (parallel), ``"decord"`` or ``"torchcodec"``; ignored
            for in-memory frames.
        min_decoded_fraction: Fail when the decodable frames cover less than this share of
            the duration the container declares (a truncated file); 0 never fails.

    Returns:
        A :class:`DecodeReport` (real timestamps, timings, warnings, decoder).

    Raises:
        VideoDecodeError: Unreadable source, a planned frame that does not decode, or too
            little of the video decodes (the message names the share and the setting).
        DecodeCancelled: ``should_stop()`` returned True.
        ValueError: Bad arguments (``out`` of the wrong shape or dtype, a plan not of this video).
        ImportError: The requested backend is not installed (names the pip package).
    """
    _check_arguments(backend, num_threads, num_workers, min_decoded_fraction)
    if not isinstance(plan, SamplingPlan):
        raise TypeError(f"plan must be a SamplingPlan, got {type(plan).__name__}")
    if _is_frames_source(source):
        return _copy_frames_into(_as_frame_array(source), plan, out, on_frames)
    src = _as_encoded_source(source)
    if info is None:
        info = probe_pyav(src)
    _check_out(out, plan, info)
    warnings = _truncation(src.label, info, min_decoded_fraction)
    writer = _SlotWriter(plan, out, info.rotation, on_frames)
    start = time.perf_counter()
    stats, num_used = _decode_backend(src, info, writer, backend, num_workers, num_threads, should_stop)
    if writer.missing:
        raise VideoDecodeError(f"{src.label}: planned frames {writer.missing[:8]} did not decode; the file is damaged.")
    return DecodeReport(
        timestamps=list(writer.timestamps),
        num_decoded_frames=stats.num_decoded_frames if stats is not None else len(writer.wanted),
        num_workers=num_used,
        probe_seconds=info.probe_seconds,
        index_seconds=info.index_seconds,
        decode_seconds=time.perf_counter() - start,
        warnings=warnings + (_decode_warnings(stats, writer, info) if stats is not None else []),
        decoder="pyav" if backend == "auto" else backend,
        decoded_fraction=info.decodable_fraction,
        num_seek_fallbacks=stats.num_seek_fallbacks if stats is not None else 0,
    )


def _decode_backend(src: _EncodedSource, info: VideoInfo, writer: _SlotWriter, backend: str,
                    num_workers: int, num_threads: int, should_stop: Callable[[], bool] | None):
    """Run the chosen backend; returns (stats or None, decoders used)."""
    if backend == "decord":
        decode_decord(src, writer, num_threads)
        return None, 1
    if backend == "torchcodec":
        decode_torchcodec(src, writer, num_threads)
        return None, 1
    return decode_pyav_into(src, info, writer, num_workers=num_workers, num_threads=num_threads,
                            should_stop=should_stop)


def _copy_frames_into(frames: np.ndarray, plan: SamplingPlan, out: np.ndarray, on_frames) -> DecodeReport:
    """In-memory frames: copy the planned ones (their times are the plan's)."""
    start = time.perf_counter()
    num_frames, height, width = frames.shape[:3]
    info = VideoInfo(width, height, num_frames, DEFAULT_FRAMES_FPS, num_frames / DEFAULT_FRAMES_FPS, "raw")
    _check_out(out, plan, info)
    writer = _SlotWriter(plan, out, 0, on_frames)
    timestamps = {index: seconds for index, seconds in zip(plan.indices, plan.timestamps)}
    for index in writer.wanted:
        writer.put(index, frames[index], timestamps[index])
    return DecodeReport(
        timestamps=list(writer.timestamps), num_decoded_frames=0, num_workers=1, probe_seconds=0.0,
        index_seconds=0.0, decode_seconds=time.perf_counter() - start, warnings=[], decoder="frames",
    )


def decode_video(
    source: VideoSource,
    sampling: FrameSampling,
    *,
    backend: str = "auto",
    num_threads: int = 0,
    num_workers: int = 0,
    min_decoded_fraction: float = DEFAULT_MIN_DECODED_FRACTION,
) -> DecodedVideo:
    """Probe, plan and decode the frames that ``sampling`` asks of ``source`` into a new array.

    Args:
        source: Path, encoded bytes, a uint8 ``[T, H, W, 3]`` RGB array, or a sequence of
            uint8 ``[H, W, 3]`` arrays (see the module docstring for their assumed fps).
        sampling: What to sample (fps or exact count, bounds, time window).
        backend: ``"auto"`` (= ``"pyav"``), ``"pyav"``, ``"decord"`` or ``"torchcodec"``;
            ignored for in-memory frames.
        num_threads: FFmpeg threads per decoder; 0 lets the decoder choose.
        num_workers: Parallel decoders (see :func:`decode_video_into`); 0 chooses.
        min_decoded_fraction: See :func:`decode_video_into`.

    Returns:
        A :class:`DecodedVideo` whose ``frames`` is uint8 ``[T, H, W, 3]``, T = ``plan.num_frames``.

    Raises:
        VideoDecodeError: Unreadable source (message says why and what to do).
        ValueError: Sampling that cannot apply to this video (e.g. start_time past its end).
        ImportError: The requested backend is not installed (names the pip package).
    """
    _check_arguments(backend, num_threads, num_workers, min_decoded_fraction)
    if not isinstance(sampling, FrameSampling):
        raise TypeError(f"sampling must be a FrameSampling, got {type(sampling).__name__}")
    is_frames = _is_frames_source(source)
    if is_frames:
        source = _as_frame_array(source)
    info = probe_video(source)
    plan = plan_video_sampling(info, sampling)
    frames = np.empty((plan.num_frames, info.height, info.width, 3), dtype=np.uint8)
    report = decode_video_into(
        source, plan, frames, info=None if is_frames else info, num_workers=num_workers, num_threads=num_threads,
        backend=backend, min_decoded_fraction=min_decoded_fraction,
    )
    fps = float(sampling.fps or DEFAULT_FRAMES_FPS) if is_frames else info.fps
    return DecodedVideo(
        frames, report.timestamps, fps, info.num_frames, info.num_frames / fps if is_frames else info.duration,
        plan, "frames" if is_frames else report.decoder, report,
    )
