"""Qwen2.5-VL support: pixel preprocessing, 3-D M-RoPE position ids and chat prompts (no torchvision)."""
