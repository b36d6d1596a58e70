"""Before/after: the same wsiarray operations timed for two builds, interleaved, paired ratios.

Runs each measurement in a fresh subprocess per build and round (old, new, old,
new, ...), so two builds of wsiarray never share a process, and reports the
median of per-round ratios new/old (below 1: the new build is faster). The
operations are the core of ``bench_read_level`` (whole level 0), ``bench_batch``
(2,000 random 224-px patches in batches of 32), ``bench_cache`` (an
unaligned 256-px patch scan of 16 tile rows through a ``per_process`` cache) and
``bench_mpp`` (``--patches`` random 512-px patches at 2x and 8x the level-0 pixel size,
``read_region(mpp=)`` with its defaults, batches of 32), plus two per-patch loops on one
thread: ``patch-loop`` (2,000 single ``read_region`` calls of random 224-px patches) and
``monai-patches`` (the same patches through ``wsiarray.monai.WSIReader.get_data``, what a
MONAI DataLoader worker calls per patch; needs MONAI). ``--clock cpu`` times with the
process's CPU time instead of the wall clock: steadier on a shared machine, and the
same thing for single-threaded operations.

The "before" build is a directory holding an installed wsiarray package
(``pip install --no-deps --target DIR wheel``); the editable install's import
hook is bypassed for it::

    git worktree add /tmp/before OLD && (cd /tmp/before && pip wheel --no-deps . -w /tmp/w)
    pip install --no-deps --target /tmp/before_site /tmp/w/wsiarray-*.whl
    python -m benchmarks.compare_builds --before /tmp/before_site --rounds 5

``--after DIR`` freezes the new build the same way, so that work in the source
tree during a long run does not change what is measured.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

from .synthetic import benchmark_slide_path

_PRELUDE = """
import sys, json, time
before = {before!r}
if before:
    sys.meta_path[:] = [f for f in sys.meta_path if "ScikitBuild" not in type(f).__name__]
    sys.path.insert(0, before)
import numpy as np
import wsiarray
assert (before or "/work") and wsiarray.__file__
clock = {clock}
"""

_OPS = {
    "level0": """
slide = wsiarray.open(path)
w, h = slide.level_dimensions[0]
t = clock()
out = slide.read_region((0, 0), (w, h), 0, num_workers=workers)
seconds = clock() - t
""",
    "patches": """
slide = wsiarray.open(path)
w, h = slide.level_dimensions[0]
rng = np.random.default_rng(0)
locations = np.stack([rng.integers(0, w - 224, 2000), rng.integers(0, h - 224, 2000)], axis=1)
t = clock()
for batch in slide.read_region(locations, (224, 224), 0, batch_size=32, num_workers=workers):
    pass
seconds = clock() - t
""",
    "mpp-2x": """
slide = wsiarray.open(path)
w, h = slide.level_dimensions[0]
rng = np.random.default_rng(0)
locations = np.stack([rng.integers(0, w - 1025, patches), rng.integers(0, h - 1025, patches)], axis=1)
t = clock()
mpp = 2 * slide.mpp[0]
for batch in slide.read_region(locations, (512, 512), mpp=mpp, batch_size=32, num_workers=workers):
    pass
seconds = clock() - t
""",
    "mpp-8x": """
slide = wsiarray.open(path)
w, h = slide.level_dimensions[0]
rng = np.random.default_rng(0)
locations = np.stack([rng.integers(0, w - 4097, patches), rng.integers(0, h - 4097, patches)], axis=1)
t = clock()
mpp = 8 * slide.mpp[0]
for batch in slide.read_region(locations, (512, 512), mpp=mpp, batch_size=32, num_workers=workers):
    pass
seconds = clock() - t
""",
    "patch-loop": """
slide = wsiarray.open(path)
w, h = slide.level_dimensions[0]
rng = np.random.default_rng(0)
xs, ys = rng.integers(0, w - 224, 2000).tolist(), rng.integers(0, h - 224, 2000).tolist()
slide.read_region((xs[0], ys[0]), (224, 224))
t = clock()
for x, y in zip(xs, ys):
    slide.read_region((x, y), (224, 224))
seconds = clock() - t
""",
    "monai-patches": """
from wsiarray.monai import WSIReader
reader = WSIReader(level=0)
wsi = reader.read(path)
w, h = wsi.level_dimensions[0]
rng = np.random.default_rng(0)
xs, ys = rng.integers(0, w - 224, 2000).tolist(), rng.integers(0, h - 224, 2000).tolist()
reader.get_data(wsi, (ys[0], xs[0]), (224, 224))
t = clock()
for x, y in zip(xs, ys):
    reader.get_data(wsi, (y, x), (224, 224))
seconds = clock() - t
""",
    "cache-scan": """
wsiarray.cache("per_process", memory_capacity=1024)
slide = wsiarray.open(path)
w, h = slide.level_dimensions[0]
t = clock()
for y in range(1, 16 * 256, 256):
    for x in range(1, w - 256, 256):
        slide.read_region((x, y), (256, 256), 0, num_workers=workers)
seconds = clock() - t
""",
}


def measure(before: str, op: str, path: str, workers: int, patches: int = 2000, clock: str = "wall") -> float:
    timer = "time.process_time" if clock == "cpu" else "time.perf_counter"
    code = _PRELUDE.format(before=before, clock=timer) + \
        f"path = {path!r}\nworkers = {workers}\npatches = {patches}\n" + _OPS[op] + \
        "print(json.dumps({'seconds': seconds, 'file': wsiarray.__file__}))\n"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                            cwd="/tmp")
    return float(json.loads(result.stdout.strip().splitlines()[-1])["seconds"])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", required=True, help="directory holding the old wsiarray package")
    parser.add_argument("--after", default="",
                        help="directory holding the new wsiarray package (default: the installed one)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--slide", type=Path)
    parser.add_argument("--ops", nargs="+", choices=list(_OPS), default=list(_OPS))
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--patches", type=int, default=2000, help="patches of the mpp-* operations")
    parser.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                        help="wall-clock seconds, or the process's CPU seconds")
    args = parser.parse_args(argv)
    path = str(args.slide or benchmark_slide_path())
    rows = []
    for op in args.ops:
        for workers in args.workers:
            old, new = [], []
            for _ in range(args.rounds):
                old.append(measure(args.before, op, path, workers, args.patches, args.clock))
                new.append(measure(args.after, op, path, workers, args.patches, args.clock))
            ratios = [n / o for n, o in zip(new, old, strict=True)]
            rows.append((op, workers, statistics.median(old), statistics.median(new),
                         statistics.median(ratios), min(ratios), max(ratios)))
            print(f"{op} {workers}T: old {old} new {new}", file=sys.stderr, flush=True)
    print(f"slide: {path}, {args.rounds} interleaved rounds, a fresh process per run, "
          f"{'CPU' if args.clock == 'cpu' else 'wall-clock'} seconds\n")
    print("| operation | threads | before median s | after median s | after/before (median of paired) "
          "| min | max |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for op, workers, old_s, new_s, ratio, low, high in rows:
        print(f"| {op} | {workers} | {old_s:.3f} | {new_s:.3f} | {ratio:.3f} | {low:.3f} | {high:.3f} |")


if __name__ == "__main__":
    main()
