"""Batches (``Slide.read_region`` with many locations, ``read_regions``) and whole-level reads.

Every batch must equal the single-region reads of its locations bit for bit,
whatever the location count, batch size, worker count, shuffle/seed, drop_last,
and wherever the locations lie (inside, across, or past the image edges). Kept
batches stay valid; abandoned iterators free their memory; partial JPEG decoding
of edge tiles is exact.
"""

from __future__ import annotations

import gc
import itertools
import multiprocessing
import os
import threading
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import psutil
import pytest
from wsitest import (
    SyntheticFactory,
    SyntheticSpec,
    assert_pixels_equal,
    preserved_cache,
    reference_region,
    synthetic_reference,
)

import wsiarray
from wsiarray.batch import BatchIterator

S = SyntheticSpec
#: A JPEG pyramid with levels that are not 2x steps (downsample 2 and 6).
JPEG = S("batch-jpeg", width=1000, height=763, compression="jpeg", photometric="ycbcr", subsampling=(2, 2),
         pyramid="chain", steps=(2, 3))
#: A second RGB slide (deflate, other tile size) for streams over several slides.
DEFLATE = S("batch-deflate", width=700, height=500, compression="zlib", tile=(128, 128), pyramid="chain",
            steps=(2,))
U16 = S("batch-u16", width=300, height=200, dtype="uint16", compression="zlib", tile=(128, 128))
GRAY = S("batch-gray", width=300, height=200, samples=1, photometric="minisblack", compression="zlib",
         tile=(128, 128))
#: Uncompressed: big patches are cheap, so a leak of abandoned batches would be large.
RAW = S("batch-raw", width=1024, height=768, compression=None, tile=(64, 64))

#: Partial decoding: JPEG flavours, 224-px patches. Sizes are not tile multiples.
PARTIAL = [
    S("partial-rgb", width=1531, height=1117, compression="jpeg", photometric="rgb", subsampling=(1, 1),
      compressionargs=(("outcolorspace", "rgb"),)),
    S("partial-aperio-bare", width=1531, height=1117, jpeg="bare", compression="jpeg", tile=(240, 240)),
    S("partial-ycbcr420", width=1531, height=1117, compression="jpeg", photometric="ycbcr",
      subsampling=(2, 2)),
    S("partial-ycbcr422", width=1531, height=1117, compression="jpeg", photometric="ycbcr",
      subsampling=(2, 1), tile=(128, 512)),
    S("partial-gray", width=1531, height=1117, samples=1, photometric="minisblack", compression="jpeg",
      tile=(256, 256)),
]

SIZE = (40, 30)


@pytest.fixture(autouse=True, scope="module")
def no_cache() -> Iterator[None]:
    """These tests read with no tile cache (where partial decoding applies); restore afterwards."""
    with preserved_cache():
        wsiarray.cache("nocache")
        yield


@pytest.fixture(scope="module")
def jpeg(synthetic: SyntheticFactory) -> wsiarray.Slide:
    return wsiarray.open(synthetic(JPEG))


def edge_locations(slide: wsiarray.Slide, count: int, seed: int, size: tuple[int, int] = SIZE,
                   level: int = 0) -> np.ndarray:
    """``count`` level-0 locations: random ones from before the origin to past the far edges, plus
    fixed ones on the corners, straddling every edge, and wholly outside."""
    w0, h0 = slide.level_dimensions[0]
    d = slide.level_downsamples[level]
    sw, sh = int(size[0] * d), int(size[1] * d)
    fixed = [(0, 0), (-sw // 2, -sh // 2), (w0 - sw // 2, h0 - sh // 2), (w0 - 1, 0), (0, h0 - 1),
             (w0 + 5, h0 + 5), (-sw - 10, 10), (w0 // 2, -sh + 1), (255, 255), (256, 256), (w0 - sw, h0 - sh)]
    rng = np.random.default_rng(seed)
    random = np.stack([rng.integers(-sw, w0 + 20, count), rng.integers(-sh, h0 + 20, count)], axis=1)
    return np.concatenate([np.array(fixed, np.int64), random])[:count]


def singles(slide: wsiarray.Slide, locations: np.ndarray, size: tuple[int, int] = SIZE,
            level: int = 0) -> np.ndarray:
    """The single-region reads, stacked."""
    out = [slide.read_region((int(x), int(y)), size, level) for x, y in locations]
    return np.stack(out) if out else np.empty((0, size[1], size[0], slide.channels), slide.dtype)


def collect(batches: BatchIterator) -> list[np.ndarray]:
    out = list(batches)
    with pytest.raises(StopIteration):
        next(batches)
    return out


# -- batches equal single reads ---------------------------------------------------------------


@pytest.mark.parametrize("count", [1, 2, 7, 40])
@pytest.mark.parametrize("batch_size", [1, 3, 8, 64])
@pytest.mark.parametrize("num_workers", [0, 1, 2, 4])
def test_batches_equal_single_reads(jpeg: wsiarray.Slide, count: int, batch_size: int,
                                    num_workers: int) -> None:
    locations = edge_locations(jpeg, count, seed=count)
    want = singles(jpeg, locations)
    for shuffle, drop_last, seed in [(False, False, 0), (False, True, 0), (True, False, 3), (True, True, 11)]:
        batches = jpeg.read_region(locations, SIZE, num_workers=num_workers, batch_size=batch_size,
                                   drop_last=drop_last, shuffle=shuffle, seed=seed)
        assert isinstance(batches, BatchIterator)
        full, rest = divmod(count, batch_size)
        expect_len = full if drop_last else full + (rest > 0)
        assert len(batches) == expect_len
        got = collect(batches)
        assert len(got) == expect_len
        sizes = [b.shape[0] for b in got]
        assert sizes == [batch_size] * full + ([] if drop_last or not rest else [rest])
        order = np.random.default_rng(seed).permutation(count) if shuffle else np.arange(count)
        order = order[: sum(sizes)]
        what = f"count={count} bs={batch_size} nw={num_workers} shuffle={shuffle} seed={seed} dl={drop_last}"
        if got:
            assert_pixels_equal(np.concatenate(got), want[order], what)


@pytest.mark.parametrize("level", [1, 2])
def test_batches_at_lower_levels(jpeg: wsiarray.Slide, level: int) -> None:
    locations = edge_locations(jpeg, 30, seed=level, level=level)
    want = singles(jpeg, locations, level=level)
    got = np.concatenate(list(jpeg.read_region(locations, SIZE, level, num_workers=2, batch_size=7)))
    assert_pixels_equal(got, want, f"level {level}")
    # and against tifffile's level, cut at floor(location / downsample)
    ref = synthetic_reference(jpeg.path, JPEG, level)
    d = jpeg.level_downsamples[level]
    for patch, (x, y) in zip(got, locations, strict=True):
        want_one = reference_region(ref, int(np.floor(x / d)), int(np.floor(y / d)), *SIZE)
        assert_pixels_equal(patch, want_one, f"level {level} at {(x, y)} vs tifffile")


def test_shuffle_order_is_the_documented_permutation(jpeg: wsiarray.Slide) -> None:
    locations = edge_locations(jpeg, 25, seed=5)
    want = singles(jpeg, locations)
    for seed in (0, 1, 12345):
        got = np.concatenate(list(jpeg.read_region(locations, SIZE, batch_size=4, shuffle=True, seed=seed,
                                                   num_workers=2)))
        assert_pixels_equal(got, want[np.random.default_rng(seed).permutation(25)], f"seed {seed}")
        again = np.concatenate(list(jpeg.read_region(locations, SIZE, batch_size=6, shuffle=True, seed=seed)))
        assert_pixels_equal(again, got, f"seed {seed} is reproducible across batch sizes")


@pytest.mark.parametrize("form", ["list", "tuple", "generator", "int64 (N, 2)", "int32 (N, 2)",
                                  "uint16 (N, 2)", "flat list", "flat array", "lists", "arrays",
                                  "integral floats"])
def test_location_forms(jpeg: wsiarray.Slide, form: str) -> None:
    points = [(10, 20), (500, 300), (990, 750), (0, 0), (123, 456)]
    want = singles(jpeg, np.array(points))
    locations: Any = {
        "list": points,
        "tuple": tuple(points),
        "generator": (p for p in points),
        "int64 (N, 2)": np.array(points, np.int64),
        "int32 (N, 2)": np.array(points, np.int32),
        "uint16 (N, 2)": np.array(points, np.uint16),
        "flat list": [v for p in points for v in p],
        "flat array": np.array(points).ravel(),
        "lists": [list(p) for p in points],
        "arrays": [np.array(p) for p in points],
        "integral floats": np.array(points, np.float64),
    }[form]
    batches = jpeg.read_region(locations, SIZE, batch_size=2, num_workers=2)
    assert len(batches) == 3
    assert_pixels_equal(np.concatenate(list(batches)), want, form)


def test_one_and_no_locations(jpeg: wsiarray.Slide) -> None:
    one = jpeg.read_region((7, 9), SIZE)
    assert isinstance(one, np.ndarray) and one.shape == (SIZE[1], SIZE[0], 3)
    assert isinstance(jpeg.read_region(np.array([7, 9]), SIZE), np.ndarray)  # one (x, y) pair
    batches = jpeg.read_region([(7, 9)], SIZE)  # a list of one location is a batch stream
    assert isinstance(batches, BatchIterator) and len(batches) == 1
    assert_pixels_equal(next(batches)[0], one, "list of one")
    empty = jpeg.read_region([], SIZE, batch_size=4)
    assert len(empty) == 0 and list(empty) == []


@pytest.mark.parametrize("kwargs", [{"batch_size": 0}, {"batch_size": -1}, {"prefetch_factor": -1}])
def test_invalid_batch_arguments(jpeg: wsiarray.Slide, kwargs: dict[str, int]) -> None:
    with pytest.raises(wsiarray.ArgumentError):
        jpeg.read_region([(0, 0), (1, 1)], SIZE, **kwargs)


@pytest.mark.parametrize("locations", [[(0.5, 1), (2, 3)], [(0, 0, 0), (1, 1, 1)], [1, 2, 3], ["a", "b"],
                                       [[(0, 0)], [(1, 1)]]])
def test_invalid_locations(jpeg: wsiarray.Slide, locations: Any) -> None:
    with pytest.raises(wsiarray.ArgumentError):
        jpeg.read_region(locations, SIZE)


def test_prefetch_zero_and_closing_midway(jpeg: wsiarray.Slide) -> None:
    locations = edge_locations(jpeg, 20, seed=2)
    want = singles(jpeg, locations)
    got = np.concatenate(list(jpeg.read_region(locations, SIZE, batch_size=3, prefetch_factor=0)))
    assert_pixels_equal(got, want, "prefetch_factor=0")
    batches = jpeg.read_region(locations, SIZE, batch_size=3, prefetch_factor=4, num_workers=2)
    first = next(batches)
    batches.close()
    with pytest.raises(StopIteration):
        next(batches)
    assert_pixels_equal(first, want[:3], "the batch read before close()")


def test_pool_smaller_than_num_workers(jpeg: wsiarray.Slide) -> None:
    locations = edge_locations(jpeg, 30, seed=8)
    want = singles(jpeg, locations)
    before = wsiarray.pool_size()
    try:
        wsiarray.set_pool_size(1)
        got = np.concatenate(list(jpeg.read_region(locations, SIZE, batch_size=8, num_workers=4)))
    finally:
        wsiarray.set_pool_size(before)
    assert_pixels_equal(got, want, "pool of 1 thread, num_workers=4")


# -- ownership and memory --------------------------------------------------------------------------


def test_kept_batches_stay_valid(jpeg: wsiarray.Slide) -> None:
    locations = edge_locations(jpeg, 60, seed=21)
    want = singles(jpeg, locations)
    kept = list(jpeg.read_region(locations, SIZE, batch_size=4, num_workers=2, prefetch_factor=3))
    copies = [b.copy() for b in kept]
    for a, b in itertools.combinations(kept, 2):
        assert not np.shares_memory(a, b)
    for batch in kept:
        assert batch.flags.owndata and batch.flags.writeable and batch.flags.c_contiguous
    # more batches through the same pool and driver threads must not touch the kept ones
    for _ in range(3):
        for batch in jpeg.read_region(edge_locations(jpeg, 60, seed=99), SIZE, batch_size=4, num_workers=2):
            batch[...] = 7
    for i, (batch, copy) in enumerate(zip(kept, copies, strict=True)):
        assert_pixels_equal(batch, copy, f"kept batch {i} after later batches")
    assert_pixels_equal(np.concatenate(kept), want, "kept batches")
    # writing into a kept batch changes only that batch
    kept[0][...] = 0
    assert_pixels_equal(np.concatenate(kept[1:]), want[4:], "the other batches")


def rss() -> int:
    gc.collect()
    return psutil.Process().memory_info().rss


def test_abandoned_iterators_free_their_memory(synthetic: SyntheticFactory) -> None:
    """1,000 iterators, each abandoned after its first batch with more in flight: RSS must not grow.

    Each iterator has up to ``prefetch_factor`` batches of 384 KiB decoded or in
    flight, so leaking them would grow the process by hundreds of MiB.
    """
    slide = wsiarray.open(synthetic(RAW))
    rng = np.random.default_rng(0)
    locations = np.stack([rng.integers(-64, 1000, 64), rng.integers(-64, 700, 64)], axis=1)
    size = (128, 128)
    batch_bytes = 8 * 128 * 128 * 3

    def abandon(n: int) -> None:
        for _ in range(n):
            batches = slide.read_region(locations, size, batch_size=8, num_workers=2, prefetch_factor=2)
            next(batches)
            del batches

    abandon(50)  # warm up: driver threads, allocator arenas, per-thread scratch
    before = rss()
    abandon(1000)
    after = rss()
    growth = after - before
    assert growth < 32 * 2**20, (
        f"RSS grew by {growth / 2**20:.1f} MiB after abandoning 1,000 iterators "
        f"(a leak of the batches in flight would be {1000 * 2 * batch_bytes / 2**20:.0f} MiB)"
    )


# -- whole levels -------------------------------------------------------------------------------------


@pytest.mark.parametrize("level", [0, 1, 2])
def test_whole_level_same_for_any_worker_count(jpeg: wsiarray.Slide, level: int) -> None:
    ref = synthetic_reference(jpeg.path, JPEG, level)
    for num_workers in (0, 1, 2, 3):
        got = jpeg.read_region(level=level, num_workers=num_workers)
        assert isinstance(got, np.ndarray)
        assert_pixels_equal(got, ref, f"whole level {level}, num_workers={num_workers}")
    with pytest.raises(wsiarray.ArgumentError):
        jpeg.read_region((0, 0), level=level)  # a location needs a size


# -- many slides in one stream -----------------------------------------------------------------------


def test_read_regions_over_two_slides(jpeg: wsiarray.Slide, synthetic: SyntheticFactory) -> None:
    other_path = synthetic(DEFLATE)
    other = wsiarray.open(other_path)
    rng = np.random.default_rng(4)
    items: list[tuple[Any, tuple[int, int]]] = []
    for i in range(45):
        source: Any = [jpeg, other, other_path][i % 3]  # Slide handles and a path
        w, h = (jpeg if i % 3 == 0 else other).level_dimensions[0]
        items.append((source, (int(rng.integers(-30, w + 10)), int(rng.integers(-30, h + 10)))))

    def single(item: tuple[Any, tuple[int, int]], level: int) -> np.ndarray:
        source, location = item
        slide = jpeg if source is jpeg else other
        return slide.read_region(location, SIZE, level)

    for level, batch_size, num_workers, shuffle in [(0, 8, 2, False), (1, 5, 1, True), (0, 45, 0, True)]:
        want = np.stack([single(item, level) for item in items])
        batches = wsiarray.read_regions(items, SIZE, level=level, batch_size=batch_size,
                                        num_workers=num_workers, shuffle=shuffle, seed=level)
        assert len(batches) == -(-45 // batch_size)
        order = np.random.default_rng(level).permutation(45) if shuffle else np.arange(45)
        assert_pixels_equal(np.concatenate(list(batches)), want[order], f"level {level} bs {batch_size}")
    dropped = wsiarray.read_regions(iter(items), SIZE, batch_size=10, drop_last=True)
    assert [b.shape[0] for b in dropped] == [10] * 4


@pytest.mark.parametrize("spec", [U16, GRAY], ids=["uint16", "gray"])
def test_read_regions_refuses_mixed_pixel_types(jpeg: wsiarray.Slide, synthetic: SyntheticFactory,
                                                spec: SyntheticSpec) -> None:
    items = [(jpeg, (0, 0)), (synthetic(spec), (0, 0))]
    with pytest.raises(wsiarray.ArgumentError, match="cannot share a batch"):
        wsiarray.read_regions(items, SIZE)


def test_read_regions_needs_items() -> None:
    with pytest.raises(wsiarray.ArgumentError):
        wsiarray.read_regions([], SIZE)


# -- fork -----------------------------------------------------------------------------------------


def _batch_digest(path: str, locations: list[tuple[int, int]]) -> bytes:
    slide = wsiarray.open(path)
    return np.concatenate(list(slide.read_region(locations, SIZE, batch_size=3, num_workers=2))).tobytes()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()")
def test_batches_in_a_forked_child(jpeg: wsiarray.Slide) -> None:
    locations = [tuple(int(v) for v in p) for p in edge_locations(jpeg, 20, seed=31)]
    # start the parent's pool and driver threads, and leave an iterator in flight across the fork
    in_flight = jpeg.read_region(locations, SIZE, batch_size=2, num_workers=2, prefetch_factor=8)
    next(in_flight)
    want = singles(jpeg, np.array(locations)).tobytes()
    ctx = multiprocessing.get_context("fork")
    with ctx.Pool(1) as pool:
        got = pool.apply_async(_batch_digest, (jpeg.path, locations)).get(timeout=60)
    assert got == want
    del in_flight


# -- partial decoding is exact --------------------------------------------------------------------


def patch_locations(slide: wsiarray.Slide, count: int, seed: int) -> list[tuple[int, int]]:
    """224-px patch origins: random (some over the edges) and on tile and iMCU boundaries +-1."""
    w, h = slide.level_dimensions[0]
    tw, th = slide.level_tile_sizes[0]
    fixed = [(tw - 1, th - 1), (tw + 1, th + 1), (tw - 224, 0), (2 * tw - 7, 3 * th - 9), (15, 17), (16, 8),
             (w - 224, h - 224), (w - 100, h - 50), (-50, -30), (tw * 2 + 113, th + 57)]
    rng = np.random.default_rng(seed)
    random = [(int(x), int(y)) for x, y in zip(rng.integers(-100, w - 124, count),
                                                rng.integers(-100, h - 124, count), strict=True)]
    return fixed + random


@pytest.mark.parametrize("spec", PARTIAL, ids=[s.name for s in PARTIAL])
def test_partial_decoding_is_exact(synthetic: SyntheticFactory, spec: SyntheticSpec) -> None:
    path = synthetic(spec)
    slide = wsiarray.open(path)
    assert wsiarray.cache().type == "nocache"
    whole = slide.read_region(num_workers=2)
    assert_pixels_equal(whole, synthetic_reference(path, spec, 0), f"{spec}: whole level vs tifffile")
    locations = patch_locations(slide, 40, seed=len(spec.name))
    size = (224, 224)
    for x, y in locations:
        got = slide.read_region((x, y), size)
        assert_pixels_equal(got, reference_region(whole, x, y, *size), f"{spec}: 224-px patch at {(x, y)}")
    batched = np.concatenate(list(slide.read_region(locations, size, batch_size=16, num_workers=2)))
    want = np.stack([reference_region(whole, x, y, *size) for x, y in locations])
    assert_pixels_equal(batched, want, f"{spec}: batched 224-px patches")
    # odd sizes too: 1-px strips and patches smaller than an iMCU
    for (x, y), (sw, sh) in itertools.product([(255, 255), (17, 9), (700, 3)], [(1, 224), (224, 1), (5, 3)]):
        assert_pixels_equal(slide.read_region((x, y), (sw, sh)), reference_region(whole, x, y, sw, sh),
                            f"{spec}: {sw}x{sh} at {(x, y)}")


# -- argument checks the batch paths must share with single reads (bugs reported to the lead) -----------


def test_negative_num_workers_is_refused_for_batches_too(jpeg: wsiarray.Slide) -> None:
    with pytest.raises(wsiarray.ArgumentError):
        jpeg.read_region((0, 0), SIZE, num_workers=-1)  # single region: refused
    with pytest.raises(wsiarray.ArgumentError):
        jpeg.read_region([(0, 0), (5, 5)], SIZE, num_workers=-1)  # many: silently ran on 1 thread


def test_read_regions_refuses_fractional_locations(jpeg: wsiarray.Slide) -> None:
    with pytest.raises(wsiarray.ArgumentError):
        jpeg.read_region([(0.5, 1), (2, 3)], SIZE)  # Slide.read_region: refused
    with pytest.raises(wsiarray.ArgumentError):
        wsiarray.read_regions([(jpeg, (0.5, 1.7)), (jpeg, (2, 3))], SIZE)  # silently read at (0, 1)


def test_read_regions_bad_size_is_an_argument_error(jpeg: wsiarray.Slide) -> None:
    with pytest.raises(wsiarray.ArgumentError):
        wsiarray.read_regions([(jpeg, (0, 0))], (16,))  # raised a bare ValueError from unpacking
    with pytest.raises(wsiarray.ArgumentError):
        wsiarray.read_regions([(jpeg, (0, 0))], (16, -2))


@pytest.mark.parametrize("num_workers", [1, 2])
def test_num_workers_bounds_the_decoding_threads(jpeg: wsiarray.Slide, num_workers: int,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """``num_workers`` is the number of decoding threads, as in cuCIM, prefetching or not.

    Counts the threads the native batch calls in flight may use at once (each call
    decodes on up to ``workers`` threads, the caller included). Today every prefetched
    batch is its own call with ``num_workers`` threads, so the default
    ``prefetch_factor=2`` decodes on 2 x ``num_workers`` threads (bug reported to the lead).
    """
    import wsiarray.batch as batch_module

    real = batch_module._native.read_batch
    lock = threading.Lock()
    state = {"now": 0, "peak": 0}

    def counting(readers: Any, where: Any, out: Any, fill: Any, workers: int) -> Any:
        with lock:
            state["now"] += workers
            state["peak"] = max(state["peak"], state["now"])
        try:
            time.sleep(0.02)  # widen the window in which calls overlap
            return real(readers, where, out, fill, workers)
        finally:
            with lock:
                state["now"] -= workers

    monkeypatch.setattr(batch_module._native, "read_batch", counting)
    locations = edge_locations(jpeg, 40, seed=3)
    got = np.concatenate(list(jpeg.read_region(locations, SIZE, batch_size=4, num_workers=num_workers)))
    assert_pixels_equal(got, singles(jpeg, locations), "batches")
    assert state["peak"] <= num_workers, (
        f"num_workers={num_workers}, but up to {state['peak']} threads decoded at once"
    )
