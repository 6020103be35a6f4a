"""Text-only decoder LMs (Llama, Qwen2, SmolLM2, ...): HF transformers modules driven by spava.

`TextLM` wraps an HF `*ForCausalLM` with the Llama / Qwen2 layer layout and exposes what
`ModelRunner` needs: `decoder_modules()` (plain 1-D RoPE, `is_mrope=False`), `.device`, `.dtype`,
`eos_token_ids()` and the `.tokenizer`. Weights come from a local safetensors directory
(`from_pretrained`), from a GGUF file converted once into a cached safetensors checkpoint
(`from_gguf`), or from a config with random weights (`from_config`, tests).

`build_text_inputs(tokenizer, document, question)` builds the `PromptInputs` of one long-document
request: the document is the context that sequence-parallel methods split, the question plus the
assistant prefix is the query block, and position ids are `arange(N)`.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from spava.models.adapter import HFAdapter, common_prefix_length, load_local_hf, random_hf
from spava.models.decoder import DecoderModules
from spava.models.dynamic_rope import dynamic_rotary
from spava.models.inputs import PromptInputs

# Marks a finished GGUF cache; written last so that a crash never leaves a half cache that looks done.
_CACHE_DONE = "spava_gguf_source.txt"


class TextLM(HFAdapter):
    vision_spec = None  # no vision tower

    """Adapter over an HF decoder-only causal LM with Llama / Qwen2-style layers.

    Args:
        hf_model: a transformers `*ForCausalLM` (`.model.layers`, `.model.rotary_emb`, `.lm_head`).
        tokenizer: its tokenizer, or None (prompt building then needs one from elsewhere).
    """

    def __init__(self, hf_model, tokenizer=None):
        _check_supported(hf_model)
        self.hf = hf_model.eval()
        self.config = hf_model.config
        self.tokenizer = tokenizer

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, dtype: torch.dtype = torch.float32,
                        device: str | torch.device = "cpu", *, load_tokenizer: bool = True) -> "TextLM":
        """Load a local HF directory (config.json + *.safetensors [+ tokenizer]); nothing is downloaded."""
        from transformers import AutoModelForCausalLM

        hf_model = load_local_hf(AutoModelForCausalLM, path, dtype, "pass the local directory of a text "
                                 "checkpoint, or use TextLM.from_gguf for a .gguf file")
        return cls(hf_model.to(device), load_local_tokenizer(os.fspath(path)) if load_tokenizer else None)

    @classmethod
    def from_config(cls, config, *, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu",
                    seed: int = 0, tokenizer=None) -> "TextLM":
        """Random weights from an HF config (e.g. a tiny `LlamaConfig` in tests)."""
        from transformers import AutoModelForCausalLM

        return cls(random_hf(AutoModelForCausalLM.from_config, config, dtype, device, seed), tokenizer)

    @classmethod
    def from_gguf(cls, gguf_path: str | os.PathLike, cache_dir: str | os.PathLike,
                  dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu") -> "TextLM":
        """Load a GGUF file through transformers (dequantised), caching a safetensors copy.

        The first call converts `gguf_path` with `AutoModelForCausalLM.from_pretrained(dir,
        gguf_file=name)` (needs the `gguf` and `accelerate` packages) and saves model + tokenizer
        into `cache_dir`; later calls load that directory directly (much faster). A cache made from
        another file (path or size differs) is rebuilt.
        """
        gguf_path, cache_dir = Path(gguf_path), Path(cache_dir)
        if not gguf_path.is_file() or gguf_path.suffix != ".gguf":
            raise ValueError(f"gguf_path {str(gguf_path)!r} is not a .gguf file")
        if not is_cache_of(cache_dir, gguf_path):
            # The cache is float32 whatever `dtype` asks now, so later loads at any dtype lose nothing.
            convert_gguf(gguf_path, cache_dir, torch.float32)
        return cls.from_pretrained(cache_dir, dtype=dtype, device=device)

    def eos_token_ids(self) -> tuple[int, ...]:
        """Stop ids: the generation config's eos ids, else the model config's (GGUF tokenizers may
        carry a wrong eos token, so the tokenizer is only the last resort)."""
        for source in (getattr(self.hf, "generation_config", None), self.config):
            eos = getattr(source, "eos_token_id", None) if source is not None else None
            if eos is not None:
                return tuple(eos) if isinstance(eos, (list, tuple)) else (int(eos),)
        eos = getattr(self.tokenizer, "eos_token_id", None)
        return () if eos is None else (int(eos),)

    def decoder_modules(self) -> DecoderModules:
        cfg = self.config
        body = self.hf.model
        head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        # dynamic NTK RoPE must see the whole prompt's length on every rank (spava.models.dynamic_rope)
        rotary, is_length_dependent = dynamic_rotary(body.rotary_emb)
        return DecoderModules(
            embed_tokens=body.embed_tokens, layers=body.layers, norm=body.norm, rotary_emb=rotary,
            lm_head=self.hf.lm_head, num_heads=cfg.num_attention_heads,
            num_kv_heads=getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads,
            head_dim=head_dim, is_mrope=False, is_rope_length_dependent=is_length_dependent,
        )


def _check_supported(hf_model) -> None:
    """Refuse models whose attention the sharded decoder would silently get wrong."""
    body = getattr(hf_model, "model", None)
    if body is None or not all(hasattr(body, name) for name in ("embed_tokens", "layers", "norm", "rotary_emb")):
        raise ValueError(f"{type(hf_model).__name__} does not have the Llama / Qwen2 decoder layout "
                         "(model.embed_tokens, model.layers, model.norm, model.rotary_emb); use a Llama-, "
                         "Qwen2- or SmolLM2-style checkpoint")
    cfg = hf_model.config
    layer_types = getattr(cfg, "layer_types", None) or ()
    if getattr(cfg, "use_sliding_window", False) or any(t != "full_attention" for t in layer_types):
        raise ValueError("sliding-window attention layers are not supported by the sharded decoder; "
                         "set use_sliding_window=False in the model config or use a full-attention model")


def load_local_tokenizer(path: str):
    """The directory's tokenizer, or None when it has no tokenizer files."""
    from transformers import AutoTokenizer

    names = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")
    if not any(os.path.isfile(os.path.join(path, name)) for name in names):
        return None
    return AutoTokenizer.from_pretrained(path, local_files_only=True)


def _cache_stamp(gguf_path: Path) -> str:
    """What the cache was made from: the GGUF's resolved path and size in bytes."""
    return f"{gguf_path.resolve()}\n{gguf_path.stat().st_size}\n"


def is_cache_of(cache_dir: Path, gguf_path: Path) -> bool:
    """Whether `cache_dir` holds a finished conversion of this very `gguf_path` (same path and size)."""
    marker = cache_dir / _CACHE_DONE
    return marker.is_file() and marker.read_text() == _cache_stamp(gguf_path)


def convert_gguf(gguf_path: Path, cache_dir: Path, dtype: torch.dtype) -> None:
    """Dequantise `gguf_path` with transformers and save model + tokenizer as safetensors in `cache_dir`."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    directory, name = str(gguf_path.parent), gguf_path.name
    try:
        hf_model = AutoModelForCausalLM.from_pretrained(directory, gguf_file=name, dtype=dtype)
        tokenizer = AutoTokenizer.from_pretrained(directory, gguf_file=name)
    except ImportError as error:
        raise ImportError(f"loading {name} needs the GGUF extras: pip install gguf accelerate ({error})") from error
    # The loaded weights are dense; drop the GGUF quantisation marker so the saved copy loads as a
    # plain checkpoint instead of re-entering the GGUF quantizer.
    if hasattr(hf_model.config, "quantization_config"):
        del hf_model.config.quantization_config
    hf_model.hf_quantizer = None
    cache_dir.mkdir(parents=True, exist_ok=True)
    hf_model.save_pretrained(cache_dir)
    tokenizer.save_pretrained(cache_dir)
    (cache_dir / _CACHE_DONE).write_text(_cache_stamp(gguf_path))



def render_prompt(tokenizer, document: str, question: str, *, use_chat_template: bool = True,
                  separator: str = "\n\n") -> tuple[str, str]:
    """(full prompt text, the part of it that ends with the document).

    With the chat template: one user turn holding the document, `separator`, then the question,
    followed by the assistant prefix. Without: `document + separator + question + "\\n"`.
    """
    content = f"{document}{separator}{question}"
    if not use_chat_template:
        return content + "\n", document + separator
    if getattr(tokenizer, "chat_template", None) is None:
        raise ValueError("the tokenizer has no chat template; pass use_chat_template=False")
    text = tokenizer.apply_chat_template([{"role": "user", "content": content}], tokenize=False,
                                         add_generation_prompt=True)
    cut = text.rfind(content)
    if cut < 0:
        raise ValueError("the chat template changed the message text; pass use_chat_template=False")
    return text, text[: cut + len(document) + len(separator)]


def build_text_inputs(tokenizer, document: str, question: str, *, use_chat_template: bool = True,
                      separator: str = "\n\n") -> tuple[PromptInputs, str]:
    """Prompt of one long-document question.

    Returns:
        (PromptInputs with input_ids `[N]`, position_ids `[N]` = arange(N) and `num_query_tokens` =
        the tokens after the document (question + end of turn + assistant prefix), the prompt text).
        BPE may merge the document's last characters with the question; such a token counts as query.
    """
    text, context_text = render_prompt(tokenizer, document, question, use_chat_template=use_chat_template,
                                       separator=separator)
    # The chat template writes its own special tokens; a raw prompt gets the tokenizer's (e.g. BOS).
    add_special = not use_chat_template
    input_ids = list(tokenizer(text, add_special_tokens=add_special)["input_ids"])
    context_ids = list(tokenizer(context_text, add_special_tokens=add_special)["input_ids"])
    num_context = common_prefix_length(context_ids, input_ids)
    if num_context in (0, len(input_ids)):
        raise ValueError("the prompt has an empty document or an empty question; give both")
    ids = torch.tensor(input_ids, dtype=torch.long)
    inputs = PromptInputs(input_ids=ids, position_ids=torch.arange(ids.numel()),
                          num_query_tokens=len(input_ids) - num_context)
    return inputs, text

