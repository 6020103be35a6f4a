"""InternVL3 (HF-converted checkpoints): InternViT tiles, pixel shuffle, Qwen2 language model."""
