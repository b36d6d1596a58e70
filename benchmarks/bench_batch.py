"""Batches and whole levels: issue 3's two measurements, on the synthetic 19920x26420 JPEG slide.

(a) **Whole level** (``--part level``): all of level 0 into one array with 1 and 2
workers.

- ``wsiarray``: ``wsiarray.open(path).read_region(level=0, num_workers=n)`` (no location,
  no size: the whole level, split across the workers)
- ``wsiarray.CuImage``: ``CuImage(path).read_region(num_workers=n)`` through the
  cuCIM-compatible class
- ``cucim``: ``cucim.CuImage(path).read_region((0, 0), size, num_workers=n)`` (CPU)
- ``tifffile``: ``TiffFile(path).pages[0].asarray(maxworkers=n)``
- ``libjpeg``: the pure libjpeg-turbo decode loop of the same tiles (the floor; see
  ``bench_read_level``)

Each run opens the file; the table and harness are ``bench_read_level``'s.

(b) **Random patches** (``--part patches``): ``--patches`` (2,000) random 224-px
patches of level 0, wholly inside the image, in batches of ``--batch-size`` (32), with
1 and 2 workers, no tile cache anywhere. Slides are opened once, before timing (as a
training loop keeps its handle); one timed run reads every batch.

- ``wsiarray``: ``slide.read_region(locations, (224, 224), batch_size=32, num_workers=n)``
- ``wsiarray.CuImage``: the same call on ``wsiarray.compat.CuImage``
- ``cucim``: cuCIM's batch API, the same call on ``cucim.CuImage``, ``np.asarray`` per batch
- ``openslide``: ``read_region`` per patch (RGBA -> RGB) on an ``n``-thread pool, stacked
  into batches; its tile cache is disabled (``OpenSlideCache(0)``)
- ``tiffslide``: ``read_region(..., as_array=True)`` per patch, the same scheme

Before timing, each contender's first batches are compared with wsiarray's single
reads (max |diff| printed; over 8 marks it n/a). Contenders run round-robin, the
starting one rotating, for ``--repeats`` rounds; tables report medians.

Example::

    python -m benchmarks.bench_batch                               # both parts, 3 rounds
    python -m benchmarks.bench_batch --part patches --repeats 5
    python -m benchmarks.bench_batch --width 4096 --height 4096 --patches 500   # smoke run
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import tifffile

from .bench_read_level import (
    BASELINE,
    Contender,
    _describe,
    _median,
    _unavailable,
    baseline_contenders,
    cucim_contender,
    machine_info,
    markdown_table,
    max_abs_diff,
    run_rounds,
    tifffile_contender,
    verify,
)
from .jpeg_baseline import JpegBaseline
from .synthetic import DEFAULT_HEIGHT, DEFAULT_WIDTH, benchmark_slide_path

#: The issue's speed-up targets over cuCIM.
TARGET = 1.25
Locations = list[tuple[int, int]]
PatchReader = Callable[[int], Iterator[np.ndarray]]
"""Yields the ``(batch, h, w, 3)`` batches of all patches, decoded with ``threads`` workers."""


# --- (a) whole level -------------------------------------------------------------------


def wsiarray_level_contender(path: Path) -> Contender:
    """``Slide.read_region()`` with no location and size: the whole level."""
    try:
        import wsiarray
    except ImportError as e:
        return _unavailable("wsiarray", e)

    def read(threads: int) -> np.ndarray:
        with wsiarray.open(path) as slide:
            out = slide.read_region(level=0, num_workers=threads)
        assert isinstance(out, np.ndarray)
        return out

    return Contender("wsiarray", read, note="read_region(level=0, num_workers=n): whole level")


def compat_level_contender(path: Path) -> Contender:
    """``wsiarray.compat.CuImage(path).read_region(num_workers=n)``."""
    try:
        from wsiarray.compat import CuImage
    except ImportError as e:
        return _unavailable("wsiarray.CuImage", e)

    def read(threads: int) -> np.ndarray:
        with CuImage(path) as img:
            return np.asarray(img.read_region(num_workers=threads))

    return Contender("wsiarray.CuImage", read, note="CuImage.read_region(num_workers=n)")


def run_level(path: Path, args: argparse.Namespace) -> str:
    """Part (a): verify, time, and return the Markdown report."""
    with tifffile.TiffFile(path) as tif:
        page = tif.pages[0]
        shape = (page.imagelength, page.imagewidth)
    wanted = set(args.only or LEVEL_NAMES)
    with JpegBaseline(path) as base:
        contenders = [wsiarray_level_contender(path), compat_level_contender(path),
                      cucim_contender(path, shape, 0), tifffile_contender(path, shape, 0)]
        contenders = [c for c in contenders if c.name in wanted]
        contenders += [c for c in baseline_contenders(base) if c.name == BASELINE]
        print(f"\n# (a) whole level 0 of {path.name}")
        verify(contenders, path, max(args.threads))
        print(f"timing: {args.repeats} rounds, workers {args.threads}")
        run_rounds(contenders, args.threads, args.repeats)
    megapixels = shape[0] * shape[1] / 1e6
    lines = [f"## (a) Whole level 0 ({shape[1]}x{shape[0]}, {megapixels:.0f} MP), "
             f"median of {args.repeats}", "", markdown_table(contenders, args.threads, megapixels), ""]
    by_name = {c.name: c for c in contenders}
    for n in args.threads:
        ws, cu = _median(by_name.get("wsiarray"), n), _median(by_name.get("cucim"), n)
        if ws and cu:
            needed = " (target: 2 workers)" if n == 2 else ""
            lines.append(f"- {n} worker(s): wsiarray is {cu / ws:.2f}x faster than cuCIM{needed}"
                         f"{' PASS' if cu / ws >= TARGET else ' FAIL' if n == 2 else ''}")
    lines += [f"- {c.name}: {c.note}" for c in contenders if c.note]
    return "\n".join(lines)


LEVEL_NAMES = ["wsiarray", "wsiarray.CuImage", "cucim", "tifffile"]


# --- (b) random patches ----------------------------------------------------------------


def random_locations(width: int, height: int, count: int, size: int, seed: int) -> Locations:
    """``count`` level-0 patch origins, the whole ``size`` px patch inside the image.

    Example::

        >>> random_locations(1000, 800, 3, 224, 0)[0]  # doctest: +SKIP
        (765, 208)
    """
    rng = np.random.default_rng(seed)
    xs = rng.integers(0, width - size + 1, count)
    ys = rng.integers(0, height - size + 1, count)
    return [(int(x), int(y)) for x, y in zip(xs, ys, strict=True)]


def _chunks(items: Sequence[tuple[int, int]], n: int) -> Iterator[Sequence[tuple[int, int]]]:
    for i in range(0, len(items), n):
        yield items[i : i + n]


def _per_patch_batches(read_one: Callable[[tuple[int, int]], np.ndarray], locations: Locations,
                       batch_size: int, threads: int) -> Iterator[np.ndarray]:
    """Batches assembled from per-patch reads on ``threads`` threads (inline for 1)."""
    if threads == 1:
        for chunk in _chunks(locations, batch_size):
            yield np.stack([read_one(loc) for loc in chunk])
        return
    with ThreadPoolExecutor(threads) as pool:
        for chunk in _chunks(locations, batch_size):
            yield np.stack(list(pool.map(read_one, chunk)))


def wsiarray_patches(path: Path, locations: Locations, size: int, batch_size: int) -> PatchReader:
    import wsiarray

    slide = wsiarray.open(path)
    array = np.asarray(locations, np.int64)

    def batches(threads: int) -> Iterator[np.ndarray]:
        yield from slide.read_region(array, (size, size), 0, batch_size=batch_size, num_workers=threads)

    return batches


def compat_patches(path: Path, locations: Locations, size: int, batch_size: int) -> PatchReader:
    from wsiarray.compat import CuImage

    img = CuImage(path)

    def batches(threads: int) -> Iterator[np.ndarray]:
        for batch in img.read_region(locations, (size, size), 0, batch_size=batch_size, num_workers=threads):
            yield np.asarray(batch)

    return batches


def cucim_patches(path: Path, locations: Locations, size: int, batch_size: int) -> PatchReader:
    from cucim import CuImage

    img = CuImage(str(path))

    def batches(threads: int) -> Iterator[np.ndarray]:
        for batch in img.read_region(locations, (size, size), 0, batch_size=batch_size, num_workers=threads):
            yield np.asarray(batch)  # a view of cuCIM's buffer, as a training loop would take it

    return batches


def openslide_patches(path: Path, locations: Locations, size: int, batch_size: int) -> PatchReader:
    import openslide

    slide = openslide.OpenSlide(str(path))
    slide.set_cache(openslide.OpenSlideCache(0))

    def read_one(loc: tuple[int, int]) -> np.ndarray:
        return np.asarray(slide.read_region(loc, 0, (size, size)))[:, :, :3]

    def batches(threads: int) -> Iterator[np.ndarray]:
        yield from _per_patch_batches(read_one, locations, batch_size, threads)

    return batches


def tiffslide_patches(path: Path, locations: Locations, size: int, batch_size: int) -> PatchReader:
    import tiffslide

    slide = tiffslide.TiffSlide(path)

    def read_one(loc: tuple[int, int]) -> np.ndarray:
        return slide.read_region(loc, 0, (size, size), as_array=True)[:, :, :3]

    def batches(threads: int) -> Iterator[np.ndarray]:
        yield from _per_patch_batches(read_one, locations, batch_size, threads)

    return batches


PATCH_FACTORIES: dict[str, tuple[Callable[..., PatchReader], str]] = {
    "wsiarray": (wsiarray_patches, "read_region(locations, batch_size, num_workers=n)"),
    "wsiarray.CuImage": (compat_patches, "CuImage.read_region(locations, batch_size, num_workers=n)"),
    "cucim": (cucim_patches, "CuImage.read_region(locations, batch_size, num_workers=n), CPU"),
    "openslide": (openslide_patches, "read_region per patch on n threads, OpenSlideCache(0)"),
    "tiffslide": (tiffslide_patches, "read_region(as_array=True) per patch on n threads"),
}


def patch_contender(name: str, path: Path, locations: Locations, size: int,
                    batch_size: int) -> tuple[Contender, PatchReader | None]:
    """A timed contender (one run reads every batch) and its batch reader for the pixel check."""
    factory, note = PATCH_FACTORIES[name]
    try:
        batches = factory(path, locations, size, batch_size)
    except Exception as e:  # not installed, or cannot open the slide
        return _unavailable(name, e), None

    def read(threads: int) -> np.ndarray:
        last = None
        for batch in batches(threads):
            last = batch
        assert last is not None
        return np.array(last)

    return Contender(name, read, note=note), batches


def verify_patches(contenders: Sequence[tuple[Contender, PatchReader | None]], path: Path,
                   locations: Locations, size: int, batch_size: int, threads: int,
                   check_batches: int = 4) -> None:
    """Compare the first batches of each contender with wsiarray's single-region reads."""
    import wsiarray

    slide = wsiarray.open(path)
    count = min(len(locations), check_batches * batch_size)
    want = np.stack([slide.read_region(loc, (size, size)) for loc in locations[:count]])
    print(f"verifying the first {count} patches against wsiarray single reads ({threads} workers):")
    for c, batches in contenders:
        if c.error is not None or batches is None:
            print(f"  {c.name:18s} n/a: {c.error}")
            continue
        try:
            t0 = time.perf_counter()
            got: list[np.ndarray] = []
            for batch in batches(threads):
                got.append(np.array(batch))
                if sum(len(b) for b in got) >= count:
                    break
            pixels = np.concatenate(got)[:count]
            shapes_ok = pixels.shape == want.shape and pixels.dtype == want.dtype
            diff = max_abs_diff(pixels, want) if shapes_ok else None
            if diff is None:
                c.error = f"returned {pixels.shape} {pixels.dtype}"
            elif diff > 8:
                c.error = f"pixels differ from wsiarray (max {diff})"
            print(f"  {c.name:18s} max |diff| = {diff}   ({time.perf_counter() - t0:.2f} s)")
        except Exception as e:  # report it, keep benchmarking
            c.error = _describe(e)
            print(f"  {c.name:18s} n/a: {c.error}")
        gc.collect()


def patch_table(contenders: Sequence[Contender], threads: Sequence[int], patches: int) -> str:
    """Markdown: median and fastest wall time, median process CPU time, patches/s, and ratios
    of medians to wsiarray's and cuCIM's at the same worker count (> 1: slower than that one)."""
    by_name = {c.name: c for c in contenders}
    lines = ["| contender | workers | median s | min s | CPU s | patches/s | vs wsiarray | vs cucim |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for n in threads:
        ws, cu = _median(by_name.get("wsiarray"), n), _median(by_name.get("cucim"), n)
        for c in contenders:
            med = _median(c, n)
            if med is None:
                lines.append(f"| {c.name} | {n} | n/a | | | | {c.error or 'not run'} |")
                continue
            vs_ws = f"{med / ws:.2f}" if ws else "n/a"
            vs_cu = f"{med / cu:.2f}" if cu else "n/a"
            fastest = min(t[0] for t in c.times[n])
            cpu = _median(c, n, 1) or 0.0
            lines.append(f"| {c.name} | {n} | {med:.3f} | {fastest:.3f} | {cpu:.3f} | {patches / med:.0f} | "
                         f"{vs_ws} | {vs_cu} |")
    return "\n".join(lines)


def run_patches(path: Path, args: argparse.Namespace) -> str:
    """Part (b): verify, time, and return the Markdown report."""
    with tifffile.TiffFile(path) as tif:
        page = tif.pages[0]
        width, height = page.imagewidth, page.imagelength
    locations = random_locations(width, height, args.patches, args.patch_size, args.seed)
    names = [n for n in PATCH_FACTORIES if n in set(args.only or PATCH_FACTORIES)]
    pairs = [patch_contender(n, path, locations, args.patch_size, args.batch_size) for n in names]
    print(f"\n# (b) {args.patches} random {args.patch_size}-px patches of {path.name}, "
          f"batches of {args.batch_size}")
    verify_patches(pairs, path, locations, args.patch_size, args.batch_size, max(args.threads))
    contenders = [c for c, _ in pairs]
    print(f"timing: {args.repeats} rounds, workers {args.threads}")
    run_rounds(contenders, args.threads, args.repeats)
    title = (f"## (b) {args.patches} random {args.patch_size}-px patches, batches of {args.batch_size}, "
             f"no cache, median of {args.repeats}")
    lines = [title, "", patch_table(contenders, args.threads, args.patches), ""]
    by_name = {c.name: c for c in contenders}
    for n in args.threads:
        ws, cu = _median(by_name.get("wsiarray"), n), _median(by_name.get("cucim"), n)
        if ws and cu:
            lines.append(f"- {n} worker(s): wsiarray is {cu / ws:.2f}x faster than cuCIM's batch API "
                         f"(target {TARGET}x) {'PASS' if cu / ws >= TARGET else 'FAIL'}")
    lines += [f"- {c.name}: {c.note}" for c in contenders if c.note]
    return "\n".join(lines)


# --- command line ------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Command-line options."""
    p = argparse.ArgumentParser(description="Whole-level and random-patch batch benchmarks.",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--part", choices=["level", "patches", "both"], default="both")
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="worker counts")
    p.add_argument("--repeats", type=int, default=3, help="rounds per contender")
    p.add_argument("--only", nargs="+", metavar="NAME",
                   help=f"run only these contenders ({', '.join(PATCH_FACTORIES)}, tifffile)")
    p.add_argument("--slide", type=Path, help="use this slide instead of the synthetic one")
    p.add_argument("--width", type=int, default=DEFAULT_WIDTH)
    p.add_argument("--height", type=int, default=DEFAULT_HEIGHT)
    p.add_argument("--patches", type=int, default=2000)
    p.add_argument("--patch-size", type=int, default=224)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--seed", type=int, default=0, help="seed of the random patch locations")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    """Run the selected parts and print their Markdown reports."""
    args = parse_args(argv)
    try:
        import wsiarray

        wsiarray.cache("nocache")
    except ImportError:
        pass
    path = args.slide or benchmark_slide_path(args.width, args.height)
    reports = []
    if args.part in ("patches", "both"):
        reports.append(run_patches(path, args))
    if args.part in ("level", "both"):
        reports.append(run_level(path, args))
    print("\n\n" + "\n\n".join(reports))
    print("\n" + machine_info())
    sys.stdout.flush()


if __name__ == "__main__":
    main()
