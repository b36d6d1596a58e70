"""The ``wsiarray`` xarray engine and ``to_xarray``: layout, coordinates, lazy reads, chunks."""

from __future__ import annotations

import math
import pickle

import numpy as np
import pytest
import xarray as xr
from wsitest import assert_pixels_equal

import wsiarray
import wsiarray.dask as wdask
from wsiarray.dask import level_chunks
from wsiarray.xarray_backend import WsiarrayBackendEntrypoint, level_coords, to_xarray

pytestmark = pytest.mark.filterwarnings("ignore::xarray.SerializationWarning")


def whole_level(slide: wsiarray.Slide, level: int) -> np.ndarray:
    return slide.read_region((0, 0), slide.level_dimensions[level], level)


def test_engine_is_registered() -> None:
    assert "wsiarray" in xr.backends.list_engines()
    assert isinstance(xr.backends.list_engines()["wsiarray"], WsiarrayBackendEntrypoint)


def test_guess_can_open(pyramid_slides: dict[str, str], tmp_path) -> None:  # type: ignore[no-untyped-def]
    engine = WsiarrayBackendEntrypoint()
    assert engine.guess_can_open(pyramid_slides["jpeg"])
    with wsiarray.open(pyramid_slides["jpeg"]) as slide:
        assert engine.guess_can_open(slide)
    not_tiff = tmp_path / "fake.tif"
    not_tiff.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(64))
    wrong_name = tmp_path / "slide.nc"
    with open(pyramid_slides["jpeg"], "rb") as fh:
        wrong_name.write_bytes(fh.read(64))
    assert not engine.guess_can_open(not_tiff)
    assert not engine.guess_can_open(wrong_name)
    assert not engine.guess_can_open(tmp_path / "missing.svs")
    assert not engine.guess_can_open(b"II*\x00")
    # no engine given: xarray asks the engines and ours claims the file
    assert xr.open_dataset(pyramid_slides["jpeg"]).image.shape == (763, 1000, 3)


@pytest.mark.parametrize("chunks", [None, {}, "auto"], ids=["None", "{}", "auto"])
@pytest.mark.parametrize("name", ["jpeg", "deflate"])
def test_open_dataset(pyramid_slides: dict[str, str], name: str, chunks: object) -> None:
    path = pyramid_slides[name]
    with wsiarray.open(path) as slide:
        for level in range(slide.level_count):
            ds = xr.open_dataset(path, engine="wsiarray", level=level, chunks=chunks)
            image = ds["image"]
            width, height = slide.level_dimensions[level]
            assert list(ds.data_vars) == ["image"]
            assert image.dims == ("y", "x", "c")
            assert image.shape == (height, width, slide.channels)
            assert image.dtype == slide.dtype
            assert list(ds.c.values) == list(slide.channel_names)
            preferred = level_chunks(slide, level)
            assert image.encoding["preferred_chunks"] == {"y": preferred[0][0], "x": preferred[1][0],
                                                          "c": slide.channels}
            if chunks is None:
                assert image.chunks is None
            else:
                if chunks == {}:
                    assert image.chunks == preferred
                tile_w, tile_h = slide.level_tile_sizes[level]
                assert all(edge % tile_h == 0 for edge in np.cumsum(image.chunks[0])[:-1])
                assert all(edge % tile_w == 0 for edge in np.cumsum(image.chunks[1])[:-1])
            assert ds.attrs["level"] == level
            assert ds.attrs["downsample"] == slide.level_downsamples[level]
            assert ds.attrs["openslide.vendor"] == "generic-tiff"
            assert_pixels_equal(image.values, whole_level(slide, level), f"{name} level {level} {chunks}")
            ds.close()


@pytest.mark.parametrize("chunks", [None, {}], ids=["numpy", "dask"])
def test_random_slices_equal_read_region(pyramid_slides: dict[str, str], chunks: object) -> None:
    rng = np.random.default_rng(3)
    path = pyramid_slides["jpeg"]
    with wsiarray.open(path) as slide:
        datasets = [xr.open_dataset(path, engine="wsiarray", level=i, chunks=chunks, cache=False)
                    for i in range(slide.level_count)]
        for _ in range(30):
            level = int(rng.integers(slide.level_count))
            width, height = slide.level_dimensions[level]
            x0, x1 = sorted(int(v) for v in rng.integers(0, width + 1, 2))
            y0, y1 = sorted(int(v) for v in rng.integers(0, height + 1, 2))
            step = int(rng.choice([1, 1, 2, 5]))
            got = datasets[level].image[y0:y1:step, x0:x1].values
            d = slide.level_downsamples[level]
            location = (math.ceil(x0 * d), math.ceil(y0 * d))
            assert (math.floor(location[0] / d), math.floor(location[1] / d)) == (x0, y0)
            want = slide.read_region(location, (x1 - x0, y1 - y0), level)[::step]
            assert_pixels_equal(got, want, f"level {level} [{y0}:{y1}:{step}, {x0}:{x1}]")
        # points, negative steps, channel picks and vectorised (outer) indexing
        image = datasets[0].image
        reference = whole_level(slide, 0)
        assert_pixels_equal(image[5, 7].values, reference[5, 7], "point")
        assert_pixels_equal(image[-1, -1].values, reference[-1, -1], "last point")
        assert_pixels_equal(image[300:100:-3, 900:850:-1, ::-1].values,
                            reference[300:100:-3, 900:850:-1, ::-1], "negative steps")
        assert_pixels_equal(image[[3, 600, 12], 40:45, [2, 0]].values,
                            reference[[3, 600, 12], 40:45][:, :, [2, 0]], "outer")
        assert image[10:10, 5:9].values.shape == (0, 4, 3)


@pytest.mark.filterwarnings("ignore:The specified chunks separate the stored chunks")
def test_lazy_indexing_reads_only_the_slice(pyramid_slides: dict[str, str],
                                           read_log: list[tuple[int, int, int, int, int]]) -> None:
    path = pyramid_slides["jpeg"]
    ds = xr.open_dataset(path, engine="wsiarray", level=1, cache=False)
    assert read_log == []  # opening reads no pixels
    _ = ds.image[10:50, 200:333].values
    assert read_log == [(1, 200, 10, 133, 40)]
    read_log.clear()
    _ = ds.image.isel(y=300, x=slice(5, 9)).values
    assert read_log == [(1, 5, 300, 4, 1)]
    read_log.clear()
    # with dask: only the chunks under the slice are read
    chunked = xr.open_dataset(path, engine="wsiarray", level=0, chunks={"y": 256, "x": 256})
    chunked.image[300:400, 600:700].compute()
    assert read_log and all(
        x < 700 and x + w > 600 and y < 400 and y + h > 300 for _, x, y, w, h in read_log
    ), read_log


def test_coordinates(pyramid_slides: dict[str, str]) -> None:
    path = pyramid_slides["jpeg"]
    with wsiarray.open(path) as slide:
        mpp_x, mpp_y = slide.mpp  # type: ignore[misc]
        w0, h0 = slide.level_dimensions[0]
        ds0 = xr.open_dataset(path, engine="wsiarray", level=0)
        np.testing.assert_allclose(ds0.x.values, (np.arange(w0) + 0.5) * mpp_x)
        np.testing.assert_allclose(ds0.y.values, (np.arange(h0) + 0.5) * mpp_y)
        assert ds0.x.attrs["units"] == "micrometer"
        for level in range(slide.level_count):
            ds = xr.open_dataset(path, engine="wsiarray", level=level)
            width, height = slide.level_dimensions[level]
            step_x, step_y = w0 / width * mpp_x, h0 / height * mpp_y
            np.testing.assert_allclose(np.diff(ds.x.values), step_x)
            # every level covers the same physical extent, pixel centres half a pixel in
            assert ds.x.values[0] - step_x / 2 == pytest.approx(0, abs=1e-9)
            assert ds.x.values[-1] + step_x / 2 == pytest.approx(w0 * mpp_x)
            assert ds.y.values[-1] + step_y / 2 == pytest.approx(h0 * mpp_y)
            # sel by micrometres picks the same place on every level
            target = ds.image.sel(x=120.0, y=80.0, method="nearest")
            assert abs(float(target.x) - 120.0) <= step_x / 2 and abs(float(target.y) - 80.0) <= step_y / 2
    with wsiarray.open(pyramid_slides["deflate"]) as slide:  # no pixel size: level-0 pixels
        coords = level_coords(slide, 1)
        assert coords["x"].attrs["units"] == "pixel"
        w0 = slide.level_dimensions[0][0]
        assert coords["x"].values[-1] + (w0 / 389) / 2 == pytest.approx(w0)
        assert list(coords["c"].values) == ["Y"]


def test_open_datatree(pyramid_slides: dict[str, str]) -> None:
    path = pyramid_slides["jpeg"]
    with wsiarray.open(path) as slide:
        tree = xr.open_datatree(path, engine="wsiarray")
        assert list(tree.children) == ["0", "1", "2"]
        assert tree.attrs["openslide.vendor"] == "generic-tiff"
        assert tree.attrs["wsiarray.level_count"] == 3
        assert not tree.dataset.data_vars
        for level in range(3):
            node = tree[str(level)]
            width, height = slide.level_dimensions[level]
            assert node["image"].dims == ("y", "x", "c")
            assert node["image"].shape == (height, width, 3)
            assert node.attrs["level"] == level
            for dim, coord in level_coords(slide, level).items():
                np.testing.assert_array_equal(node[dim].values, coord.values)
        assert_pixels_equal(tree["2"]["image"].values, whole_level(slide, 2), "tree level 2")
        chunked = xr.open_datatree(path, engine="wsiarray", chunks={})
        for level in range(3):
            assert chunked[str(level)]["image"].chunks == level_chunks(slide, level)
        assert_pixels_equal(chunked["1"]["image"].values, whole_level(slide, 1), "chunked tree level 1")
        tree.close()


def test_datatree_associated_images(data_file) -> None:  # type: ignore[no-untyped-def]
    path = data_file("aperio/CMU-1-Small-Region.svs")
    tree = xr.open_datatree(path, engine="wsiarray")
    assert list(tree.children) == ["0", "associated"]
    with wsiarray.open(path) as slide:
        assert sorted(tree["associated"].children) == sorted(slide.associated_images)
        for name, image in slide.associated_images.items():
            assert_pixels_equal(tree["associated"][name]["image"].values, image, name)
        assert tree.attrs["openslide.mpp-x"] == slide.properties["openslide.mpp-x"]
        np.testing.assert_allclose(tree["0"].x.values[:2], [0.5 * 0.499, 1.5 * 0.499])


def test_to_xarray(pyramid_slides: dict[str, str]) -> None:
    path = pyramid_slides["jpeg"]
    with wsiarray.open(path) as slide:
        ds = to_xarray(slide, level=1)
        assert isinstance(ds, xr.Dataset)
        assert ds.image.chunks == level_chunks(slide, 1)
        assert ds.image.data.name == wdask.to_dask(slide, 1).name
        opened = xr.open_dataset(path, engine="wsiarray", level=1)
        xr.testing.assert_identical(ds.compute(), opened.load())
        tree = to_xarray(slide)
        assert isinstance(tree, xr.DataTree)
        assert list(tree.children) == ["0", "1", "2"]
        reference = xr.open_datatree(path, engine="wsiarray")
        assert tree.attrs == reference.attrs
        for level in range(3):
            xr.testing.assert_identical(tree[str(level)].to_dataset().compute(),
                                        reference[str(level)].to_dataset().load())
        assert to_xarray(slide, 0, chunks=128).image.data.chunksize == (128, 128, 3)
        with pytest.raises(wsiarray.ArgumentError):
            to_xarray(slide, 0, device="tpu")


def test_variable_pickles_as_a_recipe(pyramid_slides: dict[str, str]) -> None:
    ds = xr.open_dataset(pyramid_slides["deflate"], engine="wsiarray", cache=False)
    clone = pickle.loads(pickle.dumps(ds))
    assert_pixels_equal(clone.image[100:200, 50:60].values, ds.image[100:200, 50:60].values, "pickled")


def test_open_dataset_bad_level(pyramid_slides: dict[str, str]) -> None:
    with pytest.raises(wsiarray.ArgumentError):
        xr.open_dataset(pyramid_slides["deflate"], engine="wsiarray", level=5)
    ds = xr.open_dataset(pyramid_slides["deflate"], engine="wsiarray", drop_variables="image")
    assert not ds.data_vars and ds.sizes == {"y": 555, "x": 777, "c": 1}
