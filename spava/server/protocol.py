"""Wire shapes of the OpenAI chat completions API as spava serves it.

The request is a pydantic model that checks types and ranges (`ChatCompletionRequest`); fields the
OpenAI API defines but spava does not model are kept as extras and judged in `spava.server.translate`
(ignored when harmless, else refused naming the field). Responses are plain dicts built here, in
the shapes the `openai` client parses:

- `chat.completion`: choices[0].message {role, content}, finish_reason, usage.
- `chat.completion.chunk`: choices[0].delta, one per streamed text delta.
- usage: prompt_tokens, completion_tokens, total_tokens, and the visual tokens of the prompt in
  `prompt_tokens_details.visual_tokens` (spava's addition; OpenAI clients keep unknown keys).
"""

from __future__ import annotations

import time
from typing import Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field

# spava's answer end -> OpenAI's: the model's end-of-sequence token and a stop string are both "stop"
FINISH_REASONS = {"eos": "stop", "stop": "stop", "length": "length"}


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    include_usage: bool = False


class ChatMessage(BaseModel):
    """One message; `content` is a string or a list of parts ({"type": "text" | "image_url" | "video_url"})."""

    model_config = ConfigDict(extra="allow")

    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: Union[str, list[dict[str, Any]], None] = None
    name: Optional[str] = None


class ChatCompletionRequest(BaseModel):
    """`POST /v1/chat/completions` body: OpenAI's fields plus spava's per-request video options."""

    model_config = ConfigDict(extra="allow")

    messages: list[ChatMessage] = Field(min_length=1)
    model: Optional[str] = None
    stream: bool = False
    stream_options: Optional[StreamOptions] = None
    max_tokens: Optional[int] = Field(None, ge=1)
    max_completion_tokens: Optional[int] = Field(None, ge=1)
    temperature: Optional[float] = Field(None, ge=0.0)
    top_p: Optional[float] = Field(None, gt=0.0, le=1.0)
    top_k: Optional[int] = Field(None, ge=0)
    seed: Optional[int] = None
    stop: Union[str, list[str], None] = None
    stop_token_ids: Optional[list[int]] = None
    # spava's own options (video.* of the config, per request)
    fps: Optional[float] = Field(None, gt=0.0)
    num_frames: Optional[int] = Field(None, ge=1)
    max_frames: Optional[int] = Field(None, ge=1)
    min_pixels: Optional[int] = Field(None, ge=1)
    max_pixels: Optional[int] = Field(None, ge=1)
    total_pixels: Optional[int] = Field(None, ge=1)
    start_time: Optional[float] = Field(None, ge=0.0)
    end_time: Optional[float] = Field(None, gt=0.0)
    attention_method: Optional[str] = None
    document: Optional[str] = None  # text models: the document the question is about
    media_io_kwargs: Optional[dict[str, Any]] = None  # vLLM's {"video": {"num_frames": N}}


def usage(result) -> dict:
    """OpenAI usage of a `RunResult`, with the prompt's visual tokens."""
    completion_tokens = len(result.token_ids)
    return {
        "prompt_tokens": result.num_prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": result.num_prompt_tokens + completion_tokens,
        "prompt_tokens_details": {"visual_tokens": result.num_visual_tokens},
    }


def completion(completion_id: str, model_id: str, result) -> dict:
    """A `chat.completion` object for a finished request; `spava` carries where the time went."""
    return {
        "id": completion_id,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model_id,
        "system_fingerprint": f"spava-{result.config_hash}",
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": result.text},
            "logprobs": None,
            "finish_reason": FINISH_REASONS.get(result.finish_reason, result.finish_reason),
        }],
        "usage": usage(result),
        "spava": {
            "timings": result.timings, "num_frames": result.num_frames, "method": result.method,
            "world_size": result.world_size, "config_hash": result.config_hash,
        },
    }


def chunk(completion_id: str, model_id: str, created: int, delta: dict, finish_reason: str | None = None,
          include_usage: bool = False) -> dict:
    """One `chat.completion.chunk`: a text delta (`{"content": ...}`, the first also `role`) or the end."""
    body = {
        "id": completion_id,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model_id,
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}],
    }
    if include_usage:
        body["usage"] = None  # as OpenAI: null on every chunk but the last, which carries it
    return body


def usage_chunk(completion_id: str, model_id: str, created: int, result) -> dict:
    """The last chunk when `stream_options.include_usage` is set: no choices, the usage."""
    return {
        "id": completion_id, "object": "chat.completion.chunk", "created": created, "model": model_id,
        "choices": [], "usage": usage(result),
    }


def model_card(served) -> dict:
    """A `model` object of `GET /v1/models`."""
    return {"id": served.model_id, "object": "model", "created": served.created, "owned_by": "spava",
            "root": served.model_id, "parent": None}
