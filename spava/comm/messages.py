"""Every control message of spava: typed, versioned, msgpack-encoded, validated on receipt.

Who sends what (C = client / Pipeline, S = scheduler, W = stage worker):
  C->S  SubmitReq, CancelReq, StatusReq, ShutdownReq
  S->C  TokenOutput (streamed), ResultOutput, ErrorOutput, StatusOutput
  W->S  ReadyReq (handshake), HeartbeatReq, VideoPlanOutput (as soon as the frames are planned),
        VideoTaskOutput (when they are decoded), LayoutTaskOutput, ModelTaskOutput,
        TokenOutput (decode rank), TaskError
  S->W  VideoTaskReq, LayoutTaskReq, ModelTaskReq, EncodeBatchReq (encoder ranks), CancelReq, ShutdownReq

Wire format: msgpack map {"v": PROTOCOL_VERSION, "t": type name, "f": fields}. No pickle. Tensors never
travel in control messages: a `TensorRef` names a shared-memory file (same host) that holds them.
Frames stream: a `VisualItem`'s frames file is announced (`VideoPlanOutput`) before it is filled; its
`progress` file says which frames are written (`spava.comm.transport.FrameProgress`).
`decode_message` raises `MessageError` for anything malformed, of an unknown type or version, with
unknown or missing fields, or with a field of the wrong type; receivers log it and answer with an
error instead of crashing.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from typing import Any, Optional

import msgpack

PROTOCOL_VERSION = 4


class MessageError(ValueError):
    """A control message that cannot be accepted (malformed, unknown, wrong version or types)."""


@dataclass
class TensorRef:
    """A tensor in a shared-memory file: `path` (under runtime.shm_dir), shape and dtype name.

    `node` names the node whose tmpfs holds the file; other nodes fetch it from that node's data
    server (spava.comm.data_server) before mapping it.
    """

    path: str
    shape: list[int]
    dtype: str
    node: str = ""


# ----- client <-> scheduler -------------------------------------------------------------------

@dataclass
class SubmitReq:
    request_id: str
    prompt: str
    video_kind: str  # how the media item comes: "path" | "bytes" | "frames" | "none"
    video_path: Optional[str] = None  # for "path"
    video_ref: Optional[TensorRef] = None  # uint8 bytes or [T, H, W, 3] frames, for "bytes"/"frames"
    media_type: str = "video"  # what the item is: "video" | "image" (frames: [1, H, W, 3] or [H, W, 3])
    sampling: dict[str, Any] = field(default_factory=dict)  # overrides of decode.* for this request
    video_options: dict[str, Any] = field(default_factory=dict)  # overrides of video.* for this request
    timeout_s: Optional[float] = None
    stream: bool = False
    document: Optional[str] = None  # text to ask about (context), instead of or besides a video


@dataclass
class CancelReq:
    request_id: str


@dataclass
class StatusReq:
    request_id: str  # correlation id of the status query


@dataclass
class ShutdownReq:
    reason: str = ""


@dataclass
class TokenOutput:
    request_id: str
    token_ids: list[int]  # the new tokens only
    text: str = ""  # detokenized delta when a tokenizer is available


@dataclass
class ResultOutput:
    request_id: str
    token_ids: list[int]
    text: str
    finish_reason: str  # "eos" | "stop" | "length"
    timings: dict[str, float]  # seconds per stage, plus queue waits
    num_visual_tokens: int
    num_prompt_tokens: int
    num_frames: int
    method: str
    world_size: int
    config_hash: str
    warnings: list[str] = field(default_factory=list)  # what the answer may lack, e.g. a truncated video


@dataclass
class ErrorOutput:
    request_id: str
    stage: str  # where it failed: admission | video | layout | model | scheduler
    # what the caller should do: bad_input (fix the request) | overloaded (queue full: retry later) |
    # unhealthy (the pipeline refuses work) | timeout | cancelled | worker_died | internal
    kind: str
    message: str


@dataclass
class StatusOutput:
    request_id: str
    is_healthy: bool
    workers: dict[str, str]  # worker id -> state
    num_queued: dict[str, int]  # stage -> queued requests
    num_inflight: int
    detail: str = ""


# ----- scheduler <-> workers ------------------------------------------------------------------

@dataclass
class ReadyReq:
    worker_id: str
    role: str  # video | layout | model
    rank: int
    pid: int
    device: str
    host: str = ""  # hostname of the worker's node (for lost-host reports)


@dataclass
class HeartbeatReq:
    worker_id: str
    request_id: Optional[str] = None  # the request it is working on


@dataclass
class VideoOptions:
    """One request's video settings: the pipeline's video.* updated by the request's `video_options`
    (resolved and checked at admission). The frame-sampling contract is `spava.media.sampling`."""

    fps: Optional[float]  # sampling rate, frames per second (None: exactly num_frames)
    num_frames: Optional[int]  # exact frame count (needs fps None)
    min_frames: int  # fewest frames in fps mode
    max_frames: int  # most frames in both modes
    min_pixels: int  # smallest frame area (H*W) a frame is resized to
    max_pixels: int  # largest frame area (H*W) a frame is resized to
    total_pixels: Optional[int]  # pixel budget of all frames together (None: none)
    start_time: Optional[float]  # clip start, seconds (None: the video's start)
    end_time: Optional[float]  # clip end, seconds, exclusive (None: the video's end)
    min_decoded_fraction: float  # a truncated file fails below this share of its declared length


@dataclass
class VideoTaskReq:
    request_id: str
    video_kind: str
    video_path: Optional[str]
    video_ref: Optional[TensorRef]
    options: VideoOptions  # the request's resolved video settings
    media_type: str = "video"  # "video" | "image"


@dataclass
class VisualItem:
    """One image or video of a request: its uint8 frames in shared memory and the grid they make.

    The model ranks resize, normalise and patchify the frames themselves (on their device), so
    only uint8 pixels cross processes. While `progress` is set the frames are still being decoded:
    that file says which of them are written and whether decoding ended or failed.
    """

    kind: str  # "video" | "image"
    frames: TensorRef  # [T, H, W, 3] uint8 RGB: sampled video frames at the decoded size; an image resized already
    progress: Optional[str]  # frames' progress file (spava.comm.transport.FrameProgress), None = complete
    grid_thw: list[int]  # [t, h, w] patches of the vision tower
    resized_hw: list[int]  # [height, width] every frame is resized to before patchifying
    timestamps: list[float]  # presentation time of every frame, seconds
    second_per_grid: float  # seconds per temporal patch (temporal positions of M-RoPE)


@dataclass
class VideoPlanOutput:
    """Sent by the video worker as soon as it has planned the frames, before decoding them."""

    request_id: str
    items: list[VisualItem]
    probe_s: float  # probe + plan + budget check


@dataclass
class VideoTaskOutput:
    """Sent when every frame is decoded (the frames themselves were announced by `VideoPlanOutput`)."""

    request_id: str
    num_frames: int  # frames written, 0 for text-only requests
    decode_s: float  # decoding + writing the frames
    warnings: list[str] = field(default_factory=list)  # e.g. a truncated file answered from its decodable part


@dataclass
class LayoutTaskReq:
    request_id: str
    prompt: str
    items: list[VisualItem]
    options: VideoOptions  # the request's resolved video settings (the frames were planned with them)
    document: Optional[str] = None


@dataclass
class LayoutTaskOutput:
    request_id: str
    input_ids: TensorRef  # [N] int64
    position_ids: TensorRef  # [3, N] int64 (M-RoPE) or [N]
    vision_positions: TensorRef  # [n_vis] int64, images first then videos
    items: list[VisualItem]  # images first then videos, the order of vision_positions
    num_query_tokens: int
    rope_delta: int
    num_visual_tokens: int
    seconds: float

    @property
    def grid_thw(self) -> list[list[int]]:
        return [item.grid_thw for item in self.items]


@dataclass
class ModelTaskReq:
    request_id: str
    seq: int  # model-group sequence number: every model rank runs tasks in this order
    layout: LayoutTaskOutput
    sampling: dict[str, Any]


@dataclass
class EncodeBatchReq:
    """Several model tasks for the encoder ranks (disaggregated), in `seq` order: their temporal grids are
    encoded in one vision-tower call. The encoders still answer one `ModelTaskOutput` or `TaskError` per
    task; a batch of one travels as its plain `ModelTaskReq`."""

    tasks: list[ModelTaskReq]


@dataclass
class ModelTaskOutput:
    request_id: str
    worker_id: str
    token_ids: list[int]  # the full answer on the decode rank, empty elsewhere
    finish_reason: str
    timings: dict[str, float]
    is_decode_rank: bool
    text: str = ""  # detokenized answer on the decode rank
    method: str = ""  # the attention method that ran (an exact one for short prompts, see ShortInputRule)


@dataclass
class FramesDoneOutput:
    """A model worker will not read the request's frames (nor its encoded video) again. When every
    model worker said so, or answered the request, the scheduler frees them while the request goes
    on: their memory (hundreds of MB per long video) comes back during the prefill, not after the
    answer."""

    request_id: str
    worker_id: str


@dataclass
class TaskError:
    request_id: str
    worker_id: str
    stage: str
    kind: str  # bad_input | internal | cancelled
    message: str


MESSAGE_TYPES: dict[str, type] = {
    cls.__name__: cls
    for cls in (
        SubmitReq, CancelReq, StatusReq, ShutdownReq, TokenOutput, ResultOutput, ErrorOutput, StatusOutput,
        ReadyReq, HeartbeatReq, VideoTaskReq, VideoPlanOutput, VideoTaskOutput, LayoutTaskReq, LayoutTaskOutput,
        ModelTaskReq, EncodeBatchReq, ModelTaskOutput, FramesDoneOutput, TaskError,
    )
}


def encode_message(message: Any) -> bytes:
    """Message dataclass -> msgpack bytes."""
    name = type(message).__name__
    if MESSAGE_TYPES.get(name) is not type(message):
        raise MessageError(f"{name} is not a spava control message")
    return msgpack.packb({"v": PROTOCOL_VERSION, "t": name, "f": dataclasses.asdict(message)}, use_bin_type=True)


def decode_message(data: bytes) -> Any:
    """msgpack bytes -> validated message dataclass; raises MessageError otherwise."""
    try:
        envelope = msgpack.unpackb(data, raw=False, strict_map_key=True)
    except (msgpack.ExtraData, msgpack.FormatError, msgpack.StackError, ValueError, TypeError) as error:
        raise MessageError(f"not a msgpack message: {error}") from None
    if not isinstance(envelope, dict) or set(envelope) != {"v", "t", "f"}:
        raise MessageError("message envelope must be a map with keys v, t, f")
    if envelope["v"] != PROTOCOL_VERSION:
        raise MessageError(f"protocol version {envelope['v']!r} != {PROTOCOL_VERSION}")
    cls = MESSAGE_TYPES.get(envelope["t"]) if isinstance(envelope["t"], str) else None
    if cls is None:
        raise MessageError(f"unknown message type {envelope['t']!r}")
    return _build(cls, envelope["f"], envelope["t"])


def from_fields(cls: type, fields_: dict[str, Any]) -> Any:
    """The dataclass `cls` of this module (a message or a part of one) built from a map of its fields,
    each checked against its type as `decode_message` does; raises MessageError naming the field."""
    return _build(cls, fields_, cls.__name__)


def _build(cls: type, fields_: Any, where: str) -> Any:
    if not isinstance(fields_, dict):
        raise MessageError(f"{where}: fields must be a map")
    hints = typing.get_type_hints(cls)
    known = {f.name: f for f in dataclasses.fields(cls)}
    unknown = set(fields_) - set(known)
    if unknown:
        raise MessageError(f"{where}: unknown field(s) {sorted(unknown)}")
    values = {}
    for name, spec in known.items():
        if name not in fields_:
            if spec.default is dataclasses.MISSING and spec.default_factory is dataclasses.MISSING:
                raise MessageError(f"{where}: missing field {name!r}")
            continue
        values[name] = _check(hints[name], fields_[name], f"{where}.{name}")
    return cls(**values)


def _check(hint: Any, value: Any, where: str) -> Any:
    """Validate `value` against a type hint; returns it (nested dataclasses are built)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is typing.Union:  # Optional[X]
        if value is None and type(None) in args:
            return None
        return _check(next(a for a in args if a is not type(None)), value, where)
    if hint is Any:
        return value
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, where)
    if origin is list:
        if not isinstance(value, list):
            raise MessageError(f"{where}: expected a list, got {type(value).__name__}")
        return [_check(args[0], item, f"{where}[]") for item in value]
    if origin is dict:
        if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
            raise MessageError(f"{where}: expected a map with string keys")
        return {k: _check(args[1], v, f"{where}.{k}") for k, v in value.items()}
    expected = {float: (int, float), int: (int,), str: (str,), bool: (bool,)}[hint]
    if not isinstance(value, expected) or (hint is int and isinstance(value, bool)):
        raise MessageError(f"{where}: expected {hint.__name__}, got {type(value).__name__}")
    return float(value) if hint is float else value
