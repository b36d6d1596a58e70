"""Reads at a target resolution (issue 13): ``read_region(..., mpp=)`` vs read-and-resize.

Random ``--size`` (512) px output patches at 2x and 8x the level-0 pixel size of the
benchmark slide (:func:`benchmarks.synthetic.benchmark_slide_path`: levels at 1x, 4x,
16x, 0.25 um/px), each wholly inside the image, with 1 and 2 workers, no tile cache:

- ``wsiarray mpp (dct)``: ``slide.read_region(locations, size, mpp=m, batch_size=32,
  num_workers=n)``: JPEG tiles decoded at 1/2..1/8 by libjpeg where the request lies on
  the DCT block grid (or the factor is 4 blocks or more), the rest area-averaged;
- ``wsiarray mpp (snap)``: the same with ``dct="snap"``: patches moved onto the block grid
  (by at most half an output pixel) and all decoded at 1/2;
- ``wsiarray mpp (plain)``: the same with ``dct=False`` (full decode, area average);
- ``wsiarray + cv2``: per patch, ``read_region`` of the finest level no coarser than the
  target (the footprint, rounded up), then ``cv2.resize(..., INTER_AREA)``, on an
  ``n``-thread pool (both release the GIL; OpenCV's own threads set to 1);
- ``openslide + cv2`` and ``tiffslide + cv2``: what a user does without wsiarray: the same
  level region from ``OpenSlide.read_region`` (tile cache off; RGBA, alpha dropped) or
  ``tiffslide.TiffSlide.read_region(..., as_array=True)``, then the same ``cv2.resize``;
- ``cucim + cv2``: the same with cuCIM's ``CuImage.read_region`` (its CPU path, from
  ``pip install cucim-cu12``; cuCIM's default: no tile cache);
- ``openslide + PIL``: ``OpenSlide.read_region`` and ``Image.resize(size, Image.BOX)``
  (PIL's area average), on an ``n``-thread pool.

Contenders run round-robin, the starting one rotating, for ``--repeats`` rounds (and
``--chunks`` parts of the patches per round, see :func:`run`); the table reports the
median time per run, patches per second, each contender's time over ``wsiarray mpp
(dct)``'s (how many times slower), ``wsiarray + cv2``'s time over the contender's
(how many times faster than read-and-resize with wsiarray) and the fastest of the
``PEERS``' time in each part over the contender's (how many times faster than the best
read-and-resize without wsiarray).

Example::

    python -m benchmarks.bench_mpp                         # 2,000 patches, 3 rounds
    python -m benchmarks.bench_mpp --repeats 1 --chunks 4  # 2,000 patches in 4 interleaved parts
    python -m benchmarks.bench_mpp --patches 300 --repeats 3
    python -m benchmarks.bench_mpp --only "wsiarray mpp (dct)" "wsiarray + cv2"
    python -m benchmarks.bench_mpp --grid                  # patches on the output pixel grid
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np

import wsiarray

from .synthetic import benchmark_slide_path

__all__ = ["main", "run"]

#: Target pixel sizes as multiples of level 0's.
FACTORS = (2.0, 8.0)
#: Read-and-resize with the readers pathology users have today (the last column's baseline).
PEERS = ("cucim + cv2", "tiffslide + cv2", "openslide + cv2")



def _threaded(patch: Callable[[np.ndarray], np.ndarray], locations: np.ndarray,
              workers: int) -> Callable[[], None]:
    """A run of ``patch`` over every location on ``workers`` Python threads (a peer's best)."""

    def run() -> None:
        with ThreadPoolExecutor(workers) as pool:
            for _ in pool.map(patch, locations):
                pass

    return run

def _locations(shape: tuple[int, int], footprint: int, count: int, seed: int, grid: int = 1) -> np.ndarray:
    """``count`` level-0 ``(x, y)``, multiples of ``grid``, each ``footprint``-px square inside ``shape``."""
    rng = np.random.default_rng(seed)
    w, h = shape
    xy = np.stack([rng.integers(0, w - footprint, count), rng.integers(0, h - footprint, count)], axis=1)
    return xy // grid * grid


def _contenders(path: str, factor: float, size: int, workers: int,
                locations: np.ndarray) -> dict[str, Callable[[], None]]:
    """One callable per contender that reads every patch once."""
    slide = wsiarray.open(path)
    mpp0 = slide.mpp[0]
    mpp = mpp0 * factor
    level = slide.get_best_level_for_downsample(factor)
    downsample = slide.level_downsamples[level]
    source = math.ceil(size * factor / downsample)
    out: dict[str, Callable[[], None]] = {}

    def batches(dct: bool | str) -> Callable[[], None]:
        def run() -> None:
            for _ in slide.read_region(locations, (size, size), mpp=mpp, dct=dct, batch_size=32,
                                       num_workers=workers):
                pass
        return run

    out["wsiarray mpp (dct)"] = batches(True)
    out["wsiarray mpp (snap)"] = batches("snap")
    out["wsiarray mpp (plain)"] = batches(False)
    try:
        import cv2

        cv2.setNumThreads(1)

        def cv_patch(xy: np.ndarray) -> np.ndarray:
            region = slide.read_region((int(xy[0]), int(xy[1])), (source, source), level=level)
            return cv2.resize(region, (size, size), interpolation=cv2.INTER_AREA)

        out["wsiarray + cv2"] = _threaded(cv_patch, locations, workers)
    except ImportError:
        print("opencv-python-headless is not installed: skipping the cv2 contenders")
    try:
        import openslide
        from PIL import Image

        osr = openslide.OpenSlide(path)
        if hasattr(osr, "set_cache"):
            osr.set_cache(openslide.OpenSlideCache(0))
        if "wsiarray + cv2" in out:

            def os_cv_patch(xy: np.ndarray) -> np.ndarray:
                region = np.asarray(osr.read_region((int(xy[0]), int(xy[1])), level, (source, source)))
                return cv2.resize(region[..., :3], (size, size), interpolation=cv2.INTER_AREA)

            out["openslide + cv2"] = _threaded(os_cv_patch, locations, workers)

        def os_patch(xy: np.ndarray) -> np.ndarray:
            image = osr.read_region((int(xy[0]), int(xy[1])), level, (source, source)).convert("RGB")
            return np.asarray(image.resize((size, size), Image.BOX))

        out["openslide + PIL"] = _threaded(os_patch, locations, workers)
    except ImportError:
        print("openslide-python is not installed: skipping openslide + PIL")
    try:
        import tiffslide

        if "wsiarray + cv2" in out:
            tsl = tiffslide.TiffSlide(path)

            def ts_cv_patch(xy: np.ndarray) -> np.ndarray:
                region = tsl.read_region((int(xy[0]), int(xy[1])), level, (source, source), as_array=True)
                return cv2.resize(region, (size, size), interpolation=cv2.INTER_AREA)

            out["tiffslide + cv2"] = _threaded(ts_cv_patch, locations, workers)
    except ImportError:
        print("tiffslide is not installed: skipping tiffslide + cv2")
    try:
        from cucim import CuImage

        if "wsiarray + cv2" in out:
            cuimage = CuImage(path)

            def cu_cv_patch(xy: np.ndarray) -> np.ndarray:
                region = np.asarray(cuimage.read_region((int(xy[0]), int(xy[1])), (source, source), level))
                return cv2.resize(region, (size, size), interpolation=cv2.INTER_AREA)

            out["cucim + cv2"] = _threaded(cu_cv_patch, locations, workers)
    except ImportError:
        print("cuCIM is not installed (pip install cucim-cu12): skipping cucim + cv2")
    return out


def _ratio(times: dict[str, list[list[float]]], a: str, b: str) -> float:
    """The median over every round and part of ``a``'s time over ``b``'s."""
    return statistics.median(x / y for ra, rb in zip(times[a], times[b], strict=True)
                             for x, y in zip(ra, rb, strict=True))


def _ratio_to_fastest(times: dict[str, list[list[float]]], names: tuple[str, ...], b: str) -> float:
    """The median over every round and part of the fastest of ``names``' time (in that part) over ``b``'s."""
    present = [times[n] for n in names if n in times]
    ratios = []
    for r, rb in enumerate(times[b]):
        for p, y in enumerate(rb):
            ratios.append(min(peer[r][p] for peer in present) / y)
    return statistics.median(ratios)


def run(path: str, patches: int, size: int, repeats: int, threads: list[int], seed: int,
        only: list[str] | None = None, chunks: int = 1, grid: bool = False) -> str:
    """Time every contender and return the Markdown table.

    The patches are split into ``chunks`` parts; each round times every contender on one
    part after the other (the starting contender rotating), so slow drifts of a shared
    machine hit all contenders alike. A run's time is the sum over the parts; ratios are
    medians of the per-part ratios. With ``grid`` the patches' level-0 positions are
    multiples of the factor (on the output pixel grid, as tiled reads at a resolution are).

    Example::

        >>> print(run(benchmark_slide_path(), 50, 512, 1, [1], 0))  # doctest: +SKIP
    """
    slide = wsiarray.open(path)
    base_name, peer = "wsiarray mpp (dct)", "wsiarray + cv2"
    rows = [f"| target | workers | contender | median s | patches/s | x {base_name} | {peer} / this "
            "| best peer + resize / this |",
            "|---|---|---|---|---|---|---|---|"]
    for factor in FACTORS:
        step = math.ceil(factor) if grid else 1
        locations = _locations(slide.level_dimensions[0], math.ceil(size * factor) + 1, patches, seed, step)
        parts = np.array_split(locations, max(1, chunks))
        for workers in threads:
            runs = [_contenders(path, factor, size, workers, part) for part in parts]
            names = [n for n in runs[0] if only is None or n in only or n == base_name]
            # times[name][round][part]
            times: dict[str, list[list[float]]] = {name: [] for name in names}
            step = 0
            for _ in range(repeats):
                for name in names:
                    times[name].append([])
                for contenders in runs:
                    order = names[step % len(names):] + names[:step % len(names)]
                    step += 1
                    for name in order:
                        start = time.perf_counter()
                        contenders[name]()
                        times[name][-1].append(time.perf_counter() - start)

            for name in names:
                median = statistics.median(sum(r) for r in times[name])
                vs_peer = f"{_ratio(times, peer, name):.2f}" if peer in times else "n/a"
                vs_best = f"{_ratio_to_fastest(times, PEERS, name):.2f}" if set(PEERS) & set(times) else "n/a"
                rows.append(f"| {factor:g}x ({slide.mpp[0] * factor:g} um/px) | {workers} | {name} | "
                            f"{median:.2f} | {patches / median:.0f} | {_ratio(times, name, base_name):.2f} | "
                            f"{vs_peer} | {vs_best} |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> None:
    """Command line: see the module docstring."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slide", default=None,
                        help="a slide with a pixel size (default: the benchmark slide)")
    parser.add_argument("--patches", type=int, default=2000)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--grid", action="store_true",
                        help="patches on the output pixel grid (level-0 positions multiples of the factor), "
                             "as tiled and sliding-window reads at a resolution are")
    parser.add_argument("--chunks", type=int, default=1,
                        help="split the patches into this many parts, interleaved (see run)")
    parser.add_argument("--only", nargs="+", default=None,
                        help="contenders to run (wsiarray mpp (dct), the base of the ratios, always runs)")
    args = parser.parse_args(argv)
    path = args.slide or str(benchmark_slide_path())
    print(run(path, args.patches, args.size, args.repeats, args.threads, args.seed, args.only, args.chunks,
              args.grid),
          flush=True)


if __name__ == "__main__":
    main()
