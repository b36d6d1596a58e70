"""One set of argument rules: every entry point gives the same outcome for the same input.

Each entry point is a function ``(slide, level, location, size, fill, workers) -> array``
that reads one region through that entry point. Entry points that take no
location, size, fill or workers (``to_dask``, the xarray engine, OME-Zarr export)
join the cases for the arguments they do take. The cuCIM facade speaks cuCIM's
messages and is tested in test_compat.py.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import xarray as xr
from wsitest import assert_pixels_equal

import wsiarray
from wsiarray.dask import to_dask
from wsiarray.torch import PatchDataset

LEVELS = 3  # the "jpeg" pyramid: 1000x763, 500x382, 250x191

Reader = Callable[[wsiarray.Slide, Any, Any, Any, Any, Any], np.ndarray]


def _read_region(slide: wsiarray.Slide, level: Any, location: Any, size: Any, fill: Any, workers: Any
                 ) -> np.ndarray:
    return slide.read_region(location, size, level, fill=fill, num_workers=workers)


def _read_region_batch(slide: wsiarray.Slide, level: Any, location: Any, size: Any, fill: Any, workers: Any
                       ) -> np.ndarray:
    batches = slide.read_region([location, location], size, level, fill=fill, num_workers=workers,
                                batch_size=2)
    (batch,) = list(batches)
    np.testing.assert_array_equal(batch[0], batch[1])
    return batch[0]


def _read_level_region(slide: wsiarray.Slide, level: Any, location: Any, size: Any, fill: Any, workers: Any
                       ) -> np.ndarray:
    # level 0 (or a bad level): level pixels are level-0 pixels
    return slide.read_level_region(level, location, size, fill=fill, num_workers=workers)


def _read_regions(slide: wsiarray.Slide, level: Any, location: Any, size: Any, fill: Any, workers: Any
                  ) -> np.ndarray:
    (batch,) = list(wsiarray.read_regions([(slide, location)], size, level=level, fill=fill,
                                          num_workers=workers))
    return batch[0]


def _read_regions_by_path(slide: wsiarray.Slide, level: Any, location: Any, size: Any, fill: Any,
                          workers: Any) -> np.ndarray:
    (batch,) = list(wsiarray.read_regions([(slide.path, location)], size, level=level, fill=fill,
                                          num_workers=workers))
    return batch[0]


def _patch_dataset(slide: wsiarray.Slide, level: Any, location: Any, size: Any, fill: Any, workers: Any
                   ) -> np.ndarray:
    dataset = PatchDataset([(slide.path, location)], size, level, fill=fill, num_workers=workers)
    one = dataset[0]
    (many,) = dataset.__getitems__([0])
    np.testing.assert_array_equal(one, many)
    return one


def _open_with_fill(slide: wsiarray.Slide, level: Any, location: Any, size: Any, fill: Any, workers: Any
                    ) -> np.ndarray:
    with wsiarray.open(slide.path, fill=fill) as own:
        return own.read_region(location, size, level, num_workers=workers)


REGION_READERS: dict[str, Reader] = {
    "read_region": _read_region,
    "read_region(batch)": _read_region_batch,
    "read_level_region": _read_level_region,
    "read_regions": _read_regions,
    "read_regions(path)": _read_regions_by_path,
    "PatchDataset": _patch_dataset,
    "open(fill=)": _open_with_fill,
}


def _to_dask(slide: wsiarray.Slide, level: Any) -> Any:
    return to_dask(slide, level)


def _open_dataset(slide: wsiarray.Slide, level: Any) -> Any:
    return xr.open_dataset(slide.path, engine="wsiarray", level=level)


def _to_xarray(slide: wsiarray.Slide, level: Any) -> Any:
    return slide.to_xarray(level)


def _to_zarr(slide: wsiarray.Slide, level: Any) -> Any:
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        return slide.to_zarr(f"{folder}/out.ome.zarr", levels=[level])


LEVEL_READERS: dict[str, Callable[[wsiarray.Slide, Any], Any]] = {
    "to_dask": _to_dask,
    "xr.open_dataset": _open_dataset,
    "to_xarray": _to_xarray,
    "to_zarr": _to_zarr,
}

GOOD = {"level": 0, "location": (10, 20), "size": (32, 16), "fill": None, "workers": 0}

#: (argument, bad value, the message every entry point gives)
BAD: list[tuple[str, Any, str]] = [
    ("level", -1, "level must be an integer in [0, 3), got -1"),
    ("level", -5, "level must be an integer in [0, 3), got -5"),
    ("level", 3, "level must be an integer in [0, 3), got 3"),
    ("level", 100, "level must be an integer in [0, 3), got 100"),
    ("level", True, "level must be an integer in [0, 3), got True"),
    ("level", 1.0, "level must be an integer in [0, 3), got 1.0"),
    ("level", "0", "level must be an integer in [0, 3), got '0'"),
    ("size", (-1, 10), "size must not be negative, got (-1, 10)"),
    ("size", (10, -5), "size must not be negative, got (10, -5)"),
    ("size", (), "size must be a pair of integers, got ()"),
    ("size", None, "size must be a pair of integers, got None"),
    ("size", (10.5, 3), "size must be a pair of integers, got (10.5, 3)"),
    ("size", (1, 2, 3), "size must be a pair of integers, got (1, 2, 3)"),
    ("fill", 256, "fill must be a number or 3 numbers that fit uint8, got 256"),
    ("fill", -1, "fill must be a number or 3 numbers that fit uint8, got -1"),
    ("fill", (1, 2), "fill must be a number or 3 numbers that fit uint8, got (1, 2)"),
    ("fill", "x", "fill must be a number or 3 numbers that fit uint8, got 'x'"),
    ("fill", [[1, 2, 3]] * 2,
     "fill must be a number or 3 numbers that fit uint8, got [[1, 2, 3], [1, 2, 3]]"),
    ("location", (1.5, 2), "location must be a pair of integers, got (1.5, 2)"),
    ("location", ("1", 2), "location must be a pair of integers, got ('1', 2)"),
    ("location", (None, None), "location must be a pair of integers, got (None, None)"),
    ("location", (1, 2, 3), "location must be a pair of integers, got (1, 2, 3)"),
    ("location", 5, "location must be a pair of integers, got 5"),
    ("location", None, "location must be a pair of integers, got None"),
    ("workers", -1, "num_workers must be an integer >= 0, got -1"),
    ("workers", 1.5, "num_workers must be an integer >= 0, got 1.5"),
    ("workers", "2", "num_workers must be an integer >= 0, got '2'"),
]


def _call(reader: Reader, slide: wsiarray.Slide, **changes: Any) -> np.ndarray:
    args = {**GOOD, **changes}
    return reader(slide, args["level"], args["location"], args["size"], args["fill"], args["workers"])


@pytest.fixture(scope="module")
def slide(pyramid_slides: dict[str, str]) -> Any:
    with wsiarray.open(pyramid_slides["jpeg"]) as handle:
        yield handle


@pytest.mark.parametrize("entry", REGION_READERS)
@pytest.mark.parametrize(("argument", "value", "message"), BAD, ids=[f"{a}={v!r}" for a, v, _ in BAD])
def test_bad_arguments_give_one_error_everywhere(slide: wsiarray.Slide, entry: str, argument: str, value: Any,
                                                 message: str) -> None:
    if entry == "read_region(batch)" and argument == "location" and not (isinstance(value, tuple)
                                                                        and len(value) >= 2):
        pytest.skip("[X, X] for a scalar X is one location (or a flat list), not two bad ones")
    with pytest.raises(wsiarray.ArgumentError, match=f"^{re.escape(message)}$"):
        _call(REGION_READERS[entry], slide, **{argument: value})


@pytest.mark.parametrize("entry", LEVEL_READERS)
@pytest.mark.parametrize(("value", "message"), [(v, m) for a, v, m in BAD if a == "level"],
                         ids=[repr(v) for a, v, _ in BAD if a == "level"])
def test_bad_levels_give_one_error_in_the_array_layers(slide: wsiarray.Slide, entry: str, value: Any,
                                                        message: str) -> None:
    with pytest.raises(wsiarray.ArgumentError, match=f"^{re.escape(message)}$"):
        LEVEL_READERS[entry](slide, value)


def test_bad_fill_is_refused_by_the_xarray_engine_too(slide: wsiarray.Slide) -> None:
    message = "fill must be a number or 3 numbers that fit uint8, got 256"
    with pytest.raises(wsiarray.ArgumentError, match=f"^{re.escape(message)}$"):
        xr.open_dataset(slide.path, engine="wsiarray", fill=256)


def _device_calls(slide: wsiarray.Slide, device: Any) -> list[Callable[[], Any]]:
    return [lambda: to_dask(slide, 0, device=device), lambda: slide.to_xarray(0, device=device),
            lambda: slide.read_region((0, 0), (8, 8), device=device),
            lambda: slide.read_level_region(0, (0, 0), (8, 8), device=device),
            lambda: slide.read_region([(0, 0), (8, 8)], (8, 8), device=device),
            lambda: wsiarray.read_regions([(slide, (0, 0))], (8, 8), device=device)]


@pytest.mark.parametrize("device", ["gpu", "cuda:x", 1])
def test_bad_devices_are_refused_the_same_way(slide: wsiarray.Slide, device: Any) -> None:
    message = f"device must be 'cpu', 'cuda' or 'cuda:N', got {device!r}"
    for call in _device_calls(slide, device):
        with pytest.raises(wsiarray.ArgumentError, match=f"^{re.escape(message)}$"):
            call()


def test_cuda_fails_or_works_the_same_way(slide: wsiarray.Slide, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without the extra or a GPU every entry point raises the same error (with both, all work)."""
    monkeypatch.delenv("WSIARRAY_GPU_BACKEND", raising=False)
    outcomes = set()
    for call in _device_calls(slide, "cuda"):
        try:
            call()
            outcomes.add("works")
        except (ImportError, wsiarray.GPUUnavailableError) as exc:
            outcomes.add(f"{type(exc).__name__}: {exc}")
    assert len(outcomes) == 1, outcomes


# -- edge inputs: the same pixels everywhere --------------------------------------------------


EDGES: list[dict[str, Any]] = [
    {"size": (0, 0)},
    {"size": (0, 7)},
    {"size": (7, 0)},
    {"location": (-40, -30)},  # partly outside, top left
    {"location": (990, 750)},  # partly outside, bottom right
    {"location": (5000, 5000)},  # wholly outside
    {"location": (-100, -100), "fill": 255},
    {"location": (-10, 5), "fill": (1, 2, 3)},
    {"location": (np.int64(3), np.int32(4)), "size": (np.uint16(9), 9)},
    {"location": (3.0, 4.0)},
    {"level": np.int64(0), "workers": 2},
    {"location": (127, 127), "size": (130, 130), "workers": 1},
]


@pytest.mark.parametrize("edge", EDGES, ids=[repr(e) for e in EDGES])
def test_edge_inputs_give_the_same_pixels_everywhere(slide: wsiarray.Slide, edge: dict[str, Any]) -> None:
    args = {**GOOD, **edge}
    width, height = (int(v) for v in args["size"])
    x, y = (int(v) for v in args["location"])
    whole = slide.read_region((0, 0), slide.level_dimensions[0])
    fill = 0 if args["fill"] is None else args["fill"]
    want = np.empty((height, width, 3), np.uint8)
    want[...] = np.broadcast_to(np.asarray(fill, np.uint8), (3,))
    x0, y0, x1, y1 = max(x, 0), max(y, 0), min(x + width, 1000), min(y + height, 763)
    if x0 < x1 and y0 < y1:
        want[y0 - y : y1 - y, x0 - x : x1 - x] = whole[y0:y1, x0:x1]
    for name, reader in REGION_READERS.items():
        got = _call(reader, slide, **edge)
        assert got.shape == want.shape, name
        assert_pixels_equal(got, want, f"{name} {edge}")


def test_levels_above_zero_agree(slide: wsiarray.Slide) -> None:
    """Level-0 locations floor to the level everywhere; read_level_region takes level pixels."""
    for level in (1, 2):
        downsample = slide.level_downsamples[level]
        want = slide.read_level_region(level, (int(101 // downsample), int(203 // downsample)), (40, 30))
        for name, reader in REGION_READERS.items():
            if name == "read_level_region":
                continue
            got = _call(reader, slide, level=level, location=(101, 203), size=(40, 30))
            assert_pixels_equal(got, want, f"{name} level {level}")


# -- requests too large to allocate: refused the same way everywhere -------------------------------


def _cuimage(slide: wsiarray.Slide, level: Any, location: Any, size: Any, fill: Any, workers: Any
             ) -> np.ndarray:
    from wsiarray.compat import CuImage

    return np.asarray(CuImage(slide.path).read_region(location, size, level, num_workers=workers))


def _xarray_values(slide: wsiarray.Slide, level: Any, location: Any, size: Any, fill: Any, workers: Any
                   ) -> np.ndarray:
    # the xarray engine reads the bounding box of an index: here the whole level
    return xr.open_dataset(slide.path, engine="wsiarray", level=level)["image"].values


def _whole_level(slide: wsiarray.Slide, level: Any, location: Any, size: Any, fill: Any, workers: Any
                 ) -> np.ndarray:
    return slide.read_region(level=level)


@pytest.mark.parametrize("entry", [*REGION_READERS, "CuImage.read_region"])
def test_too_large_requests_give_one_error_everywhere(slide: wsiarray.Slide, entry: str) -> None:
    reader = REGION_READERS.get(entry, _cuimage)
    count = 2 if entry == "read_region(batch)" else 1  # that entry reads its location twice per batch
    needs = count * 2_000_000 * 1_000_000 * 3  # 6 TB: more than any machine
    limit = int(wsiarray.request_limit() * (1 << 20))
    assert needs > limit, "this machine has more memory than the test assumes"
    message = (f"the request needs {needs} bytes (... {count} x 2000000x1000000 pixels x 3 uint8), "
               f"more than the limit of {limit} bytes (...); ask for a smaller size or batch_size, "
               "or raise the limit with wsiarray.request_limit(max_mib=...) or WSIARRAY_MAX_REQUEST_MIB")
    pattern = "^" + re.escape(message).replace(re.escape("..."), ".*") + "$"
    with pytest.raises(wsiarray.RequestTooLargeError, match=pattern):
        _call(reader, slide, size=(2_000_000, 1_000_000))


@pytest.mark.parametrize("entry", ["whole level", "xr.open_dataset", "CuImage.read_region()"])
def test_whole_level_reads_are_bounded_by_the_limit(slide: wsiarray.Slide, entry: str) -> None:
    from wsiarray.compat import CuImage

    reads = {"whole level": lambda: slide.read_region(),
             "xr.open_dataset": lambda: _xarray_values(slide, 0, None, None, None, None),
             "CuImage.read_region()": lambda: CuImage(slide.path).read_region()}
    try:
        wsiarray.request_limit(max_mib=1)  # the level is 1000x763x3: 2.2 MiB
        message = ("the request needs 2289000 bytes (2.2 MiB: 1 x 1000x763 pixels x 3 uint8), more than the "
                   "limit of 1048576 bytes (1.0 MiB); ask for a smaller size or batch_size, "
                   "or raise the limit with wsiarray.request_limit(max_mib=...) or WSIARRAY_MAX_REQUEST_MIB")
        with pytest.raises(wsiarray.RequestTooLargeError, match=f"^{re.escape(message)}$"):
            reads[entry]()
    finally:
        wsiarray.request_limit(max_mib=0)
    assert np.asarray(reads[entry]()).shape[-3:] in ((763, 1000, 3), (3, 763, 1000))


def test_bad_progress_gives_one_error_everywhere(slide: wsiarray.Slide, tmp_path: Any) -> None:
    from wsiarray.zarr_export import to_zarr

    for value in (1, "yes", 0.0):
        message = f"progress must be True, False or None, got {value!r}"
        for call in (lambda v=value: slide.read_region(level=2, progress=v),
                     lambda v=value: slide.read_region((0, 0), (8, 8), progress=v),
                     lambda v=value: to_zarr(slide, tmp_path / "x.zarr", progress=v)):
            with pytest.raises(wsiarray.ArgumentError, match=f"^{re.escape(message)}$"):
                call()
