"""A chat completion request -> one pipeline call (`Submission`), or a 400 naming the field to change.

Rules (docs/serve.md lists them for users):
- messages: any number of `system` / `developer` messages and one or more `user` messages; their
  text parts are joined with newlines into the question. Earlier turns (`assistant`, `tool`) are
  refused: the pipeline answers one question per request.
- system text: the pipeline's system turn is fixed by its config (`layout.system_prompt`). A system
  message equal to it is accepted as is; any other system text is put before the question, separated
  by a blank line (spava cannot swap the system turn per request).
- media: at most one `video_url` or `image_url` part in the whole request.
- sampling: max_tokens / max_completion_tokens -> max_new_tokens, stop -> stop_strings, temperature,
  top_p, top_k, seed, stop_token_ids as named.
- spava options: fps, num_frames, max_frames, min_pixels, max_pixels, total_pixels, start_time,
  end_time -> video_options (num_frames without fps turns the config's default fps off);
  `media_io_kwargs.video.num_frames` (vLLM's, sent by lmms-eval) -> num_frames; attention_method
  must equal the served method; document -> the text-model context.
- other OpenAI fields: `IGNORED_FIELDS` are accepted and ignored; `HARMLESS_VALUES` are accepted only
  with their no-op values (n=1, logprobs=false, tools=[]...); anything else is refused by name.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from spava.server.errors import APIError, bad_request
from spava.server.media import MediaRef
from spava.server.options import ServedModel
from spava.server.protocol import ChatCompletionRequest

VIDEO_OPTION_FIELDS = ("fps", "num_frames", "max_frames", "min_pixels", "max_pixels", "total_pixels",
                       "start_time", "end_time")
IGNORED_FIELDS = frozenset({"user", "metadata", "store", "service_tier", "parallel_tool_calls", "safety_identifier",
                            "prompt_cache_key"})
# OpenAI fields whose listed values change nothing (None is always accepted)
HARMLESS_VALUES: dict[str, tuple] = {
    "n": (1,), "logprobs": (False,), "top_logprobs": (0,), "tools": ([],), "functions": ([],),
    "tool_choice": ("none",), "function_call": ("none",), "response_format": ({"type": "text"},),
    "presence_penalty": (0, 0.0), "frequency_penalty": (0, 0.0), "logit_bias": ({},), "modalities": (["text"],),
}
_MEDIA_PARTS = {"video_url": "video", "image_url": "image"}


@dataclass
class Submission:
    """What to pass to `Pipeline.submit`, media still as a URL (`spava.server.media` resolves it)."""

    prompt: str
    media: MediaRef | None = None
    document: str | None = None
    sampling: dict[str, Any] = field(default_factory=dict)
    video_options: dict[str, Any] = field(default_factory=dict)
    stream: bool = False
    include_usage: bool = False


def check_model(requested: str | None, served: ServedModel) -> None:
    """404 unless the request names the served model (or no model at all)."""
    if requested is not None and requested != served.model_id:
        raise APIError(404, f"the model {requested!r} does not exist; this server serves {served.model_id!r}",
                       type="invalid_request_error", param="model", code="model_not_found")


def _check_extra_fields(extras: dict[str, Any]) -> None:
    for name, value in extras.items():
        if name in IGNORED_FIELDS or value is None:
            continue
        if name in HARMLESS_VALUES:
            if value not in HARMLESS_VALUES[name]:
                allowed = " or ".join(repr(v) for v in HARMLESS_VALUES[name])
                raise bad_request(f"{name}={value!r} is not supported by this server (only {allowed})", name,
                                  "unsupported_field")
            continue
        raise bad_request(f"unknown or unsupported field {name!r}", name, "unsupported_field")


def _text_of(content, param: str, is_user: bool) -> tuple[list[str], list[MediaRef]]:
    """(text pieces, media refs) of one message's content."""
    if content is None:
        return [], []
    if isinstance(content, str):
        return [content], []
    texts, media = [], []
    for index, part in enumerate(content):
        where = f"{param}[{index}]"
        kind = part.get("type")
        if kind == "text":
            if not isinstance(part.get("text"), str):
                raise bad_request(f"{where}.text must be a string", f"{where}.text", "invalid_value")
            texts.append(part["text"])
        elif kind in _MEDIA_PARTS and is_user:
            payload = part.get(kind)
            url = payload.get("url") if isinstance(payload, dict) else payload  # {"url": ...} or a bare string
            if not isinstance(url, str) or not url:
                raise bad_request(f"{where}.{kind}.url must be a non-empty string", f"{where}.{kind}.url",
                                  "invalid_value")
            media.append(MediaRef(_MEDIA_PARTS[kind], url, f"{where}.{kind}.url"))
        else:
            allowed = "text, image_url, video_url" if is_user else "text"
            raise bad_request(f"{where}: content part type {kind!r} is not supported here (use {allowed})",
                              f"{where}.type", "unsupported_content")
    return texts, media


def _prompt_and_media(request: ChatCompletionRequest, served: ServedModel) -> tuple[str, MediaRef | None]:
    system_texts, user_texts, media = [], [], []
    for index, message in enumerate(request.messages):
        param = f"messages[{index}].content"
        if message.role in ("system", "developer"):
            system_texts += _text_of(message.content, param, is_user=False)[0]
        elif message.role == "user":
            texts, refs = _text_of(message.content, param, is_user=True)
            user_texts += texts
            media += refs
        else:
            raise bad_request(f"messages[{index}]: role {message.role!r} is not supported: this server answers one "
                              "question per request (system messages and user messages only, no earlier turns)",
                              f"messages[{index}].role", "unsupported_role")
    question = "\n".join(text for text in user_texts if text.strip())
    if not question.strip():
        raise bad_request("messages: no question: give the user message some text", "messages", "empty_prompt")
    system = "\n".join(text for text in system_texts if text.strip())
    if system and system.strip() != served.system_prompt.strip():
        question = f"{system}\n\n{question}"
    if len(media) > 1:
        raise bad_request(f"{len(media)} media items ({', '.join(r.param for r in media)}): this server takes one "
                          "video or one image per request; send each in its own request (lmms-eval: "
                          "pass_video_url=True sends a video as one video_url)", media[1].param, "too_many_media")
    return question, (media[0] if media else None)


def _sampling(request: ChatCompletionRequest) -> dict[str, Any]:
    if request.max_tokens and request.max_completion_tokens and request.max_tokens != request.max_completion_tokens:
        raise bad_request("max_tokens and max_completion_tokens differ; give one of them", "max_tokens",
                          "invalid_value")
    sampling = {"max_new_tokens": request.max_completion_tokens or request.max_tokens,
                "temperature": request.temperature, "top_p": request.top_p, "top_k": request.top_k,
                "seed": request.seed, "stop_token_ids": request.stop_token_ids,
                "stop_strings": [request.stop] if isinstance(request.stop, str) else request.stop}
    return {key: value for key, value in sampling.items() if value is not None}


def _media_io_options(kwargs: dict[str, Any]) -> dict[str, Any]:
    """vLLM's `media_io_kwargs` ({"video": {"num_frames": N, "fps": F}}) -> video options."""
    video = kwargs.get("video", {})
    if set(kwargs) - {"video"} or not isinstance(video, dict) or set(video) - {"num_frames", "fps"}:
        raise bad_request("media_io_kwargs: only {\"video\": {\"num_frames\": N, \"fps\": F}} is supported",
                          "media_io_kwargs", "unsupported_field")
    return {key: value for key, value in video.items() if value is not None}


def _video_options(request: ChatCompletionRequest) -> dict[str, Any]:
    explicit = {name: getattr(request, name) for name in VIDEO_OPTION_FIELDS if getattr(request, name) is not None}
    options = {**_media_io_options(request.media_io_kwargs or {}), **explicit}
    if "num_frames" in options and "fps" not in options:
        options["fps"] = None  # the pipeline's fps default and num_frames exclude each other
    return options


def to_submission(request: ChatCompletionRequest, served: ServedModel) -> Submission:
    """Check `request` against what this server supports and build its pipeline call."""
    check_model(request.model, served)
    _check_extra_fields(request.model_extra or {})
    if request.attention_method is not None and request.attention_method != served.method:
        raise bad_request(f"attention_method={request.attention_method!r}: per-request attention methods are not "
                          f"supported by this server; it runs {served.method!r}", "attention_method",
                          "unsupported_field")
    if request.stream_options is not None and not request.stream:
        raise bad_request("stream_options needs stream=true", "stream_options", "invalid_value")
    prompt, media = _prompt_and_media(request, served)
    if media is not None and not served.has_vision:
        raise bad_request(f"{media.param}: the model {served.model_id!r} reads text only; send no {media.kind}",
                          media.param, "unsupported_content")
    return Submission(
        prompt=prompt, media=media, document=request.document, sampling=_sampling(request),
        video_options=_video_options(request), stream=request.stream,
        include_usage=bool(request.stream_options and request.stream_options.include_usage),
    )
