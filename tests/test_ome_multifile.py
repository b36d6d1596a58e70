"""Multi-file OME-TIFF sets (one TIFF per channel, the XML in a master file or a companion
``.companion.ome``), written with tifffile by ``wsitest.write_ome_set``, against tifffile's own
reading of the set (``TiffFile(..., omexml=...)`` resolves the members by their UUID FileName).

A level whose channels live in several files is one native level whose planes name their
file (``LevelSpec.plane_files``).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import tifffile
from hypothesis import given, settings
from hypothesis import strategies as st
from wsitest import patch_tag_item, write_ome_set

import wsiarray
from wsiarray import cli
from wsiarray.errors import FormatError, OpenError, TileReadError
from wsiarray.formats import read_slide_info

CHANNELS = ("DAPI", "CD3", "CD8")


@pytest.fixture(scope="module")
def sets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict]:
    """A master-file set and a companion-file set, 300x200 + 150x100, three channels each."""
    out = {}
    for kind in ("master", "companion"):
        folder = tmp_path_factory.mktemp(kind)
        out[kind] = write_ome_set(folder, companion=kind == "companion")
    return out


def reference(ome_set: dict) -> list[np.ndarray]:
    """tifffile's levels of the set as (y, x, c), read through its first channel file."""
    xml = Path(ome_set["xml"])
    omexml = xml.read_text() if xml.suffix == ".ome" else None
    with tifffile.TiffFile(ome_set["files"][0], omexml=omexml) as tif:
        if omexml is None:
            assert tif.series[0].is_multifile
        return [np.moveaxis(level.asarray(), 0, 2) for level in tif.series[0].levels]


def members(ome_set: dict) -> list[str]:
    """Every file a user may open: the XML holder and each channel file."""
    return list(dict.fromkeys([ome_set["xml"], *ome_set["files"]]))


@pytest.mark.parametrize("kind", ["master", "companion"])
def test_any_member_opens_the_whole_set(sets: dict[str, dict], kind: str) -> None:
    ome_set = sets[kind]
    want = reference(ome_set)
    assert len(want) == 2 and want[0].shape == (200, 300, 3)
    np.testing.assert_array_equal(np.moveaxis(want[0], 2, 0), ome_set["planes"])  # the writer's own planes
    for path in members(ome_set):
        with wsiarray.open(path) as slide:
            assert slide.channel_names == CHANNELS, path
            assert slide.format_info.vendor == "ome-tiff"
            assert [lv.dimensions for lv in slide.levels] == [(300, 200), (150, 100)]
            assert slide.format_info.mpp == (0.25, 0.25)
            for level, ref in enumerate(want):
                h, w = ref.shape[:2]
                np.testing.assert_array_equal(
                    slide.read_region((0, 0), (w, h), level=level), ref, err_msg=path
                )
            # a region partly and one wholly outside the image, several workers
            got = slide.read_region((250, 150), (100, 80), fill=7, num_workers=3)
            want_part = np.full((80, 100, 3), 7, np.uint16)
            want_part[:50, :50] = want[0][150:, 250:]
            np.testing.assert_array_equal(got, want_part)
            assert (slide.read_region((400, 0), (10, 10), fill=3) == 3).all()
            np.testing.assert_array_equal(
                slide.associated_images["label"], tifffile.imread(ome_set["label"]), err_msg=path
            )


def test_planes_name_their_files(sets: dict[str, dict]) -> None:
    master = sets["master"]
    level0 = read_slide_info(master["files"][1]).levels[0]
    # opened through channel 1: its plane is the slide's own file, the others are members
    assert level0.plane_files == (master["files"][0], None, master["files"][2])
    companion = sets["companion"]
    info = read_slide_info(companion["xml"])
    assert info.levels[0].plane_files == tuple(companion["files"])
    assert set(info.file_identities) >= set(companion["files"])


@settings(max_examples=25, deadline=None)
@given(data=st.data())
def test_random_regions(sets: dict[str, dict], data: st.DataObject) -> None:
    ome_set = sets["companion"]
    want = _cached_reference(ome_set)
    level = data.draw(st.integers(0, 1))
    ref = want[level]
    h, w = ref.shape[:2]
    x = data.draw(st.integers(-40, w + 10))
    y = data.draw(st.integers(-40, h + 10))
    size = (data.draw(st.integers(1, 120)), data.draw(st.integers(1, 120)))
    with wsiarray.open(ome_set["files"][1]) as slide:
        got = slide.read_level_region(level, (x, y), size, fill=0)
    expected = np.zeros((size[1], size[0], 3), np.uint16)
    x0, y0, x1, y1 = max(x, 0), max(y, 0), min(x + size[0], w), min(y + size[1], h)
    if x0 < x1 and y0 < y1:
        expected[y0 - y : y1 - y, x0 - x : x1 - x] = ref[y0:y1, x0:x1]
    np.testing.assert_array_equal(got, expected)


_REFERENCES: dict[str, list[np.ndarray]] = {}


def _cached_reference(ome_set: dict) -> list[np.ndarray]:
    return _REFERENCES.setdefault(ome_set["xml"], reference(ome_set))


def test_fetch_reads_each_plane_from_its_file(sets: dict[str, dict]) -> None:
    ome_set = sets["master"]
    with wsiarray.open(ome_set["files"][2]) as slide:
        native = wsiarray.file_handles().acquire(slide.path, slide.identity, slide.file_access).native
        # the reader's files: 0 the path opened (channel 2), then channels 0 and 1 as added
        assert native.level_info(0)["plane_files"] == [1, 2, 0]
        got = native.fetch(0, 0, 0, 300, 200, 2)
    data, spans = got["data"], got["spans"]
    planes, offsets = got["plane"], got["offset"]
    for k in range(len(planes)):
        path = ome_set["files"][int(planes[k])]
        with open(path, "rb") as fh:
            fh.seek(int(offsets[k]))
            raw = fh.read(int(spans[k][1]))
        start = int(spans[k][0])
        assert bytes(data[start : start + len(raw)]) == raw, (k, path)


def test_arrays_datatree_and_info(sets: dict[str, dict], capsys: pytest.CaptureFixture[str]) -> None:
    xr = pytest.importorskip("xarray")
    ome_set = sets["master"]
    want = _cached_reference(ome_set)
    with wsiarray.open(ome_set["files"][1]) as slide:
        np.testing.assert_array_equal(slide.to_dask(level=1).compute(), want[1])
    ds = xr.open_dataset(ome_set["files"][0], engine="wsiarray", level=0)
    assert ds.image.dims == ("y", "x", "c") and ds.c.values.tolist() == list(CHANNELS)
    np.testing.assert_array_equal(ds.image.sel(c="CD8").values, want[0][:, :, 2])
    tree = xr.open_datatree(sets["companion"]["xml"], engine="wsiarray")
    np.testing.assert_array_equal(tree["1"].image.values, _cached_reference(sets["companion"])[1])
    np.testing.assert_array_equal(
        tree["associated/label"].image.values, tifffile.imread(sets["companion"]["label"])
    )
    assert cli.main(["info", sets["companion"]["xml"]]) == 0
    out = capsys.readouterr().out
    assert "ome-tiff" in out and "DAPI,CD3,CD8" in out


def test_missing_member_is_named(tmp_path: Path) -> None:
    ome_set = write_ome_set(tmp_path, label=False, levels=1)
    os.remove(ome_set["files"][2])
    for path in (ome_set["files"][0], ome_set["files"][1]):
        with pytest.raises(OpenError, match=r"member 'set_C2\.ome\.tif' is missing"):
            wsiarray.open(path)


def test_missing_metadata_file_is_named(tmp_path: Path) -> None:
    ome_set = write_ome_set(tmp_path, companion=True, label=False, levels=1)
    os.remove(ome_set["xml"])
    with pytest.raises(OpenError, match=r"metadata file 'set\.companion\.ome' is missing"):
        wsiarray.open(ome_set["files"][0])


def test_bad_tile_names_its_member(tmp_path: Path) -> None:
    ome_set = write_ome_set(tmp_path, label=False, levels=1)
    patch_tag_item(ome_set["files"][2], 324, 0, 1 << 31)  # TileOffsets[0] of channel CD8, past its end
    with wsiarray.open(ome_set["files"][0]) as slide:
        np.testing.assert_array_equal(
            slide.read_region((64, 0), (64, 64))[..., 0], ome_set["planes"][0][:64, 64:128]
        )
        with pytest.raises(TileReadError, match=r"set_C2\.ome\.tif.*plane 2"):
            slide.read_region((0, 0), (64, 64))


def test_uuid_without_file_name(tmp_path: Path) -> None:
    ome_set = write_ome_set(tmp_path, label=False, levels=1, companion=True)
    xml = Path(ome_set["xml"])
    xml.write_text(xml.read_text().replace('FileName="set_C1.ome.tif"', ""))
    with pytest.raises(FormatError, match="has no FileName"):
        wsiarray.open(xml)
