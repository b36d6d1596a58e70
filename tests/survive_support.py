"""Spawned workers for ``test_survive.py`` (importable by name, as ``spawn`` needs).

They import only numpy, wsiarray and (the checkers) tifffile, so a ``spawn``
child starts quickly: the kill test starts dozens of them. Every worker gets its
cache from ``WSIARRAY_CACHE``, inherited from the parent: ``wsiarray.cache()``
with no arguments attaches to the parent's shared-memory segment by name.
"""

from __future__ import annotations

import random
import traceback
from typing import Any

import numpy as np

import wsiarray


def random_region(rng: random.Random, width: int, height: int) -> tuple[int, int, int, int]:
    """A random, unaligned region ``(x, y, w, h)`` that may stick out of the image."""
    return rng.randrange(-64, width), rng.randrange(-64, height), rng.randrange(1, 500), rng.randrange(1, 500)


def crop(ref: np.ndarray, x: int, y: int, w: int, h: int) -> np.ndarray:
    """``ref[y:y+h, x:x+w]`` padded with 0 (wsiarray's default fill) outside the image."""
    out = np.zeros((h, w, ref.shape[2]), ref.dtype)
    x0, y0, x1, y1 = max(x, 0), max(y, 0), min(x + w, ref.shape[1]), min(y + h, ref.shape[0])
    if x0 < x1 and y0 < y1:
        out[y0 - y : y1 - y, x0 - x : x1 - x] = ref[y0:y1, x0:x1]
    return out


def references(paths: list[str]) -> list[np.ndarray]:
    """tifffile's pixels of each slide's level 0, ``(y, x, c)``."""
    import tifffile

    return [tifffile.imread(p, key=0) for p in paths]


def victim(ready: Any, paths: list[str], seed: int) -> None:
    """Attach, say so, then read random regions until SIGKILLed (inserting and evicting tiles)."""
    rng = random.Random(seed)
    wsiarray.cache()
    slides = [wsiarray.open(p) for p in paths]
    ready.set()
    while True:
        slide = rng.choice(slides)
        x, y, w, h = random_region(rng, *slide.level_dimensions[0])
        slide.read_region((x, y), (w, h), num_workers=rng.choice((1, 2)))


def checker(stop: Any, conn: Any, paths: list[str], seed: int) -> None:
    """Read and check random regions until ``stop``; send (reads, mismatches, errors, cache name)."""
    reads = mismatches = 0
    errors: list[str] = []
    name = ""
    try:
        c = wsiarray.cache()
        name = c.name
        rng = random.Random(seed)
        slides = [wsiarray.open(p) for p in paths]
        refs = references(paths)
        conn.send("ready")
        while not stop.is_set():
            i = rng.randrange(len(slides))
            x, y, w, h = random_region(rng, *slides[i].level_dimensions[0])
            reads += 1
            if not np.array_equal(slides[i].read_region((x, y), (w, h)), crop(refs[i], x, y, w, h)):
                mismatches += 1
    except BaseException:
        errors.append(traceback.format_exc())
    conn.send((reads, mismatches, errors, name))
    conn.close()


def final_reader(conn: Any, paths: list[str]) -> None:
    """Read every slide whole, twice (misses, then hits); send (ok, cache type and name, attached)."""
    try:
        c = wsiarray.cache()
        refs = references(paths)
        ok = True
        for _ in range(2):
            for path, ref in zip(paths, refs, strict=True):
                slide = wsiarray.open(path)
                w, h = slide.level_dimensions[0]
                ok &= bool(np.array_equal(slide.read_region((0, 0), (w, h), num_workers=2), ref))
        conn.send((ok, c.type, c.name, c.attached_processes))
    except BaseException:
        conn.send(("error", traceback.format_exc()))
    conn.close()
