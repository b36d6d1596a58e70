"""What ``progress=True`` costs a whole-level read: bands of tile rows against one native call.

The bar is drawn to a sink (not a terminal), so what is measured is the banding (one
native ``read_region`` call per band of whole tile rows, about 100 bands) and the bar's
bookkeeping. Rounds alternate the two ways; the table gives the median time of each and
the median of the per-round ratios (with / without).

Example::

    python -m benchmarks.bench_progress                     # the 19920 x 26420 benchmark slide
    python -m benchmarks.bench_progress --slide some.svs --level 1 --rounds 7
"""

from __future__ import annotations

import argparse
import contextlib
import io
import statistics
import time
from collections.abc import Sequence

import wsiarray


def _timed(slide: wsiarray.Slide, level: int, workers: int, progress: bool) -> float:
    start = time.perf_counter()
    with contextlib.redirect_stderr(io.StringIO()):
        slide.read_region(level=level, num_workers=workers, progress=progress)
    return time.perf_counter() - start


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slide", help="slide file (default: the synthetic benchmark slide)")
    parser.add_argument("--level", type=int, default=0)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)
    if args.slide is None:
        from .synthetic import benchmark_slide_path

        args.slide = str(benchmark_slide_path())
    with wsiarray.open(args.slide) as slide:
        width, height = slide.level_dimensions[args.level]
        print(f"{args.slide}, level {args.level}: {width} x {height}, {args.rounds} alternating rounds\n")
        print("| threads | without bar, median s | progress=True, median s | with / without, median ratio |")
        print("|---:|---:|---:|---:|")
        for workers in args.threads:
            plain, banded = [], []
            for round_ in range(args.rounds):
                order = (False, True) if round_ % 2 == 0 else (True, False)
                for progress in order:
                    (banded if progress else plain).append(_timed(slide, args.level, workers, progress))
            ratio = statistics.median(b / p for b, p in zip(banded, plain, strict=True))
            times = f"{statistics.median(plain):.3f} | {statistics.median(banded):.3f}"
            print(f"| {workers} | {times} | {ratio:.3f} |")


if __name__ == "__main__":
    main()
