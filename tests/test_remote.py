"""Slides over HTTP and in S3: real local servers on 127.0.0.1 (remote_support.py).

Pixels must equal the local file's for every slide in ``../shared/data``; a read
costs few requests (counted by the servers); a replaced object is refused; a
flaky server still gives the right pixels or a clear error, never a hang.
"""

from __future__ import annotations

import logging
import pickle
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from wsitest import assert_pixels_equal, random_regions, regions

import wsiarray
from conftest import DATA, HAVE_DATA, NO_DATA_REASON
from wsiarray._request import parse_source

pytest.importorskip("fsspec")
pytest.importorskip("aiohttp")
remote_support = pytest.importorskip("remote_support")
ObjectServer, http_options = remote_support.ObjectServer, remote_support.http_options
s3_server = remote_support.s3_server

#: Every TIFF-family slide in shared/data (DICOM series are refused remotely, tested below).
SLIDES = sorted(
    str(p.relative_to(DATA)) for p in DATA.glob("*/*")
    if p.is_file() and p.parent.name in ("aperio", "generic", "ome")
) if HAVE_DATA else []


@pytest.fixture(scope="module")
def http() -> ObjectServer:
    server = ObjectServer()
    yield server
    server.close()


@pytest.fixture(scope="module")
def s3() -> tuple[str, dict]:
    pytest.importorskip("moto")
    pytest.importorskip("s3fs")
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    with s3_server() as (endpoint, options):
        yield endpoint, options


def put_s3(options: dict, key: str, data: bytes) -> str:
    import s3fs

    s3fs.S3FileSystem(**options).pipe(f"slides/{key}", data)
    return f"s3://slides/{key}"


def small_slide_on_s3(options: dict, key: str) -> tuple[str, str]:
    """The shared CMU-1-Small-Region.svs put on the S3 server: ``(local path, s3 URL)``."""
    path = str(DATA / "aperio/CMU-1-Small-Region.svs")
    return path, put_s3(options, key, Path(path).read_bytes())


@pytest.fixture(autouse=True)
def _quick_remote(monkeypatch: pytest.MonkeyPatch) -> None:
    # Short backoff so retry tests take milliseconds; timeouts stay generous.
    monkeypatch.setenv("WSIARRAY_REMOTE_TIMEOUT", "10")


def synthetic_big(path: Path, width: int = 7680, height: int = 2048, tile: int = 256) -> Path:
    """A JPEG slide whose tile rows lie about 1-2 MB apart, as a big slide's do (one level)."""
    import tifffile

    rng = np.random.default_rng(7)
    base = rng.integers(0, 255, (tile * 2, tile * 2, 3), np.uint8)
    smooth = (base.astype(np.uint16) + np.roll(base, 1, 0) + np.roll(base, 1, 1)) // 3

    def tiles():
        for ty in range(-(-height // tile)):
            for tx in range(-(-width // tile)):
                oy, ox = (ty * 37) % tile, (tx * 53) % tile
                yield np.ascontiguousarray(smooth[oy:oy + tile, ox:ox + tile].astype(np.uint8))

    tifffile.imwrite(path, tiles(), shape=(height, width, 3), dtype=np.uint8, tile=(tile, tile),
                     photometric="rgb", compression="jpeg", compressionargs={"level": 85}, metadata=None)
    return path


# -- parsing and import hygiene ------------------------------------------------------------


def test_import_does_not_load_fsspec(pyramid_slides: dict[str, str]) -> None:
    svs_path = pyramid_slides["jpeg"]
    code = (
        "import sys, wsiarray\n"
        f"wsiarray.open({svs_path!r}).read_region((0, 0), (8, 8))\n"
        "print(sorted(m for m in ('fsspec', 's3fs', 'aiohttp', 'botocore') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_parse_source() -> None:
    assert parse_source("file:///tmp/a%20b.svs") == "/tmp/a b.svs"
    url = parse_source("s3://bucket/k.svs", {"secret": "s3cr3t"})
    assert url.protocol == "s3" and url.storage_options == {"secret": "s3cr3t"}
    assert "s3cr3t" not in repr(url) and "s3cr3t" not in url.token()
    assert pickle.loads(pickle.dumps(url)) == url
    with pytest.raises(wsiarray.ArgumentError, match="storage_options apply to URLs"):
        parse_source("local.svs", {"anon": True})
    with pytest.raises(wsiarray.ArgumentError, match="must be a dict"):
        parse_source("s3://b/k", "anon")
    with pytest.raises(wsiarray.ArgumentError, match="file_access applies to local files"):
        wsiarray.open("s3://b/k.svs", file_access="mmap")


def test_merge_ranges() -> None:
    from wsiarray import _native

    assert _native.merge_ranges([(100, 10), (0, 10), (5, 3), (30, 5)], 64, 1 << 20) == [(0, 35), (100, 10)]
    assert _native.merge_ranges([(0, 10), (20, 10)], 64, 15) == [(0, 10), (20, 10)]  # span cap
    assert _native.merge_ranges([(0, 0)], 64, 15) == []
    with pytest.raises(wsiarray.ArgumentError):
        _native.merge_ranges([(2**64 - 1, 2)], 0, 1)


# -- pixels: every shared slide, every level, random regions, batches, dask ------------------


@pytest.mark.skipif(not HAVE_DATA, reason=NO_DATA_REASON)
@pytest.mark.parametrize("name", SLIDES)
def test_pixels_equal_local_http(http: ObjectServer, name: str) -> None:
    path = str(DATA / name)
    url = http.put(f"data/{name}", Path(path).read_bytes())
    try:
        local = wsiarray.open(path)
    except wsiarray.WSIError as exc:  # refused locally: refused the same way remotely
        with pytest.raises(type(exc)):
            wsiarray.open(url, storage_options=http_options())
        return
    remote = wsiarray.open(url, storage_options=http_options())
    assert remote.level_dimensions == local.level_dimensions and remote.properties == {
        k: v for k, v in local.properties.items()}
    for level, (w, h) in enumerate(local.level_dimensions):
        # each level whole, or a full-width band of it past 4 Mpx (test time)
        y, band = (0, h) if w * h <= 4 << 20 else (h // 3, (4 << 20) // w)
        assert_pixels_equal(remote.read_level_region(level, (0, y), (w, band)),
                            local.read_level_region(level, (0, y), (w, band)), f"{name} level {level}")
    for r in random_regions(local, 6, seed=1):
        want = local.read_region(r.location, r.size, r.level)
        assert_pixels_equal(remote.read_region(r.location, r.size, r.level), want, f"{name} {r}")
    for key in local.associated_images:
        np.testing.assert_array_equal(remote.associated_images[key], local.associated_images[key])


@pytest.mark.skipif(not HAVE_DATA, reason=NO_DATA_REASON)
def test_random_regions_s3(s3: tuple[str, dict]) -> None:
    _, options = s3
    path, url = small_slide_on_s3(options, "hyp.svs")
    local = wsiarray.open(path)
    remote = wsiarray.open(url, storage_options=options)

    @settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
    @given(regions(local, max_size=400))
    def check(r) -> None:
        got = remote.read_region(r.location, r.size, r.level, fill=r.fill)
        assert_pixels_equal(got, local.read_region(r.location, r.size, r.level, fill=r.fill), str(r))

    check()


@pytest.mark.skipif(not HAVE_DATA, reason=NO_DATA_REASON)
def test_batches_dask_and_facades(s3: tuple[str, dict]) -> None:
    _, options = s3
    path, url = small_slide_on_s3(options, "batch.svs")
    local = wsiarray.open(path)
    points = [(0, 0), (1000, 1500), (2000, 2800), (-50, 10)]
    got = np.concatenate(list(wsiarray.read_regions([(url, p) for p in points], (224, 224), batch_size=3,
                                                    num_workers=2, storage_options=options)))
    want = np.concatenate(list(wsiarray.read_regions([(path, p) for p in points], (224, 224), batch_size=3)))
    np.testing.assert_array_equal(got, want)

    remote = wsiarray.open(url, storage_options=options)
    array = remote.to_dask(0, chunks=(512, 512, 3))
    assert "testing" not in array.name  # no secret in task names
    np.testing.assert_array_equal(array.compute(), local.read_region((0, 0), local.level_dimensions[0]))
    # recipes carry the URL and the options to wherever they are unpickled
    clone = pickle.loads(pickle.dumps(remote))
    assert clone.path == url and clone.path.storage_options == options

    import xarray as xr

    ds = xr.open_dataset(url, engine="wsiarray", storage_options=options)
    want = local.read_region((200, 100), (200, 200))
    np.testing.assert_array_equal(ds.image[100:300, 200:400].values, want)

    from wsiarray.compat import CuImage

    img = CuImage(url, storage_options=options)
    np.testing.assert_array_equal(np.asarray(img.read_region((10, 20), (64, 64))),
                                  local.read_region((10, 20), (64, 64)))
    pytest.importorskip("PIL")
    import wsiarray.openslide as openslide

    osr = openslide.OpenSlide(url, storage_options=options)
    assert osr.dimensions == local.level_dimensions[0]
    assert osr.read_region((5, 5), 0, (32, 32)).size == (32, 32)


@pytest.mark.skipif(not HAVE_DATA, reason=NO_DATA_REASON)
def test_dicom_refused(http: ObjectServer) -> None:
    name = "dicom/sm_image/sm_image.dcm"
    url = http.put(name, (DATA / name).read_bytes())
    with pytest.raises(wsiarray.UnsupportedError, match="DICOM WSI cannot be read remotely"):
        wsiarray.open(url, storage_options=http_options())


# -- request counts --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def big(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return synthetic_big(tmp_path_factory.mktemp("remote") / "big.tif")


def test_request_counts(http: ObjectServer, big: Path) -> None:
    url = http.put("big.tif", big.read_bytes())
    http.reset()
    slide = wsiarray.open(url, storage_options=http_options())
    open_requests = http.requests
    assert open_requests <= 6, http.log  # one HEAD, a few 256 KiB blocks
    local = wsiarray.open(str(big))
    spec = local.format_info.levels[0]
    row_bytes = int(spec.offsets[0, 1, 0]) - int(spec.offsets[0, 0, 0])
    assert 0.8e6 < row_bytes < 3e6, row_bytes  # tile rows about as far apart as a big slide's

    rng = np.random.default_rng(3)
    w, h = slide.level_dimensions[0]
    points = [(int(rng.integers(0, w - 224)), int(rng.integers(0, h - 224))) for _ in range(60)]
    http.reset()
    for x, y in points:
        want = local.read_region((x, y), (224, 224))
        np.testing.assert_array_equal(slide.read_region((x, y), (224, 224)), want)
    per_patch = http.requests / len(points)
    assert per_patch <= 1.0, http.log

    http.reset()
    whole = slide.read_region((0, 0), (w, h))
    np.testing.assert_array_equal(whole, local.read_region((0, 0), (w, h)))
    assert http.requests <= -(-big.stat().st_size // (16 << 20)) + 1, http.log  # few, large merged requests


# -- a changed object, a flaky, dead or slow server --------------------------------------------


@pytest.mark.skipif(not HAVE_DATA, reason=NO_DATA_REASON)
def test_replaced_object_refused(http: ObjectServer, s3: tuple[str, dict]) -> None:
    path = DATA / "aperio/CMU-1-Small-Region.svs"
    data = path.read_bytes()
    other = (DATA / "aperio/tcga-cr-7395-01a-01-ts1.svs").read_bytes()
    _, options = s3
    for url, storage_options, replace in (
        (http.put("swap.svs", data), http_options(), lambda: http.put("swap.svs", other)),
        (put_s3(options, "swap.svs", data), options, lambda: put_s3(options, "swap.svs", other)),
    ):
        slide = wsiarray.open(url, storage_options=storage_options)
        recipe = pickle.dumps(slide)
        slide.read_region((0, 0), (64, 64))
        replace()
        with pytest.raises(wsiarray.TileReadError, match="changed since the slide was opened"):
            slide.read_region((1000, 1000), (64, 64))
        with pytest.raises(wsiarray.OpenError, match="changed since this slide handle was created"):
            pickle.loads(recipe).read_region((0, 0), (64, 64))


@pytest.mark.skipif(not HAVE_DATA, reason=NO_DATA_REASON)
def test_flaky_server_retries(http: ObjectServer, monkeypatch: pytest.MonkeyPatch) -> None:
    path = DATA / "aperio/CMU-1-Small-Region.svs"
    url = http.put("flaky.svs", path.read_bytes())
    local = wsiarray.open(str(path))
    http.faults = remote_support.Faults(drop=0.2, error=0.2, seed=5)
    slide = wsiarray.open(url, storage_options=http_options())
    for r in random_regions(local, 10, seed=4):
        np.testing.assert_array_equal(slide.read_region(r.location, r.size, r.level),
                                      local.read_region(r.location, r.size, r.level))
    http.reset()

    # out of retries: a clear error naming the URL and the range, and nothing written
    monkeypatch.setenv("WSIARRAY_REMOTE_RETRIES", "1")
    wsiarray.file_handles().clear()  # options are read when the object is opened
    slide = wsiarray.open(url, storage_options=http_options())
    http.faults = remote_support.Faults(error=1.0)
    out = np.full((64, 64, 3), 7, np.uint8)
    with pytest.raises(wsiarray.TileReadError, match=r"flaky\.svs: bytes \d+-\d+ .* after 2 attempts"):
        slide.read_level_region(0, (-32, 0), (64, 64), out=out)
    assert (out == 7).all()  # the fill was not written either
    http.reset()


def test_dead_and_slow_servers(http: ObjectServer, big: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    start = time.monotonic()
    monkeypatch.setenv("WSIARRAY_REMOTE_RETRIES", "1")
    with pytest.raises(wsiarray.OpenError, match=f"127.0.0.1:{port}"):
        wsiarray.open(f"http://127.0.0.1:{port}/nothing.tif", storage_options=http_options())
    assert time.monotonic() - start < 10

    url = http.put("slow.tif", big.read_bytes())
    monkeypatch.setenv("WSIARRAY_REMOTE_TIMEOUT", "0.3")
    slide = wsiarray.open(url, storage_options=http_options())
    http.faults = remote_support.Faults(slow=1.0, delay=2.0)
    start = time.monotonic()
    with pytest.raises(wsiarray.TileReadError, match="TimeoutError"):
        slide.read_region((0, 0), (64, 64))
    assert time.monotonic() - start < 5
    http.reset()


# -- a dask.distributed cluster reading straight from S3 -----------------------------------------


@pytest.mark.skipif(not HAVE_DATA, reason=NO_DATA_REASON)
def test_local_cluster_reads_s3(s3: tuple[str, dict]) -> None:
    distributed = pytest.importorskip("distributed")
    _, options = s3
    path, url = small_slide_on_s3(options, "cluster.svs")
    array = wsiarray.open(url, storage_options=options).to_dask(0, chunks=(1024, 1024, 3))
    expected = wsiarray.open(path).read_region((0, 0), array.shape[1::-1])
    with (
        distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0",
                                 worker_dashboard_address=":0", silence_logs=40) as cluster,
        distributed.Client(cluster) as client,
    ):
        got = client.compute(array).result()
        workers = client.run(lambda: sorted(m for m in ("fsspec", "s3fs") if m in sys.modules))
    np.testing.assert_array_equal(got, expected)
    assert all(mods == ["fsspec", "s3fs"] for mods in workers.values())  # they read from S3 themselves
