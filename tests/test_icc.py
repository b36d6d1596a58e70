"""ICC profiles: ``Slide.icc_profile`` and ``apply_icc=True`` (sRGB pixels through littleCMS).

The slides here embed ICC profiles the test writes itself: version 2 matrix/TRC
RGB profiles (a header, the tag table, colorants, white point, one gamma curve),
made by hand because Pillow can build no RGB profile but sRGB. Every pixel
``apply_icc=True`` returns is compared with a direct littleCMS transform
(Pillow's ``ImageCms`` on a PIL image, the documented way) of tifffile's pixels.
"""

from __future__ import annotations

import copy
import pickle
import struct
import subprocess
import sys
import threading
from io import BytesIO
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tifffile
import xarray as xr
from wsitest import reference_level, texture

import wsiarray
from wsiarray.dask import to_dask

Image = pytest.importorskip("PIL.Image")
ImageCms = pytest.importorskip("PIL.ImageCms")

ICC_TAG = 34675


def _s15(value: float) -> bytes:
    return struct.pack(">i", round(value * 65536))


def _xyz(x: float, y: float, z: float) -> bytes:
    return b"XYZ " + bytes(4) + _s15(x) + _s15(y) + _s15(z)


def matrix_trc_profile(red: tuple[float, float, float], green: tuple[float, float, float],
                       blue: tuple[float, float, float], gamma: float, name: str) -> bytes:
    """An ICC v2 RGB display profile: D50 colorants ``red``/``green``/``blue``, one gamma for all channels."""
    text = name.encode("ascii") + b"\0"
    # textDescriptionType: ASCII, then empty Unicode and ScriptCode parts
    desc = b"desc" + bytes(4) + struct.pack(">I", len(text)) + text + bytes(8) + bytes(3) + bytes(67)
    curve = b"curv" + bytes(4) + struct.pack(">IH", 1, round(gamma * 256)) + bytes(2)
    tags = [(b"desc", desc), (b"wtpt", _xyz(0.9642, 1.0, 0.8249)), (b"rXYZ", _xyz(*red)),
            (b"gXYZ", _xyz(*green)), (b"bXYZ", _xyz(*blue)), (b"rTRC", curve), (b"gTRC", curve),
            (b"bTRC", curve), (b"cprt", b"text" + bytes(4) + b"none\0\0\0\0")]
    start = 128 + 4 + 12 * len(tags)
    table, data = b"", b""
    for signature, body in tags:
        body += bytes(-len(body) % 4)
        table += signature + struct.pack(">II", start + len(data), len(body))
        data += body
    header = (struct.pack(">I", start + len(data)) + bytes(4) + struct.pack(">I", 0x02100000)
              + b"mntrRGB XYZ " + struct.pack(">6H", 2024, 1, 1, 0, 0, 0) + b"acsp" + bytes(24)
              + struct.pack(">I", 0) + _s15(0.9642) + _s15(1.0) + _s15(0.8249) + bytes(48))
    assert len(header) == 128
    return header + struct.pack(">I", len(tags)) + table + data


#: Adobe RGB (1998)-like primaries (D50-adapted), gamma 2.2: visibly unlike sRGB.
WIDE = matrix_trc_profile((0.6097, 0.3111, 0.0195), (0.2053, 0.6257, 0.0609), (0.1492, 0.0632, 0.7446),
                          2.2, "wsiarray test wide RGB")
#: Another profile: sRGB-like primaries, gamma 1.8.
FLAT = matrix_trc_profile((0.4361, 0.2225, 0.0139), (0.3851, 0.7169, 0.0971), (0.1431, 0.0606, 0.7141),
                          1.8, "wsiarray test gamma 1.8")


def direct_srgb(pixels: np.ndarray, profile: bytes) -> np.ndarray:
    """``pixels`` (h, w, 3 or 4) uint8 through littleCMS to sRGB, the plain Pillow way."""
    mode = "RGB" if pixels.shape[-1] == 3 else "RGBA"
    transform = ImageCms.buildTransform(ImageCms.ImageCmsProfile(BytesIO(profile)),
                                        ImageCms.createProfile("sRGB"), mode, mode)
    return np.asarray(ImageCms.applyTransform(Image.fromarray(np.ascontiguousarray(pixels), mode), transform))


def write_slide(path: Path, levels: list[np.ndarray], profile: bytes | None, *, compression: str = "zlib",
                tile: tuple[int, int] = (64, 64)) -> str:
    """A pyramid (SubIFD levels) with ``profile`` in level 0's InterColorProfile tag."""
    with tifffile.TiffWriter(path) as tif:
        for i, array in enumerate(levels):
            kwargs: dict[str, Any] = {"tile": tile, "compression": compression, "metadata": None,
                                      "photometric": "rgb" if array.ndim == 3 and array.shape[2] >= 3
                                      else "minisblack"}
            if array.ndim == 3 and array.shape[2] == 4:
                kwargs["extrasamples"] = ["unassalpha"]
            if i == 0 and len(levels) > 1:
                kwargs["subifds"] = len(levels) - 1
            if i > 0:
                kwargs["subfiletype"] = 1
            if i == 0 and profile is not None:
                kwargs["extratags"] = [(ICC_TAG, 7, len(profile), profile, True)]
            tif.write(array, **kwargs)
    return str(path)


@pytest.fixture(scope="module")
def slides(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    folder = tmp_path_factory.mktemp("icc")
    rgb = texture(300, 410, 3, "uint8", seed=21)
    rgba = texture(200, 260, 4, "uint8", seed=22)
    return {
        "wide": write_slide(folder / "wide.tif", [rgb, rgb[::2, ::2].copy()], WIDE),
        "flat": write_slide(folder / "flat.tif", [rgb[::-1].copy()], FLAT),
        "jpeg": write_slide(folder / "jpeg.tif", [rgb, rgb[::2, ::2].copy()], WIDE, compression="jpeg",
                            tile=(128, 128)),
        "rgba": write_slide(folder / "rgba.tif", [rgba], WIDE),
        "plain": write_slide(folder / "plain.tif", [rgb], None),
        "uint16": write_slide(folder / "uint16.tif", [texture(64, 64, 3, "uint16", seed=23)], WIDE),
        "uint16-plain": write_slide(folder / "uint16-plain.tif", [texture(64, 64, 3, "uint16", seed=23)],
                                    None),
        "gray": write_slide(folder / "gray.tif", [texture(64, 64, 1, "uint8", seed=24)[..., 0]], WIDE),
        "lab": write_slide(folder / "lab.tif", [rgb[:64, :64].copy()],
                           ImageCms.ImageCmsProfile(ImageCms.createProfile("LAB")).tobytes()),
        "corrupt": write_slide(folder / "corrupt.tif", [rgb[:64, :64].copy()], b"not an ICC profile" * 8),
    }


def _srgb_level(path: str, level: int, profile: bytes) -> np.ndarray:
    return direct_srgb(reference_level(path, level), profile)


# -- the profile --------------------------------------------------------------------------------------


def test_icc_profile_is_the_tags_bytes(slides: dict[str, str]) -> None:
    with wsiarray.open(slides["wide"]) as slide:
        assert slide.icc_profile == WIDE
        assert slide.apply_icc is False
        assert slide.properties["openslide.icc-size"] == str(len(WIDE))
    with wsiarray.open(slides["plain"]) as slide:
        assert slide.icc_profile is None
        assert slide.associated_icc_profiles == {}


def test_the_handmade_profiles_change_pixels() -> None:
    """The test profiles really move colours, so equality below is not equality of no-ops."""
    pixels = texture(32, 32, 3, "uint8", seed=1)
    assert (direct_srgb(pixels, WIDE) != pixels).mean() > 0.5
    assert (direct_srgb(pixels, FLAT) != pixels).mean() > 0.5
    assert not np.array_equal(direct_srgb(pixels, WIDE), direct_srgb(pixels, FLAT))


# -- pixels equal a direct littleCMS transform -------------------------------------------------------


@pytest.mark.parametrize("name", ["wide", "flat", "jpeg", "rgba"])
@pytest.mark.parametrize("workers", [1, 3])
def test_apply_icc_equals_a_direct_transform_of_tifffiles_pixels(slides: dict[str, str], name: str,
                                                                  workers: int) -> None:
    path = slides[name]
    profile = WIDE if name != "flat" else FLAT
    with wsiarray.open(path) as slide:
        for level in range(slide.level_count):
            want = _srgb_level(path, level, profile)
            got = slide.read_region(level=level, num_workers=workers, apply_icc=True)
            np.testing.assert_array_equal(got, want)
            # the stored pixels are still there without apply_icc
            np.testing.assert_array_equal(slide.read_region(level=level), reference_level(path, level))


def test_rgba_keeps_alpha(slides: dict[str, str]) -> None:
    with wsiarray.open(slides["rgba"], apply_icc=True) as slide:
        got = slide.read_region()
    stored = reference_level(slides["rgba"], 0)
    np.testing.assert_array_equal(got[..., 3], stored[..., 3])
    assert (got[..., :3] != stored[..., :3]).any()


def test_bands_split_across_threads_equal_one_transform(tmp_path: Path) -> None:
    """A region larger than one band (1 MiB of 4-byte pixels), read with several workers."""
    rgb = texture(700, 1100, 3, "uint8", seed=5)
    path = write_slide(tmp_path / "big.tif", [rgb], WIDE, tile=(256, 256))
    want = direct_srgb(rgb, WIDE)
    with wsiarray.open(path) as slide:
        for workers in (1, 2, 4):
            np.testing.assert_array_equal(slide.read_region(num_workers=workers, apply_icc=True), want)


# -- every entry point: regions, batches, thumbnails, associated images, arrays -------------------


def test_open_sets_the_default_and_reads_override_it(slides: dict[str, str]) -> None:
    path = slides["wide"]
    want, stored = _srgb_level(path, 0, WIDE), reference_level(path, 0)
    with wsiarray.open(path, apply_icc=True) as slide:
        assert slide.apply_icc is True
        np.testing.assert_array_equal(slide.read_region((0, 0), (410, 300)), want)
        np.testing.assert_array_equal(slide.read_region((0, 0), (410, 300), apply_icc=False), stored)
        np.testing.assert_array_equal(slide.read_level_region(0, (5, 7), (50, 40)), want[7:47, 5:55])
        np.testing.assert_array_equal(slide.read_level_region(0, (5, 7), (50, 40), apply_icc=np.False_),
                                      stored[7:47, 5:55])
    with wsiarray.open(path) as slide:
        np.testing.assert_array_equal(slide.read_region((0, 0), (410, 300)), stored)
        np.testing.assert_array_equal(slide.read_region((0, 0), (410, 300), apply_icc=np.True_), want)


def test_regions_equal_the_transformed_level(slides: dict[str, str]) -> None:
    path = slides["wide"]
    with wsiarray.open(path) as slide:
        for level in (0, 1):
            want = _srgb_level(path, level, WIDE)
            h, w = want.shape[:2]
            ds = slide.level_downsamples[level]
            boxes = [(0, 0, 17, 9), (33, 21, 64, 64), (w - 10, h - 5, 10, 5), (1, 2, 1, 1)]
            for x, y, width, height in boxes:
                got = slide.read_region((int(x * ds), int(y * ds)), (width, height), level, apply_icc=True)
                np.testing.assert_array_equal(got, want[y:y + height, x:x + width])
                out = np.empty((height, width, 3), np.uint8)
                assert slide.read_level_region(level, (x, y), (width, height), out=out, apply_icc=True) is out
                np.testing.assert_array_equal(out, want[y:y + height, x:x + width])
        # pixels outside the image are the fill colour, transformed like any other pixel
        got = slide.read_region((-8, -8), (16, 16), fill=200, apply_icc=True)
        plain = slide.read_region((-8, -8), (16, 16), fill=200)
        np.testing.assert_array_equal(got, direct_srgb(plain, WIDE))


@pytest.mark.parametrize("batch_size", [1, 3, 8])
@pytest.mark.parametrize("shuffle", [False, True])
def test_batches_equal_single_reads(slides: dict[str, str], batch_size: int, shuffle: bool) -> None:
    path = slides["jpeg"]
    locations = [(0, 0), (100, 64), (377, 250), (-10, 290), (200, 3), (64, 128), (5, 5)]
    with wsiarray.open(path) as slide:
        singles = {loc: slide.read_region(loc, (48, 40), apply_icc=True) for loc in locations}
        batches = slide.read_region(locations, (48, 40), batch_size=batch_size, shuffle=shuffle, seed=3,
                                    num_workers=2, apply_icc=True)
        got = np.concatenate(list(batches))
    order = np.random.default_rng(3).permutation(len(locations)) if shuffle else np.arange(len(locations))
    for patch, index in zip(got, order, strict=True):
        np.testing.assert_array_equal(patch, singles[locations[index]])


def test_read_regions_transforms_each_patch_with_its_slides_profile(slides: dict[str, str]) -> None:
    wide, flat, plain = slides["wide"], slides["flat"], slides["plain"]
    with wsiarray.open(wide, apply_icc=True) as by_default:
        items = [(wide, (10, 10)), (flat, (20, 30)), (plain, (0, 0)), (flat, (100, 100)),
                 (by_default, (50, 60))]
        want = {
            0: _srgb_level(wide, 0, WIDE)[10:42, 10:42],
            1: _srgb_level(flat, 0, FLAT)[30:62, 20:52],
            2: reference_level(plain, 0)[0:32, 0:32],  # no profile: as stored
            3: _srgb_level(flat, 0, FLAT)[100:132, 100:132],
            4: _srgb_level(wide, 0, WIDE)[60:92, 50:82],
        }
        for batch_size in (1, 2, 5):
            got = np.concatenate(list(wsiarray.read_regions(items, (32, 32), batch_size=batch_size,
                                                            apply_icc=True)))
            for index, patch in enumerate(got):
                np.testing.assert_array_equal(patch, want[index], err_msg=f"patch {index}")
        # apply_icc=None: each slide's own setting (paths open without it)
        got = np.concatenate(list(wsiarray.read_regions(items, (32, 32), batch_size=5)))
        np.testing.assert_array_equal(got[4], want[4])
        np.testing.assert_array_equal(got[0], reference_level(wide, 0)[10:42, 10:42])


def test_thumbnail_is_transformed_after_scaling(slides: dict[str, str]) -> None:
    with wsiarray.open(slides["wide"]) as slide:
        plain = slide.get_thumbnail((100, 100))
        np.testing.assert_array_equal(slide.get_thumbnail((100, 100), apply_icc=True),
                                      direct_srgb(plain, WIDE))
    with wsiarray.open(slides["wide"], apply_icc=True) as slide:
        np.testing.assert_array_equal(slide.get_thumbnail((100, 100)), direct_srgb(plain, WIDE))
        np.testing.assert_array_equal(slide.get_thumbnail((100, 100), apply_icc=False), plain)


def _write_svs_with_profiles(path: Path) -> None:
    """Aperio layout with a profile on level 0 (WIDE) and on the label (FLAT), none on the macro."""
    header = "Aperio Image Library v12.0.15\r\n512x384 [0,0 512x384] (256x256) JPEG/RGB Q=70"
    with tifffile.TiffWriter(path) as tw:
        def write(array: np.ndarray, description: str, profile: bytes | None = None, **kwargs: Any) -> None:
            extratags = [(ICC_TAG, 7, len(profile), profile, True)] if profile else []
            tw.write(array, photometric="rgb", description=description, metadata=None, extratags=extratags,
                     **kwargs)

        write(texture(384, 512, 3, "uint8", seed=31), f"{header}|AppMag = 20|MPP = 0.5", WIDE,
              tile=(256, 256), compression="jpeg")
        write(texture(96, 128, 3, "uint8", seed=32), "Aperio Image Library v12.0.15\n512x384 -> 128x96 - ",
              rowsperstrip=32)
        write(texture(80, 100, 3, "uint8", seed=33), "Aperio Image Library v12.0.15\nlabel 100x80", FLAT)
        write(texture(60, 150, 3, "uint8", seed=34), "Aperio Image Library v12.0.15\nmacro 150x60")


def test_associated_images_use_their_own_profiles(tmp_path: Path) -> None:
    path = tmp_path / "profiles.svs"
    _write_svs_with_profiles(path)
    with wsiarray.open(path) as slide:
        assert slide.vendor == "aperio"
        assert slide.icc_profile == WIDE
        assert slide.associated_icc_profiles == {"label": FLAT}
        stored = {name: np.array(slide.associated_images[name]) for name in slide.associated_images}
    with wsiarray.open(path, apply_icc=True) as slide:
        images = slide.associated_images
        assert sorted(images) == sorted(stored)
        np.testing.assert_array_equal(images["label"], direct_srgb(stored["label"], FLAT))
        np.testing.assert_array_equal(images["macro"], stored["macro"])  # no profile of its own
        np.testing.assert_array_equal(images["thumbnail"], stored["thumbnail"])
        assert not images["label"].flags.writeable
        # the shared, decoded original is untouched
        with wsiarray.open(path) as other:
            np.testing.assert_array_equal(other.associated_images["label"], stored["label"])


def test_dask_and_xarray_arrays(slides: dict[str, str]) -> None:
    path = slides["jpeg"]
    want = [_srgb_level(path, level, WIDE) for level in (0, 1)]
    with wsiarray.open(path) as slide:
        plain, icc = to_dask(slide, 0, chunks=128), to_dask(slide, 0, chunks=128, apply_icc=True)
        assert plain.name != icc.name  # other pixels, other keys
        np.testing.assert_array_equal(icc.compute(), want[0])
        np.testing.assert_array_equal(plain.compute(), reference_level(path, 0))
        np.testing.assert_array_equal(slide.to_dask(1, apply_icc=True)[10:100, 20:90].compute(),
                                      want[1][10:100, 20:90])
        assert [a.name for a in slide.to_dask_pyramid()] == [to_dask(slide, i).name for i in (0, 1)]
        np.testing.assert_array_equal(slide.to_xarray(1, apply_icc=True)["image"].values, want[1])
        tree = slide.to_xarray(apply_icc=True)
        np.testing.assert_array_equal(tree["0"]["image"].values, want[0])
    with wsiarray.open(path, apply_icc=True) as slide:
        assert to_dask(slide, 0, chunks=128).name == icc.name  # the handle's setting is the default
        np.testing.assert_array_equal(pickle.loads(pickle.dumps(to_dask(slide, 1))).compute(), want[1])
        ds = xr.open_dataset(slide, engine="wsiarray", level=1)
        np.testing.assert_array_equal(ds.image.values, want[1])
        ds.close()
        with pytest.raises(wsiarray.ArgumentError, match="brings its own apply_icc"):
            xr.open_dataset(slide, engine="wsiarray", apply_icc=False)
    ds = xr.open_dataset(path, engine="wsiarray", apply_icc=True)
    np.testing.assert_array_equal(ds.image[5:50, 7:70].values, want[0][5:50, 7:70])
    ds.close()
    tree = xr.open_datatree(path, engine="wsiarray", apply_icc=True, chunks={})
    np.testing.assert_array_equal(tree["1"].image.values, want[1])
    tree.close()


def test_handles_keep_apply_icc_when_pickled_or_copied(slides: dict[str, str]) -> None:
    path = slides["wide"]
    want = _srgb_level(path, 0, WIDE)[:32, :32]
    with wsiarray.open(path, apply_icc=True) as slide:
        for twin in (pickle.loads(pickle.dumps(slide)), copy.copy(slide)):
            assert twin.apply_icc is True
            np.testing.assert_array_equal(twin.read_region((0, 0), (32, 32)), want)
            twin.close()


def test_threads_share_one_cached_transform(slides: dict[str, str]) -> None:
    from wsiarray._icc import srgb_transform

    assert srgb_transform(WIDE, "RGB", "x") is srgb_transform(bytes(WIDE), "RGB", "x")
    assert srgb_transform(WIDE, "RGB", "x") is not srgb_transform(WIDE, "RGBA", "x")
    path = slides["jpeg"]
    want = _srgb_level(path, 0, WIDE)
    errors: list[BaseException] = []

    def reader(seed: int) -> None:
        rng = np.random.default_rng(seed)
        try:
            with wsiarray.open(path, apply_icc=True) as slide:
                for _ in range(20):
                    x, y = int(rng.integers(0, 350)), int(rng.integers(0, 250))
                    np.testing.assert_array_equal(slide.read_region((x, y), (60, 50)),
                                                  want[y:y + 50, x:x + 60])
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=reader, args=(seed,)) for seed in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors[0]


# -- slides without a profile, and what cannot be transformed -------------------------------------


@pytest.mark.parametrize("name", ["plain", "uint16-plain"])
def test_no_profile_reads_unchanged(slides: dict[str, str], name: str) -> None:
    """Nothing to apply: the pixels as stored, with no error, as a viewer shows such a slide."""
    path = slides[name]
    stored = reference_level(path, 0)
    with wsiarray.open(path, apply_icc=True) as slide:
        assert slide.icc_profile is None
        np.testing.assert_array_equal(slide.read_region(), stored)
        np.testing.assert_array_equal(next(iter(slide.read_region([(0, 0)], (16, 16)))),
                                      stored[None, :16, :16])
        np.testing.assert_array_equal(slide.to_dask(0).compute(), stored)
        assert slide.to_dask(0).name == to_dask(wsiarray.open(path), 0).name


PIXELS = "needs uint8 RGB or RGBA pixels, the slide has "


@pytest.mark.parametrize(("name", "error", "message"), [
    ("uint16", wsiarray.UnsupportedError, PIXELS + r"3 channel\(s\) of uint16"),
    ("gray", wsiarray.UnsupportedError, PIXELS + r"1 channel\(s\) of uint8"),
    ("lab", wsiarray.UnsupportedError, "needs an RGB ICC profile, the slide's describes 'Lab'"),
    ("corrupt", wsiarray.FormatError, r"the ICC profile \(144 bytes\) cannot be read"),
])
def test_profiles_that_cannot_be_applied_are_refused(slides: dict[str, str], name: str, error: type,
                                                     message: str) -> None:
    path = slides[name]
    with pytest.raises(error, match=message) as info:
        wsiarray.open(path, apply_icc=True)  # refused at open, not at the first read
    assert path in str(info.value)
    with wsiarray.open(path) as slide:
        slide.read_region((0, 0), (8, 8))  # without apply_icc it reads as always
        calls = [
            lambda: slide.read_region((0, 0), (8, 8), apply_icc=True),
            lambda: slide.read_level_region(0, (0, 0), (8, 8), apply_icc=True),
            lambda: slide.read_region([(0, 0)], (8, 8), apply_icc=True),
            lambda: wsiarray.read_regions([(slide, (0, 0))], (8, 8), apply_icc=True),
            lambda: slide.get_thumbnail((8, 8), apply_icc=True),
            lambda: slide.to_dask(0, apply_icc=True),  # at graph construction, not in a task
        ]
        for call in calls:
            with pytest.raises(error, match=message):
                call()


BAD_VALUES = [1, 0, "yes", 1.0, [True]]


@pytest.mark.parametrize("value", BAD_VALUES)
def test_bad_apply_icc_values_give_one_error_everywhere(slides: dict[str, str], value: Any) -> None:
    path = slides["wide"]
    message = f"apply_icc must be True, False or None, got {value!r}"
    with wsiarray.open(path) as slide:
        calls = {
            "open": lambda: wsiarray.open(path, apply_icc=value),
            "read_region": lambda: slide.read_region((0, 0), (8, 8), apply_icc=value),
            "read_region(whole level)": lambda: slide.read_region(apply_icc=value),
            "read_region(batch)": lambda: slide.read_region([(0, 0)], (8, 8), apply_icc=value),
            "read_level_region": lambda: slide.read_level_region(0, (0, 0), (8, 8), apply_icc=value),
            "read_regions": lambda: wsiarray.read_regions([(path, (0, 0))], (8, 8), apply_icc=value),
            "get_thumbnail": lambda: slide.get_thumbnail((8, 8), apply_icc=value),
            "to_dask": lambda: slide.to_dask(0, apply_icc=value),
            "to_xarray": lambda: slide.to_xarray(0, apply_icc=value),
            "xr.open_dataset": lambda: xr.open_dataset(path, engine="wsiarray", apply_icc=value),
        }
        for entry, call in calls.items():
            with pytest.raises(wsiarray.ArgumentError) as info:
                call()
            assert str(info.value) == message, entry


def test_without_pillow_the_error_names_the_extra(slides: dict[str, str],
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    # A profile not transformed before in this process: its transform is not cached yet
    fresh = matrix_trc_profile((0.6097, 0.3111, 0.0195), (0.2053, 0.6257, 0.0609),
                               (0.1492, 0.0632, 0.7446), 2.4, "not cached")
    path = write_slide(Path(slides["wide"]).parent / "fresh.tif", [texture(64, 64, 3, "uint8", seed=3)],
                       fresh)
    for module in ("PIL", "PIL.Image", "PIL.ImageCms"):
        monkeypatch.setitem(sys.modules, module, None)  # "import PIL" now raises ImportError
    with pytest.raises(ImportError, match=r"pip install 'wsiarray\[icc\]'"):
        wsiarray.open(path, apply_icc=True)
    with wsiarray.open(path) as slide:
        with pytest.raises(ImportError, match=r"wsiarray\[icc\]"):
            slide.read_region((0, 0), (8, 8), apply_icc=True)
        slide.read_region((0, 0), (8, 8))  # reads without apply_icc need no Pillow
    with wsiarray.open(slides["plain"], apply_icc=True) as slide:
        slide.read_region((0, 0), (8, 8))  # nor does a slide without a profile


def test_reads_without_a_profile_do_not_import_pillow(slides: dict[str, str]) -> None:
    code = (f"import sys, wsiarray; s = wsiarray.open({slides['plain']!r}, apply_icc=True); "
            "s.read_region((0, 0), (8, 8)); print('PIL' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"


# -- the OpenSlide facade ------------------------------------------------------------------------------


def test_openslide_facade_keeps_its_color_profile_and_stored_pixels(slides: dict[str, str]) -> None:
    openslide = pytest.importorskip("wsiarray.openslide")
    path = slides["wide"]
    with openslide.OpenSlide(path) as osr:
        assert osr.color_profile.tobytes() == WIDE
        region = osr.read_region((0, 0), 0, (32, 32))
        assert region.info["icc_profile"] == WIDE
        # openslide-python attaches the profile and leaves the pixels as stored
        np.testing.assert_array_equal(np.asarray(region)[..., :3], reference_level(path, 0)[:32, :32])


# -- a scanner's own profile ---------------------------------------------------------------------------


def test_a_real_scanners_profile(data_file: Any) -> None:
    """The TCGA slide's embedded Aperio profile: apply_icc equals a direct transform of the stored pixels."""
    path = data_file("aperio/tcga-cr-7395-01a-01-ts1.svs")
    with wsiarray.open(path) as slide:
        profile = slide.icc_profile
        assert profile is not None and len(profile) == int(slide.properties["openslide.icc-size"])
        for level in range(slide.level_count):
            stored = reference_level(path, level)
            got = slide.read_region(level=level, num_workers=2, apply_icc=True)
            np.testing.assert_array_equal(got, direct_srgb(stored, profile))


def test_reads_at_a_target_resolution_are_transformed_after_resampling(tmp_path: Path) -> None:
    """``mpp=`` with ``apply_icc``: the area average first, then the profile, on every entry point."""
    path = str(tmp_path / "mpp.tif")
    rgb = texture(300, 410, 3, "uint8", seed=25)
    tifffile.imwrite(path, rgb, tile=(64, 64), compression="zlib", photometric="rgb", metadata=None,
                     resolution=(20000, 20000), resolutionunit="CENTIMETER",  # 0.5 µm/px
                     extratags=[(ICC_TAG, 7, len(WIDE), WIDE, True)])
    with wsiarray.open(path) as slide:
        assert slide.mpp == pytest.approx((0.5, 0.5))
        plain = slide.read_region((10, 20), (64, 48), mpp=1.3)
        want = direct_srgb(plain, WIDE)
        np.testing.assert_array_equal(slide.read_region((10, 20), (64, 48), mpp=1.3, apply_icc=True), want)
        out = np.empty((48, 64, 3), np.uint8)
        plain_block = slide.read_mpp_region(1.3, (5, 7), (64, 48))
        assert slide.read_mpp_region(1.3, (5, 7), (64, 48), apply_icc=True, out=out) is out
        np.testing.assert_array_equal(out, direct_srgb(plain_block, WIDE))
        (batch,) = list(slide.read_region([(10, 20)], (64, 48), mpp=1.3, apply_icc=True))
        np.testing.assert_array_equal(batch[0], want)
        level = slide.to_dask(mpp=1.3, apply_icc=True).compute()
        np.testing.assert_array_equal(level, direct_srgb(slide.read_region(mpp=1.3), WIDE))
