"""Thousands of distinct slides in one process under ``ulimit -n 256`` (issue 18, item 6).

Each slide holds one descriptor while the handle manager keeps it open (the native
reader's; tifffile's is closed after parsing), the manager keeps at most its capacity
open (by default a quarter of the soft ``RLIMIT_NOFILE``, at most 128), and a batch
spanning more files than that is read in groups. Checked in a child process whose
descriptor limit is lowered before wsiarray is imported, in the three ways a training
set is read: a loop keeping every ``Slide``, ``read_regions`` over many paths, and a
dask stack of many slides. Every copy carries its own index in its first pixels, so a
read from the wrong file is caught; a thread samples ``/proc/self/fd`` throughout and
the peak must stay within the manager's bound.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import tifffile

pytestmark = pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc/self/fd (Linux)")

TILE = 16
COUNT = 10_000


def write_copies(folder: Path, count: int) -> list[str]:
    """``count`` distinct files (copies, not links): one 64 x 48 raw tiled TIFF, index in pixel (0, 0)."""
    folder.mkdir(parents=True, exist_ok=True)
    source = folder / "source.tif"
    pixels = np.full((48, 64, 3), 7, np.uint8)
    tifffile.imwrite(source, pixels, tile=(TILE, TILE), photometric="rgb", compression=None)
    with tifffile.TiffFile(source) as tif:
        first_tile = int(tif.pages.first.dataoffsets[0])
    blob = bytearray(source.read_bytes())
    paths = []
    for i in range(count):
        blob[first_tile : first_tile + 3] = bytes((i & 0xFF, (i >> 8) & 0xFF, 1))
        path = folder / f"slide-{i:05d}.tif"
        path.write_bytes(blob)
        paths.append(str(path))
    return paths


@pytest.fixture(scope="module")
def many(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    return write_copies(tmp_path_factory.mktemp("many"), COUNT)


# The child: lowers RLIMIT_NOFILE, then imports wsiarray and runs one mode.
CHILD = textwrap.dedent(
    """
    import json, os, resource, sys, threading, time
    limit, mode, count, listing = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), sys.argv[4]
    resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))
    import numpy as np
    import wsiarray
    paths = open(listing).read().split()[:count]

    def fds():
        return len(os.listdir("/proc/self/fd"))

    def index_of(patch):  # the copy's index, written into its pixel (0, 0)
        assert patch[0, 0, 2] == 1 and (patch[1:, :, :] == 7).all(), "not one of the copies"
        return int(patch[0, 0, 0]) | int(patch[0, 0, 1]) << 8

    baseline = fds()
    peak = [baseline]
    stop = threading.Event()

    def sample():
        while not stop.is_set():
            peak[0] = max(peak[0], fds())
            time.sleep(0.0005)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    result = {"capacity": wsiarray.file_handles().capacity}
    wrong = 0
    started = time.perf_counter()
    if mode == "loop":
        slides = [wsiarray.open(p) for p in paths]
        for i, slide in enumerate(slides):
            wrong += index_of(slide.read_region((0, 0), (16, 16))) != i % 65536
        # Read again: every handle but the newest was evicted, so each one reopens.
        for i, slide in enumerate(slides[:500]):
            wrong += index_of(slide.read_region((0, 0), (16, 16))) != i % 65536
        # A kept handle whose file was replaced while it was closed is refused.
        replaced = paths[3] + ".new"
        with open(paths[3], "rb") as src, open(replaced, "wb") as dst:
            dst.write(src.read())
        os.replace(replaced, paths[3])
        try:
            slides[3].read_region((0, 0), (16, 16))
            result["replaced"] = "read"
        except wsiarray.OpenError as exc:
            result["replaced"] = str(exc)
        result["kept"] = len(slides)
    elif mode == "batches":
        items = [(p, (0, 0)) for p in paths]
        seen = 0
        for batch in wsiarray.read_regions(items, (16, 16), batch_size=512, shuffle=True, seed=1):
            seen += len(batch)
        order = np.random.default_rng(1).permutation(len(items))
        batches = wsiarray.read_regions(items, (16, 16), batch_size=512, shuffle=True, seed=1)
        got = np.concatenate(list(batches))
        wrong += sum(index_of(patch) != int(i) % 65536 for patch, i in zip(got, order))
        result["kept"] = seen
    elif mode == "dask":
        import dask.array as da
        stack = da.stack([wsiarray.open(p).to_dask(0) for p in paths])
        got = stack[:, :16, :16].compute(scheduler="threads", num_workers=4)
        wrong += sum(index_of(patch) != i % 65536 for i, patch in enumerate(got))
        result["kept"] = len(got)
    stop.set()
    sampler.join()
    peak[0] = max(peak[0], fds())
    result.update(wrong=wrong, baseline=baseline, peak=peak[0], seconds=time.perf_counter() - started)
    print(json.dumps(result))
    """
)


def run_child(tmp_path: Path, paths: list[str], mode: str, count: int, limit: int = 256) -> dict:
    listing = tmp_path / "paths.txt"
    listing.write_text("\n".join(paths))
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, str(limit), mode, str(count), str(listing)],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def assert_bounded(result: dict, held: int) -> None:
    """Peak descriptors: the manager's files, ``held`` more in reads in flight, and a few transient."""
    capacity = result["capacity"]
    assert result["peak"] <= result["baseline"] + capacity + held + 4, result


def test_ten_thousand_kept_slides_under_ulimit_256(tmp_path: Path, many: list[str]) -> None:
    """A loop keeps 10,000 ``Slide`` objects and reads each: handles pin no descriptor."""
    result = run_child(tmp_path, many, "loop", COUNT)
    assert result["capacity"] == 64  # a quarter of the limit
    assert result["kept"] == COUNT and result["wrong"] == 0, result
    assert "changed since this slide handle was created" in result["replaced"], result
    assert_bounded(result, held=1)


def test_read_regions_over_many_paths_under_ulimit_256(tmp_path: Path, many: list[str]) -> None:
    """``read_regions`` with batches of 512 patches from 512 distinct files: batches read in groups."""
    result = run_child(tmp_path, many, "batches", 2000)
    assert result["kept"] == 2000 and result["wrong"] == 0, result
    assert_bounded(result, held=result["capacity"])


def test_dask_stack_of_many_slides_under_ulimit_128(tmp_path: Path, many: list[str]) -> None:
    """``da.stack`` of 1,000 slides' arrays computed on the threaded scheduler (4 threads).

    Under ``ulimit -n 128`` (under 256 the fixed capacity of 128 already sufficed)."""
    result = run_child(tmp_path, many, "dask", 1000, limit=128)
    assert result["capacity"] == 32
    assert result["kept"] == 1000 and result["wrong"] == 0, result
    assert_bounded(result, held=4)


def test_default_capacity_follows_a_low_descriptor_limit(tmp_path: Path, many: list[str]) -> None:
    """Under ``ulimit -n 64`` the default keeps 16 files open, so 300 slides still read."""
    result = run_child(tmp_path, many, "loop", 300, limit=64)
    assert result["capacity"] == 16
    assert result["kept"] == 300 and result["wrong"] == 0, result
    assert_bounded(result, held=1)
