"""Output arrays for reads (one job: where decoded pixels land)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from . import _native
from .errors import ArgumentError

__all__ = ["OutputMemory", "channels_first", "empty_output", "output_memory"]

#: Outputs at least this large come from the native output-memory pool.
POOLED_OUTPUT_BYTES = 8 << 20


@dataclass(frozen=True)
class OutputMemory:
    """Limits and counters of the pool that recycles large output arrays.

    ``retained_mib`` is memory held for reuse right now; ``reused`` and
    ``mapped`` count outputs served from it and from fresh mappings.

    Example:
        >>> def served(stats): return stats.reused + stats.mapped
        >>> before = wsiarray.output_memory()
        >>> patch = slide.read_region((0, 0), (2048, 2048))  # 12 MiB: a pooled output
        >>> served(wsiarray.output_memory()) - served(before)
        1
    """

    max_mib: float
    idle_seconds: float
    retained_mib: float
    retained_buffers: int
    reused: int
    mapped: int


def empty_output(shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    """An uninitialised, writable, C-contiguous array for a read to fill.

    Arrays of 8 MiB and more come from the native output-memory pool (see
    :func:`output_memory`): the first write to fresh memory costs a page fault
    per 4 KiB, which on the benchmark VM is a quarter of a whole-level read,
    and memory freed by an earlier read of a similar size is already mapped.
    Views keep the memory leased; it returns to the pool when the last goes.

    Example:
        >>> empty_output((4096, 4096, 3), np.dtype(np.uint8)).flags.writeable
        True
    """
    dtype = np.dtype(dtype)
    nbytes = math.prod(shape) * dtype.itemsize
    if nbytes < POOLED_OUTPUT_BYTES:
        return np.empty(shape, dtype)
    return _native.empty_output(nbytes).view(dtype).reshape(shape)


def channels_first(image: np.ndarray, channels: int | None = None, workers: int = 0) -> np.ndarray:
    """A new C-contiguous ``(channels, h, w)`` array of the first ``channels`` channels of ``image``.

    ``image`` is ``(h, w, c)``, C-contiguous; ``channels`` defaults to ``c``. One
    native pass, GIL released (SSSE3 shuffles for 8-bit samples on x86): a
    224-px RGB patch takes about 8 us where numpy's copy of a moved-axis view
    takes about 45 us. ``workers`` threads of the native pool share large images.

    Example:
        >>> rgba = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
        >>> channels_first(rgba, 3).shape, channels_first(rgba, 3)[2].tolist()
        ((3, 2, 3), [[2, 6, 10], [14, 18, 22]])
    """
    height, width, samples = image.shape
    channels = samples if channels is None else channels
    if not (image.flags.c_contiguous and 0 < channels <= samples):
        raise ArgumentError(f"channels_first needs a C-contiguous (h, w, c) array and 0 < channels <= c; "
                            f"got {image.shape} and channels={channels}")
    out = empty_output((channels, height, width), image.dtype)
    if out.size:
        itemsize = image.dtype.itemsize
        _native.to_planes(image.view(np.uint8).reshape(height, width, samples * itemsize),
                          out.view(np.uint8).reshape(channels, height, width * itemsize), itemsize, workers)
    return out


def output_memory(max_mib: float | None = None, idle_seconds: float | None = None) -> OutputMemory:
    """Set (when given) and report how much freed output memory is kept for reuse.

    Large arrays that reads return (8 MiB and more) are recycled: when Python
    frees one, its memory stays mapped for up to ``idle_seconds`` (default 10,
    as jemalloc's page decay) and within ``max_mib`` in all (default an eighth
    of physical memory, at most 4 GiB), and the next read of a similar size
    reuses it without page faults. ``output_memory(max_mib=0)`` returns
    everything to the system at once and turns recycling off.

    Example:
        >>> wsiarray.output_memory().idle_seconds
        10.0
        >>> wsiarray.output_memory(max_mib=0).retained_mib
        0.0
    """
    if max_mib is not None and not max_mib >= 0:
        raise ArgumentError(f"max_mib must be >= 0, got {max_mib!r}")
    if idle_seconds is not None and not idle_seconds >= 0:
        raise ArgumentError(f"idle_seconds must be >= 0, got {idle_seconds!r}")
    stats = _native.output_memory(
        None if max_mib is None else int(max_mib * (1 << 20)),
        None if idle_seconds is None else float(idle_seconds),
    )
    return OutputMemory(
        max_mib=stats["max_bytes"] / (1 << 20),
        idle_seconds=stats["max_idle_seconds"],
        retained_mib=stats["retained_bytes"] / (1 << 20),
        retained_buffers=stats["retained_buffers"],
        reused=stats["reused"],
        mapped=stats["mapped"],
    )
