"""Admission rules and per-request option resolution (pure functions of config + message)."""

from __future__ import annotations

import dataclasses
import os

VIDEO_KINDS = ("path", "bytes", "frames", "none")
MEDIA_TYPES = ("video", "image")


def admission_error(message, scheduler) -> tuple[str, str] | None:
    """Why `message` (a SubmitReq) cannot be admitted, as (error kind, message), or None.

    Kinds: "unhealthy" (the pipeline takes no work), "overloaded" (queue full: retry later),
    "bad_input" (fix the request). Checked before any queueing.
    """
    if not scheduler.is_healthy:
        return "unhealthy", "the pipeline is unhealthy (workers kept dying; see the logs) and accepts no new requests"
    if len(scheduler.requests) >= scheduler.runtime.max_queued_requests:
        return "overloaded", (f"too many requests in flight ({len(scheduler.requests)}, runtime.max_queued_requests="
                              f"{scheduler.runtime.max_queued_requests}); retry later")
    error = _input_error(message, scheduler)
    return ("bad_input", error) if error is not None else None


def _input_error(message, scheduler) -> str | None:
    if message.request_id in scheduler.requests:
        return f"request id {message.request_id!r} is already in use"
    if not message.prompt.strip():
        return "the prompt is empty; ask a question"
    if message.video_kind not in VIDEO_KINDS:
        return f"video kind {message.video_kind!r} is not one of {VIDEO_KINDS}"
    if message.media_type not in MEDIA_TYPES:
        return f"media type {message.media_type!r} is not one of {MEDIA_TYPES}"
    what = message.media_type
    if message.video_kind == "path":
        path = message.video_path or ""
        if os.path.isdir(path):
            return f"{what} path {path!r} is a directory; pass a {what} file"
        if not os.path.isfile(path):
            return f"{what} file {path!r} does not exist"
        if os.path.getsize(path) == 0:
            return f"{what} file {path!r} is empty (0 bytes)"
    if message.video_kind in ("bytes", "frames") and message.video_ref is None:
        return f"{what} kind {message.video_kind!r} needs its data"
    return None


def resolve_options(config, message) -> dict:
    """video.* settings updated by the request's video_options, plus the layout budget."""
    options = {f.name: getattr(config.video, f.name) for f in dataclasses.fields(config.video)}
    unknown = set(message.video_options) - set(options) - {"backend", "num_workers", "num_decoders"}
    if unknown:
        raise ValueError(f"unknown video option(s) {sorted(unknown)}; valid: {sorted(options)}")
    options.update(message.video_options)
    options.pop("num_workers", None)
    options.pop("num_decoders", None)
    options["max_visual_tokens"] = config.layout.max_visual_tokens
    from spava.stages.video import frame_sampling

    frame_sampling(options)  # raises BadInputError (a ValueError) with the field to fix
    return options


def resolve_sampling(config, message) -> dict:
    """The request's sampling overrides, validated against decode.* defaults."""
    from spava.stages.decode import sampling_params

    sampling_params(config.decode, message.sampling)
    return dict(message.sampling)


def max_prepared_requests(config) -> int:
    """How many admitted requests may hold frames/pixels before the model stage takes them:
    `runtime.max_prepared_requests`, raised to `encode.max_batch_requests` when disaggregated (else
    the encoders could never find a full batch ready). Colocated it is the runtime value as is."""
    if not config.encode.devices:
        return config.runtime.max_prepared_requests
    return max(config.runtime.max_prepared_requests, config.encode.max_batch_requests)
