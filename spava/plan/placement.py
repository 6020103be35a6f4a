"""Which model rank does what: encoder ranks first, then prefill ranks (pure).

With `num_encoders == 0` the prefill ranks encode too (colocated). Global rank g < E is encoder g;
global rank E + r is prefill rank r. Devices come from `encode.devices` / `prefill.devices`.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Placement:
    encode_devices: tuple[str, ...]
    prefill_devices: tuple[str, ...]

    @property
    def num_encoders(self) -> int:
        return len(self.encode_devices)

    @property
    def num_prefill(self) -> int:
        return len(self.prefill_devices)

    @property
    def world_size(self) -> int:
        return self.num_encoders + self.num_prefill

    @property
    def is_colocated(self) -> bool:
        return self.num_encoders == 0

    def role(self, rank: int) -> str:
        if not 0 <= rank < self.world_size:
            raise ValueError(f"rank {rank} outside the model world of {self.world_size}")
        return "encode" if rank < self.num_encoders else "prefill"

    def device(self, rank: int) -> str:
        if self.role(rank) == "encode":
            return self.encode_devices[rank]
        return self.prefill_devices[rank - self.num_encoders]

    def prefill_ranks(self) -> list[int]:
        return list(range(self.num_encoders, self.world_size))


def placement_from_config(config) -> Placement:
    return Placement(tuple(config.encode.devices), tuple(config.prefill.devices))
