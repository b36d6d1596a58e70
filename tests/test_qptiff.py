"""QPTIFF (Akoya/PerkinElmer Vectra, Polaris): look-alikes written with tifffile by
``wsitest.write_qptiff`` (no public sample is small enough to ship), against tifffile's own
QPI series (``TiffFile.series``: Baseline with its levels, Thumbnail, Macro, Label).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile
from wsitest import write_qptiff

import wsiarray
from wsiarray import cli
from wsiarray.errors import FormatError
from wsiarray.formats import read_slide_info

#: tifffile's series name -> ours
ASSOCIATED = {"Thumbnail": "thumbnail", "Macro": "macro", "Label": "label"}


@pytest.fixture(scope="module")
def scan(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("qptiff") / "scan.qptiff"
    write_qptiff(path)
    return path


def reference(path: Path) -> tuple[list[np.ndarray], dict[str, np.ndarray]]:
    with tifffile.TiffFile(path) as tif:
        assert tif.is_qpi
        levels = [np.moveaxis(level.asarray(), 0, 2) for level in tif.series[0].levels]
        associated = {ASSOCIATED[s.name]: s.asarray() for s in tif.series[1:]}
    return levels, associated


@pytest.mark.parametrize("typed", [True, False])
def test_levels_channels_and_associated_images(tmp_path: Path, typed: bool) -> None:
    path = tmp_path / "scan.qptiff"
    pyramid = write_qptiff(path, typed=typed)
    levels, associated = reference(path)
    assert len(levels) == 3
    with wsiarray.open(path) as slide:
        assert slide.format_info.vendor == "qptiff"
        assert slide.channel_names == ("DAPI", "CD8", "PD-L1")  # the Biomarker, not the fluor
        assert [lv.dimensions for lv in slide.levels] == [(512, 384), (256, 192), (128, 96)]
        for level, ref in enumerate(levels):
            np.testing.assert_array_equal(np.moveaxis(ref, 2, 0), pyramid[level])
            h, w = ref.shape[:2]
            np.testing.assert_array_equal(slide.read_region((0, 0), (w, h), level=level), ref)
            # edge tiles, partly outside
            got = slide.read_level_region(level, (w - 50, h - 30), (80, 60), fill=9)
            want = np.full((60, 80, 3), 9, np.uint8)
            want[:30, :50] = ref[h - 30 :, w - 50 :]
            np.testing.assert_array_equal(got, want)
        assert dict(slide.associated_images).keys() == associated.keys()
        for name, ref in associated.items():
            np.testing.assert_array_equal(slide.associated_images[name], ref, err_msg=name)
        props = slide.properties
        assert props["openslide.mpp-x"] == "0.5" and props["openslide.objective-power"] == "20"
        assert props["qptiff.Channel[1].Name"] == "Opal 520"
        assert props["qptiff.Channel[1].Biomarker"] == "CD8"


def test_random_regions_every_level(scan: Path) -> None:
    levels, _ = reference(scan)
    rng = np.random.default_rng(3)
    with wsiarray.open(scan) as slide:
        for _ in range(30):
            level = int(rng.integers(0, 3))
            ref = levels[level]
            h, w = ref.shape[:2]
            x, y = int(rng.integers(-60, w)), int(rng.integers(-60, h))
            cw, ch = int(rng.integers(1, 200)), int(rng.integers(1, 200))
            got = slide.read_level_region(
                level, (x, y), (cw, ch), fill=0, num_workers=int(rng.integers(1, 4))
            )
            want = np.zeros((ch, cw, 3), np.uint8)
            x0, y0, x1, y1 = max(x, 0), max(y, 0), min(x + cw, w), min(y + ch, h)
            if x0 < x1 and y0 < y1:
                want[y0 - y : y1 - y, x0 - x : x1 - x] = ref[y0:y1, x0:x1]
            np.testing.assert_array_equal(got, want, err_msg=f"level {level} at {(x, y)} size {(cw, ch)}")


def test_name_without_biomarker(tmp_path: Path) -> None:
    path = tmp_path / "fluor.qptiff"
    write_qptiff(path, channels=(("DAPI", ""), ("Opal 690", "")), levels=2)
    assert read_slide_info(path).channel_names == ("DAPI", "Opal 690")


def test_arrays_datatree_and_info(scan: Path, capsys: pytest.CaptureFixture[str]) -> None:
    xr = pytest.importorskip("xarray")
    levels, associated = reference(scan)
    with wsiarray.open(scan) as slide:
        np.testing.assert_array_equal(slide.to_dask(level=1).compute(), levels[1])
    ds = xr.open_dataset(scan, engine="wsiarray", level=2)
    assert ds.c.values.tolist() == ["DAPI", "CD8", "PD-L1"]
    np.testing.assert_array_equal(ds.image.sel(c="PD-L1").values, levels[2][:, :, 2])
    tree = xr.open_datatree(str(scan), engine="wsiarray")
    np.testing.assert_array_equal(tree["0"].image.values, levels[0])
    for name, ref in associated.items():
        np.testing.assert_array_equal(tree[f"associated/{name}"].image.values, ref)
    assert cli.main(["info", str(scan)]) == 0
    out = capsys.readouterr().out
    assert "qptiff" in out and "DAPI,CD8,PD-L1" in out


def test_bad_xml_is_a_format_error(tmp_path: Path) -> None:
    path = tmp_path / "bad.qptiff"
    tifffile.imwrite(path, np.zeros((32, 32), np.uint8), software="PerkinElmer-QPI",
                     description="<PerkinElmer-QPI-ImageDescription><ImageType>", metadata=None)  # fmt: skip
    with pytest.raises(FormatError, match="invalid QPI XML"):
        wsiarray.open(path)
