"""Admission (`Admission.check` -> `Decision`), per-request option resolution, error kinds and the
restart budget. Pure: no sockets, no processes; the scheduler owns these objects and applies their
decisions."""

from __future__ import annotations

import collections
import math
import os
import types
from collections.abc import Container
from dataclasses import dataclass, field, fields
from typing import Optional

from spava.comm.messages import MessageError, VideoOptions, from_fields
from spava.media.sampling import FrameSampling
from spava.models import generation
from spava.models.generation import SamplingParams

VIDEO_KINDS = ("path", "bytes", "frames", "none")
MEDIA_TYPES = ("video", "image")
# ErrorOutput.kind / RequestError.kind, i.e. what the caller should do:
#   bad_input    fix the request (HTTP 400)      overloaded   queue full: retry later (429)
#   unhealthy    the pipeline refuses work or cannot be reached: retry later or elsewhere (503)
#   timeout      the request ran past its timeout_s (504)
#   cancelled    the client cancelled it or closed its pipeline
#   worker_died  a worker process died while running it (restarted; retry)
#   internal     a bug or an unexpected failure inside a stage (see the logs)
ERROR_KINDS = ("bad_input", "overloaded", "unhealthy", "timeout", "cancelled", "worker_died", "internal")


class RestartBudget:
    """At most `max_restarts` restarts within any `window_s` seconds (a rate, not a lifetime count).

    A worker that keeps crashing spends the budget and stays down until its oldest restart leaves
    the window; one that crashes now and then, days apart, is always restarted.
    """

    def __init__(self, max_restarts: int, window_s: float):
        self.max_restarts, self.window_s = max_restarts, window_s
        self._times: collections.deque[float] = collections.deque()

    def _forget_old(self, now: float) -> None:
        while self._times and now - self._times[0] >= self.window_s:
            self._times.popleft()

    def can_restart(self, now: float) -> bool:
        self._forget_old(now)
        return len(self._times) < self.max_restarts

    def record(self, now: float) -> None:
        self._forget_old(now)
        self._times.append(now)

    def seconds_until_restart(self, now: float) -> float:
        """0 when a restart is allowed now, else when the oldest restart leaves the window (infinite
        when no restart is ever allowed)."""
        if self.can_restart(now):
            return 0.0
        if not self._times:
            return math.inf
        return self._times[0] + self.window_s - now

    @property
    def num_recent(self) -> int:
        return len(self._times)


@dataclass(frozen=True)
class Decision:
    """Admission's answer to one `SubmitReq`: admitted, with the request's resolved video options and
    checked sampling overrides, or refused with an error kind and a message that says what to do."""

    kind: str = ""  # "" when admitted, else the ErrorOutput kind: unhealthy | overloaded | bad_input
    message: str = ""
    options: Optional[VideoOptions] = None
    sampling: dict = field(default_factory=dict)

    @property
    def is_admitted(self) -> bool:
        return not self.kind


class Admission:
    """Which submitted requests the scheduler takes, checked before any queueing (scheduler thread).

    Refusals, in order: "unhealthy" (the pipeline takes no work: `health.status()` says why),
    "overloaded" (`max_queued_requests` in flight: retry later), "bad_input" (fix the request: its
    id, prompt, media or options). `video`, `decode`: the config sections requests override.
    """

    def __init__(self, video, decode, max_queued_requests: int, health):
        self.video, self.decode, self.max_queued_requests, self.health = video, decode, max_queued_requests, health

    def check(self, message, *, num_in_flight: int, ids_in_use: Container[str]) -> Decision:
        """The decision on `message` (a SubmitReq) while `num_in_flight` requests run and the ids
        `ids_in_use` belong to requests that have not ended."""
        is_healthy, detail = self.health.status()
        if not is_healthy:
            return Decision("unhealthy", f"the pipeline is unhealthy and accepts no new requests for now: "
                                         f"{detail or 'see the logs'}")
        if num_in_flight >= self.max_queued_requests:
            return Decision("overloaded", f"too many requests in flight ({num_in_flight}, runtime.max_queued_requests="
                                          f"{self.max_queued_requests}); retry later")
        if message.request_id in ids_in_use:
            return Decision("bad_input", f"request id {message.request_id!r} is already in use by a request that "
                                         "has not ended; use another id")
        error = input_error(message)
        if error is not None:
            return Decision("bad_input", error)
        try:
            options = resolve_options(self.video, message.video_options)
            sampling = resolve_sampling(self.decode, message.sampling)
        except ValueError as problem:
            return Decision("bad_input", str(problem))
        return Decision(options=options, sampling=sampling)


def media_path_error(path: str, what: str) -> str | None:
    """Why the file at `path` (a video, image or document) cannot be used, or None."""
    if os.path.isdir(path):
        return f"{what} path {path!r} is a directory; pass a {what} file"
    if not os.path.exists(path):
        return f"{what} file {path!r} does not exist"
    if not os.path.isfile(path):
        return f"{what} path {path!r} is not a regular file"
    if not os.access(path, os.R_OK):
        return f"{what} file {path!r} is not readable (permissions)"
    if os.path.getsize(path) == 0:
        return f"{what} file {path!r} is empty (0 bytes)"
    return None


def input_error(message) -> str | None:
    """Why the prompt or media of `message` (a SubmitReq) cannot be used, or None."""
    if not message.prompt.strip():
        return "the prompt is empty; ask a question"
    if message.video_kind not in VIDEO_KINDS:
        return f"video kind {message.video_kind!r} is not one of {VIDEO_KINDS}"
    if message.media_type not in MEDIA_TYPES:
        return f"media type {message.media_type!r} is not one of {MEDIA_TYPES}"
    what = message.media_type
    if message.video_kind == "path":
        problem = media_path_error(message.video_path or "", what)
        if problem:
            return problem
    if message.video_kind in ("bytes", "frames") and message.video_ref is None:
        return f"{what} kind {message.video_kind!r} needs its data"
    return None


VIDEO_OPTION_NAMES = tuple(f.name for f in fields(VideoOptions))  # the video.* a request may change


def resolve_options(video, overrides: dict) -> VideoOptions:
    """The pipeline's video.* settings (`video`) updated by a request's `video_options` overrides,
    checked against the frame-sampling contract; ValueError naming the option."""
    unknown = set(overrides) - set(VIDEO_OPTION_NAMES)
    if unknown:
        raise ValueError(f"unknown video option(s) {sorted(unknown)}; valid: {sorted(VIDEO_OPTION_NAMES)}")
    values = {name: getattr(video, name) for name in VIDEO_OPTION_NAMES}
    values.update(overrides)
    try:  # first: its messages say which value to use
        FrameSampling.from_settings(types.SimpleNamespace(**values))
    except (TypeError, ValueError) as error:
        raise ValueError(f"video sampling: {error}") from None
    try:
        options = from_fields(VideoOptions, values)
    except MessageError as error:
        raise ValueError(f"video options: {error}") from None
    if not 0.0 <= options.min_decoded_fraction <= 1.0:
        raise ValueError(f"video option min_decoded_fraction must lie in [0, 1], got {options.min_decoded_fraction}")
    return options


def sampling_params(decode, overrides: dict) -> SamplingParams:
    """decode.* defaults updated by a request's sampling overrides, as `SamplingParams`; ValueError
    naming the option. `decode.max_allowed_new_tokens` bounds max_new_tokens."""
    params = generation.sampling_params(decode, overrides)
    limit = decode.max_allowed_new_tokens
    if isinstance(params.max_new_tokens, int) and params.max_new_tokens > limit:
        raise ValueError(f"max_new_tokens={params.max_new_tokens} is over decode.max_allowed_new_tokens={limit}; "
                         "ask for fewer tokens or raise decode.max_allowed_new_tokens")
    return params


def resolve_sampling(decode, overrides: dict) -> dict:
    """A request's sampling overrides, validated against decode.* defaults and limits (one stop string
    or token id given alone becomes a list of one)."""
    overrides = dict(overrides)
    for key in ("stop_strings", "stop_token_ids"):
        if isinstance(overrides.get(key), (str, int)) and not isinstance(overrides.get(key), bool):
            overrides[key] = [overrides[key]]
    sampling_params(decode, overrides)
    return overrides


def max_prepared_requests(config) -> int:
    """How many admitted requests may hold frames/pixels before the model stage takes them:
    `runtime.max_prepared_requests`, raised to `encode.max_batch_requests` when disaggregated (else
    the encoders could never find a full batch ready). Colocated it is the runtime value as is."""
    if not config.encode.devices:
        return config.runtime.max_prepared_requests
    return max(config.runtime.max_prepared_requests, config.encode.max_batch_requests)
