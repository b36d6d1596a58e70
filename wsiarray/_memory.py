"""Output arrays for reads (one job: where decoded pixels land)."""

from __future__ import annotations

import math
import mmap

import numpy as np

__all__ = ["empty_output"]

#: Outputs at least this large come from a plain anonymous mapping.
MAPPED_OUTPUT_BYTES = 8 << 20


def empty_output(shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    """An uninitialised, writable, C-contiguous array for a read to fill.

    numpy asks for transparent huge pages on large arrays; on first touch the
    kernel then zeroes 2 MiB at a time, which cost 10-15% of a whole-level read
    on the benchmark machine (see docs/architecture.md). A private anonymous
    mapping gets plain pages, filled on demand as the decoder writes them, and
    is unmapped when the array is freed.

    Example:
        >>> empty_output((4096, 4096, 3), np.dtype(np.uint8)).flags.writeable
        True
    """
    nbytes = math.prod(shape) * np.dtype(dtype).itemsize
    if nbytes < MAPPED_OUTPUT_BYTES:
        return np.empty(shape, dtype)
    return np.frombuffer(mmap.mmap(-1, nbytes), dtype).reshape(shape)
