"""Philips TIFF, on look-alikes written with tifffile (``philips_support.py``).

No public Philips sample may be copied into the tests, so these files are
look-alikes laid out as Philips TIFF exports are (OpenSlide's format page, the
published XML of ``Philips-1.tiff``): the ``DPUfsImport`` XML with per-level
pixel spacings, levels padded to whole tiles, sparse tiles (offset and byte
count 0), label and macro as base64 JPEGs. Each is compared with OpenSlide
4.0.1 (level geometry, properties, associated images, pixels) and with
tifffile's pixels of each page cropped to the level's true size.
"""

from __future__ import annotations

import base64
import io
import re
from contextlib import redirect_stdout
from pathlib import Path

import numpy as np
import pytest
import tifffile
from philips_support import write_philips
from wsitest import reference_region

import wsiarray
from wsiarray.errors import FormatError, WSIError

openslide = pytest.importorskip("openslide")
wos = pytest.importorskip("wsiarray.openslide")

#: name -> write_philips arguments
FILES = {
    # sparse tiles on levels 0 and 1, label and macro in the XML
    "default": {"sparse": {0: {(0, 1), (2, 3)}, 1: {(1, 0)}}},
    # BigTIFF, 128-px tiles, odd sizes, a stripped Label page (wins over the XML label)
    "bigtiff-label-page": {
        "width": 777,
        "height": 555,
        "tile": 128,
        "levels": 4,
        "bigtiff": True,
        "label_page": True,
        "sparse": {2: {(0, 0)}},
    },
    # spacing ratios that are not powers of two: downsamples round(mean(2.2, 3.8)) = 3 and 6
    "anisotropic": {"spacings": [(1e-4, 1e-4), (2.2e-4, 3.8e-4), (5.9e-4, 6.1e-4)], "macro": False},
    # level 1's spacing says downsample 1: the level is larger than its page (OpenSlide: transparent there)
    "larger-than-page": {"levels": 2, "spacings": [(1e-4, 1e-4), (1.2e-4, 1.2e-4)], "label": False},
}


@pytest.fixture(scope="module")
def philips(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    folder = tmp_path_factory.mktemp("philips")
    paths = {}
    for name, kwargs in FILES.items():
        paths[name] = str(folder / f"{name}.tiff")
        write_philips(paths[name], **kwargs)
    return paths


def _page_reference(path: str, level: int, width: int, height: int) -> np.ndarray:
    """tifffile's pixels of the level's page, cropped (or padded with 0) to the level's size."""
    with tifffile.TiffFile(path) as tif:
        pages = [p for p in tif.pages if p.is_tiled]
        page = pages[level].asarray()
    out = np.zeros((height, width, 3), np.uint8)
    h, w = min(height, page.shape[0]), min(width, page.shape[1])
    out[:h, :w] = page[:h, :w]
    return out


def _present(path: str, level: int, width: int, height: int) -> np.ndarray:
    """Which level pixels lie in tiles the file holds (OpenSlide shows the others transparent)."""
    with tifffile.TiffFile(path) as tif:
        page = [p for p in tif.pages if p.is_tiled][level]
        across = -(-page.imagewidth // page.tilewidth)
        counts = np.asarray(page.databytecounts).reshape(-1, across)
        tile = page.tilewidth
    rows, columns = np.arange(height) // tile, np.arange(width) // tile
    inside = (rows[:, None] < counts.shape[0]) & (columns[None, :] < counts.shape[1])
    written = counts[np.minimum(rows, counts.shape[0] - 1)][:, np.minimum(columns, counts.shape[1] - 1)] > 0
    return inside & written


@pytest.mark.parametrize("name", list(FILES))
def test_equals_openslide_and_tifffile(philips: dict[str, str], name: str) -> None:
    """Geometry, properties, associated images and every level's pixels: OpenSlide's and tifffile's."""
    path = philips[name]
    ref, ours = openslide.OpenSlide(path), wos.OpenSlide(path)
    slide = wsiarray.open(path, fill=(1, 2, 3))
    assert slide.vendor == "philips"
    assert ours.level_dimensions == ref.level_dimensions
    assert ours.level_downsamples == ref.level_downsamples
    assert dict(ours.properties) == {k: v for k, v in ref.properties.items() if k != "openslide.quickhash-1"}
    assert sorted(ours.associated_images) == sorted(ref.associated_images)
    for key in ref.associated_images:
        np.testing.assert_array_equal(
            np.asarray(ours.associated_images[key]), np.asarray(ref.associated_images[key])
        )
    assert slide.mpp == pytest.approx((0.226321, 0.226316))
    assert slide.objective_power is None
    rng = np.random.default_rng(14)
    for level, (width, height) in enumerate(ref.level_dimensions):
        # the whole level with a margin, through the OpenSlide facade: RGBA, sparse tiles transparent
        want = np.asarray(ref.read_region((-8, -8), level, (width + 16, height + 16)))
        got = np.asarray(ours.read_region((-8, -8), level, (width + 16, height + 16)))
        np.testing.assert_array_equal(got, want, err_msg=f"level {level}")
        # plain reads: tifffile's page pixels, the fill outside the level and in sparse tiles
        page = _page_reference(path, level, width, height)
        page[~_present(path, level, width, height)] = (1, 2, 3)
        regions = [(0, 0, width, height), (width - 5, height - 3, 40, 30), (-20, -20, 10, 10)]
        regions += [
            (
                int(rng.integers(-60, width)),
                int(rng.integers(-60, height)),
                int(rng.integers(1, 300)),
                int(rng.integers(1, 300)),
            )
            for _ in range(6)
        ]
        for x, y, w, h in regions:
            np.testing.assert_array_equal(
                slide.read_level_region(level, (x, y), (w, h)),
                reference_region(page, x, y, w, h, (1, 2, 3)),
                err_msg=f"level {level} region {(x, y, w, h)}",
            )


def test_tifffile_series_is_the_reference(philips: dict[str, str]) -> None:
    """Where tifffile's Philips series crops the levels (power-of-two spacings), its pixels are ours."""
    path = philips["bigtiff-label-page"]
    slide = wsiarray.open(path)
    with tifffile.TiffFile(path) as tif:
        assert tif.is_philips
        levels = [level.asarray() for level in tif.series[0].levels]
    assert [lv.shape[:2][::-1] for lv in levels] == list(slide.level_dimensions)
    for n, want in enumerate(levels):
        np.testing.assert_array_equal(slide.read_level_region(n, (0, 0), slide.level_dimensions[n]), want)


def test_random_regions(philips: dict[str, str]) -> None:
    """Hypothesis: any level region (partly or wholly outside, any size) is OpenSlide's level cropped."""
    from hypothesis import given, settings
    from hypothesis import strategies as st

    path = philips["default"]
    ref = openslide.OpenSlide(path)
    slide = wsiarray.open(path, fill=(9, 8, 7))
    canvases = [
        np.asarray(ref.read_region((0, 0), n, ref.level_dimensions[n])) for n in range(ref.level_count)
    ]

    @settings(max_examples=30, deadline=None)
    @given(st.data())
    def check(data: st.DataObject) -> None:
        level = data.draw(st.integers(0, ref.level_count - 1))
        width, height = ref.level_dimensions[level]
        x, y = data.draw(st.integers(-300, width + 50)), data.draw(st.integers(-300, height + 50))
        w, h = data.draw(st.integers(1, 400)), data.draw(st.integers(1, 400))
        rgba = reference_region(canvases[level], x, y, w, h, 0)
        want = np.where(rgba[..., 3:] == 255, rgba[..., :3], np.array([9, 8, 7], np.uint8))
        np.testing.assert_array_equal(slide.read_level_region(level, (x, y), (w, h)), want)

    check()


def test_external_codec_regridded(tmp_path: Path) -> None:
    """Tiles tifffile decodes (JPEG 2000) on levels cut to their true size: tifffile's pixels."""
    path = str(tmp_path / "j2k.tiff")
    write_philips(
        path,
        width=600,
        height=300,
        tile=128,
        levels=3,
        compression="jpeg2000",
        sparse={0: {(1, 2)}, 1: {(0, 1)}},
    )
    slide = wsiarray.open(path)
    assert [lv.compression for lv in slide.levels] == ["JPEG2000"] * 3
    for level, (width, height) in enumerate(slide.level_dimensions):
        want = _page_reference(path, level, width, height)
        np.testing.assert_array_equal(slide.read_level_region(level, (0, 0), (width, height)), want)


def test_entry_points(philips: dict[str, str]) -> None:
    """dask, the xarray engine, a DataTree with the associated images, batches and ``wsiarray info``."""
    xr = pytest.importorskip("xarray")
    from wsiarray.cli import main
    from wsiarray.dask import to_dask

    path = philips["default"]
    slide = wsiarray.open(path)
    whole = slide.read_level_region(1, (0, 0), slide.level_dimensions[1])
    np.testing.assert_array_equal(np.asarray(to_dask(slide, 1, chunks=(100, 150, 3))), whole)
    ds = xr.open_dataset(path, engine="wsiarray", level=1)
    np.testing.assert_array_equal(ds.to_array().values.squeeze(), whole)
    tree = xr.open_datatree(path, engine="wsiarray")
    np.testing.assert_array_equal(tree["/1"].ds.to_array().values.squeeze(), whole)
    for name in ("label", "macro"):
        np.testing.assert_array_equal(tree[f"associated/{name}"].image.values, slide.associated_images[name])
    patches = [(slide, loc) for loc in [(0, 0), (300, 200), (1000, 700)]]
    batch = np.concatenate(list(wsiarray.read_regions(patches, (64, 48))))
    np.testing.assert_array_equal(batch, np.stack([slide.read_region(loc, (64, 48)) for _, loc in patches]))
    out = io.StringIO()
    with redirect_stdout(out):
        assert main(["info", path]) == 0
    assert "philips" in out.getvalue()
    assert re.search(r"\b1\s+512\s+384\s", out.getvalue())


# --- detection and bad files ------------------------------------------------------------------


def _first_rep(xml: str) -> str:
    return re.search(r'<DataObject ObjectType="PixelDataRepresentation">.*?</DataObject>', xml).group(0)


@pytest.mark.parametrize(
    "kwargs, edit",
    [
        ({"software": "Aperio Image Library"}, None),  # not Philips software
        ({"software": "philips dp v1.0"}, None),  # OpenSlide's test is case-sensitive
        ({}, lambda xml: xml.replace("DPUfsImport", "DPUfsExport")),  # another root object
        ({}, lambda xml: xml.replace("</DataObject>\n", "")),  # not XML
    ],
    ids=["software", "software-case", "root", "not-xml"],
)
def test_not_stolen(tmp_path: Path, kwargs: dict, edit) -> None:
    """Files that are not Philips by OpenSlide's rules are left to the next module (generic TIFF)."""
    path = str(tmp_path / "other.tiff")
    write_philips(path, width=300, height=200, tile=128, levels=2, edit=edit, **kwargs)
    assert (
        wsiarray.open(path).vendor
        == "generic-tiff"
        == openslide.OpenSlide(path).properties["openslide.vendor"]
    )


def _garbage_label(xml: str) -> str:
    return re.sub(r'(Name="PIM_DP_IMAGE_DATA"[^>]*>)', r"\1!!garbage", xml, count=1)


def _headless_label(xml: str) -> str:
    """The label's JPEG cut after its frame header: its size reads, its pixels do not."""

    def cut(match: re.Match) -> str:
        jpeg = base64.b64decode(match.group(2))
        sof = jpeg.index(b"\xff\xc0")
        return (
            match.group(1)
            + base64.b64encode(
                jpeg[: sof + 2 + int.from_bytes(jpeg[sof + 2 : sof + 4], "big")] + b"\xff\xd9"
            ).decode()
        )

    return re.sub(r'(Name="PIM_DP_IMAGE_DATA"[^>]*>)([^<]*)', cut, xml, count=1)


def test_bad_associated_images(tmp_path: Path) -> None:
    """A label that is not base64 JPEG is left out (as OpenSlide does); one whose data does not decode
    is listed (only its frame header is read at open; OpenSlide leaves it out) and raises when read."""
    path = str(tmp_path / "garbage.tiff")
    write_philips(path, width=300, height=200, tile=128, levels=2, edit=_garbage_label)
    slide = wsiarray.open(path)
    assert sorted(slide.associated_images) == ["macro"] == sorted(openslide.OpenSlide(path).associated_images)
    path = str(tmp_path / "headless.tiff")
    write_philips(path, width=300, height=200, tile=128, levels=2, edit=_headless_label)
    slide = wsiarray.open(path)
    assert sorted(slide.associated_images) == ["label", "macro"]
    assert slide.properties["openslide.associated.label.width"] == "40"
    with pytest.raises(WSIError, match="label"):
        slide.associated_images["label"]
    assert slide.associated_images["macro"].shape == (50, 120, 3)


@pytest.mark.parametrize(
    "kwargs, edit, message",
    [
        ({}, lambda xml: xml.replace(_first_rep(xml), ""), "describes 2 pyramid levels .* 3 tiled levels"),
        ({}, lambda xml: xml.replace(_first_rep(xml), _first_rep(xml) * 2), "describes 4 pyramid levels"),
        (
            {"spacings": [(1e-4, 1e-4), (0, 0), (4e-4, 4e-4)]},
            None,
            "level 1: DICOM_PIXEL_SPACING .* positive",
        ),
        ({"spacings": [(1e-4, 1e-4), (-2e-4, -2e-4), (4e-4, 4e-4)]}, None, "level 1: .* positive"),
        ({"spacings": [(0, 0), (2e-4, 2e-4), (4e-4, 4e-4)]}, None, "level 0: .* positive"),
        (
            {},
            lambda xml: xml.replace("&quot;0.000227273&quot; &quot;0.000227273&quot;", "nan nan"),
            "level 0",
        ),
        (
            {},
            lambda xml: xml.replace("&quot;0.000227273&quot; &quot;0.000227273&quot;", "&quot;1e-4&quot;"),
            "level 0: .* two positive numbers",
        ),
        ({"spacings": [(1e-4, 1e-4), (4e-4, 4e-4), (2e-4, 2e-4)]}, None, "level 2's .* below level 1's 4"),
        ({"spacings": [(1e-4, 1e-4), (0.4e-4, 0.4e-4), (4e-4, 4e-4)]}, None, "below level 0's 1"),
        ({"spacings": [(1e-4, 1e-4), (2e-4, 2e-4), (1e300, 1e300)]}, None, "empty level"),
        ({}, lambda xml: xml.replace(">WSI<", ">XYZ<"), "no WSI image"),
    ],
    ids=[
        "xml-missing-level",
        "xml-extra-level",
        "spacing-zero",
        "spacing-negative",
        "spacing0-zero",
        "spacing-nan",
        "spacing-one-value",
        "downsample-falls",
        "downsample-zero",
        "downsample-huge",
        "no-wsi",
    ],
)
def test_bad_files(tmp_path: Path, kwargs: dict, edit, message: str) -> None:
    path = str(tmp_path / "bad.tiff")
    write_philips(path, width=300, height=200, tile=64, edit=edit, **kwargs)
    with pytest.raises(FormatError, match=message):
        wsiarray.open(path)
