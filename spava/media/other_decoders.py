"""The optional ``"decord"`` and ``"torchcodec"`` decoding backends.

Role
----
Decode the frames of a sampling plan with decord or torchcodec instead of PyAV, when
``decode_video(..., backend="decord"|"torchcodec")`` asks for it. Each library is
imported only when its backend runs (never at import time); a missing one raises an
ImportError naming the pip package.

Inputs
------
An ``_EncodedSource`` (a checked path or byte string), a ``_SlotWriter`` over the
caller's output array (its plan says which frames; it applies the probe's rotation) and
a decoder thread count (0 = decoder's choice). The plan comes from PyAV's probe; both
libraries index frames in presentation order too.

Outputs
-------
The writer's slots filled with uint8 RGB frames; unreadable input raises
:class:`~spava.media.video_types.VideoDecodeError`. Both run in one thread, without
progress until the whole batch is decoded.
"""

from __future__ import annotations

import importlib
from typing import Any

import numpy as np

from spava.media.video_types import _REENCODE_HINT, VideoDecodeError, _EncodedSource, _import_backend, _SlotWriter


def _decord_errors(decord: Any) -> tuple[type[BaseException], ...]:
    """Exception types decord raises for unreadable input (its own DECORDError plus builtins)."""
    errors: tuple[type[BaseException], ...] = (RuntimeError, OSError, ValueError)
    try:
        base = importlib.import_module("decord._ffi.base")
    except ImportError:
        return errors
    decord_error = getattr(base, "DECORDError", None)
    return errors + ((decord_error,) if isinstance(decord_error, type) else ())


def decode_decord(src: _EncodedSource, writer: _SlotWriter, num_threads: int) -> None:
    """Fill ``writer`` with decord (batch decode of the planned frame indices)."""
    decord = _import_backend("decord")
    errors = _decord_errors(decord)
    wanted = writer.wanted
    try:
        reader = decord.VideoReader(src.open_arg(), ctx=decord.cpu(0), num_threads=num_threads)
        batch = reader.get_batch(wanted)
        starts = np.asarray(reader.get_frame_timestamp(wanted)).reshape(-1, 2)[:, 0]
    except errors as exc:
        raise VideoDecodeError(f"decord could not decode {src.label}: {exc}; {_REENCODE_HINT}.") from None
    # decord returns its own NDArray unless a global bridge (e.g. torch) is set.
    rgb = np.asarray(batch.asnumpy() if hasattr(batch, "asnumpy") else batch)
    for source_index, frame, seconds in zip(wanted, rgb, starts):
        writer.put(source_index, frame, float(seconds))


def decode_torchcodec(src: _EncodedSource, writer: _SlotWriter, num_threads: int) -> None:
    """Fill ``writer`` with torchcodec's CPU decoder (frames at the planned indices)."""
    decoders = _import_backend("torchcodec")
    source = str(src.path) if src.path is not None else src.data
    try:
        decoder = decoders.VideoDecoder(source, dimension_order="NHWC", num_ffmpeg_threads=num_threads)
        batch = decoder.get_frames_at(indices=writer.wanted)
    except (RuntimeError, ValueError, OSError, IndexError) as exc:
        raise VideoDecodeError(f"torchcodec could not decode {src.label}: {exc}; {_REENCODE_HINT}.") from None
    for source_index, frame, seconds in zip(writer.wanted, batch.data.numpy(), batch.pts_seconds.tolist()):
        writer.put(source_index, frame, seconds)
