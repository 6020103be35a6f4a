"""Qwen3-VL support: presets, chat prompt with frame timestamps, M-RoPE positions, DeepStack adapter."""
