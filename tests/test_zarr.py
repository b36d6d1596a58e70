"""OME-Zarr export (NGFF 0.5 on Zarr v3) and ``wsiarray convert``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import zarr
from wsitest import assert_pixels_equal

import wsiarray
from wsiarray import cli
from wsiarray.zarr_export import multiscales_metadata, to_zarr


def whole_level(slide: wsiarray.Slide, level: int) -> np.ndarray:
    return slide.read_region((0, 0), slide.level_dimensions[level], level)


@pytest.mark.parametrize("name", ["jpeg", "deflate"])
def test_export_equals_source(pyramid_slides: dict[str, str], name: str, tmp_path: Path) -> None:
    out = tmp_path / f"{name}.ome.zarr"
    with wsiarray.open(pyramid_slides[name]) as slide:
        to_zarr(slide, out, chunks=200, progress=False)
        group = zarr.open_group(out, mode="r")
        assert group.metadata.zarr_format == 3
        assert sorted(group.array_keys()) == [str(i) for i in range(slide.level_count)]
        for level in range(slide.level_count):
            array = group[str(level)]
            width, height = slide.level_dimensions[level]
            tile_w, tile_h = slide.level_tile_sizes[level]
            assert array.shape == (slide.channels, height, width)
            assert array.dtype == slide.dtype
            assert array.metadata.dimension_names == ("c", "y", "x")
            assert array.chunks[0] == 1
            assert array.chunks[1] % tile_h == 0 or array.chunks[1] == height
            assert array.chunks[2] % tile_w == 0 or array.chunks[2] == width
            got = np.moveaxis(array[...], 0, -1)
            assert_pixels_equal(got, whole_level(slide, level), f"{name} level {level}")
        attrs = group.attrs.asdict()
        assert attrs["wsiarray"]["source"] == slide.path
        assert attrs["wsiarray"]["properties"]["openslide.vendor"] == "generic-tiff"


def test_ngff_metadata(pyramid_slides: dict[str, str], tmp_path: Path) -> None:
    with wsiarray.open(pyramid_slides["jpeg"]) as slide:
        group = to_zarr(slide, tmp_path / "a.zarr", progress=False)
        ome = group.attrs["ome"]
        assert ome["version"] == "0.5"
        (multiscale,) = ome["multiscales"]
        assert "version" not in multiscale  # 0.5 keeps the version at ome.version
        assert [a["name"] for a in multiscale["axes"]] == ["c", "y", "x"]
        assert [a["type"] for a in multiscale["axes"]] == ["channel", "space", "space"]
        assert multiscale["axes"][1]["unit"] == multiscale["axes"][2]["unit"] == "micrometer"
        w0, h0 = slide.level_dimensions[0]
        for level, dataset in enumerate(multiscale["datasets"]):
            assert dataset["path"] == str(level)
            width, height = slide.level_dimensions[level]
            scale = dataset["coordinateTransformations"][0]
            assert scale["type"] == "scale"
            np.testing.assert_allclose(scale["scale"], [1.0, h0 / height * 0.5, w0 / width * 0.5])
            if level:  # pixel centres line up with level 0's
                shift = dataset["coordinateTransformations"][1]
                np.testing.assert_allclose(
                    shift["translation"], [0.0, (scale["scale"][1] - 0.5) / 2, (scale["scale"][2] - 0.5) / 2]
                )
        channels = ome["omero"]["channels"]
        assert [c["label"] for c in channels] == ["R", "G", "B"]
        assert [c["color"] for c in channels] == ["FF0000", "00FF00", "0000FF"]
        assert channels[0]["window"] == {"min": 0, "max": 255, "start": 0, "end": 255}
    with wsiarray.open(pyramid_slides["deflate"]) as slide:  # no pixel size: no unit
        meta = multiscales_metadata(slide)
        assert all("unit" not in axis for axis in meta["multiscales"][0]["axes"])
        assert meta["omero"]["channels"][0]["window"]["max"] == 65535


def test_ome_zarr_reads_it(pyramid_slides: dict[str, str], tmp_path: Path) -> None:
    ome_zarr_io = pytest.importorskip("ome_zarr.io")
    ome_zarr_reader = pytest.importorskip("ome_zarr.reader")
    out = tmp_path / "slide.ome.zarr"
    with wsiarray.open(pyramid_slides["jpeg"]) as slide:
        to_zarr(slide, out, progress=False)
        nodes = list(ome_zarr_reader.Reader(ome_zarr_io.parse_url(str(out)))())
        image = nodes[0]
        assert [a["name"] for a in image.metadata["axes"]] == ["c", "y", "x"]
        assert image.metadata["channel_names"] == ["R", "G", "B"]
        assert len(image.data) == slide.level_count
        for level, data in enumerate(image.data):
            got = np.moveaxis(np.asarray(data), 0, -1)
            assert_pixels_equal(got, whole_level(slide, level), f"level {level}")


def test_ome_zarr_models_validate(pyramid_slides: dict[str, str], tmp_path: Path) -> None:
    v05 = pytest.importorskip("ome_zarr_models.v05")
    for name in ("jpeg", "deflate"):
        with wsiarray.open(pyramid_slides[name]) as slide:
            to_zarr(slide, tmp_path / name, progress=False)
        image = v05.Image.from_zarr(zarr.open_group(tmp_path / name, mode="r"))
        assert len(image.ome_attributes.multiscales[0].datasets) in (2, 3)


def test_levels_overwrite_and_progress(pyramid_slides: dict[str, str], tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "some.zarr"
    with wsiarray.open(pyramid_slides["jpeg"]) as slide:
        group = to_zarr(slide, out, levels=[2, 0], progress=True)
        assert "Completed" in capsys.readouterr().err
        assert sorted(group.array_keys()) == ["0", "2"]
        assert [d["path"] for d in group.attrs["ome"]["multiscales"][0]["datasets"]] == ["0", "2"]
        with pytest.raises(FileExistsError, match="already"):
            to_zarr(slide, out, progress=False)
        group = to_zarr(slide, out, levels=[1], overwrite=True, progress=False)
        assert sorted(group.array_keys()) == ["1"]
        with pytest.raises(wsiarray.ArgumentError):
            to_zarr(slide, tmp_path / "bad.zarr", levels=[7])
        assert not capsys.readouterr().err


def test_cli_convert(pyramid_slides: dict[str, str], tmp_path: Path,
                     capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "cli.ome.zarr"
    assert cli.main(["convert", pyramid_slides["deflate"], str(out), "--chunk-size", "128"]) == 0
    assert "wrote" in capsys.readouterr().out
    group = zarr.open_group(out, mode="r")
    with wsiarray.open(pyramid_slides["deflate"]) as slide:
        assert_pixels_equal(np.moveaxis(group["1"][...], 0, -1), whole_level(slide, 1), "cli level 1")
        assert group["0"].chunks == (1, 128, 96)
    assert cli.main(["convert", pyramid_slides["deflate"], str(out)]) == 1
    assert "--overwrite" in capsys.readouterr().err
    assert cli.main(["convert", pyramid_slides["deflate"], str(out), "--overwrite", "--levels", "1",
                     "--no-progress"]) == 0
    assert sorted(zarr.open_group(out, mode="r").array_keys()) == ["1"]
    assert cli.main(["convert", str(tmp_path / "missing.svs"), str(tmp_path / "x.zarr")]) == 1
    assert cli.main(["info", pyramid_slides["deflate"]]) == 0  # info still works
    assert "generic-tiff" in capsys.readouterr().out


def test_real_slide_export(data_file, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    path = data_file("aperio/CMU-1-Small-Region.svs")
    with wsiarray.open(path) as slide:
        group = to_zarr(slide, tmp_path / "cmu.zarr", progress=False)
        assert group["0"].chunks == (1, 960, 960)  # 4 tiles of 240 px
        assert_pixels_equal(np.moveaxis(group["0"][...], 0, -1), whole_level(slide, 0), "CMU")
        scale = group.attrs["ome"]["multiscales"][0]["datasets"][0]["coordinateTransformations"][0]["scale"]
        assert scale == [1.0, 0.499, 0.499]
