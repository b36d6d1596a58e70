"""A slide file truncated or replaced while it is open (issue 18, item 8).

Tile bytes are read in the handle's file access mode (issue 12): ``pread`` by
default, ``mmap`` (a mapping of a file that shrank raises SIGBUS on access: the
engine's guarded copies turn that into the same error), ``direct`` and
``preload`` (``O_DIRECT``). The truncation test runs in every mode.

- Truncated to half while open, after some tiles were read: tiles past the new
  end give :class:`wsiarray.TileReadError` naming the file, through a single
  read, a batch and a dask array, under every cache type; tiles before it and
  tiles read earlier still read correctly. In a child process, so a SIGBUS would
  fail the test instead of killing pytest. A new handle on the truncated file is
  refused at open or gives the same errors.
- Replaced while open (a new file renamed over the path): a handle whose file the
  manager keeps open reads the old pixels through its descriptor; once that file
  was closed (handle capacity 1, two slides read alternately) the handle is
  refused with an ``OpenError`` saying the file changed; a new handle reads the
  new pixels only. Old and new pixels never mix, cached or not.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from cache_support import tifffile_level, write_slide
from wsitest import preserved_cache

import wsiarray

TESTS = Path(__file__).parent
TIMEOUT = 120
KINDS = ["nocache", "per_process", "shared_memory"]


def shm_segment(kind: str) -> str:
    """A fresh segment name for ``shared_memory``, else ``""``."""
    return f"/wsiarray-trunc-{os.getpid()}-{uuid.uuid4().hex[:8]}" if kind == "shared_memory" else ""


def remove_segment(name: str) -> None:
    """Unlink ``/dev/shm/<name>`` if a test left it behind."""
    if name and os.path.exists("/dev/shm" + name):
        os.unlink("/dev/shm" + name)


TRUNCATE = """
import os
import numpy as np
import wsiarray
from cache_support import crop, tifffile_level
from wsitest import tile_table

path, kind, name, access = ARGS
ref = tifffile_level(path)
H, W = ref.shape[:2]
T = 128
offsets, counts = tile_table(path)
across = (W + T - 1) // T
size = os.path.getsize(path)
half = size // 2
beyond = [i for i, (o, n) in enumerate(zip(offsets, counts)) if o + n > half]
within = [i for i, (o, n) in enumerate(zip(offsets, counts)) if o + n <= half]
if kind == "nocache":
    wsiarray.cache("nocache")
else:
    wsiarray.cache(kind, memory_capacity=64, name=name or None)
slide = wsiarray.open(path, file_access=access)
out = {"beyond": len(beyond), "within": len(within), "errors": {}, "ok": {}}
# Some tiles read (and cached) before the truncation: the first tile row.
out["ok"]["before"] = bool(np.array_equal(slide.read_region((0, 0), (W, T)), ref[:T]))
os.truncate(path, half)

def tile_region(i):
    return ((i % across) * T, (i // across) * T, T, T)

def expect_error(what, read):
    try:
        read()
        out["errors"][what] = "no error"
    except wsiarray.TileReadError as exc:
        out["errors"][what] = "TileReadError" if path in str(exc) else "unnamed: " + str(exc)
    except Exception as exc:
        out["errors"][what] = f"{type(exc).__name__}: {exc}"

for i in beyond:
    x, y, w, h = tile_region(i)
    if y < T:
        continue  # read (and maybe cached) before the truncation
    expect_error(f"tile {i}", lambda: slide.read_region((x + 3, y + 5), (w - 9, h - 7), num_workers=2))
expect_error("whole level", lambda: slide.read_region((0, 0), (W, H), num_workers=2))
expect_error("batch", lambda: list(slide.read_region([(0, 0), (W - 200, H - 200)], (200, 200), batch_size=2)))
expect_error("dask", lambda: slide.to_dask(0, chunks=256).compute(scheduler="threads"))
# Still readable: tiles wholly before the new end, and the row read before.
for i in within:
    x, y, w, h = tile_region(i)
    out["ok"][f"tile {i}"] = bool(np.array_equal(slide.read_region((x, y), (w, h)), crop(ref, x, y, w, h)))
out["ok"]["first row again"] = bool(np.array_equal(slide.read_region((0, 0), (W, T)), ref[:T]))
# A new handle on the truncated file: refused at open, or its tiles past the end are errors.
try:
    reopened = wsiarray.open(path, file_access=access)
except wsiarray.WSIError as exc:
    out["reopen"] = type(exc).__name__
else:
    out["reopen"] = "opened"
    assert reopened.identity != slide.identity
    expect_error("new handle", lambda: reopened.read_region((0, 0), (W, H)))
    out["ok"]["new handle, first row"] = bool(np.array_equal(reopened.read_region((0, 0), (W, T)), ref[:T]))
print(json.dumps(out))
"""


@pytest.mark.parametrize(("kind", "access"), [(kind, "pread") for kind in KINDS] + [
    ("nocache", "mmap"), ("per_process", "mmap"), ("nocache", "direct"), ("nocache", "preload"),
])
def test_file_truncated_while_open(tmp_path: Path, kind: str, access: str) -> None:
    path = write_slide(tmp_path / "truncated.tif", tile=128, seed=41)  # 48 deflate tiles
    name = shm_segment(kind)
    script = "import json, sys\nARGS = json.loads(sys.argv[1])\n" + textwrap.dedent(TRUNCATE)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]))
    env.pop("WSIARRAY_CACHE", None)
    try:
        proc = subprocess.run([sys.executable, "-c", script, json.dumps([path, kind, name, access])],
                              capture_output=True, text=True, timeout=TIMEOUT, env=env)
    finally:
        remove_segment(name)
    assert proc.returncode == 0, f"child died (rc {proc.returncode}; -7 is SIGBUS):\n{proc.stderr[-3000:]}"
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["beyond"] >= 10 and out["within"] >= 10, out
    assert out["reopen"] in ("opened", "OpenError", "FormatError"), out
    assert len(out["errors"]) >= 10, out
    for what, got in out["errors"].items():
        assert got == "TileReadError", f"{kind}, {access}, truncated file, {what}: {got}"
    for what, ok in out["ok"].items():
        assert ok, f"{kind}, {access}, truncated file, {what}: wrong pixels"


@pytest.fixture
def few_handles() -> Iterator[wsiarray.HandleManager]:
    """The handle manager emptied, its capacity restored afterwards."""
    manager = wsiarray.file_handles()
    saved = manager._capacity
    manager.clear()
    yield manager
    manager.clear()
    manager.capacity = saved


@pytest.mark.parametrize("kind", KINDS)
def test_file_replaced_while_open(tmp_path: Path, kind: str, few_handles: wsiarray.HandleManager) -> None:
    path = write_slide(tmp_path / "replaced.tif", tile=128, seed=51)
    other = write_slide(tmp_path / "other.tif", tile=128, seed=52)
    staged = write_slide(tmp_path / "staged.tif", tile=128, seed=53)  # same geometry, other pixels
    old, new, other_ref = tifffile_level(path), tifffile_level(staged), tifffile_level(other)
    assert not np.array_equal(old, new)
    name = shm_segment(kind)
    with preserved_cache():
        try:
            if kind == "nocache":
                wsiarray.cache("nocache")
            else:
                wsiarray.cache(kind, memory_capacity=64, name=name or None)
            few_handles.capacity = 2
            first = wsiarray.open(path)
            np.testing.assert_array_equal(first.read_region((0, 0), (1024, 384)), old[:384])  # half cached
            os.rename(staged, path)
            second = wsiarray.open(path)  # the new file: a new handle, another identity
            assert second.identity != first.identity
            for _ in range(2):  # alternately: each handle sees its own file, cached or not
                np.testing.assert_array_equal(first.read_region((0, 0), (1024, 768)), old)
                np.testing.assert_array_equal(second.read_region((0, 0), (1024, 768)), new)
            # One file open at a time: reading another slide closes the old file; its
            # handle cannot reopen it (the path now names another file) and says so.
            few_handles.capacity = 1
            third = wsiarray.open(other)
            for _ in range(2):
                np.testing.assert_array_equal(third.read_region((0, 0), (1024, 768)), other_ref)
                with pytest.raises(wsiarray.OpenError, match="changed") as info:
                    first.read_region((0, 0), (1024, 768))
                assert path in str(info.value)
                np.testing.assert_array_equal(second.read_region((100, 50), (700, 600)), new[50:650, 100:800])
        finally:
            wsiarray.cache("nocache")
            remove_segment(name)
