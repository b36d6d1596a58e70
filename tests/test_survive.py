"""Surviving production (issue 18): killed ``spawn`` workers, and many threads on a tiny cache.

- ``spawn`` workers attached to one ``shared_memory`` segment by name (through
  ``WSIARRAY_CACHE``) are SIGKILLed again and again while they read (inserting
  and evicting tiles in a 2 MiB cache). Two surviving workers check every region
  they read against tifffile the whole time; afterwards they, the parent and a
  newly spawned reader see correct pixels, and the attach count is exactly the
  live processes (killed ones are pruned). ``test_cache.py`` does the same with
  ``fork``; spawned workers attach by name instead of inheriting the mapping.
- 16 threads share one :class:`wsiarray.Slide` and read 1,600 random, unaligned
  patches through an 8 MiB ``per_process`` or ``shared_memory`` cache, much
  smaller than the slide (constant eviction under contention): every patch equals
  tifffile's pixels and the cache stays within its budgets.
"""

from __future__ import annotations

import concurrent.futures
import multiprocessing
import os
import random
import signal
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from cache_support import tifffile_level, write_slide
from survive_support import checker, crop, final_reader, random_region, victim

import wsiarray

TIMEOUT = 60
KILLS = 40  # SIGKILLs of spawned workers per run (at least MIN_KILLS; see the loop)
MIN_KILLS = 30
KILL_SECONDS = 25.0
VICTIMS = 3  # spawned workers alive at once, each killed a moment after it starts reading


@pytest.fixture
def segment() -> Iterator[str]:
    """A fresh segment name; ``nocache`` and ``WSIARRAY_CACHE`` restored and the segment removed after."""
    saved = os.environ.get("WSIARRAY_CACHE")
    name = f"/wsiarray-survive-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    yield name
    wsiarray.cache("nocache")
    if saved is None:
        os.environ.pop("WSIARRAY_CACHE", None)
    else:
        os.environ["WSIARRAY_CACHE"] = saved
    if os.path.exists("/dev/shm" + name):
        os.unlink("/dev/shm" + name)


@pytest.fixture(scope="module")
def kill_slides(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """Two 1024 x 1024 slides: raw 128-px tiles (48 KiB, 3 pages) and deflate 256-px tiles (12 pages)."""
    folder = tmp_path_factory.mktemp("survive")
    return [write_slide(folder / "raw.tif", width=1024, height=1024, tile=128, compression=None, seed=61),
            write_slide(folder / "deflate.tif", width=1024, height=1024, tile=256, seed=62)]


def test_spawned_workers_killed_mid_read(kill_slides: list[str], segment: str) -> None:
    c = wsiarray.cache("shared_memory", memory_capacity=2, name=segment)  # one shard, constant eviction
    assert os.environ["WSIARRAY_CACHE"].endswith(segment), "spawned workers attach through WSIARRAY_CACHE"
    mp = multiprocessing.get_context("spawn")
    stop = mp.Event()
    checkers = []
    for seed in (1, 2):
        parent_conn, child_conn = mp.Pipe()
        proc = mp.Process(target=checker, args=(stop, child_conn, kill_slides, seed))
        proc.start()
        checkers.append((proc, parent_conn))
    rng = random.Random(18)
    victims: list[tuple[multiprocessing.process.BaseProcess, object]] = []
    kills = 0
    try:
        for _, conn in checkers:
            assert conn.poll(TIMEOUT), "a checking worker did not start"
            assert conn.recv() == "ready"
        started = time.monotonic()
        # KILLS, or at least MIN_KILLS once KILL_SECONDS have passed (a loaded machine
        # starts Python slowly: take longer rather than fail); never more than 3 x KILL_SECONDS.
        while kills < KILLS and time.monotonic() - started < 3 * KILL_SECONDS and not (
                kills >= MIN_KILLS and time.monotonic() - started >= KILL_SECONDS):
            while len(victims) < VICTIMS:
                ready = mp.Event()
                seed = rng.randrange(1 << 30)
                proc = mp.Process(target=victim, args=(ready, kill_slides, seed), daemon=True)
                proc.start()
                victims.append((proc, ready))
            proc, ready = victims.pop(0)
            assert ready.wait(TIMEOUT), "a spawned worker did not attach"
            time.sleep(rng.uniform(0.0, 0.05))  # it reads meanwhile: the kill lands mid-read
            os.kill(proc.pid, signal.SIGKILL)
            proc.join(TIMEOUT)
            assert proc.exitcode == -signal.SIGKILL, f"a worker ended with {proc.exitcode} before the kill"
            kills += 1
        elapsed = time.monotonic() - started
    finally:
        for proc, _ in victims:
            proc.kill()
            proc.join(TIMEOUT)
        stop.set()
    results = []
    for proc, conn in checkers:
        assert conn.poll(TIMEOUT), "a checking worker stopped answering"
        results.append(conn.recv())
        proc.join(TIMEOUT)
    print(f"{kills} spawned workers killed in {elapsed:.1f} s")  # shown with pytest -s
    assert kills >= MIN_KILLS, f"only {kills} kills in {elapsed:.1f} s"
    for reads, mismatches, errors, name in results:
        assert not errors, errors[0]
        assert name == segment, "the checker did not attach to the parent's segment"
        assert reads > 0 and mismatches == 0, f"{mismatches} of {reads} regions read by a survivor were wrong"
    # Killed and finished workers are gone from the attach table: only this process is left.
    assert c.attached_processes == 1
    assert c.size <= c.capacity and c.memory_size <= c.memory_capacity == 2 << 20
    # This process reads correctly, and the cache still caches.
    for path in kill_slides:
        ref, slide = tifffile_level(path), wsiarray.open(path)
        np.testing.assert_array_equal(slide.read_region((0, 0), (1024, 1024), num_workers=2), ref)
        for x, y, w, h in [(0, 0, 300, 200), (130, 257, 411, 333), (900, 950, 300, 300)]:
            np.testing.assert_array_equal(slide.read_region((x, y), (w, h)), crop(ref, x, y, w, h))
    # A new spawned reader, attached by name: correct pixels, and counted with this process.
    parent_conn, child_conn = mp.Pipe()
    proc = mp.Process(target=final_reader, args=(child_conn, kill_slides))
    proc.start()
    assert parent_conn.poll(TIMEOUT), "the final reader did not answer"
    answer = parent_conn.recv()
    proc.join(TIMEOUT)
    assert answer[0] is True, answer
    assert answer[1:] == ("shared_memory", segment, 2), answer
    assert c.attached_processes == 1


# -- 16 threads, tiny cache ------------------------------------------------------------------------

THREADS = 16
PATCHES = 1600


@pytest.fixture(scope="module")
def big_slide(tmp_path_factory: pytest.TempPathFactory) -> str:
    """2048 x 1536 RGB deflate, 256-px tiles: 48 tiles, 9 MiB decoded (more than the 8 MiB cache)."""
    return write_slide(tmp_path_factory.mktemp("threads") / "threads.tif", width=2048, height=1536, seed=63)


@pytest.mark.parametrize("kind", ["per_process", "shared_memory"])
def test_sixteen_threads_on_a_tiny_cache(big_slide: str, kind: str, segment: str) -> None:
    c = wsiarray.cache(kind, memory_capacity=8, name=segment if kind == "shared_memory" else None)
    ref = tifffile_level(big_slide)
    rng = random.Random(1600)
    todo = [random_region(rng, 2048, 1536) for _ in range(PATCHES)]
    slide = wsiarray.open(big_slide)

    def work(thread: int) -> list[int]:
        """Read this thread's share of the patches; return the indices of wrong ones."""
        wrong = []
        for i in range(thread, PATCHES, THREADS):
            x, y, w, h = todo[i]
            got = slide.read_region((x, y), (w, h), num_workers=i % 3)
            if not np.array_equal(got, crop(ref, x, y, w, h)):
                wrong.append(i)
        return wrong

    with concurrent.futures.ThreadPoolExecutor(THREADS) as pool:
        wrong = [i for f in [pool.submit(work, t) for t in range(THREADS)] for i in f.result(timeout=TIMEOUT)]
    assert not wrong, f"{len(wrong)} of {PATCHES} patches wrong, e.g. {todo[wrong[0]]}"
    assert c.miss_count > 48, "the cache was never too small (no eviction)"
    assert c.size <= c.capacity and c.memory_size <= c.memory_capacity == 8 << 20


def test_helpers_agree_with_cache_support(tmp_path: Path) -> None:
    """The spawned workers' crop equals ``cache_support.crop`` (so survivors check what the parent does)."""
    from cache_support import crop as reference_crop

    ref = np.arange(5 * 7 * 3, dtype=np.uint8).reshape(5, 7, 3)
    for x, y, w, h in [(-2, -1, 4, 3), (5, 3, 6, 6), (0, 0, 7, 5), (10, 10, 2, 2)]:
        np.testing.assert_array_equal(crop(ref, x, y, w, h), reference_crop(ref, x, y, w, h))
