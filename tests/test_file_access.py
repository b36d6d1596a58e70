"""File access modes (issue 12): ``wsiarray.open(path, file_access=...)``.

Every mode (``pread``, ``mmap``, ``direct``, ``preload``) gives the pixels of the
default on synthetic slides (every level, edge tiles, regions partly and wholly
outside, a whole level large enough for ``preload`` to load its byte span) and on
the shared test slides; bad files give the same errors in every mode; handles of
different modes share nothing; fork and spawn workers and threads read correctly.
A file truncated underneath is covered in ``test_truncation.py`` for every mode.
"""

from __future__ import annotations

import concurrent.futures
import copy
import multiprocessing
import os
import pickle
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import tifffile
from wsitest import reference_level

import wsiarray

MODES = ("pread", "mmap", "direct", "preload")
#: Regions (level-0 x, y, w, h) partly and wholly outside a 1000x763 slide, and inside.
REGIONS = [
    (-50, -40, 200, 150),
    (900, 700, 300, 300),
    (1100, 0, 20, 20),
    (129, 255, 1, 1),
    (250, 130, 380, 257),
    (0, 0, 1000, 763),
]


def read_all(slide: wsiarray.Slide, workers: int = 2) -> list[np.ndarray]:
    """Every level whole, then REGIONS at every level: the pixels a mode must agree on."""
    out = []
    for level, (w, h) in enumerate(slide.level_dimensions):
        out.append(slide.read_region((0, 0), (w, h), level, num_workers=workers))
        for x, y, rw, rh in REGIONS:
            out.append(slide.read_region((x, y), (rw, rh), level, num_workers=workers))
    return out


def assert_same(got: list[np.ndarray], want: list[np.ndarray], what: str) -> None:
    assert len(got) == len(want), what
    for i, (a, b) in enumerate(zip(got, want, strict=True)):
        assert a.shape == b.shape and np.array_equal(a, b), f"{what}: read {i} differs"


@pytest.fixture(scope="module")
def raw_slide(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A 1200x1000 RGB uncompressed slide (3.9 MB of tiles): large enough for ``preload`` (1 MiB)."""
    rng = np.random.default_rng(5)
    image = rng.integers(0, 256, (1000, 1200, 3), dtype=np.uint8)
    path = tmp_path_factory.mktemp("file-access") / "raw.tif"
    tifffile.imwrite(path, image, tile=(256, 256), photometric="rgb")
    return str(path)


def test_file_access_argument(pyramid_slides: dict[str, str]) -> None:
    path = pyramid_slides["jpeg"]
    assert wsiarray.open(path).file_access == "pread"
    with pytest.raises(wsiarray.ArgumentError, match="file_access must be one of"):
        wsiarray.open(path, file_access="O_DIRECT")
    with pytest.raises(wsiarray.ArgumentError, match="file_access must be one of"):
        wsiarray.open(path, file_access=1)  # type: ignore[arg-type]
    for mode in MODES:
        slide = wsiarray.open(path, file_access=mode)
        assert slide.file_access == mode
        assert pickle.loads(pickle.dumps(slide)).file_access == mode
        assert copy.copy(slide).file_access == mode
    # Different modes, different readers; the same mode, the same one.
    manager = wsiarray.file_handles()
    slide = wsiarray.open(path)
    readers = {mode: manager.acquire(path, slide.identity, mode) for mode in MODES}
    assert len({id(r) for r in readers.values()}) == len(MODES)
    assert all(r.native.file_access == mode for mode, r in readers.items())
    assert manager.acquire(path, slide.identity, "mmap") is readers["mmap"]


@pytest.mark.parametrize("kind", ["jpeg", "deflate"])
def test_synthetic_pixels_equal_in_every_mode(pyramid_slides: dict[str, str], kind: str) -> None:
    path = pyramid_slides[kind]
    want = read_all(wsiarray.open(path))
    assert_same(want[:1], [reference_level(path, 0)], "pread against tifffile")
    for mode in MODES[1:]:
        assert_same(read_all(wsiarray.open(path, file_access=mode)), want, f"{kind} {mode}")
        # Batches go through the same readers.
        slide = wsiarray.open(path, file_access=mode)
        locations = [(0, 0), (900, 700), (-5, 3)]
        batch = np.concatenate(list(slide.read_region(locations, (199, 151), batch_size=2)))
        assert np.array_equal(batch[0], want[0][:151, :199]), mode


def test_whole_level_preload(raw_slide: str) -> None:
    ref = reference_level(raw_slide, 0)
    for mode in MODES:
        slide = wsiarray.open(raw_slide, file_access=mode)
        for workers in (1, 3):
            got = slide.read_region((0, 0), (1200, 1000), num_workers=workers)
            assert np.array_equal(got, ref), f"{mode}, {workers} workers"
        # A band (dense) and a column of tiles (sparse) of the level.
        assert np.array_equal(slide.read_region((0, 300), (1200, 500)), ref[300:800]), mode
        assert np.array_equal(slide.read_region((400, 0), (200, 1000)), ref[:, 400:600]), mode


def fetched_bytes(slide: wsiarray.Slide, level: int) -> tuple[np.ndarray, np.ndarray]:
    """The compressed bytes of every tile of ``level``, as the native fetcher reads them."""
    native = wsiarray.file_handles().acquire(slide.path, slide.identity, slide.file_access).native
    w, h = slide.level_dimensions[level]
    got = native.fetch(level, 0, 0, w, h, 2)
    return got["data"], got["spans"]


@pytest.mark.needs_data
def test_real_slides_equal_in_every_mode(real_file: str) -> None:
    # Every tile's bytes of every level, against the file; decoded: each level's
    # edge tiles (its bottom-right corner, partly outside) and the smallest level.
    slide = wsiarray.open(real_file)
    tiles = [fetched_bytes(slide, level) for level in range(slide.level_count)]
    file_bytes = Path(real_file).read_bytes()
    for level in range(slide.level_count):
        native = wsiarray.file_handles().acquire(real_file, slide.identity).native
        w, h = slide.level_dimensions[level]
        data, spans = tiles[level]
        offsets = native.fetch(level, 0, 0, w, h)["offset"].tolist()
        for offset, (start, count) in zip(offsets, spans.tolist(), strict=True):
            assert bytes(data[start : start + count]) == file_bytes[offset : offset + count]

    def decoded(s: wsiarray.Slide, levels: int | None = None) -> list[np.ndarray]:
        out = []
        for level, (w, h) in enumerate(s.level_dimensions[:levels]):
            out.append(s.read_level_region(level, (w - 300, h - 200), (400, 260), num_workers=2))
        w, h = s.level_dimensions[-1]
        out.append(s.read_level_region(s.level_count - 1, (0, 0), (w, h), num_workers=2))
        return out

    want = decoded(slide)
    for mode in MODES[1:]:
        other = wsiarray.open(real_file, file_access=mode)
        for level in range(slide.level_count):
            data, spans = fetched_bytes(other, level)
            assert np.array_equal(spans, tiles[level][1]) and np.array_equal(data, tiles[level][0]), mode
        # The bytes being equal, decoding in each mode checks the read path: level 0's corner
        # and the smallest level.
        got = decoded(other, 1)
        assert_same([got[0], got[-1]], [want[0], want[-1]], f"{real_file} {mode}")


def error_trace(path: str, mode: str) -> list[str]:
    """What opening ``path`` and reading each level's corners raise, step by step."""
    trace = []
    try:
        slide = wsiarray.open(path, file_access=mode)
    except Exception as exc:
        return [f"open: {type(exc).__name__}"]
    for level, (w, h) in enumerate(slide.level_dimensions):
        for x, y in [(0, 0), (w - 64, h - 64)]:
            try:
                slide.read_level_region(level, (x, y), (64, 64))
                trace.append(f"{level}: ok")
            except Exception as exc:
                assert isinstance(exc, wsiarray.WSIError), f"{path} {mode}: {exc!r}"
                assert os.path.basename(path) in str(exc), f"{mode}: message does not name the file: {exc}"
                trace.append(f"{level}: {type(exc).__name__}")
    return trace


@pytest.mark.needs_data
def test_bad_files_fail_alike_in_every_mode(bad_file: str) -> None:
    want = error_trace(bad_file, "pread")
    for mode in MODES[1:]:
        assert error_trace(bad_file, mode) == want, mode


def test_tile_past_the_end_in_every_mode(tmp_path: Path) -> None:
    # A tile table pointing past the end: the planner's check, whatever the mode.
    path = tmp_path / "short.tif"
    tifffile.imwrite(path, np.zeros((512, 512, 3), np.uint8), tile=(256, 256), photometric="rgb")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 1000])
    for mode in MODES:
        slide = wsiarray.open(path, file_access=mode)
        with pytest.raises(wsiarray.TileReadError, match=r"short\.tif"):
            slide.read_region((0, 0), (512, 512))


def read_regions(slide: wsiarray.Slide, regions: list[tuple[int, int, int, int]]) -> list[np.ndarray]:
    """Module-level, so process pools can pickle it."""
    return [slide.read_region((x, y), (w, h), num_workers=2) for x, y, w, h in regions]


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_processes_in_every_mode(pyramid_slides: dict[str, str], method: str) -> None:
    path = pyramid_slides["jpeg"]
    want = read_regions(wsiarray.open(path), REGIONS)
    # Opened and read in the parent first: a forked child inherits the mapping and descriptors.
    slides = [wsiarray.open(path, file_access=mode) for mode in MODES]
    for slide in slides:
        read_regions(slide, REGIONS[:1])
    context = multiprocessing.get_context(method)
    # One spawned process: each costs an interpreter and the imports.
    with concurrent.futures.ProcessPoolExecutor(2 if method == "fork" else 1, mp_context=context) as pool:
        results = list(pool.map(read_regions, slides, [REGIONS] * len(slides)))
    for mode, got in zip(MODES, results, strict=True):
        assert_same(got, want, f"{method} {mode}")


def test_threads_in_every_mode(pyramid_slides: dict[str, str]) -> None:
    path = pyramid_slides["jpeg"]
    rng = np.random.default_rng(3)
    regions = [
        (
            int(rng.integers(-100, 1000)),
            int(rng.integers(-100, 763)),
            int(rng.integers(1, 300)),
            int(rng.integers(1, 300)),
        )
        for _ in range(48)
    ]
    want = read_regions(wsiarray.open(path), regions)
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        for mode in MODES:
            slide = wsiarray.open(path, file_access=mode)
            parts = [regions[i::8] for i in range(8)]
            got = list(pool.map(read_regions, [slide] * len(parts), parts))
            for i, part in enumerate(got):
                assert_same(part, want[i::8], f"threads {mode}")


def test_other_sigbus_still_ends_the_process(pyramid_slides: dict[str, str], tmp_path: Path) -> None:
    # The mmap mode's SIGBUS handler catches faults of its own copies only: a
    # SIGBUS anywhere else (here numpy's mapping of a file that shrank) still
    # ends the process as it would without wsiarray.
    code = textwrap.dedent(f"""
        import os, numpy as np, wsiarray
        s = wsiarray.open({pyramid_slides["jpeg"]!r}, file_access="mmap")
        s.read_region((0, 0), (64, 64))
        path = {str(tmp_path / "other.bin")!r}
        with open(path, "wb") as f:
            f.write(b"x" * (1 << 16))
        m = np.memmap(path, mode="r")
        os.truncate(path, 0)
        print("read", int(m[-1]))
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    # Under tools/asan.sh the handler before ours is AddressSanitizer's: it reports and aborts.
    expected = -6 if "libasan" in os.environ.get("LD_PRELOAD", "") else -7
    assert proc.returncode == expected and "read" not in proc.stdout, (proc.returncode, proc.stderr[-2000:])


#: A DICOM series in the shared test data (a folder: one file per level).
DICOM_SERIES = Path(__file__).resolve().parents[2] / "shared" / "data" / "dicom" / "cmu-1-small-region"


@pytest.mark.needs_data
def test_dicom_series_in_every_mode() -> None:
    # A series' reader opens the folder (never read) and one file per level, all in its mode.
    if not DICOM_SERIES.is_dir():
        pytest.skip(f"{DICOM_SERIES} is missing")
    path = str(DICOM_SERIES)
    slide = wsiarray.open(path)
    want = [slide.read_level_region(level, (0, 0), size) for level, size in enumerate(slide.level_dimensions)]
    for mode in MODES[1:]:
        other = wsiarray.open(path, file_access=mode)
        sizes = enumerate(other.level_dimensions)
        assert_same(
            [other.read_level_region(level, (0, 0), size) for level, size in sizes], want, f"dicom {mode}"
        )
