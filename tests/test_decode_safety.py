"""Tile streams that lie, codec bombs, external codec errors, and requests too large to allocate.

Every file here is written by the test: honest tiles encoded with imagecodecs, written
pre-encoded with tifffile, then (where a header must lie) patched in place.
"""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
import zlib
from pathlib import Path

import imagecodecs
import numpy as np
import pytest
import tifffile

import wsiarray
from wsiarray import _native
from wsiarray.errors import ArgumentError, RequestTooLargeError, TileDecodeError, WSIError

RNG = np.random.default_rng(18)


def _image(height: int, width: int, samples: int = 3, dtype: str = "uint8") -> np.ndarray:
    info = np.iinfo(dtype)
    return RNG.integers(0, min(info.max, 4000), (height, width, samples), dtype=dtype)


def _write_tiles(path: Path, tiles: list[bytes], shape: tuple[int, ...], tile: tuple[int, int] | None,
                 compression: str | int, *, rowsperstrip: int | None = None, dtype: str = "uint8",
                 photometric: str = "rgb", **more: object) -> str:
    options = {"tile": tile} if tile else {"rowsperstrip": rowsperstrip}
    options.update(more)
    tifffile.imwrite(path, iter(tiles), shape=shape, dtype=dtype, compression=compression,
                     photometric=photometric, **options)
    return str(path)


def _tile_span(path: str, index: int) -> tuple[int, int]:
    with tifffile.TiffFile(path) as tif:
        page = tif.pages[0]
        return int(page.dataoffsets[index]), int(page.databytecounts[index])


def _patch(path: str, offset: int, data: bytes) -> None:
    with open(path, "r+b") as fh:
        fh.seek(offset)
        fh.write(data)


def _jpeg_sof(stream: bytes) -> int:
    """Offset of the frame header's height field in a JPEG stream."""
    pos = 2
    while True:
        assert stream[pos] == 0xFF
        marker, length = stream[pos + 1], int.from_bytes(stream[pos + 2 : pos + 4], "big")
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            return pos + 5
        pos += 2 + length


# -- item 2: a JPEG tile whose own header disagrees with the TIFF -----------------------------


@pytest.fixture
def jpeg_slide(tmp_path: Path) -> str:
    """768x512 RGB, 256x256 JPEG tiles (the native codec), written by tifffile with JPEGTables."""
    path = tmp_path / "jpeg.tif"
    tifffile.imwrite(path, _image(512, 768), tile=(256, 256), compression="jpeg", photometric="rgb")
    return str(path)


@pytest.mark.parametrize(("width", "height"), [(60000, 60000), (300, 300), (128, 128), (256, 64)])
def test_native_jpeg_frame_size_must_match_the_tile(jpeg_slide: str, width: int, height: int) -> None:
    offset, count = _tile_span(jpeg_slide, 1 * 3 + 1)  # tile (1, 1): not an edge tile
    with open(jpeg_slide, "rb") as fh:
        fh.seek(offset)
        sof = _jpeg_sof(fh.read(count))
    _patch(jpeg_slide, offset + sof, height.to_bytes(2, "big") + width.to_bytes(2, "big"))
    with wsiarray.open(jpeg_slide) as slide:
        slide.read_region((0, 0), (256, 256))  # other tiles still read
        want = (f"{jpeg_slide}: level 0 (IFD 0), tile (1, 1): JPEG header says {width}x{height}, "
                "the TIFF says 256x256")
        for read in (lambda: slide.read_region((256, 256), (256, 256)),  # the whole tile, into the output
                     lambda: slide.read_region((300, 300), (10, 10)),  # a window of it
                     lambda: slide.read_region()):
            with pytest.raises(TileDecodeError, match=f"^{re.escape(want)}$"):
                read()


@pytest.mark.parametrize("patch", ["zero height", "no frame header", "12-bit precision", "4 components"])
def test_native_jpeg_bad_frame_headers_are_decode_errors(jpeg_slide: str, patch: str) -> None:
    offset, count = _tile_span(jpeg_slide, 0)
    with open(jpeg_slide, "rb") as fh:
        fh.seek(offset)
        stream = fh.read(count)
    sof = _jpeg_sof(stream)
    if patch == "zero height":  # DNL: libjpeg refuses it
        _patch(jpeg_slide, offset + sof, b"\x00\x00")
    elif patch == "no frame header":
        _patch(jpeg_slide, offset + sof - 4, b"\xe1")  # SOFn -> APP1: scans with no frame
    elif patch == "12-bit precision":
        _patch(jpeg_slide, offset + sof - 1, b"\x0c")
    else:
        _patch(jpeg_slide, offset + sof + 4, b"\x04")
    with wsiarray.open(jpeg_slide) as slide, pytest.raises(TileDecodeError, match=r"tile \(0, 0\): "):
        slide.read_region((0, 0), (256, 256))


def test_edge_tiles_and_strips_of_the_legal_sizes(tmp_path: Path) -> None:
    """As tifffile: an edge tile stored full size, cropped to the image, or cropped in rows only;
    a last strip of at least its rows inside the image and at most RowsPerStrip (the rows below the
    image are dropped). Any other size is refused."""
    image = _image(400, 600)  # 256-px tiles: the edge tiles hold 88 columns, 144 rows

    def tiles(crop: str) -> list[bytes]:
        out = []
        for y in (0, 256):
            for x in (0, 256, 512):
                part = image[y : y + 256, x : x + 256]
                h, w = part.shape[:2]
                if crop == "full" or (h, w) == (256, 256):
                    part = np.pad(part, ((0, 256 - h), (0, 256 - w), (0, 0)))
                elif crop == "rows":
                    part = np.pad(part, ((0, 0), (0, 256 - w), (0, 0)))
                elif crop == "columns":  # full height, cropped width: not legal
                    part = np.pad(part, ((0, 256 - h), (0, 0), (0, 0)))
                out.append(imagecodecs.png_encode(np.ascontiguousarray(part)))
        return out

    for crop in ("full", "both", "rows"):
        path = _write_tiles(tmp_path / f"{crop}.tif", tiles(crop), image.shape, (256, 256), "png")
        with wsiarray.open(path) as slide:
            np.testing.assert_array_equal(slide.read_region(), image, err_msg=crop)
    path = _write_tiles(tmp_path / "columns.tif", tiles("columns"), image.shape, (256, 256), "png")
    with wsiarray.open(path) as slide, pytest.raises(TileDecodeError, match=re.escape(
            "tile (2, 1): PNG header says 88x256, the TIFF says 256x256 (or 88x144 at the image edge)")):
        slide.read_region()

    strips = _image(150, 100)  # RowsPerStrip 64: the last strip holds 22 rows
    for last_rows, ok in ((22, True), (64, True), (30, True), (20, False), (65, False)):
        last = np.pad(strips[128:], ((0, max(last_rows - 22, 0)), (0, 0), (0, 0)))[:last_rows]
        parts = [imagecodecs.png_encode(np.ascontiguousarray(p)) for p in (strips[:64], strips[64:128], last)]
        path = _write_tiles(tmp_path / f"strips{last_rows}.tif", parts, strips.shape, None, "png",
                            rowsperstrip=64)
        with wsiarray.open(path) as slide:
            if ok:
                np.testing.assert_array_equal(slide.read_region(), strips)
            else:
                with pytest.raises(TileDecodeError, match=re.escape(
                        f"tile (0, 2): PNG header says 100x{last_rows}, the TIFF says 100x22 to 100x64")):
                    slide.read_region()


# -- item 3: external codecs: the stream's declared size is checked before decoding -------------


def _encoders() -> dict[str, tuple[str | int, object]]:
    return {
        "JPEG 2000": ("jpeg2000", lambda a: imagecodecs.jpeg2k_encode(a, codecformat="j2k")),
        "JPEG 2000 (JP2)": ("jpeg2000", lambda a: imagecodecs.jpeg2k_encode(a, codecformat="jp2")),
        "Aperio JPEG 2000": (33005, lambda a: imagecodecs.jpeg2k_encode(a, codecformat="j2k")),
        "WebP": ("webp", lambda a: imagecodecs.webp_encode(a, lossless=True)),
        "PNG": ("png", imagecodecs.png_encode),
        "JPEG XL": ("jpegxl", lambda a: imagecodecs.jpegxl_encode(a, lossless=True)),
        "JPEG XR": ("jpegxr", imagecodecs.jpegxr_encode),
    }


@pytest.mark.parametrize("codec", list(_encoders()))
def test_external_stream_of_the_wrong_size_is_refused_before_decoding(tmp_path: Path, codec: str) -> None:
    compression, encode = _encoders()[codec]
    image = _image(256, 256)
    honest = _write_tiles(tmp_path / "honest.tif", [encode(image)], image.shape, (256, 256), compression)
    with wsiarray.open(honest) as slide:
        got = slide.read_region()
    assert got.shape == image.shape
    lying = _write_tiles(tmp_path / "lying.tif", [encode(_image(128, 192))], image.shape, (256, 256),
                         compression)
    name = codec.split(" (")[0].replace("Aperio ", "")
    want = f"{lying}: level 0 (IFD 0), tile (0, 0): {name} header says 192x128, the TIFF says 256x256"
    with wsiarray.open(lying) as slide, pytest.raises(TileDecodeError, match=f"^{re.escape(want)}$"):
        slide.read_region((0, 0), (16, 16))


def test_jpeg_ls_in_an_external_jpeg_level_is_checked(tmp_path: Path) -> None:
    """16-bit JPEG goes to imagecodecs (JPEG-LS / lossless JPEG): its SOF55 is read too."""
    stream = imagecodecs.jpegls_encode(_image(100, 90, 1, "uint16")[..., 0])
    lying = _write_tiles(tmp_path / "ls.tif", [stream],
                         (256, 256), (256, 256), "jpeg", dtype="uint16", photometric="minisblack",
                         bitspersample=16)
    want = "JPEG header says 90x100, the TIFF says 256x256"
    with wsiarray.open(lying) as slide, pytest.raises(TileDecodeError, match=want):
        slide.read_region((0, 0), (16, 16))


def test_parsers_agree_with_the_encoders() -> None:
    encoders = dict(_encoders())
    encoders["JPEG"] = (7, imagecodecs.jpeg8_encode)
    encoders["JPEG-LS"] = (7, lambda a: imagecodecs.jpegls_encode(a // 64))  # CharLS needs some redundancy
    tags = {"jpeg2000": 34712, "webp": 50001, "png": 34933, "jpegxl": 50002, "jpegxr": 34934}
    checked = dict.fromkeys(encoders, 0)
    for height, width in ((256, 256), (200, 300), (64, 1000), (17, 33), (4097, 3), (40, 72)):
        for samples in (1, 3, 4):
            image = _image(height, width, samples)[..., 0] if samples == 1 else _image(height, width, samples)
            for codec, (compression, encode) in encoders.items():
                try:
                    stream = encode(image)
                except Exception:  # a layout this encoder cannot write (WebP gray, JPEG RGBA, ...)
                    continue
                header = _native.stream_header(tags.get(compression, compression), stream)
                assert header is not None and header[:2] == (width, height), (codec, width, height)
                assert header[2] in (0, samples), (codec, samples, header)
                checked[codec] += 1
    assert min(checked.values()) >= 10, checked
    assert _native.stream_header(50000, b"anything") is None  # zstd: decoded into the tile's size
    with pytest.raises(TileDecodeError, match="no JPEG 2000 SOC and SIZ markers"):
        _native.stream_header(34712, b"\xff\x4f")


def _patch_j2k_siz(stream: bytes, width: int, height: int) -> bytes:
    assert stream[:4] == b"\xff\x4f\xff\x51"
    return stream[:8] + width.to_bytes(4, "big") + height.to_bytes(4, "big") + stream[16:]


def _patch_png_ihdr(stream: bytes, width: int, height: int) -> bytes:
    ihdr = b"IHDR" + width.to_bytes(4, "big") + height.to_bytes(4, "big") + stream[24:29]
    return stream[:12] + ihdr + zlib.crc32(ihdr).to_bytes(4, "big") + stream[33:]


def _patch_webp_vp8x(stream: bytes, width: int, height: int) -> bytes:
    # a lossless stream: put a VP8X chunk claiming the canvas in front of its VP8L chunk
    vp8x = b"VP8X" + (10).to_bytes(4, "little") + b"\x00" * 4 + (width - 1).to_bytes(3, "little") \
        + (height - 1).to_bytes(3, "little")
    body = b"WEBP" + vp8x + stream[12:]
    return b"RIFF" + len(body).to_bytes(4, "little") + body


BOMB_SCRIPT = textwrap.dedent("""
    import resource, sys, time
    import wsiarray
    path = sys.argv[1]
    slide = wsiarray.open(path)
    with open("/proc/self/status") as fh:
        vm = next(int(line.split()[1]) * 1024 for line in fh if line.startswith("VmSize:"))
    # a modest address-space limit: a bomb cannot be survived by being lucky with overcommit
    resource.setrlimit(resource.RLIMIT_AS, (vm + (1 << 30), vm + (1 << 30)))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    try:
        slide.read_region((0, 0), (256, 256))
        outcome = "read"
    except wsiarray.WSIError as exc:
        outcome = f"{type(exc).__name__}: {exc}"
    except MemoryError as exc:
        outcome = f"MemoryError: {exc}"
    seconds = time.perf_counter() - start
    grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    print(repr((outcome, seconds, grown * 1024)))
""")


@pytest.mark.parametrize("codec", ["JPEG 2000", "PNG", "WebP"])
def test_bombs_cost_no_more_than_a_tile(tmp_path: Path, codec: str) -> None:
    """One tile whose header claims 60000x60000 (WebP: 16383x16383, its maximum) in a 256x256 tile."""
    image = _image(256, 256)
    if codec == "JPEG 2000":
        tile, compression, claim = _patch_j2k_siz(imagecodecs.jpeg2k_encode(image, codecformat="j2k"),
                                                  60000, 60000), 33005, (60000, 60000)
    elif codec == "PNG":
        tile, compression, claim = _patch_png_ihdr(imagecodecs.png_encode(image), 60000, 60000), "png", \
            (60000, 60000)
    else:
        stream = imagecodecs.webp_encode(image, lossless=True)
        tile, compression, claim = _patch_webp_vp8x(stream, 16383, 16383), "webp", (16383, 16383)
    path = _write_tiles(tmp_path / "bomb.tif", [tile], image.shape, (256, 256), compression)
    assert Path(path).stat().st_size < 900_000
    result = subprocess.run([sys.executable, "-c", BOMB_SCRIPT, path], capture_output=True, text=True,
                            timeout=120, check=True)
    outcome, seconds, grown = eval(result.stdout.strip().splitlines()[-1])
    want = f"TileDecodeError: {path}: level 0 (IFD 0), tile (0, 0): {codec} header says " \
           f"{claim[0]}x{claim[1]}, the TIFF says 256x256"
    assert outcome == want
    assert seconds < 0.5
    assert grown < 32 << 20


# -- item 4: external codec errors: one line, the codec's exception as __cause__ --------------


def test_external_codec_errors_are_one_line_with_the_cause_chained(tmp_path: Path) -> None:
    image = _image(256, 256)
    stream = bytearray(imagecodecs.jpeg2k_encode(image, codecformat="j2k"))
    stream[len(stream) // 2 :] = b"\xff" * (len(stream) - len(stream) // 2)  # corrupt the tile data
    path = _write_tiles(tmp_path / "corrupt.tif", [bytes(stream)], image.shape, (256, 256), "jpeg2000")
    with wsiarray.open(path) as slide, pytest.raises(TileDecodeError) as caught:
        slide.read_region((0, 0), (64, 64), num_workers=2)
    message = str(caught.value)
    cause = caught.value.__cause__
    assert "Traceback" not in message and "\n" not in message, message
    assert isinstance(cause, Exception) and not isinstance(cause, WSIError)
    first_line = str(cause).splitlines()[0]
    assert message == f"{path}: level 0 (IFD 0), tile (0, 0): {type(cause).__name__}: {first_line}"


# -- item 5: requests too large to allocate ---------------------------------------------------


@pytest.fixture
def small_slide(tmp_path: Path) -> str:
    path = tmp_path / "small.tif"
    tifffile.imwrite(path, _image(763, 1000), tile=(256, 256), compression="zlib", photometric="rgb")
    return str(path)


def test_request_too_large_is_refused_before_allocating(small_slide: str) -> None:
    assert issubclass(RequestTooLargeError, ArgumentError) and issubclass(RequestTooLargeError, MemoryError)
    assert wsiarray.RequestTooLargeError is RequestTooLargeError
    limit = int(wsiarray.request_limit() * (1 << 20))
    with wsiarray.open(small_slide) as slide:
        with pytest.raises(RequestTooLargeError, match=r"^the request needs 120000000000 bytes \(111\.8 GiB: "
                           r"1 x 200000x200000 pixels x 3 uint8\), more than the limit of "
                           f"{limit} bytes .*; ask for a smaller size or batch_size, or raise the limit with "
                           r"wsiarray\.request_limit\(max_mib=\.\.\.\) or WSIARRAY_MAX_REQUEST_MIB$"):
            slide.read_region((0, 0), (200000, 200000))
        with pytest.raises(RequestTooLargeError, match=r"^the request needs 1505280000000 bytes \(1\.4 TiB: "
                           r"10000000 x 224x224 pixels x 3 uint8\)"):
            slide.read_region(np.zeros((10**7, 2), np.int64), (224, 224), batch_size=10**7)
        out = np.empty((10, 10, 3), np.uint8)  # the caller's output: nothing to allocate
        assert slide.read_level_region(0, (0, 0), (10, 10), out=out) is out


def test_request_limit_option_and_environment(small_slide: str, monkeypatch: pytest.MonkeyPatch) -> None:
    default = wsiarray.request_limit()
    try:
        assert wsiarray.request_limit(max_mib=1) == 1.0
        with wsiarray.open(small_slide) as slide:
            with pytest.raises(RequestTooLargeError, match=r"1 x 1000x763 pixels x 3 uint8"):
                slide.read_region()  # the whole level: 2.2 MiB
            assert slide.read_region((0, 0), (256, 256)).shape == (256, 256, 3)
        assert wsiarray.request_limit(max_mib=0) == default
        monkeypatch.setenv("WSIARRAY_MAX_REQUEST_MIB", "2")
        assert wsiarray.request_limit() == 2.0
        monkeypatch.setenv("WSIARRAY_MAX_REQUEST_MIB", "lots")
        with pytest.raises(ArgumentError, match="WSIARRAY_MAX_REQUEST_MIB must be a number of MiB > 0"):
            wsiarray.request_limit()
    finally:
        monkeypatch.delenv("WSIARRAY_MAX_REQUEST_MIB", raising=False)
        wsiarray.request_limit(max_mib=0)
    with pytest.raises(ArgumentError):
        wsiarray.request_limit(max_mib=-1)


def test_a_whole_level_within_memory_still_reads(small_slide: str) -> None:
    with wsiarray.open(small_slide) as slide:
        assert slide.read_region().shape == (763, 1000, 3)
    assert wsiarray.request_limit() >= 1024  # physical memory of any machine that runs the suite
