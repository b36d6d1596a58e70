"""``wsiarray.monai.WSIReader`` against MONAI's own readers, in MONAI's four entry points.

MONAI's ``TiffFileWSIReader`` is the reference for pixels, sizes and metadata;
``OpenSlideWSIReader`` for the resolution logic (mpp, power), which the tifffile
reader does not have for Aperio files. Needs MONAI (and so PyTorch): the test
extra installs both.
"""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from wsitest import SyntheticFactory, SyntheticSpec, assert_pixels_equal

import wsiarray

pytest.importorskip("monai", reason="MONAI is not installed (optional: the 'monai' extra)")
import torch
from monai.data import (
    DataLoader,
    MaskedPatchWSIDataset,
    PatchWSIDataset,
    SlidingPatchWSIDataset,
    TiffFileWSIReader,
)
from monai.data.wsi_reader import OpenSlideWSIReader
from monai.transforms import LoadImage

from conftest import READABLE_FILES
from wsiarray.monai import WSIReader

# A main-chain pyramid (NewSubfileType 1 pages), which MONAI's tifffile reader counts as levels.
CHAIN = SyntheticSpec("monai-chain", width=600, height=400, compression="jpeg", photometric="ycbcr",
                      subsampling=(2, 2), tile=(128, 128), pyramid="chain", steps=(2, 2))
RGBA = SyntheticSpec("monai-rgba", width=300, height=200, samples=4, compression="zlib", tile=(64, 64))
GRAY = SyntheticSpec("monai-gray", width=300, height=200, samples=1, dtype="uint16", compression="zlib",
                      photometric="minisblack")


@pytest.fixture(scope="module")
def chain(synthetic: SyntheticFactory) -> str:
    return synthetic(CHAIN)


def both(path: str, **options: object) -> tuple[tuple[WSIReader, object], tuple[TiffFileWSIReader, object]]:
    ours, theirs = WSIReader(**options), TiffFileWSIReader(**options)  # type: ignore[arg-type]
    return (ours, ours.read(path)), (theirs, theirs.read(path))


def assert_same_data(path: str, what: str, **request: object) -> None:
    """Our ``get_data`` equals the tifffile reader's: pixels, and metadata but the backend."""
    (ours, a), (theirs, b) = both(path)
    got, meta = ours.get_data(a, **request)
    want, want_meta = theirs.get_data(b, **request)
    assert_pixels_equal(got, want, what)
    assert meta.pop("backend") == "wsiarray" and want_meta.pop("backend") == "tifffile"
    assert meta.keys() == want_meta.keys(), what
    # The path names the same file; tifffile's file handle resolves symbolic links, MONAI's
    # cuCIM and OpenSlide readers (and ours) give the absolute path as opened.
    assert os.path.realpath(meta.pop("path")) == os.path.realpath(want_meta.pop("path")), what
    for key, value in want_meta.items():
        assert np.array_equal(meta[key], value), f"{what}: metadata {key}: {meta[key]!r} != {value!r}"


@settings(max_examples=40)
@given(data=st.data())
def test_patches_equal_tifffile_reader(chain: str, data: st.DataObject) -> None:
    """Random patches inside the image, every level; level-0 locations on the level's grid above level 0
    (MONAI's tifffile reader rounds level-0 locations to the level, cuCIM and OpenSlide floor)."""
    level = data.draw(st.integers(0, 2), "level")
    scale = 2**level
    w, h = CHAIN.width // scale, CHAIN.height // scale
    height, width = data.draw(st.integers(1, h), "height"), data.draw(st.integers(1, w), "width")
    row, col = data.draw(st.integers(0, h - height), "row"), data.draw(st.integers(0, w - width), "col")
    assert_same_data(chain, f"level {level} ({row}, {col}) {height}x{width}",
                     location=(row * scale, col * scale), size=(height, width), level=level)


def test_patch_equals_native_read_everywhere(chain: str) -> None:
    """Off-grid, partly or wholly outside: the slide's own ``read_region`` (OpenSlide's floor rule, fill)."""
    reader = WSIReader(channel_dim=-1)
    wsi = reader.read(chain)
    slide = wsiarray.open(chain)
    rng = np.random.default_rng(3)
    for _ in range(30):
        level = int(rng.integers(0, 3))
        row, col = int(rng.integers(-50, 420)), int(rng.integers(-50, 620))
        size = (int(rng.integers(1, 90)), int(rng.integers(1, 90)))
        if row > 400 or col > 600:
            continue  # MONAI's get_data refuses locations beyond the image
        got, _ = reader.get_data(wsi, location=(row, col), size=size, level=level)
        want = slide.read_region((col, row), size[::-1], level)
        assert_pixels_equal(got, want, f"level {level} ({row}, {col}) {size}")


def test_whole_levels_and_sizes_equal_tifffile_reader(chain: str) -> None:
    (ours, a), (theirs, b) = both(chain)
    assert ours.get_level_count(a) == theirs.get_level_count(b) == 3
    for level in range(3):
        assert ours.get_size(a, level) == theirs.get_size(b, level)
        assert ours.get_downsample_ratio(a, level) == theirs.get_downsample_ratio(b, level)
        assert_same_data(chain, f"level {level}", level=level)
    assert ours.get_file_path(a) == theirs.get_file_path(b)


def _monai_readable(path: str) -> bool:
    """Files MONAI's tifffile reader reads as (h, w, 3 or 4) at level 0."""
    try:
        reader = TiffFileWSIReader()
        image, _ = reader.get_data(reader.read(path), level=0)
    except Exception:
        return False
    return image.ndim == 3


@pytest.mark.needs_data
def test_real_slides_equal_tifffile_reader() -> None:
    """Every shared slide both read: level 0 whole, and each level the tifffile reader counts the same way."""
    compared = []
    for path in map(str, READABLE_FILES):
        if path.endswith(".dcm") or os.path.isdir(path) or not _monai_readable(path):
            continue
        (ours, a), (theirs, b) = both(path)
        assert ours.get_size(a, 0) == theirs.get_size(b, 0), path
        assert_same_data(path, f"{path} level 0", level=0)
        for level in range(1, ours.get_level_count(a)):
            # MONAI's tifffile reader takes pages[level] as the level (an SVS thumbnail, an OME SubIFD's
            # absence); compare where that page is the level
            if level < theirs.get_level_count(b) and ours.get_size(a, level) == theirs.get_size(b, level):
                assert_same_data(path, f"{path} level {level}", level=level)
        compared.append(os.path.basename(path))
    assert "CMU-1-Small-Region.svs" in compared, compared


def test_resolution_like_openslide_reader(doctest_slides: dict[str, str]) -> None:
    """mpp, power and level choice as MONAI's OpenSlide reader gives them (Aperio: 0.25 µm/px, 40x)."""
    path = doctest_slides["svs_path"]
    ours, theirs = WSIReader(), OpenSlideWSIReader()
    a, b = ours.read(path), theirs.read(path)
    for level in range(2):
        assert ours.get_mpp(a, level) == pytest.approx(theirs.get_mpp(b, level))
        assert ours.get_power(a, level) == pytest.approx(theirs.get_power(b, level))
    for request, level in [({"mpp": 0.5}, 1), ({"mpp": (0.25, 0.25)}, 0), ({"power": 20}, 1),
                           ({"power": 40}, 0), ({"level": 1}, 1)]:
        assert ours.get_valid_level(a, **{"level": None, "mpp": None, "power": None, **request}) == level
        got, meta = ours.get_data(a, location=(100, 200), size=(32, 48), **request)  # type: ignore[arg-type]
        want, _ = theirs.get_data(b, location=(100, 200), size=(32, 48), **request)  # type: ignore[arg-type]
        assert meta["level"] == level and got.shape == want.shape == (3, 32, 48)
    assert WSIReader(power=20).get_data(a, size=(8, 8))[1]["level"] == 1  # the reader's own default
    with pytest.raises(ValueError, match="does not exist"):
        ours.get_data(a, size=(8, 8), mpp=0.33)
    with pytest.raises(wsiarray.ArgumentError, match="objective power"):
        WSIReader().get_power(WSIReader().read(doctest_slides["ome_path"]), 0)


def test_wsi_at_mpp(doctest_slides: dict[str, str]) -> None:
    path = doctest_slides["svs_path"]  # 1024x768 at 0.25, 512x384 at 0.5
    reader = WSIReader(channel_dim=-1)
    wsi = reader.read(path)
    slide = wsiarray.open(path)
    assert_pixels_equal(reader.get_wsi_at_mpp(wsi, 0.51), slide.read_region(level=1), "a level within 5%")
    at_one = reader.get_wsi_at_mpp(wsi, 1.0)
    assert_pixels_equal(at_one, slide.read_region(mpp=1.0), "area average at 1 µm/px")
    assert at_one.shape == (192, 256, 3)
    assert WSIReader(mode="RGBA").get_wsi_at_mpp(wsi, (1.0, 0.5)).shape == (4, 192, 512)


def test_channel_dim_dtype_mode_device(chain: str, synthetic: SyntheticFactory) -> None:
    slide = wsiarray.open(chain)
    want = slide.read_region((30, 20), (40, 24))  # (24, 40, 3)
    for options, check in [
        ({}, lambda p: assert_pixels_equal(p, want.transpose(2, 0, 1), "channel first")),
        ({"channel_dim": -1}, lambda p: assert_pixels_equal(p, want, "channel last")),
        ({"dtype": np.float32}, lambda p: assert_pixels_equal(p, want.transpose(2, 0, 1).astype(np.float32),
                                                              "float32")),
        ({"dtype": torch.float16, "device": "cpu"},
         lambda p: (isinstance(p, torch.Tensor) and p.dtype == torch.float16
                    and np.array_equal(p.numpy(), want.transpose(2, 0, 1).astype(np.float16)))),
        ({"mode": "RGBA", "channel_dim": 2},
         lambda p: assert_pixels_equal(p, np.dstack([want, np.full(want.shape[:2], 255, np.uint8)]), "RGBA")),
        ({"num_workers": 2}, lambda p: assert_pixels_equal(p, want.transpose(2, 0, 1), "2 threads")),
    ]:
        reader = WSIReader(**options)  # type: ignore[arg-type]
        patch, meta = reader.get_data(reader.read(chain), location=(20, 30), size=(24, 40))
        assert check(patch) in (None, True), options
        assert meta["original_channel_dim"] == (options.get("channel_dim", 0) % 3)
        assert list(meta["spatial_shape"]) == [24, 40]
    rgba = synthetic(RGBA)
    pixels = wsiarray.open(rgba).read_region((5, 6), (20, 10))
    reader = WSIReader(channel_dim=-1)
    got = reader.get_data(reader.read(rgba), location=(6, 5), size=(10, 20))[0]
    assert_pixels_equal(got, pixels[..., :3], "RGB mode drops alpha")
    reader = WSIReader(channel_dim=-1, mode="RGBA")
    assert_pixels_equal(reader.get_data(reader.read(rgba), location=(6, 5), size=(10, 20))[0], pixels, "RGBA")



def test_channels_first_patches_of_rgba_slides(synthetic: SyntheticFactory) -> None:
    # Channels first (MONAI's default) comes from one native pass that also drops alpha in "RGB" mode.
    rgba = synthetic(RGBA)
    pixels = wsiarray.open(rgba).read_region((5, 6), (20, 10))
    cases = [({}, pixels[..., :3]), ({"mode": "RGBA"}, pixels), ({"channel_dim": -3}, pixels[..., :3])]
    for options, want in cases:
        reader = WSIReader(**options)  # type: ignore[arg-type]
        got = reader.get_data(reader.read(rgba), location=(6, 5), size=(10, 20))[0]
        assert got.flags.c_contiguous, options
        assert_pixels_equal(got, want.transpose(2, 0, 1), str(options))

def test_several_files_and_bad_input(chain: str, synthetic: SyntheticFactory,
                                     doctest_slides: dict[str, str]) -> None:
    reader = WSIReader()
    wsis = reader.read([chain, chain])
    assert isinstance(wsis, list) and len(wsis) == 2
    stacked, meta = reader.get_data(wsis, location=(0, 0), size=(16, 16))
    assert stacked.shape == (6, 16, 16) and meta["count"] == [1, 1]
    with pytest.raises(wsiarray.ArgumentError, match="3 or 4 channels"):
        reader.get_data(reader.read(synthetic(GRAY)), size=(8, 8))
    with pytest.raises(wsiarray.ArgumentError, match="unknown WSIReader arguments"):
        WSIReader(backend="cucim")
    with pytest.raises(wsiarray.ArgumentError, match="mode"):
        WSIReader(mode="L")
    with pytest.raises(wsiarray.ArgumentError, match="mode"):
        reader.get_data(reader.read(chain), size=(8, 8), mode="L")
    with pytest.raises(wsiarray.ArgumentError, match="num_workers"):
        WSIReader(num_workers=-1)
    with pytest.raises(wsiarray.OpenError):
        reader.read(os.path.join(os.path.dirname(chain), "missing.tif"))
    with pytest.raises(wsiarray.ArgumentError, match="pixel size"):
        reader.get_data(reader.read(synthetic(GRAY)), size=(8, 8), mpp=1.0)
    assert reader.verify_suffix(doctest_slides["svs_path"]) and not reader.verify_suffix("a.png")
    fill = WSIReader(fill=255, channel_dim=-1)
    outside, _ = fill.get_data(fill.read(chain), location=(390, 590), size=(20, 20))
    assert (outside[10:, :] == 255).all() and (outside[:, 10:] == 255).all()


# -- MONAI's entry points -------------------------------------------------------------


def _locations(count: int, seed: int = 0) -> list[tuple[int, int]]:
    rng = np.random.default_rng(seed)
    return [(int(rng.integers(0, 400 - 32)), int(rng.integers(0, 600 - 48))) for _ in range(count)]


@pytest.mark.parametrize("as_instance", [False, True], ids=["class", "instance"])
def test_patch_wsi_dataset(chain: str, as_instance: bool) -> None:
    data = [{"image": chain, "location": list(loc), "label": i} for i, loc in enumerate(_locations(6))]
    reader = WSIReader(level=0) if as_instance else WSIReader
    ds = PatchWSIDataset(data, patch_size=(32, 48), patch_level=0, center_location=False, reader=reader)
    tiff = PatchWSIDataset(data, patch_size=(32, 48), patch_level=0, center_location=False, reader="tifffile")
    for i in range(len(data)):
        got, want = ds[i], tiff[i]
        assert_pixels_equal(got["image"].numpy(), want["image"].numpy(), f"patch {i}")
        assert got["label"] == want["label"] == i
        assert got["image"].meta["backend"] == "wsiarray"
        assert np.array_equal(got["image"].meta["location"], want["image"].meta["location"])


def test_sliding_patch_wsi_dataset(chain: str) -> None:
    kwargs = {"patch_size": (64, 96), "patch_level": 1, "overlap": 0.25}
    ds = SlidingPatchWSIDataset([{"image": chain}], reader=WSIReader, **kwargs)
    tiff = SlidingPatchWSIDataset([{"image": chain}], reader="tifffile", **kwargs)
    assert len(ds) == len(tiff) > 4
    slide = wsiarray.open(chain)
    for i in range(len(ds)):
        got, want = ds[i]["image"], tiff[i]["image"]
        row, col = (int(v) for v in got.meta["location"])
        assert_pixels_equal(got.numpy(), slide.read_region((col, row), (96, 64), 1).transpose(2, 0, 1),
                            f"window {i}")
        if got.shape == want.shape:  # the tifffile reader cuts windows at the image's edge short
            assert_pixels_equal(got.numpy(), want.numpy(), f"window {i} vs tifffile")


def test_masked_patch_wsi_dataset(chain: str) -> None:
    kwargs = {"patch_size": 16, "patch_level": 0, "mask_level": 2}
    ds = MaskedPatchWSIDataset([{"image": chain}], reader=WSIReader(), **kwargs)
    tiff = MaskedPatchWSIDataset([{"image": chain}], reader="tifffile", **kwargs)
    assert len(ds) == len(tiff) > 0
    for i in list(range(0, len(ds), max(1, len(ds) // 8))):
        got, want = ds[i]["image"], tiff[i]["image"]
        assert np.array_equal(got.meta["mask_location"], want.meta["mask_location"])
        if got.shape == want.shape:
            assert_pixels_equal(got.numpy(), want.numpy(), f"masked patch {i}")


@pytest.mark.parametrize("reader", [WSIReader, WSIReader(), "wsiarray.monai.WSIReader"],
                         ids=["class", "instance", "name"])
def test_load_image(chain: str, reader: object) -> None:
    image = LoadImage(reader=reader, image_only=True, dtype=np.uint8)(chain)
    want = wsiarray.open(chain).read_region(level=0)
    assert_pixels_equal(image.numpy(), want.transpose(2, 0, 1), "LoadImage")
    assert image.meta["backend"] == "wsiarray" and image.meta["filename_or_obj"] == chain


def test_dataloader_with_two_workers(chain: str) -> None:
    """MONAI's DataLoader (fork workers on Linux) over PatchWSIDataset: the slides travel as recipes."""
    locations = _locations(24, seed=5)
    data = [{"image": chain, "location": list(loc), "label": 0} for loc in locations]
    ds = PatchWSIDataset(data, patch_size=(32, 48), center_location=False, reader=WSIReader)
    ds[0]  # the parent opens the slide first: workers inherit the handle, as in training scripts
    loader = DataLoader(ds, batch_size=8, num_workers=2, shuffle=False)
    got = torch.cat([batch["image"].as_tensor() for batch in loader]).numpy()
    slide = wsiarray.open(chain)
    want = np.stack([slide.read_region((c, r), (48, 32)).transpose(2, 0, 1) for r, c in locations])
    assert_pixels_equal(got, want, "DataLoader batches")


def test_import_wsiarray_does_not_import_monai() -> None:
    code = "import sys, wsiarray; print(sorted({'monai', 'torch'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
