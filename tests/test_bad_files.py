"""Bad input gives a clear WSIError, quickly and in bounded memory: never a crash or hang.

Every case runs in a fresh interpreter (so a crash or hang fails the test
instead of the run) that warms up on a good slide, caps its address space at
the warmed-up size + 100 MB, opens the bad file, reads every level whole and a
region, and reports what was raised, how long it took and how much its peak
RSS grew.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from wsitest import (
    DataFile,
    SyntheticFactory,
    SyntheticSpec,
    assert_pixels_equal,
    level_arrays,
    patch_tag_item,
    tile_table,
    xor_bytes,
)

import wsiarray

#: Extra address space / peak RSS the bad file may cost beyond the warmed-up process.
MEMORY_LIMIT = 100 << 20
#: Opening plus reading must fail within this many seconds (after imports).
TIME_LIMIT = 1.0
#: A hang is declared after this many seconds (imports included).
HANG_TIMEOUT = 60

SCRIPT = r"""
import json, math, os, resource, sys, time
import wsiarray

path, warm, limit = sys.argv[1], sys.argv[2], int(sys.argv[3])

# Warm up on a good slide: starts the native pool, loads the codecs. The DICOM parser is
# imported on the first DICOM open: an import too (1-2 s on a loaded VM), not the time to fail.
import pydicom
with wsiarray.open(warm) as s:
    for level in range(s.level_count):
        s.read_region((0, 0), s.level_dimensions[level], level, num_workers=0)

def vm_size():
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmSize:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None

base = vm_size()
if base is not None:
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    if hard == resource.RLIM_INFINITY or base + limit < hard:
        resource.setrlimit(resource.RLIMIT_AS, (base + limit, hard))
rss_unit = 1 if sys.platform == "darwin" else 1024
rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * rss_unit

result = {"error": None, "phase": "open"}
t0 = time.perf_counter()
try:
    slide = wsiarray.open(path)
    result["levels"] = slide.level_count
    for level in range(slide.level_count):
        width, height = slide.level_dimensions[level]
        downsample = slide.level_downsamples[level]
        result["phase"] = f"read level {level} whole"
        if width * height * slide.channels * slide.dtype.itemsize <= 64 << 20:
            slide.read_region((0, 0), (width, height), level)
        else:  # absurd claimed size: a whole-level array is the caller's problem
            slide.read_region((0, 0), (2048, 2048), level)
        result["phase"] = f"read a region of level {level}"
        location = (math.ceil((width // 2 - 40) * downsample), math.ceil((height // 2 - 40) * downsample))
        slide.read_region(location, (80, 80), level, num_workers=2)
except BaseException as exc:
    result["error"] = type(exc).__name__
    result["mro"] = [c.__name__ for c in type(exc).__mro__]
    result["wsi"] = isinstance(exc, wsiarray.WSIError)
    result["message"] = str(exc)
result["elapsed"] = time.perf_counter() - t0
result["rss_growth"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * rss_unit - rss0
print("RESULT:" + json.dumps(result))
"""

#: A good slide for the isolated interpreter to warm up on (JPEG and deflate levels).
WARM_SPEC = SyntheticSpec("warm-up", width=300, height=200, compression="jpeg", photometric="ycbcr",
                          subsampling=(2, 2), pyramid="subifd", steps=(2,))


@dataclass(frozen=True)
class Expect:
    """What a bad file must raise: a WSIError subclass and patterns its message must contain."""

    error: str = "WSIError"
    patterns: tuple[str, ...] = ()


#: The bad files of shared/data/bad we know; others must at least raise a WSIError naming the file.
KNOWN_BAD = {
    "unreadable.svs": Expect(
        "TileDecodeError", (r"JPEG", r"Bogus marker length", r"tile \(0, 0\)", r"level 0")
    ),
    "unopenable.tiff": Expect("UnsupportedError", (r"compression", r"52479")),
    "broken.svs": Expect("OpenError", (r"not a TIFF",)),
    "test_ifd_loop_to_self.tif": Expect("FormatError", (r"loop",)),
    "tile-offsets-past-eof.tif": Expect("TileReadError", (r"tile \(\d+, \d+\)", r"outside the file")),
    "absurd-samples-per-pixel.tif": Expect("FormatError", (r"SamplesPerPixel", r"65535")),
    "corrupted-ifd-88-bytes.tif": Expect("FormatError", (r"corrupt",)),
    "dicom-no-image-type.dcm": Expect("FormatError", (r"ImageType", r"not a conformant")),
}


def run_isolated(path: str, warm: str) -> dict:
    """Open and read ``path`` in a fresh, memory-capped interpreter; return its report."""
    try:
        proc = subprocess.run(
            [sys.executable, "-c", SCRIPT, path, warm, str(MEMORY_LIMIT)],
            capture_output=True, text=True, timeout=HANG_TIMEOUT,
            env={**os.environ, "PYTHONFAULTHANDLER": "1"},
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"{path}: hung (no result within {HANG_TIMEOUT} s)")
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT:")]
    assert proc.returncode == 0 and lines, (
        f"{path}: the reader process died (exit code {proc.returncode})\n"
        f"stdout: {proc.stdout[-2000:]}\nstderr: {proc.stderr[-4000:]}"
    )
    return json.loads(lines[-1][len("RESULT:"):])


def check_report(report: dict, path: str, expect: Expect, *, fast: bool = True) -> None:
    """The report shows a clear, quick, bounded failure as ``expect`` describes."""
    assert report["error"] is not None, f"{path}: no error raised (opened with {report.get('levels')} levels)"
    assert report["wsi"], (
        f"{path}: {report['error']} is not a wsiarray.WSIError ({report['phase']}): {report['message']}"
    )
    assert expect.error in report["mro"], (
        f"{path}: expected {expect.error} but got {report['error']} ({report['phase']}): {report['message']}"
    )
    message = report["message"]
    assert path in message or os.path.basename(path) in message, f"message does not name the file: {message}"
    for pattern in expect.patterns:
        assert re.search(pattern, message, re.IGNORECASE), f"{pattern!r} not in message: {message}"
    if fast:
        assert report["elapsed"] < TIME_LIMIT, f"{path}: took {report['elapsed']:.2f} s to fail"
    assert report["rss_growth"] < MEMORY_LIMIT, f"{path}: peak RSS grew by {report['rss_growth'] >> 20} MiB"


@pytest.fixture(scope="module")
def warm(synthetic: SyntheticFactory) -> str:
    return synthetic(WARM_SPEC)


def test_bad_file_fails_cleanly(bad_file: str, warm: str) -> None:
    report = run_isolated(bad_file, warm)
    check_report(report, bad_file, KNOWN_BAD.get(os.path.basename(bad_file), Expect()))


# -- the two bad files that open ----------------------------------------------------


def test_unreadable_svs_opens_then_read_names_jpeg_error_and_tile(data_file: DataFile) -> None:
    path = data_file("bad/unreadable.svs")
    with wsiarray.open(path) as slide:
        assert slide.level_dimensions == ((16, 16),)
        for _ in range(2):  # the failure is not sticky or different the second time
            with pytest.raises(wsiarray.TileDecodeError) as info:
                slide.read_region((0, 0), (16, 16))
            message = str(info.value)
            assert path in message
            assert "Bogus marker length" in message and "JPEG" in message
            assert re.search(r"tile \(0, 0\)", message) and "level 0" in message
        # outside the image no tile is decoded, so nothing fails
        assert_pixels_equal(slide.read_region((100, 100), (4, 4)), np.zeros((4, 4, 3), np.uint8), "outside")


def test_tile_offsets_past_eof_is_tile_read_error(data_file: DataFile) -> None:
    path = data_file("bad/tile-offsets-past-eof.tif")
    with wsiarray.open(path) as slide:
        with pytest.raises(wsiarray.TileReadError, match=r"tile \(0, 0\).*outside the file") as info:
            slide.read_region((0, 0), slide.level_dimensions[0])
        assert path in str(info.value)


# -- synthetic corruption ------------------------------------------------------------

BASES = {
    "jpeg": SyntheticSpec("bad-jpeg", width=600, height=500, compression="jpeg", photometric="ycbcr",
                          subsampling=(2, 2)),
    "deflate": SyntheticSpec("bad-deflate", width=600, height=500, compression="zlib", predictor=True),
    "lzw": SyntheticSpec("bad-lzw", width=600, height=500, compression="lzw"),
    "zstd": SyntheticSpec("bad-zstd", width=600, height=500, compression="zstd"),
    "raw": SyntheticSpec("bad-raw", width=600, height=500),
}
MIDDLE_TILE = 4  # of the 3x2 grid: (row 1, column 1)


def _truncate_in_tile_data(path: Path) -> None:
    offsets, counts = tile_table(path)
    with open(path, "r+b") as fh:
        fh.truncate(offsets[MIDDLE_TILE] + counts[MIDDLE_TILE] // 2)


def _flip_tile_start(path: Path) -> None:
    offsets, _ = tile_table(path)
    xor_bytes(path, offsets[MIDDLE_TILE] + 2, 16)


def _flip_tile_middle(path: Path) -> None:
    offsets, counts = tile_table(path)
    xor_bytes(path, offsets[MIDDLE_TILE] + counts[MIDDLE_TILE] // 2, 16, 0x5A)


def _bytecount_past_eof(path: Path) -> None:
    patch_tag_item(path, 325, MIDDLE_TILE, os.path.getsize(path) * 2)


def _bytecount_huge(path: Path) -> None:
    patch_tag_item(path, 325, MIDDLE_TILE, 0xFFFF_FFF0)


def _offset_past_eof(path: Path) -> None:
    patch_tag_item(path, 324, MIDDLE_TILE, os.path.getsize(path) + 1000)


def _short_tile(path: Path) -> None:
    _, counts = tile_table(path)
    patch_tag_item(path, 325, MIDDLE_TILE, counts[MIDDLE_TILE] // 3)


TILE_11 = r"tile \(1, 1\)"  # the middle tile of the 3x2 grid, named in the message
READ_ERROR = Expect("TileReadError", (TILE_11,))
DECODE_ERROR = Expect("TileDecodeError", (TILE_11,))
CORRUPTIONS: dict[str, tuple[str, Callable[[Path], None], Expect]] = {
    "jpeg-truncated-in-tile-data": ("jpeg", _truncate_in_tile_data, READ_ERROR),
    "deflate-truncated-in-tile-data": ("deflate", _truncate_in_tile_data, READ_ERROR),
    "jpeg-tile-header-flipped": ("jpeg", _flip_tile_start, Expect("TileDecodeError", (TILE_11, "JPEG"))),
    "deflate-tile-flipped": ("deflate", _flip_tile_middle, DECODE_ERROR),
    "deflate-tile-header-flipped": ("deflate", _flip_tile_start, DECODE_ERROR),
    "zstd-tile-flipped": ("zstd", _flip_tile_start, DECODE_ERROR),
    "jpeg-bytecount-past-eof": ("jpeg", _bytecount_past_eof, READ_ERROR),
    "deflate-bytecount-huge": ("deflate", _bytecount_huge, READ_ERROR),
    "raw-offset-past-eof": ("raw", _offset_past_eof, READ_ERROR),
    "raw-tile-short": ("raw", _short_tile, DECODE_ERROR),
    "deflate-tile-short": ("deflate", _short_tile, DECODE_ERROR),
}


@pytest.mark.parametrize("case", sorted(CORRUPTIONS))
def test_corrupted_synthetic_slide_fails_cleanly(
    case: str, synthetic: SyntheticFactory, warm: str, tmp_path: Path
) -> None:
    base, corrupt, expect = CORRUPTIONS[case]
    path = tmp_path / f"{case}.tif"
    shutil.copyfile(synthetic(BASES[base]), path)
    corrupt(path)
    report = run_isolated(str(path), warm)
    check_report(report, str(path), expect)


@pytest.mark.parametrize("base", ["jpeg", "lzw"])
def test_garbage_tile_never_crashes(
    base: str, synthetic: SyntheticFactory, warm: str, tmp_path: Path
) -> None:
    """Entropy-coded garbage may decode to noise (libjpeg only warns), but never crashes or leaks."""
    path = tmp_path / f"{base}-garbage.tif"
    shutil.copyfile(synthetic(BASES[base]), path)
    offsets, counts = tile_table(path)
    start = offsets[MIDDLE_TILE] + (counts[MIDDLE_TILE] // 2 if base == "jpeg" else 0)
    rng = np.random.default_rng(1)
    with open(path, "r+b") as fh:
        fh.seek(start)
        fh.write(rng.integers(0, 256, offsets[MIDDLE_TILE] + counts[MIDDLE_TILE] - start, np.uint8).tobytes())
    report = run_isolated(str(path), warm)
    if report["error"] is not None:
        check_report(report, str(path), DECODE_ERROR)
    assert report["elapsed"] < TIME_LIMIT and report["rss_growth"] < MEMORY_LIMIT


def test_one_corrupt_tile_leaves_the_others_readable(synthetic: SyntheticFactory, tmp_path: Path) -> None:
    spec = BASES["deflate"]
    path = tmp_path / "one-bad-tile.tif"
    shutil.copyfile(synthetic(spec), path)
    _flip_tile_start(path)
    written = level_arrays(spec)[0]
    with wsiarray.open(path) as slide:
        for _ in range(2):
            with pytest.raises(wsiarray.TileDecodeError, match=TILE_11):
                slide.read_region((0, 0), (600, 500), num_workers=2)
            assert_pixels_equal(slide.read_region((0, 0), (600, 256)), written[:256], "tiles of row 0")
            assert_pixels_equal(slide.read_region((0, 256), (256, 244)), written[256:, :256], "tile (1, 0)")
            assert_pixels_equal(slide.read_region((512, 256), (88, 244)), written[256:, 512:], "tile (1, 2)")


# -- not slides at all ---------------------------------------------------------------


def _write(content: bytes) -> Callable[[Path], Path]:
    def make(tmp_path: Path) -> Path:
        path = tmp_path / "file.tif"
        path.write_bytes(content)
        return path

    return make


NOT_SLIDES: dict[str, tuple[Callable[[Path], Path], Expect]] = {
    "random-bytes": (_write(np.random.default_rng(2).integers(0, 256, 5000, np.uint8).tobytes()),
                     Expect("OpenError", (r"not a TIFF",))),
    "empty-file": (_write(b""), Expect("OpenError", (r"not a TIFF|empty",))),
    "png-named-tif": (_write(b"\x89PNG\r\n\x1a\n" + bytes(100)), Expect("OpenError", (r"not a TIFF",))),
    "tiff-header-only": (_write(b"II*\x00\x08\x00\x00\x00"), Expect("FormatError", (r"IFD",))),
    "tiff-first-ifd-past-eof": (
        _write(b"MM\x00*\x00\x00\x10\x00" + bytes(8)), Expect("FormatError", (r"IFD",))
    ),
    "directory": (lambda tmp_path: tmp_path, Expect("OpenError")),
    "missing-path": (lambda tmp_path: tmp_path / "no" / "such.svs", Expect("OpenError", (r"No such file",))),
}


@pytest.mark.parametrize("case", sorted(NOT_SLIDES))
def test_not_a_slide_fails_cleanly(case: str, tmp_path: Path) -> None:
    make, expect = NOT_SLIDES[case]
    path = make(tmp_path)
    with pytest.raises(wsiarray.WSIError) as info:
        wsiarray.open(path)
    assert expect.error in [c.__name__ for c in type(info.value).__mro__], repr(info.value)
    message = str(info.value)
    assert str(path) in message, message
    for pattern in expect.patterns:
        assert re.search(pattern, message, re.IGNORECASE), f"{pattern!r} not in {message!r}"

