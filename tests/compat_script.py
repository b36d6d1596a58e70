"""One script run against ``cucim.CuImage`` and ``wsiarray.compat.CuImage``; all it returns is compared.

:func:`run_script` exercises the cuCIM API on one slide and returns a flat
``{name: value}`` dict of every output (pixels as arrays, descriptions as plain
Python values). ``tests/test_compat.py`` runs it in-process for wsiarray and, for
cuCIM, in a child process (``python compat_script.py cucim OUT.pickle SLIDE...``), so
a crash inside cuCIM cannot take the test session down.

Batches are copied as soon as they are yielded: cuCIM reuses batch buffers (a
kept batch changes when the next one is read), which is one of the documented
differences, tested in ``test_batch.py`` for wsiarray.
"""

from __future__ import annotations

import hashlib
import pickle
import sys
from collections.abc import Callable
from typing import Any

import numpy as np

#: Sizes tried with ``size(dim_order)``, ``spacing(...)`` and ``spacing_units(...)``.
DIM_ORDERS = ("", "XY", "YX", "C", "XYC", "CYX", "YXC", "Z", "XYZ")
#: Batch settings: (batch_size, num_workers, drop_last).
BATCH_SETTINGS = ((1, 1, False), (3, 1, False), (3, 2, False), (4, 2, True), (32, 2, False))


def _describe(obj: Any, prefix: str, out: dict[str, Any], *, file_backed: bool = False) -> None:
    """Record an image's description under ``prefix``."""
    out[f"{prefix}/shape"] = list(obj.shape)
    out[f"{prefix}/dims"] = obj.dims
    out[f"{prefix}/ndim"] = obj.ndim
    out[f"{prefix}/typestr"] = obj.typestr
    out[f"{prefix}/dtype"] = (int(obj.dtype.code), int(obj.dtype.bits), int(obj.dtype.lanes))
    out[f"{prefix}/channel_names"] = list(obj.channel_names)
    out[f"{prefix}/origin"] = list(obj.origin)
    out[f"{prefix}/direction"] = [list(r) for r in obj.direction]
    out[f"{prefix}/coord_sys"] = obj.coord_sys
    out[f"{prefix}/resolutions"] = obj.resolutions
    out[f"{prefix}/associated_images"] = sorted(obj.associated_images)
    out[f"{prefix}/raw_metadata"] = obj.raw_metadata
    out[f"{prefix}/is_loaded"] = bool(obj.is_loaded)
    out[f"{prefix}/device"] = str(obj.device)
    for order in DIM_ORDERS:
        out[f"{prefix}/size({order})"] = list(obj.size(order))
        out[f"{prefix}/spacing({order})"] = [float(v) for v in obj.spacing(order)]
        out[f"{prefix}/spacing_units({order})"] = list(obj.spacing_units(order))
    metadata = obj.metadata
    for section, values in metadata.items():
        if isinstance(values, dict):
            for key, value in values.items():
                out[f"{prefix}/metadata[{section}][{key}]"] = value
        else:
            out[f"{prefix}/metadata[{section}]"] = values
    if not file_backed:
        interface = obj.__array_interface__
        for key in ("typestr", "shape", "version", "strides", "descr"):
            out[f"{prefix}/__array_interface__[{key}]"] = interface[key]
        out[f"{prefix}/pixels"] = np.array(obj)


def _error(fn: Callable[[], Any]) -> list[str]:
    """The builtin exception classes the error ``fn`` raises is an instance of (``[]``: no error)."""
    try:
        fn()
    except Exception as exc:
        kinds = (ValueError, TypeError, RuntimeError, KeyError, OSError)
        return sorted(kind.__name__ for kind in kinds if isinstance(exc, kind)) or ["Exception"]
    return []


def _batches(iterator: Any, prefix: str, out: dict[str, Any], *, describe_first: bool = True) -> None:
    out[f"{prefix}/len"] = len(iterator)
    out[f"{prefix}/iter is self"] = iter(iterator) is iterator
    shapes, pixels = [], []
    for i, batch in enumerate(iterator):
        if i == 0 and describe_first:
            _describe(batch, f"{prefix}/first", out)
        shapes.append(list(batch.shape))
        pixels.append(np.array(batch))  # copy now: cuCIM reuses the buffer
    out[f"{prefix}/shapes"] = shapes
    out[f"{prefix}/pixels"] = pixels


def _message(fn: Callable[[], Any]) -> str:
    """The message of the error ``fn`` raises (``""``: no error)."""
    try:
        fn()
    except Exception as exc:
        return str(exc)
    return ""


def _cache_module(cuimage: type) -> Any:
    """The module holding ``preferred_memory_capacity`` beside ``cuimage``."""
    if cuimage.__module__.startswith("cucim"):
        import cucim.clara.cache as module
    else:
        import wsiarray.compat as module
    return module


def _clara_module(cuimage: type) -> Any:
    """The module holding the names exported beside ``cuimage`` (``DLDataTypeCode``, ...)."""
    if cuimage.__module__.startswith("cucim"):
        import cucim.clara as module
    else:
        import wsiarray.compat as module
    return module


def _digest(array: np.ndarray) -> str:
    return hashlib.sha1(np.ascontiguousarray(array).tobytes()).hexdigest()


def run_script(cuimage: type, path: str) -> dict[str, Any]:
    """Exercise cuCIM's ``CuImage`` API on ``path`` with the class ``cuimage``; return every output."""
    out: dict[str, Any] = {}
    img = cuimage(path)
    _describe(img, "image", out, file_backed=True)
    out["image/path"] = img.path
    dims = img.resolutions["level_dimensions"]
    levels = img.resolutions["level_count"]
    w0, h0 = dims[0]

    def fit(width: int, height: int) -> tuple[int, int]:
        # cuCIM refuses sizes larger than level 0 (a documented difference)
        return min(width, w0), min(height, h0)

    patch = fit(24, 20)

    # one region per call, at every level: inside, across tile edges, over the far edges
    for level in range(levels):
        w, h = dims[level]
        spots = [(0, 0, min(w, 37), min(h, 23)), (w0 // 3, h0 // 5, *fit(64, 48)),
                 (w0 - 5, h0 - 7, *fit(16, 16)), (w0 + 10, 0, *fit(8, 8))]
        if level == 0:
            spots.append((-5, -3, 16, 12))  # negative: level 0 only (level>0 rounds differently)
        for j, (x, y, sw, sh) in enumerate(spots):
            if sw < 5 or sh < 4:
                continue
            region = img.read_region((x, y), (sw, sh), level=level)
            _describe(region, f"region[{level}][{j}]", out)
            out[f"region[{level}][{j}]/repr type"] = type(region).__name__
            crop = region.read_region((1, 1), (4, 3))
            out[f"region[{level}][{j}]/read_region on result"] = np.array(crop)

    # whole level, location only, size only, empty lists
    small_level = min(range(levels), key=lambda i: dims[i][0] * dims[i][1])
    out["whole[0]"] = np.array(img.read_region())
    out["whole[0] nw2"] = np.array(img.read_region(num_workers=2))
    out[f"whole[{small_level}]"] = np.array(img.read_region(level=small_level))
    out["location only"] = np.array(img.read_region((w0 // 2, h0 // 2)))
    out["size only"] = np.array(img.read_region(size=fit(33, 17)))
    out["empty lists"] = np.array(img.read_region([], list(fit(33, 17))))
    out["single in a list"] = np.array(img.read_region([(3, 4)], fit(20, 10)))
    out["single in a list type"] = type(img.read_region([(3, 4)], fit(20, 10))).__name__
    out["flat single"] = np.array(img.read_region([3, 4], fit(20, 10)))
    out["numpy int location"] = np.array(img.read_region((np.int64(3), np.int32(4)), fit(20, 10)))
    # a one-location result iterates over itself, whatever num_workers
    single = img.read_region([(3, 4)], fit(20, 10), num_workers=2)
    out["single in a list nw=2 iter"] = [np.array(r) for r in single]
    out["single in a list nw=2 iter is self"] = [r is single for r in single]

    # batches
    rng = np.random.default_rng(1)
    locations = [(int(x), int(y)) for x, y in zip(rng.integers(0, w0 + 40, 11),
                                                   rng.integers(0, h0 + 40, 11), strict=True)]
    for batch_size, workers, drop_last in BATCH_SETTINGS:
        it = img.read_region(locations, patch, batch_size=batch_size, num_workers=workers,
                             drop_last=drop_last)
        out[f"batch bs={batch_size} nw={workers} dl={drop_last}/type"] = type(it).__name__
        _batches(it, f"batch bs={batch_size} nw={workers} dl={drop_last}", out)
    if levels > 1:
        _batches(img.read_region(locations, patch, level=levels - 1, batch_size=4, num_workers=2),
                 "batch level=last", out)
    _batches(img.read_region([list(p) for p in locations], patch, batch_size=2, num_workers=1),
             "batch list of lists", out, describe_first=False)
    _batches(img.read_region(tuple(locations), patch, batch_size=2, num_workers=1),
             "batch tuple", out, describe_first=False)
    _batches(img.read_region((p for p in locations), patch, batch_size=5, num_workers=2),
             "batch generator", out, describe_first=False)
    flat = [v for p in locations for v in p]
    _batches(img.read_region(flat, patch, batch_size=3, num_workers=2), "batch flat", out,
             describe_first=False)
    _batches(img.read_region(locations, patch, batch_size=0, num_workers=1), "batch size 0", out,
             describe_first=False)
    _batches(img.read_region(locations, patch, batch_size=3, num_workers=1, prefetch_factor=0),
             "batch prefetch 0", out, describe_first=False)
    # shuffle: the order is implementation-defined (documented difference), the set of patches is not
    for seed in (0, 7):
        it = img.read_region(locations, patch, batch_size=1, num_workers=2, shuffle=True, seed=seed)
        patches = [np.array(b) for b in it]
        out[f"shuffle seed={seed}/multiset"] = sorted(_digest(p) for p in patches)
        again = [np.array(b) for b in img.read_region(locations, patch, batch_size=1, num_workers=2,
                                                       shuffle=True, seed=seed)]
        out[f"shuffle seed={seed}/reproducible"] = all(
            np.array_equal(a, b) for a, b in zip(patches, again, strict=True))

    # associated images
    for name in sorted(img.associated_images):
        _describe(img.associated_image(name), f"associated[{name}]", out)

    # errors (the builtin class the exception belongs to)
    out["error level out of range"] = _error(lambda: img.read_region((0, 0), (8, 8), level=levels))
    out["error size 0"] = _error(lambda: img.read_region((0, 0), (0, 8)))
    out["error size negative"] = _error(lambda: img.read_region((0, 0), (8, -1)))
    out["error open missing"] = _error(lambda: cuimage(path + ".missing"))
    # messages scripts match on (cuCIM picks a plugin by extension: keep the slide's)
    stem, ext = path.rsplit(".", 1)
    out["message open missing"] = _message(lambda: cuimage(f"{stem}-missing.{ext}"))
    out["message level out of range"] = _message(lambda: img.read_region((0, 0), (8, 8), level=levels))
    out["message level out of range, no size"] = _message(lambda: img.read_region(level=levels))
    out["message level out of range, location only"] = _message(
        lambda: img.read_region((0, 0), level=levels))
    out["message level out of range, batch"] = _message(
        lambda: img.read_region(locations, patch, level=levels, num_workers=1))
    out["message size 0"] = _message(lambda: img.read_region((0, 0), (0, 8)))
    out["message size 0, batch"] = _message(lambda: img.read_region(locations, (8, 0), num_workers=1))
    region = img.read_region((0, 0), patch)
    out["message crop past the width"] = _message(lambda: region.read_region((patch[0] - 2, 0), (4, 2)))
    out["message crop past the height"] = _message(lambda: region.read_region((0, patch[1] - 1), (2, 2)))
    out["message crop negative"] = _message(lambda: region.read_region((-1, 0), (2, 2)))
    out["message crop level 1"] = _message(lambda: region.read_region((0, 0), (2, 2), level=1))
    out["message crop level 1, no size"] = _message(lambda: region.read_region(level=1))
    batch = next(iter(img.read_region(locations, patch, batch_size=2, num_workers=1)))
    out["error crop a batch"] = _error(lambda: batch.read_region((0, 0), (2, 2)))
    out["message crop a batch"] = _message(lambda: batch.read_region((0, 0), (2, 2)))

    # the names exported beside CuImage
    clara = _clara_module(cuimage)
    members = clara.DLDataTypeCode.__members__.items()
    out["DLDataTypeCode"] = sorted((name, int(value)) for name, value in members)
    out["str(DLDataTypeCode.DLUInt)"] = str(clara.DLDataTypeCode.DLUInt)
    out["dtype.code == DLDataTypeCode.DLUInt"] = bool(img.dtype.code == clara.DLDataTypeCode.DLUInt)
    module = _cache_module(cuimage)
    out["preferred_memory_capacity(None, image_size, patch_size)"] = module.preferred_memory_capacity(
        None, (1048576, 1048576), patch_size=(256, 256))
    preferred = module.preferred_memory_capacity
    out["preferred_memory_capacity(None, image_size)"] = preferred(None, (50000, 30000))
    out["preferred_memory_capacity(img, patch_size)"] = preferred(img, patch_size=(512, 512))
    out["preferred_memory_capacity(img)"] = module.preferred_memory_capacity(img)
    out["error preferred_memory_capacity()"] = _error(lambda: module.preferred_memory_capacity())
    out["message preferred_memory_capacity()"] = _message(lambda: module.preferred_memory_capacity())

    # cache objects
    cache = cuimage.cache()
    out["cache()/type"] = str(cache.type)
    out["cache()/config"] = cache.config
    for name in ("size", "memory_size", "capacity", "memory_capacity", "free_memory",
                 "hit_count", "miss_count"):
        out[f"cache()/{name}"] = getattr(cache, name)
    out["cache()/record()"] = cache.record()
    cache = cuimage.cache("per_process", memory_capacity=64, record_stat=True)
    out["cache(per_process)/type"] = str(cache.type)
    out["cache(per_process)/config"] = cache.config
    out["cache(per_process)/memory_capacity"] = cache.memory_capacity
    out["cache(per_process)/capacity"] = cache.capacity
    out["cache(per_process)/record()"] = cache.record()
    out["cache(per_process)/int(type)"] = int(cache.type)
    cache.reserve(memory_capacity=128)
    out["cache(per_process)/reserve/config"] = cache.config
    cache.reserve(memory_capacity=32)  # never shrinks
    out["cache(per_process)/reserve smaller/config"] = cache.config
    out["cache(per_process)/record(False)"] = cache.record(False)
    out["cache(per_process)/record(False)/counts"] = [cache.hit_count, cache.miss_count]
    cache = cuimage.cache("no_cache")
    out["cache(no_cache)/type"] = str(cache.type)
    out["cache(no_cache)/int(type)"] = int(cache.type)

    # context manager
    with cuimage(path) as opened:
        out["with/shape"] = list(opened.shape)
        out["with/pixels"] = np.array(opened.read_region((0, 0), (8, 8)))
    out["after close/shape"] = list(opened.shape)
    out["after close/read"] = _error(lambda: opened.read_region((0, 0), (8, 8)))
    out["after close/read message"] = _message(lambda: opened.read_region((0, 0), (8, 8)))
    return out


def main(argv: list[str]) -> None:
    """``python compat_script.py cucim|wsiarray OUT.pickle SLIDE...``: ``{slide: outputs}`` pickled."""
    which, target, *paths = argv
    if which == "cucim":
        from cucim import CuImage
    else:
        from wsiarray.compat import CuImage
    results = {path: run_script(CuImage, path) for path in paths}
    with open(target, "wb") as f:
        pickle.dump(results, f)


if __name__ == "__main__":
    main(sys.argv[1:])
