"""Batches of equally sized patches, decoded ahead on the native thread pool.

`Slide.read_region` with many locations and :func:`read_regions` (many
slides) return a :class:`BatchIterator`. Each batch is one native call that
shares ``num_workers`` threads of the process's pool among all the batch's
tiles; up to ``prefetch_factor`` batches are in flight while the caller works
on earlier ones. Every batch is a fresh array the caller owns: keeping one is
always safe.

Order: locations are used in the order given, or, with ``shuffle=True``, in
the order ``numpy.random.default_rng(seed).permutation(len(locations))``.
"""

from __future__ import annotations

import collections
import concurrent.futures
import os
import threading
import weakref
from collections.abc import Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from . import _native
from ._memory import empty_output
from .errors import ArgumentError

if TYPE_CHECKING:
    from .slide import Slide

__all__ = ["BatchIterator", "as_locations", "read_regions"]

_executor: concurrent.futures.ThreadPoolExecutor | None = None
_executor_lock = threading.Lock()


def _driver() -> concurrent.futures.ThreadPoolExecutor:
    """Threads that wait on native batch calls (the decoding happens on the native pool)."""
    global _executor
    with _executor_lock:
        if _executor is None:
            _executor = concurrent.futures.ThreadPoolExecutor(
                max_workers=max(4, 4 * (os.cpu_count() or 1)), thread_name_prefix="wsiarray-batch"
            )
        return _executor


def _after_fork() -> None:
    # The parent's driver threads do not exist in a forked child.
    global _executor, _executor_lock
    _executor = None
    _executor_lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork)


def as_locations(location: Any) -> np.ndarray | None:
    """Many locations as an ``(N, 2)`` int64 array, or None when ``location`` is one ``(x, y)``.

    Accepts a list, tuple, generator or array of pairs, or a flat sequence
    ``[x0, y0, x1, y1, ...]`` as cuCIM does.

    Example:
        >>> as_locations([(0, 0), (256, 0)]).shape
        (2, 2)
    """
    if isinstance(location, Iterator):
        location = list(location)
    array = np.asarray(location)
    if array.size == 0:
        return np.empty((0, 2), np.int64)
    if array.dtype == object or not np.issubdtype(array.dtype, np.number):
        raise ArgumentError(f"locations must be integer (x, y) pairs, got {location!r}")
    if np.issubdtype(array.dtype, np.floating) and not np.all(np.mod(array, 1) == 0):
        raise ArgumentError("locations must be integers")
    if array.shape == (2,):
        return None
    if array.ndim == 1 and array.size % 2 == 0:
        return array.astype(np.int64).reshape(-1, 2)
    if array.ndim == 2 and array.shape[1] == 2:
        return array.astype(np.int64)
    raise ArgumentError(f"locations must be (x, y) pairs, got shape {array.shape}")


class BatchIterator(Iterator[np.ndarray]):
    """Iterates over ``(batch_size, h, w, c)`` arrays of patches; ``len()`` is the batch count.

    Example:
        >>> batches = slide.read_region([(0, 0), (256, 0), (512, 0)], (224, 224), batch_size=2)
        >>> len(batches), [b.shape[0] for b in batches]
        (2, [2, 1])
    """

    def __init__(
        self,
        slides: Sequence[Slide],
        which: np.ndarray,
        levels: np.ndarray,
        locations: np.ndarray,
        size: tuple[int, int],
        *,
        fill: bytes,
        channels: int,
        dtype: np.dtype,
        num_workers: int,
        batch_size: int,
        drop_last: bool,
        prefetch_factor: int,
        shuffle: bool,
        seed: int,
    ) -> None:
        if batch_size < 1:
            raise ArgumentError(f"batch_size must be >= 1, got {batch_size}")
        if num_workers < 0:
            raise ArgumentError(f"num_workers must be >= 0, got {num_workers}")
        width, height = size
        if width < 0 or height < 0:
            raise ArgumentError(f"size must not be negative, got {size!r}")
        if prefetch_factor < 0:
            raise ArgumentError(f"prefetch_factor must be >= 0, got {prefetch_factor}")
        count = len(locations)
        order = np.random.default_rng(seed).permutation(count) if shuffle else np.arange(count)
        # (slide index, level, x, y) per patch in level pixels, in reading order.
        self._where = np.stack([which, levels, locations[:, 0], locations[:, 1]], axis=1)[order]
        self._where = np.ascontiguousarray(self._where, np.int64)
        self._readers = [slide._open.native for slide in slides]
        self._size = size
        self._fill = fill
        self._channels = channels
        self._dtype = dtype
        self._workers = max(1, num_workers)
        self._batch_size = batch_size
        self._batches = count // batch_size if drop_last else -(-count // batch_size)
        self._prefetch = max(1, prefetch_factor)
        self._next = 0  # next batch to hand out
        self._queued = 0  # next batch to submit
        self._pending: collections.deque[concurrent.futures.Future[np.ndarray]] = collections.deque()
        self._finalizer = weakref.finalize(self, _cancel, self._pending)
        # One native call at a time: batches read ahead, but never on more than
        # num_workers threads in all.
        self._serial = threading.Lock()

    def __len__(self) -> int:
        return self._batches

    def __iter__(self) -> BatchIterator:
        return self

    def _read(self, index: int) -> np.ndarray:
        where = self._where[index * self._batch_size : (index + 1) * self._batch_size]
        width, height = self._size
        out = empty_output((len(where), height, width, self._channels), self._dtype)
        if out.size:
            with self._serial:
                _native.read_batch(
                    self._readers, where, out.view(np.uint8).reshape(len(where), height, width, -1),
                    self._fill, self._workers,
                )
        return out

    def __next__(self) -> np.ndarray:
        if self._next >= self._batches:
            raise StopIteration
        while self._queued < self._batches and len(self._pending) < self._prefetch:
            self._pending.append(_driver().submit(self._read, self._queued))
            self._queued += 1
        future = self._pending.popleft()
        self._next += 1
        return future.result()

    def close(self) -> None:
        """Stop reading ahead; batches not yet started are dropped."""
        _cancel(self._pending)
        self._next = self._queued = self._batches


def _cancel(pending: collections.deque[concurrent.futures.Future[Any]]) -> None:
    while pending:
        pending.popleft().cancel()


def read_regions(
    items: Iterable[tuple[Slide | str | os.PathLike[str], tuple[int, int]]],
    size: tuple[int, int],
    *,
    level: int = 0,
    fill: float | Sequence[float] | None = None,
    num_workers: int = 0,
    batch_size: int = 1,
    drop_last: bool = False,
    prefetch_factor: int = 2,
    shuffle: bool = False,
    seed: int = 0,
) -> BatchIterator:
    """Patches from many slides in one stream: ``items`` are ``(slide_or_path, (x, y))``.

    Locations are level-0 pixels of each item's slide, ``size`` is in ``level``'s
    pixels. All slides must share dtype and channel count. Paths are opened once.

    Example:
        >>> items = [("a.svs", (0, 0)), ("b.svs", (1000, 2000))]
        >>> for batch in wsiarray.read_regions(items, (224, 224), batch_size=2):
        ...     print(batch.shape)
        (2, 224, 224, 3)
    """
    from .slide import Slide, _pair
    from .slide import open as open_slide

    slides: list[Slide] = []
    index_of: dict[int | str, int] = {}
    which: list[int] = []
    points: list[tuple[int, int]] = []
    for source, location in items:
        key: int | str = id(source) if isinstance(source, Slide) else os.fspath(source)
        if key not in index_of:
            index_of[key] = len(slides)
            slides.append(source if isinstance(source, Slide) else open_slide(source))
        which.append(index_of[key])
        points.append(_pair(location, "location"))
    if not slides:
        raise ArgumentError("read_regions needs at least one item")
    first = slides[0]
    for slide in slides[1:]:
        if (slide.dtype, slide.channels) != (first.dtype, first.channels):
            raise ArgumentError(
                f"{slide.path} has {slide.channels} x {slide.dtype} pixels, "
                f"{first.path} has {first.channels} x {first.dtype}: they cannot share a batch"
            )
    which_array = np.asarray(which, np.int64)
    level0 = np.asarray(points, np.int64).reshape(-1, 2)
    levels = np.empty(len(which_array), np.int64)
    level_xy = np.empty_like(level0)
    for i, slide in enumerate(slides):
        mask = which_array == i
        index = slide._level_index(level)
        levels[mask] = index
        level_xy[mask] = slide._to_level(level0[mask], index)
    width, height = _pair(size, "size")
    return BatchIterator(
        slides, which_array, levels, level_xy, (width, height),
        fill=first._fill_pixel(fill), channels=first.channels, dtype=first.dtype,
        num_workers=num_workers, batch_size=batch_size, drop_last=drop_last,
        prefetch_factor=prefetch_factor, shuffle=shuffle, seed=seed,
    )
