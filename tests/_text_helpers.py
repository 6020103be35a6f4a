"""Test helpers shared by the text-model tests."""

from __future__ import annotations


class CharTokenizer:
    """Character-level tokenizer with a ChatML-like template (stands in for a real one in prompt tests)."""

    chat_template = "chatml"

    def __call__(self, text, add_special_tokens=True):
        return {"input_ids": ([1] if add_special_tokens else []) + [ord(c) for c in text]}

    def apply_chat_template(self, messages, tokenize=False, add_generation_prompt=False):
        text = "".join(f"<s>user\n{m['content']}</s>\n" for m in messages)
        return text + ("<s>assistant\n" if add_generation_prompt else "")

    def decode(self, ids, skip_special_tokens=False):
        return "".join(chr(i) for i in ids)
