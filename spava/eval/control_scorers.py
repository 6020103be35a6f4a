"""Control scorers for the fidelity benchmark, plugged in like any user scorer
(`prefill.attention.scorer: spava.eval.control_scorers:random_scores`).

Same signature as `spava.attention.scoring`: (q_query `[Lq, Hq, D]`, k `[S, Hkv, D]`) -> `[S, Hkv]`
float32. The method max-pools and takes the top-k of what they return, as for the real scorer.
  random_scores    uniform noise: a selection that ignores both the query and the keys. Seeded by the
                   keys' bytes, so a run is reproducible and every chunk and layer draws differently.
  inverted_scores  minus the query-aware score: passes the tokens the real scorer ranks lowest.
"""

from __future__ import annotations

import hashlib

import torch

from spava.attention.scoring import query_aware_scores


def random_scores(q_query: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Uniform random scores `[S, Hkv]` float32, seeded from a digest of k's first and last rows."""
    sample = torch.cat([k[:1], k[-1:]]).float().cpu().contiguous()
    seed = int.from_bytes(hashlib.sha256(sample.numpy().tobytes()).digest()[:8], "little") % (2**63)
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(k.shape[:2], generator=generator).to(k.device)


def inverted_scores(q_query: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """The query-aware score negated: the least relevant tokens rank first."""
    return -query_aware_scores(q_query, k)
