"""Reading that overlaps the model: images are read and decoded on background threads, a bounded number ahead.

Pillow releases the GIL while it decodes and resizes, and reading a tar member or a Parquet row group is I/O,
so a few threads keep the next batches ready while torch runs the current one. At most `ahead` decoded images
wait at any time, whatever the dataset's size: memory stays flat as the dataset grows.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from itertools import islice
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")

READ_THREADS = 2
READ_AHEAD = 64


def prefetch(items: Iterable[T], load: Callable[[T], R], *, threads: int = READ_THREADS,
             ahead: int = READ_AHEAD) -> Iterator[R]:
    """load(item) for every item, in order, with up to `ahead` loads running or done ahead of the consumer.
    An exception of `load` is raised where its item would have been yielded."""
    source = iter(items)
    with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="invmm-read") as pool:
        pending = deque(pool.submit(load, it) for it in islice(source, ahead))
        while pending:
            done = pending.popleft()
            nxt = next(source, _END)
            if nxt is not _END:
                pending.append(pool.submit(load, nxt))
            yield done.result()


def batched(items: Iterable[T], size: int) -> Iterator[list[T]]:
    source = iter(items)
    while batch := list(islice(source, size)):
        yield batch


_END = object()
