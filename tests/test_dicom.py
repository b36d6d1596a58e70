"""DICOM WSI: the shared series against wsidicom and OpenSlide, and variants written with pydicom.

Real files (``../shared/data/dicom``): level geometry, pixel size, every level
whole and random regions across levels (hypothesis) against OpenSlide where it
opens the file and wsidicom on the levels it lists; JPEG-LS against the same
image stored uncompressed. Synthetic series (written here with pydicom, since
no public sample has them): associated images, TILED_SPARSE with missing tiles,
Basic and Extended Offset Tables, YBR JPEG, and broken files (truncated
pixel data, a fragment length past the end of the file, frames split over
fragments, two series in one folder) that must raise clear errors.
"""

from __future__ import annotations

import os
import pickle
import warnings
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import wsiarray
from conftest import DATA, NO_DATA_REASON
from wsiarray import cli
from wsiarray.errors import FormatError, UnsupportedError, WSIError

pydicom = pytest.importorskip("pydicom")
imagecodecs = pytest.importorskip("imagecodecs")
from wsitest import write_dicom_wsi as write_wsi  # noqa: E402

CMU = DATA / "dicom" / "cmu-1-small-region"
CMU_BASE = CMU / "level-0-frames-0-30.dcm"
SM = DATA / "dicom" / "sm_image" / "sm_image.dcm"
SM_JPEGLS = DATA / "dicom" / "sm_image" / "sm_image_jpegls.dcm"
needs_dicom = pytest.mark.skipif(not CMU.is_dir(), reason=NO_DATA_REASON)


def _openslide(path: Path):
    openslide = pytest.importorskip("openslide")
    return openslide.OpenSlide(str(path))


def _wsidicom(paths):
    wsidicom = pytest.importorskip("wsidicom")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return wsidicom.WsiDicom.open(paths)


@pytest.fixture(scope="module")
def cmu_levels() -> list[np.ndarray]:
    """Every level of the CMU series as OpenSlide decodes it (RGB)."""
    if not CMU.is_dir():
        pytest.skip(NO_DATA_REASON)
    ref = _openslide(CMU_BASE)
    return [
        np.asarray(ref.read_region((0, 0), i, size))[..., :3].copy()
        for i, size in enumerate(ref.level_dimensions)
    ]


# -- real files -------------------------------------------------------------------------


@needs_dicom
@pytest.mark.parametrize("opened", ["folder", "level-0", "level-5"])
def test_cmu_geometry_and_properties_match_openslide(opened: str) -> None:
    path = {"folder": CMU, "level-0": CMU_BASE, "level-5": CMU / "level-5-frames-0-1.dcm"}[opened]
    ref = _openslide(CMU_BASE)
    with wsiarray.open(path) as slide:
        assert [lv.dimensions for lv in slide.levels] == list(ref.level_dimensions)
        assert [lv.tile_size for lv in slide.levels] == [
            (
                int(ref.properties[f"openslide.level[{i}].tile-width"]),
                int(ref.properties[f"openslide.level[{i}].tile-height"]),
            )
            for i in range(ref.level_count)
        ]
        np.testing.assert_allclose([lv.downsample for lv in slide.levels], ref.level_downsamples)
        props = slide.properties
        assert props["openslide.vendor"] == "dicom"
        assert float(props["openslide.mpp-x"]) == pytest.approx(float(ref.properties["openslide.mpp-x"]))
        assert float(props["openslide.mpp-y"]) == pytest.approx(float(ref.properties["openslide.mpp-y"]))
        # OpenSlide's dicom.* keys (it cuts two UI values short; those are left out)
        theirs = {k: v for k, v in ref.properties.items() if k.startswith("dicom.")}
        cut = {"dicom.ImplementationClassUID", "dicom.ImplementationVersionName"}
        assert set(theirs) - cut <= set(props)
        for key in set(theirs) - cut:
            a, b = props[key], theirs[key]
            try:
                assert float(a) == pytest.approx(float(b)), key
            except ValueError:
                assert a == b, key
        assert slide.levels[0].compression == "JPEG" and slide.levels[0].native_codec


@needs_dicom
def test_cmu_every_level_equals_openslide_and_wsidicom(cmu_levels: list[np.ndarray]) -> None:
    with wsiarray.open(CMU) as slide:
        for i, ref in enumerate(cmu_levels):
            got = slide.read_region((0, 0), slide.levels[i].dimensions, level=i)
            np.testing.assert_array_equal(got, ref, err_msg=f"level {i}")
    wsi = _wsidicom(str(CMU))
    with wsiarray.open(CMU) as slide:
        sizes = [lv.dimensions for lv in slide.levels]
        assert wsi.mpp.width * 1000 == pytest.approx(slide.mpp[0] * 1000)
        for level in wsi.levels:
            size = (level.size.width, level.size.height)
            index = sizes.index(size)
            ref = np.asarray(wsi.read_region((0, 0), level.level, size).convert("RGB"))
            np.testing.assert_array_equal(slide.read_region((0, 0), size, level=index), ref)


@needs_dicom
@given(data=st.data())
def test_cmu_random_regions(cmu_levels: list[np.ndarray], data: st.DataObject) -> None:
    slide = wsiarray.open(CMU, fill=(7, 8, 9))
    level = data.draw(st.integers(0, len(cmu_levels) - 1))
    ref = cmu_levels[level]
    h, w = ref.shape[:2]
    x = data.draw(st.integers(-w // 2 - 3, w + 3))
    y = data.draw(st.integers(-h // 2 - 3, h + 3))
    rw, rh = data.draw(st.integers(1, 600)), data.draw(st.integers(1, 600))
    got = slide.read_level_region(level, (x, y), (rw, rh))
    want = np.empty((rh, rw, 3), np.uint8)
    want[:] = (7, 8, 9)
    x0, y0, x1, y1 = max(x, 0), max(y, 0), min(x + rw, w), min(y + rh, h)
    if x0 < x1 and y0 < y1:
        want[y0 - y : y1 - y, x0 - x : x1 - x] = ref[y0:y1, x0:x1]
    np.testing.assert_array_equal(got, want)


@needs_dicom
@pytest.mark.parametrize("path", [SM, SM_JPEGLS], ids=["uncompressed", "jpeg-ls"])
def test_sm_image_against_wsidicom(path: Path) -> None:
    wsi = _wsidicom([str(path)])
    ref = np.asarray(wsi.read_region((0, 0), 0, (50, 50)).convert("RGB"))
    with wsiarray.open(path) as slide:
        assert [lv.dimensions for lv in slide.levels] == [(50, 50)]
        assert slide.levels[0].tile_size == (10, 10)
        assert slide.levels[0].native_codec == (path == SM)
        assert slide.levels[0].compression == ("RAW" if path == SM else "JPEG_LS")
        np.testing.assert_array_equal(slide.read_region((0, 0), (50, 50)), ref)
        np.testing.assert_array_equal(slide.read_region((3, 7), (20, 30)), ref[7:37, 3:23])
        assert slide.mpp == pytest.approx((wsi.mpp.width, wsi.mpp.height))


@needs_dicom
def test_jpeg_ls_equals_uncompressed_and_openslide_where_it_opens() -> None:
    with wsiarray.open(SM) as raw, wsiarray.open(SM_JPEGLS) as ls:
        np.testing.assert_array_equal(raw.read_region((0, 0), (50, 50)), ls.read_region((0, 0), (50, 50)))
    ref = _openslide(SM)
    with wsiarray.open(SM) as raw:
        np.testing.assert_array_equal(
            raw.read_region((0, 0), (50, 50)), np.asarray(ref.read_region((0, 0), 0, (50, 50)))[..., :3]
        )


@needs_dicom
def test_bad_dicom_is_a_format_error() -> None:
    with pytest.raises(FormatError, match="ImageType"):
        wsiarray.open(DATA / "bad" / "dicom-no-image-type.dcm")


@needs_dicom
def test_cmu_arrays_info_and_pickle(capsys: pytest.CaptureFixture[str]) -> None:
    xr = pytest.importorskip("xarray")
    with wsiarray.open(CMU) as slide:
        level1 = slide.read_region((0, 0), slide.levels[1].dimensions, level=1)
        np.testing.assert_array_equal(slide.to_dask(level=1).compute(), level1)
        again = pickle.loads(pickle.dumps(slide))
        np.testing.assert_array_equal(again.read_region((0, 0), (64, 64), level=1), level1[:64, :64])
    tree = xr.open_datatree(str(CMU), engine="wsiarray")
    assert len([k for k in tree.children if k.isdigit()]) == 12
    np.testing.assert_array_equal(tree["1"].image.values, level1)
    assert cli.main(["info", str(CMU)]) == 0
    assert "dicom" in capsys.readouterr().out


# -- synthetic series written with pydicom ---------------------------------------------------


def _image(width: int, height: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:height, :width]
    base = np.stack([(xx * 3) % 256, (yy * 5) % 256, (xx + yy) % 256], -1).astype(np.int16)
    return np.clip(base + rng.integers(-20, 20, base.shape), 0, 255).astype(np.uint8)


def _assemble(
    decoded: list[np.ndarray], size: tuple[int, int], tile: int, fill=(0, 0, 0), keep: list[int] | None = None
) -> np.ndarray:
    w, h = size
    across, down = -(-w // tile), -(-h // tile)
    out = np.empty((down * tile, across * tile, 3), np.uint8)
    out[:] = fill
    for frame, index in zip(decoded, keep if keep is not None else range(across * down), strict=True):
        ty, tx = divmod(index, across)
        out[ty * tile : (ty + 1) * tile, tx * tile : (tx + 1) * tile] = frame
    return out[:h, :w]


@pytest.fixture(scope="module")
def series(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, np.ndarray]]:
    """A two-level JPEG series with a label, an overview and a thumbnail, plus a foreign file."""
    folder = tmp_path_factory.mktemp("dicom-series")
    base = _image(150, 110, 1)
    small = _image(75, 55, 2)
    want = {
        "0": _assemble(write_wsi(folder / "a-level0.dcm", base, codec="jpeg"), (150, 110), 32),
        "1": _assemble(write_wsi(folder / "b-level1.dcm", small, codec="jpeg", table="bot"), (75, 55), 32),
        "label": _assemble(
            write_wsi(folder / "c-label.dcm", _image(40, 20, 3), tile=40, flavor="LABEL"), (40, 20), 40
        ),
        "macro": _assemble(
            write_wsi(folder / "d-overview.dcm", _image(60, 30, 4), tile=16, flavor="OVERVIEW"), (60, 30), 16
        ),
        "thumbnail": _assemble(
            write_wsi(folder / "e-thumb.dcm", _image(30, 22, 5), codec="jpeg", flavor="THUMBNAIL"),
            (30, 22),
            32,
        ),
    }
    (folder / "notes.txt").write_text("not DICOM")
    return folder, want


def test_series_levels_and_associated_images(series: tuple[Path, dict[str, np.ndarray]]) -> None:
    folder, want = series
    for path in (folder, folder / "b-level1.dcm", folder / "c-label.dcm"):
        with wsiarray.open(path) as slide:
            assert [lv.dimensions for lv in slide.levels] == [(150, 110), (75, 55)]
            assert slide.mpp == pytest.approx((0.5, 0.25))
            assert slide.objective_power == 20
            assert sorted(slide.associated_images) == ["label", "macro", "thumbnail"]
            for name in ("label", "macro", "thumbnail"):
                np.testing.assert_array_equal(slide.associated_images[name], want[name], err_msg=name)
            for level in (0, 1):
                size = slide.levels[level].dimensions
                np.testing.assert_array_equal(slide.read_region((0, 0), size, level=level), want[str(level)])
            assert slide.properties["openslide.associated.label.width"] == "40"
            assert slide.properties["dicom.ImageType[2]"] == "VOLUME"


def test_series_datatree_has_associated_images(series: tuple[Path, dict[str, np.ndarray]]) -> None:
    xr = pytest.importorskip("xarray")
    folder, want = series
    tree = xr.open_datatree(str(folder), engine="wsiarray")
    np.testing.assert_array_equal(tree["associated/label"].image.values, want["label"])
    np.testing.assert_array_equal(tree["1"].image.values, want["1"])


@pytest.mark.parametrize("table", ["none", "bot", "eot"])
def test_offset_tables(tmp_path: Path, table: str) -> None:
    image = _image(100, 70)
    decoded = write_wsi(tmp_path / "x.dcm", image, codec="jpeg", table=table)
    with wsiarray.open(tmp_path / "x.dcm") as slide:
        np.testing.assert_array_equal(slide.read_region((0, 0), (100, 70)), _assemble(decoded, (100, 70), 32))


@pytest.mark.parametrize("codec", ["raw", "planar", "j2k"])
def test_codecs(tmp_path: Path, codec: str) -> None:
    image = _image(100, 70)
    write_wsi(tmp_path / "c.dcm", image, codec=codec)
    with wsiarray.open(tmp_path / "c.dcm") as slide:
        assert slide.levels[0].native_codec == (codec != "j2k")
        np.testing.assert_array_equal(slide.read_region((0, 0), (100, 70)), image)  # all lossless
        np.testing.assert_array_equal(slide.read_region((31, 17), (40, 30)), image[17:47, 31:71])


@pytest.mark.parametrize("codec", ["raw", "jpeg"])
def test_tiled_sparse_missing_tiles_are_fill(tmp_path: Path, codec: str) -> None:
    image = _image(100, 70)
    keep = [5, 0, 2, 7]  # of 4 x 3 tiles, out of order
    decoded = write_wsi(tmp_path / "s.dcm", image, codec=codec, keep=keep)
    with wsiarray.open(tmp_path / "s.dcm", fill=(10, 20, 30)) as slide:
        got = slide.read_region((-5, -5), (110, 80))
    want = np.empty((80, 110, 3), np.uint8)
    want[:] = (10, 20, 30)
    want[5:75, 5:105] = _assemble(decoded, (100, 70), 32, fill=(10, 20, 30), keep=keep)
    np.testing.assert_array_equal(got, want)


def test_two_series_in_a_folder(tmp_path: Path) -> None:
    write_wsi(tmp_path / "a.dcm", _image(40, 40), series="1.1")
    write_wsi(tmp_path / "b.dcm", _image(64, 64), series="1.2")
    with pytest.raises(UnsupportedError, match="more than one"):
        wsiarray.open(tmp_path)
    with wsiarray.open(tmp_path / "b.dcm") as slide:
        assert [lv.dimensions for lv in slide.levels] == [(64, 64)]


def test_huge_element_length_allocates_nothing(tmp_path: Path) -> None:
    """A corrupt 4-byte value length (here 0xF4F4F4F4 on an OB element) is refused without
    Python allocating that much (the fuzzer found a 4 GiB allocation in pydicom's read)."""
    import tracemalloc

    import pydicom

    path = tmp_path / "huge.dcm"
    write_wsi(path, _image(64, 64))
    ds = pydicom.dcmread(path)
    ds.ICCProfile = b"\0" * 16  # (0028,2000) OB: a 4-byte length in explicit VR
    ds.save_as(path)
    data = bytearray(path.read_bytes())
    at = data.index(b"\x28\x00\x00\x20OB\x00\x00") + 8
    data[at : at + 4] = b"\xf4\xf4\xf4\xf4"
    path.write_bytes(bytes(data))
    tracemalloc.start()
    try:
        with pytest.raises(FormatError):
            wsiarray.open(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 64 << 20, peak


def test_concatenated_level_is_refused(tmp_path: Path) -> None:
    import pydicom

    write_wsi(tmp_path / "c.dcm", _image(64, 64))
    ds = pydicom.dcmread(tmp_path / "c.dcm")
    ds.ConcatenationUID = "1.2.3.4.5"
    ds.InConcatenationNumber = 1
    ds.save_as(tmp_path / "c.dcm")
    with pytest.raises(UnsupportedError, match="concatenated"):
        wsiarray.open(tmp_path / "c.dcm")


def _pixel_items(path: Path) -> tuple[bytes, int]:
    data = path.read_bytes()
    return data, data.index(b"\xe0\x7f\x10\x00")


def test_truncated_pixel_data_is_a_format_error(tmp_path: Path) -> None:
    path = tmp_path / "t.dcm"
    write_wsi(path, _image(100, 70), codec="jpeg")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) * 2 // 3])
    with pytest.raises(FormatError, match="fragment"):
        wsiarray.open(path)


def test_fragment_length_past_the_file_is_a_format_error(tmp_path: Path) -> None:
    path = tmp_path / "f.dcm"
    write_wsi(path, _image(100, 70), codec="jpeg")
    data = bytearray(path.read_bytes())
    at = data.index(b"\xe0\x7f\x10\x00") + 12 + 8  # Pixel Data header, empty BOT item
    assert data[at : at + 4] == b"\xfe\xff\x00\xe0"
    data[at + 4 : at + 8] = (0x7FFFFFF0).to_bytes(4, "little")
    path.write_bytes(bytes(data))
    with pytest.raises(FormatError, match="past the end of the file"):
        wsiarray.open(path)


def test_frames_split_over_fragments_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "split.dcm"
    write_wsi(path, _image(100, 70), codec="jpeg", split=True)
    with pytest.raises(UnsupportedError, match="several fragments"):
        wsiarray.open(path)


def test_not_wsi_dicom_and_empty_folder(tmp_path: Path) -> None:
    with pytest.raises(WSIError):
        wsiarray.open(tmp_path)  # an empty folder
    path = tmp_path / "ct.dcm"
    write_wsi(path, _image(16, 16))
    ds = pydicom.dcmread(path)
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    ds.save_as(path, enforce_file_format=True)
    with pytest.raises(UnsupportedError, match="Whole Slide"):
        wsiarray.open(path)


def test_a_changed_level_file_is_refused_when_reopened(tmp_path: Path) -> None:
    write_wsi(tmp_path / "a.dcm", _image(64, 64))
    slide = wsiarray.open(tmp_path / "a.dcm")
    assert slide.read_region((0, 0), (8, 8)).shape == (8, 8, 3)
    os.utime(tmp_path / "a.dcm", ns=(1, 1))
    wsiarray.file_handles().clear()
    with pytest.raises(WSIError):
        slide.read_region((0, 0), (8, 8))


@needs_dicom
def test_openslide_facade_matches_openslide_python() -> None:
    facade = pytest.importorskip("wsiarray.openslide")
    ref = _openslide(CMU_BASE)
    with facade.OpenSlide(str(CMU_BASE)) as ours:
        assert ours.level_dimensions == ref.level_dimensions
        np.testing.assert_allclose(ours.level_downsamples, ref.level_downsamples)
        assert ours.properties["openslide.vendor"] == "dicom"
        # (0, 0) on the downsampled levels: OpenSlide resamples a level-0 location that falls
        # between two of their pixels (a documented difference of the facade)
        for level, location in ((0, (1900, 2700)), (0, (-100, 300)), (1, (0, 0)), (3, (0, 0))):
            want = np.asarray(ref.read_region(location, level, (300, 260)))
            np.testing.assert_array_equal(np.asarray(ours.read_region(location, level, (300, 260))), want)


def test_openslide_facade_sparse_tiles_are_transparent(tmp_path: Path) -> None:
    facade = pytest.importorskip("wsiarray.openslide")
    decoded = write_wsi(tmp_path / "s.dcm", _image(64, 32), keep=[1])  # 2 x 1 tiles, the left one missing
    with facade.OpenSlide(str(tmp_path / "s.dcm")) as ours:
        rgba = np.asarray(ours.read_region((0, 0), 0, (64, 32)))
    assert not rgba[:, :32].any()
    np.testing.assert_array_equal(rgba[:, 32:, :3], decoded[0])
    assert (rgba[:, 32:, 3] == 255).all()
