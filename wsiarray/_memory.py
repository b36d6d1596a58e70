"""Output arrays for reads (one job: where decoded pixels land)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from . import _native
from .errors import ArgumentError

__all__ = ["OutputMemory", "empty_output", "output_memory"]

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
