"""Settings of the HTTP server and the description of the model it serves.

`ServerOptions` holds what the operator chose on the command line (media limits, API key, where
local files may be read); `ServedModel` is what the server tells clients about the pipeline (model
id, attention method, system prompt) and is derived from the pipeline's config by `describe_pipeline`.
Both are plain data: no FastAPI here.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field

from spava.models.family import family_name, get_family

DEFAULT_MAX_MEDIA_BYTES = 512 * 1024 * 1024
DEFAULT_MEDIA_FETCH_TIMEOUT_S = 30.0


@dataclass
class ServerOptions:
    """What the operator configured; the defaults are the safe ones (no local files, no key)."""

    api_key: str | None = None  # clients send `Authorization: Bearer <key>`; None: no check
    allowed_local_media_path: str | None = None  # file:// URLs must resolve inside it; None: refused
    allowed_media_domains: tuple[str, ...] = ()  # http(s) media hosts; empty: any host
    max_media_bytes: int = DEFAULT_MAX_MEDIA_BYTES  # one data: or http(s) media item, decoded
    media_fetch_timeout_s: float = DEFAULT_MEDIA_FETCH_TIMEOUT_S  # a whole http(s) download
    served_model_name: str | None = None  # overrides the model id derived from the config
    retry_after_s: int = 1  # the Retry-After header sent with 429 (pipeline queue full)
    status_timeout_s: float = 5.0  # how long /health and /metrics wait for the pipeline's status

    def __post_init__(self) -> None:
        if self.max_media_bytes < 1:
            raise ValueError(f"--max-media-bytes must be >= 1, got {self.max_media_bytes}")
        if self.media_fetch_timeout_s <= 0:
            raise ValueError(f"--media-fetch-timeout must be > 0 seconds, got {self.media_fetch_timeout_s}")
        if self.allowed_local_media_path is not None:
            if not os.path.isdir(self.allowed_local_media_path):
                raise ValueError(f"--allowed-local-media-path {self.allowed_local_media_path!r} is not a directory")
            self.allowed_local_media_path = os.path.realpath(self.allowed_local_media_path)
        self.allowed_media_domains = tuple(d.strip().lower() for d in self.allowed_media_domains if d.strip())

    @property
    def max_body_bytes(self) -> int:
        """Largest request body: one base64 media item (4/3 of its bytes) plus 1 MiB of JSON and text."""
        return self.max_media_bytes * 4 // 3 + 4 + (1 << 20)


@dataclass(frozen=True)
class ServedModel:
    """What clients are told about the pipeline behind the server."""

    model_id: str
    method: str  # prefill.attention.method; per-request methods are not supported
    system_prompt: str  # layout.system_prompt, the system turn of every prompt
    has_vision: bool  # False for text-only model families (video and images are refused)
    created: int = field(default_factory=lambda: int(time.time()))


def model_id_from_config(config) -> str:
    """The model directory's name, else the GGUF's name, else `<family>-<size>` (random weights)."""
    model = config.model
    if model.path:
        return os.path.basename(os.path.normpath(model.path))
    if model.gguf:
        return os.path.splitext(os.path.basename(model.gguf))[0]

    return f"{family_name(model)}-{model.size}"


def describe_pipeline(pipeline, options: ServerOptions) -> ServedModel:
    """The `ServedModel` of a `Pipeline` (started here or connected to with the same config)."""
    config = pipeline.config
    return ServedModel(
        model_id=options.served_model_name or model_id_from_config(config),
        method=config.prefill.attention.method,
        system_prompt=config.layout.system_prompt,
        has_vision=get_family(config.model).has_vision,
    )
