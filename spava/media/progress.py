"""Progress of a streaming decode: which output slots are written, and the complete prefix.

Role
----
:func:`spava.media.video.decode_video_into` reports every written range of plan slots
through ``on_frames(start, stop)``, from whichever decoder thread wrote it, in no global
order (parallel decoders fill different parts of the plan at once). A consumer that
streams frames onward (e.g. encoding the first temporal grids while later frames decode)
needs the number of *leading* slots that are complete. :class:`DecodeProgress` is such
an ``on_frames`` callback: it records the ranges and keeps that prefix, thread-safely.

Inputs / outputs
----------------
``DecodeProgress(num_slots, on_prefix=None)``; pass the object as ``on_frames``. Read
``num_ready`` (complete leading slots) or block in ``wait_for(n, timeout)``; ``on_prefix(n)``
(optional) is called, from the decoder thread that completed it, whenever the prefix grows.
Call ``close()`` when the decode ended (also on failure) so that waiters wake up.
"""

from __future__ import annotations

import threading
from collections.abc import Callable


class DecodeProgress:
    """Thread-safe tracker of written plan slots and of the complete leading prefix.

    Args:
        num_slots: T, the plan's frame count (``out.shape[0]``).
        on_prefix: Called with the new prefix length each time it grows, under the
            tracker's lock (so calls arrive in increasing order); keep it quick.
    """

    def __init__(self, num_slots: int, on_prefix: Callable[[int], None] | None = None) -> None:
        if not isinstance(num_slots, int) or num_slots < 0:
            raise ValueError(f"num_slots must be an integer >= 0, got {num_slots!r}")
        self.num_slots = num_slots
        self.on_prefix = on_prefix
        self._is_written = bytearray(num_slots)
        self._num_written = 0
        self._num_ready = 0
        self._is_closed = False
        self._changed = threading.Condition()

    def __call__(self, start: int, stop: int) -> None:
        """Record that slots ``[start, stop)`` are written (the ``on_frames`` signature)."""
        if not 0 <= start <= stop <= self.num_slots:
            raise ValueError(f"slot range [{start}, {stop}) is outside [0, {self.num_slots})")
        with self._changed:
            for slot in range(start, stop):
                if not self._is_written[slot]:
                    self._is_written[slot] = 1
                    self._num_written += 1
            ready = self._num_ready
            while ready < self.num_slots and self._is_written[ready]:
                ready += 1
            if ready > self._num_ready:
                self._num_ready = ready
                if self.on_prefix is not None:
                    self.on_prefix(ready)
            self._changed.notify_all()

    @property
    def num_ready(self) -> int:
        """Leading slots ``[0, num_ready)`` that are all written."""
        return self._num_ready

    @property
    def num_written(self) -> int:
        """Slots written so far, anywhere."""
        return self._num_written

    def wait_for(self, num_slots: int, timeout: float | None = None) -> bool:
        """Block until the first ``num_slots`` slots are written; False on timeout or if closed short."""
        with self._changed:
            self._changed.wait_for(lambda: self._num_ready >= num_slots or self._is_closed, timeout)
            return self._num_ready >= num_slots

    def close(self) -> None:
        """The decode ended (finished, failed or cancelled): wake every waiter."""
        with self._changed:
            self._is_closed = True
            self._changed.notify_all()
