"""Helpers for ``test_cache.py``: small slides, an LRU model and process workers.

Worker functions live here (not in the test module) so that ``spawn`` children
can import them by name: pytest puts ``tests/`` on ``sys.path`` and
multiprocessing hands that path to the children.
"""

from __future__ import annotations

import os
import random
import time
import traceback
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
import tifffile

import wsiarray

PAGE = 16 << 10  # the cache's page size: tiles occupy whole pages


def write_slide(
    path: str | os.PathLike[str],
    *,
    width: int = 1024,
    height: int = 768,
    tile: int = 256,
    compression: str | None = "deflate",
    seed: int = 0,
    planar: bool = False,
    levels: int = 1,
) -> str:
    """Write an RGB uint8 tiled TIFF with tifffile; lower levels (``levels`` > 1) halve the size.

    Levels are pages of the main IFD chain with NewSubfileType 1, which the
    generic format reads as a pyramid. Returns the path as a string.
    """
    base = content(height, width, seed)
    kwargs: dict[str, Any] = {"tile": (tile, tile), "compression": compression, "photometric": "rgb"}
    if planar:
        kwargs["planarconfig"] = "separate"
    with tifffile.TiffWriter(path) as tif:
        for level in range(levels):
            array = np.ascontiguousarray(base[:: 2**level, :: 2**level])
            if planar:
                array = np.ascontiguousarray(np.moveaxis(array, -1, 0))
            tif.write(array, subfiletype=0 if level == 0 else 1, **kwargs)
    return str(path)


def content(height: int, width: int, seed: int) -> np.ndarray:
    """Deterministic RGB uint8 pixels, different for every seed: gradients, a seeded pattern, noise."""
    rng = np.random.default_rng(seed)
    yy = (np.arange(height) % 256).astype(np.uint8)[:, None, None]
    xx = (np.arange(width) % 256).astype(np.uint8)[None, :, None]
    fx, fy, c0 = (rng.integers(1, 7, 3, dtype=np.uint8) for _ in range(3))
    image = xx * fx + yy * fy + c0  # uint8 arithmetic wraps: mod 256
    image += rng.integers(0, 24, image.shape, dtype=np.uint8)  # wraps: fine, just pixels
    return image


def reference(path: str, level: int = 0) -> np.ndarray:
    """Level ``level`` read whole by wsiarray with no cache: the pixels every cached read must equal.

    (That wsiarray's uncached pixels equal tifffile's is the pixel tests' job;
    for the lossless slides here the tests also compare with tifffile.)
    """
    previous = wsiarray.cache().config
    wsiarray.cache("nocache")
    try:
        slide = wsiarray.open(path)
        w, h = slide.level_dimensions[level]
        return slide.read_level_region(level, (0, 0), (w, h))
    finally:
        if previous["type"] != "nocache":
            wsiarray.cache(**previous)


def tifffile_level(path: str, level: int = 0) -> np.ndarray:
    """tifffile's pixels of page ``level`` as ``(y, x, c)``."""
    with tifffile.TiffFile(path) as tif:
        page = tif.pages[level]
        array = page.asarray()
        if page.planarconfig == 2:
            array = np.moveaxis(array, 0, -1)
    return array


def crop(ref: np.ndarray, x: int, y: int, w: int, h: int, fill: int = 0) -> np.ndarray:
    """``ref[y:y+h, x:x+w]`` padded with ``fill`` outside the image (wsiarray's default fill is 0)."""
    out = np.full((h, w, ref.shape[2]), fill, ref.dtype)
    x0, y0 = max(x, 0), max(y, 0)
    x1, y1 = min(x + w, ref.shape[1]), min(y + h, ref.shape[0])
    if x0 < x1 and y0 < y1:
        out[y0 - y : y1 - y, x0 - x : x1 - x] = ref[y0:y1, x0:x1]
    return out


def tiles_of(x: int, y: int, w: int, h: int, tile: int, image: tuple[int, int]) -> set[tuple[int, int]]:
    """The (tile column, tile row) pairs a region touches, clipped to ``image`` = (width, height)."""
    x0, y0 = max(x, 0), max(y, 0)
    x1, y1 = min(x + w, image[0]), min(y + h, image[1])
    if x0 >= x1 or y0 >= y1:
        return set()
    rows, cols = range(y0 // tile, (y1 - 1) // tile + 1), range(x0 // tile, (x1 - 1) // tile + 1)
    return {(tx, ty) for ty in rows for tx in cols}


class LruModel:
    """The reference LRU: at most ``items`` entries and ``pages`` pages; evicts least recently used."""

    def __init__(self, items: int, pages: int) -> None:
        self.items, self.pages = items, pages
        self.entries: OrderedDict[Any, int] = OrderedDict()
        self.hits = self.misses = 0

    def access(self, key: Any, pages: int) -> bool:
        """Touch ``key`` (a tile of ``pages`` pages); return True on a hit."""
        if key in self.entries:
            self.entries.move_to_end(key)
            self.hits += 1
            return True
        self.misses += 1
        if pages > self.pages:
            return False  # larger than the cache: decoded, never stored
        while len(self.entries) >= self.items or self.used + pages > self.pages:
            self.entries.popitem(last=False)
        self.entries[key] = pages
        return False

    @property
    def used(self) -> int:
        return sum(self.entries.values())


def tile_cells(x: int, y: int, w: int, h: int, tile: tuple[int, int], image: tuple[int, int]) -> int:
    """The engine's coverage mask: bits (row * 8 + column) of the tile's 8 x 8 cells the region touches.

    ``tile`` is (column, row) of a 256-px tile; the region is clipped to ``image``.
    """
    cell = 32
    tx, ty = tile
    x0, x1 = max(x, tx * 256), min(x + w, tx * 256 + 256, image[0])
    y0, y1 = max(y, ty * 256), min(y + h, ty * 256 + 256, image[1])
    mask = 0
    for cy in range((y0 - ty * 256) // cell, (y1 - 1 - ty * 256) // cell + 1):
        for cx in range((x0 - tx * 256) // cell, (x1 - 1 - tx * 256) // cell + 1):
            mask |= 1 << (cy * 8 + cx)
    return mask


class CoverageLruModel:
    """The engine's eviction policy: tiles read in full go first, least recently used first.

    Ready tiles sit in two LRU lists: *done* (every cell inside the image has been asked
    for) and *open* (the rest). Eviction takes the oldest *done* tile, else the oldest
    *open* one. ``access`` takes the cells the request touches and those inside the image.
    """

    def __init__(self, items: int) -> None:
        self.items = items
        self.open: OrderedDict[Any, int] = OrderedDict()
        self.done: OrderedDict[Any, int] = OrderedDict()
        self.hits = self.misses = 0

    def access(self, key: Any, cells: int, valid: int) -> bool:
        hit = key in self.open or key in self.done
        if hit:
            self.hits += 1
            cells |= (self.open if key in self.open else self.done).pop(key)
        else:
            self.misses += 1
            while len(self.open) + len(self.done) >= self.items:
                (self.done if self.done else self.open).popitem(last=False)
        (self.done if cells & valid == valid else self.open)[key] = cells
        return hit


def shm_exists(name: str) -> bool:
    """Whether the POSIX shared-memory object ``name`` ("/...") exists (Linux: under /dev/shm)."""
    return Path("/dev/shm" + name).exists()


def cache_counts() -> tuple[int, int]:
    c = wsiarray.cache()
    return c.hit_count, c.miss_count


# -- process workers ---------------------------------------------------------------------


def spawn_reader(conn: Any, path: str, region: tuple[int, int, int, int],
                 configure: dict[str, Any] | None = None) -> None:
    """Spawned worker: report how it is attached, wait for "go", read ``region``, report counts.

    The cache comes from ``WSIARRAY_CACHE``, inherited from the parent at start;
    with ``configure``, the worker first calls ``wsiarray.cache(**configure)``
    itself, as cuCIM's users do in every DataLoader worker.
    """
    try:
        c = wsiarray.cache(**configure) if configure else wsiarray.cache()
        slide = wsiarray.open(path)
        conn.send(("ready", os.getpid(), c.type, c.name, c.attached_processes))
        assert conn.recv() == "go"
        before = cache_counts()
        x, y, w, h = region
        pixels = slide.read_region((x, y), (w, h))
        after = cache_counts()
        conn.send(("done", after[0] - before[0], after[1] - before[1], pixels, c.size))
        assert conn.recv() == "exit"
    except BaseException:
        conn.send(("error", traceback.format_exc()))


def forked_read(conn: Any, path: str, region: tuple[int, int, int, int]) -> None:
    """Forked worker: report the cache as inherited, read ``region`` twice, report."""
    try:
        c = wsiarray.cache()
        inherited = {"type": c.type, "size": c.size, "hits": c.hit_count, "misses": c.miss_count,
                     "attached": c.attached_processes}
        slide = wsiarray.open(path)
        x, y, w, h = region
        before = cache_counts()
        first = slide.read_region((x, y), (w, h))
        middle = cache_counts()
        second = slide.read_region((x, y), (w, h))
        after = cache_counts()
        conn.send(("done", inherited, first, second, (middle[0] - before[0], middle[1] - before[1]),
                   (after[0] - middle[0], after[1] - middle[1])))
    except BaseException:
        conn.send(("error", traceback.format_exc()))
    finally:
        conn.close()


def hammer(ready: Any, paths: list[str], seed: int) -> None:
    """Forked child: read random regions of ``paths`` forever (inserting and evicting tiles)."""
    rng = random.Random(seed)
    slides = [wsiarray.open(p) for p in paths]
    ready.set()
    while True:
        slide = rng.choice(slides)
        w, h = slide.level_dimensions[0]
        x, y = rng.randrange(-64, w), rng.randrange(-64, h)
        slide.read_region((x, y), (rng.randrange(1, 600), rng.randrange(1, 600)),
                          num_workers=rng.choice((1, 2)))


def observer(stop: Any, conn: Any, paths: list[str], seed: int) -> None:
    """Forked child: read and check random regions until ``stop``; send (reads, mismatches, errors)."""
    reads = mismatches = 0
    errors: list[str] = []
    try:
        rng = random.Random(seed)
        slides = [wsiarray.open(p) for p in paths]
        refs = [tifffile_level(p) for p in paths]
        while not stop.is_set():
            i = rng.randrange(len(slides))
            w, h = slides[i].level_dimensions[0]
            x, y = rng.randrange(-64, w), rng.randrange(-64, h)
            rw, rh = rng.randrange(1, 600), rng.randrange(1, 600)
            got = slides[i].read_region((x, y), (rw, rh))
            reads += 1
            if not np.array_equal(got, crop(refs[i], x, y, rw, rh)):
                mismatches += 1
    except BaseException:
        errors.append(traceback.format_exc())
    conn.send((reads, mismatches, errors))
    conn.close()


def slow_decoder_reader(path: str, started_fd: int) -> None:
    """Forked child: make the external (imagecodecs) decoder block, then read tile (0, 0).

    Writes one byte to ``started_fd`` when the decoder is entered: the tile's
    cache entry is then pending, owned by this process. Never returns normally.
    """
    from wsiarray.formats import tiff

    original = tiff._external_decoder

    def blocking(*args: Any) -> Any:
        decode = original(*args)

        def slow(data: bytes, index: int) -> np.ndarray:
            os.write(started_fd, b"s")
            time.sleep(600)
            return decode(data, index)

        return slow

    tiff._external_decoder = blocking
    try:
        wsiarray.open(path).read_region((0, 0), (256, 256))
    finally:
        os._exit(0)
