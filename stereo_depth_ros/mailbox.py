"""A one-slot mailbox between the subscription callback and the inference worker.

Inference is slower than the camera more often than not. A queue would then grow without bound and every output
would be older than the last; instead the producer overwrites the slot (the newest pair wins) and the overwritten
pair is counted as dropped. The consumer always gets the freshest pair that arrived while it was busy.
"""
from __future__ import annotations

import threading
from typing import Generic, TypeVar

T = TypeVar("T")


class LatestMailbox(Generic[T]):
    """Thread-safe single slot. `put` never blocks; `get` blocks until an item arrives or the box is closed."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._item: T | None = None
        self._full = False
        self._closed = False
        self.dropped = 0

    def put(self, item: T) -> bool:
        """Store `item`, replacing an unconsumed one. Returns True when an older item was dropped."""
        with self._cond:
            replaced = self._full
            if replaced:
                self.dropped += 1
            self._item, self._full = item, True
            self._cond.notify()
            return replaced

    def get(self, timeout: float | None = None) -> T | None:
        """The newest item (emptying the slot), or None on timeout or once closed and empty."""
        with self._cond:
            if not self._cond.wait_for(lambda: self._full or self._closed, timeout):
                return None
            if not self._full:
                return None
            item, self._item, self._full = self._item, None, False
            return item

    def close(self) -> None:
        """Wake the consumer; later `get` calls return what is left, then None without waiting."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    @property
    def closed(self) -> bool:
        return self._closed
