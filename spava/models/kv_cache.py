"""The distributed KV cache: each rank keeps the K/V of the prompt tokens it owns.

After prefill, rank r holds, per layer, the post-RoPE K/V of `plan.owned` (its chunks, its anchor
share, and on the decode rank the query block); the decode rank also appends every generated token.
Storage is preallocated with room for the whole answer, so a decode step writes its token's K/V at a
row given by a device tensor (`write`) and reads the number of valid rows from the device too: a
step never reallocates, never syncs, and can be replayed as a CUDA graph. `length` is the host's
count (the prompt rows); the decode engine keeps the live count on the device.
"""

from __future__ import annotations

import torch


class LayerKVCache:
    """K/V `[C, Hkv, D]` of one layer, growable in place."""

    def __init__(self, k: torch.Tensor, v: torch.Tensor, extra_capacity: int):
        capacity = k.shape[0] + extra_capacity
        self._k = k.new_empty((capacity, *k.shape[1:]))
        self._v = v.new_empty((capacity, *v.shape[1:]))
        self._k[: k.shape[0]] = k
        self._v[: v.shape[0]] = v
        self.length = k.shape[0]

    def write(self, index: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
        """Store `[T, Hkv, D]` rows at the rows `index` `[T]` (int64, on the cache's device)."""
        self._k.index_copy_(0, index, k)
        self._v.index_copy_(0, index, v)

    @property
    def capacity(self) -> int:
        return self._k.shape[0]

    @property
    def storage_k(self) -> torch.Tensor:
        """The whole K storage `[capacity, Hkv, D]` (valid rows first)."""
        return self._k

    @property
    def storage_v(self) -> torch.Tensor:
        return self._v

    def append(self, k: torch.Tensor, v: torch.Tensor) -> None:
        """Append `[T, Hkv, D]` rows, doubling the storage when it is full."""
        needed = self.length + k.shape[0]
        if needed > self._k.shape[0]:
            grown = max(needed, 2 * self._k.shape[0])
            self._k = torch.cat([self._k[: self.length], self._k.new_empty((grown - self.length, *k.shape[1:]))])
            self._v = torch.cat([self._v[: self.length], self._v.new_empty((grown - self.length, *v.shape[1:]))])
        self._k[self.length: needed] = k
        self._v[self.length: needed] = v
        self.length = needed

    @property
    def k(self) -> torch.Tensor:
        return self._k[: self.length]

    @property
    def v(self) -> torch.Tensor:
        return self._v[: self.length]


class DistributedKVCache:
    """One `LayerKVCache` per decoder layer; `is_owner` marks the rank that stores new tokens."""

    def __init__(self, is_owner: bool, extra_capacity: int = 256):
        self.is_owner = is_owner
        self.extra_capacity = extra_capacity
        self.layers: list[LayerKVCache] = []

    def add_layer(self, k: torch.Tensor, v: torch.Tensor) -> None:
        self.layers.append(LayerKVCache(k, v, self.extra_capacity if self.is_owner else 0))

    @property
    def num_tokens(self) -> int:
        return self.layers[0].length if self.layers else 0

    def num_bytes(self) -> int:
        return sum(layer.k.numel() * layer.k.element_size() * 2 for layer in self.layers)
