"""Coverage-guided fuzzer (atheris): mutated files through ``wsiarray.open`` and every read path.

Each input is written to a new file (the engine identifies files by path and
identity, so a reused name could be served from a cache), opened, described
(every metadata property), read at every level (small regions at the corners,
across the right and bottom edges and outside the image, through both
``read_region`` and ``read_level_region``), read as a batch and through
``read_regions``, and its associated images decoded.  A
:class:`wsiarray.WSIError` is the expected outcome for a bad file; anything
else (another exception, a crash, a sanitizer report, a hang) is a finding.

Run it through ``tools/asan.sh --fuzz`` so the native engine is built with
AddressSanitizer and UndefinedBehaviorSanitizer; see ``fuzz/README.md``.
Options of its own (the rest go to libFuzzer)::

    --data DIR      the shared test files to seed from (default: ../shared/data of the repo)
    --seeds DIR     where to write the seed corpus (default: a temporary folder)
    --hang SECONDS  per-input CPU-time limit, raised as a Python exception where the
                    time went (default 10); libFuzzer's -timeout (wall clock, default
                    60 here) catches hangs outside Python
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import shutil
import signal
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import atheris
import numpy as np

with atheris.instrument_imports(include=["wsiarray", "tifffile"]):
    import tifffile

    import wsiarray
    import wsiarray.formats  # the format layer loads lazily; instrument it too

#: libFuzzer's defaults here unless the command line says otherwise.
DEFAULT_FLAGS = {
    "-max_len": "131072",  # inputs are whole files: big enough for every seed
    "-timeout": "60",  # a native hang (no Python to interrupt) is caught by libFuzzer
    "-rss_limit_mb": "3072",
}
#: Region size of the small reads (level pixels).
PATCH = 16


class Hang(BaseException):
    """One input ran past the time limit (a BaseException: wrap_errors must not swallow it)."""


def _on_alarm(signum: int, frame: Any) -> None:
    raise Hang("input ran past the per-input time limit")


# -- what each input goes through -------------------------------------------------


def _describe(slide: wsiarray.Slide) -> None:
    """Touch every metadata property the public API offers."""
    for name in ("vendor", "levels", "level_count", "level_dimensions", "level_downsamples",
                 "level_tile_sizes", "dtype", "channels", "shape", "dims", "channel_names", "mpp",
                 "objective_power", "identity", "format_info"):
        getattr(slide, name)
    properties = slide.properties
    for key in properties:
        str(properties[key])
    repr(slide)


def _spots(width: int, height: int) -> list[tuple[int, int]]:
    """Level-pixel corners of the small reads: origin, edges, far corner, outside."""
    return [(0, 0), (width - PATCH // 2, 0), (0, height - PATCH // 2), (width - 1, height - 1),
            (width // 2, height // 2), (-PATCH // 2, -PATCH // 2), (width + 1, height + 1)]


def _read_levels(slide: wsiarray.Slide) -> None:
    """Small regions at every level, both coordinate systems, a thumbnail when cheap."""
    for level, (width, height) in enumerate(slide.level_dimensions):
        downsample = slide.level_downsamples[level]
        for x, y in _spots(width, height):
            with contextlib.suppress(wsiarray.WSIError):
                slide.read_level_region(level, (x, y), (PATCH, PATCH))
            with contextlib.suppress(wsiarray.WSIError):
                location = (int(x * downsample), int(y * downsample))
                slide.read_region(location, (PATCH, PATCH), level, num_workers=2)
        if width * height <= 1 << 16:  # the whole level, when small
            with contextlib.suppress(wsiarray.WSIError):
                slide.read_region(level=level)
    width, height = slide.level_dimensions[-1]
    if width * height <= 1 << 18:
        with contextlib.suppress(wsiarray.WSIError):
            slide.get_thumbnail((32, 32))


def _read_batches(slide: wsiarray.Slide, path: str) -> None:
    """The batch API: one slide's iterator, and read_regions over a handle and a path."""
    level = slide.level_count - 1
    width, height = slide.level_dimensions[0]
    locations = [(0, 0), (max(0, width - PATCH), max(0, height - PATCH)), (width // 3, height // 3)]
    with contextlib.suppress(wsiarray.WSIError):
        for batch in slide.read_region(locations, (PATCH, PATCH), level, batch_size=2, num_workers=2):
            np.asarray(batch)
    with contextlib.suppress(wsiarray.WSIError):
        items = [(slide, locations[0]), (path, locations[1]), (slide, locations[2])]
        for batch in wsiarray.read_regions(items, (PATCH, PATCH), batch_size=3, shuffle=True, seed=1):
            np.asarray(batch)


def _associated(slide: wsiarray.Slide) -> None:
    images = slide.associated_images
    for name in list(images):
        with contextlib.suppress(wsiarray.WSIError):
            images[name]


def exercise(path: str) -> None:
    """Open ``path`` and use every read path; only :class:`wsiarray.WSIError` may escape."""
    with wsiarray.open(path) as slide:
        for step in (_describe, _read_levels, _associated):
            with contextlib.suppress(wsiarray.WSIError):
                step(slide)
        with contextlib.suppress(wsiarray.WSIError):
            _read_batches(slide, path)


class Target:
    """The libFuzzer entry point: every input in a file of its own, removed afterwards."""

    def __init__(self, folder: str, hang_seconds: float) -> None:
        self.folder = folder
        self.hang_seconds = hang_seconds
        self.count = 0

    def __call__(self, data: bytes) -> None:
        self.count += 1
        path = os.path.join(self.folder, f"input-{self.count}.tif")
        with open(path, "wb") as fh:
            fh.write(data)
        # CPU time (SIGVTALRM): SIGALRM is libFuzzer's, for its own -timeout.
        signal.setitimer(signal.ITIMER_VIRTUAL, self.hang_seconds)
        try:
            exercise(path)
        except wsiarray.WSIError:
            pass
        finally:
            signal.setitimer(signal.ITIMER_VIRTUAL, 0)
            os.unlink(path)


# -- seed corpus ------------------------------------------------------------------


def _tiff_bytes(write: Callable[[tifffile.TiffWriter], None], **options: Any) -> bytes:
    buffer = io.BytesIO()
    with tifffile.TiffWriter(buffer, **options) as tw:
        write(tw)
    return buffer.getvalue()


def _image(height: int, width: int, samples: int = 3, dtype: Any = np.uint8) -> np.ndarray:
    rng = np.random.default_rng(height * 131 + width)
    base = np.add.outer(np.arange(height), np.arange(width)).astype(np.float64)
    image = (base[:, :, None] * (1 + np.arange(samples)) + rng.integers(0, 8, (height, width, samples)))
    return (image % (np.iinfo(dtype).max if np.dtype(dtype).kind in "ui" else 255)).astype(dtype)


def _pyramid(compression: Any, samples: int = 3, dtype: Any = np.uint8, tile: tuple[int, int] = (16, 16),
             **options: Any) -> Callable[[tifffile.TiffWriter], None]:
    def write(tw: tifffile.TiffWriter) -> None:
        for n, (h, w) in enumerate(((40, 56), (20, 28), (10, 14))):
            image = _image(h, w, samples, dtype)
            if samples == 1:
                image = image[:, :, 0]
            tw.write(image, tile=tile, compression=compression, subfiletype=1 if n else 0, **options)
    return write


def _aperio(tw: tifffile.TiffWriter) -> None:
    description = ("Aperio Image Library v10.0.0\r\n56x40 [0,0 56x40] (16x16) JPEG/RGB Q=70"
                   "|AppMag = 20|MPP = 0.4990|Filename = seed")
    tw.write(_image(40, 56), tile=(16, 16), compression="jpeg", photometric="rgb", description=description)
    tw.write(_image(20, 28), compression="jpeg", photometric="rgb", description="Aperio thumbnail 28x20")
    tw.write(_image(20, 28), tile=(16, 16), compression="jpeg", photometric="rgb",
             description="Aperio Image Library v10.0.0\r\n28x20 -> 28x20 JPEG/RGB Q=70|MPP = 1")
    tw.write(_image(8, 10), compression="lzw", subfiletype=1,
             description="Aperio Image Library\r\nlabel 10x8")
    tw.write(_image(8, 12), compression="jpeg", subfiletype=9,
             description="Aperio Image Library\r\nmacro 12x8")


def _ome(tw: tifffile.TiffWriter) -> None:
    image = _image(48, 64, 2, np.uint16).transpose(2, 0, 1)
    metadata = {"axes": "CYX", "PhysicalSizeX": 0.25, "PhysicalSizeY": 0.25, "Channel": {"Name": ["a", "b"]}}
    tw.write(image, tile=(16, 16), compression="zlib", subifds=2, metadata=metadata)
    tw.write(image[:, ::2, ::2], tile=(16, 16), compression="zlib", subfiletype=1)
    tw.write(image[:, ::4, ::4], tile=(16, 16), compression="zlib", subfiletype=1)


def _strips(tw: tifffile.TiffWriter) -> None:
    tw.write(_image(37, 23), rowsperstrip=5, compression="lzw", predictor=True)
    tw.write(_image(12, 9), rowsperstrip=4, subfiletype=1)


def synthetic_seeds() -> Iterator[tuple[str, bytes]]:
    """Small slides of every layout the engine decodes itself, and some it hands to imagecodecs."""
    cases: list[tuple[str, Callable[[tifffile.TiffWriter], None], dict[str, Any]]] = [
        ("deflate-rgb", _pyramid("zlib"), {}),
        ("jpeg-rgb", _pyramid("jpeg", photometric="rgb"), {}),
        ("jpeg-ycbcr", _pyramid("jpeg", photometric="ycbcr"), {}),
        ("jpeg-gray", _pyramid("jpeg", samples=1), {}),
        ("lzw-predictor-u16", _pyramid("lzw", samples=1, dtype=np.uint16, predictor=True), {}),
        ("raw-rgba", _pyramid(None, samples=4, extrasamples=[2]), {}),
        ("deflate-separate", _pyramid("zlib", planarconfig="separate"), {}),
        ("deflate-bigendian-bigtiff", _pyramid("zlib", dtype=np.uint16), {"byteorder": ">", "bigtiff": True}),
        ("zstd-float32", _pyramid("zstd", samples=1, dtype=np.float32, predictor=True), {}),
        ("webp", _pyramid("webp", tile=(32, 32)), {}),
        ("odd-tile", _pyramid("zlib", tile=(32, 16)), {}),
        ("aperio", _aperio, {}),
        ("ome-subifds", _ome, {"ome": True}),
        ("strips", _strips, {}),
    ]
    for name, write, options in cases:
        try:
            yield name, _tiff_bytes(write, **options)
        except Exception as exc:  # a codec missing here only costs one seed
            print(f"seed {name} skipped: {type(exc).__name__}: {exc}", file=sys.stderr)


def compact(data: bytes) -> bytes | None:
    """A small copy of a big TIFF: each IFD cut to its first 2x2 tiles (or 2 strips), bytes kept.

    The tile bytes are copied undecoded, so abbreviated JPEG with JPEGTables,
    JPEG 2000 and the other codecs survive; descriptions and layout tags are
    kept.  None when tifffile cannot read or rewrite it.
    """
    try:
        src = tifffile.TiffFile(io.BytesIO(data))
    except Exception:
        return None
    out = io.BytesIO()
    try:
        with src, tifffile.TiffWriter(out, byteorder=src.byteorder, bigtiff=src.is_bigtiff) as tw:
            for page in list(src.pages)[:8]:
                _compact_page(src, page, tw)
    except Exception as exc:
        print(f"compacting skipped: {type(exc).__name__}: {exc}", file=sys.stderr)
        return None
    return out.getvalue()


def _compact_page(src: tifffile.TiffFile, page: Any, tw: tifffile.TiffWriter) -> None:
    height, width = page.imagelength, page.imagewidth
    samples = page.samplesperpixel
    separate = page.planarconfig == 2
    planes = samples if separate else 1
    if page.is_tiled:
        th, tw_ = page.tilelength, page.tilewidth
        across, down = -(-width // tw_), -(-height // th)
        keep_x, keep_y = min(2, across), min(2, down)
        new_w, new_h = min(width, keep_x * tw_), min(height, keep_y * th)
        index = [p * across * down + y * across + x
                 for p in range(planes) for y in range(keep_y) for x in range(keep_x)]
        layout: dict[str, Any] = {"tile": (th, tw_)}
    else:
        rows = min(page.rowsperstrip or height, height)
        per_plane = -(-height // rows)
        keep = min(2, per_plane)
        new_w, new_h = width, min(height, keep * rows)
        index = [p * per_plane + s for p in range(planes) for s in range(keep)]
        layout = {"rowsperstrip": rows}
    fh = src.filehandle
    chunks = []
    for i in index:
        fh.seek(page.dataoffsets[i])
        chunks.append(fh.read(page.databytecounts[i]))
    shape: tuple[int, ...] = (new_h, new_w, samples)
    if separate:
        shape = (samples, new_h, new_w)
    elif samples == 1:
        shape = (new_h, new_w)
    extratags = []
    if page.jpegtables:
        extratags.append((347, 7, len(page.jpegtables), bytes(page.jpegtables), True))
    tw.write(iter(chunks), shape=shape, dtype=page.dtype, compression=page.compression,
             photometric=page.photometric, planarconfig=page.planarconfig if samples > 1 else None,
             predictor=page.predictor, subfiletype=page.subfiletype, description=page.description or None,
             extrasamples=page.extrasamples or None, extratags=extratags, metadata=None, **layout)


def write_seeds(data_dir: Path | None, folder: Path, max_len: int) -> int:
    """Fill ``folder`` with the seed corpus; returns how many seeds were written."""
    folder.mkdir(parents=True, exist_ok=True)
    count = 0

    def put(name: str, data: bytes) -> None:
        nonlocal count
        (folder / name).write_bytes(data[:max_len])
        count += 1

    for name, data in synthetic_seeds():
        put(f"synthetic-{name}.tif", data)
    if data_dir is not None and data_dir.is_dir():
        for file in sorted(p for p in data_dir.rglob("*") if p.is_file() and p.name != "MANIFEST.md"):
            data = file.read_bytes()
            name = "-".join(file.relative_to(data_dir).parts)
            put(name, data)  # big files arrive truncated: IFDs at the end are lost, a case too
            if len(data) > max_len:
                small = compact(data)
                if small is not None and len(small) <= max_len:
                    put(f"compact-{name}", small)
    return count


# -- command line -----------------------------------------------------------------


def _take_option(argv: list[str], name: str, default: str | None) -> str | None:
    for i, arg in enumerate(argv):
        if arg == name and i + 1 < len(argv):
            value = argv[i + 1]
            del argv[i:i + 2]
            return value
        if arg.startswith(name + "="):
            del argv[i]
            return arg.split("=", 1)[1]
    return default


def main(argv: list[str]) -> None:
    """Parse our options, write the seeds, and hand the rest of ``argv`` to libFuzzer."""
    argv = list(argv)
    here = Path(__file__).resolve().parent
    data = _take_option(argv, "--data", str(here.parent.parent / "shared" / "data"))
    seeds = _take_option(argv, "--seeds", None)
    hang = float(_take_option(argv, "--hang", "10") or 10)
    for flag, value in DEFAULT_FLAGS.items():
        if not any(arg.startswith(flag + "=") for arg in argv[1:]):
            argv.insert(1, f"{flag}={value}")
    max_len = int(next(a for a in argv if a.startswith("-max_len=")).split("=", 1)[1])
    # Reproducing a crash (file arguments) needs no seeds; a fuzzing run gets them
    # after the corpus folders the caller named, so new inputs land in the caller's
    # (or, with none named, among the seeds, which are rewritten every run).
    inputs = [a for a in argv[1:] if not a.startswith("-")]
    if not inputs or all(os.path.isdir(a) for a in inputs):
        seed_dir = Path(seeds) if seeds else Path(tempfile.gettempdir()) / "wsiarray-fuzz-seeds"
        if not seeds:
            shutil.rmtree(seed_dir, ignore_errors=True)
        count = write_seeds(Path(data) if data else None, seed_dir, max_len)
        print(f"fuzz_open: {count} seeds in {seed_dir}", file=sys.stderr)
        argv.append(str(seed_dir))
    signal.signal(signal.SIGVTALRM, _on_alarm)
    # tifffile logs every oddity of a corrupt file: thousands of lines a second here.
    logging.getLogger("tifffile").setLevel(logging.CRITICAL)
    wsiarray.cache("per_process", memory_capacity=16)  # the tile cache is on the read path too
    # libFuzzer ends the process with exit(): no Python cleanup runs, so each input's
    # file is removed as soon as it has been read and this folder stays empty.
    files = tempfile.mkdtemp(prefix="wsiarray-fuzz-files-")
    atheris.Setup(argv, Target(files, hang))
    atheris.Fuzz()


if __name__ == "__main__":
    main(sys.argv)
