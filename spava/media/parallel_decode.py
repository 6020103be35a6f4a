"""Parallel PyAV decoding of a sampling plan into one output array, with progress and cancellation.

Role
----
Drives :func:`spava.media.pyav_decoder.decode_segment` for the default backend: splits the
plan's wanted frames into balanced segments (:mod:`spava.media.decode_segments`), runs one
decoder per segment in its own thread, stops them all when one fails or the caller
cancels, and adds up their statistics. Threads suffice because PyAV releases the GIL
while FFmpeg demuxes, decodes and converts: two decoder threads keep two cores busy
(process CPU time 1.96 s per wall second against 1.00 for one decoder, 64 of 768 frames of
a 720p H.264 file with a keyframe every second, on two otherwise idle vCPUs; see
``examples/bench_video_decode.py``, column ``cpu/wall``).

Inputs
------
An ``_EncodedSource``, the probe's :class:`~spava.media.video_types.VideoInfo` (with its
packet index), a ``_SlotWriter`` over the caller's ``out``, worker and thread counts, and
an optional ``should_stop()``.

Outputs
-------
``(DecodeStats, num_workers)``; ``out`` filled. Raises the first worker's error
(:class:`~spava.media.video_types.VideoDecodeError`,
:class:`~spava.media.video_types.DecodeCancelled`, or what ``on_frames`` raised).
"""

from __future__ import annotations

import os
import threading
from bisect import bisect_left
from collections.abc import Callable

from spava.media.decode_segments import split_segments
from spava.media.pyav_decoder import DecodeStats, decode_by_order, decode_segment
from spava.media.video_types import DecodeCancelled, VideoInfo, _EncodedSource, _SlotWriter

# With num_workers=0, a decoder gets at least this many wanted frames, and there are at most
# this many decoders (beyond that, opening containers and re-decoding from keyframes outweighs
# the gain on any plan of a few hundred frames).
_MIN_FRAMES_PER_WORKER = 4
_MAX_AUTO_WORKERS = 16


class _Aborted(Exception):
    """Another worker failed or the decode was cancelled: stop quietly."""


class _StopFlag:
    """Shared by the workers of one decode: set on the first failure or on cancellation."""

    def __init__(self, should_stop: Callable[[], bool] | None) -> None:
        self.event = threading.Event()
        self.should_stop = should_stop

    def check(self) -> None:
        """Raise when the decode must stop (called between frames and packets)."""
        if self.event.is_set():
            raise _Aborted()
        if self.should_stop is not None and self.should_stop():
            self.event.set()
            raise DecodeCancelled("the decode was cancelled by should_stop()")


def available_cpus() -> int:
    """CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def resolve_num_workers(num_workers: int, num_wanted: int) -> int:
    """Decoders to run: ``num_workers``, or for 0 one per core with enough frames each."""
    if num_workers > 0:
        return num_workers
    return max(1, min(available_cpus(), num_wanted // _MIN_FRAMES_PER_WORKER, _MAX_AUTO_WORKERS))


def threads_per_worker(num_threads: int, num_workers: int) -> int:
    """FFmpeg decoder threads per worker: as asked, else FFmpeg's choice for one worker, else a share of the cores."""
    if num_threads > 0:
        return num_threads
    if num_workers == 1:
        return 0
    return max(1, available_cpus() // num_workers)


def decode_pyav_into(
    src: _EncodedSource,
    info: VideoInfo,
    writer: _SlotWriter,
    *,
    num_workers: int,
    num_threads: int,
    should_stop: Callable[[], bool] | None,
) -> tuple[DecodeStats, int]:
    """Decode every wanted frame of ``writer``'s plan; returns the summed stats and the decoders used."""
    index = info.packet_index
    stop = _StopFlag(should_stop)
    if index is None or not index.is_seekable:
        stats = DecodeStats()
        threads = threads_per_worker(num_threads, 1)
        _run_guarded(stop, lambda: decode_by_order(src, writer, info.fps, num_threads=threads,
                                                   check_stop=stop.check, stats=stats))
        return stats, 1
    wanted = writer.wanted
    keyframes = [bisect_left(index.pts, pts) for pts in index.keyframe_pts]
    segments = split_segments(wanted, keyframes, resolve_num_workers(num_workers, len(wanted)))
    threads = threads_per_worker(num_threads, len(segments))
    stats = [DecodeStats() for _ in segments]
    jobs = [
        (lambda segment=segment, segment_stats=segment_stats: decode_segment(
            src, index, list(segment), writer, num_threads=threads, check_stop=stop.check, stats=segment_stats))
        for segment, segment_stats in zip(segments, stats)
    ]
    if len(jobs) == 1:
        _run_guarded(stop, jobs[0])
    else:
        _run_threads(stop, jobs)
    total = DecodeStats()
    for segment_stats in stats:
        total.add(segment_stats)
    return total, len(segments)


def _run_guarded(stop: _StopFlag, job: Callable[[], None]) -> None:
    try:
        job()
    except _Aborted:  # only another worker sets the flag; with one worker it means cancellation raced
        raise DecodeCancelled("the decode was cancelled by should_stop()") from None


def _run_threads(stop: _StopFlag, jobs: list[Callable[[], None]]) -> None:
    """Run ``jobs`` in threads; the first failure stops the others and is raised once."""
    errors: list[BaseException] = []
    lock = threading.Lock()

    def run(job: Callable[[], None]) -> None:
        try:
            job()
        except _Aborted:
            pass
        except BaseException as exc:  # noqa: BLE001 -- handed to the calling thread below
            with lock:
                errors.append(exc)
            stop.event.set()

    threads = [threading.Thread(target=run, args=(job,), name=f"spava-decode-{k}", daemon=True)
               for k, job in enumerate(jobs)]
    for thread in threads:
        thread.start()
    try:
        for thread in threads:
            thread.join()
    except BaseException:  # e.g. KeyboardInterrupt in the caller: stop the workers before leaving
        stop.event.set()
        for thread in threads:
            thread.join()
        raise
    if errors:
        raise errors[0]
