"""Whole-level load: read all of level 0 of a JPEG slide with 1 and 2 threads.

Contenders (each is skipped with "n/a" when it cannot be imported or fails):

- ``wsiarray``: ``wsiarray.open(path).read_region((0, 0), size, level=0, num_workers=n)``
- ``tifffile``: ``TiffFile(path).pages[0].asarray(maxworkers=n)``
- ``openslide``: ``read_region`` over 4096x4096 regions on ``n`` threads, RGBA -> RGB
  into one preallocated array
- ``tiffslide``: the same region scheme as OpenSlide
- ``cucim``: ``CuImage(path).read_region((0, 0), size, level=0, num_workers=n)`` (CPU)
- ``libjpeg``: the pure libjpeg-turbo decode loop of the same tiles into a reused tile
  buffer (``jpeg_baseline.c``; only the loop is timed): the floor
- ``libjpeg-full``: the same, decoding straight into a freshly allocated full-level
  array, so it also pays the output's page faults, as every real reader does

Every timed read includes opening the file; the file is in the page cache (the
verification pass reads it first). Contenders run round-robin (the starting one
rotates each round) for ``--repeats`` rounds; the table reports medians of wall and
process CPU time, and ratios.
Before timing, every contender's full level 0 is compared with tifffile's.

Example::

    python -m benchmarks.bench_read_level                      # 19920x26420 slide
    python -m benchmarks.bench_read_level --width 4096 --height 4096 --repeats 3
    python -m benchmarks.bench_read_level --only tifffile cucim --threads 2
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import tifffile

from .jpeg_baseline import JpegBaseline, baseline_version
from .synthetic import DEFAULT_HEIGHT, DEFAULT_WIDTH, benchmark_slide_path

Reader = Callable[[int], np.ndarray]
"""Reads all of level 0 with ``threads`` threads and returns (h, w, 3) uint8."""
Timing = tuple[float, float]
"""``(wall seconds, CPU seconds of the process, all threads)`` of one run."""

BASELINE = "libjpeg"


@dataclass
class Contender:
    """One way of reading level 0.

    ``read(threads)`` returns the pixels (timed by the harness: wall clock and the
    process's CPU time); a contender that times itself sets
    ``measure(threads) -> (wall, cpu)`` instead and may keep ``read`` for the
    correctness check. ``error`` marks it unavailable.
    """

    name: str
    read: Reader | None = None
    measure: Callable[[int], Timing] | None = None
    note: str = ""
    error: str | None = None
    times: dict[int, list[Timing]] = field(default_factory=dict)

    def time_once(self, threads: int) -> Timing:
        """Run once with ``threads`` threads; return ``(wall, cpu)`` seconds."""
        if self.measure is not None:
            return self.measure(threads)
        assert self.read is not None
        t0, c0 = time.perf_counter(), time.process_time()
        pixels = self.read(threads)
        timing = time.perf_counter() - t0, time.process_time() - c0
        del pixels  # free the 1.6 GB result before the next run
        return timing


def _describe(exc: BaseException) -> str:
    """One short line for an exception, for the table's n/a cells."""
    text = f"{type(exc).__name__}: {exc}".strip().splitlines()
    return text[0][:80] if text else type(exc).__name__


def _unavailable(name: str, exc: BaseException) -> Contender:
    return Contender(name, error=_describe(exc))


def _parallel(fn: Callable[[Any], None], items: Iterable[Any], threads: int) -> None:
    """Call ``fn`` on every item, on ``threads`` threads (inline when 1)."""
    if threads == 1:
        for item in items:
            fn(item)
        return
    with ThreadPoolExecutor(threads) as pool:
        for _ in pool.map(fn, items):
            pass


def read_in_regions(
    read_rgb: Callable[[int, int, int, int], np.ndarray],
    shape: tuple[int, int],
    threads: int,
    region: int = 4096,
) -> np.ndarray:
    """Assemble a level from ``read_rgb(x, y, w, h)`` regions read on ``threads``.

    Example::

        >>> a = read_in_regions(lambda x, y, w, h: np.zeros((h, w, 3), np.uint8),
        ...                     (100, 200), threads=2, region=64)
        >>> a.shape
        (100, 200, 3)
    """
    height, width = shape
    out = np.empty((height, width, 3), np.uint8)
    boxes = [
        (x, y, min(region, width - x), min(region, height - y))
        for y in range(0, height, region)
        for x in range(0, width, region)
    ]

    def work(box: tuple[int, int, int, int]) -> None:
        x, y, w, h = box
        out[y : y + h, x : x + w] = read_rgb(x, y, w, h)

    _parallel(work, boxes, threads)
    return out


# --- contenders ------------------------------------------------------------------


def wsiarray_contender(path: Path, shape: tuple[int, int], region: int) -> Contender:
    """``wsiarray.open(...).read_region`` of the whole level."""
    try:
        import wsiarray

        open_ = wsiarray.open  # type: ignore[attr-defined]
    except (ImportError, AttributeError) as e:
        return _unavailable("wsiarray", e)

    def read(threads: int) -> np.ndarray:
        slide = open_(path)
        try:
            size = slide.level_dimensions[0]
            return np.asarray(slide.read_region((0, 0), size, level=0,
                                                num_workers=threads))
        finally:
            close = getattr(slide, "close", None)
            if close is not None:
                close()

    return Contender("wsiarray", read)


def wsiarray_out_contender(path: Path, shape: tuple[int, int], region: int) -> Contender:
    """wsiarray into one reused array (``out=``): the engine's cost without fresh-page faults."""
    try:
        import wsiarray
    except ImportError as e:
        return _unavailable("wsiarray-out", e)
    reused: list[np.ndarray] = []

    def read(threads: int) -> np.ndarray:
        with wsiarray.open(path) as slide:
            width, height = slide.level_dimensions[0]
            if not reused:
                reused.append(np.empty((height, width, slide.channels), slide.dtype))
            return slide.read_level_region(0, (0, 0), (width, height), num_workers=threads, out=reused[0])

    return Contender("wsiarray-out", read, note="read_level_region(out=...) into one reused array")


def tifffile_contender(path: Path, shape: tuple[int, int], region: int) -> Contender:
    """``tifffile`` page ``asarray(maxworkers=n)``."""

    def read(threads: int) -> np.ndarray:
        with tifffile.TiffFile(path) as tif:
            return tif.pages[0].asarray(maxworkers=threads)

    return Contender("tifffile", read, note="asarray(maxworkers=n)")


def openslide_contender(path: Path, shape: tuple[int, int], region: int) -> Contender:
    """OpenSlide ``read_region`` over regions on a thread pool."""
    try:
        import openslide
    except ImportError as e:
        return _unavailable("openslide", e)

    def read(threads: int) -> np.ndarray:
        with openslide.OpenSlide(str(path)) as slide:
            return read_in_regions(
                lambda x, y, w, h: np.asarray(slide.read_region((x, y), 0, (w, h)))[
                    :, :, :3
                ],
                shape, threads, region,
            )

    return Contender("openslide", read, note=f"{region}px regions, thread pool")


def tiffslide_contender(path: Path, shape: tuple[int, int], region: int) -> Contender:
    """tiffslide ``read_region(as_array=True)`` over regions on a thread pool."""
    try:
        import tiffslide
    except ImportError as e:
        return _unavailable("tiffslide", e)

    def read(threads: int) -> np.ndarray:
        with tiffslide.TiffSlide(path) as slide:
            return read_in_regions(
                lambda x, y, w, h: slide.read_region((x, y), 0, (w, h),
                                                     as_array=True)[:, :, :3],
                shape, threads, region,
            )

    return Contender("tiffslide", read, note=f"{region}px regions, thread pool")


def cucim_contender(path: Path, shape: tuple[int, int], region: int) -> Contender:
    """cuCIM ``CuImage.read_region`` of the whole level (CPU path)."""
    try:
        from cucim import CuImage
    except ImportError as e:
        return _unavailable("cucim", e)

    def read(threads: int) -> np.ndarray:
        img = CuImage(str(path))
        return np.asarray(img.read_region((0, 0), (shape[1], shape[0]), level=0,
                                          num_workers=threads))

    return Contender("cucim", read, note="read_region(num_workers=n), CPU")


def baseline_contenders(base: JpegBaseline) -> list[Contender]:
    """The libjpeg-turbo decode loop: into a reused tile buffer, and a full array."""
    return [
        Contender(BASELINE, measure=lambda n: base.decode_times(n, "tile"),
                  note="decode loop only, reused tile buffer"),
        Contender(f"{BASELINE}-full", read=base.decode_array,
                  measure=lambda n: base.decode_times(n, "full"),
                  note="decode loop into a fresh full-level array"),
    ]


FACTORIES: dict[str, Callable[[Path, tuple[int, int], int], Contender]] = {
    "wsiarray": wsiarray_contender,
    "wsiarray-out": wsiarray_out_contender,
    "tifffile": tifffile_contender,
    "openslide": openslide_contender,
    "tiffslide": tiffslide_contender,
    "cucim": cucim_contender,
}
NAMES = [*FACTORIES, BASELINE, f"{BASELINE}-full"]


# --- correctness -----------------------------------------------------------------


def max_abs_diff(a: np.ndarray, b: np.ndarray, rows: int = 1024) -> int:
    """Max |a - b| over two equal-shape uint8 images, in row bands (little memory).

    Example::

        >>> max_abs_diff(np.zeros((4, 4, 3), np.uint8), np.ones((4, 4, 3), np.uint8))
        1
    """
    if a.shape != b.shape:
        msg = f"shape {a.shape} != {b.shape}"
        raise ValueError(msg)
    worst = 0
    for y in range(0, a.shape[0], rows):
        d = np.abs(a[y : y + rows].astype(np.int16) - b[y : y + rows].astype(np.int16))
        worst = max(worst, int(d.max(initial=0)))
    return worst


def verify(contenders: Sequence[Contender], path: Path, threads: int) -> None:
    """Compare each contender's full level 0 with tifffile's; mark failures.

    Also serves as the warm-up pass (page cache, lazy imports, first-call setup).
    """
    print(f"verifying against tifffile (full level 0, {threads} threads):")
    with tifffile.TiffFile(path) as tif:
        reference = tif.pages[0].asarray(maxworkers=threads)
    for c in contenders:
        if c.error is not None:
            continue
        if c.read is None:
            if c.measure is not None:
                try:
                    c.measure(threads)
                except Exception as e:  # report it, keep benchmarking
                    c.error = _describe(e)
            print(f"  {c.name:14s} (times itself; its decoder's pixels are checked "
                  f"as {BASELINE}-full)")
            continue
        try:
            t0 = time.perf_counter()
            pixels = c.read(threads)
            seconds = time.perf_counter() - t0
            if pixels.shape != reference.shape or pixels.dtype != np.uint8:
                c.error = f"returned {pixels.shape} {pixels.dtype}"
            else:
                diff = max_abs_diff(pixels, reference)
                print(f"  {c.name:14s} max |diff| = {diff:3d}   ({seconds:.2f} s)")
                if diff > 8:
                    c.error = f"pixels differ from tifffile (max {diff})"
            del pixels
        except Exception as e:  # report it, keep benchmarking
            c.error = _describe(e)
        if c.error is not None:
            print(f"  {c.name:14s} n/a: {c.error}")
        gc.collect()
    del reference
    gc.collect()


# --- harness ---------------------------------------------------------------------


def run_rounds(contenders: Sequence[Contender], threads: Sequence[int],
               repeats: int) -> None:
    """Time every available contender at every thread count, round-robin.

    Each round visits all (contender, threads) pairs once, starting one place later
    than the previous round, so slow drifts of a noisy machine spread evenly.
    """
    jobs = [(c, n) for n in threads for c in contenders if c.error is None]
    for r in range(repeats):
        shift = r % len(jobs) if jobs else 0
        for c, n in jobs[shift:] + jobs[:shift]:
            try:
                wall, cpu = c.time_once(n)
            except Exception as e:  # report it, keep benchmarking
                c.error = _describe(e)
                continue
            finally:
                gc.collect()
            c.times.setdefault(n, []).append((wall, cpu))
            print(f"  round {r + 1}/{repeats}  {c.name:14s} {n}T  {wall:7.3f} s "
                  f"(cpu {cpu:7.3f} s)", flush=True)


def _median(c: Contender | None, n: int, which: int = 0) -> float | None:
    """Median wall (``which=0``) or CPU (``which=1``) seconds, None if not run."""
    if c is None or c.error is not None or not c.times.get(n):
        return None
    return statistics.median(t[which] for t in c.times[n])


def markdown_table(contenders: Sequence[Contender], threads: Sequence[int],
                   megapixels: float) -> str:
    """Render the results as a Markdown table.

    Ratios are median times divided by the reference's median: ``vs libjpeg 1T``
    uses the 1-thread pure decode time (so 0.52 at 2 threads = 1.9x faster than one
    thread of pure decode), ``vs wsiarray`` uses wsiarray at the same thread count
    (> 1 means slower than wsiarray). ``CPU s`` is the median CPU time of the whole
    process over the run (all threads), less sensitive to a busy machine than wall
    time; ``CPU vs libjpeg`` divides it by the 1-thread baseline's CPU time.
    """
    by_name = {c.name: c for c in contenders}
    base1 = _median(by_name.get(BASELINE), 1)
    base1_cpu = _median(by_name.get(BASELINE), 1, which=1)
    lines = [
        "| contender | threads | median s | min s | MP/s | vs libjpeg 1T | vs wsiarray "
        "| CPU s | CPU vs libjpeg |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for n in threads:
        ws = _median(by_name.get("wsiarray"), n)
        for c in contenders:
            med = _median(c, n)
            if med is None:
                reason = c.error or "not run"
                lines.append(f"| {c.name} | {n} | n/a | | | | {reason} | | |")
                continue
            ratio_b = f"{med / base1:.2f}" if base1 else "n/a"
            ratio_w = f"{med / ws:.2f}" if ws else "n/a"
            cpu = _median(c, n, which=1) or 0.0
            ratio_c = f"{cpu / base1_cpu:.2f}" if base1_cpu else "n/a"
            fastest = min(t[0] for t in c.times[n])
            lines.append(
                f"| {c.name} | {n} | {med:.3f} | {fastest:.3f} | "
                f"{megapixels / med:.0f} | {ratio_b} | {ratio_w} | {cpu:.2f} | {ratio_c} |"
            )
    return "\n".join(lines)


def targets_report(contenders: Sequence[Contender], threads: Sequence[int]) -> str:
    """Check the issue's targets for wsiarray (or say why they cannot be checked)."""
    by_name = {c.name: c for c in contenders}
    ws = by_name.get("wsiarray")
    base = by_name.get(BASELINE)
    out = []
    b1, b2 = _median(base, 1), _median(base, 2)
    if b1 and b2:
        out.append(f"- libjpeg baseline 1T/2T speedup: {b1 / b2:.2f}x "
                   "(what two cores give this machine)")
    w1, w2 = _median(ws, 1), _median(ws, 2)
    if w1 is None and w2 is None:
        out.append("- wsiarray targets: n/a (wsiarray not available)")
        return "\n".join(out)

    def check(ok: bool) -> str:
        return "PASS" if ok else "FAIL"

    if w1 and b1:
        c1, cb = _median(ws, 1, which=1), _median(base, 1, which=1)
        cpu = f" (CPU time ratio {c1 / cb:.3f})" if c1 and cb else ""
        out.append(f"- 1 thread within 10% of pure decode: {w1 / b1:.3f} "
                   f"{check(w1 <= 1.10 * b1)}{cpu}")
    if w1 and w2:
        out.append(f"- 2 threads >= 1.8x faster than 1: {w1 / w2:.2f}x "
                   f"{check(w1 / w2 >= 1.8)}")
    for other in ("tifffile", "cucim"):
        for n in threads:
            w, o = _median(ws, n), _median(by_name.get(other), n)
            if w and o:
                out.append(f"- faster than {other} at {n}T: {o / w:.2f}x "
                           f"{check(w < o)}")
    return "\n".join(out)


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


def cpu_model() -> str:
    """The CPU's model name (from /proc/cpuinfo where there is one)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine_info() -> str:
    """CPU, cores, memory and library versions, as Markdown bullet points."""
    cpu = cpu_model()
    mem = "unknown"
    try:
        pages = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        mem = f"{pages / 2**30:.1f} GiB"
    except (ValueError, OSError):
        pass
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else "?"
    libs = {
        "numpy": np.__version__,
        "tifffile": tifffile.__version__,
        "imagecodecs": _version("imagecodecs"),
        "openslide-python": _version("openslide-python"),
        "tiffslide": _version("tiffslide"),
        "cucim": _version("cucim-cu12"),
        "wsiarray": _version("wsiarray"),
    }
    try:
        import imagecodecs

        libs["imagecodecs"] += f" ({imagecodecs.jpeg8_version()})"
    except (ImportError, AttributeError):
        pass
    try:
        import openslide

        libs["openslide-python"] += f" (OpenSlide {openslide.__library_version__})"
    except ImportError:
        pass
    rows = [
        f"- CPU: {cpu}; {os.cpu_count()} logical CPUs ({usable} usable); RAM {mem}",
        f"- {platform.system()} {platform.release()}, Python {platform.python_version()}",
        f"- baseline: {baseline_version()}",
        "- " + ", ".join(f"{k} {v}" for k, v in libs.items()),
        output_memory_line(),
    ]
    return "\n".join(rows)


def output_memory_line() -> str:
    """How many of this process's large wsiarray outputs reused freed memory (see _memory.py)."""
    import wsiarray

    om = wsiarray.output_memory()
    return (f"- wsiarray outputs of 8 MiB or more in this process: {om.reused} reused memory freed by an "
            f"earlier one, {om.mapped} were freshly mapped (freed outputs are kept {om.idle_seconds:g} s, "
            f"at most {om.max_mib:.0f} MiB)")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Command-line options."""
    p = argparse.ArgumentParser(
        description="Time reading all of level 0 of a JPEG slide.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--repeats", type=int, default=5, help="rounds per contender")
    p.add_argument("--only", nargs="+", choices=NAMES, metavar="NAME",
                   help=f"run only these contenders ({', '.join(NAMES)}); the "
                   f"{BASELINE} baseline always runs, the ratios need it")
    p.add_argument("--slide", type=Path, help="use this slide instead of the "
                   "synthetic one (tiled RGB/YCbCr JPEG TIFF)")
    p.add_argument("--width", type=int, default=DEFAULT_WIDTH)
    p.add_argument("--height", type=int, default=DEFAULT_HEIGHT)
    p.add_argument("--quality", type=int, default=90)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--region", type=int, default=4096,
                   help="region size for the OpenSlide/tiffslide readers")
    p.add_argument("--no-verify", action="store_true",
                   help="skip the pixel check (still does one warm-up read)")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    """Run the whole-level benchmark and print the Markdown report."""
    args = parse_args(argv)
    path = args.slide or benchmark_slide_path(args.width, args.height,
                                              quality=args.quality, seed=args.seed)
    with tifffile.TiffFile(path) as tif:
        page = tif.pages[0]
        shape = (page.imagelength, page.imagewidth)
        desc = (f"{page.imagewidth}x{page.imagelength}, tiles "
                f"{page.tilewidth}x{page.tilelength}, {len(page.dataoffsets)} tiles, "
                f"{page.compression.name} {page.photometric.name}, "
                f"JPEGTables: {'yes' if page.jpegtables else 'no'}")
    wanted = set(args.only or NAMES) | {BASELINE}
    with JpegBaseline(path) as base:
        contenders = [f(path, shape, args.region) for name, f in FACTORIES.items()
                      if name in wanted]
        contenders += [c for c in baseline_contenders(base) if c.name in wanted]
        print(f"slide: {path} ({path.stat().st_size / 2**20:.1f} MiB)\n  {desc}")
        if args.no_verify:
            for c in contenders:
                if c.error is None:
                    c.time_once(max(args.threads))
                    gc.collect()
        else:
            verify(contenders, path, max(args.threads))
        print(f"timing: {args.repeats} rounds, threads {args.threads}")
        run_rounds(contenders, args.threads, args.repeats)

    megapixels = shape[0] * shape[1] / 1e6
    print(f"\n## Whole level 0 ({shape[1]}x{shape[0]}, {megapixels:.0f} MP), "
          f"median of {args.repeats}\n")
    print(markdown_table(contenders, args.threads, megapixels))
    print("\n" + targets_report(contenders, args.threads))
    print("\n" + machine_info())
    notes = [f"- {c.name}: {c.note}" for c in contenders if c.note]
    print("\n" + "\n".join(notes))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
