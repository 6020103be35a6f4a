"""Model families: everything a stage needs from a model, behind one interface, found by name.

A `ModelFamily` (one per architecture family: Qwen2.5-VL, the Llama/Qwen2-style text LMs, ...)
answers three kinds of question, each where it is asked:

* at load, in the process that reads the config (cheap: no weights, no heavy imports):
  `validate()` (sizes, paths, that a checkpoint really is of this family), `vision_spec()` (the
  tower's input contract, for budgets and grids), `prepare()` (one-off work before workers start);
* on the CPU workers: `processor()` -> a `Processor` with the tokenizer, the chat prompt and
  `build_inputs` (token ids, positions and where the visual tokens go, from the visual items' grids),
  EOS ids and detokenisation;
* on the model ranks: `build(parts, device)` -> a model adapter (`ModelAdapter` below).

The registry maps a family name to its class (imported lazily) and the checkpoint `model_type`s
it serves; `model.family: auto` picks the family from the checkpoint's config.json. Adding a family
is its own folder plus one line in `FAMILIES`.
"""

from __future__ import annotations

import json
import os
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from spava.objects import load_object

if TYPE_CHECKING:
    import torch

    from spava.models.decoder import DecoderModules
    from spava.models.vision_spec import VisionSpec


@dataclass(frozen=True)
class FamilyEntry:
    """Where a family's class lives ("package.module:Class") and the config `model_type`s it serves."""

    target: str
    model_types: tuple[str, ...]


FAMILIES: dict[str, FamilyEntry] = {
    "qwen2_5_vl": FamilyEntry("spava.models.qwen2_5_vl.family:Qwen25VLFamily", ("qwen2_5_vl",)),
    "qwen3_vl": FamilyEntry("spava.models.qwen3_vl.family:Qwen3VLFamily", ("qwen3_vl",)),
    "text": FamilyEntry("spava.models.text_family:TextFamily", ("llama", "qwen2", "qwen3", "mistral")),
    "internvl": FamilyEntry("spava.models.internvl.family:InternVLFamily", ("internvl",)),
}
DEFAULT_FAMILY = "qwen2_5_vl"  # for random weights of a preset size when nothing says otherwise


class ModelAdapter(Protocol):
    """What the model ranks use of a model (implemented by each family's adapter class)."""

    device: "torch.device"
    dtype: "torch.dtype"

    def decoder_modules(self) -> "DecoderModules":
        """The language model's modules, run by `spava.models.decoder.ShardedDecoder`."""

    def encode(self, pixel_rows: "torch.Tensor", grid_thw: "torch.Tensor") -> "torch.Tensor":
        """Vision tower: pixel rows `[P, patch_dim]` of the grids `[G, 3]` -> features `[P/merge^2, d']`
        (d' = `visual_width`: the embedding, plus any per-token features for later layers)."""

    def place_visual(self, hidden: "torch.Tensor", local_rows: "torch.Tensor", features: "torch.Tensor") -> None:
        """Write routed features `[n, d']` into the local hidden states `[S, d]` at `local_rows` (HFAdapter)."""

    def take_layer_additions(self) -> "dict[int, tuple[torch.Tensor, torch.Tensor]] | None":
        """What `place_visual` kept for the decoder layers (Qwen3-VL's DeepStack), or None (HFAdapter)."""


class Processor(ABC):
    """Tokenizer and prompt building of one family (layout and decode stages, CPU)."""

    tokenizer: Any

    @abstractmethod
    def build_inputs(self, prompt: str, *, document: str | None, items: list, system_prompt: str):
        """`PromptInputs` (no pixels) of one request: token ids `[N]`, positions, the query split and,
        for `items` (`VisualItem`s: their grids), where each visual token goes. Raises ValueError with
        a message for the user when the request cannot be laid out (e.g. a video for a text model)."""

    @abstractmethod
    def eos_token_ids(self) -> tuple[int, ...]:
        """Token ids that end an answer."""

    def decode(self, token_ids: list[int], skip_special_tokens: bool = False) -> str:
        return self.tokenizer.decode(token_ids, skip_special_tokens=skip_special_tokens)


class ModelFamily(ABC):
    """One model family (see the module docstring); built from the `model` config section."""

    name: ClassVar[str]
    has_vision: ClassVar[bool] = True
    presets: ClassVar[tuple[str, ...]] = ()

    def __init__(self, model_config):
        self.model_config = model_config

    def validate(self) -> None:
        """Raise ValueError naming the setting to change if the model section cannot work."""
        config = self.model_config
        if config.path is None and self.presets and config.size not in self.presets:
            raise ValueError(f"model.size {config.size!r} is not a {self.name} preset; choose one of "
                             f"{', '.join(self.presets)}, or set model.path to a local checkpoint")

    def prepare(self) -> None:
        """One-off work in the launching process before any worker starts (e.g. convert a checkpoint)."""

    def vision_spec(self) -> "VisionSpec | None":
        """The vision tower's input contract; None for text-only families."""
        return None

    @abstractmethod
    def processor(self) -> Processor:
        """Tokenizer and prompt building (CPU workers)."""

    @abstractmethod
    def build(self, parts: tuple[str, ...], device: str) -> ModelAdapter:
        """The model on `device` with only `parts` ("vision", "text") kept."""


def read_model_type(path: str) -> str:
    """The `model_type` of a local checkpoint's config.json (no transformers import)."""
    config_path = os.path.join(path, "config.json")
    if not os.path.isfile(config_path):
        raise ValueError(f"model.path {path!r} has no config.json; give a local Hugging Face checkpoint directory")
    try:
        with open(config_path) as handle:
            model_type = json.load(handle).get("model_type")
    except (OSError, json.JSONDecodeError) as error:
        raise ValueError(f"model.path {path!r}: config.json is not readable JSON ({error})") from None
    if not isinstance(model_type, str):
        raise ValueError(f"model.path {path!r}: config.json has no model_type")
    return model_type


def family_name(model_config) -> str:
    """The registered family of a `model` section: `model.family`, or from the checkpoint (auto)."""
    if model_config.family != "auto":
        if model_config.family not in FAMILIES:
            raise ValueError(f"model.family {model_config.family!r} is not supported; choose one of auto, "
                             f"{', '.join(FAMILIES)}")
        return model_config.family
    if model_config.path is not None:
        model_type = read_model_type(model_config.path)
        for name, entry in FAMILIES.items():
            if model_type in entry.model_types:
                return name
        supported = sorted(t for entry in FAMILIES.values() for t in entry.model_types)
        raise ValueError(f"model.path {model_config.path!r} is a {model_type!r} checkpoint, which spava does not "
                         f"support; supported model types: {', '.join(supported)}")
    if model_config.gguf is not None:
        return "text"
    return DEFAULT_FAMILY


def get_family(model_config) -> ModelFamily:
    """The `ModelFamily` of a `model` config section (imports only that family's module)."""
    name = family_name(model_config)
    entry = FAMILIES[name]
    if model_config.path is not None and model_config.family != "auto":
        model_type = read_model_type(model_config.path)
        if model_type not in entry.model_types:
            raise ValueError(f"model.path {model_config.path!r} is a {model_type!r} checkpoint but model.family is "
                             f"{name!r} (serves {', '.join(entry.model_types)}); set model.family=auto")
    return load_object(entry.target, f"model family {name}")(model_config)
