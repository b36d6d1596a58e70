"""DICOM WSI: open + whole level 0, and random 224-px patches, against OpenSlide and wsidicom.

Contenders (each shows "n/a" with the reason when it cannot be imported or fails):

- ``wsiarray``: ``wsiarray.open(folder)``, ``read_region``; ``wsiarray+cache`` the same
  with a 256 MiB ``per_process`` tile cache for the patches (wsidicom keeps decoded
  frames by default);
- ``openslide``: ``openslide.OpenSlide(level-0 file)``, ``read_region`` (RGBA -> RGB);
- ``wsidicom``: ``WsiDicom.open(folder)``, ``read_region`` (PIL -> numpy).

Tasks, one thread each: ``open+level0`` opens the series (handles closed before,
so parsing is timed) and reads level 0 whole; ``patches`` reads ``--patches``
224x224 level-0 patches at random places from a slide opened (outside the timing)
for that round, so every cache starts cold. Every contender's
level 0 is compared with wsiarray's first. Contenders run round-robin (the first
one rotates) for ``--repeats`` rounds; the table gives median seconds and the
median over rounds of each contender's time over wsiarray's in the same round.

Example::

    python -m benchmarks.bench_dicom                         # ../shared/data/dicom/cmu-1-small-region
    python -m benchmarks.bench_dicom --folder /data/series --repeats 7
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np

DEFAULT = Path(__file__).resolve().parents[2] / "shared" / "data" / "dicom" / "cmu-1-small-region"
PATCH = 224


def _largest_file(folder: Path) -> Path:
    # OpenSlide opens a series through one of its files; any will do, the largest is level 0.
    return max((p for p in folder.iterdir() if p.is_file()), key=lambda p: p.stat().st_size)


def contenders(folder: Path) -> dict[str, tuple[Callable[[], object], Callable[..., np.ndarray]]]:
    """name -> (open(), read(slide, x, y, w, h) -> RGB array of level 0)."""
    out: dict[str, tuple[Callable[[], object], Callable[..., np.ndarray]]] = {}
    import wsiarray

    def ws_open() -> object:
        wsiarray.file_handles().clear()
        return wsiarray.open(folder)

    out["wsiarray"] = (ws_open, lambda s, x, y, w, h: s.read_region((x, y), (w, h)))
    # wsidicom keeps decoded frames by default; this is wsiarray with a tile cache
    out["wsiarray+cache"] = out["wsiarray"]
    try:
        import openslide

        base = _largest_file(folder)
        out["openslide"] = (
            lambda: openslide.OpenSlide(str(base)),
            lambda s, x, y, w, h: np.asarray(s.read_region((x, y), 0, (w, h)))[..., :3],
        )
    except Exception as exc:
        print(f"openslide: n/a ({type(exc).__name__}: {exc})")
    try:
        from wsidicom import WsiDicom

        out["wsidicom"] = (
            lambda: WsiDicom.open(str(folder)),
            lambda s, x, y, w, h: np.asarray(s.read_region((x, y), 0, (w, h)).convert("RGB")),
        )
    except Exception as exc:
        print(f"wsidicom: n/a ({type(exc).__name__}: {exc})")
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--folder", type=Path, default=DEFAULT)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--patches", type=int, default=300)
    args = parser.parse_args(argv)
    warnings.simplefilter("ignore")
    import wsiarray

    with wsiarray.open(args.folder) as slide:
        width, height = slide.levels[0].dimensions
        reference = slide.read_region((0, 0), (width, height))
    rng = np.random.default_rng(0)
    places = rng.integers(0, [max(1, width - PATCH), max(1, height - PATCH)], (args.patches, 2))
    who = contenders(args.folder)
    for name, (open_, read) in list(who.items()):
        try:
            got = read(open_(), 0, 0, width, height)
            if not np.array_equal(got, reference):
                raise ValueError("level 0 differs from wsiarray's")
        except Exception as exc:
            print(f"{name}: n/a ({type(exc).__name__}: {str(exc)[:80]})")
            del who[name]

    def level0(open_: Callable[[], object], read: Callable[..., np.ndarray]) -> None:
        read(open_(), 0, 0, width, height)

    def patches(name: str) -> float:
        # a fresh slide (and so cold caches) each round, opened outside the timing
        open_, read = who[name]
        slide = open_()
        wsiarray.cache("per_process", memory_capacity=256) if name == "wsiarray+cache" else wsiarray.cache(
            "nocache"
        )
        t = time.perf_counter()
        for x, y in places:
            read(slide, int(x), int(y), PATCH, PATCH)
        elapsed = time.perf_counter() - t
        wsiarray.cache("nocache")
        return elapsed

    times: dict[tuple[str, str], list[float]] = {}
    names = list(who)
    for round_ in range(args.repeats):
        order = names[round_ % len(names) :] + names[: round_ % len(names)]
        for name in order:
            t = time.perf_counter()
            level0(*who[name])
            times.setdefault(("open+level0", name), []).append(time.perf_counter() - t)
            times.setdefault(("patches", name), []).append(patches(name))

    print(
        f"\n{args.folder}: level 0 {width}x{height}, {args.patches} patches of {PATCH} px, "
        f"{args.repeats} rounds, 1 thread\n"
    )
    print("| task | contender | median s | median ratio to wsiarray |")
    print("|---|---|---:|---:|")
    for task in ("open+level0", "patches"):
        base = times[(task, "wsiarray")]
        for name in names:
            mine = times[(task, name)]
            ratio = statistics.median(m / b for m, b in zip(mine, base, strict=True))
            print(f"| {task} | {name} | {statistics.median(mine):.4f} | {ratio:.2f} |")


if __name__ == "__main__":
    main()
