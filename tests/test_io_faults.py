"""I/O faults under every cache: EINTR, short reads and delays are invisible; EIO is a clear error.

The faults come from ``faultshim.c`` (this folder), an ``LD_PRELOAD`` library the
session compiles: it wraps ``pread``/``pread64`` (the only calls the native engine
reads slide bytes with: ``nm -D`` of ``_engine*.so`` lists ``pread`` and no ``read``,
``preadv`` or ``mmap`` of slide files) for descriptors whose path contains
``FAULTSHIM_MATCH``, and reads its settings from the environment at every call, so
the child switches faults on and off through ``os.environ`` between reads.

Each test runs one child per cache type (``nocache``, ``per_process``,
``shared_memory``) that reads through a single ``read_region``, a batch and a dask
array (threaded scheduler):

- EINTR on every other call, short reads, delays, and all three at once: pixels
  exactly equal to tifffile's;
- EIO on every call: :class:`wsiarray.TileReadError` naming the file (never a
  crash or wrong pixels); EIO on every third call: an error or correct pixels;
- then, faults off in the same process: correct pixels everywhere (no poisoned
  cache entry), and for ``shared_memory`` also in a second process attached to
  the same segment while the first is still alive (a pending entry left behind
  by a failed read would make it wait, a wrong one would show).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import pytest
from cache_support import write_slide

TESTS = Path(__file__).parent
TIMEOUT = 120  # seconds a child may take: a hang (a reader waiting on a poisoned entry) fails the test
MATCH = "faulty-slide"  # the shim touches only descriptors whose path contains this


@pytest.fixture(scope="session")
def faultshim(tmp_path_factory: pytest.TempPathFactory) -> str:
    """Path of ``faultshim.so``, compiled once per session (skip without a C compiler)."""
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        pytest.skip("no C compiler (cc/gcc): cannot build the fault-injection shim")
    out = tmp_path_factory.mktemp("faultshim") / "faultshim.so"
    proc = subprocess.run([compiler, "-shared", "-fPIC", "-O2", "-o", str(out), str(TESTS / "faultshim.c"),
                           "-ldl"], capture_output=True, text=True, timeout=120)
    if proc.returncode != 0:
        pytest.skip(f"cannot build the fault-injection shim: {proc.stderr.strip()[-500:]}")
    return str(out)


@pytest.fixture(scope="module")
def slide_path(tmp_path_factory: pytest.TempPathFactory) -> str:
    """1024 x 768 RGB deflate, 128-px tiles (48 tiles): lossless, so pixels compare exactly."""
    return write_slide(tmp_path_factory.mktemp("faults") / f"{MATCH}.tif", tile=128, seed=31)


CHILD = """
import ctypes, os, subprocess, sys
import numpy as np
import wsiarray
from cache_support import crop, tifffile_level

path, kind, name = ARGS
shim = ctypes.CDLL(None)  # the preloaded shim's counters
ref = tifffile_level(path)  # before any fault is on
H, W = ref.shape[:2]
if kind == "nocache":
    c = wsiarray.cache("nocache")
else:
    c = wsiarray.cache(kind, memory_capacity=64, name=name or None)
slide = wsiarray.open(path)
REGIONS = [(0, 0, W, H), (37, 21, 300, 211), (500, 300, 700, 600), (-20, -30, 150, 90), (129, 255, 1, 1)]
LOCATIONS = [(x, y) for x, y in [(0, 0), (77, 13), (130, 250), (900, 700), (513, 385), (260, 131), (-5, 3)]]
PATCH = (199, 151)

def single():
    return all(np.array_equal(slide.read_region((x, y), (w, h), num_workers=2), crop(ref, x, y, w, h))
               for x, y, w, h in REGIONS)

def batch():
    batches = slide.read_region(LOCATIONS, PATCH, batch_size=3, num_workers=2)
    got = np.concatenate(list(batches))
    want = np.stack([crop(ref, x, y, *PATCH) for x, y in LOCATIONS])
    return bool(np.array_equal(got, want))

def dask():
    return bool(np.array_equal(slide.to_dask(0, chunks=256).compute(scheduler="threads", num_workers=4), ref))

MODES = {"single": single, "batch": batch, "dask": dask}
KNOBS = ("FAULTSHIM_EIO_EVERY", "FAULTSHIM_EINTR_EVERY", "FAULTSHIM_SHORT", "FAULTSHIM_DELAY_US")

def faults(**knobs):
    # Only between reads: no thread calls getenv while os.environ changes.
    for knob in KNOBS:
        os.environ.pop(knob, None)
    os.environ.update({"FAULTSHIM_" + k.upper(): str(v) for k, v in knobs.items()})

def fresh():
    # Every read goes to the file again (a cache would hide the faults).
    if kind != "nocache":
        c.clear()

os.environ["FAULTSHIM_MATCH"] = MATCH
out = {"results": {}, "errors": {}}
for fault, knobs in {"eintr": {"eintr_every": 2}, "short": {"short": 1}, "delay": {"delay_us": 300},
                     "all": {"eintr_every": 3, "short": 1, "delay_us": 100}}.items():
    for mode, read in MODES.items():
        fresh()
        before = shim.faultshim_injected() if fault != "delay" else shim.faultshim_calls()
        faults(**knobs)
        try:
            ok = read()
        except Exception as exc:
            ok = f"{type(exc).__name__}: {exc}"
        faults()
        after = shim.faultshim_injected() if fault != "delay" else shim.faultshim_calls()
        out["results"][f"{fault}/{mode}"] = [ok, after - before]

for mode, read in MODES.items():
    # Every call fails: a TileReadError naming the file, whatever the path through the library.
    fresh()
    faults(eio_every=1)
    try:
        read()
        got = "no error"
    except wsiarray.TileReadError as exc:
        got = "TileReadError" if path in str(exc) and "Input/output error" in str(exc) else str(exc)
    except Exception as exc:
        got = f"{type(exc).__name__}: {exc}"
    faults()
    out["errors"][f"eio/{mode}"] = got
    # Every third call fails: an error or correct pixels, never wrong ones. Twice: the
    # second round starts from what the first one left in the cache.
    for round in range(2):
        faults(eio_every=3)
        try:
            got = "ok" if read() else "wrong pixels"
        except wsiarray.TileReadError as exc:
            got = "TileReadError" if path in str(exc) else str(exc)
        except Exception as exc:
            got = f"{type(exc).__name__}: {exc}"
        faults()
        out["errors"][f"eio-1/3/{mode}/{round}"] = got
    # Faults off, nothing cleared: whatever the failed reads left behind reads correctly.
    out["results"][f"after-eio/{mode}"] = [read(), 1]

out["calls"] = shim.faultshim_calls()
if kind == "shared_memory":
    # A second process (no shim) attached to the segment while this one is alive.
    code = ("import json, numpy as np, wsiarray; from cache_support import tifffile_level; "
            "c = wsiarray.cache(); s = wsiarray.open(%r); w, h = s.level_dimensions[0]; "
            "ok = bool(np.array_equal(s.read_region((0, 0), (w, h)), tifffile_level(%r))); "
            "print(json.dumps([c.type, c.name, ok, c.hit_count, c.attached_processes]))") % (path, path)
    env = {k: v for k, v in os.environ.items() if not k.startswith("FAULTSHIM")}
    # keep what else is preloaded (a sanitizer's runtime under tools/asan.sh), not the shim
    env["LD_PRELOAD"] = ":".join(p for p in env.get("LD_PRELOAD", "").split(":")
                                 if p and "faultshim" not in p)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    out["second"] = json.loads(proc.stdout.splitlines()[-1]) if proc.returncode == 0 else proc.stderr[-2000:]
print(json.dumps(out))
"""


def run_child(shim: str, *args: object) -> subprocess.CompletedProcess[str]:
    """Run ``CHILD`` (``ARGS`` = the arguments) in a fresh interpreter with the shim preloaded."""
    script = f"import json, sys\nARGS = json.loads(sys.argv[1])\nMATCH = {MATCH!r}\n" + textwrap.dedent(CHILD)
    # After what is preloaded already: a sanitizer's runtime (tools/asan.sh) must come first.
    preload = ":".join(p for p in (os.environ.get("LD_PRELOAD", ""), shim) if p)
    env = dict(os.environ, LD_PRELOAD=preload,
               PYTHONPATH=os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]))
    env.pop("WSIARRAY_CACHE", None)
    env.pop("FAULTSHIM_MATCH", None)  # the child turns the shim on once its imports are done
    return subprocess.run([sys.executable, "-c", script, json.dumps(list(args))], capture_output=True,
                          text=True, timeout=TIMEOUT, env=env)


@pytest.mark.parametrize("kind", ["nocache", "per_process", "shared_memory"])
def test_io_faults(faultshim: str, slide_path: str, kind: str) -> None:
    name = f"/wsiarray-faults-{os.getpid()}-{uuid.uuid4().hex[:8]}" if kind == "shared_memory" else ""
    try:
        proc = run_child(faultshim, slide_path, kind, name)
    finally:
        if name and os.path.exists("/dev/shm" + name):
            os.unlink("/dev/shm" + name)
    assert proc.returncode == 0, f"child died (rc {proc.returncode}):\n{proc.stderr[-4000:]}"
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    for what, (ok, injected) in out["results"].items():
        assert ok is True, f"{kind} {what}: {ok}"
        assert injected > 0, f"{kind} {what}: the shim injected nothing (is it preloaded?)"
    for what, got in out["errors"].items():
        allowed = {"TileReadError"} if what.startswith("eio/") else {"TileReadError", "ok"}
        assert got in allowed, f"{kind} {what}: {got}"
    if kind == "shared_memory":
        second = out["second"]
        assert isinstance(second, list), f"second process failed:\n{second}"
        c_type, c_name, ok, hits, attached = second
        assert (c_type, c_name, ok) == ("shared_memory", name, True), second
        assert hits > 0 and attached == 2, f"the second process did not share the segment: {second}"
