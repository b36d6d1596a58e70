"""Turn tifffile pages into :class:`LevelSpec` tables; shared by every format.

This module decides, per level, whether the native engine decodes the tiles
itself (JPEG, deflate, LZW, raw with or without horizontal predictor) or
hands them to tifffile's own decoder (imagecodecs) through
``LevelSpec.external_decoder``.  It also validates what the file claims
(sizes, counts, sample layout) before anything is allocated.
"""

from __future__ import annotations

import contextlib
import math
import sys
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import BinaryIO

import numpy as np
import tifffile

from .._remote import RemoteSource, open_file
from ..errors import (
    FormatError,
    OpenError,
    TileDecodeError,
    TileReadError,
    UnsupportedError,
    WSIError,
)
from .base import Codec, JpegColor, LevelSpec

__all__ = [
    "PageLoader",
    "check_page",
    "compression_name",
    "is_bilevel",
    "is_mask",
    "is_reduced",
    "iter_pages",
    "jpeg_colorspaces",
    "level_from_pages",
    "open_tiff",
    "page_name",
    "pages_at",
    "pyramid_levels",
    "same_layout",
    "subifd_pages",
    "wrap_errors",
]

#: More IFDs than this in one chain is treated as a corrupt file.
MAX_PAGES = 4096
#: Limits on what a file may claim before anything is allocated for it.
MAX_SAMPLES = 64
MAX_DIMENSION = 1 << 22  # 4 Mi pixels along one axis
MAX_TILE_BYTES = 1 << 28  # 256 MiB decoded per tile
#: Uncompressed strips larger than this are described as pieces of at most this
#: size (their rows are stored in order), so a small read does not copy a whole
#: strip and a strip over MAX_TILE_BYTES can still be read.
RAW_STRIP_PIECE_BYTES = 1 << 22
#: More pyramid levels than this (SubIFDs of one page) is treated as corrupt.
MAX_LEVELS = 64
#: Associated images (label, macro, thumbnail) are decoded whole, so cap them.
MAX_ASSOCIATED_BYTES = 1 << 28

#: First four bytes of classic TIFF and BigTIFF, little- and big-endian.
_TIFF_MAGIC = {b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"}

_NATIVE_DEFLATE = {8, 32946}
_KNOWN_COMPRESSIONS = {int(c) for c in tifffile.COMPRESSION}


def compression_name(value: int) -> str:
    """Readable name of a TIFF Compression tag value, e.g. ``"JPEG"``."""
    try:
        return tifffile.COMPRESSION(value).name
    except ValueError:
        return f"UNKNOWN_{value}"


def iter_pages(tif: tifffile.TiffFile) -> Iterator[tifffile.TiffPage]:
    """Walk the main IFD chain, refusing loops and absurdly long chains.

    tifffile's own iterator can revisit an IFD that links to itself forever,
    so pages are taken by index and their offsets remembered.
    """
    seen: set[int] = set()
    pages = tif.pages
    pages.useframes = False
    name = _file_path(tif)
    for index in range(MAX_PAGES + 1):
        if index == MAX_PAGES:
            raise FormatError(f"{name}: more than {MAX_PAGES} IFDs")
        try:
            page = pages.get(index) if hasattr(pages, "get") else pages[index]
        except IndexError:
            return
        except Exception as exc:  # tifffile raises many kinds on corrupt IFDs
            raise FormatError(f"{name}: corrupt IFD {index}: {exc}") from exc
        if page is None:
            return
        offset = int(page.offset)
        if offset in seen:
            raise FormatError(f"{name}: IFD chain loops back to offset {offset} (IFD {index})")
        seen.add(offset)
        yield page  # type: ignore[misc]


def pages_at(tif: tifffile.TiffFile, indices: Iterable[int], what: str) -> dict[int, tifffile.TiffPage]:
    """The main-chain pages at ``indices`` (walking no further than needed)."""
    wanted = set(indices)
    found: dict[int, tifffile.TiffPage] = {}
    if wanted:
        for index, page in enumerate(iter_pages(tif)):
            if index in wanted:
                found[index] = page
                if len(found) == len(wanted):
                    return found
    missing = sorted(wanted - found.keys())
    if missing:
        raise FormatError(f"{what}: IFD {missing[0]} does not exist")
    return found


def check_page(page: tifffile.TiffPage, what: str) -> None:
    """Reject pages whose claimed layout is absurd, before anything is allocated."""
    compression = int(page.compression)
    if compression not in _KNOWN_COMPRESSIONS:
        raise UnsupportedError(f"{what}: unsupported compression {compression}")
    if not 1 <= page.samplesperpixel <= MAX_SAMPLES:
        raise FormatError(f"{what}: SamplesPerPixel {page.samplesperpixel} is out of range")
    if not (0 < page.imagewidth <= MAX_DIMENSION and 0 < page.imagelength <= MAX_DIMENSION):
        raise FormatError(f"{what}: image size {page.imagewidth}x{page.imagelength} is out of range")
    if page.imagedepth != 1:
        raise UnsupportedError(f"{what}: volumetric tiles (ImageDepth {page.imagedepth})")
    bits = page.bitspersample
    if bits not in (8, 16, 32, 64) and not is_bilevel(page):
        raise UnsupportedError(f"{what}: {bits} bits per sample")


def is_bilevel(page: tifffile.TiffPage) -> bool:
    """True for 1-bit unsigned samples, which tifffile reads as ``bool`` and wsiarray as uint8 0/1."""
    return page.bitspersample == 1 and page.dtype is not None and page.dtype.kind == "b"


def jpeg_colorspaces(page: tifffile.TiffPage) -> tuple[JpegColor, JpegColor]:
    """libjpeg's input and output colour spaces for a JPEG page, as tifffile decodes it.

    Example:
        >>> jpeg_colorspaces(tifffile.TiffFile(svs_path).pages.first)  # RGB with a JFIF marker
        (<JpegColor.AUTO: -1>, <JpegColor.RGB: 2>)
    """
    # Mirrors tifffile.jpeg_decode_colorspace so pixels match tifffile exactly:
    # Aperio stores RGB components without JFIF/Adobe markers, and only the
    # Photometric tag says they are not YCbCr.
    photometric = int(page.photometric)
    if photometric == 6:
        return JpegColor.AUTO, JpegColor.RGB
    if photometric == 2:
        return (JpegColor.AUTO if page.is_jfif else JpegColor.RGB), JpegColor.RGB
    if photometric in (0, 1):
        return JpegColor.AUTO, JpegColor.GRAYSCALE
    return JpegColor.AUTO, JpegColor.AUTO


def _native_codec(page: tifffile.TiffPage, samples_per_plane: int) -> Codec:
    compression = int(page.compression)
    if page.fillorder != 1 or page.sampleformat == 6:  # bit-reversed, complex
        return Codec.EXTERNAL
    if is_bilevel(page) and page.predictor != 1:  # no predictor is defined for packed bits
        return Codec.EXTERNAL
    if compression == 7:
        native_jpeg = (
            page.bitspersample == 8
            and page.dtype == np.uint8
            and int(page.planarconfig) == 1
            and not page.extrasamples
            and (samples_per_plane, int(page.photometric)) in {(1, 1), (3, 2), (3, 6)}
        )
        return Codec.JPEG if native_jpeg else Codec.EXTERNAL
    if page.predictor not in (1, 2) or (page.predictor == 2 and page.dtype.kind == "f"):
        return Codec.EXTERNAL
    if compression == 1:
        return Codec.RAW
    if compression in _NATIVE_DEFLATE:
        return Codec.DEFLATE
    if compression == 5:
        return Codec.LZW
    return Codec.EXTERNAL


def _external_decoder(page: tifffile.TiffPage, shape: tuple[int, int, int], dtype: np.dtype):
    """Decode one tile with tifffile's decoder (imagecodecs; releases the GIL) into ``dtype``."""
    decode = page.decode  # built once; tifffile caches it on the page
    jpegtables = page.jpegtables

    def decode_tile(data: bytes, index: int) -> np.ndarray:
        tile, _, _ = decode(data, index, jpegtables=jpegtables, _fullsize=True)
        if tile is None:
            return np.zeros(shape, dtype)
        tile = np.asarray(tile).reshape(shape)
        return np.ascontiguousarray(tile, dtype=dtype)

    return decode_tile


def level_from_pages(pages: Sequence[tifffile.TiffPage], what: str) -> LevelSpec:
    """Describe one level stored in ``pages``.

    ``pages`` holds one page, or several that share a geometry and each hold
    some of the channels (OME-TIFF's one page per channel).  Tiled pages give
    their tile grid; strip pages become full-width tiles of RowsPerStrip rows.
    """
    first = pages[0]
    for page in pages:
        check_page(page, what)
        if (page.imagewidth, page.imagelength, page.compression, page.dtype, page.tilewidth,
                page.tilelength) != (first.imagewidth, first.imagelength, first.compression,
                                     first.dtype, first.tilewidth, first.tilelength):
            raise FormatError(f"{what}: channel pages differ in geometry or encoding")

    width, height = int(first.imagewidth), int(first.imagelength)
    if first.is_tiled:
        tile_w, tile_h = int(first.tilewidth), int(first.tilelength)
    else:
        tile_w, tile_h = width, min(int(first.rowsperstrip or height), height)
    if tile_w <= 0 or tile_h <= 0 or tile_w > MAX_DIMENSION or tile_h > MAX_DIMENSION:
        raise FormatError(f"{what}: tile size {tile_w}x{tile_h} is out of range")

    separate = int(first.planarconfig) == 2
    spp = int(first.samplesperpixel)
    samples_per_plane = 1 if separate else spp
    planes_per_page = spp if separate else 1
    bilevel = is_bilevel(first)
    # Bilevel samples are unpacked to one byte each, 0 or 1.
    dtype = np.dtype(np.uint8) if bilevel else first.dtype.newbyteorder("=")
    itemsize = dtype.itemsize
    codec = _native_codec(first, samples_per_plane)
    row_bytes = width * samples_per_plane * itemsize  # decoded
    if not first.is_tiled and codec is Codec.RAW:
        stored_row_bytes = -(-width * samples_per_plane // 8) if bilevel else row_bytes
        piece = _raw_strip_piece(tile_h, row_bytes)
        if piece == 0:
            limit = MAX_TILE_BYTES >> 20
            raise UnsupportedError(f"{what}: one row of {row_bytes >> 20} MiB is larger than {limit} MiB")
    elif tile_w * tile_h * samples_per_plane * itemsize > MAX_TILE_BYTES:
        if not first.is_tiled:
            raise UnsupportedError(
                f"{what}: a {tile_w}x{tile_h} {compression_name(int(first.compression))} strip decodes to "
                f"more than {MAX_TILE_BYTES >> 20} MiB, and only uncompressed strips can be read in pieces"
            )
        raise FormatError(f"{what}: a {tile_w}x{tile_h} tile is larger than {MAX_TILE_BYTES >> 20} MiB")

    across = -(-width // tile_w)
    down = -(-height // tile_h)
    per_plane = across * down
    planes = planes_per_page * len(pages)
    offsets = np.empty((planes, down, across), np.uint64)
    counts = np.empty((planes, down, across), np.uint64)
    for i, page in enumerate(pages):
        page_offsets = np.asarray(page.dataoffsets, np.uint64)
        page_counts = np.asarray(page.databytecounts, np.uint64)
        if page_offsets.size != per_plane * planes_per_page or page_counts.size != page_offsets.size:
            raise FormatError(
                f"{what}: {page_offsets.size} tile offsets and {page_counts.size} byte counts "
                f"for a grid of {per_plane * planes_per_page} tiles"
            )
        sl = slice(i * planes_per_page, (i + 1) * planes_per_page)
        offsets[sl] = page_offsets.reshape(planes_per_page, down, across)
        counts[sl] = page_counts.reshape(planes_per_page, down, across)
    if not first.is_tiled and codec is Codec.RAW and piece < tile_h:
        offsets, counts = _strip_pieces(offsets, counts, tile_h, piece, stored_row_bytes, height)
        tile_h = piece

    jpeg_in, jpeg_out = jpeg_colorspaces(first) if codec is Codec.JPEG else (JpegColor.AUTO,) * 2
    byteswap = itemsize > 1 and first.parent.byteorder != ("<" if sys.byteorder == "little" else ">")
    external = None
    if codec is Codec.EXTERNAL:
        tile_shape = (tile_h, tile_w, samples_per_plane)
        decoders = [_external_decoder(p, tile_shape, dtype) for p in pages]

        def external(data: bytes, index: int) -> np.ndarray:
            # index counts tiles across all planes; tifffile counts within a page
            page_index, within = divmod(index, per_plane * planes_per_page)
            return decoders[page_index](data, within)

    return LevelSpec(
        width=width,
        height=height,
        tile_width=tile_w,
        tile_height=tile_h,
        samples_per_plane=samples_per_plane,
        offsets=offsets,
        bytecounts=counts,
        dtype=dtype,
        codec=codec,
        compression=int(first.compression),
        byteswap=byteswap,
        predictor=int(first.predictor) if codec in (Codec.RAW, Codec.DEFLATE, Codec.LZW) else 1,
        jpeg_tables=bytes(first.jpegtables or b"") if codec is Codec.JPEG else b"",
        jpeg_colorspace=jpeg_in,
        jpeg_out_colorspace=jpeg_out,
        external_decoder=external,
        # a SubIFD page's .index is its position among the SubIFDs; name the main-chain IFD
        page_index=int(getattr(first, "_index", (first.index,))[0]),
        strips=not first.is_tiled,
        bilevel=bilevel and codec is not Codec.EXTERNAL,
    )


def _raw_strip_piece(rows_per_strip: int, row_bytes: int) -> int:
    """Rows per piece of an uncompressed strip: the most that divide the strip and fit
    ``RAW_STRIP_PIECE_BYTES`` (the whole strip when it fits; one row at least), or 0 when
    one row is larger than ``MAX_TILE_BYTES``."""
    if rows_per_strip * row_bytes <= RAW_STRIP_PIECE_BYTES:
        return rows_per_strip
    if row_bytes > MAX_TILE_BYTES:
        return 0
    most = max(1, RAW_STRIP_PIECE_BYTES // row_bytes)
    divisors = (d for k in range(1, math.isqrt(rows_per_strip) + 1) if rows_per_strip % k == 0
                for d in (k, rows_per_strip // k))
    return max(d for d in divisors if d <= most)


def _strip_pieces(offsets: np.ndarray, counts: np.ndarray, rows_per_strip: int, piece: int,
                  row_bytes: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    """Tables ``(planes, strips, 1)`` of uncompressed strips cut into pieces of ``piece`` rows
    (which divides ``rows_per_strip``): piece ``k`` is rows ``k * piece ...`` of the image.

    A strip stores its rows in order, ``row_bytes`` each, so a piece is a byte range of its
    strip; the range is cut to the strip's byte count (the engine checks the rows a piece
    needs), and strips never written (offset and byte count 0) give pieces never written.
    """
    per_strip = rows_per_strip // piece
    pieces = -(-height // piece)
    strip = np.arange(pieces) // per_strip
    start = (np.arange(pieces) % per_strip).astype(np.uint64) * np.uint64(piece * row_bytes)
    strip_offsets, strip_counts = offsets[:, strip, 0], counts[:, strip, 0]
    new_counts = np.minimum(strip_counts - np.minimum(strip_counts, start), np.uint64(piece * row_bytes))
    written = (strip_offsets != 0) | (strip_counts != 0)
    new_offsets = np.where(written, strip_offsets + start, np.uint64(0))
    new_counts = np.where(written, new_counts, np.uint64(0))
    return new_offsets[:, :, None].astype(np.uint64), new_counts[:, :, None].astype(np.uint64)


def _file_path(tif: tifffile.TiffFile) -> str:
    """The path the caller opened, for messages.

    ``tif.filename`` is only the base name and tifffile's own path has symbolic
    links resolved: users should see the path they gave.
    """
    return str(getattr(tif, "_wsiarray_path", None) or getattr(tif.filehandle, "path", None) or tif.filename)


@contextlib.contextmanager
def wrap_errors(path: str, doing: str, *, decoding: bool = False) -> Iterator[None]:
    """Re-raise anything but a :class:`WSIError` as one that names ``path``.

    tifffile, ``struct`` and the codecs raise a zoo of exception types on
    corrupt files; callers of wsiarray catch one family.  ``decoding`` picks
    the pixel-level classes (read/decode) over the structural ones.

    Example:
        >>> with wrap_errors("x.tif", "reading IFDs"):
        ...     pass
    """
    try:
        yield
    except WSIError:
        raise
    except tifffile.TiffFileError as exc:  # a ValueError: must come before the OSError/other split
        raise FormatError(f"{path}: corrupt TIFF structure while {doing}: {exc}") from exc
    except OSError as exc:
        cls = TileReadError if decoding else OpenError
        raise cls(f"{path}: I/O error while {doing}: {exc}") from exc
    except Exception as exc:  # anything else is still a problem with this file
        cls = TileDecodeError if decoding else FormatError
        raise cls(f"{path}: {doing} failed: {type(exc).__name__}: {exc}") from exc


def open_binary(path: str) -> BinaryIO:
    """``path`` opened for binary reading: a local file, or a remote object's block-cached file.

    A :class:`~wsiarray._remote.RemoteSource` (an fsspec URL) is read through
    :func:`wsiarray._remote.open_file`: 256 KiB blocks, so parsing costs a few requests.

    Example:
        >>> with open_binary(svs_path) as fh:
        ...     fh.read(2)
        b'II'
    """
    if isinstance(path, RemoteSource):
        return open_file(path)
    return open(path, "rb")


def open_tiff(path: str, fh: BinaryIO | None = None) -> tifffile.TiffFile:
    """Open ``path`` with tifffile, raising :class:`OpenError` if it is not a TIFF.

    The header is checked here first so "not a TIFF at all" (OpenError) is
    told apart from "a TIFF with a corrupt first IFD" (FormatError). A remote
    source is parsed through its block-cached file (``fh``, or one opened here).

    Example:
        >>> open_tiff(svs_path).is_svs
        True
        >>> _ = (tmp / "notes.txt").write_text("hello")
        >>> open_tiff(tmp / "notes.txt")
        Traceback (most recent call last):
        ...
        wsiarray.errors.OpenError: .../notes.txt: not a TIFF file (header b'hell')
    """
    remote = isinstance(path, RemoteSource)
    try:
        if remote:
            fh = fh if fh is not None else open_binary(path)
            fh.seek(0)
            magic = fh.read(4)
            fh.seek(0)
        else:
            with open(path, "rb") as local:
                magic = local.read(4)
    except OSError as exc:
        raise OpenError(f"{path}: cannot open: {exc.strerror or exc}") from exc
    if magic not in _TIFF_MAGIC:
        raise OpenError(f"{path}: not a TIFF file (header {magic!r})")
    with wrap_errors(path, "opening"):
        tif = tifffile.TiffFile(fh, name=path.rsplit("/", 1)[-1]) if remote else tifffile.TiffFile(path)
    tif._wsiarray_path = path  # type: ignore[attr-defined]
    try:
        tif.pages.first  # noqa: B018 -- tifffile only logs a corrupt first IFD and opens with no pages
    except IndexError:
        tif.close()
        raise FormatError(f"{path}: no readable IFD (corrupt first IFD or truncated file)") from None
    except Exception:
        tif.close()
        raise
    return tif


def is_mask(page: tifffile.TiffPage) -> bool:
    """True for transparency masks (NewSubfileType bit 2 or Photometric MASK): never levels."""
    return bool(int(page.subfiletype) & 4) or int(page.photometric) == 4


def is_reduced(page: tifffile.TiffPage) -> bool:
    """True for reduced-resolution images (NewSubfileType bit 0, or OldSubfileType 2)."""
    if int(page.subfiletype) & 1:
        return True
    old = page.tags.get(255)  # OldSubfileType, still written by some old pyramid tools
    return old is not None and old.value == 2


def same_layout(page: tifffile.TiffPage, base: tifffile.TiffPage) -> bool:
    """True if ``page`` can be a lower level of ``base``: same samples, dtype and planar
    layout, and no larger in either dimension.  Tiles or strips may differ (a stripped
    full-resolution image with tiled reduced images), as in tifffile's pyramids."""
    return (
        page.samplesperpixel == base.samplesperpixel
        and page.dtype == base.dtype
        and int(page.planarconfig) == int(base.planarconfig)
        and 0 < page.imagewidth <= base.imagewidth
        and 0 < page.imagelength <= base.imagelength
    )


def subifd_pages(tif: tifffile.TiffFile, page: tifffile.TiffPage, what: str) -> list[tifffile.TiffPage]:
    """Read the pages that ``page``'s SubIFDs tag points to, in tag order.

    Offsets are validated against the file size and each other so a corrupt
    tag cannot send tifffile off reading garbage or the same IFD twice.
    """
    offsets = tuple(int(o) for o in (page.subifds or ()))
    if len(offsets) > MAX_LEVELS:
        raise FormatError(f"{what}: {len(offsets)} SubIFDs (more than {MAX_LEVELS})")
    size = int(tif.filehandle.size)
    seen = {int(page.offset)}
    parent_index = page.index if isinstance(page.index, int) else 0
    result = []
    for i, offset in enumerate(offsets):
        if not 8 <= offset < size:
            raise FormatError(f"{what}: SubIFD {i} offset {offset} is outside the file ({size} bytes)")
        if offset in seen:
            raise FormatError(f"{what}: SubIFD {i} points back to an IFD already read (offset {offset})")
        seen.add(offset)
        with wrap_errors(_file_path(tif), f"reading SubIFD {i} of IFD {parent_index}"):
            tif.filehandle.seek(offset)
            result.append(tifffile.TiffPage(tif, index=(parent_index, i)))
    return result


def _as_hwc(array: np.ndarray, page: tifffile.TiffPage) -> np.ndarray:
    # page.shaped is (separate samples, depth, length, width, contiguous samples)
    # whatever the planar configuration, so one reshape covers both layouts.
    separate, depth, height, width, contig = page.shaped
    array = np.asarray(array).reshape(separate, depth, height, width, contig)[:, 0]
    return np.moveaxis(array, 0, 2).reshape(height, width, separate * contig)


@dataclass(frozen=True)
class PageLoader:
    """Decodes an associated image (label, macro, thumbnail) when called.

    Holds only the path and IFD indices, so it is cheap, picklable, and does
    not keep the file open.  Several indices are stacked as channels (OME-TIFF
    stores one channel per page).

    Example:
        >>> from wsiarray.formats import read_slide_info
        >>> label = read_slide_info(svs_path).associated["label"]()
        >>> label.shape  # (height, width, channels)
        (80, 100, 3)
    """

    path: str
    name: str
    pages: tuple[int, ...]
    width: int
    height: int

    def __call__(self) -> np.ndarray:
        """Return the image as an ``(height, width, channels)`` array."""
        what = f"{self.path}: associated image {self.name!r}"
        tif = open_tiff(self.path)
        try:
            with wrap_errors(self.path, f"decoding associated image {self.name!r}", decoding=True):
                found = pages_at(tif, self.pages, what)
                planes = []
                for index in self.pages:
                    page = found[index]
                    if (page.imagewidth, page.imagelength) != (self.width, self.height):
                        raise FormatError(f"{what}: IFD {index} changed since the slide was opened")
                    check_page(page, what)
                    nbytes = self.width * self.height * page.samplesperpixel * page.dtype.itemsize
                    if nbytes > MAX_ASSOCIATED_BYTES:
                        raise UnsupportedError(f"{what}: {nbytes >> 20} MiB is too large to load whole")
                    plane = _as_hwc(page.asarray(), page)
                    planes.append(plane.view(np.uint8) if plane.dtype == np.bool_ else plane)
                return planes[0] if len(planes) == 1 else np.concatenate(planes, axis=2)
        finally:
            tif.close()


def page_name(page: tifffile.TiffPage) -> str:
    """``"IFD 3"`` or ``"IFD 0 SubIFD 1"``, for messages."""
    index = page._index if hasattr(page, "_index") else (page.index,)
    return f"IFD {index[0]}" + "".join(f" SubIFD {i}" for i in index[1:])


def pyramid_levels(path: str, candidates: Sequence[Sequence[tifffile.TiffPage]]) -> list[LevelSpec]:
    """Describe candidate levels largest first, one :class:`LevelSpec` each.

    Each candidate is the page list of one level (several pages for one
    channel per page).  A candidate the same size as a larger-ranked one,
    or wider or taller than the level above it, is not a pyramid level and
    is dropped.
    """
    ordered = sorted(candidates, key=lambda pages: -(int(pages[0].imagewidth) * int(pages[0].imagelength)))
    chosen: list[Sequence[tifffile.TiffPage]] = []
    for pages in ordered:
        width, height = int(pages[0].imagewidth), int(pages[0].imagelength)
        if chosen:
            above = chosen[-1][0]
            if (width, height) == (above.imagewidth, above.imagelength):
                continue
            if width > above.imagewidth or height > above.imagelength:
                continue
        chosen.append(pages)
    if len(chosen) > MAX_LEVELS:
        raise FormatError(f"{path}: {len(chosen)} pyramid levels (more than {MAX_LEVELS})")
    return [
        level_from_pages(pages, f"{path}: level {n} ({page_name(pages[0])})")
        for n, pages in enumerate(chosen)
    ]
