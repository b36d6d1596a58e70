"""Batches of equally sized patches, decoded ahead on the native thread pool.

`Slide.read_region` with many locations and :func:`read_regions` (many
slides) return a :class:`BatchIterator`. Each batch is one native call that
shares ``num_workers`` threads of the process's pool among all the batch's
tiles (several calls when the batch spans more files than the handle manager
keeps open, so a batch never holds more descriptors than that); up to
``prefetch_factor`` batches are in flight while the caller works on earlier
ones. Every batch is a fresh array the caller owns: keeping one is always safe.

With ``apply_icc=True`` each batch is transformed to sRGB as a whole after it
is decoded: one littleCMS call over the ``(batch * h, w, c)`` rows of the
patches that share a profile (all of them, from one slide), not one per patch.

Order: locations are used in the order given, or, with ``shuffle=True``, in
the order ``numpy.random.default_rng(seed).permutation(len(locations))``.
"""

from __future__ import annotations

import collections
import concurrent.futures
import os
import threading
import weakref
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from . import _native
from ._handles import manager
from ._icc import SrgbTransform, apply_srgb
from ._memory import empty_output
from ._reader import FileIdentity
from ._request import DctLike, check_request_size, dct_code
from ._threads import LazyPool

__all__ = ["BatchIterator"]



#: Threads that wait on native batch calls (the decoding happens on the native pool).
_DRIVER = LazyPool("wsiarray-batch", max(4, 4 * (os.cpu_count() or 1)))


class BatchIterator(Iterator[np.ndarray]):
    """Iterates over ``(batch_size, h, w, c)`` arrays of patches; ``len()`` is the batch count.

    Example:
        >>> batches = slide.read_region([(0, 0), (256, 0), (512, 0)], (224, 224), batch_size=2)
        >>> len(batches), [b.shape[0] for b in batches]
        (2, [2, 1])
    """

    def __init__(
        self,
        sources: Sequence[tuple[str, FileIdentity, str]],
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
        transforms: Sequence[SrgbTransform | None] | None = None,
        resample: np.ndarray | None = None,
        dct: DctLike = True,
        device: str = "cpu",
    ) -> None:
        # Arguments arrive parsed by the request layer (wsiarray._request),
        # which also refuses a batch too large to allocate, before any is.
        count = len(locations)
        width, height = size
        check_request_size(min(batch_size, count), width, height, channels, np.dtype(dtype))
        order = np.random.default_rng(seed).permutation(count) if shuffle else np.arange(count)
        # (source index, level, x, y) per patch in level pixels, in reading order.
        self._where = np.stack([which, levels, locations[:, 0], locations[:, 1]], axis=1)[order]
        self._where = np.ascontiguousarray(self._where, np.int64)
        # Reads at a target resolution (mpp=): (x, y, fx, fy) per patch in
        # level pixels (see _native.read_resampled); None: plain reads.
        self._coords = None if resample is None else np.ascontiguousarray(resample[order], np.float64)
        self._dct = dct
        # Files are (re)opened per batch through the handle manager, so a stream
        # over thousands of slides keeps no more open than the manager allows.
        self._sources = list(sources)
        # The sRGB transform of each source (None: pixels as stored), and the sources by transform
        transforms = list(transforms) if transforms is not None else [None] * len(self._sources)
        self._transforms = [t for t in {id(t): t for t in transforms if t is not None}.values()]
        self._transform_of = np.array([-1 if t is None else self._transforms.index(t) for t in transforms],
                                      np.int64)
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
        # A GPU device (parsed by the request layer): resolved now, so a missing
        # package or GPU is an error here, not in the first batch.
        self._target = None
        if device != "cpu":
            from ._cuda import resolve

            self._target = resolve(device)

    def __len__(self) -> int:
        return self._batches

    def __iter__(self) -> BatchIterator:
        return self

    def _read(self, index: int) -> Any:
        if self._target is not None:
            return self._read_device(index)
        return self._read_host(index)

    def _read_device(self, index: int) -> Any:
        """One batch on the GPU: one decode call per group of files (usually the whole batch)."""
        from ._cuda import read_requests, upload

        if self._coords is not None or self._transforms:  # resampled or sRGB: on the CPU, then up
            return upload(self._read_host(index), self._target)
        where = self._where[index * self._batch_size : (index + 1) * self._batch_size]
        width, height = self._size
        parts = []
        with self._serial:
            for start, stop in _file_groups(where[:, 0], manager.capacity):
                group = where[start:stop]
                readers = {int(i): manager.acquire(*self._sources[int(i)]).native
                           for i in np.unique(group[:, 0])}
                requests = [(readers[int(s)], int(lv), int(x), int(y)) for s, lv, x, y in group]
                parts.append(read_requests(self._target, requests, width, height, self._fill, self._dtype,
                                           self._channels, self._workers))
        if len(parts) == 1:
            return parts[0]
        if not parts:
            return self._target.empty((0, height, width, self._channels), self._dtype)
        return self._target.xp.concatenate(parts)

    def _read_host(self, index: int) -> np.ndarray:
        where = self._where[index * self._batch_size : (index + 1) * self._batch_size]
        width, height = self._size
        out = empty_output((len(where), height, width, self._channels), self._dtype)
        if out.size:
            pixels = out.view(np.uint8).reshape(len(where), height, width, -1)
            # Readers are acquired under the lock too, so one iterator holds one
            # group's descriptors at a time, never those of batches read ahead.
            with self._serial:
                first = index * self._batch_size
                for start, stop in _file_groups(where[:, 0], manager.capacity):
                    coords = None if self._coords is None else self._coords[first + start : first + stop]
                    self._read_group(where[start:stop], pixels[start:stop], coords)
                if self._transforms:  # under the lock too: num_workers threads in all
                    self._apply_icc(where[:, 0], out)
        return out

    def _apply_icc(self, sources: np.ndarray, out: np.ndarray) -> None:
        """Transform the batch to sRGB: once per distinct profile, over every patch that has it."""
        which = self._transform_of[sources]
        for index, transform in enumerate(self._transforms):
            mask = which == index
            if mask.all():
                apply_srgb(out, transform, self._workers)  # the usual case: the batch as one image
            elif mask.any():
                patches = out[mask]  # a contiguous copy of those patches
                apply_srgb(patches, transform, self._workers)
                out[mask] = patches

    def _read_group(self, where: np.ndarray, pixels: np.ndarray, coords: np.ndarray | None) -> None:
        if len(self._sources) == 1:
            readers = [manager.acquire(*self._sources[0]).native]
        else:
            used, local = np.unique(where[:, 0], return_inverse=True)
            readers = [manager.acquire(*self._sources[int(i)]).native for i in used]
            where = where.copy()
            where[:, 0] = local
        if coords is None:
            _native.read_batch(readers, where, pixels, self._fill, self._workers)
        else:
            _native.read_resampled(readers, np.ascontiguousarray(where[:, :2]), coords, pixels, self._fill,
                                   np.dtype(self._dtype).str[1:], dct_code(self._dct), self._workers)

    def __next__(self) -> np.ndarray:
        if self._next >= self._batches:
            raise StopIteration
        while self._queued < self._batches and len(self._pending) < self._prefetch:
            self._pending.append(_DRIVER.get().submit(self._read, self._queued))
            self._queued += 1
        future = self._pending.popleft()
        self._next += 1
        return future.result()

    def close(self) -> None:
        """Stop reading ahead; batches not yet started are dropped."""
        _cancel(self._pending)
        self._next = self._queued = self._batches


def _file_groups(sources: np.ndarray, most: int) -> list[tuple[int, int]]:
    """Consecutive ``[start, stop)`` ranges of patches with at most ``most`` distinct files each.

    A batch over more files than the handle manager keeps open is read in several
    native calls, so the descriptors it holds stay within the manager's capacity.

    Example:
        >>> _file_groups(np.array([0, 1, 0, 2, 3, 3]), 2)
        [(0, 3), (3, 6)]
    """
    if len(np.unique(sources)) <= most:  # the usual case: one call
        return [(0, len(sources))]
    groups = []
    start = 0
    seen: set[int] = set()
    for i, source in enumerate(sources.tolist()):
        if source not in seen and len(seen) == most:
            groups.append((start, i))
            start, seen = i, set()
        seen.add(source)
    groups.append((start, len(sources)))
    return groups


def _cancel(pending: collections.deque[concurrent.futures.Future[Any]]) -> None:
    while pending:
        pending.popleft().cancel()
