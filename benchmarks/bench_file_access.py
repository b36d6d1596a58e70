"""File access modes (issue 12): cuCIM's "File-access experiments on TIFF", per mode.

On the 19920x26420 benchmark slide (``synthetic.py``), for each of wsiarray's file
access modes (``wsiarray.open(path, file_access=...)``: ``pread``, ``mmap``,
``direct``, ``preload``):

- **raw tile reads**: every level-0 tile's compressed bytes, one read per tile, in
  file order (*sequential*) and in a random order (*shuffled*), on one thread
  (``Reader.read_ranges``, the engine's own reads, one Python call per run);
- **whole level**: open the slide and ``read_region`` all of level 0 with
  ``--workers`` threads (decode included), end to end;

each **warm** (the file in the page cache: read once before) and **cold** (the file
dropped from the page cache with ``posix_fadvise(POSIX_FADV_DONTNEED)`` before the
run, and a fresh reader, so no mapping of an earlier run keeps pages). The slide is
copied to a private temporary file first, so that other processes reading the
shared slide keep none of its pages cached or mapped.

Every round runs every cell once, modes in a rotated order; the table gives the
median time per cell and, in brackets, the median of the per-round ratios to
``pread`` (below 1: faster than pread). Before timing, every mode's raw bytes are
compared with ``pread``'s and every mode's whole level with ``pread``'s (CRC-32).
On a VM, "cold" means cold in the guest: the host may still cache the disk image.

Example::

    python -m benchmarks.bench_file_access --plot /tmp/file_access.png
    python -m benchmarks.bench_file_access --width 4096 --height 4096 --rounds 2   # quick
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import shutil
import statistics
import tempfile
import time
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np

import wsiarray

from .synthetic import DEFAULT_HEIGHT, DEFAULT_WIDTH, benchmark_slide_path

MODES = ("pread", "mmap", "direct", "preload")
RAW = [("raw", order, cache) for order in ("sequential", "shuffled") for cache in ("warm", "cold")]
LEVEL = [("level", "whole level 0", cache) for cache in ("warm", "cold")]
Cell = tuple[str, str, str]


def drop_from_page_cache(path: str) -> None:
    """Ask the kernel to drop ``path``'s clean pages from the page cache."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fdatasync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def warm_page_cache(path: str) -> None:
    """Read the whole file once, so that it is in the page cache."""
    with open(path, "rb") as f:
        while f.read(8 << 20):
            pass


def tile_ranges(path: str, seed: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Level 0's tile offsets and byte counts in file order and shuffled."""
    with wsiarray.open(path) as slide:
        spec = slide.format_info.levels[0]
        offsets = np.ascontiguousarray(spec.offsets.ravel(), np.uint64)
        counts = np.ascontiguousarray(spec.bytecounts.ravel(), np.uint64)
    order = np.argsort(offsets, kind="stable")
    shuffled = np.random.default_rng(seed).permutation(len(offsets))
    return {"sequential": (offsets[order], counts[order]), "shuffled": (offsets[shuffled], counts[shuffled])}


def run_raw(path: str, mode: str, ranges: tuple[np.ndarray, np.ndarray], out: np.ndarray) -> float:
    """Seconds to read every range with a fresh reader in ``mode`` (opening not timed)."""
    slide = wsiarray.open(path, file_access=mode)
    native = wsiarray.file_handles().acquire(slide.path, slide.identity, mode).native
    t0 = time.perf_counter()
    native.read_ranges(ranges[0], ranges[1], out)
    elapsed = time.perf_counter() - t0
    del native
    slide.close()
    return elapsed


def run_level(path: str, mode: str, workers: int, keep: list[np.ndarray] | None = None) -> float:
    """Seconds to open the slide in ``mode`` and read all of level 0 with ``workers`` threads."""
    t0 = time.perf_counter()
    slide = wsiarray.open(path, file_access=mode)
    w, h = slide.level_dimensions[0]
    pixels = slide.read_region((0, 0), (w, h), num_workers=workers)
    elapsed = time.perf_counter() - t0
    slide.close()
    if keep is not None:
        keep.append(pixels)
    del pixels
    return elapsed


def verify(
    path: str, ranges: dict[str, tuple[np.ndarray, np.ndarray]], out: np.ndarray, workers: int, level: bool
) -> None:
    """Every mode reads pread's bytes (and with ``level``, decodes pread's pixels)."""
    for order, r in ranges.items():
        want = None
        for mode in MODES:
            out[:] = 0
            run_raw(path, mode, r, out)
            crc = zlib.crc32(out)
            want = crc if want is None else want
            if crc != want:
                raise SystemExit(f"{mode} read other bytes than pread ({order})")
    if not level:
        return
    want = None
    for mode in MODES:
        keep: list[np.ndarray] = []
        run_level(path, mode, workers, keep)
        crc = zlib.crc32(keep[0])
        want = crc if want is None else want
        if crc != want:
            raise SystemExit(f"{mode} decoded other pixels than pread")
        del keep
        gc.collect()


def measure(
    cells: list[Cell], rounds: int, run: Callable[[Cell, str], float], path: str, log: Callable[[str], None]
) -> dict[tuple[Cell, str], list[float]]:
    """``rounds`` times every (cell, mode), modes rotated each round; seconds per run."""
    times: dict[tuple[Cell, str], list[float]] = {}
    for r in range(rounds):
        modes = MODES[r % len(MODES) :] + MODES[: r % len(MODES)]
        for cell in cells:
            for mode in modes:
                if cell[2] == "cold":
                    drop_from_page_cache(path)
                else:
                    warm_page_cache(path)
                gc.collect()
                t = run(cell, mode)
                times.setdefault((cell, mode), []).append(t)
                log(f"round {r + 1}/{rounds} {cell[0]:5} {cell[1]:13} {cell[2]:4} {mode:7} {t:8.3f} s")
    return times


def table(cells: list[Cell], times: dict[tuple[Cell, str], list[float]], nbytes: dict[str, int]) -> str:
    """Markdown: median seconds (and MB/s for raw reads), median ratio to pread per round."""
    lines = ["| experiment | cache | " + " | ".join(MODES) + " |", "|---|---|" + "---|" * len(MODES)]
    for cell in cells:
        base = times[(cell, "pread")]
        row = []
        for mode in MODES:
            t = times[(cell, mode)]
            ratio = statistics.median(a / b for a, b in zip(t, base, strict=True))
            median = statistics.median(t)
            rate = f", {nbytes[cell[0]] / median / 1e6:,.0f} MB/s" if cell[0] == "raw" else ""
            row.append(f"{median:.3f} s{rate} ({ratio:.2f}x)")
        what = f"raw tile reads, {cell[1]}" if cell[0] == "raw" else cell[1]
        lines.append(f"| {what} | {cell[2]} | " + " | ".join(row) + " |")
    return "\n".join(lines)


def plot(cells: list[Cell], times: dict[tuple[Cell, str], list[float]], out: str) -> None:
    """Grouped bars: median seconds per cell and mode (raw reads left, whole level right)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = [[c for c in cells if c[0] == "raw"], [c for c in cells if c[0] == "level"]]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), gridspec_kw={"width_ratios": [2, 1]})
    width = 0.8 / len(MODES)
    for ax, group, title in zip(
        axes, groups, ["every tile's raw bytes, one thread", "open + read level 0"], strict=True
    ):
        x = np.arange(len(group))
        for k, mode in enumerate(MODES):
            ax.bar(
                x + (k - (len(MODES) - 1) / 2) * width,
                [statistics.median(times[(c, mode)]) for c in group],
                width,
                label=mode,
            )
        ax.set_xticks(x, [f"{c[1]}\n{c[2]}" if c[0] == "raw" else c[2] for c in group])
        ax.set_ylabel("seconds (median)")
        ax.set_title(title)
    axes[0].legend(title="file_access")
    fig.tight_layout()
    fig.savefig(out, dpi=120)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--width", type=int, default=DEFAULT_WIDTH)
    parser.add_argument("--height", type=int, default=DEFAULT_HEIGHT)
    parser.add_argument("--slide", help="a slide file instead of the synthetic one")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--workers",
        type=int,
        default=os.cpu_count() or 1,
        help="threads of the whole-level read (default: the CPU count)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the shuffled order")
    parser.add_argument("--no-level", action="store_true", help="raw tile reads only")
    parser.add_argument("--plot", help="write a PNG plot here (needs matplotlib)")
    parser.add_argument("--tmp", help="folder for the private copy of the slide (default: the system's)")
    args = parser.parse_args(argv)

    source = Path(args.slide) if args.slide else benchmark_slide_path(args.width, args.height)
    with tempfile.TemporaryDirectory(dir=args.tmp) as folder:
        path = str(Path(folder) / source.name)
        shutil.copyfile(source, path)
        ranges = tile_ranges(path, args.seed)
        raw_bytes = int(ranges["sequential"][1].sum())
        out = np.empty(raw_bytes, np.uint8)
        with wsiarray.open(path) as slide:
            w, h = slide.level_dimensions[0]
        print(
            f"# File access modes: {source.name} ({os.path.getsize(path) / 1e6:.0f} MB, "
            f"level 0 {w}x{h}, {len(ranges['sequential'][0])} tiles, "
            f"{raw_bytes / 1e6:.0f} MB of tile bytes)\n"
        )
        print(
            f"{platform.platform()}, {os.cpu_count()} CPUs, wsiarray {wsiarray.__version__}, "
            f"whole level with {args.workers} workers, {args.rounds} rounds",
            flush=True,
        )
        verify(path, ranges, out, args.workers, not args.no_level)

        def run(cell: Cell, mode: str) -> float:
            if cell[0] == "raw":
                return run_raw(path, mode, ranges[cell[1]], out)
            return run_level(path, mode, args.workers)

        cells = RAW + ([] if args.no_level else LEVEL)
        times = measure(cells, args.rounds, run, path, lambda line: print("   ", line, flush=True))
    print()
    print(table(cells, times, {"raw": raw_bytes}))
    if args.plot:
        plot(cells, times, args.plot)
        print(f"\nplot: {args.plot}")


if __name__ == "__main__":
    main()
