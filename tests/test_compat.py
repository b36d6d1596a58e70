"""``wsiarray.compat.CuImage`` against cuCIM: one script, both classes, every output compared.

The script is ``compat_script.run_script``. cuCIM runs it in a child process
(skipped when cuCIM cannot be imported); wsiarray runs it here. Outputs must be
equal (pixels bit for bit, floats to 1e-6) except where the module docstring of
:mod:`wsiarray.compat` documents a deliberate difference; each of those is
checked against its documented rule instead.

The rest of the file tests the documented behaviour that needs no cuCIM.
"""

from __future__ import annotations

import ast
import importlib.util
import math
import os
import pickle
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tifffile
from compat_script import run_script
from wsitest import preserved_cache, texture

import wsiarray
from conftest import DATA
from wsiarray.compat import (
    CacheType,
    CuImage,
    CuImageClosedError,
    CuImageIterator,
    CuImageOpenError,
    DLDataType,
    preferred_memory_capacity,
)

HAVE_CUCIM = importlib.util.find_spec("cucim") is not None
#: Slides cuCIM's CPU path reads (it crashes on deflate/zstd and cannot open OME pyramids).
DATA_SLIDES = (
    "aperio/CMU-1-Small-Region.svs",
    "aperio/small.svs",
    "generic/cog-jpeg-dqt-only.tiff",
    "generic/quad-tile.jpg.tiff",
    "generic/tiled-rect-128x32.tif",
)
SCRIPT = Path(__file__).with_name("compat_script.py")
MIB = 1 << 20


def write_jpeg_pyramid(path: Path) -> str:
    """A tifffile-written tiled JPEG (YCbCr 4:2:0) pyramid: 1100x900, levels /2 and /4, 0.25 µm/px."""
    base = texture(900, 1100, 3, "uint8", seed=3)
    with tifffile.TiffWriter(path) as tif:
        for level, factor in enumerate((1, 2, 4)):
            array = np.ascontiguousarray(base[::factor, ::factor])
            tif.write(array, tile=(256, 256), compression="jpeg", photometric="rgb",
                      subfiletype=0 if level == 0 else 1,
                      resolution=(40000 / factor, 40000 / factor), resolutionunit="CENTIMETER",
                      description=f"synthetic level {level}")
    return str(path)


def write_unitless_pyramid(path: Path) -> str:
    """A tiled JPEG pyramid whose resolution tags have ResolutionUnit NONE (72 x 36 per unit at level 0)."""
    base = texture(600, 700, 3, "uint8", seed=5)
    with tifffile.TiffWriter(path) as tif:
        for level, factor in enumerate((1, 2)):
            array = np.ascontiguousarray(base[::factor, ::factor])
            tif.write(array, tile=(256, 256), compression="jpeg", photometric="rgb",
                      subfiletype=0 if level == 0 else 1,
                      resolution=(72 / factor, 36 / factor), resolutionunit="NONE")
    return str(path)


@pytest.fixture(scope="module")
def slides(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    paths = [str(DATA / name) for name in DATA_SLIDES if (DATA / name).is_file()]
    paths.append(write_jpeg_pyramid(tmp_path_factory.mktemp("compat") / "pyramid-jpeg.tif"))
    paths.append(write_unitless_pyramid(tmp_path_factory.mktemp("compat") / "pyramid-unitless.tif"))
    return paths


@pytest.fixture
def restore_cache() -> Iterator[None]:
    """Put the process's tile cache (and its environment variable) back as it was."""
    with preserved_cache():
        yield


@pytest.fixture(scope="module")
def cucim_outputs(slides: list[str], tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    if not HAVE_CUCIM:
        pytest.skip("cuCIM is not installed (pip install cucim-cu12): nothing to compare against")
    target = tmp_path_factory.mktemp("cucim") / "outputs.pickle"
    env = {**os.environ,
           "PYTHONPATH": os.pathsep.join([str(SCRIPT.parent), os.environ.get("PYTHONPATH", "")])}
    env.pop("WSIARRAY_CACHE", None)
    proc = subprocess.run([sys.executable, str(SCRIPT), "cucim", str(target), *slides],
                          capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, f"the script failed under cuCIM:\n{proc.stderr[-3000:]}"
    with open(target, "rb") as f:
        return pickle.load(f)


# -- comparing outputs ---------------------------------------------------------------------

#: Outputs whose difference the compat module documents; checked by rule, not equality.
SPACING_KEY = re.compile(r"/(spacing|spacing_units)\(|/metadata\[cucim\]\[spacing(_units)?\]$")
ERROR_KEY = re.compile(r"^error |^after close/read$")
CACHE_BUDGET_KEY = re.compile(r"^cache\(per_process\)/(memory_capacity|capacity)$")


def same(a: Any, b: Any) -> bool:
    """Equal values: arrays bit for bit (shape and dtype too), floats to 1e-6, containers elementwise."""
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return (isinstance(a, np.ndarray) and isinstance(b, np.ndarray) and a.shape == b.shape
                and a.dtype == b.dtype and np.array_equal(a, b))
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, float) or isinstance(b, float):
        try:
            return math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-9)
        except TypeError:
            return False
    return type(a) is type(b) and a == b


def short(value: Any) -> str:
    if isinstance(value, np.ndarray):
        return f"array{value.shape} {value.dtype}"
    return repr(value)[:300]


def unitless_resolution(slide: wsiarray.Slide) -> tuple[float, float] | None:
    """X/YResolution when ResolutionUnit is NONE (and both are positive), else None."""
    props = slide.properties
    if props.get("tiff.ResolutionUnit") != "none" or "tiff.XResolution" not in props:
        return None
    x, y = float(props["tiff.XResolution"]), float(props["tiff.YResolution"])
    return (x, y) if x > 0 and y > 0 else None


def expected_spacing(slide: wsiarray.Slide, key: str, ws: dict[str, Any]) -> tuple[list[float], list[str]]:
    """Documented spacing and units of one output (full ``dims`` order) from the slide's pixel size."""
    prefix = key.split("/spacing")[0].split("/metadata")[0]
    dims = ws[f"{prefix}/dims"]
    if prefix.startswith("associated["):
        return [1.0, 1.0, 1.0], ["micrometer", "micrometer", "color"]
    match = re.match(r"region\[(\d+)\]|batch level=last", prefix)
    level = 0
    if match and match.group(1) is not None:
        level = int(match.group(1))
    elif prefix.startswith("batch level=last"):
        level = slide.level_count - 1
    downsample = slide.level_downsamples[level]
    mpp = slide.mpp
    sx, sy = (mpp[0] * downsample, mpp[1] * downsample) if mpp else (downsample, downsample)
    unit = "micrometer" if mpp else ""
    if mpp is None and unitless_resolution(slide):  # cuCIM's rule: the raw values, no unit
        x, y = unitless_resolution(slide)  # type: ignore[misc]
        sx, sy = x * downsample, y * downsample
    by_axis = {"N": (1.0, "batch"), "Y": (sy, unit), "X": (sx, unit), "C": (1.0, "color")}
    return [by_axis[d][0] for d in dims], [by_axis[d][1] for d in dims]


def check_spacing(slide: wsiarray.Slide, key: str, ws: dict[str, Any], cu: dict[str, Any]) -> None:
    """Documented: spacing = pixel size (Aperio MPP too) x downsample; level 0 as cuCIM where it knows."""
    prefix = key.split("/spacing")[0].split("/metadata")[0]
    spacing, units = expected_spacing(slide, key, ws)
    dims = ws[f"{prefix}/dims"]
    if key.endswith("[spacing]"):
        assert same(ws[key], spacing), (key, ws[key], spacing)
    elif key.endswith("[spacing_units]"):
        assert ws[key] == units, (key, ws[key], units)
    else:
        order = key[key.index("(") + 1 : key.index(")")] or dims
        if "/spacing(" in key:
            want: list[Any] = [spacing[dims.index(d)] if d in dims else 1.0 for d in order]
        else:
            want = [units[dims.index(d)] if d in dims else "" for d in order]
        assert same(ws[key], want), (key, ws[key], want)
    # where cuCIM knows the pixel size (TIFF resolution tags, unitless ones too), level 0 is the same
    if prefix == "image" and (cu["image/spacing_units()"][0] == "micrometer" or unitless_resolution(slide)):
        assert same(ws[key], cu[key]), (key, ws[key], cu[key])


@pytest.mark.needs_data
def test_same_script_same_outputs(slides: list[str], cucim_outputs: dict[str, dict[str, Any]],
                                  restore_cache: None) -> None:
    problems: list[str] = []
    compared = 0
    for path in slides:
        CuImage.cache("no_cache")  # the state of a fresh process, as cuCIM's child process has
        ws = run_script(CuImage, path)
        cu = cucim_outputs[path]
        assert ws.keys() == cu.keys(), (path, sorted(set(ws) ^ set(cu)))
        with wsiarray.open(path) as slide:
            for key in sorted(cu):
                compared += 1
                if SPACING_KEY.search(key):
                    try:
                        check_spacing(slide, key, ws, cu)
                    except AssertionError as exc:
                        problems.append(f"{Path(path).name}: {exc}")
                    continue
                if CACHE_BUDGET_KEY.match(key):
                    # documented: the usable budget, rounded down to pages and shards
                    if not 0.99 * cu[key] <= ws[key] <= cu[key]:
                        problems.append(f"{Path(path).name}: {key}: {ws[key]} vs cuCIM {cu[key]}")
                    continue
                if ERROR_KEY.match(key):
                    # an error must be catchable as cuCIM's class (ours may derive from more)
                    if not cu[key] or not set(cu[key]) <= set(ws[key]):
                        problems.append(f"{Path(path).name}: {key}: wsiarray raises {ws[key]}, "
                                        f"cuCIM {cu[key]}")
                    continue
                if not same(ws[key], cu[key]):
                    problems.append(f"{Path(path).name}: {key}: wsiarray {short(ws[key])} "
                                    f"!= cuCIM {short(cu[key])}")
    assert not problems, f"{len(problems)} of {compared} outputs differ:\n" + "\n".join(problems[:40])
    assert compared > 3000


# -- documented behaviour, no cuCIM needed -----------------------------------------------------


@pytest.fixture(scope="module")
def pyramid(tmp_path_factory: pytest.TempPathFactory) -> str:
    return write_jpeg_pyramid(tmp_path_factory.mktemp("compat-own") / "pyramid.tif")


def test_description(pyramid: str) -> None:
    img = CuImage(pyramid)
    assert img.shape == [900, 1100, 3] and img.dims == "YXC" and img.ndim == 3
    assert img.typestr == "|u1" and img.dtype == DLDataType(1, 8, 1)
    assert repr(img.dtype) == "<wsiarray.compat.DLDataType code:DLUInt(1) bits:8 lanes:1>"
    assert img.size("XY") == [1100, 900] and img.size("C") == [3] and img.size("XYZ") == [1100, 900]
    assert img.resolutions == {
        "level_count": 3,
        "level_dimensions": ((1100, 900), (550, 450), (275, 225)),
        "level_downsamples": (1.0, 2.0, 4.0),
        "level_tile_sizes": ((256, 256), (256, 256), (256, 256)),
    }
    assert img.spacing() == pytest.approx([0.25, 0.25, 1.0])
    assert img.spacing("XYZ") == pytest.approx([0.25, 0.25, 1.0])
    assert img.spacing_units("CXYZ") == ["color", "micrometer", "micrometer", ""]
    meta = img.metadata
    assert meta["cucim"]["shape"] == [900, 1100, 3] and meta["cucim"]["path"] == pyramid
    assert meta["tiff"] == {"model": "", "resolution_unit": "centimeter",
                            "software": meta["tiff"]["software"],
                            "x_resolution": 40000.0, "y_resolution": 40000.0}
    assert img.raw_metadata == "synthetic level 0"
    assert img.associated_images == set()
    assert not hasattr(img, "__array_interface__")  # as cuCIM: only read results have pixels


def test_level_spacing_is_multiplied(pyramid: str) -> None:
    img = CuImage(pyramid)
    for level, factor in enumerate((1, 2, 4)):
        region = img.read_region((8, 8), (10, 10), level=level)
        assert region.spacing() == pytest.approx([0.25 * factor, 0.25 * factor, 1.0])
    batch = next(img.read_region([(0, 0), (8, 8)], (10, 10), level=2, batch_size=2))
    assert batch.dims == "NYXC" and batch.spacing() == pytest.approx([1.0, 1.0, 1.0, 1.0])
    assert batch.spacing_units() == ["batch", "micrometer", "micrometer", "color"]


def test_results_are_arrays(pyramid: str) -> None:
    img = CuImage(pyramid)
    slide = wsiarray.open(pyramid)
    region = img.read_region((100, 50), (70, 40), level=1)
    array = np.asarray(region)
    assert array.shape == (40, 70, 3) and region.shape == [40, 70, 3]
    assert array.base is not None  # a view through __array_interface__, no copy
    assert np.array_equal(array, slide.read_region((100, 50), (70, 40), level=1))
    assert region.__array_interface__["typestr"] == "|u1" and region.__array_interface__["version"] == 3
    assert region.resolutions["level_dimensions"] == ((70, 40),)
    assert region.metadata["cucim"]["shape"] == [40, 70, 3]
    crop = np.asarray(region.read_region((5, 6), (10, 4)))
    assert np.array_equal(crop, array[6:10, 5:15])


def test_defaults_like_cucim(pyramid: str) -> None:
    img = CuImage(pyramid)
    slide = wsiarray.open(pyramid)
    whole = slide.read_region(level=1)
    assert np.array_equal(np.asarray(img.read_region(level=1)), whole)
    assert np.array_equal(np.asarray(img.read_region(level=1, num_workers=2)), whole)
    assert np.array_equal(np.asarray(img.read_region(size=(30, 20), level=1)), whole[:20, :30])
    rest = np.asarray(img.read_region((200, 100), level=1))  # to the end of the level, padded
    assert rest.shape == (450, 550, 3)
    assert np.array_equal(rest[:400, :450], whole[50:, 100:]) and not rest[400:].any()
    assert isinstance(img.read_region([(1, 2)], (8, 8)), CuImage)
    assert isinstance(img.read_region([1, 2], (8, 8)), CuImage)
    assert isinstance(img.read_region(np.array([[1, 2], [3, 4]]), (8, 8)), CuImageIterator)


def test_fill_outside_like_cucim(pyramid: str, data_file: Any) -> None:
    assert not np.asarray(CuImage(pyramid).read_region((1090, 890), (20, 20)))[15:, 15:].any()
    svs = CuImage(data_file("aperio/CMU-1-Small-Region.svs"))
    corner = np.asarray(svs.read_region((2210, 2960), (20, 20)))
    assert (corner[10:, 10:] == 255).all()  # cuCIM's Aperio background


def test_batches(pyramid: str) -> None:
    img = CuImage(pyramid)
    slide = wsiarray.open(pyramid)
    rng = np.random.default_rng(0)
    locations = rng.integers(-50, 1150, (13, 2))
    singles = [slide.read_region(tuple(p), (32, 24)) for p in locations]
    ones = img.read_region(locations, (32, 24), batch_size=1, num_workers=0)  # cuCIM needs >= 1
    assert len(ones) == 13
    kept = list(ones)
    assert all(b.dims == "YXC" and b.shape == [24, 32, 3] for b in kept)
    assert all(np.array_equal(np.asarray(b), s) for b, s in zip(kept, singles, strict=True))
    batches = img.read_region(locations, (32, 24), batch_size=5, num_workers=2)
    kept = list(batches)
    assert [b.shape[0] for b in kept] == [5, 5, 3] and all(b.dims == "NYXC" for b in kept)
    assert np.array_equal(np.concatenate([np.asarray(b) for b in kept]), np.stack(singles))
    assert [b.shape[0] for b in img.read_region(locations, (32, 24), batch_size=5, drop_last=True,
                                                num_workers=1)] == [5, 5]
    order = np.random.default_rng(9).permutation(13)  # the documented shuffle order
    shuffled = np.concatenate([np.asarray(b) for b in img.read_region(
        locations, (32, 24), batch_size=4, num_workers=2, shuffle=True, seed=9)])
    assert np.array_equal(shuffled, np.stack(singles)[order])


def test_pickle(pyramid: str) -> None:
    img = CuImage(pyramid)
    again = pickle.loads(pickle.dumps(img))
    assert again.path == pyramid and again.resolutions == img.resolutions
    region = img.read_region((10, 10), (16, 16), level=1)
    copy = pickle.loads(pickle.dumps(region))
    assert np.array_equal(np.asarray(copy), np.asarray(region))
    assert copy.spacing() == region.spacing() and copy.dims == "YXC"
    assert np.array_equal(np.asarray(again.read_region((10, 10), (16, 16), level=1)), np.asarray(region))


def test_errors(pyramid: str, tmp_path: Path) -> None:
    img = CuImage(pyramid)
    with pytest.raises(ValueError, match="Invalid level"):
        img.read_region((0, 0), (8, 8), level=3)
    with pytest.raises(ValueError, match="Invalid level"):
        img.read_region((0, 0), (8, 8), level=-1)
    with pytest.raises(ValueError, match="Invalid size"):
        img.read_region((0, 0), (0, 8))
    with pytest.raises(TypeError):
        img.read_region((0, 0), (8, 8), C=1)
    with pytest.raises(wsiarray.WSIError):
        img.read_region((0, 0), (8, 8), device="tpu")
    with pytest.raises(KeyError):
        img.associated_image("label")
    with pytest.raises(ValueError) as info:  # cuCIM raises ValueError for files it cannot open
        CuImage(tmp_path / "missing.tif")
    assert isinstance(info.value, CuImageOpenError) and isinstance(info.value, wsiarray.OpenError)
    with CuImage(pyramid) as opened:
        pass
    assert opened.shape == [900, 1100, 3]  # the description outlives close(), as in cuCIM
    with pytest.raises(RuntimeError) as closed:
        opened.read_region((0, 0), (8, 8))
    assert isinstance(closed.value, CuImageClosedError) and isinstance(closed.value, wsiarray.WSIError)


def test_associated_images(data_file: Any) -> None:
    path = data_file("aperio/CMU-1-Small-Region.svs")
    img = CuImage(path)
    slide = wsiarray.open(path)
    assert img.associated_images == {"label", "macro", "thumbnail"}
    label = img.associated_image("label")
    assert label.dims == "YXC" and label.shape == [463, 387, 3]
    assert np.array_equal(np.asarray(label), slide.associated_images["label"])
    assert label.raw_metadata.splitlines()[1] == "label 387x463"
    meta = img.metadata
    assert meta["aperio"]["AppMag"] == "20" and meta["aperio"]["OriginalWidth"] == "46920"  # first wins
    assert meta["aperio"]["Header"].startswith("Aperio Image Library")
    assert img.spacing("XY") == pytest.approx([0.499, 0.499])  # Aperio MPP (cuCIM reports 1.0)


def test_cache_object(restore_cache: None, pyramid: str) -> None:
    c = CuImage.cache("per_process", memory_capacity=32, record_stat=True)
    assert c.type is CacheType.PerProcess
    assert c.config["memory_capacity"] == 32 and c.config["record_stat"] is True
    assert set(c.config) >= {"type", "memory_capacity", "capacity", "mutex_pool_capacity", "list_padding",
                             "extra_shared_memory_size", "record_stat"}
    assert 0.99 * 32 * MIB <= c.memory_capacity <= 32 * MIB
    img = CuImage(pyramid)
    img.read_region((0, 0), (256, 256))
    img.read_region((0, 0), (256, 256))
    assert (c.hit_count, c.miss_count) == (1, 1) and c.size == 1
    assert c.record() is True and c.record(False) is False
    c.reserve(64)
    assert c.config["memory_capacity"] == 64 and c.size == 0
    assert CuImage.cache("no_cache").type is CacheType.NoCache
    assert CuImage.cache().memory_capacity == 0


def test_preferred_memory_capacity(pyramid: str) -> None:
    assert preferred_memory_capacity(image_size=(1048576, 1048576), tile_size=(256, 256),
                                     patch_size=(256, 256)) == 1536
    img = CuImage(pyramid)
    slide = wsiarray.open(pyramid)
    assert preferred_memory_capacity(img, patch_size=(256, 256)) == \
        wsiarray.preferred_memory_capacity(slide, patch_size=(256, 256))


def test_save_ppm(pyramid: str, tmp_path: Path) -> None:
    region = CuImage(pyramid).read_region((0, 0), (5, 4))
    target = tmp_path / "patch.ppm"
    region.save(target)
    data = target.read_bytes()
    assert data.startswith(b"P6\n5 4\n255\n")
    assert np.array_equal(np.frombuffer(data[-60:], np.uint8).reshape(4, 5, 3), np.asarray(region))


# -- gaps a cuCIM user's code hit (each checked against cuCIM 26.10 and its sources) ----------


def test_a_one_location_result_iterates_over_itself(pyramid: str) -> None:
    img = CuImage(pyramid)
    for workers in (0, 2):
        region = img.read_region([(8, 8)], (16, 16), num_workers=workers)
        items = list(region)
        assert len(items) == 1 and items[0] is region
    assert [r.shape for r in img.read_region((0, 0), (4, 4))] == [[4, 4, 3]]
    with pytest.raises(TypeError):
        iter(img)  # the file itself is not a block of pixels


def test_cache_type_converts_to_int(restore_cache: None) -> None:
    c = CuImage.cache("per_process", memory_capacity=16)
    assert int(c.type) == 1 and int(CacheType.NoCache) == 0 and int(CacheType.SharedMemory) == 2
    assert str(c.type) == "CacheType.PerProcess" and c.type != 1  # as cuCIM's enum
    assert int(CuImage.cache("no_cache").type) == 0


def test_cache_reserve_never_shrinks(restore_cache: None, pyramid: str) -> None:
    c = CuImage.cache("per_process", memory_capacity=64, record_stat=True)
    img = CuImage(pyramid)
    img.read_region((0, 0), (256, 256))
    budget, items = c.memory_capacity, c.capacity
    c.reserve(32)
    assert c.config["memory_capacity"] == 64 and c.memory_capacity == budget and c.capacity == items
    assert c.size == 1  # nothing dropped
    c.reserve(64, capacity=10)
    assert c.capacity == items and c.size == 1
    c.reserve(128)
    assert c.config["memory_capacity"] == 128 and c.memory_capacity > budget
    assert c.config["capacity"] == 128 * MIB // (256 * 256 * 3)  # cuCIM's default for 128 MiB


def test_cache_record_restarts_the_counters(restore_cache: None, pyramid: str) -> None:
    c = CuImage.cache("per_process", memory_capacity=64, record_stat=True)
    img = CuImage(pyramid)
    img.read_region((0, 0), (256, 256))
    img.read_region((0, 0), (256, 256))
    assert (c.hit_count, c.miss_count) == (1, 1)
    assert c.record(False) is False
    assert (c.hit_count, c.miss_count, c.size) == (0, 0, 1)  # counters zeroed, tiles kept
    assert c.record(True) is True
    img.read_region((0, 0), (256, 256))
    assert (c.hit_count, c.miss_count) == (1, 0)
    c.record(True)  # every call restarts them, as cuCIM's
    assert (c.hit_count, c.miss_count) == (0, 0)
    with pytest.raises(ValueError, match="Only 'NoneType' or 'bool'"):
        c.record(1)  # type: ignore[arg-type]


def test_preferred_memory_capacity_defaults_like_cucim(pyramid: str) -> None:
    # tile_size and patch_size default to (256, 256); image_size is needed without img
    assert preferred_memory_capacity(None, (1048576, 1048576), patch_size=(256, 256)) == 1536
    assert preferred_memory_capacity(None, (1048576, 1048576)) == 1536
    with pytest.raises(ValueError, match=r"Please specify 'image_size' parameter"):
        preferred_memory_capacity(None, patch_size=(256, 256))
    img = CuImage(pyramid)  # 1100 wide, 256 tiles: 5 tiles across, 2 rows of tiles for a 256 patch
    assert preferred_memory_capacity(img) == math.ceil(5 * 256 * 256 * 3 * 2 / MIB)
    # with img, its sizes win over the arguments (only patch_size is taken)
    assert preferred_memory_capacity(img, image_size=(10**6, 10**6), tile_size=(16, 16)) == \
        preferred_memory_capacity(img)


def test_dldatatypecode_is_exported(pyramid: str) -> None:
    from wsiarray import compat

    assert "DLDataTypeCode" in compat.__all__
    code = compat.DLDataTypeCode
    assert {name: int(value) for name, value in code.__members__.items()} == {
        "DLInt": 0, "DLUInt": 1, "DLFloat": 2, "DLBfloat": 4}
    assert str(code.DLUInt) == "DLDataTypeCode.DLUInt" and code.DLUInt == 1
    assert CuImage(pyramid).dtype.code == code.DLUInt
    assert DLDataType(code.DLFloat, 32) == DLDataType(2, 32, 1)


def test_error_messages_like_cucim(pyramid: str, tmp_path: Path, data_file: Any) -> None:
    img = CuImage(pyramid)
    invalid = r"^Invalid level \(3\) in the request! \(Should be < 3\)$"
    for read in (lambda: img.read_region((0, 0), (8, 8), level=3),
                 lambda: img.read_region([(0, 0)], (8, 8), level=3, num_workers=2),
                 lambda: img.read_region([(0, 0), (8, 8)], (8, 8), level=3, num_workers=1),
                 lambda: img.read_region(size=(8, 8), level=3)):
        with pytest.raises(ValueError, match=invalid):
            read()
    for read in (lambda: img.read_region(level=3), lambda: img.read_region((0, 0), level=3)):
        with pytest.raises(ValueError, match=r"^'level' should be less than 3$"):
            read()  # without size, cuCIM asks the level for its size first
    for read in (lambda: img.read_region((0, 0), (0, 8)),
                 lambda: img.read_region([(0, 0), (8, 8)], (0, 8), num_workers=1)):
        with pytest.raises(ValueError, match=r"^Invalid size \(0\) in the request! \(Should be > 0\)$"):
            read()
    missing = str(tmp_path / "missing.svs")
    with pytest.raises(CuImageOpenError) as opened:
        CuImage(missing)
    assert str(opened.value) == f"Cannot open {missing}!" and opened.value.__cause__ is not None
    not_tiff = tmp_path / "not-a-slide.tif"
    not_tiff.write_text("hello")
    with pytest.raises(CuImageOpenError, match=r"^Cannot load .*not-a-slide\.tif!$"):
        CuImage(not_tiff)
    unopenable = data_file("bad/unopenable.tiff")  # wsiarray refuses it at open: the same class
    with pytest.raises(CuImageOpenError, match=r"^Cannot load "):
        CuImage(unopenable)
    region = img.read_region((0, 0), (16, 12))
    with pytest.raises(ValueError, match=r"^Invalid location/size \(it exceeds the image width 16\)$"):
        region.read_region((10, 0), (8, 4))
    with pytest.raises(ValueError, match=r"^Invalid location/size \(it exceeds the image height 12\)$"):
        region.read_region((0, 10), (4, 4))
    with pytest.raises(ValueError, match=r"^Invalid location \(-1\) in the request! \(Should be >= 0\)$"):
        region.read_region((-1, 0), (4, 4))
    with pytest.raises(ValueError, match=r"^'level' should be less than 1$"):
        region.read_region(level=1)
    batch = next(img.read_region([(0, 0), (8, 8)], (8, 8), batch_size=2, num_workers=1))
    with pytest.raises(RuntimeError, match=r"^\[Error\] The image is not in YXC format! \(NYXC\)$"):
        batch.read_region((0, 0), (2, 2))
    img.close()
    with pytest.raises(RuntimeError, match=r"^\[Error\] The image file is closed!$"):
        img.read_region((0, 0), (8, 8))


def test_unitless_resolution_is_the_spacing(tmp_path: Path) -> None:
    img = CuImage(write_unitless_pyramid(tmp_path / "unitless.tif"))
    assert img.spacing() == [36.0, 72.0, 1.0] and img.spacing_units() == ["", "", "color"]
    assert img.metadata["tiff"]["resolution_unit"] == ""
    assert (img.metadata["tiff"]["x_resolution"], img.metadata["tiff"]["y_resolution"]) == (72.0, 36.0)
    # levels: multiplied by the downsample (the documented difference)
    assert img.read_region((0, 0), (8, 8), level=1).spacing() == [72.0, 144.0, 1.0]


# -- the two kinds of CuImage ----------------------------------------------------------------


def test_file_and_pixel_kinds(pyramid: str) -> None:
    from wsiarray.compat import ArrayCuImage, FileCuImage

    img = CuImage(pyramid)
    region = img.read_region((0, 0), (8, 8))
    assert type(img) is FileCuImage and isinstance(img, CuImage) and not isinstance(img, ArrayCuImage)
    assert type(region) is ArrayCuImage and isinstance(region, CuImage)
    assert type(img).__name__ == type(region).__name__ == "CuImage"  # cuCIM's one class name
    block = ArrayCuImage(np.arange(24, dtype=np.uint8).reshape(2, 4, 3), path="x")
    assert block.shape == [2, 4, 3] and block.resolutions["level_dimensions"] == ((4, 2),)
    assert block.spacing_units() == ["", "", "color"] and block.channel_names == ["R", "G", "B"]
    assert np.array_equal(np.asarray(block.read_region((1, 0), (2, 2))), np.asarray(block)[:2, 1:3])
    assert pickle.loads(pickle.dumps(block)).path == "x"
    with pytest.raises(TypeError):
        CuImage()  # type: ignore[call-arg]


def test_metadata_from_the_format_layer(data_file: Any) -> None:
    source = Path(wsiarray.compat.__file__).read_text()
    tree = ast.parse(source)
    imported = [alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names]
    imported += [node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)]
    assert not any("tifffile" in name for name in imported) and "TiffFile(" not in source
    path = data_file("aperio/CMU-1-Small-Region.svs")
    slide = wsiarray.open(path)
    descriptions = slide.format_info.associated_descriptions
    assert sorted(descriptions) == ["label", "macro", "thumbnail"]
    assert CuImage(path).associated_image("macro").raw_metadata == descriptions["macro"]


def test_one_aperio_parser_two_rules(tmp_path: Path) -> None:
    from wsiarray.formats.aperio import split_description

    description = "Aperio Image Library v10 |AppMag = 20|MPP = 0.5|AppMag = 40|junk| K=V "
    assert split_description(description) == (
        "Aperio Image Library v10 ", [("AppMag", "20"), ("MPP", "0.5"), ("AppMag", "40"), ("K", "V")])
    path = tmp_path / "repeated.svs"
    tifffile.imwrite(path, texture(256, 256, 3, "uint8", seed=1), tile=(256, 256), photometric="rgb",
                     compression="jpeg", description=description)
    img = CuImage(path)
    assert img.metadata["aperio"]["AppMag"] == "20"  # cuCIM: the first value
    assert wsiarray.open(path).properties["aperio.AppMag"] == "40"  # OpenSlide: the last
    assert img.metadata["aperio"]["Header"] == "Aperio Image Library v10 "
