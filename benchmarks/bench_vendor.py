"""Leica SCN and Ventana BIF: 2,000 random 224-px patches and a whole level, vs OpenSlide and fastslide.

The slides come from ``../shared/formats`` (``make_scn.py``, ``make_bif.py``), made once
and cached in :func:`benchmarks.synthetic.cache_dir` (default 8000x6000 stitched level 0:
the SCN with 2 main images, the BIF with a 16-px snapshot overlap).

Contenders (each shows ``n/a`` with the reason when it cannot be imported or fails):

- ``wsiarray``: ``Slide.read_region`` per patch (one thread, the caller's), and the whole
  level in one ``read_region`` call (``num_workers`` = CPU count)
- ``wsiarray-batch``: the patches through ``wsiarray.read_regions`` (batches of 64,
  ``num_workers`` = CPU count); patches only
- ``openslide``: ``read_region`` per patch; the whole level in 4096x4096 regions on
  CPU-count threads, RGBA -> RGB into one array
- ``fastslide``: ``FastSlide.read_region`` per patch; the whole level in one call
  (fastslide 0.8 has no SCN reader)

Patches are random level-0 locations of level 0 (the same for every contender). Every
timed run includes opening the file (in the page cache). Contenders run round-robin
(the first one rotates each round) for ``--repeats`` rounds; the table gives medians and
the median over rounds of each contender's time divided by wsiarray's in the same round.
Before timing, each contender's pixels are compared with OpenSlide's (max |diff|).

Example::

    python -m benchmarks.bench_vendor                    # both formats, 3 rounds
    python -m benchmarks.bench_vendor --formats bif --repeats 5 --patches 500
"""

from __future__ import annotations

import argparse
import importlib.util
import io
import os
import statistics
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import redirect_stdout
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

import wsiarray

from .synthetic import cache_dir

#: The shared generators, beside the repository.
FORMATS = Path(__file__).resolve().parents[2] / "shared" / "formats"
PATCH = 224
Task = Callable[[], np.ndarray]


@dataclass
class Contender:
    name: str
    patches: Callable[[Path, np.ndarray], np.ndarray] | None
    level: Callable[[Path], np.ndarray] | None
    reason: str = ""
    times: dict[str, list[float]] = field(default_factory=dict)
    diff: dict[str, int] = field(default_factory=dict)


def make_slide(kind: str, width: int, height: int) -> Path:
    """The cached benchmark SCN or BIF of about width x height (generated on first use)."""
    extra = ["--regions", "2"] if kind == "scn" else ["--overlap", "16"]
    path = cache_dir() / f"vendor-{kind}-{width}x{height}-{'r2' if kind == 'scn' else 'o16'}.{kind}"
    if not path.exists():
        spec = importlib.util.spec_from_file_location(f"make_{kind}", FORMATS / f"make_{kind}.py")
        if spec is None or spec.loader is None:
            raise SystemExit(f"{FORMATS} is missing: cannot make the benchmark {kind.upper()}")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        tmp = path.with_suffix(".tmp")
        with redirect_stdout(io.StringIO()):
            module.main([str(tmp), "--width", str(width), "--height", str(height), *extra])
        os.replace(tmp, path)
    return path


def wsiarray_contender() -> Contender:
    def patches(path: Path, locations: np.ndarray) -> np.ndarray:
        slide = wsiarray.open(path)
        return np.stack(
            [slide.read_region((int(x), int(y)), (PATCH, PATCH), num_workers=1) for x, y in locations]
        )

    def level(path: Path) -> np.ndarray:
        slide = wsiarray.open(path)
        return slide.read_region((0, 0), slide.levels[0].dimensions, num_workers=os.cpu_count() or 1)

    return Contender("wsiarray", patches, level)


def wsiarray_batch_contender() -> Contender:
    def patches(path: Path, locations: np.ndarray) -> np.ndarray:
        slide = wsiarray.open(path)
        items = [(slide, (int(x), int(y))) for x, y in locations]
        batches = wsiarray.read_regions(items, (PATCH, PATCH), batch_size=64, num_workers=os.cpu_count() or 1)
        return np.concatenate(list(batches))

    return Contender("wsiarray-batch", patches, None)


def openslide_contender() -> Contender:
    try:
        import openslide
    except ImportError as exc:
        return Contender("openslide", None, None, f"not importable: {exc}")

    def patches(path: Path, locations: np.ndarray) -> np.ndarray:
        slide = openslide.OpenSlide(str(path))
        return np.stack(
            [
                np.asarray(slide.read_region((int(x), int(y)), 0, (PATCH, PATCH)))[..., :3]
                for x, y in locations
            ]
        )

    def level(path: Path) -> np.ndarray:
        slide = openslide.OpenSlide(str(path))
        width, height = slide.level_dimensions[0]
        out = np.empty((height, width, 3), np.uint8)
        step = 4096

        def one(xy: tuple[int, int]) -> None:
            x, y = xy
            w, h = min(step, width - x), min(step, height - y)
            out[y : y + h, x : x + w] = np.asarray(slide.read_region((x, y), 0, (w, h)))[..., :3]

        with ThreadPoolExecutor(os.cpu_count() or 1) as pool:
            list(pool.map(one, [(x, y) for y in range(0, height, step) for x in range(0, width, step)]))
        return out

    return Contender("openslide", patches, level)


def fastslide_contender() -> Contender:
    try:
        import fastslide
    except ImportError as exc:
        return Contender("fastslide", None, None, f"not importable: {exc}")

    def patches(path: Path, locations: np.ndarray) -> np.ndarray:
        slide = fastslide.FastSlide.from_file_path(str(path))
        return np.stack(
            [slide.read_region((int(x), int(y)), 0, (PATCH, PATCH)).numpy()[..., :3] for x, y in locations]
        )

    def level(path: Path) -> np.ndarray:
        slide = fastslide.FastSlide.from_file_path(str(path))
        return slide.read_region((0, 0), 0, tuple(slide.level_dimensions[0])).numpy()[..., :3]

    return Contender("fastslide", patches, level)


def _timed(fn: Task) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _run(contenders: Sequence[Contender], path: Path, locations: np.ndarray, repeats: int) -> None:
    # Verification doubles as the warm-up (page cache, imports, first-call setup).
    reference: dict[str, np.ndarray] = {}
    import openslide

    ref = openslide.OpenSlide(str(path))
    width, height = ref.level_dimensions[0]
    reference["patches"] = np.stack(
        [
            np.asarray(ref.read_region((int(x), int(y)), 0, (PATCH, PATCH)))[..., :3]
            for x, y in locations[:200]
        ]
    )
    reference["level"] = np.asarray(ref.read_region((0, 0), 0, (width, height)))[..., :3]
    tasks: list[tuple[Contender, str, Task]] = []
    for c in contenders:
        for what, fn in (("patches", c.patches), ("level", c.level)):
            if fn is None or c.reason:
                continue
            try:
                got = fn(path, locations[:200]) if what == "patches" else fn(path)  # type: ignore[call-arg]
                want = reference[what]
                c.diff[what] = (
                    int(np.abs(got.astype(np.int16) - want).max()) if got.shape == want.shape else -1
                )
            except Exception as exc:
                c.diff[what] = -2
                c.times[what] = []
                c.reason = f"{type(exc).__name__}: {' '.join(str(exc).split())[-60:]}"
                continue
            if what == "patches":
                tasks.append((c, what, lambda fn=fn: fn(path, locations)))  # type: ignore[misc]
            else:
                tasks.append((c, what, lambda fn=fn: fn(path)))  # type: ignore[misc]
            c.times[what] = []
    for round_ in range(repeats):
        shift = round_ % max(1, len(tasks))
        for c, what, fn in tasks[shift:] + tasks[:shift]:
            c.times[what].append(_timed(fn))


def markdown(kind: str, path: Path, contenders: Sequence[Contender], patches: int) -> str:
    base = contenders[0]
    dims = wsiarray.open(path).levels[0].dimensions
    lines = [
        f"### {kind.upper()} {dims[0]}x{dims[1]} ({path.name})",
        "",
        f"| contender | {patches} patches (s) | patches ratio | whole level 0 (s) | level ratio "
        "| max diff vs OpenSlide (patches / level) |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for c in contenders:
        cells = []
        for what in ("patches", "level"):
            times = c.times.get(what) or []
            base_times = base.times.get(what) or []
            if not times:
                cells += ["n/a", ""]
                continue
            ratio = (
                statistics.median(t / b for t, b in zip(times, base_times, strict=False))
                if len(base_times) == len(times)
                else float("nan")
            )
            cells += [f"{statistics.median(times):.3f}", f"{ratio:.2f}"]
        diffs = " / ".join(
            {-1: "shape", -2: "failed"}.get(c.diff[w], str(c.diff[w])) if w in c.diff else "-"
            for w in ("patches", "level")
        )
        note = f" ({c.reason})" if c.reason else ""
        lines.append(f"| {c.name}{note} | {cells[0]} | {cells[1]} | {cells[2]} | {cells[3]} | {diffs} |")
    lines.append("")
    lines.append(
        "Ratios: contender time / wsiarray's (per-call patches or whole level) in the same round, median "
        "over rounds; above 1 means wsiarray is faster."
    )
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--formats", nargs="+", choices=("scn", "bif"), default=["scn", "bif"])
    p.add_argument("--width", type=int, default=8000)
    p.add_argument("--height", type=int, default=6000)
    p.add_argument("--patches", type=int, default=2000)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    print(f"CPUs: {os.cpu_count()}; {args.repeats} interleaved rounds; patches {PATCH} px at level 0\n")
    for kind in args.formats:
        path = make_slide(kind, args.width, args.height)
        width, height = wsiarray.open(path).levels[0].dimensions
        rng = np.random.default_rng(args.seed)
        locations = np.stack(
            [rng.integers(0, width - PATCH, args.patches), rng.integers(0, height - PATCH, args.patches)],
            axis=1,
        )
        contenders = [
            wsiarray_contender(),
            wsiarray_batch_contender(),
            openslide_contender(),
            fastslide_contender(),
        ]
        _run(contenders, path, locations, args.repeats)
        print(markdown(kind, path, contenders, args.patches))
        print()


if __name__ == "__main__":
    main()
