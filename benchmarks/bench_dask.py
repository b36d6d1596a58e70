"""Level-0 per-channel mean through dask, against the native whole-level read and tifffile's zarr.

Contenders, each timed from opening the file to the three means (or, for the plain
read, to the pixels in memory):

- ``native read``: ``wsiarray.open(path).read_region((0, 0), size, 0, num_workers=n)``,
  the whole level into one array; no mean. The yardstick.
- ``native read + sum``: the same, then the per-channel mean with the fast sum below.
- ``wsiarray dask``: ``wsiarray.dask.to_dask(slide, 0)`` (2048-px chunks, tile-aligned),
  per-channel mean with the fast sum, dask's threaded scheduler with ``n`` workers.
- ``wsiarray dask .mean()``: the same array with dask's stock ``.mean(axis=(0, 1))``,
  whose per-chunk ``np.sum(dtype=float64)`` over a ``(h, w, 3)`` uint8 block costs
  more than decoding it (numpy reduces the 3-long last axis one pixel at a time).
- ``tifffile zarr``: ``da.from_zarr(tifffile.imread(path, aszarr=True, level=0))``
  (one chunk per 256-px tile, decoded by tifffile + imagecodecs), fast sum, same
  scheduler. ``--stock-mean`` also times it, and the native read, with numpy's/dask's
  stock ``.mean(axis=(0, 1))``.

The *fast sum* of a block is ``block.reshape(h, w * c).sum(axis=0, dtype=uint32)``
(contiguous row additions, vectorised) followed by a sum of the ``w`` pixels of each
channel in uint64: exact, and about 10x cheaper than decoding the block. Every
contender's means are checked against the native read's before timing.

The file is in the page cache (the check reads it first). Contenders run round-robin
(the starting one rotates each round) for ``--repeats`` rounds; the table reports
medians, minima and ratios against ``native read``.

Example::

    python -m benchmarks.bench_dask                       # 19920x26420 slide, 5 rounds
    python -m benchmarks.bench_dask --width 4096 --height 4096 --repeats 3   # smoke run
    python -m benchmarks.bench_dask --slide /data/some.svs --threads 4
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import dask.array as da
import numpy as np
import tifffile

import wsiarray
from wsiarray.dask import to_dask

from .bench_read_level import _version, output_memory_line
from .synthetic import DEFAULT_HEIGHT, DEFAULT_WIDTH, benchmark_slide_path

BASELINE = "native read"


def fast_channel_sum(block: np.ndarray) -> np.ndarray:
    """Exact per-channel sum of an ``(h, w, c)`` integer block, as uint64 ``(c,)``.

    Example::

        >>> fast_channel_sum(np.ones((4, 5, 3), np.uint8)).tolist()
        [20, 20, 20]
    """
    h, w, c = block.shape
    if block.dtype.kind not in "ui" or h * (1 << (8 * block.dtype.itemsize)) >= 2**32:
        return block.reshape(-1, c).sum(axis=0, dtype=np.float64 if block.dtype.kind == "f" else np.int64)
    rows = block.reshape(h, w * c).sum(axis=0, dtype=np.uint32)
    return rows.reshape(w, c).sum(axis=0, dtype=np.uint64)


def _chunk(block: np.ndarray, axis: tuple[int, ...], keepdims: bool) -> np.ndarray:
    return fast_channel_sum(block)[None, None, :]


def _aggregate(blocks: np.ndarray, axis: tuple[int, ...], keepdims: bool) -> np.ndarray:
    return blocks.sum(axis=axis, keepdims=keepdims)


def channel_mean(array: da.Array) -> da.Array:
    """Per-channel mean of a ``(h, w, c)`` dask array with :func:`fast_channel_sum` per chunk.

    Example::

        >>> channel_mean(da.ones((10, 10, 3), dtype=np.uint8, chunks=5)).compute().tolist()
        [1.0, 1.0, 1.0]
    """
    h, w, _ = array.shape
    sums = da.reduction(array, _chunk, _aggregate, axis=(0, 1), dtype=np.uint64, concatenate=True,
                        meta=np.empty((0,), np.uint64))
    return sums / (h * w)


@dataclass
class Contender:
    """One way of getting level 0's per-channel means (or, for the yardstick, its pixels)."""

    name: str
    run: Callable[[int], object]
    note: str = ""
    error: str | None = None
    times: list[float] = field(default_factory=list)


def make_contenders(path: Path, threads: int, stock_mean: bool) -> list[Contender]:
    def native_read(n: int) -> np.ndarray:
        with wsiarray.open(path) as slide:
            return slide.read_region((0, 0), slide.level_dimensions[0], 0, num_workers=n)

    def native_mean(n: int) -> np.ndarray:
        pixels = native_read(n)
        h, w, _ = pixels.shape
        return fast_channel_sum(pixels) / (h * w)

    def native_stock_mean(n: int) -> np.ndarray:
        return native_read(n).mean(axis=(0, 1))

    def wsiarray_dask(n: int, stock: bool = False) -> np.ndarray:
        with wsiarray.open(path) as slide:
            array = to_dask(slide, 0)
        means = array.mean(axis=(0, 1)) if stock else channel_mean(array)
        return means.compute(scheduler="threads", num_workers=n)

    def tifffile_zarr(n: int, stock: bool = False) -> np.ndarray:
        with tifffile.imread(path, aszarr=True, level=0) as store:
            array = da.from_zarr(store)
            means = array.mean(axis=(0, 1)) if stock else channel_mean(array)
            return means.compute(scheduler="threads", num_workers=n)

    contenders = [
        Contender(BASELINE, native_read, "read_region of the whole level, no mean"),
        Contender("native read + sum", native_mean, "then the fast per-channel sum"),
        Contender("wsiarray dask", wsiarray_dask, "to_dask(level 0), fast sum per chunk"),
        Contender("wsiarray dask .mean()", lambda n: wsiarray_dask(n, True), "dask's stock mean"),
        Contender("tifffile zarr", tifffile_zarr, "da.from_zarr(imread(aszarr=True)), fast sum"),
    ]
    if stock_mean:
        contenders.insert(2, Contender("native read + .mean()", native_stock_mean, "numpy's stock mean"))
        contenders.append(Contender("tifffile zarr .mean()", lambda n: tifffile_zarr(n, True), "stock mean"))
    return contenders


def verify(contenders: list[Contender], threads: int) -> None:
    """Every contender's means must equal the native read's (pixels identical)."""
    pixels = contenders[0].run(threads)
    assert isinstance(pixels, np.ndarray)
    h, w, _ = pixels.shape
    want = fast_channel_sum(pixels) / (h * w)
    del pixels
    gc.collect()
    for contender in contenders[1:]:
        try:
            got = np.asarray(contender.run(threads), dtype=np.float64)
        except Exception as exc:  # a contender that cannot run shows n/a
            contender.error = f"{type(exc).__name__}: {exc}"
            continue
        if not np.allclose(got, want, rtol=1e-12, atol=0):
            contender.error = f"means differ: {got} != {want}"
        gc.collect()
    print(f"per-channel means: {np.round(want, 4).tolist()}", flush=True)


def run(contenders: list[Contender], threads: int, repeats: int) -> None:
    live = [c for c in contenders if c.error is None]
    for round_ in range(repeats):
        order = live[round_ % len(live):] + live[: round_ % len(live)]
        for contender in order:
            t0 = time.perf_counter()
            result = contender.run(threads)
            contender.times.append(time.perf_counter() - t0)
            del result
            gc.collect()
        print(f"round {round_ + 1}/{repeats}: "
              + ", ".join(f"{c.name} {c.times[-1]:.2f}s" for c in live), flush=True)


def table(contenders: list[Contender], threads: int) -> str:
    base = statistics.median(contenders[0].times)
    rows = [
        f"| contender ({threads} threads) | median s | min s | vs {BASELINE} | what |",
        "|---|---:|---:|---:|---|",
    ]
    for c in contenders:
        if c.error is not None:
            rows.append(f"| {c.name} | n/a | n/a | n/a | {c.error} |")
            continue
        median = statistics.median(c.times)
        rows.append(f"| {c.name} | {median:.2f} | {min(c.times):.2f} | {median / base:.2f}x | {c.note} |")
    by_name = {c.name: c for c in contenders if c.error is None}
    if "wsiarray dask" in by_name and "tifffile zarr" in by_name:
        speedup = statistics.median(by_name["tifffile zarr"].times) / statistics.median(
            by_name["wsiarray dask"].times)
        rows.append("")
        rows.append(f"wsiarray dask is {speedup:.2f}x faster than the tifffile-zarr route; "
                    f"{statistics.median(by_name['wsiarray dask'].times) / base:.2f}x the native read.")
    return "\n".join(rows)


def main(argv: Sequence[str] | None = None) -> None:
    """Command line: ``python -m benchmarks.bench_dask [options]``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--slide", type=Path, help="a slide to use instead of the synthetic one")
    parser.add_argument("--width", type=int, default=DEFAULT_WIDTH)
    parser.add_argument("--height", type=int, default=DEFAULT_HEIGHT)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--stock-mean", action="store_true",
                        help="also time the native read and tifffile zarr with the stock .mean()")
    args = parser.parse_args(argv)

    path = args.slide or benchmark_slide_path(args.width, args.height)
    with wsiarray.open(path) as slide:
        (width, height), tile = slide.level_dimensions[0], slide.level_tile_sizes[0]
        chunks = to_dask(slide, 0).chunksize
    print(f"slide: {path} level 0 {width}x{height}, tiles {tile[0]}x{tile[1]}, dask chunks {chunks}")
    print(f"python {platform.python_version()}, {os.cpu_count()} CPUs, wsiarray {wsiarray.__version__}, "
          f"dask {_version('dask')}, numpy {_version('numpy')}, tifffile {_version('tifffile')}, "
          f"zarr {_version('zarr')}, imagecodecs {_version('imagecodecs')}")
    contenders = make_contenders(path, args.threads, args.stock_mean)
    verify(contenders, args.threads)
    run(contenders, args.threads, args.repeats)
    print()
    print(table(contenders, args.threads))
    print()
    print(output_memory_line())


if __name__ == "__main__":
    main()
