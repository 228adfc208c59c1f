"""``capsim serve --decode-latest``: the line of frames waiting for a decode worker, keeping only
each camera's latest frame (the simulator's ``queue.preprocess_latest``).

One FIFO line holds at most one frame per camera. When a frame of camera s arrives while an earlier
frame of s still waits in the line, that earlier frame is dropped then (stale) and the new frame
joins the back of the line. A free worker takes the frame at the head; a frame arriving when a
worker is free starts at once; a frame being decoded is never dropped. Plain bookkeeping, no clock
and no threads: the server calls it from its event loop, the tests call it by hand.
"""

from __future__ import annotations

from collections import OrderedDict


class DecodeLine:
    """Decode workers and the frames waiting for one, at most one per source (camera).

    ``frame`` objects are opaque tickets (never None); the line only orders and drops them."""

    def __init__(self, workers: int):
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        self.workers = workers
        self.free = workers
        # source -> its waiting frame, in line order (head first). A re-arrival re-inserts at the back.
        self._line: OrderedDict[int, object] = OrderedDict()

    @property
    def waiting(self) -> int:
        """Frames waiting for a worker (at most one per source)."""
        return len(self._line)

    @property
    def busy(self) -> int:
        """Workers decoding a frame."""
        return self.workers - self.free

    def arrive(self, source: int, frame) -> tuple[bool, object | None]:
        """A frame of ``source`` arrives: (True, None) if it starts now on a free worker; else
        (False, the earlier frame of ``source`` it makes stale, or None) and it waits at the back."""
        if self.free:  # a free worker means an empty line: nobody waits while a worker idles
            self.free -= 1
            return True, None
        stale = self._line.pop(source, None)
        self._line[source] = frame
        return False, stale

    def finish(self):
        """A worker finished its frame: the frame it takes next (the head of the line), or None
        (the line is empty and the worker is free)."""
        if self._line:
            return self._line.popitem(last=False)[1]
        self.free += 1
        return None

    def withdraw(self, source: int, frame) -> bool:
        """Take ``frame`` out of the line (its request went away); True if it was waiting there."""
        if self._line.get(source) is frame:
            del self._line[source]
            return True
        return False
