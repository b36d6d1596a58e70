"""Uncompressed levels read straight into GPU memory with kvikio: behind a switch, off by default.

``WSIARRAY_GPU_KVIKIO=1`` reads the tiles of a raw (uncompressed, single-plane, native
byte order, no predictor) level with ``kvikio.CuFile.pread`` into one device buffer
(GPUDirect Storage where the file system has it, kvikio's POSIX "compat mode"
otherwise), one read per run of the plan (the native planner's merged byte ranges),
then copies each tile's covered window into the output on the GPU.

**Off by default, unmeasured**: until ``benchmarks/gpu_check.py`` measures it against
the default (the native ``pread`` read into host memory, then one copy up per request)
on a device, the default stays the path that is known to work. Any level this path does
not take goes the default way.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import numpy as np

from ..errors import ArgumentError
from .device import Target

#: Environment variable that turns the kvikio path on ("1") or off ("0", the default).
KVIKIO_ENV = "WSIARRAY_GPU_KVIKIO"

#: ``pread(path, destination, size, offsets_and_sizes)``: fills ``destination`` (a 1-d byte
#: array on the target) with the byte ranges, one after another.
Pread = Callable[[str, Any, list[tuple[int, int]]], None]


def enabled() -> bool:
    """Whether :data:`KVIKIO_ENV` turns the kvikio path on.

    Example:
        >>> enabled()
        False
    """
    value = os.environ.get(KVIKIO_ENV, "0")
    if value not in ("0", "1"):
        raise ArgumentError(f"{KVIKIO_ENV}={value!r}: expected 0 or 1")
    return value == "1"


def _kvikio_pread(path: str, destination: Any, ranges: list[tuple[int, int]]) -> None:
    import kvikio

    with kvikio.CuFile(path, "r") as file:
        futures, start = [], 0
        for offset, size in ranges:
            futures.append(file.pread(destination[start:start + size], size, offset))
            start += size
        for future in futures:
            future.get()


def _takes(info: dict[str, Any]) -> bool:
    return (info["codec"] == 0 and info["planes"] == 1 and not info["byteswap"] and info["predictor"] == 1
            and not info["bilevel"] and info["file"] == 0 and not info["plane_files"])


def read_raw(target: Target, reader: Any, level: int, x: int, y: int, out: Any,
             pread: Pread | None = None) -> bool:
    """Read a raw level's region into ``out`` (an ``(h, w, pixel_bytes)`` uint8 view, already filled).

    Returns False, reading nothing, when the level is not one this path takes (then the
    caller reads it the default way). ``pread`` replaces kvikio (tests run it on NumPy).

    Example:
        >>> read_raw(target, reader, 0, 0, 0, out)  # doctest: +SKIP
        True
    """
    info = reader.level_info(level)
    if not _takes(info):
        return False
    height, width, pixel = out.shape
    plan = reader.plan(level, x, y, width, height)
    tile_w, tile_h = int(info["tile_width"]), int(info["tile_height"])
    tile_bytes = tile_w * tile_h * pixel
    counts = plan["bytecount"].astype(np.int64)
    present = np.flatnonzero(counts > 0)
    if np.any(counts[present] != tile_bytes):  # short strips and the like: the default path
        return False
    xp = target.xp
    for ox, oy, w, h in plan["out_rect"][counts == 0].astype(np.int64):
        if not info["missing_fill"]:
            out[oy:oy + h, ox:ox + w] = 0  # never written: black, as on the CPU
    if len(present) == 0:
        return True
    runs = plan["runs"].astype(np.int64).reshape(-1, 4)  # first, count, offset, size
    ranges = [(int(r[2]), int(r[3])) for r in runs if counts[r[0]] > 0]
    buffer = xp.empty(sum(size for _, size in ranges), np.uint8)
    (pread or _kvikio_pread)(reader.path, buffer, ranges)
    # where each present tile's bytes start in the buffer
    starts = np.zeros(len(counts), np.int64)
    base = 0
    for first, count, offset, size in runs:
        if counts[first] == 0:
            continue
        tiles = np.arange(first, first + count)
        starts[tiles] = base + (plan["offset"][tiles].astype(np.int64) - offset)
        base += size
    rects = plan["tile_rect"].astype(np.int64)
    places = plan["out_rect"].astype(np.int64)
    for t in present:
        tile = buffer[starts[t]:starts[t] + tile_bytes].reshape(tile_h, tile_w, pixel)
        tx, ty, w, h = rects[t]
        ox, oy = places[t, :2]
        out[oy:oy + h, ox:ox + w] = tile[ty:ty + h, tx:tx + w]
    return True
