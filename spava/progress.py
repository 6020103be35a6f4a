"""The one progress bar of spava: tqdm on stderr, created lazily so short work stays quiet."""

from __future__ import annotations

import sys


class ProgressBar:
    """`bar(done, total)` after each step; a bar appears when there are at least `min_total` steps and
    closes when `done` reaches `total` (or on `close()`)."""

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
        self._bar.update(done - self._bar.n)
        if done >= total:
            self._bar.close()
            self._bar = None

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
