"""The shared-memory cache on a small /dev/shm, and shared segments that cannot be trusted.

- A /dev/shm smaller than the cache (Docker's default is 64 MiB) gives a
  :class:`wsiarray.CacheError` from ``wsiarray.cache(...)`` with the size, the
  free space and the remedies, never SIGBUS later; a cache that fits, filled
  beyond its budget by this process and an attached one, reads correct pixels
  even when the rest of /dev/shm is full. These tests mount their own 64 MiB
  tmpfs over /dev/shm in a private mount namespace (``unshare -m``) and skip
  where that is not permitted.
- A segment found under the cache's name is refused unless this user owns it
  and nobody else can write it; a garbage header is refused; out-of-range
  indices, loops and counts written into a live segment give a miss (the shard
  is reset, counted as a repair) and correct pixels, never an out-of-bounds
  access or a hang.

The bytes are written at the offsets of the segment's layout (``cache.cpp``:
Header, Shard and Entry as x86-64 glibc lays them out); each test first checks
that the offsets read back what the cache wrote there, so a layout change fails
loudly here instead of corrupting the wrong bytes.

Everything that might crash runs in a child process, so that a SIGBUS or
SIGSEGV fails the test instead of killing pytest.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from cache_support import write_slide
from wsitest import preserved_cache

import wsiarray

TESTS = Path(__file__).parent
TIMEOUT = 120  # seconds a child may take: a hang fails the test

# Offsets in the segment (see the module docstring).
SHARD_OFF_0 = 1112  # Header.shard_off[0]
SHARD = 1280  # shard 0: align64(sizeof(Header))
ENTRIES_OFF = SHARD + 192  # align64(sizeof(Shard))
ENTRY_BYTES = 136  # sizeof(Entry)
S_PAGES_USED, S_ITEMS_USED = 64, 72
S_LRU_TAIL, S_PENDING_HEAD, S_FREE_ENTRY, S_FREE_PAGE = 96, 104, 108, 112
S_ENTRIES, S_BUCKETS, S_PAGES = 116, 120, 124
S_ENTRIES_OFF, S_BUCKETS_OFF, S_PAGE_NEXT_OFF = 128, 136, 144
E_STATE, E_OWNER_PID, E_BUCKET_NEXT, E_FIRST_PAGE, E_PAGES, E_OWNER_TAG = 80, 84, 88, 100, 104, 108


def run_child(code: str, *args: object, unshare: bool = False) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a fresh interpreter (``ARGS`` = the arguments), optionally over a 64 MiB /dev/shm."""
    script = "import json, sys\nARGS = json.loads(sys.argv[1])\n" + textwrap.dedent(code)
    command = [sys.executable, "-c", script, json.dumps(list(args))]
    if unshare:
        command = ["unshare", "-m", "sh", "-c",
                   'mount -t tmpfs -o size=64m tmpfs /dev/shm && exec "$@"', "sh", *command]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]))
    env.pop("WSIARRAY_CACHE", None)
    return subprocess.run(command, capture_output=True, text=True, timeout=TIMEOUT, env=env)


def result(proc: subprocess.CompletedProcess[str]) -> dict:
    assert proc.returncode == 0, f"child died (rc {proc.returncode}; -7 is SIGBUS):\n{proc.stderr[-3000:]}"
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def slide_path(tmp_path_factory: pytest.TempPathFactory) -> str:
    """1024 x 768 RGB deflate, 256-px tiles: 12 tiles of 192 KiB."""
    return write_slide(tmp_path_factory.mktemp("shm") / "s.tif", seed=5)


@pytest.fixture(scope="module")
def big_slide_path(tmp_path_factory: pytest.TempPathFactory) -> str:
    """4096 x 4096 RGB uncompressed: 48 MiB of tiles, more than the 32 MiB cache and /dev/shm's free space."""
    return write_slide(tmp_path_factory.mktemp("shm-big") / "big.tif", width=4096, height=4096,
                       compression=None, seed=6)


@pytest.fixture(scope="module")
def small_shm() -> None:
    """Skip unless this process may mount a tmpfs over /dev/shm in a private mount namespace."""
    if shutil.which("unshare") is None:
        pytest.skip("no unshare(1): cannot make a small /dev/shm")
    mount = "mount -t tmpfs -o size=64m tmpfs /dev/shm && df -k /dev/shm"
    proc = subprocess.run(["unshare", "-m", "sh", "-c", mount], capture_output=True, text=True, timeout=30)
    if proc.returncode != 0:
        pytest.skip(f"unshare -m / mount tmpfs not permitted here: {proc.stderr.strip()}")


@pytest.fixture
def segment() -> Iterator[str]:
    """A fresh segment name; the segment is removed after the test."""
    name = f"/wsiarray-hostile-{os.getpid()}-{uuid.uuid4().hex[:10]}"
    with preserved_cache():
        wsiarray.cache("nocache")
        yield name
        wsiarray.cache("nocache")  # detached before the segment is removed
    path = Path("/dev/shm" + name)
    if path.exists() or path.is_symlink():
        path.unlink()


# -- item 1: /dev/shm smaller than the cache ---------------------------------------------------

#: Child code: when ``fill_shm``, take all the rest of /dev/shm, as other processes' segments would.
FILL_SHM = """
if fill_shm:
    with open("/dev/shm/filler", "wb") as f:
        try:
            while True:
                f.write(b"x" * (1 << 20)); f.flush()
        except OSError:
            pass
"""

FILL = """
import os, numpy as np, wsiarray
from cache_support import reference
path, name, mib, fill_shm = ARGS
ref = reference(path)
c = wsiarray.cache("shared_memory", memory_capacity=mib, name=name)
""" + FILL_SHM + """
s = wsiarray.open(path)
w, h = s.level_dimensions[0]
ok = True
for _ in range(2):
    for y in range(0, h, 512):
        ok &= bool(np.array_equal(s.read_region((0, y), (w, min(512, h - y))), ref[y:y + 512]))
if fill_shm:
    # A spawned worker attached through WSIARRAY_CACHE reads it all too.
    import subprocess, sys
    child = "import wsiarray, numpy as np; from cache_support import reference; " \\
            "wsiarray.cache('shared_memory'); s = wsiarray.open(%r); w, h = s.level_dimensions[0]; " \\
            "print(wsiarray.cache().name, " \\
            "int(np.array_equal(s.read_region((0, 0), (w, h)), reference(%r))))" % (path, path)
    out = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    attached_name, same = out.stdout.split()
    ok &= attached_name == name and same == "1"
print(json.dumps({"ok": ok, "memory_size": c.memory_size, "misses": c.miss_count}))
"""


def test_cache_larger_than_dev_shm_is_a_clear_error(small_shm: None) -> None:
    proc = run_child("""
        import os, wsiarray
        try:
            wsiarray.cache("shared_memory", memory_capacity=1024, name="/too-big")
            out = {"error": None}
        except wsiarray.WSIError as exc:
            out = {"error": type(exc).__name__, "message": str(exc)}
        out["left"] = os.listdir("/dev/shm")
        out["env"] = os.environ.get("WSIARRAY_CACHE")
        print(json.dumps(out))
    """, unshare=True)
    out = result(proc)
    assert out["error"] == "CacheError", out
    message = out["message"]
    assert "/too-big" in message and "needs 1025.0 MiB" in message, message  # 1024 MiB + the index
    assert "only 64.0 MiB is free" in message, message
    for remedy in ("--shm-size", "memory_capacity", "per_process"):
        assert remedy in message, message
    assert out["left"] == [], "the half-made segment must be unlinked"
    assert out["env"] is None, "a failed configuration must not be handed to child processes"
    assert issubclass(wsiarray.CacheError, wsiarray.OpenError)


def test_cache_that_fits_is_filled_beyond_its_budget_without_sigbus(small_shm: None,
                                                                   big_slide_path: str) -> None:
    out = result(run_child(FILL, big_slide_path, "/fits", 32, False, unshare=True))
    assert out["ok"]
    assert 30 << 20 < out["memory_size"] <= 32 << 20


def test_full_dev_shm_cannot_make_an_attached_reader_crash(small_shm: None, big_slide_path: str) -> None:
    """The rest of /dev/shm is taken after the cache was made: its pages were reserved at creation."""
    out = result(run_child(FILL, big_slide_path, "/fits-full", 32, True, unshare=True))
    assert out["ok"]


# -- item 7: segments made by someone else ------------------------------------------------------

ATTACH = """
import wsiarray
name, = ARGS
try:
    c = wsiarray.cache("shared_memory", memory_capacity=8, name=name)
    out = {"error": None, "capacity": c.memory_capacity}
except wsiarray.WSIError as exc:
    out = {"error": type(exc).__name__, "message": str(exc)}
print(json.dumps(out))
"""


def attach(name: str) -> dict:
    return result(run_child(ATTACH, name))


def test_attach_to_own_segment_works(segment: str) -> None:
    wsiarray.cache("shared_memory", memory_capacity=16, name=segment)
    out = attach(segment)
    assert out["error"] is None and out["capacity"] == 16 << 20, out


def test_world_writable_segment_is_refused(segment: str) -> None:
    wsiarray.cache("shared_memory", memory_capacity=16, name=segment)
    os.chmod("/dev/shm" + segment, 0o666)
    out = attach(segment)
    assert out["error"] == "CacheError", out
    message = out["message"]
    assert segment in message and "mode 0666" in message and "written by other users" in message, message
    assert f"rm /dev/shm{segment}" in message and "name=" in message, message


def test_group_writable_segment_is_refused(segment: str) -> None:
    wsiarray.cache("shared_memory", memory_capacity=16, name=segment)
    os.chmod("/dev/shm" + segment, 0o620)
    out = attach(segment)
    assert out["error"] == "CacheError" and "mode 0620" in out["message"], out


@pytest.mark.skipif(os.geteuid() != 0, reason="only root can give a segment to another uid")
def test_segment_of_another_user_is_refused(segment: str) -> None:
    wsiarray.cache("shared_memory", memory_capacity=16, name=segment)
    os.chown("/dev/shm" + segment, 12345, 12345)
    out = attach(segment)
    assert out["error"] == "CacheError", out
    message = out["message"]
    assert "owner uid 12345" in message and f"not to this user (uid {os.geteuid()})" in message, message


def test_symbolic_link_is_refused(segment: str, tmp_path: Path) -> None:
    target = tmp_path / "planted"
    target.write_bytes(b"\0" * 4096)
    os.symlink(target, "/dev/shm" + segment)
    out = attach(segment)
    assert out["error"] == "CacheError" and "symbolic link" in out["message"], out
    assert target.read_bytes() == b"\0" * 4096


def test_garbage_segment_is_refused(segment: str) -> None:
    fd = os.open("/dev/shm" + segment, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    os.write(fd, os.urandom(1 << 20))
    os.close(fd)
    out = attach(segment)
    assert out["error"] == "CacheError" and "not a wsiarray cache segment" in out["message"], out


def pwrite(name: str, offset: int, fmt: str, *values: int) -> None:
    import struct

    with open("/dev/shm" + name, "r+b") as f:
        f.seek(offset)
        f.write(struct.pack(fmt, *values))


def pread(name: str, offset: int, fmt: str) -> tuple:
    import struct

    with open("/dev/shm" + name, "rb") as f:
        f.seek(offset)
        return struct.unpack(fmt, f.read(struct.calcsize(fmt)))


def test_layout_offsets_are_the_segments(segment: str) -> None:
    """The offsets the corruption tests write at are where the cache keeps those fields."""
    c = wsiarray.cache("shared_memory", memory_capacity=16, capacity=64, name=segment)
    assert pread(segment, SHARD_OFF_0, "<Q") == (SHARD,)
    entries, buckets, pages = pread(segment, SHARD + S_ENTRIES, "<III")
    assert (entries, pages) == (c.capacity, c.memory_capacity >> 14) and buckets == 128
    assert pread(segment, SHARD + S_ENTRIES_OFF, "<Q") == (ENTRIES_OFF,)


@pytest.mark.parametrize("field, value", [("shards", 999), ("region_bytes", 12345), ("shard_off", 64),
                                          ("entries", 1 << 30), ("data_off", 1 << 62)])
def test_header_that_does_not_add_up_is_refused(segment: str, field: str, value: int) -> None:
    wsiarray.cache("shared_memory", memory_capacity=16, capacity=64, name=segment)
    where = {"shards": (40, "<I"), "region_bytes": (16, "<Q"), "shard_off": (SHARD_OFF_0, "<Q"),
             "entries": (SHARD + S_ENTRIES, "<I"), "data_off": (SHARD + 152, "<Q")}[field]
    pwrite(segment, where[0], where[1], value)
    out = attach(segment)
    assert out["error"] == "CacheError", out
    assert segment in out["message"] and f"rm /dev/shm{segment}" in out["message"], out


# -- item 7: a live segment corrupted under a reader ---------------------------------------------

CORRUPT = """
import os, struct, numpy as np, wsiarray
from wsiarray import _native
from cache_support import reference
path, name, corruption, L = ARGS
ref = reference(path)
c = wsiarray.cache("shared_memory", memory_capacity=16, capacity=64, name=name)
s = wsiarray.open(path)
w, h = s.level_dimensions[0]
assert np.array_equal(s.read_region((0, 0), (w, h)), ref)  # every tile cached
f = os.open("/dev/shm" + name, os.O_RDWR)
def put(offset, fmt, *values):
    os.pwrite(f, struct.pack(fmt, *values), offset)
def get(offset, fmt):
    return struct.unpack(fmt, os.pread(f, struct.calcsize(fmt), offset))
SH, E, EB = L["SHARD"], L["ENTRIES_OFF"], L["ENTRY_BYTES"]
entries, = get(SH + L["S_ENTRIES"], "<I")
buckets_off, next_off = get(SH + L["S_BUCKETS_OFF"], "<Q")[0], get(SH + L["S_PAGE_NEXT_OFF"], "<Q")[0]
nbuckets, = get(SH + L["S_BUCKETS"], "<I")
used = [i for i in range(entries) if get(E + i * EB + L["E_STATE"], "<i")[0] == 2]
assert len(used) == 12, used
def entry(i, field):
    return E + i * EB + L[field]
if corruption == "bucket_heads":
    for b in range(nbuckets):
        put(buckets_off + 4 * b, "<i", 0x7FFFFFF0)
elif corruption == "bucket_loop":
    for b in range(nbuckets):
        put(buckets_off + 4 * b, "<i", used[0])
    put(entry(used[0], "E_BUCKET_NEXT"), "<i", used[0])
elif corruption == "first_page":
    for i in used:
        put(entry(i, "E_FIRST_PAGE"), "<i", -7)
elif corruption == "page_loop":
    for i in used:
        first, = get(entry(i, "E_FIRST_PAGE"), "<i")
        put(next_off + 4 * first, "<i", first)
elif corruption == "page_next_range":
    for i in used:
        first, = get(entry(i, "E_FIRST_PAGE"), "<i")
        put(next_off + 4 * first, "<i", 1 << 30)
elif corruption == "entry_pages":
    for i in used:
        put(entry(i, "E_PAGES"), "<I", 0xFFFFFFFF)
elif corruption == "lists":
    put(SH + L["S_LRU_TAIL"], "<ii", 1 << 29, -2)
    put(SH + L["S_FREE_ENTRY"], "<ii", -5, 1 << 30)
    put(SH + L["S_PENDING_HEAD"], "<i", 99999)
elif corruption == "counts":
    put(SH + L["S_PAGES_USED"], "<QQ", 1 << 63, 1 << 62)
elif corruption == "pending_self":
    # Pending under this very pid, but made by another process that had it: no wait for ourselves.
    for i in used:
        put(entry(i, "E_STATE"), "<ii", 1, os.getpid())
        put(entry(i, "E_OWNER_TAG"), "<I", 0)
elif corruption == "state":
    for i in used:
        put(entry(i, "E_STATE"), "<i", 77)
else:
    raise SystemExit("unknown corruption " + corruption)
ok = True
for _ in range(3):  # the corrupt reads, then reads of the repaired shard (misses, then hits)
    for ty in range(0, h, 256):
        for tx in range(0, w, 256):
            ok &= bool(np.array_equal(s.read_region((tx, ty), (256, 256)), ref[ty:ty + 256, tx:tx + 256]))
    ok &= bool(np.array_equal(s.read_region((100, 100), (700, 500)), ref[100:600, 100:800]))
wsiarray.cache().clear()
for _ in range(2):  # a repair may cost the first read its caching
    ok &= bool(np.array_equal(s.read_region((0, 0), (w, h)), ref))
print(json.dumps({"ok": ok, "repairs": _native.cache_stats()["repairs"], "items": c.size}))
"""

LAYOUT = {k: v for k, v in globals().items() if k.isupper() and isinstance(v, int)}


@pytest.mark.parametrize("corruption", ["bucket_heads", "bucket_loop", "first_page", "page_loop",
                                        "page_next_range", "entry_pages", "lists", "counts", "pending_self",
                                        "state"])
def test_corrupt_live_segment_gives_misses_and_correct_pixels(segment: str, slide_path: str,
                                                              corruption: str) -> None:
    out = result(run_child(CORRUPT, slide_path, segment, corruption, LAYOUT))
    assert out["ok"], out
    if corruption != "pending_self":  # that one is a stale entry, reclaimed without a reset
        assert out["repairs"] >= 1, out
    assert out["items"] == 12, "the repaired cache caches again"


# -- issue 18: attaching to a segment whose pages are not reserved, on a full /dev/shm ----------

UNRESERVED = """
import ctypes, os, struct, subprocess, sys
import wsiarray
path, name, fill_shm, L = ARGS
wsiarray.cache("shared_memory", memory_capacity=32, name=name)  # reserved whole by its creator
seg = "/dev/shm" + name
size = os.path.getsize(seg)
fd = os.open(seg, os.O_RDWR)
def get(offset, fmt):
    return struct.unpack(fmt, os.pread(fd, struct.calcsize(fmt), offset))[0]
# Punch holes in every shard's tile pages (the index stays: it was written, so it is
# allocated, as in a segment made with ftruncate alone or by an older version).
libc = ctypes.CDLL(None, use_errno=True)
libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_long, ctypes.c_long]
PUNCH = 0x02 | 0x01  # FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE
punched = 0
for i in range(get(L["SHARDS"], "<I")):
    shard = get(L["SHARD_OFF_0"] + 8 * i, "<Q")
    data, pages = get(shard + L["S_DATA_OFF"], "<Q"), get(shard + L["S_PAGES"], "<I")
    start, end = -(-data // 4096) * 4096, (data + pages * 16384) // 4096 * 4096
    if libc.fallocate(fd, PUNCH, start, end - start) != 0:
        raise OSError(ctypes.get_errno(), "fallocate(PUNCH_HOLE)")
    punched += end - start
held = os.fstat(fd).st_blocks * 512
assert held < size - (16 << 20), (held, size)  # its pages are no longer reserved
""" + FILL_SHM + """
# A child attaches through WSIARRAY_CACHE and reads a slide larger than the cache.
child = '''
import json, numpy as np, wsiarray
from cache_support import tifffile_level
path = %r
ref = tifffile_level(path)
try:
    c = wsiarray.cache()
    s = wsiarray.open(path)
    w, h = s.level_dimensions[0]
    ok = True
    for y in range(0, h, 512):
        ok &= bool(np.array_equal(s.read_region((0, y), (w, min(512, h - y))), ref[y:y + 512]))
    out = {"error": None, "ok": ok, "name": c.name, "attached": c.attached_processes}
except wsiarray.WSIError as exc:
    out = {"error": type(exc).__name__, "message": str(exc)}
print(json.dumps(out))
''' % path
proc = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True)
attacher = json.loads(proc.stdout.splitlines()[-1]) if proc.returncode == 0 else None
print(json.dumps({"rc": proc.returncode, "stderr": proc.stderr[-3000:], "attacher": attacher,
                  "punched": punched, "held": held, "size": size}))
"""


@pytest.mark.parametrize("fill_shm", [True, False], ids=["full", "room"])
def test_attach_to_unreserved_segment_never_sigbus(small_shm: None, big_slide_path: str,
                                                   fill_shm: bool) -> None:
    """A segment whose tile pages are holes (punched), attached on a full /dev/shm: CacheError or correct.

    The attacher sees fewer blocks than the segment's size and reserves them
    itself (``cache.cpp``, attach: ``st_blocks``); on a full /dev/shm that fails,
    which must be a :class:`wsiarray.CacheError`, never SIGBUS when a page is touched.
    """
    layout = {"SHARDS": 40, "SHARD_OFF_0": SHARD_OFF_0, "S_DATA_OFF": 152, "S_PAGES": S_PAGES}
    out = result(run_child(UNRESERVED, big_slide_path, "/unreserved", fill_shm, layout, unshare=True))
    assert out["punched"] >= 30 << 20, out
    assert out["rc"] == 0, f"the attaching process died (rc {out['rc']}; -7 is SIGBUS):\n{out['stderr']}"
    attacher = out["attacher"]
    if fill_shm:
        # No room to reserve the pages: refused with the reason (or, were it to work, correct pixels).
        if attacher["error"] is not None:
            assert attacher["error"] == "CacheError", attacher
            message = attacher["message"]
            assert "/unreserved" in message and "free" in message, message
        else:
            assert attacher["ok"], attacher
    else:
        assert attacher["error"] is None and attacher["ok"], attacher
        assert (attacher["name"], attacher["attached"]) == ("/unreserved", 2), attacher
