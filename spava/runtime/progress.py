"""Progress bars for long requests (tqdm on stderr), created lazily so short requests stay quiet."""

from __future__ import annotations

import sys


class LayerProgress:
    """`callback(done, total)` per decoder layer; a bar appears for prefills of many layers."""

    def __init__(self, description: str, min_total: int = 8):
        self.description = description
        self.min_total = min_total
        self._bar = None

    def __call__(self, done: int, total: int) -> None:
        if total < self.min_total:
            return
        if self._bar is None:
            from tqdm import tqdm

            self._bar = tqdm(total=total, desc=self.description, file=sys.stderr, leave=False)
        self._bar.update(1)
        if done >= total:
            self._bar.close()
            self._bar = None
