"""The GPU path without a GPU: nvImageCodec's CPU backend runs the whole decode stage into NumPy.

``device="cuda"`` decodes JPEG tiles with nvImageCodec. Its CPU backend
(libjpeg-turbo, ``WSIARRAY_GPU_BACKEND=cpu``) needs no driver, so CI runs the
real code path end to end:

- the native engine's standalone streams (``Reader.jpeg_streams``: JPEGTables
  spliced in, Adobe APP14 on RGB-coded tiles only, headers checked first) decode to
  the native CPU path's pixels, tile by tile, on every JPEG slide in ../shared/data
  and on synthetic ones (4:2:0, 4:4:4, RGB- and YCbCr-coded, tables with only DQT,
  tiles that repeat their tables);
- the decode stage (``wsiarray._cuda``) equals ``Slide.read_region`` for random
  regions (partly or wholly outside), edge tiles, batches, many-file batches and dask
  chunks;
- ``import wsiarray`` and CPU reads import no CUDA package; the errors without the
  extra and without a usable GPU.

Tests that need CuPy (a GPU) are marked ``needs_cupy`` and skip here.
"""

from __future__ import annotations

import os
import struct
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import imagecodecs
import numpy as np
import pytest
import tifffile
from hypothesis import given, settings
from hypothesis import strategies as st
from wsitest import SyntheticSpec, jpeg_segments

import wsiarray
from wsiarray import _cuda
from wsiarray._cuda.device import Target
from wsiarray._request import GPU_BACKEND_ENV, parse_device, parse_gpu_backend

nvimgcodec = pytest.importorskip(
    "nvidia.nvimgcodec", reason="nvImageCodec (nvidia-nvimgcodec-cu12, in the test extra) is not installed")

try:  # CuPy that can allocate: only on a machine with a GPU and a driver
    import cupy

    cupy.empty((0,))
    HAVE_CUPY = True
except Exception:  # ImportError, or CUDA failing without a driver
    HAVE_CUPY = False
needs_cupy = pytest.mark.skipif(not HAVE_CUPY, reason="needs CuPy and a usable GPU")

CPU = Target(np, "cpu", None)
ADOBE = b"\xff\xee\x00\x0eAdobe"
FILL = bytes([255, 0, 128])

S = SyntheticSpec
SPECS = [
    S("gpu-ycbcr420", width=1000, height=763, compression="jpeg", photometric="ycbcr", subsampling=(2, 2),
      pyramid="subifd", steps=(2,)),
    S("gpu-ycbcr444-odd", width=257, height=511, compression="jpeg", photometric="ycbcr",
      subsampling=(1, 1), tile=(128, 32)),
    S("gpu-ycbcr422", width=300, height=200, compression="jpeg", photometric="ycbcr", subsampling=(2, 1),
      tile=(64, 64)),
    S("gpu-rgb-adobe", width=500, height=300, compression="jpeg", photometric="rgb", subsampling=(1, 1),
      compressionargs=(("outcolorspace", "rgb"),), tile=(240, 240)),
    # complete YCbCr JFIF tiles that repeat their tables, Photometric RGB
    S("gpu-jfif-own-tables", jpeg="jfif", compression="jpeg", width=500, height=300, tile=(240, 240)),
    # Aperio's layout: RGB-coded, component ids 0/1/2, no marker, tables in JPEGTables
    S("gpu-bare-tables", jpeg="bare", compression="jpeg", width=257, height=511, tile=(32, 128)),
]
RGB_CODED = {"gpu-rgb-adobe", "gpu-bare-tables"}


@pytest.fixture(autouse=True)
def _cpu_backend(monkeypatch: pytest.MonkeyPatch) -> None:
    """``device="cuda"`` runs the GPU stage on nvImageCodec's CPU backend in these tests."""
    monkeypatch.setenv(GPU_BACKEND_ENV, "cpu")


def write_dqt_only(path: Path) -> np.ndarray:
    """A YCbCr JPEG slide whose JPEGTables hold only DQT; the tiles keep their DHT."""
    from wsitest import texture

    image = texture(200, 300, 3, "uint8", seed=5)
    tiles, tables = [], None
    for y in range(0, 200, 64):
        for x in range(0, 300, 64):
            part = np.zeros((64, 64, 3), np.uint8)
            src = image[y:y + 64, x:x + 64]
            part[:src.shape[0], :src.shape[1]] = src
            stream = imagecodecs.jpeg8_encode(part, level=85, colorspace="rgb", outcolorspace="ycbcr",
                                              subsampling="444")
            segments, rest = jpeg_segments(stream)
            dqt = [s for s in segments if s[1] == 0xDB]
            this = b"\xff\xd8" + b"".join(dqt) + b"\xff\xd9"
            assert tables in (None, this)
            tables = this
            kept = [s for s in segments if s[1] not in (0xDB, 0xE0)]  # no DQT, no JFIF
            tiles.append(b"\xff\xd8" + b"".join(kept) + rest)
    tifffile.imwrite(path, data=iter(tiles), shape=image.shape, dtype=np.uint8, tile=(64, 64),
                     photometric="ycbcr", subsampling=(1, 1), compression="jpeg", jpegtables=tables)
    return image


@pytest.fixture(scope="module")
def dqt_only(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("gpu") / "dqt-only.tif"
    write_dqt_only(path)
    return str(path)


def jpeg_levels(slide: wsiarray.Slide) -> list[int]:
    native = slide._opened().native
    return [level for level in range(slide.level_count) if native.jpeg_streams_problem(level) == ""]


def stage_read(slide: wsiarray.Slide, level: int, x: int, y: int, w: int, h: int, fill: bytes = FILL,
               workers: int = 2) -> np.ndarray:
    out = _cuda.read_requests(CPU, [(slide._opened().native, level, x, y)], w, h, fill, slide.dtype,
                              slide.channels, workers)
    assert isinstance(out, np.ndarray) and out.shape == (1, h, w, slide.channels)
    return out[0]


def check_every_tile(path: str) -> int:
    """Each tile's standalone stream, decoded alone by nvImageCodec, equals the native CPU read of it."""
    slide = wsiarray.open(path)
    native = slide._opened().native
    decoder = _cuda.codec.decoder("cpu", None, 2)
    checked = 0
    for level in jpeg_levels(slide):
        width, height = slide.level_dimensions[level]
        streams = native.jpeg_streams(level, 0, 0, width, height, 2)
        tile_w, tile_h = slide.levels[level].tile_size
        kinds, spans, frames = streams["kind"], streams["spans"], streams["frames"]
        picked = np.flatnonzero(kinds == 0)
        codes = [nvimgcodec.CodeStream(bytes(streams["data"][s:s + n])) for s, n in spans[picked]]
        images = decoder.decode(codes)
        reference = slide.read_level_region(level, (0, 0), (width, height))
        for k, t in enumerate(picked):
            assert images[k] is not None, f"{path} level {level} tile {t} did not decode"
            got = np.asarray(images[k].cpu())
            fw, fh = (int(v) for v in frames[t])
            assert got.shape == (fh, fw, 3)
            x0, y0 = int(streams["tx"][t]) * tile_w, int(streams["ty"][t]) * tile_h
            w, h = min(fw, width - x0), min(fh, height - y0)
            np.testing.assert_array_equal(got[:h, :w], reference[y0:y0 + h, x0:x0 + w],
                                          err_msg=f"{path} level {level} tile {t}")
            checked += 1
    return checked


# -- the native streams --------------------------------------------------------------------------


def test_every_tile_of_every_shared_jpeg_slide(real_file: str) -> None:
    slide = wsiarray.open(real_file)
    if not jpeg_levels(slide):
        pytest.skip(f"{real_file}: no level of 8-bit RGB JPEG tiles")
    assert check_every_tile(real_file) > 0


@pytest.mark.parametrize("spec", SPECS, ids=[s.name for s in SPECS])
def test_every_tile_of_synthetic_slides(spec: SyntheticSpec,
                                        synthetic: Callable[[SyntheticSpec], str]) -> None:
    assert check_every_tile(synthetic(spec)) > 0


def test_tables_with_only_dqt(dqt_only: str) -> None:
    tables = tifffile.TiffFile(dqt_only).pages[0].jpegtables
    segments, _ = jpeg_segments(tables[:-2] + b"\xff\xda")
    assert {s[1] for s in segments} == {0xDB}
    assert check_every_tile(dqt_only) == 20


@pytest.mark.parametrize("which", ["bare", "dqt-only"])
def test_streams_are_tables_then_tile(which: str, dqt_only: str,
                                      synthetic: Callable[[SyntheticSpec], str]) -> None:
    """``tile[:2] + [APP14 on RGB-coded tiles] + tables[2:-2] + tile[2:]``."""
    path = synthetic(SPECS[-1]) if which == "bare" else dqt_only
    slide = wsiarray.open(path)
    native = slide._opened().native
    tables = tifffile.TiffFile(path).pages[0].jpegtables
    adobe = ADOBE + bytes([0x00, 0x64, 0, 0, 0, 0, 0]) if which == "bare" else b""
    width, height = slide.level_dimensions[0]
    fetched = native.fetch(0, 0, 0, width, height)
    streams = native.jpeg_streams(0, 0, 0, width, height)
    for (s, n), (fs, fn) in zip(streams["spans"], fetched["spans"], strict=True):
        tile = bytes(fetched["data"][fs:fs + fn])
        assert bytes(streams["data"][s:s + n]) == tile[:2] + adobe + tables[2:-2] + tile[2:]


@pytest.mark.parametrize("spec", SPECS, ids=[s.name for s in SPECS])
def test_adobe_segment_only_on_rgb_coded_tiles(spec: SyntheticSpec,
                                               synthetic: Callable[[SyntheticSpec], str]) -> None:
    native = wsiarray.open(synthetic(spec))._opened().native
    streams = native.jpeg_streams(0, 0, 0, spec.width, spec.height)
    for s, n in streams["spans"]:
        stream = bytes(streams["data"][s:s + n])
        assert stream[:2] == b"\xff\xd8"
        assert (stream[2:11] == ADOBE) == (spec.name in RGB_CODED), spec.name


def test_dicom_rgb_frames_lose_their_jfif_marker(data_file: Callable[[str], str]) -> None:
    """DICOM RGB frames carry JFIF; their colour follows PhotometricInterpretation, as on the CPU."""
    path = data_file("dicom/cmu-1-small-region/level-0-frames-0-30.dcm")
    native = wsiarray.open(path)._opened().native
    fetched = native.fetch(0, 0, 0, 512, 512)
    streams = native.jpeg_streams(0, 0, 0, 512, 512)
    s, n = streams["spans"][0]
    fs, fn = fetched["spans"][0]
    tile, stream = bytes(fetched["data"][fs:fs + fn]), bytes(streams["data"][s:s + n])
    assert tile[6:11] == b"JFIF\x00" and b"JFIF" not in stream[:64]
    assert stream[2:11] == ADOBE


def test_missing_tiles_are_flagged(tmp_path: Path) -> None:
    path = tmp_path / "sparse.tif"
    image = np.full((128, 192, 3), 90, np.uint8)
    tifffile.imwrite(path, image, tile=(64, 64), compression="jpeg", photometric="ycbcr", subsampling=(2, 2))
    _zero_tile(path, 1)
    slide = wsiarray.open(str(path))
    streams = slide._opened().native.jpeg_streams(0, 0, 0, 192, 128)
    assert list(streams["kind"]) == [0, 1, 0, 0, 0, 0]
    assert list(streams["spans"][1]) == [0, 0]
    np.testing.assert_array_equal(stage_read(slide, 0, -10, -10, 220, 150),
                                  slide.read_level_region(0, (-10, -10), (220, 150), fill=list(FILL)))


def _zero_tile(path: Path, index: int) -> None:
    """Make tile ``index`` never written (offset and byte count 0), in place."""
    with tifffile.TiffFile(path, mode="r+b") as tif:
        page = tif.pages[0]
        for code in (324, 325):  # TileOffsets, TileByteCounts
            tag = page.tags[code]
            values = list(tag.value)
            values[index] = 0
            tag.overwrite(values)


def test_a_tile_whose_header_lies_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "lying.tif"
    image = np.full((128, 128, 3), 90, np.uint8)
    tifffile.imwrite(path, image, tile=(64, 64), compression="jpeg", photometric="ycbcr", subsampling=(2, 2))
    with tifffile.TiffFile(path) as tif:
        offset, count = tif.pages[0].dataoffsets[3], tif.pages[0].databytecounts[3]
    data = bytearray(path.read_bytes())
    sof = data.find(b"\xff\xc0", offset, offset + count)
    data[sof + 5:sof + 9] = struct.pack(">HH", 60000, 60000)  # height, width
    path.write_bytes(bytes(data))
    slide = wsiarray.open(str(path))
    with pytest.raises(wsiarray.TileDecodeError, match=r"tile \(1, 1\).*60000x60000"):
        slide._opened().native.jpeg_streams(0, 0, 0, 128, 128)
    with pytest.raises(wsiarray.TileDecodeError, match=r"tile \(1, 1\)"):
        slide.read_region((0, 0), (128, 128), device="cuda")
    # the tiles before it are still served
    np.testing.assert_array_equal(slide.read_region((0, 0), (64, 64), device="cuda"),
                                  slide.read_region((0, 0), (64, 64)))


def test_a_tile_that_is_not_jpeg_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "garbage.tif"
    tifffile.imwrite(path, np.full((64, 64, 3), 9, np.uint8), tile=(64, 64), compression="jpeg",
                     photometric="ycbcr", subsampling=(2, 2))
    with tifffile.TiffFile(path) as tif:
        offset = tif.pages[0].dataoffsets[0]
    data = bytearray(path.read_bytes())
    data[offset:offset + 2] = b"\x00\x00"
    path.write_bytes(bytes(data))
    with pytest.raises(wsiarray.TileDecodeError, match="SOI"):
        wsiarray.open(str(path)).read_region((0, 0), (64, 64), device="cuda")


def test_other_levels_say_why_not(pyramid_slides: dict[str, str]) -> None:
    native = wsiarray.open(pyramid_slides["deflate"])._opened().native
    assert native.jpeg_streams_problem(0) == "not a JPEG level"
    with pytest.raises(wsiarray.UnsupportedError, match="not a JPEG level"):
        native.jpeg_streams(0, 0, 0, 10, 10)
    with pytest.raises(wsiarray.ArgumentError):
        native.jpeg_streams_problem(7)


# -- the decode stage against Slide.read_region -----------------------------------------------


@pytest.fixture(scope="module")
def cmu(data_file: Callable[[str], str]) -> wsiarray.Slide:
    return wsiarray.open(data_file("aperio/CMU-1-Small-Region.svs"))


@settings(max_examples=25)
@given(x=st.integers(-400, 2400), y=st.integers(-400, 3100), w=st.integers(1, 600), h=st.integers(1, 600))
def test_random_regions_equal_the_cpu_path(cmu: wsiarray.Slide, x: int, y: int, w: int, h: int) -> None:
    np.testing.assert_array_equal(stage_read(cmu, 0, x, y, w, h),
                                  cmu.read_level_region(0, (x, y), (w, h), fill=list(FILL)))


@pytest.mark.parametrize("region", [(0, 0, 2220, 2967), (240, 240, 240, 240), (239, 241, 242, 240),
                                    (2200, 2950, 100, 100), (-5000, 10, 50, 50), (2220, 0, 8, 8),
                                    (-1, -1, 1, 1)])
def test_edge_tiles_and_outside(cmu: wsiarray.Slide, region: tuple[int, int, int, int]) -> None:
    x, y, w, h = region
    np.testing.assert_array_equal(cmu.read_level_region(0, (x, y), (w, h), fill=7, device="cuda"),
                                  cmu.read_level_region(0, (x, y), (w, h), fill=7))


@pytest.mark.parametrize("spec", SPECS, ids=[s.name for s in SPECS])
def test_synthetic_levels_through_the_public_api(spec: SyntheticSpec,
                                                 synthetic: Callable[[SyntheticSpec], str]) -> None:
    slide = wsiarray.open(synthetic(spec))
    for level in range(slide.level_count):
        got = slide.read_region(level=level, device="cuda")
        np.testing.assert_array_equal(got, slide.read_region(level=level))
        w, h = slide.level_dimensions[level]
        for x, y in [(-7, -3), (w // 3, h // 2), (w - 5, h - 5)]:
            np.testing.assert_array_equal(slide.read_level_region(level, (x, y), (77, 61), device="cuda"),
                                          slide.read_level_region(level, (x, y), (77, 61)))


def test_batches_equal_the_cpu_path(cmu: wsiarray.Slide) -> None:
    rng = np.random.default_rng(3)
    locations = np.stack([rng.integers(-100, 2300, 37), rng.integers(-100, 3000, 37)], axis=1)
    got = list(cmu.read_region(locations, (224, 224), batch_size=16, num_workers=2, device="cuda"))
    want = list(cmu.read_region(locations, (224, 224), batch_size=16, num_workers=2))
    assert [b.shape for b in got] == [(16, 224, 224, 3), (16, 224, 224, 3), (5, 224, 224, 3)]
    for a, b in zip(got, want, strict=True):
        np.testing.assert_array_equal(a, b)


def test_batches_over_many_files_and_codecs(cmu: wsiarray.Slide, pyramid_slides: dict[str, str],
                                            synthetic: Callable[[SyntheticSpec], str]) -> None:
    bare = synthetic(SPECS[-1])
    items = [(cmu, (10, 10)), (pyramid_slides["jpeg"], (900, 700)), (bare, (0, 0)), (cmu, (2000, 2900)),
             (bare, (200, 400))]
    got = next(wsiarray.read_regions(items, (100, 90), batch_size=5, device="cuda"))
    want = next(wsiarray.read_regions(items, (100, 90), batch_size=5))
    np.testing.assert_array_equal(got, want)


def test_non_jpeg_levels_read_on_the_cpu_and_copy(pyramid_slides: dict[str, str]) -> None:
    slide = wsiarray.open(pyramid_slides["deflate"])
    np.testing.assert_array_equal(slide.read_region((-3, 5), (300, 200), device="cuda"),
                                  slide.read_region((-3, 5), (300, 200)))


def test_dask_chunks_equal_the_cpu_path(pyramid_slides: dict[str, str]) -> None:
    slide = wsiarray.open(pyramid_slides["jpeg"])
    for level in range(slide.level_count):
        gpu = slide.to_dask(level, chunks=256, device="cuda")
        cpu = slide.to_dask(level, chunks=256)
        assert gpu.name != cpu.name and isinstance(gpu._meta, np.ndarray)  # NumPy on the CPU backend
        np.testing.assert_array_equal(gpu.compute(), cpu.compute())
    data = slide.to_xarray(1, device="cuda").image
    np.testing.assert_array_equal(data.values, slide.read_region(level=1))


def test_mpp_and_icc_reads_go_up_after_the_cpu(pyramid_slides: dict[str, str]) -> None:
    slide = wsiarray.open(pyramid_slides["jpeg"])
    np.testing.assert_array_equal(slide.read_region((0, 0), (100, 80), mpp=1.3, device="cuda"),
                                  slide.read_region((0, 0), (100, 80), mpp=1.3))


def test_cuimage_and_dataset(cmu: wsiarray.Slide) -> None:
    image = wsiarray.CuImage(cmu.path)
    region = image.read_region((100, 100), (64, 48), device="cuda")
    np.testing.assert_array_equal(np.asarray(region), np.asarray(image.read_region((100, 100), (64, 48))))
    with pytest.raises(wsiarray.ArgumentError, match="associated images are read on the CPU"):
        image.associated_image("thumbnail", device="cuda")
    from wsiarray.torch import PatchDataset

    ds = PatchDataset([(cmu.path, (0, 0)), (cmu.path, (500, 500))], (32, 32), device="cuda")
    for a, b in zip(ds.__getitems__([0, 1]), PatchDataset([(cmu.path, (0, 0)), (cmu.path, (500, 500))],
                                                          (32, 32)).__getitems__([0, 1]), strict=True):
        np.testing.assert_array_equal(a, b)


def _numpy_pread(path: str, destination: np.ndarray, ranges: list[tuple[int, int]]) -> None:
    with open(path, "rb") as f:
        start = 0
        for offset, size in ranges:
            f.seek(offset)
            destination[start:start + size] = np.frombuffer(f.read(size), np.uint8)
            start += size


@pytest.mark.parametrize("region", [(0, 0, 300, 200), (-20, -10, 100, 90), (63, 64, 65, 1),
                                    (250, 150, 90, 90), (400, 0, 5, 5)])
def test_raw_levels_through_the_kvikio_path(tmp_path: Path, region: tuple[int, int, int, int]) -> None:
    """The kvikio path's placement logic, with a NumPy pread in kvikio's place (kvikio needs a driver)."""
    from wsiarray._cuda import raw

    path = tmp_path / "raw.tif"
    image = np.random.default_rng(1).integers(0, 65535, (200, 300, 3), np.uint16)
    tifffile.imwrite(path, image, tile=(64, 64), photometric="rgb")
    slide = wsiarray.open(str(path))
    x, y, w, h = region
    out = np.empty((h, w, 3), np.uint16)
    out[...] = 7
    assert raw.read_raw(CPU, slide._opened().native, 0, x, y, out.view(np.uint8), pread=_numpy_pread)
    np.testing.assert_array_equal(out, slide.read_level_region(0, (x, y), (w, h), fill=7))
    deflate = tmp_path / "deflate.tif"
    tifffile.imwrite(deflate, image, tile=(64, 64), photometric="rgb", compression="zlib")
    assert not raw.read_raw(CPU, wsiarray.open(str(deflate))._opened().native, 0, 0, 0, out.view(np.uint8),
                            pread=_numpy_pread)
    assert not raw.enabled()


# -- arguments, imports, errors ------------------------------------------------------------------


def test_device_and_backend_parsing(monkeypatch: pytest.MonkeyPatch) -> None:
    assert parse_device("cuda:0") == "cuda:0" and parse_device(" CUDA ") == "cuda"
    assert parse_device(None) == "cpu"
    for bad in ["gpu", "cuda:", "cuda:-1", "cuda:x", 0, "cuda:99999"]:
        with pytest.raises(wsiarray.ArgumentError, match="device must be"):
            parse_device(bad)
    monkeypatch.setenv(GPU_BACKEND_ENV, "nvjpeg")
    with pytest.raises(wsiarray.ArgumentError, match=GPU_BACKEND_ENV):
        parse_gpu_backend()
    monkeypatch.setenv(GPU_BACKEND_ENV, "HYBRID")
    assert parse_gpu_backend() == "hybrid"
    monkeypatch.delenv(GPU_BACKEND_ENV)
    assert parse_gpu_backend() == "hw"


def run_python(code: str, **env: str) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if k != GPU_BACKEND_ENV}
    environment.update(env)
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          env=environment, timeout=120)


def test_import_and_cpu_reads_import_no_cuda_package(pyramid_slides: dict[str, str]) -> None:
    result = run_python(f"""
        import sys, wsiarray
        slide = wsiarray.open({pyramid_slides["jpeg"]!r})
        slide.read_region((0, 0), (300, 300))
        next(slide.read_region([(0, 0), (10, 10)], (32, 32), batch_size=2))
        slide.to_dask(0).sum().compute()
        loaded = [m for m in sys.modules if m.split(".")[0] in ("cupy", "nvidia", "kvikio", "cupy_backends")]
        assert not loaded, loaded
        assert "wsiarray._cuda" not in sys.modules
        print("ok")
    """)
    assert result.returncode == 0 and "ok" in result.stdout, result.stderr


@pytest.mark.parametrize("hidden", ["nvidia", "cupy"])
def test_without_the_extra_the_error_names_it(pyramid_slides: dict[str, str], hidden: str) -> None:
    result = run_python(f"""
        import sys
        sys.modules[{hidden!r}] = None  # as if not installed
        import wsiarray
        slide = wsiarray.open({pyramid_slides["jpeg"]!r})
        for call in (lambda: slide.read_region((0, 0), (8, 8), device="cuda"),
                     lambda: slide.to_dask(0, device="cuda"),
                     lambda: slide.read_region([(0, 0)], (8, 8), device="cuda:0")):
            try:
                call()
            except ImportError as exc:
                assert "wsiarray[cuda12]" in str(exc) and "wsiarray[cuda13]" in str(exc), exc
            else:
                raise AssertionError("no error")
        print("ok")
    """)
    assert result.returncode == 0 and "ok" in result.stdout, result.stderr


def test_cupy_without_a_gpu_is_gpu_unavailable(pyramid_slides: dict[str, str]) -> None:
    """CuPy installed but CUDA failing (no driver): GPUUnavailableError, a WSIError."""
    result = run_python(f"""
        import sys, types
        class CUDARuntimeError(RuntimeError):
            pass
        def fail():
            raise CUDARuntimeError("cudaErrorInsufficientDriver: CUDA driver version is insufficient")
        cupy = types.ModuleType("cupy")
        cupy.cuda = types.SimpleNamespace(runtime=types.SimpleNamespace(getDeviceCount=fail, getDevice=fail))
        sys.modules["cupy"] = cupy
        import wsiarray
        slide = wsiarray.open({pyramid_slides["jpeg"]!r})
        try:
            slide.read_region((0, 0), (8, 8), device="cuda:1")
        except wsiarray.GPUUnavailableError as exc:
            assert isinstance(exc, wsiarray.WSIError) and "InsufficientDriver" in str(exc), exc
        print("ok")
    """)
    assert result.returncode == 0 and "ok" in result.stdout, result.stderr


@pytest.mark.skipif(HAVE_CUPY or Path("/proc/driver/nvidia").exists(), reason="this machine has a GPU driver")
def test_gpu_decoder_without_a_driver_is_gpu_unavailable() -> None:
    """Real: nvImageCodec's GPU decoder cannot start on this machine (no driver)."""
    for backend in ("hw", "cuda", "hybrid"):
        with pytest.raises(wsiarray.GPUUnavailableError, match="WSIARRAY_GPU_BACKEND=cpu"):
            _cuda.codec.decoder(backend, 0, 1)


# -- on a GPU only ---------------------------------------------------------------------------------


@needs_cupy
def test_cupy_reads_equal_the_cpu_path(cmu: wsiarray.Slide, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(GPU_BACKEND_ENV)
    got = cmu.read_region((-20, 30), (700, 500), device="cuda")
    assert isinstance(got, cupy.ndarray) and got.flags.c_contiguous
    want = cmu.read_region((-20, 30), (700, 500))
    assert int(cupy.abs(got.astype(cupy.int16) - cupy.asarray(want, cupy.int16)).max()) <= 1


@needs_cupy
def test_cupy_dask_meta(cmu: wsiarray.Slide, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(GPU_BACKEND_ENV)
    array = cmu.to_dask(0, device="cuda")
    assert isinstance(array._meta, cupy.ndarray)
    assert isinstance(array.blocks[0, 0, 0].compute(), cupy.ndarray)
