"""``Prefetcher``: run an iterator in a background thread, a few items ahead.

Used where producing the next item (assembling a training batch, tokenizing
the next harvest batch) can overlap with consuming the current one.
"""

from __future__ import annotations

import queue
import threading
from typing import Any, Callable, Iterator


class _Raised:
    """Wraps an exception raised in the producer thread."""

    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


_END = object()


class Prefetcher:
    """Iterate ``make_iterator()`` in a background thread, ``depth`` items ahead.

    Items come out in the producer's order. An exception in the producer is
    re-raised in the consumer at the point it would have occurred. Closing
    the consumer (``break``, garbage collection, an error) stops the thread.
    """

    def __init__(self, make_iterator: Callable[[], Iterator[Any]], depth: int = 2) -> None:
        self._make_iterator = make_iterator
        self._depth = max(1, depth)

    def __iter__(self) -> Iterator[Any]:
        q: queue.Queue = queue.Queue(maxsize=self._depth)
        stop = threading.Event()

        def put(item: Any) -> bool:
            while not stop.is_set():
                try:
                    q.put(item, timeout=0.1)
                    return True
                except queue.Full:
                    continue
            return False

        def run() -> None:
            try:
                for item in self._make_iterator():
                    if not put(item):
                        return
            except BaseException as exc:  # re-raised in the consumer
                put(_Raised(exc))
                return
            put(_END)

        thread = threading.Thread(target=run, name="mtsae-prefetch", daemon=True)
        thread.start()
        try:
            while True:
                item = q.get()
                if item is _END:
                    return
                if isinstance(item, _Raised):
                    raise item.exc
                yield item
        finally:
            stop.set()
            while thread.is_alive():
                try:
                    q.get_nowait()
                except queue.Empty:
                    thread.join(timeout=0.05)
