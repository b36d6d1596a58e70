"""The tile cache: ``nocache``, ``per_process`` and ``shared_memory`` (``wsiarray.cache``).

What is checked, per the cache issue:

- the API: types, properties, ``record``/``reserve``/``clear``, unknown types are errors,
  ``preferred_memory_capacity``, ``WSIARRAY_CACHE`` and the JSON config files;
- exact hit and miss counts for scripted access patterns, and LRU eviction order
  against a reference model, within the item budget and the byte budget (mixed tile
  sizes, tiles larger than the cache); the byte budget is never exceeded; tiles read
  only in part outlive tiles read in full, so two patch scans running at different
  speeds through one cache decode each tile once (a plain LRU decodes more);
- keys compare the file identity in full: two files with the same geometry and tile
  indices never mix, a file rewritten in place gives its new pixels, levels and
  planes are keyed apart, a hard link shares the entries (identity, not path);
- sixteen threads reading overlapping regions get correct pixels, and the miss count
  equals the number of distinct tiles; racing threads decode a missing tile once;
- processes: two ``spawn`` workers share hits through ``shared_memory``; a forked
  child reads correctly (``per_process`` starts fresh, ``shared_memory`` stays
  attached), also when the parent forks while its threads read; a process SIGKILLed
  while using the cache (mid-decode, while holding a shard lock, or at random while
  inserting) leaves the others reading correct pixels and the stats within budget.

Every test starts and ends with ``nocache`` (fixture) and removes the segments it names.
Single-shard caches (item budget < 128 and byte budget < 8 MiB) are used wherever an
exact LRU order is asserted: larger caches are sharded, with LRU within each shard.
"""

from __future__ import annotations

import importlib
import json
import multiprocessing
import os
import random
import signal
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from cache_support import (
    PAGE,
    CoverageLruModel,
    LruModel,
    cache_counts,
    crop,
    forked_read,
    hammer,
    observer,
    reference,
    shm_exists,
    slow_decoder_reader,
    spawn_reader,
    tifffile_level,
    tile_cells,
    tiles_of,
    write_slide,
)

import wsiarray

cache_module = importlib.import_module("wsiarray.cache")  # ``wsiarray.cache`` is the function

CACHED = ["per_process", "shared_memory"]
TILE_BYTES = 256 * 256 * 3
TILE_PAGES = -(-TILE_BYTES // PAGE)  # 12
TIMEOUT = 60  # seconds any child process may take before the test fails instead of hanging


# -- fixtures -----------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def fresh_cache() -> Iterator[list[str]]:
    """Start and end every test with ``nocache``; restore ``WSIARRAY_CACHE``; unlink named segments.

    Yields the list of segment names the test created (see :func:`shm_name`).
    """
    saved = os.environ.get("WSIARRAY_CACHE")
    wsiarray.cache("nocache")
    names: list[str] = []
    yield names
    wsiarray.cache("nocache")
    if saved is None:
        os.environ.pop("WSIARRAY_CACHE", None)
    else:
        os.environ["WSIARRAY_CACHE"] = saved
    for name in names:
        if shm_exists(name):
            os.unlink("/dev/shm" + name)


@pytest.fixture
def shm_name(fresh_cache: list[str]) -> Callable[[], str]:
    """``shm_name()`` -> a fresh segment name, removed after the test if still there."""

    def make() -> str:
        name = f"/wsiarray-test-{os.getpid()}-{uuid.uuid4().hex[:12]}"
        fresh_cache.append(name)
        return name

    return make


def configure(kind: str, shm_name: Callable[[], str], **kwargs: Any) -> wsiarray.TileCache:
    """``wsiarray.cache(kind, ...)``, with a fresh segment name for ``shared_memory``."""
    if kind == "shared_memory":
        kwargs.setdefault("name", shm_name())
    return wsiarray.cache(kind, **kwargs)


@pytest.fixture(scope="module")
def slides(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., str]:
    """``slides(key, **write_slide_kwargs)`` -> path, written once per module and key."""
    folder = tmp_path_factory.mktemp("cache-slides")
    made: dict[str, str] = {}

    def get(key: str, **kwargs: Any) -> str:
        if key not in made:
            made[key] = write_slide(folder / f"{key}.tif", **kwargs)
        return made[key]

    return get


def deflate_slide(slides: Callable[..., str], seed: int = 1) -> str:
    """1024 x 768 RGB, deflate, 256-px tiles: 4 x 3 tiles."""
    return slides(f"deflate-{seed}", seed=seed)


def jpeg_slide(slides: Callable[..., str]) -> str:
    """2048 x 1536 RGB, JPEG, 256-px tiles: 8 x 6 tiles."""
    return slides("jpeg", width=2048, height=1536, compression="jpeg", seed=3)


def read_tile(slide: wsiarray.Slide, tx: int, ty: int, tile: int = 256) -> np.ndarray:
    return slide.read_region((tx * tile, ty * tile), (tile, tile))


def assert_counts(hits: int, misses: int, what: str = "") -> None:
    assert cache_counts() == (hits, misses), f"(hits, misses) {what}"


def run_child(target: Callable[..., None], *args: Any, ctx: str = "fork") -> Any:
    """Run ``target(conn, *args)`` in a child process and return what it sends (one message)."""
    mp = multiprocessing.get_context(ctx)
    parent, child = mp.Pipe()
    proc = mp.Process(target=target, args=(child, *args))
    proc.start()
    child.close()
    try:
        if not parent.poll(TIMEOUT):
            pytest.fail(f"{target.__name__} sent nothing within {TIMEOUT} s (deadlock?)")
        message = parent.recv()
    finally:
        proc.join(TIMEOUT)
        if proc.is_alive():
            proc.kill()
            proc.join()
    if message[0] == "error":
        pytest.fail(f"{target.__name__} failed in the child:\n{message[1]}")
    return message


# -- API and configuration ---------------------------------------------------------------


def test_nocache_is_the_default_and_counts_nothing(slides) -> None:
    path = deflate_slide(slides)
    c = wsiarray.cache()
    assert c.type == "nocache"
    slide = wsiarray.open(path)
    for _ in range(2):
        np.testing.assert_array_equal(slide.read_region((0, 0), (1024, 768)), tifffile_level(path))
    assert (c.hit_count, c.miss_count, c.size, c.memory_size) == (0, 0, 0, 0)


@pytest.mark.parametrize("bad", ["bogus", "per-process", "sharedmemory", "", "NOCACHE"])
def test_unknown_type_is_an_error_not_nocache(bad: str) -> None:
    before = wsiarray.cache("per_process", memory_capacity=4)
    with pytest.raises(wsiarray.ArgumentError, match="cache type"):
        wsiarray.cache(bad)
    assert isinstance(wsiarray.ArgumentError("x"), wsiarray.WSIError)
    assert wsiarray.cache() is before and wsiarray.cache().type == "per_process"


@pytest.mark.parametrize("kwargs", [{"memory_capacity": 0}, {"memory_capacity": -5}, {"capacity": 0}])
def test_invalid_budgets_are_errors(kwargs: dict[str, int]) -> None:
    with pytest.raises(wsiarray.ArgumentError):
        wsiarray.cache("per_process", **kwargs)


@pytest.mark.parametrize("kind", CACHED)
def test_properties_budgets_and_config_round_trip(kind: str, shm_name) -> None:
    c = configure(kind, shm_name, memory_capacity=48, capacity=100, record_stat=True)
    assert wsiarray.cache() is c
    assert c.type == kind
    assert (c.size, c.memory_size, c.hit_count, c.miss_count) == (0, 0, 0, 0)
    # Budgets: what was asked for, rounded down to whole pages per shard, never above.
    assert 47 << 20 < c.memory_capacity <= 48 << 20
    assert 90 <= c.capacity <= 100
    assert c.free_memory == c.memory_capacity
    assert c.record() is True
    config = c.config
    assert config["type"] == kind and config["memory_capacity"] == 48 and config["capacity"] == 100
    assert (config["name"] != "") == (kind == "shared_memory")
    # The config is what cache() takes: configuring from it gives the same budgets.
    again = wsiarray.cache(**config)
    assert (again.type, again.memory_capacity, again.capacity) == (kind, c.memory_capacity, c.capacity)
    assert os.environ["WSIARRAY_CACHE"].startswith(f"{kind}:48")


def test_cache_without_arguments_returns_the_current_cache() -> None:
    c = wsiarray.cache("per_process", memory_capacity=8)
    assert wsiarray.cache() is c
    assert wsiarray.cache().config == c.config


def test_preferred_memory_capacity_matches_cucim() -> None:
    pmc = wsiarray.preferred_memory_capacity
    assert pmc(image_size=(1048576, 1048576), tile_size=(256, 256), patch_size=(256, 256)) == 1536
    assert pmc(image_size=(1048576, 1048576), tile_size=(256, 256), patch_size=(512, 512)) == 2304
    # cuCIM's formula by hand: tiles across x tile bytes x (tiles a patch can touch down).
    w, h, t, p = 19920, 26420, 256, 256
    tiles_across = -(-w // t)
    patch_down = min(h + t - 1, p + t - 1) // t + 1
    expected = -(-(tiles_across * t * t * 3 * patch_down) // (1 << 20))
    assert pmc(image_size=(w, h), tile_size=(t, t), patch_size=(p, p)) == expected == 30


def test_preferred_memory_capacity_from_a_slide(slides) -> None:
    slide = wsiarray.open(jpeg_slide(slides))
    assert wsiarray.preferred_memory_capacity(slide) == wsiarray.preferred_memory_capacity(
        image_size=(2048, 1536), tile_size=(256, 256), patch_size=(256, 256))
    with pytest.raises(wsiarray.ArgumentError):
        wsiarray.preferred_memory_capacity()


@pytest.mark.parametrize("kind", CACHED)
def test_record_and_clear(kind: str, slides, shm_name) -> None:
    slide = wsiarray.open(deflate_slide(slides))
    c = configure(kind, shm_name, memory_capacity=16, record_stat=False)
    assert c.record() is False
    read_tile(slide, 0, 0)
    read_tile(slide, 0, 0)
    assert (c.hit_count, c.miss_count, c.size) == (0, 0, 1)  # cached, not counted
    assert c.record(True) is True
    read_tile(slide, 0, 0)
    read_tile(slide, 1, 0)
    assert (c.hit_count, c.miss_count, c.size) == (1, 1, 2)
    assert c.memory_size == 2 * TILE_PAGES * PAGE
    assert c.free_memory == c.memory_capacity - c.memory_size
    c.clear()
    assert (c.hit_count, c.miss_count, c.size, c.memory_size) == (0, 0, 0, 0)
    read_tile(slide, 0, 0)
    assert (c.hit_count, c.miss_count) == (0, 1)


def test_reserve_per_process_sets_new_budgets(slides) -> None:
    slide = wsiarray.open(deflate_slide(slides))
    c = wsiarray.cache("per_process", memory_capacity=4)
    read_tile(slide, 0, 0)
    c.reserve(16, 50)
    c = wsiarray.cache()
    assert c.type == "per_process"
    assert 15 << 20 < c.memory_capacity <= 16 << 20 and c.capacity == 50
    assert c.size == 0


def test_reserve_shared_memory_sets_new_budgets_and_keeps_the_segment(slides, shm_name) -> None:
    """``reserve`` on a shared segment: new budgets, and the segment keeps its name and attachment.

    BUG (reported): ``TileCache::create`` attaches to the existing segment of the
    same name (old budgets), then ``set_current_cache`` destroys the old handle,
    whose ``detach()`` removes this pid and, being "last", ``shm_unlink``s the name.
    """
    name = shm_name()
    c = wsiarray.cache("shared_memory", memory_capacity=4, name=name)
    assert shm_exists(name) and c.attached_processes == 1
    c.reserve(16)
    c = wsiarray.cache()
    assert c.type == "shared_memory" and c.name == name
    assert shm_exists(name), "reserve() unlinked the segment's name: other processes can no longer attach"
    assert c.attached_processes == 1
    assert 15 << 20 < c.memory_capacity <= 16 << 20, "reserve() kept the old byte budget"


def test_reconfiguring_the_same_segment_keeps_it_attached(shm_name) -> None:
    """Calling ``cache("shared_memory", name=N)`` twice must not unlink N (same bug as reserve)."""
    name = shm_name()
    wsiarray.cache("shared_memory", memory_capacity=4, name=name)
    c = wsiarray.cache("shared_memory", memory_capacity=4, name=name)
    assert shm_exists(name), "configuring the same segment again unlinked its name"
    assert c.attached_processes == 1


def test_environment_variable_configures_at_import(tmp_path: Path) -> None:
    code = "import json, wsiarray; c = wsiarray.cache(); print(json.dumps([c.config, c.memory_capacity]))"
    env = {**os.environ, "WSIARRAY_CACHE": "per_process:2048", "HOME": str(tmp_path)}
    env.pop("WSIARRAY_CONFIG", None)
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=tmp_path, capture_output=True,
                         text=True, timeout=TIMEOUT, check=True).stdout
    config, memory_capacity = json.loads(out)
    assert config["type"] == "per_process" and config["memory_capacity"] == 2048
    assert 2047 << 20 < memory_capacity <= 2048 << 20
    # No variable and no file: nocache. A bad variable: an error at import, not a silent nocache.
    env.pop("WSIARRAY_CACHE")
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=tmp_path, capture_output=True,
                         text=True, timeout=TIMEOUT, check=True).stdout
    assert json.loads(out)[0]["type"] == "nocache"
    env["WSIARRAY_CACHE"] = "persistent:64"
    bad = subprocess.run([sys.executable, "-c", code], env=env, cwd=tmp_path, capture_output=True,
                         text=True, timeout=TIMEOUT)
    assert bad.returncode != 0 and "ArgumentError" in bad.stderr and "persistent" in bad.stderr


def test_json_config_files_in_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def write(path: Path, **cache: Any) -> Path:
        path.write_text(json.dumps({"other": 1, "cache": cache}))
        return path

    home, cwd = tmp_path / "home", tmp_path / "cwd"
    home.mkdir()
    cwd.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(cwd)
    monkeypatch.delenv("WSIARRAY_CACHE", raising=False)
    monkeypatch.delenv("WSIARRAY_CONFIG", raising=False)

    def apply() -> dict[str, Any]:
        os.environ.pop("WSIARRAY_CACHE", None)  # configuring exports it; each step starts clean
        wsiarray.cache("nocache")
        os.environ.pop("WSIARRAY_CACHE", None)
        cache_module.configure_from_environment()
        return wsiarray.cache().config

    write(home / ".wsiarray.json", type="per_process", memory_capacity=8, capacity=7, record_stat=False)
    config = apply()
    assert (config["type"], config["memory_capacity"], config["capacity"], config["record_stat"]) == (
        "per_process", 8, 7, False)
    assert wsiarray.cache().record() is False
    write(cwd / ".wsiarray.json", type="per_process", memory_capacity=12)
    assert apply()["memory_capacity"] == 12  # ./.wsiarray.json before ~/.wsiarray.json
    monkeypatch.setenv("WSIARRAY_CONFIG", str(write(tmp_path / "explicit.json", type="per_process",
                                                    memory_capacity=20)))
    assert apply()["memory_capacity"] == 20  # $WSIARRAY_CONFIG first
    # The environment variable beats every file.
    wsiarray.cache("nocache")
    monkeypatch.setenv("WSIARRAY_CACHE", "per_process:24")
    cache_module.configure_from_environment()
    assert wsiarray.cache().config["memory_capacity"] == 24
    # An unknown type in a file is an error too.
    monkeypatch.delenv("WSIARRAY_CACHE")
    write(tmp_path / "explicit.json", type="lru")
    with pytest.raises(wsiarray.ArgumentError, match="lru"):
        cache_module.configure_from_environment()


# -- exact counts, eviction order, budgets ----------------------------------------------


@pytest.mark.parametrize("kind", CACHED)
def test_scripted_hits_and_misses(kind: str, slides, shm_name) -> None:
    path = deflate_slide(slides)
    ref = tifffile_level(path)
    slide = wsiarray.open(path)
    c = configure(kind, shm_name, memory_capacity=32)
    steps = [  # (location, size, workers, expected hits, expected misses) cumulative
        ((0, 0), (256, 256), 1, 0, 1),       # tile (0,0)
        ((0, 0), (256, 256), 1, 1, 1),       # again: hit
        ((1, 1), (256, 256), 1, 2, 4),       # 4 tiles, (0,0) cached
        ((0, 0), (1024, 768), 1, 6, 12),     # all 12 tiles, 4 cached
        ((0, 0), (1024, 768), 4, 18, 12),    # all cached, 4 threads
        ((-100, -100), (200, 200), 1, 19, 12),  # partly outside: tile (0,0)
        ((2000, 2000), (64, 64), 1, 19, 12),    # wholly outside: no tiles
        ((1000, 700), (100, 100), 2, 20, 12),   # corner tile (3,2)
    ]
    for (x, y), (w, h), workers, hits, misses in steps:
        got = slide.read_region((x, y), (w, h), num_workers=workers)
        np.testing.assert_array_equal(got, crop(ref, x, y, w, h))
        assert_counts(hits, misses, f"after reading {(x, y, w, h)}")
    assert c.size == 12 and c.memory_size == 12 * TILE_PAGES * PAGE


Step = tuple[tuple[int, int, int, int], bool]
"""``((x, y, w, h), hit)``: read a region that touches one tile; ``hit``: that tile is cached."""


def three_tile_cache(kind: str, slides, shm_name) -> tuple[wsiarray.Slide, np.ndarray, wsiarray.TileCache]:
    """The 4 x 3-tile deflate slide, its pixels, and a one-shard cache that holds 3 tiles."""
    path = deflate_slide(slides)
    c = configure(kind, shm_name, memory_capacity=64, capacity=3)
    assert c.capacity == 3
    return wsiarray.open(path), tifffile_level(path), c


def replay(slide: wsiarray.Slide, ref: np.ndarray, steps: list[Step],
           after: Callable[[int], None] = lambda misses: None) -> None:
    """Read every step's region, compare it with ``ref`` and check the running hit/miss counts."""
    hits = misses = 0
    for step, ((x, y, w, h), hit) in enumerate(steps):
        np.testing.assert_array_equal(slide.read_region((x, y), (w, h)), crop(ref, x, y, w, h))
        hits, misses = hits + hit, misses + (not hit)
        assert_counts(hits, misses, f"at step {step} {(x, y, w, h)}")
        after(misses)


@pytest.mark.parametrize("kind", CACHED)
def test_eviction_order_is_least_recently_used(kind: str, slides, shm_name) -> None:
    slide, ref, c = three_tile_cache(kind, slides, shm_name)
    # LRU order after each step (oldest first):
    # A:[A] B:[A,B] C:[A,B,C] A:[B,C,A] D evicts B:[C,A,D] C:[A,D,C] A:[D,C,A] B evicts D:[C,A,B]
    # D evicts C:[A,B,D] A:[B,D,A] C evicts B:[D,A,C] D:[A,C,D] B evicts A:[C,D,B] A evicts C:[D,B,A]
    script = [("A", False), ("B", False), ("C", False), ("A", True), ("D", False), ("C", True),
              ("A", True), ("B", False), ("D", False), ("A", True), ("C", False), ("D", True),
              ("B", False), ("A", False), ("B", True), ("D", True)]
    column = {"A": 0, "B": 1, "C": 2, "D": 3}

    def size_is_capped(misses: int) -> None:
        assert c.size == min(3, misses)

    replay(slide, ref, [((column[name] * 256, 0, 256, 256), hit) for name, hit in script], size_is_capped)


@pytest.mark.parametrize("kind", CACHED)
def test_tiles_read_in_part_outlive_tiles_read_in_full(kind: str, slides, shm_name) -> None:
    slide, ref, c = three_tile_cache(kind, slides, shm_name)
    script = [  # (tile column, left/right/whole, hit) -- A is oldest but only half read
        (0, "left", False), (1, "whole", False), (2, "whole", False),
        (3, "whole", False),   # evicts B (oldest read in full), not A
        (0, "right", True),    # A is still there; now read in full, most recent
        (1, "whole", False),   # B again: evicts C
        (2, "whole", False),   # C again: evicts D
        (0, "whole", True),
    ]
    half = {"left": (0, 128), "right": (128, 128), "whole": (0, 256)}
    replay(slide, ref, [((column * 256 + half[part][0], 0, half[part][1], 256), hit)
                        for column, part, hit in script])
    assert c.size == 3


@pytest.mark.parametrize("kind", CACHED)
def test_a_region_that_fits_stays_cached_among_half_read_tiles(kind: str, slides, shm_name) -> None:
    """A request does not evict its own tiles: with the cache full of half-read tiles, a
    4-tile region read once hits all 4 the second time (the half-read tiles go first)."""
    c = configure(kind, shm_name, memory_capacity=2)  # 2 MiB: ten 192 KiB tiles
    half_read = wsiarray.open(jpeg_slide(slides))
    for ty in range(6):
        for tx in range(8):
            half_read.read_region((tx * 256 + 5, ty * 256 + 5), (10, 10))
    path = deflate_slide(slides, seed=7)
    slide = wsiarray.open(path)
    slide.read_region((0, 0), (512, 512))
    before = cache_counts()
    np.testing.assert_array_equal(slide.read_region((0, 0), (512, 512)), tifffile_level(path)[:512, :512])
    assert cache_counts() == (before[0] + 4, before[1])
    assert c.memory_size <= c.memory_capacity


@pytest.mark.parametrize("kind", CACHED)
def test_two_scans_at_different_speeds_share_the_budget(kind: str, slides, shm_name) -> None:
    """Two unaligned patch scans through one cache of twice cuCIM's preferred budget, one
    scanner twice as fast as the other: each decodes every tile it needs once. A plain
    LRU would let the fast scan evict the tiles the slow one has read only half of.
    """
    size = (8192, 1280)  # 32 x 5 tiles
    path = slides("two-scans", width=size[0], height=size[1], compression="jpeg", seed=9)
    ref = tifffile_level(path)
    slide = wsiarray.open(path)
    budget = 2 * wsiarray.preferred_memory_capacity(slide, patch_size=(256, 256))
    c = configure(kind, shm_name, memory_capacity=budget)
    slow = [(x, y) for y in (1, 257) for x in range(1, size[0], 256)]
    fast = [(x, y) for y in (513, 769, 1025) for x in range(1, size[0], 256)]
    order = []
    while slow or fast:
        order += slow[:1] + fast[:2]
        del slow[:1], fast[:2]
    model, lru = CoverageLruModel(items=c.capacity), LruModel(items=c.capacity, pages=1 << 30)
    for x, y in order:
        np.testing.assert_array_equal(slide.read_region((x, y), (256, 256)), crop(ref, x, y, 256, 256))
        for tile in sorted(tiles_of(x, y, 256, 256, 256, size), key=lambda t: (t[1], t[0])):
            valid = tile_cells(tile[0] * 256, tile[1] * 256, 256, 256, tile, size)
            model.access(tile, tile_cells(x, y, 256, 256, tile, size), valid)
            lru.access(tile, 1)
    assert cache_counts() == (model.hits, model.misses)
    distinct = {t for x, y in order for t in tiles_of(x, y, 256, 256, 256, size)}
    # Each scanner decodes its tiles once; only the tile row both touch is decoded twice.
    assert model.misses == len(distinct) + size[0] // 256 < lru.misses


@pytest.mark.parametrize("kind", CACHED)
@pytest.mark.parametrize("budget", ["items", "bytes"])
def test_random_access_matches_an_lru_model(kind: str, budget: str, slides, shm_name) -> None:
    path = deflate_slide(slides)
    ref = tifffile_level(path)
    slide = wsiarray.open(path)
    if budget == "items":
        c = configure(kind, shm_name, memory_capacity=64, capacity=5)
        model = LruModel(items=5, pages=64 * 64)
    else:  # 1 MiB = 64 pages: five 12-page tiles
        c = configure(kind, shm_name, memory_capacity=1, capacity=100)
        model = LruModel(items=100, pages=64)
    assert c.memory_capacity == model.pages * PAGE or budget == "items"
    rng = random.Random(7)
    weights = [1 / (k + 1) for k in range(12)]  # skewed: some tiles are hot
    for step in range(160):
        k = rng.choices(range(12), weights)[0]
        tx, ty = k % 4, k // 4
        got = read_tile(slide, tx, ty)
        assert np.array_equal(got, ref[ty * 256 : ty * 256 + 256, tx * 256 : tx * 256 + 256]), f"step {step}"
        model.access((tx, ty), TILE_PAGES)
        assert_counts(model.hits, model.misses, f"at step {step}")
        assert c.size == len(model.entries)
        assert c.memory_size == model.used * PAGE <= c.memory_capacity
    assert model.hits > 30 and model.misses > 30  # the pattern exercised both


@pytest.mark.parametrize("kind", CACHED)
def test_byte_budget_is_never_exceeded_with_mixed_tile_sizes(kind: str, slides, shm_name) -> None:
    files = {  # tile size -> path; 1024-px tiles (3 MiB) are larger than the whole cache
        128: slides("raw-128", width=1024, height=1024, tile=128, compression=None, seed=4),
        256: slides("deflate-256", width=1024, height=1024, tile=256, seed=5),
        512: slides("deflate-512", width=1024, height=1024, tile=512, seed=6),
        1024: slides("raw-1024", width=1024, height=1024, tile=1024, compression=None, seed=7),
    }
    refs = {t: tifffile_level(p) for t, p in files.items()}
    opened = {t: wsiarray.open(p) for t, p in files.items()}
    c = configure(kind, shm_name, memory_capacity=2, capacity=100)  # 128 pages, one shard
    assert c.memory_capacity == 2 << 20
    model = LruModel(items=100, pages=128)
    rng = random.Random(11)
    for step in range(200):
        t = rng.choice(list(files))
        n = 1024 // t
        tx, ty = rng.randrange(n), rng.randrange(n)
        got = read_tile(opened[t], tx, ty, t)
        assert np.array_equal(got, refs[t][ty * t : ty * t + t, tx * t : tx * t + t]), f"step {step}"
        model.access((t, tx, ty), -(-(t * t * 3) // PAGE))
        assert c.memory_size <= c.memory_capacity <= 2 << 20, f"byte budget exceeded at step {step}"
        assert c.size <= c.capacity
        assert_counts(model.hits, model.misses, f"at step {step}")
        assert c.memory_size == model.used * PAGE and c.size == len(model.entries)


@pytest.mark.parametrize("kind", CACHED)
def test_byte_budget_with_many_shards_and_threads(kind: str, slides, shm_name) -> None:
    """A sharded cache smaller than the slide: budgets hold while threads evict each other."""
    path = jpeg_slide(slides)
    ref = reference(path)
    slide = wsiarray.open(path)
    c = configure(kind, shm_name, memory_capacity=12, capacity=700)  # 768 pages: 3 shards, ~20 tiles
    rng = random.Random(5)
    regions = [(rng.randrange(-50, 2048), rng.randrange(-50, 1536), rng.randrange(1, 700),
                rng.randrange(1, 700)) for _ in range(64)]
    peaks: list[int] = []
    errors: list[str] = []

    def work(part: list[tuple[int, int, int, int]]) -> None:
        for x, y, w, h in part:
            if not np.array_equal(slide.read_region((x, y), (w, h), num_workers=2), crop(ref, x, y, w, h)):
                errors.append(f"wrong pixels at {(x, y, w, h)}")
            peaks.append(c.memory_size)

    threads = [threading.Thread(target=work, args=(regions[i::4],)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert max(peaks) <= c.memory_capacity <= 12 << 20
    assert c.size <= c.capacity and c.memory_size == c.size * TILE_PAGES * PAGE


@pytest.mark.parametrize("kind", CACHED)
def test_preferred_capacity_decodes_each_tile_once_in_a_patch_scan(kind: str, slides, shm_name) -> None:
    """cuCIM's promise: with ``preferred_memory_capacity`` a row-by-row unaligned 256-px patch
    scan decodes every tile once (cuCIM does: 192 misses for 192 tiles here).

    The scan's live tiles (two tile rows) fill the budget exactly, so this also holds
    only because a cache this small is one shard (LRU is kept per shard).
    """
    path = slides("wide", width=16384, height=768, compression="jpeg", seed=8)  # 64 x 3 tiles
    slide = wsiarray.open(path)
    mib = wsiarray.preferred_memory_capacity(slide, patch_size=(256, 256))
    assert mib == 24
    c = configure(kind, shm_name, memory_capacity=mib)
    accesses = 0
    for y in range(1, 768, 256):
        for x in range(1, 16384, 256):
            slide.read_region((x, y), (256, 256))
            accesses += len(tiles_of(x, y, 256, 256, 256, (16384, 768)))
    assert c.hit_count + c.miss_count == accesses
    assert c.miss_count == 3 * 64, "tiles decoded more than once within cuCIM's preferred budget"


@pytest.mark.parametrize("kind", CACHED)
def test_tile_larger_than_the_cache_is_read_uncached(kind: str, slides, shm_name) -> None:
    path = slides("raw-1024", width=1024, height=1024, tile=1024, compression=None, seed=7)
    c = configure(kind, shm_name, memory_capacity=1)
    slide = wsiarray.open(path)
    for _ in range(2):
        got = slide.read_region((3, 5), (700, 900))
        np.testing.assert_array_equal(got, tifffile_level(path)[5:905, 3:703])
    assert (c.hit_count, c.miss_count, c.size, c.memory_size) == (0, 2, 0, 0)


# -- keys: file identity, level, plane, tile ----------------------------------------------


@pytest.mark.parametrize("kind", CACHED)
@pytest.mark.parametrize("compression", ["deflate", "jpeg"])
def test_two_files_with_the_same_tile_indices_never_mix(kind: str, compression: str, tmp_path: Path,
                                                       shm_name) -> None:
    """cuCIM's per_process cache keys on the tile index only and can return another file's tile."""
    a = write_slide(tmp_path / "a.tif", compression=compression, seed=21)
    b = write_slide(tmp_path / "b.tif", compression=compression, seed=22)
    ref_a, ref_b = reference(a), reference(b)
    c = configure(kind, shm_name, memory_capacity=32)
    slide_a, slide_b = wsiarray.open(a), wsiarray.open(b)
    for rnd in range(2):
        for k in range(12):
            tx, ty = k % 4, k // 4
            want_a = ref_a[ty * 256 : ty * 256 + 256, tx * 256 : tx * 256 + 256]
            want_b = ref_b[ty * 256 : ty * 256 + 256, tx * 256 : tx * 256 + 256]
            assert not np.array_equal(want_a, want_b)
            np.testing.assert_array_equal(read_tile(slide_a, tx, ty), want_a, err_msg=f"a {k} round {rnd}")
            np.testing.assert_array_equal(read_tile(slide_b, tx, ty), want_b, err_msg=f"b {k} round {rnd}")
        assert_counts(24 * rnd, 24, f"after round {rnd}")
    assert c.size == 24
    # Unaligned regions mix four tiles of each file per read.
    for x, y in [(1, 1), (300, 129), (700, 500)]:
        np.testing.assert_array_equal(slide_a.read_region((x, y), (300, 250)), crop(ref_a, x, y, 300, 250))
        np.testing.assert_array_equal(slide_b.read_region((x, y), (300, 250)), crop(ref_b, x, y, 300, 250))


@pytest.mark.parametrize("kind", CACHED)
def test_file_rewritten_in_place_gives_its_new_pixels(kind: str, tmp_path: Path, shm_name) -> None:
    """Same path, inode, device and size; only the mtime tells the versions apart."""
    path = tmp_path / "rewritten.tif"
    write_slide(path, compression=None, seed=31)
    old = os.stat(path)
    old_pixels = tifffile_level(str(path))
    c = configure(kind, shm_name, memory_capacity=32)
    np.testing.assert_array_equal(wsiarray.open(str(path)).read_region((0, 0), (1024, 768)), old_pixels)
    assert c.size == 12
    write_slide(path, compression=None, seed=32)  # truncates and rewrites the same inode
    os.utime(path, ns=(old.st_atime_ns, old.st_mtime_ns + 1_000_000_000))
    new = os.stat(path)
    assert (new.st_dev, new.st_ino, new.st_size) == (old.st_dev, old.st_ino, old.st_size)
    assert new.st_mtime_ns != old.st_mtime_ns
    new_pixels = tifffile_level(str(path))
    assert not np.array_equal(new_pixels, old_pixels)
    before = cache_counts()
    np.testing.assert_array_equal(wsiarray.open(str(path)).read_region((0, 0), (1024, 768)), new_pixels)
    assert cache_counts() == (before[0], before[1] + 12), "stale tiles of the old version were served"


@pytest.mark.parametrize("kind", CACHED)
def test_key_is_the_file_identity_not_the_path(kind: str, tmp_path: Path, shm_name) -> None:
    path = write_slide(tmp_path / "original.tif", seed=41)
    os.link(path, tmp_path / "hardlink.tif")
    os.symlink(path, tmp_path / "symlink.tif")
    c = configure(kind, shm_name, memory_capacity=32)
    want = tifffile_level(path)
    np.testing.assert_array_equal(wsiarray.open(path).read_region((0, 0), (1024, 768)), want)
    for other in ("hardlink.tif", "symlink.tif"):
        got = wsiarray.open(str(tmp_path / other)).read_region((0, 0), (1024, 768))
        np.testing.assert_array_equal(got, want)
    assert (c.hit_count, c.miss_count, c.size) == (24, 12, 12)


@pytest.mark.parametrize("kind", CACHED)
def test_levels_and_planes_are_keyed_apart(kind: str, slides, shm_name) -> None:
    """Planar (one plane per channel) two-level slide: tile 0 exists at 2 levels x 3 planes."""
    path = slides("planar-2level", planar=True, levels=2, seed=51)
    c = configure(kind, shm_name, memory_capacity=32)
    slide = wsiarray.open(path)
    refs = [tifffile_level(path, 0), tifffile_level(path, 1)]
    for rnd in range(2):
        for level, ref in enumerate(refs):
            h, w = ref.shape[:2]
            np.testing.assert_array_equal(slide.read_level_region(level, (0, 0), (w, h)), ref)
            np.testing.assert_array_equal(slide.read_level_region(level, (0, 0), (256, 256)), ref[:256, :256])
        # (12 + 4) tiles x 3 planes decoded once; the 256-px reads and round 1 hit
        assert_counts(rnd * 54 + 6, 48, f"after round {rnd}")
        assert c.size == 48


# -- threads ------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", CACHED)
def test_sixteen_threads_overlapping_regions(kind: str, slides, shm_name) -> None:
    path = jpeg_slide(slides)
    ref = reference(path)
    c = configure(kind, shm_name, memory_capacity=256)  # 48 tiles fit in any one shard
    slide = wsiarray.open(path)
    rng = random.Random(3)
    plans = [[(rng.randrange(-100, 1800), rng.randrange(-100, 1300), rng.randrange(100, 700),
               rng.randrange(100, 700), rng.choice((1, 2))) for _ in range(8)] for _ in range(16)]
    distinct: set[tuple[int, int]] = set()
    accesses = 0
    for plan in plans:
        for x, y, w, h, _ in plan:
            touched = tiles_of(x, y, w, h, 256, (2048, 1536))
            distinct |= touched
            accesses += len(touched)
    barrier = threading.Barrier(16)
    errors: list[str] = []

    def work(plan: list[tuple[int, int, int, int, int]]) -> None:
        barrier.wait()
        for x, y, w, h, workers in plan:
            got = slide.read_region((x, y), (w, h), num_workers=workers)
            if not np.array_equal(got, crop(ref, x, y, w, h)):
                errors.append(f"wrong pixels at {(x, y, w, h)}")

    threads = [threading.Thread(target=work, args=(plan,)) for plan in plans]
    for t in threads:
        t.start()
    for t in threads:
        t.join(TIMEOUT)
    assert not any(t.is_alive() for t in threads), "threads deadlocked"
    assert not errors, errors[:3]
    assert c.miss_count == len(distinct), "a tile was decoded more than once while everything fit"
    assert c.hit_count + c.miss_count == accesses
    assert c.size == len(distinct)


@pytest.mark.parametrize("kind", CACHED)
def test_racing_threads_decode_a_missing_tile_once(kind: str, tmp_path: Path, shm_name,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """Sixteen threads want the same missing tile at once: the decoder runs once per tile."""
    from wsiarray.formats import tiff

    path = write_slide(tmp_path / "zstd.tif", compression="zstd", seed=61)  # external decoder
    ref = tifffile_level(path)
    calls: list[int] = []
    lock = threading.Lock()
    original = tiff._external_decoder

    def counting(*args: Any) -> Any:
        decode = original(*args)

        def slow(data: bytes, index: int) -> np.ndarray:
            with lock:
                calls.append(index)
            time.sleep(0.02)  # widen the race
            return decode(data, index)

        return slow

    monkeypatch.setattr(tiff, "_external_decoder", counting)
    c = configure(kind, shm_name, memory_capacity=64)
    slide = wsiarray.open(path)
    barrier = threading.Barrier(16)
    errors: list[str] = []

    def work() -> None:
        for k in range(12):
            tx, ty = k % 4, k // 4
            barrier.wait()
            want = ref[ty * 256 : ty * 256 + 256, tx * 256 : tx * 256 + 256]
            if not np.array_equal(read_tile(slide, tx, ty), want):
                errors.append(f"tile {k}")

    threads = [threading.Thread(target=work) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(TIMEOUT)
    assert not errors
    assert sorted(calls) == list(range(12)), "a tile was decoded more than once"
    assert (c.hit_count, c.miss_count) == (16 * 12 - 12, 12)


@contextmanager
def readers_checking(slide: wsiarray.Slide, ref: np.ndarray, threads: int = 3) -> Iterator[list[str]]:
    """Threads read random regions of ``slide`` (some past its edges) until the block ends.

    Yields the list of regions whose pixels differed from ``ref``, complete after the block.
    """
    stop = threading.Event()
    errors: list[str] = []
    height, width = ref.shape[:2]

    def work(seed: int) -> None:
        rng = random.Random(seed)
        while not stop.is_set():
            x, y = rng.randrange(-50, width - 100), rng.randrange(-50, height - 100)
            w, h = rng.randrange(1, 700), rng.randrange(1, 700)
            if not np.array_equal(slide.read_region((x, y), (w, h), num_workers=2), crop(ref, x, y, w, h)):
                errors.append(f"wrong pixels at {(x, y, w, h)}")

    readers = [threading.Thread(target=work, args=(i,)) for i in range(threads)]
    for t in readers:
        t.start()
    try:
        yield errors
    finally:
        stop.set()
        for t in readers:
            t.join(TIMEOUT)
        assert not any(t.is_alive() for t in readers), "reader threads deadlocked"


@pytest.mark.parametrize("kind", CACHED)
def test_reconfiguring_while_threads_read(kind: str, slides, shm_name) -> None:
    """Requests in flight keep the cache they started with; pixels stay right throughout."""
    path = jpeg_slide(slides)
    ref = reference(path)
    with readers_checking(wsiarray.open(path), ref) as errors:
        for i in range(12):
            choice = (kind, "nocache", "per_process")[i % 3]
            configure(choice, shm_name, memory_capacity=4 + i)
            time.sleep(0.05)
    assert not errors, errors[:3]


@pytest.mark.parametrize("kind", CACHED)
def test_clear_while_threads_read(kind: str, slides, shm_name) -> None:
    """clear() while tiles are being decoded: tiles in flight finish, pixels and budgets stay right."""
    path = jpeg_slide(slides)
    ref = reference(path)
    c = configure(kind, shm_name, memory_capacity=8)
    slide = wsiarray.open(path)
    with readers_checking(slide, ref) as errors:
        for _ in range(300):
            c.clear()
            assert c.memory_size <= c.memory_capacity
            time.sleep(0.001)
    assert not errors, errors[:3]
    c.clear()
    assert (c.size, c.memory_size, c.hit_count, c.miss_count) == (0, 0, 0, 0)
    assert np.array_equal(slide.read_region((0, 0), (2048, 1536)), ref)
    assert c.miss_count == 48 and c.size == min(48, c.memory_capacity // (256 * 256 * 3))


# -- processes ----------------------------------------------------------------------------


@pytest.mark.parametrize("configure", [None, {"type": "shared_memory", "memory_capacity": 64}],
                         ids=["inherited", "each-configures-shared_memory"])
def test_two_spawned_processes_share_hits(slides, shm_name, configure) -> None:
    """Spawned workers share the parent's segment, also when each configures shared_memory unnamed."""
    path = jpeg_slide(slides)
    ref = reference(path)
    name = shm_name()
    c = wsiarray.cache("shared_memory", memory_capacity=32, name=name)
    region = (100, 200, 600, 500)
    n = len(tiles_of(*region, 256, (2048, 1536)))
    mp = multiprocessing.get_context("spawn")
    conns, procs = [], []
    for _ in range(2):  # started together: both pay the interpreter start at once
        parent, child = mp.Pipe()
        proc = mp.Process(target=spawn_reader, args=(child, path, region, configure))
        proc.start()
        child.close()
        conns.append(parent)
        procs.append(proc)
    try:
        for conn in conns:
            assert conn.poll(TIMEOUT), "spawned worker did not start"
            message = conn.recv()
            assert message[0] == "ready", message
            _, pid, kind, seg, _ = message
            assert pid != os.getpid() and (kind, seg) == ("shared_memory", name)
        assert c.attached_processes == 3
        results = []
        for conn in conns:  # worker 1 reads first (misses), then worker 2 (hits)
            conn.send("go")
            assert conn.poll(TIMEOUT), "spawned worker did not answer"
            message = conn.recv()
            assert message[0] == "done", message
            results.append(message)
        (_, hits1, misses1, pixels1, _), (_, hits2, misses2, pixels2, size2) = results
        want = crop(ref, *region)
        np.testing.assert_array_equal(pixels1, want)
        np.testing.assert_array_equal(pixels2, want)
        assert (hits1, misses1) == (0, n), "worker 1 should decode every tile"
        assert (hits2, misses2) == (n, 0), "worker 2 should find every tile worker 1 decoded"
        assert (c.hit_count, c.miss_count, c.size, size2) == (n, n, n, n)
        # The parent sees the same tiles: all hits.
        np.testing.assert_array_equal(wsiarray.open(path).read_region(region[:2], region[2:]), want)
        assert cache_counts() == (2 * n, n)
        for conn in conns:
            conn.send("exit")
    finally:
        for proc in procs:
            proc.join(TIMEOUT)
            if proc.is_alive():
                proc.kill()
    assert c.attached_processes == 1
    assert shm_exists(name)
    wsiarray.cache("nocache")  # the last user detaches: the segment goes
    assert not shm_exists(name)


def test_segment_budgets_are_the_creators(slides, shm_name) -> None:
    name = shm_name()
    c = wsiarray.cache("shared_memory", memory_capacity=8, name=name)
    code = textwrap.dedent(f"""
        import wsiarray
        c = wsiarray.cache("shared_memory", memory_capacity=64, name={name!r})
        print(c.memory_capacity, c.attached_processes)
    """)
    env = {**os.environ, "WSIARRAY_CACHE": "nocache"}  # attach by the explicit call only
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         timeout=TIMEOUT, check=True).stdout.split()
    assert int(out[0]) == c.memory_capacity == 8 << 20 and int(out[1]) == 2
    assert shm_exists(name) and c.attached_processes == 1


def test_unlink_on_request(slides, shm_name) -> None:
    path = deflate_slide(slides)
    name = shm_name()
    c = wsiarray.cache("shared_memory", memory_capacity=8, name=name)
    slide = wsiarray.open(path)
    read_tile(slide, 0, 0)
    c.unlink()
    assert not shm_exists(name)
    np.testing.assert_array_equal(read_tile(slide, 0, 0), tifffile_level(path)[:256, :256])
    assert cache_counts() == (1, 1)  # the mapping still works after the name is gone


def test_detach_does_not_unlink_a_newer_segment_of_the_same_name(slides, shm_name) -> None:
    """After ``unlink()``, another process may create a new segment under the same name.

    BUG (reported): ``TileCache::detach`` ``shm_unlink``s by name when its own
    (already unlinked) segment has no users left, removing the other process's
    newer segment, so later processes can no longer attach to it.
    """
    name = shm_name()
    c = wsiarray.cache("shared_memory", memory_capacity=8, name=name)
    c.unlink()
    code = textwrap.dedent(f"""
        import sys, wsiarray
        wsiarray.cache("shared_memory", memory_capacity=8, name={name!r})
        print("ready", flush=True)
        sys.stdin.readline()
    """)
    env = {**os.environ, "WSIARRAY_CACHE": "nocache"}  # attach by the explicit call only
    other = subprocess.Popen([sys.executable, "-c", code], env=env, stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
    try:
        assert other.stdout is not None and other.stdout.readline().strip() == "ready"
        assert shm_exists(name)  # the other process's new segment
        wsiarray.cache("nocache")  # we detach from our old, unlinked segment
        assert shm_exists(name), "detaching from an unlinked segment removed another process's segment"
    finally:
        assert other.stdin is not None
        other.stdin.write("\n")
        other.stdin.flush()
        other.wait(TIMEOUT)


@pytest.mark.parametrize("kind", CACHED)
def test_forked_child_reads_correctly(kind: str, slides, shm_name) -> None:
    path = jpeg_slide(slides)
    ref = reference(path)
    c = configure(kind, shm_name, memory_capacity=32)
    region = (300, 100, 500, 600)
    n = len(tiles_of(*region, 256, (2048, 1536)))
    np.testing.assert_array_equal(wsiarray.open(path).read_region(region[:2], region[2:]), crop(ref, *region))
    assert cache_counts() == (0, n)
    _, inherited, first, second, first_counts, second_counts = run_child(forked_read, path, region)
    want = crop(ref, *region)
    np.testing.assert_array_equal(first, want)
    np.testing.assert_array_equal(second, want)
    assert inherited["type"] == kind
    if kind == "per_process":  # a fresh, empty cache of the same shape
        assert (inherited["size"], inherited["hits"], inherited["misses"]) == (0, 0, 0)
        assert first_counts == (0, n) and second_counts == (n, 0)
        assert (c.size, *cache_counts()) == (n, 0, n)  # the parent's cache is untouched
    else:  # still attached to the parent's segment
        assert (inherited["size"], inherited["attached"]) == (n, 2)
        assert first_counts == (n, 0) and second_counts == (n, 0)
        assert cache_counts() == (2 * n, n)


@pytest.mark.parametrize("kind", CACHED)
def test_fork_while_threads_read(kind: str, slides, shm_name) -> None:
    """The parent forks while its threads (and the native pool) hold cache locks: no child deadlocks."""
    path = jpeg_slide(slides)
    ref = reference(path)
    configure(kind, shm_name, memory_capacity=8)  # small: constant eviction
    slide = wsiarray.open(path)
    stop = threading.Event()

    def churn(seed: int) -> None:
        rng = random.Random(seed)
        while not stop.is_set():
            slide.read_region((rng.randrange(0, 1800), rng.randrange(0, 1300)), (300, 300), num_workers=2)

    threads = [threading.Thread(target=churn, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    try:
        for i in range(6):
            time.sleep(0.03)
            region = (i * 211, i * 157, 400, 300)
            _, _, first, second, _, _ = run_child(forked_read, path, region)
            np.testing.assert_array_equal(first, crop(ref, *region))
            np.testing.assert_array_equal(second, crop(ref, *region))
    finally:
        stop.set()
        for t in threads:
            t.join(TIMEOUT)


def _fork_slow_decoder(path: str) -> int:
    """Fork a child whose decoder blocks in tile (0, 0); return its pid once it is decoding."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        try:
            os.close(read_fd)
            slow_decoder_reader(path, write_fd)
        finally:
            os._exit(1)
    os.close(write_fd)
    try:
        import select

        ready, _, _ = select.select([read_fd], [], [], TIMEOUT)
        assert ready and os.read(read_fd, 1) == b"s", "the child never started decoding"
    finally:
        os.close(read_fd)
    return pid


def _read_with_timeout(fn: Callable[[], np.ndarray], seconds: float) -> tuple[threading.Thread, list[Any]]:
    out: list[Any] = []
    t = threading.Thread(target=lambda: out.append(fn()), daemon=True)
    t.start()
    t.join(seconds)
    return t, out


def test_process_killed_while_decoding_leaves_others_working(tmp_path: Path, shm_name) -> None:
    """A reaped process killed with a pending (half-inserted) tile: others decode it themselves."""
    path = write_slide(tmp_path / "zstd.tif", compression="zstd", seed=71)
    ref = tifffile_level(path)
    c = wsiarray.cache("shared_memory", memory_capacity=16, name=shm_name())
    pid = _fork_slow_decoder(path)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    slide = wsiarray.open(path)
    _, out = _read_with_timeout(lambda: read_tile(slide, 0, 0), 20)
    assert out, "waiting for a tile whose decoder was killed"
    np.testing.assert_array_equal(out[0], ref[:256, :256])
    assert (c.size, c.attached_processes) == (1, 1)
    _, _, first, _, first_counts, _ = run_child(forked_read, path, (0, 0, 256, 256))
    np.testing.assert_array_equal(first, ref[:256, :256])
    assert first_counts == (1, 0)


def test_killed_unreaped_decoder_does_not_block_others(tmp_path: Path, shm_name) -> None:
    """As above, but the killed process is not reaped yet (a zombie) when the parent reads.

    BUG (reported): ``process_alive`` (``kill(pid, 0)``) is true for a zombie, so the
    tile stays "being decoded" and every reader waits until the zombie is reaped; a
    parent that reads before it reaps (a single-threaded driver, a plain
    ``os.fork``) waits forever.
    """
    path = write_slide(tmp_path / "zstd.tif", compression="zstd", seed=72)
    ref = tifffile_level(path)
    wsiarray.cache("shared_memory", memory_capacity=16, name=shm_name())
    pid = _fork_slow_decoder(path)
    os.kill(pid, signal.SIGKILL)
    time.sleep(0.1)  # dead (a zombie), not reaped
    slide = wsiarray.open(path)
    try:
        t, out = _read_with_timeout(lambda: read_tile(slide, 0, 0), 3)
        finished = bool(out)
    finally:
        os.waitpid(pid, 0)  # reaping lets a blocked reader go on
    t.join(TIMEOUT)
    assert out, "reader hung even after the zombie was reaped"
    np.testing.assert_array_equal(out[0], ref[:256, :256])
    assert finished, "a reader waited on a tile whose decoder was killed (zombie, not yet reaped)"


def test_killed_decoder_does_not_shrink_the_cache(tmp_path: Path, slides, shm_name) -> None:
    """The half-inserted entry of a killed process must not keep its slot for ever.

    BUG (reported): the pending entry is only removed when someone asks for that
    same tile again; it is not in the LRU list, so eviction never reclaims it and
    it holds an item and its pages: here a 5-tile cache keeps only 4 tiles, so a
    5-tile cycle never hits. Enough kills leave a shard with no room at all.
    """
    killed = write_slide(tmp_path / "zstd.tif", compression="zstd", seed=73)
    wsiarray.cache("shared_memory", memory_capacity=1, name=shm_name())  # 5 tiles, one shard
    pid = _fork_slow_decoder(killed)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    path = slides("wide", width=2048, height=256, seed=74)
    slide = wsiarray.open(path)
    for _ in range(2):
        for tx in range(5):
            read_tile(slide, tx, 0)
    assert cache_counts() == (5, 1 + 5), "5 tiles do not fit a 5-tile cache after a killed decoder"


def test_process_killed_while_holding_a_shard_lock(tmp_path: Path, shm_name) -> None:
    """SIGKILL a process while it copies a 12 MiB tile into the cache under the shard lock.

    The child empties the cache and reads the tile again, forever: each read decodes
    it (outside the lock) and copies it in (under the lock). The next locker after a
    kill that lands inside the lock gets EOWNERDEAD and repairs (empties) the shard,
    which the segment counts. Kills land there about a third of the time; the loop
    stops after two repairs and asserts at least one.
    """
    from wsiarray import _native

    path = write_slide(tmp_path / "big.tif", width=2048, height=2048, tile=2048, compression=None, seed=81)
    ref = tifffile_level(path)
    c = wsiarray.cache("shared_memory", memory_capacity=32, capacity=2, name=shm_name())  # one shard
    slide = wsiarray.open(path)
    np.testing.assert_array_equal(slide.read_region((0, 0), (2048, 2048)), ref)
    rng = random.Random(1)
    for _ in range(30):
        pid = os.fork()
        if pid == 0:  # pragma: no cover - child: insert the big tile forever
            try:
                while True:
                    c.clear()
                    slide.read_region((0, 0), (2048, 2048))
            finally:
                os._exit(1)
        time.sleep(rng.uniform(0.02, 0.08))
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        _, out = _read_with_timeout(lambda: slide.read_region((0, 0), (2048, 2048)), 30)
        assert out, "a reader hung after a process died holding a cache lock"
        np.testing.assert_array_equal(out[0], ref)
        assert c.size == 1 and c.memory_size == 12 << 20 and c.attached_processes == 1
        if _native.cache_stats()["repairs"] >= 2:
            break
    assert _native.cache_stats()["repairs"] >= 1, "no kill landed while the lock was held (unlucky?)"


def test_random_sigkills_while_inserting_leave_others_correct(slides, shm_name) -> None:
    """Children hammer a small shared cache (constant inserts and evictions) and are SIGKILLed
    at random moments, while another process keeps reading and checking. Afterwards the
    parent and a new process read correct pixels, and the stats are within the budgets."""
    paths = [
        slides("raw-128", width=1024, height=1024, tile=128, compression=None, seed=4),
        slides("deflate-256", width=1024, height=1024, tile=256, seed=5),
    ]
    refs = [tifffile_level(p) for p in paths]
    c = wsiarray.cache("shared_memory", memory_capacity=2, name=shm_name())  # 128 pages, one shard
    mp = multiprocessing.get_context("fork")
    stop = mp.Event()
    obs_conn, obs_child = mp.Pipe()
    obs = mp.Process(target=observer, args=(stop, obs_child, paths, 99))
    obs.start()
    rng = random.Random(2024)
    try:
        for round_ in range(10):
            hammers = []
            for k in range(rng.choice((1, 2))):
                ready = mp.Event()
                proc = mp.Process(target=hammer, args=(ready, paths, round_ * 10 + k))
                proc.start()
                hammers.append((proc, ready))
            for _, ready in hammers:
                assert ready.wait(TIMEOUT)
            time.sleep(rng.uniform(0.01, 0.15))
            for proc, _ in hammers:
                os.kill(proc.pid, signal.SIGKILL)
            for proc, _ in hammers:
                proc.join(TIMEOUT)
                assert proc.exitcode == -signal.SIGKILL
            assert c.memory_size <= c.memory_capacity == 2 << 20 and c.size <= c.capacity
    finally:
        stop.set()
        assert obs_conn.poll(TIMEOUT), "the observing process stopped answering"
        reads, mismatches, errors = obs_conn.recv()
        obs.join(TIMEOUT)
    assert not errors, errors[0]
    assert reads > 0 and mismatches == 0, f"{mismatches} of {reads} reads in the observer were wrong"
    # The parent reads everything correctly, in small and large regions.
    for path, ref in zip(paths, refs, strict=True):
        slide = wsiarray.open(path)
        np.testing.assert_array_equal(slide.read_region((0, 0), (1024, 1024), num_workers=2), ref)
        for x, y in [(0, 0), (130, 257), (700, 900)]:
            np.testing.assert_array_equal(slide.read_region((x, y), (300, 200)), crop(ref, x, y, 300, 200))
    # Stats consistent: within budgets, and the pages in use are whole tiles of 3 or 12 pages.
    assert c.size <= c.capacity and c.memory_size <= c.memory_capacity
    assert 3 * PAGE * c.size <= c.memory_size <= 12 * PAGE * c.size
    # The cache still caches after the kills: a region read twice hits the second time.
    slide = wsiarray.open(paths[1])
    slide.read_region((0, 0), (512, 512))
    before = cache_counts()
    slide.read_region((0, 0), (512, 512))
    assert cache_counts() == (before[0] + 4, before[1])
    # And a new process reads correctly too.
    _, _, first, second, _, _ = run_child(forked_read, paths[0], (5, 7, 900, 800))
    np.testing.assert_array_equal(first, crop(refs[0], 5, 7, 900, 800))
    np.testing.assert_array_equal(second, crop(refs[0], 5, 7, 900, 800))
