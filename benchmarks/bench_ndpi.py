"""Hamamatsu NDPI (issue 20): random patches and a whole level, wsiarray vs OpenSlide and fastslide.

The slide is made once by ``../shared/formats/make_ndpi.py`` (default 40000x30000,
3 stored levels, 4:4:4, 64x8-px restart intervals, quality 80) and cached in
``~/.cache/wsiarray-bench/``. Its level 0 is make_ndpi.py's 4096x3072 texture repeated
(mirrored every other time): make_ndpi.py's own texture at that size takes over an hour
of CPU. Making it needs about 10 GB of memory.

- **patches**: ``--patches`` (2,000) random 224-px patches of level 0, wholly inside
  the image. wsiarray reads them in batches of 32 (``read_region(locations, ...,
  batch_size=32, num_workers=n)``); OpenSlide and fastslide read one patch per call
  on an ``n``-thread pool. No tile cache anywhere (``OpenSlideCache(0)``; fastslide's
  is off by default), so every patch decodes its intervals.
- **level**: the whole of ``--level`` (default 2, 10000x7500) into one array:
  ``read_level_region`` with ``num_workers=n``; OpenSlide and fastslide one
  ``read_region`` call (their own threading, if any).

Contenders run round-robin, the first one rotating, for ``--repeats`` rounds; the
table gives each one's median seconds and the median over rounds of its time divided
by wsiarray's in the same round (> 1: slower than wsiarray). Before timing, each
contender's first patches (or the level) are compared with wsiarray's (max |diff|:
fastslide decodes with another IDCT, a few levels off).

Example::

    python -m benchmarks.bench_ndpi                            # both parts, 3 rounds
    python -m benchmarks.bench_ndpi --width 8192 --height 6144 --patches 300 --repeats 2
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import os
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

MAKE_NDPI = Path(__file__).resolve().parents[2] / "shared" / "formats" / "make_ndpi.py"
CACHE = Path(os.environ.get("WSIARRAY_BENCH_CACHE", Path.home() / ".cache" / "wsiarray-bench"))
PATCH = 224
BATCH = 32

Reader = Callable[[int], object]


def _tiled_texture(make_ndpi: Any) -> Callable[..., np.ndarray]:
    """make_ndpi.py's texture at 4096x3072, repeated (mirrored every other time, so
    seams stay smooth): computing it at 40000x30000 takes over an hour of CPU."""
    texture = make_ndpi.make_level0(4096, 3072, 1)
    quad = np.concatenate([texture, texture[:, ::-1]], axis=1)
    quad = np.concatenate([quad, quad[::-1]], axis=0)

    def level0(width: int, height: int, seed: int, band: int = 256) -> np.ndarray:
        reps = (-(-height // quad.shape[0]), -(-width // quad.shape[1]), 1)
        return np.ascontiguousarray(np.tile(quad, reps)[:height, :width])

    return level0


def slide_path(width: int, height: int, subsampling: str) -> Path:
    """The cached benchmark slide, written by make_ndpi.py (with a repeated texture) on first use."""
    path = CACHE / f"ndpi-{width}x{height}-{subsampling}-tiled.ndpi"
    if not path.exists():
        if not MAKE_NDPI.is_file():
            sys.exit(f"{MAKE_NDPI} not found (see shared/formats/README.md)")
        spec = importlib.util.spec_from_file_location("make_ndpi", MAKE_NDPI)
        assert spec is not None and spec.loader is not None
        make_ndpi = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(make_ndpi)
        make_ndpi.make_level0 = _tiled_texture(make_ndpi)
        CACHE.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(".partial")
        print(f"making {path} (once) ...", flush=True)
        args = ["--width", str(width), "--height", str(height), "--levels", "3", "--subsampling", subsampling]
        make_ndpi.main([str(partial), "-q", *args])
        partial.rename(path)
    return path


def patch_readers(path: Path, locations: list[tuple[int, int]]) -> dict[str, Reader]:
    import wsiarray

    readers: dict[str, Reader] = {}
    slide = wsiarray.open(path)

    def ours(threads: int) -> object:
        last = None
        for batch in slide.read_region(
            locations, (PATCH, PATCH), level=0, batch_size=BATCH, num_workers=threads
        ):
            last = batch
        return last

    readers["wsiarray"] = ours

    def pool(read_one: Callable[[tuple[int, int]], np.ndarray]) -> Reader:
        def run(threads: int) -> object:
            with ThreadPoolExecutor(threads) as ex:
                for start in range(0, len(locations), BATCH):
                    batch = np.stack(list(ex.map(read_one, locations[start : start + BATCH])))
            return batch

        return run

    try:
        import openslide

        osl = openslide.OpenSlide(str(path))
        osl.set_cache(openslide.OpenSlideCache(0))
        readers["openslide"] = pool(lambda xy: np.asarray(osl.read_region(xy, 0, (PATCH, PATCH)))[..., :3])
    except Exception as exc:
        print(f"openslide unavailable: {exc}")
    try:
        import fastslide

        fs = fastslide.FastSlide.from_file_path(str(path))
        readers["fastslide"] = pool(
            lambda xy: np.asarray(fs.read_region(xy, 0, (PATCH, PATCH)).numpy())[..., :3]
        )
    except Exception as exc:
        print(f"fastslide unavailable: {exc}")
    return readers


def level_readers(path: Path, level: int) -> tuple[dict[str, Reader], tuple[int, int]]:
    import wsiarray

    slide = wsiarray.open(path)
    dims = slide.levels[level].dimensions
    readers: dict[str, Reader] = {
        "wsiarray": lambda threads: slide.read_level_region(level, (0, 0), dims, num_workers=threads)
    }
    try:
        import openslide

        osl = openslide.OpenSlide(str(path))
        osl.set_cache(openslide.OpenSlideCache(0))
        index = list(osl.level_dimensions).index(dims)
        readers["openslide"] = lambda threads: np.asarray(osl.read_region((0, 0), index, dims))
    except Exception as exc:
        print(f"openslide unavailable: {exc}")
    try:
        import fastslide

        fs = fastslide.FastSlide.from_file_path(str(path))
        index = [tuple(d) for d in fs.level_dimensions].index(dims)
        readers["fastslide"] = lambda threads: np.asarray(fs.read_region((0, 0), index, dims).numpy())
    except Exception as exc:
        print(f"fastslide unavailable: {exc}")
    return readers, dims


def verify(readers: dict[str, Reader], check: Callable[[object], np.ndarray]) -> dict[str, str]:
    """Max |diff| of each contender's result against wsiarray's."""
    reference = check(readers["wsiarray"](1))
    notes = {}
    for name, read in readers.items():
        got = check(read(1))
        notes[name] = str(int(np.abs(got[..., :3].astype(np.int16) - reference[..., :3]).max()))
    return notes


def run_rounds(readers: dict[str, Reader], threads: int, repeats: int) -> dict[str, list[float]]:
    names = list(readers)
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(repeats):
        order = names[r % len(names) :] + names[: r % len(names)]
        for name in order:
            gc.collect()
            start = time.perf_counter()
            readers[name](threads)
            times[name].append(time.perf_counter() - start)
            print(f"  round {r + 1}/{repeats} {name:10s} {threads}T {times[name][-1]:8.3f} s", flush=True)
    return times


def table(
    title: str, results: dict[int, dict[str, list[float]]], diffs: dict[str, str], unit: str, count: float
) -> str:
    lines = [
        f"**{title}**",
        "",
        f"| reader | threads | median s | {unit} | vs wsiarray (median of ratios) | max diff |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for threads, times in results.items():
        ours = times["wsiarray"]
        for name, t in times.items():
            ratio = statistics.median(a / b for a, b in zip(t, ours, strict=True))
            lines.append(
                f"| {name} | {threads} | {statistics.median(t):.3f} | {count / statistics.median(t):,.0f} | "
                f"{ratio:.2f} | {diffs.get(name, '')} |"
            )
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--width", type=int, default=40000)
    p.add_argument("--height", type=int, default=30000)
    p.add_argument("--subsampling", default="444", choices=("444", "422", "420"))
    p.add_argument("--patches", type=int, default=2000)
    p.add_argument("--level", type=int, default=2, help="the level read whole (default 2: 10000x7500)")
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--part", choices=("patches", "level", "both"), default="both")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    path = slide_path(args.width, args.height, args.subsampling)
    print(
        f"slide {path} ({path.stat().st_size / 2**20:.0f} MiB), cpus {os.cpu_count()}, "
        f"load {os.getloadavg()[0]:.1f}",
        flush=True,
    )
    out = []
    if args.part in ("patches", "both"):
        rng = np.random.default_rng(args.seed)
        locations = [
            (int(x), int(y))
            for x, y in zip(
                rng.integers(0, args.width - PATCH, args.patches),
                rng.integers(0, args.height - PATCH, args.patches),
                strict=True,
            )
        ]
        readers = patch_readers(path, locations[:BATCH])
        diffs = verify(readers, lambda batch: np.asarray(batch))
        readers = patch_readers(path, locations)
        results = {n: run_rounds(readers, n, args.repeats) for n in args.threads}
        out.append(
            table(
                f"{args.patches} random {PATCH}-px patches of level 0 ({args.width}x{args.height}, "
                f"{args.subsampling})",
                results,
                diffs,
                "patches/s",
                args.patches,
            )
        )
    if args.part in ("level", "both"):
        readers, dims = level_readers(path, args.level)
        diffs = verify(readers, lambda image: np.asarray(image))
        results = {n: run_rounds(readers, n, args.repeats) for n in args.threads}
        out.append(
            table(
                f"whole level {args.level} ({dims[0]}x{dims[1]})",
                results,
                diffs,
                "Mpx/s",
                dims[0] * dims[1] / 1e6,
            )
        )
    print()
    print("\n\n".join(out))


if __name__ == "__main__":
    main()
