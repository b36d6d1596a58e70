"""Tile-cache patch scan: cuCIM's cache experiment, for wsiarray, OpenSlide and cuCIM.

cuCIM's experiment (``experiments/Using_Cache/benchmark.py`` in rapidsai/cucim) reads
every 256-px patch of level 0, row by row, starting at (0, 0) (*aligned*: one tile
per patch) and at (1, 1) (*unaligned*: four tiles per patch, each tile wanted by four
patches), splitting the patch list into contiguous chunks among N threads
(``ThreadPoolExecutor``, one slide handle per chunk) or N processes
(``ProcessPoolExecutor``), with no cache, a per-process cache and a shared-memory
cache. This script repeats it on the synthetic 19920x26420 JPEG slide
(``benchmarks/synthetic.py``) with 1 thread (``1T``), 2 threads (``2T``) and 2
``spawn`` processes (``2P``), for:

- ``wsiarray``: ``wsiarray.cache(type, memory_capacity=...)``, ``Slide.read_region``;
- ``openslide``: its own tile cache (``OpenSlideCache``) of the same budget, shared by
  the handles of a process (``nocache``: capacity 0). OpenSlide has no shared-memory
  cache: its ``shared_memory`` rows use the per-process cache;
- ``cucim-fixed``: cuCIM with a working cache. Every ``cucim-cu12`` wheel from 24.8 on
  loads two copies of libcucim (``cucim/clara/libcucim.so.26`` for the Python module,
  ``cucim_cu12.libs/libcucim-*.so*`` for the reader plugin), so ``CuImage.cache()``
  configures one copy while the reader looks in the other. The fix (bundled copy ->
  symlink to ``../cucim/clara/libcucim.so.26``) is applied to a **copy** of the
  installed packages in a temporary folder put first on ``PYTHONPATH`` of the runner
  process; site-packages is never touched;
- ``cucim-shipped``: cuCIM as installed, whose cache never engages (hit 0, miss 0).

Each contender has one runner subprocess (``--runner NAME``) for the whole benchmark,
which takes configs on stdin and prints one result each. The machine's speed drifts by
tens of percent within seconds, so measurements that are compared sit next to each
other in time: each round runs every config for every contender before the next
config (the contender that starts rotates), with a config's aligned and unaligned scans
back to back. The tables report medians over ``--repeats`` rounds. The timed part is the scan only:
caches are configured (empty) before it, and in ``2P`` the two workers are started,
have imported everything and configured their caches before the clock starts.

Cache budget, the same for every contender, one of (``--budget``):

- ``experiment`` (default): cuCIM's, ``available memory // 20`` MiB per cache, as its
  ``benchmark.py`` sets it: 1T and 2T -> 1x (the threads share it); 2P ``per_process`` ->
  1x in each process; 2P ``shared_memory`` -> one 2x segment for wsiarray. Everything a
  band scan touches fits.
- ``preferred``: the tightest sensible one, ``wsiarray.preferred_memory_capacity``
  (cuCIM's formula: the tiles a row-by-row 256-px patch scan keeps live) times the number
  of scanners sharing one cache: 1T -> 1x; 2T -> 2x (two threads scan two bands); 2P as
  above. Eviction matters here: two bands both need the tile row between them, at
  different times, so 2T and 2P decode it twice (1,404 misses instead of 1,326).

cuCIM names its segment after the process (``cucim-shm.PID``), so ``spawn`` workers
cannot share one: each gets a 1x cache of its own.

Example::

    python -m benchmarks.bench_cache                      # 16 tile rows, 5 rounds
    python -m benchmarks.bench_cache --rows 0 --repeats 1  # the whole slide (8112 patches)
    python -m benchmarks.bench_cache --only wsiarray cucim-fixed --modes 1T
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .synthetic import DEFAULT_HEIGHT, DEFAULT_WIDTH, benchmark_slide_path

CONTENDERS = ("wsiarray", "openslide", "cucim-fixed", "cucim-shipped")
CACHES = ("nocache", "per_process", "shared_memory")
MODES = ("1T", "2T", "2P")
ALIGNS = {"aligned": 0, "unaligned": 1}
PATCH = 256
TOLERANCE = 8  # max |diff| allowed between decoders (libjpeg-turbo versions differ)
REPO = Path(__file__).resolve().parents[1]
RESULT = "RESULT "


@dataclass(frozen=True)
class Config:
    """One timed scan: alignment, mode (1T, 2T, 2P) and cache type."""

    align: str
    mode: str
    cache: str

    @property
    def workers(self) -> int:
        return 1 if self.mode == "1T" else 2


def patch_locations(width: int, band: int, start: int) -> list[tuple[int, int]]:
    """Level-0 locations of every patch of the band, row by row (cuCIM's order).

    Example::

        >>> patch_locations(600, 512, 1)[:3]
        [(1, 1), (257, 1), (513, 1)]
    """
    return [(x, y) for y in range(start, band, PATCH) for x in range(start, width, PATCH)]


def split(items: Sequence[Any], n: int) -> list[list[Any]]:
    """``n`` contiguous chunks of nearly equal length (cuCIM's experiment splits the same way).

    Example::

        >>> [len(c) for c in split(list(range(7)), 2)]
        [4, 3]
    """
    size, extra = divmod(len(items), n)
    out, i = [], 0
    for k in range(n):
        j = i + size + (k < extra)
        out.append(list(items[i:j]))
        i = j
    return out


def budget(config: Config, unit: int, contender: str, policy: str) -> int:
    """MiB for one cache instance of ``config`` (see the module doc).

    Example::

        >>> budget(Config("unaligned", "2T", "per_process"), 30, "wsiarray", "preferred")
        60
    """
    if config.mode == "2T":
        return 2 * unit if policy == "preferred" else unit
    if config.mode == "2P" and config.cache == "shared_memory" and contender == "wsiarray":
        return 2 * unit
    return unit


def unit_budget(policy: str, preferred: int) -> int:
    """One scanner's cache budget in MiB under ``policy`` (``experiment`` or ``preferred``)."""
    if policy == "preferred":
        return preferred
    available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    return max(preferred, available // 2**20 // 20)


# --- backends (used inside runner and worker processes) ---------------------------


class Backend:
    """How one library opens the slide, reads a patch and configures its cache."""

    name = ""

    def __init__(self, path: str) -> None:
        self.path = path

    def configure(self, cache: str, mib: int, name: str | None = None) -> None:
        raise NotImplementedError

    def open(self) -> Any:
        raise NotImplementedError

    def read(self, handle: Any, loc: tuple[int, int]) -> np.ndarray:
        raise NotImplementedError

    def counts(self) -> tuple[int, int] | None:
        """(hits, misses) of this process's cache, or None when the library has no counters."""
        return None

    def close(self, handle: Any) -> None:
        close = getattr(handle, "close", None)
        if close is not None:
            close()


class WsiarrayBackend(Backend):
    name = "wsiarray"

    def __init__(self, path: str) -> None:
        super().__init__(path)
        import wsiarray

        self.wsiarray = wsiarray

    def configure(self, cache: str, mib: int, name: str | None = None) -> None:
        if cache == "nocache":
            self.wsiarray.cache("nocache")
        else:
            self.wsiarray.cache(cache, memory_capacity=mib, name=name if cache == "shared_memory" else None)

    def open(self) -> Any:
        return self.wsiarray.open(self.path)

    def read(self, handle: Any, loc: tuple[int, int]) -> np.ndarray:
        return handle.read_region(loc, (PATCH, PATCH))

    def counts(self) -> tuple[int, int] | None:
        c = self.wsiarray.cache()
        return (c.hit_count, c.miss_count) if c.type != "nocache" else None


class OpenSlideBackend(Backend):
    name = "openslide"

    def __init__(self, path: str) -> None:
        super().__init__(path)
        import openslide

        self.openslide = openslide
        self.cache = openslide.OpenSlideCache(0)

    def configure(self, cache: str, mib: int, name: str | None = None) -> None:
        # No shared-memory cache in OpenSlide: a per-process one of the same budget.
        self.cache = self.openslide.OpenSlideCache(0 if cache == "nocache" else mib << 20)

    def open(self) -> Any:
        slide = self.openslide.OpenSlide(self.path)
        slide.set_cache(self.cache)
        return slide

    def read(self, handle: Any, loc: tuple[int, int]) -> np.ndarray:
        return np.asarray(handle.read_region(loc, 0, (PATCH, PATCH)))


class CucimBackend(Backend):
    name = "cucim"

    def __init__(self, path: str) -> None:
        super().__init__(path)
        from cucim import CuImage

        self.CuImage = CuImage
        self.cache: Any = None

    def configure(self, cache: str, mib: int, name: str | None = None) -> None:
        if cache == "nocache":
            self.cache = self.CuImage.cache("nocache")
        else:
            self.cache = self.CuImage.cache(cache, memory_capacity=mib, record_stat=True)

    def open(self) -> Any:
        return self.CuImage(self.path)

    def read(self, handle: Any, loc: tuple[int, int]) -> np.ndarray:
        return np.asarray(handle.read_region(loc, (PATCH, PATCH), 0))

    def counts(self) -> tuple[int, int] | None:
        if self.cache is None or str(self.cache.type).endswith("NoCache"):
            return None
        return int(self.cache.hit_count), int(self.cache.miss_count)

    def close(self, handle: Any) -> None:
        pass


def make_backend(contender: str, path: str) -> Backend:
    if contender == "wsiarray":
        return WsiarrayBackend(path)
    if contender == "openslide":
        return OpenSlideBackend(path)
    return CucimBackend(path)


def scan(backend: Backend, locs: Sequence[tuple[int, int]]) -> None:
    """What each thread or process does with its chunk: open a handle, read every patch."""
    handle = backend.open()
    try:
        for loc in locs:
            backend.read(handle, loc)
    finally:
        backend.close(handle)


# --- process-pool workers (spawn) ---------------------------------------------------

_worker: dict[str, Any] = {}


def _init_worker(contender: str, path: str, cache: str, mib: int, attach: bool, barrier: Any) -> None:
    backend = make_backend(contender, path)
    if attach:  # wsiarray shared_memory: attached at import from WSIARRAY_CACHE
        assert backend.wsiarray.cache().type == "shared_memory"  # type: ignore[attr-defined]
    else:
        backend.configure(cache, mib)
    _worker.update(backend=backend, barrier=barrier)


def _warm(_: int) -> int:
    """Returns once both workers run: the pool is fully started before the clock starts."""
    _worker["barrier"].wait(300)
    return os.getpid()


def _scan_chunk(locs: list[tuple[int, int]]) -> tuple[float, tuple[int, int] | None]:
    """Scan a chunk in a worker; return its CPU seconds and its cache's (hits, misses) delta."""
    backend: Backend = _worker["backend"]
    before = backend.counts()
    cpu = time.process_time()
    scan(backend, locs)
    cpu = time.process_time() - cpu
    after = backend.counts()
    if before is None or after is None:
        return cpu, None
    return cpu, (after[0] - before[0], after[1] - before[1])


# --- one runner process: all configs of one contender, once -------------------------


def crop_inside(patch: np.ndarray, loc: tuple[int, int], size: tuple[int, int]) -> np.ndarray:
    """The part of a patch inside the image, RGB (OpenSlide gives RGBA; outside fills differ)."""
    w = min(PATCH, size[0] - loc[0])
    h = min(PATCH, size[1] - loc[1])
    return patch[:h, :w, :3]


def sample_locations(width: int, band: int) -> list[tuple[int, int]]:
    locs = []
    for start in ALIGNS.values():
        every = patch_locations(width, band, start)
        locs += [every[0], every[len(every) // 2], every[-1], every[len(every) // 3 + 5]]
    return locs


def max_diff(a: np.ndarray, b: np.ndarray) -> int:
    if a.shape != b.shape:
        return 999
    return int(np.abs(a.astype(np.int16) - b.astype(np.int16)).max(initial=0))


def distinct_tiles(locs: Sequence[tuple[int, int]], tile: tuple[int, int],
                   size: tuple[int, int]) -> set[tuple[int, int]]:
    """The tiles the patches touch (inside the image): a cache's least possible misses.

    Example::

        >>> len(distinct_tiles([(1, 1)], (256, 256), (1000, 1000)))
        4
    """
    out = set()
    for x, y in locs:
        x1, y1 = min(x + PATCH, size[0]) - 1, min(y + PATCH, size[1]) - 1
        for ty in range(y // tile[1], y1 // tile[1] + 1):
            for tx in range(x // tile[0], x1 // tile[0] + 1):
                out.add((tx, ty))
    return out


def run_config(backend: Backend, contender: str, config: Config, path: str, width: int, band: int,
               unit: int, policy: str, tile: tuple[int, int], size: tuple[int, int]) -> dict[str, Any]:
    locs = patch_locations(width, band, ALIGNS[config.align])
    mib = budget(config, unit, contender, policy)
    chunks = split(locs, config.workers)
    counts: tuple[int, int] | None = None
    if config.mode != "2P":
        name = f"/wsiarray-bench-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        backend.configure(config.cache, mib, name)
        before = backend.counts()
        cpu = time.process_time()
        t0 = time.perf_counter()
        if config.workers == 1:
            scan(backend, chunks[0])
        else:
            with ThreadPoolExecutor(config.workers) as pool:
                list(pool.map(lambda c: scan(backend, c), chunks))
        seconds = time.perf_counter() - t0
        cpu = time.process_time() - cpu
        after = backend.counts()
        if before is not None and after is not None:
            counts = (after[0] - before[0], after[1] - before[1])
    else:
        import multiprocessing

        ctx = multiprocessing.get_context("spawn")
        attach = contender == "wsiarray" and config.cache == "shared_memory"
        if contender == "wsiarray":
            # The parent creates the segment; spawned workers attach via WSIARRAY_CACHE.
            name = f"/wsiarray-bench-{os.getpid()}-{uuid.uuid4().hex[:8]}"
            backend.configure(config.cache if attach else "nocache", mib, name)
        barrier = ctx.Barrier(config.workers)
        with ProcessPoolExecutor(config.workers, mp_context=ctx, initializer=_init_worker,
                                 initargs=(contender, path, config.cache, mib, attach, barrier)) as pool:
            pids = set(pool.map(_warm, range(config.workers)))
            assert len(pids) == config.workers
            before = backend.counts() if attach else None
            t0 = time.perf_counter()
            parts = list(pool.map(_scan_chunk, chunks))
            seconds = time.perf_counter() - t0
            cpu = sum(p[0] for p in parts)
            if attach:
                after = backend.counts()
                assert before is not None and after is not None
                counts = (after[0] - before[0], after[1] - before[1])
            elif all(p[1] is not None for p in parts):
                counts = (sum(p[1][0] for p in parts), sum(p[1][1] for p in parts))  # type: ignore[index]
    result = {"contender": contender, "align": config.align, "mode": config.mode, "cache": config.cache,
              "seconds": seconds, "cpu": cpu, "patches": len(locs), "budget_mib": mib,
              "tiles": len(distinct_tiles(locs, tile, size)),
              "hits": counts[0] if counts else None, "misses": counts[1] if counts else None}
    # Cached pixels must equal uncached ones (checked after the clock, cache still set).
    if config.mode != "2P" and config.cache != "nocache":
        handle = backend.open()
        result["cached_diff"] = max(max_diff(backend.read(handle, loc), _uncached[loc])
                                    for loc in _uncached)
        backend.close(handle)
    backend.configure("nocache", 1)
    return result


_uncached: dict[tuple[int, int], np.ndarray] = {}


def runner(contender: str, path: str, width: int, band: int, unit: int, policy: str) -> None:
    """Runs in a subprocess: verify, then time each config read from stdin; one RESULT line each."""
    import wsiarray

    backend = make_backend(contender, path)
    with wsiarray.open(path) as slide:
        preferred = wsiarray.preferred_memory_capacity(slide, patch_size=(PATCH, PATCH))
        size = slide.level_dimensions[0]
        tile = slide.level_tile_sizes[0]
        wsiarray.cache("nocache")
        reference = {loc: slide.read_region(loc, (PATCH, PATCH)) for loc in sample_locations(width, band)}
    backend.configure("nocache", 1)
    handle = backend.open()
    worst = 0
    for loc, want in reference.items():
        got = backend.read(handle, loc)
        _uncached[loc] = got
        worst = max(worst, max_diff(crop_inside(got, loc, size), crop_inside(want, loc, size)))
    backend.close(handle)
    version = ""
    if contender.startswith("cucim"):
        import cucim

        version = f"cucim {cucim.__version__} from {Path(cucim.__file__).parent}"
    print(RESULT + json.dumps({"contender": contender, "verify_diff": worst, "preferred": preferred,
                               "version": version}), flush=True)
    if worst > TOLERANCE:
        return
    for line in sys.stdin:
        config = Config(**json.loads(line))
        result = run_config(backend, contender, config, path, width, band, unit, policy, tile, size)
        print(RESULT + json.dumps(result), flush=True)


# --- the fixed cuCIM (a patched copy, never site-packages) -------------------------


def fixed_cucim_dir(root: Path) -> Path:
    """Copy the installed cucim packages into ``root`` and make the plugin use the module's libcucim.

    Returns the folder to put first on ``PYTHONPATH``.
    """
    import importlib.util

    spec = importlib.util.find_spec("cucim")
    if spec is None or spec.origin is None:
        msg = "cucim is not installed"
        raise RuntimeError(msg)
    site = Path(spec.origin).parent.parent
    libs = site / "cucim_cu12.libs"
    if not libs.is_dir():
        msg = f"{libs} not found: not the layout of the cucim-cu12 wheels this fix is for"
        raise RuntimeError(msg)
    shutil.copytree(site / "cucim", root / "cucim", symlinks=True)
    shutil.copytree(libs, root / "cucim_cu12.libs", symlinks=True)
    for dist in site.glob("cucim_cu12-*.dist-info"):
        shutil.copytree(dist, root / dist.name, symlinks=True)
    bundled = sorted((root / "cucim_cu12.libs").glob("libcucim-*.so*"))
    if not bundled or not (root / "cucim" / "clara" / "libcucim.so.26").exists():
        msg = "no bundled libcucim-*.so* or cucim/clara/libcucim.so.26 in the copy"
        raise RuntimeError(msg)
    for lib in bundled:
        lib.unlink()
        lib.symlink_to("../cucim/clara/libcucim.so.26")
    return root


# --- orchestration ------------------------------------------------------------------


class Runner:
    """One contender's runner subprocess, kept for the whole benchmark."""

    def __init__(self, contender: str, path: Path, band: int, unit: int, policy: str, pythonpath: str | None,
                 log: Path) -> None:
        env = dict(os.environ)
        env.pop("WSIARRAY_CACHE", None)
        # The patched cuCIM copy (if any) first, so that it shadows the installed one.
        paths = ([pythonpath] if pythonpath else []) + [str(REPO)]
        if env.get("PYTHONPATH"):
            paths.append(env["PYTHONPATH"])
        env["PYTHONPATH"] = os.pathsep.join(paths)
        args = [sys.executable, "-m", "benchmarks.bench_cache", "--runner", contender, "--slide", str(path),
                "--band", str(band), "--unit", str(unit), "--budget", policy]
        self.contender = contender
        self.log = log.open("w+")
        self.proc = subprocess.Popen(args, cwd=REPO, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=self.log, text=True, bufsize=1)
        self.verified = self._result()

    def _result(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if line.startswith(RESULT):
                return json.loads(line[len(RESULT):])
        self.log.flush()
        self.log.seek(0)
        tail = self.log.read().strip().splitlines()[-3:] or [f"runner exited with {self.proc.wait()}"]
        return {"contender": self.contender, "error": " / ".join(tail)[:200]}

    def run(self, config: Config) -> dict[str, Any]:
        """Time one config in the runner; a dict with ``error`` if the runner is gone."""
        assert self.proc.stdin is not None
        if self.proc.poll() is not None:
            return {"contender": self.contender, "error": f"runner exited with {self.proc.returncode}"}
        self.proc.stdin.write(json.dumps(config.__dict__) + "\n")
        self.proc.stdin.flush()
        return self._result()

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


Series = dict[tuple[str, Config], dict[int, float]]  # (contender, config) -> round -> seconds


def median(values: Any) -> float | None:
    values = list(values)
    return statistics.median(values) if values else None


def paired_ratio(series: Series, top: tuple[str, Config], bottom: tuple[str, Config]) -> float | None:
    """Median over rounds of top / bottom, each pair measured seconds apart in one round.

    The machine's speed drifts between rounds; a ratio within a round cancels most of it.
    """
    a, b = series.get(top, {}), series.get(bottom, {})
    return median(a[r] / b[r] for r in a.keys() & b.keys() if b[r] > 0)


def _table(values: Series, configs: list[Config], contenders: list[str], patches: dict[Config, int],
           unit: str) -> list[str]:
    head = "| scan | mode | cache | patches | " + " | ".join(f"{c} {unit}" for c in contenders)
    head += " | " + " | ".join(f"{c} / wsiarray" for c in contenders if c != "wsiarray") + " |"
    lines = [head, "|" + "---|" * 3 + "---:|" * (2 * len(contenders))]
    for cfg in configs:
        meds = {c: median(values.get((c, cfg), {}).values()) for c in contenders}
        cells = [f"{meds[c]:.2f}" if meds[c] is not None else "n/a" for c in contenders]
        ratios = []
        for c in contenders:
            if c != "wsiarray":
                ratio = paired_ratio(values, (c, cfg), ("wsiarray", cfg))
                ratios.append("n/a" if ratio is None else f"{ratio:.2f}")
        lines.append(f"| {cfg.align} | {cfg.mode} | {cfg.cache} | {patches.get(cfg, '')} | "
                     + " | ".join(cells) + " | " + " | ".join(ratios) + " |")
    return lines


def render(results: list[dict[str, Any]], configs: list[Config], contenders: list[str]) -> str:
    """The Markdown tables (wall and CPU medians, ratios to wsiarray, cache counts) and the targets."""
    wall: Series = {}
    cpu: Series = {}
    counts: dict[tuple[str, Config], tuple[Any, Any]] = {}
    patches: dict[Config, int] = {}
    tiles: dict[Config, int] = {}
    for r in results:
        if "seconds" not in r:
            continue
        cfg = Config(r["align"], r["mode"], r["cache"])
        wall.setdefault((r["contender"], cfg), {})[r["round"]] = r["seconds"]
        cpu.setdefault((r["contender"], cfg), {})[r["round"]] = r["cpu"]
        counts[(r["contender"], cfg)] = (r["hits"], r["misses"])
        patches[cfg], tiles[cfg] = r["patches"], r["tiles"]
    lines = ["Seconds are medians over the rounds; ratios are medians of the per-round ratios "
             "(each pair measured seconds apart; > 1: slower than wsiarray).", "",
             "Wall-clock seconds:", ""]
    lines += _table(wall, configs, contenders, patches, "s")
    lines += ["", "CPU seconds of the scanning process(es) (less sensitive to a busy machine):", ""]
    lines += _table(cpu, configs, contenders, patches, "CPU s")
    counted = [c for c in contenders if c != "openslide"]
    lines += ["", "Cache hits / misses (last round; OpenSlide has no counters). `tiles`: distinct tiles "
              "the scan touches, the fewest misses possible for one cache:", "",
              "| scan | mode | cache | tiles | " + " | ".join(counted) + " |",
              "|---|---|---|---:|" + "---:|" * len(counted)]
    for cfg in configs:
        if cfg.cache == "nocache":
            continue
        cells = []
        for c in counted:
            h, m = counts.get((c, cfg), (None, None))
            cells.append("n/a" if h is None else f"{h} / {m}")
        row = f"| {cfg.align} | {cfg.mode} | {cfg.cache} | {tiles.get(cfg, '')} | "
        lines.append(row + " | ".join(cells) + " |")

    lines += ["", "Targets (per-round ratios, median):"]
    for mode in MODES:
        got = []
        for name, table in (("wall", wall), ("CPU", cpu)):
            ratio = paired_ratio(table, ("wsiarray", Config("unaligned", mode, "per_process")),
                                 ("wsiarray", Config("aligned", mode, "per_process")))
            if ratio is not None:
                got.append(f"{name} {ratio:.2f} {'PASS' if ratio <= 1.15 else 'FAIL'}")
        if got:
            lines.append(f"- {mode} per_process, unaligned / aligned <= 1.15: " + "; ".join(got))
    for name, table in (("wall", wall), ("CPU", cpu)):
        slower, compared = [], 0
        for cfg in configs:
            ratio = paired_ratio(table, ("cucim-fixed", cfg), ("wsiarray", cfg))
            if ratio is not None:
                compared += 1
                if ratio <= 1:
                    slower.append(f"{cfg.align} {cfg.mode} {cfg.cache} ({ratio:.2f})")
        if compared:
            verdict = "PASS" if not slower else "FAIL in " + ", ".join(slower)
            lines.append(f"- wsiarray faster than the fixed cuCIM in every row ({name}, {compared} rows): "
                         + verdict)
    return "\n".join(lines)


def machine() -> str:
    from .bench_read_level import _version, cpu_model

    cpu = cpu_model()
    dists = ("wsiarray", "openslide-python", "openslide-bin", "cucim-cu12")
    libs = ", ".join(f"{d} {_version(d)}" for d in dists)
    return f"- CPU: {cpu}; {os.cpu_count()} logical CPUs\n- Python {platform.python_version()}; {libs}"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="cuCIM's tile-cache patch-scan experiment.",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--rows", type=int, default=16,
                   help="scan a band of this many 256-px tile rows from the top (0: the whole slide)")
    p.add_argument("--repeats", type=int, default=5, help="rounds: each config once per contender")
    p.add_argument("--only", nargs="+", choices=CONTENDERS, default=list(CONTENDERS), metavar="NAME")
    p.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    p.add_argument("--caches", nargs="+", choices=CACHES, default=list(CACHES))
    p.add_argument("--aligns", nargs="+", choices=list(ALIGNS), default=list(ALIGNS))
    p.add_argument("--slide", type=Path, help="a tiled slide instead of the synthetic one")
    p.add_argument("--width", type=int, default=DEFAULT_WIDTH)
    p.add_argument("--height", type=int, default=DEFAULT_HEIGHT)
    p.add_argument("--budget", choices=("experiment", "preferred"), default="experiment",
                   help="cache budget: cuCIM's experiment's (available memory / 20) or the preferred one")
    p.add_argument("--runner", choices=CONTENDERS, help=argparse.SUPPRESS)
    p.add_argument("--unit", type=int, help=argparse.SUPPRESS)
    p.add_argument("--band", type=int, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    if args.runner:  # inside a runner subprocess
        import tifffile

        with tifffile.TiffFile(args.slide) as tif:
            width = tif.pages[0].imagewidth
        runner(args.runner, str(args.slide), width, args.band, args.unit, args.budget)
        return
    path = args.slide or benchmark_slide_path(args.width, args.height)
    import wsiarray

    with wsiarray.open(path) as slide:
        width, height = slide.level_dimensions[0]
        tile_w, tile_h = slide.level_tile_sizes[0]
        preferred = wsiarray.preferred_memory_capacity(slide, patch_size=(PATCH, PATCH))
    band = height if args.rows <= 0 else min(height, args.rows * tile_h)
    configs = [Config(a, m, c) for a in args.aligns for m in args.modes for c in args.caches]
    print(f"slide: {path} ({width}x{height}, {tile_w}x{tile_h} tiles)")
    print(f"band: y < {band} ({'whole slide' if band == height else f'{band // tile_h} tile rows'}), "
          f"{len(patch_locations(width, band, 0))} patches per scan; "
          f"preferred_memory_capacity = {preferred} MiB per scanner")
    unit = unit_budget(args.budget, preferred)
    print(f"cache budget: {args.budget}, {unit} MiB per cache (x2 where the module doc says)")
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="cucim-fixed-") as tmp:
        pythonpath: dict[str, str | None] = {c: None for c in args.only}
        if "cucim-fixed" in args.only:
            try:
                pythonpath["cucim-fixed"] = str(fixed_cucim_dir(Path(tmp)))
            except (RuntimeError, OSError) as e:
                print(f"cucim-fixed: n/a ({e})")
                args.only = [c for c in args.only if c != "cucim-fixed"]
        runners = {c: Runner(c, path, band, unit, args.budget, pythonpath.get(c), Path(tmp) / f"{c}.log")
                   for c in args.only}
        for contender, run in runners.items():
            g = run.verified
            if "error" in g:
                print(f"  {contender}: ERROR {g['error']}")
            else:
                extra = f", {g['version']}" if g["version"] else ""
                print(f"  {contender}: max |diff| vs wsiarray {g['verify_diff']}{extra}")
        # Run order: a config's aligned and unaligned scans back to back.
        schedule = sorted(configs, key=lambda c: (MODES.index(c.mode), CACHES.index(c.cache), c.align))
        order = list(args.only)
        try:
            for r in range(args.repeats):
                t0 = time.perf_counter()
                for i, config in enumerate(schedule):
                    shift = (r + i // len(args.aligns)) % len(order)
                    for contender in order[shift:] + order[:shift]:
                        g = runners[contender].run(config)
                        results.append({**g, "round": r})
                        if "error" in g:
                            print(f"  round {r + 1} {contender}: ERROR {g['error']}")
                            continue
                        hm = "" if g["hits"] is None else f"  hits {g['hits']} misses {g['misses']}"
                        cd = f"  cached diff {g['cached_diff']}" if "cached_diff" in g else ""
                        print(f"  round {r + 1} {contender:13s} {g['align']:9s} {g['mode']} {g['cache']:13s} "
                              f"{g['seconds']:7.2f} s (cpu {g['cpu']:6.2f})  {g['budget_mib']} MiB{hm}{cd}",
                              flush=True)
                print(f"  round {r + 1} took {time.perf_counter() - t0:.0f} s", flush=True)
        finally:
            for run in runners.values():
                run.close()
    print()
    print(render(results, configs, [c for c in CONTENDERS if c in args.only]))
    print()
    print(machine())


if __name__ == "__main__":
    main()
