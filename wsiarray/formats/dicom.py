"""DICOM WSI (VL Whole Slide Microscopy Image): a series of files as tile tables.

A DICOM slide is a set of files sharing a SeriesInstanceUID; each file is one
image: a pyramid level (ImageType ``VOLUME``) or an associated image
(``LABEL``, ``OVERVIEW``, ``THUMBNAIL``), and each of its frames is one tile.
:func:`read_slide_info` takes a folder or any file of the series (the others
are found in its folder), parses every file's data set with :mod:`pydicom`
(imported here, on the first DICOM open, never by ``import wsiarray``) and
turns each image into a :class:`LevelSpec` whose tiles live in that file
(``LevelSpec.file``): the native engine reads the frames with its own
``pread``, one descriptor per file.

Frames are located without reading pixel data:

- uncompressed transfer syntaxes: frame ``i`` is at ``i * frame_bytes`` in the
  Pixel Data value (samples stored apart, PlanarConfiguration 1, are planes);
- encapsulated ones: the Extended Offset Table when present, else the fragment
  items are walked once (8-byte item headers, each length checked against the
  file size); the Basic Offset Table, when not empty, must agree with the walk.
  One fragment per frame is required (frames split over fragments are refused).

TILED_FULL frames are the tile grid row by row (the first focal plane and
optical path); TILED_SPARSE frames are placed by their per-frame positions, and
tiles no frame covers are the request's fill.
"""

from __future__ import annotations

import contextlib
import io
import math
import os
import struct
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import FormatError, OpenError, UnsupportedError, WSIError
from .base import Codec, JpegColor, LevelSpec, SlideInfo
from .properties import make_slide_info, parse_positive_float

__all__ = ["DicomImageLoader", "is_dicom", "read_slide_info"]

#: VL Whole Slide Microscopy Image Storage.
WSI_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.77.1.6"
#: ImageType value 3 of associated images -> OpenSlide's associated image names.
ASSOCIATED_NAMES = {"LABEL": "label", "OVERVIEW": "macro", "THUMBNAIL": "thumbnail"}
#: Most files a folder may hold to be scanned for a series (each is parsed).
MAX_FILES = 4096
#: Most frames one image may claim.
MAX_FRAMES = 1 << 24
#: Largest associated image decoded whole.
MAX_ASSOCIATED_BYTES = 1 << 28

_PREAMBLE = 128
_ITEM = 0xE000FFFE  # (FFFE,E000) read as a little-endian uint32
_SEQUENCE_END = 0xE0DDFFFE  # (FFFE,E0DD)
_PIXEL_DATA = 0x7FE00010

_LITTLE_NATIVE = {"1.2.840.10008.1.2", "1.2.840.10008.1.2.1"}
_BIG_NATIVE = "1.2.840.10008.1.2.2"
_JPEG_BASELINE = "1.2.840.10008.1.2.4.50"
#: Encapsulated transfer syntaxes decoded by imagecodecs: name, imagecodecs function, the
#: TIFF Compression value whose stream header the engine checks before decoding.
_EXTERNAL = {
    "1.2.840.10008.1.2.4.51": ("JPEG_EXTENDED", "jpeg8_decode", 7),
    "1.2.840.10008.1.2.4.57": ("JPEG_LOSSLESS", "ljpeg_decode", 7),
    "1.2.840.10008.1.2.4.70": ("JPEG_LOSSLESS", "ljpeg_decode", 7),
    "1.2.840.10008.1.2.4.80": ("JPEG_LS", "jpegls_decode", 7),
    "1.2.840.10008.1.2.4.81": ("JPEG_LS", "jpegls_decode", 7),
    "1.2.840.10008.1.2.4.90": ("JPEG_2000", "jpeg2k_decode", 34712),
    "1.2.840.10008.1.2.4.91": ("JPEG_2000", "jpeg2k_decode", 34712),
    "1.2.840.10008.1.2.4.201": ("HTJ2K", "jpeg2k_decode", 34712),
    "1.2.840.10008.1.2.4.202": ("HTJ2K", "jpeg2k_decode", 34712),
    "1.2.840.10008.1.2.4.203": ("HTJ2K", "jpeg2k_decode", 34712),
}
#: PhotometricInterpretation values read, by samples per pixel (YBR only compressed:
#: the decoder turns it into RGB).
_PHOTOMETRIC = {1: {"MONOCHROME2"}, 3: {"RGB", "YBR_FULL", "YBR_FULL_422", "YBR_ICT", "YBR_RCT"}}
#: Value representations whose values are bytes, not text: not properties.
_BINARY_VRS = {"OB", "OW", "OF", "OD", "OL", "OV", "UN"}


def is_dicom(path: str) -> bool:
    """True for a folder or a file with the DICOM preamble (``DICM`` at byte 128).

    Example:
        >>> is_dicom(svs_path), is_dicom(f"{dicom_path}/level-0.dcm"), is_dicom(dicom_path)
        (False, True, True)
    """
    if os.path.isdir(path):
        return True
    try:
        with open(path, "rb") as fh:
            fh.seek(_PREAMBLE)
            return fh.read(4) == b"DICM"
    except OSError:
        return False


@dataclass(frozen=True, eq=False)
class _Image:
    """One file of the series: its data set (no pixel data) and where its pixel data starts."""

    path: str
    ds: Any  # pydicom.Dataset
    identity: tuple[int, int, int, int]
    pixel_value: int  # file offset of the Pixel Data value
    pixel_length: int | None  # None: undefined (encapsulated)
    flavor: str  # ImageType value 3

    @property
    def width(self) -> int:
        return int(self.ds.get("TotalPixelMatrixColumns", self.ds.Columns))

    @property
    def height(self) -> int:
        return int(self.ds.get("TotalPixelMatrixRows", self.ds.Rows))


def _pydicom() -> Any:
    try:
        import pydicom
    except ImportError as exc:  # pragma: no cover - pydicom is a dependency
        raise UnsupportedError("reading DICOM needs pydicom (pip install pydicom)") from exc
    return pydicom


class _ClampedReader(io.BufferedReader):
    """A file whose ``read(n)`` never asks for more than the bytes left in it.

    pydicom reads an element's value with ``read(length)``, and Python allocates
    ``length`` bytes before reading: a corrupt 4-byte length field (up to 4 GiB)
    would cost that much memory for a small file. Clamped, the read comes back
    short and pydicom reports the truncation.
    """

    def __init__(self, path: str) -> None:
        super().__init__(io.FileIO(path, "rb"))
        self._size = os.fstat(self.fileno()).st_size

    def read(self, size: int | None = -1) -> bytes:
        if size is not None and size > 0:
            size = min(size, max(0, self._size - self.tell()))
            if size == 0:
                return b""
        return super().read(size)


def _identity(path: str) -> tuple[int, int, int, int]:
    st = os.stat(path)
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def _read_image(path: str, *, required: bool) -> _Image | None:
    """Parse one file's data set up to its pixel data; None for a file that is not a WSI image
    (an error instead when ``required``: the file the caller named)."""
    pydicom = _pydicom()
    try:
        identity = _identity(path)
        with _ClampedReader(path) as fh:
            fh.seek(_PREAMBLE)
            if fh.read(4) != b"DICM":
                if required:
                    raise OpenError(f"{path}: not a DICOM file (no DICM preamble)")
                return None
            fh.seek(0)
            ds = pydicom.dcmread(fh, stop_before_pixels=True)
            # pydicom stops with the file at the Pixel Data element's tag.
            header_at = fh.tell()
            header = fh.read(12)
    except WSIError:
        raise
    except OSError as exc:
        raise OpenError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    except Exception as exc:
        if not required:
            return None
        raise FormatError(f"{path}: corrupt DICOM data set: {type(exc).__name__}: {exc}") from exc
    if str(ds.get("SOPClassUID", "")) != WSI_SOP_CLASS:
        if required:
            raise UnsupportedError(
                f"{path}: not a VL Whole Slide Microscopy image "
                f"(SOP class {ds.get('SOPClassUID', 'missing')})"
            )
        return None
    image_type = ds.get("ImageType")
    if not image_type or len(image_type) < 3:
        raise FormatError(
            f"{path}: VL WSI image without ImageType (value 3 must say VOLUME, LABEL, "
            "OVERVIEW or THUMBNAIL): not a conformant DICOM WSI file"
        )
    pixel_value, pixel_length = _pixel_data_header(path, ds, header_at, header, identity[2])
    return _Image(path, ds, identity, pixel_value, pixel_length, str(image_type[2]).upper())


def _pixel_data_header(path: str, ds: Any, at: int, header: bytes, file_size: int) -> tuple[int, int | None]:
    """Where the Pixel Data value starts and its length (None when undefined)."""
    syntax = ds.file_meta.get("TransferSyntaxUID", "")
    big = syntax == _BIG_NATIVE
    implicit = syntax == "1.2.840.10008.1.2"
    if len(header) < 8:
        raise FormatError(f"{path}: no Pixel Data")
    group, element = struct.unpack(">HH" if big else "<HH", header[:4])
    if (group << 16 | element) != _PIXEL_DATA:
        raise FormatError(f"{path}: no Pixel Data element where the data set ends")
    if implicit:
        (length,) = struct.unpack("<I", header[4:8])
        value = at + 8
    else:
        if len(header) < 12:
            raise FormatError(f"{path}: truncated Pixel Data header")
        (length,) = struct.unpack(">I" if big else "<I", header[8:12])
        value = at + 12
    if length == 0xFFFFFFFF:
        return value, None
    if value + length > file_size:
        raise FormatError(f"{path}: Pixel Data ({length} bytes) runs past the end of the file")
    return value, length


def _fragments(path: str, fh: Any, start: int, file_size: int, limit: int) -> Iterator[tuple[int, int]]:
    """Walk encapsulated items from ``start``: ``(value offset, length)`` each, at most ``limit``."""
    pos = start
    for _ in range(limit):
        fh.seek(pos)
        head = fh.read(8)
        if len(head) == 0 and pos == file_size:
            return  # no sequence delimiter at the end of the file: tolerated
        if len(head) < 8:
            raise FormatError(f"{path}: truncated fragment item at byte {pos}")
        tag, length = struct.unpack("<II", head)
        if tag == _SEQUENCE_END:
            return
        if tag != _ITEM:
            raise FormatError(f"{path}: expected a fragment item at byte {pos}, found tag {tag:#010x}")
        if length == 0xFFFFFFFF or pos + 8 + length > file_size:
            raise FormatError(
                f"{path}: fragment at byte {pos} claims {length} bytes, past the end of the "
                f"file ({file_size} bytes)"
            )
        yield pos + 8, length
        pos += 8 + length
    raise FormatError(f"{path}: more than {limit} fragment items")


def _frame_table(image: _Image, frames: int) -> tuple[np.ndarray, np.ndarray]:
    """File offsets and byte counts of the first ``frames`` frames of an encapsulated image."""
    path, ds, size = image.path, image.ds, image.identity[2]
    with open(path, "rb") as fh:
        fh.seek(image.pixel_value)
        head = fh.read(8)
        if len(head) < 8:
            raise FormatError(f"{path}: truncated Pixel Data")
        tag, bot_length = struct.unpack("<II", head)
        if tag != _ITEM or bot_length % 4 or image.pixel_value + 8 + bot_length > size:
            raise FormatError(f"{path}: no valid Basic Offset Table item at the start of the Pixel Data")
        first = image.pixel_value + 8 + bot_length  # the first fragment's item
        eot = ds.get("ExtendedOffsetTable")
        if eot is not None and len(eot) > 0:
            offsets = np.frombuffer(bytes(eot), "<u8")
            lengths = np.frombuffer(bytes(ds.get("ExtendedOffsetTableLengths") or b""), "<u8")
            if len(offsets) < frames or len(lengths) != len(offsets):
                raise FormatError(
                    f"{path}: Extended Offset Table has {len(offsets)} offsets and "
                    f"{len(lengths)} lengths for {frames} frames"
                )
            offsets, lengths = offsets[:frames], lengths[:frames]
            # each term checked alone first: their uint64 sum must not wrap around
            if (
                np.any(offsets > size)
                or np.any(lengths > size)
                or np.any(first + 8 + offsets + lengths > size)
            ):
                raise FormatError(f"{path}: Extended Offset Table points past the end of the file")
            return (first + 8 + offsets).astype(np.uint64), lengths.astype(np.uint64)
        bot = np.frombuffer(fh.read(bot_length), "<u4").astype(np.int64) if bot_length else None
        items = list(_fragments(path, fh, first, size, MAX_FRAMES))
    declared = int(ds.get("NumberOfFrames", 1) or 1)
    if bot is not None:
        if len(items) != len(bot):
            raise UnsupportedError(
                f"{path}: {len(items)} fragments for {len(bot)} frames: frames split "
                "over several fragments are not supported"
            )
        starts = np.array([offset - 8 - first for offset, _ in items], np.int64)
        if not np.array_equal(starts, bot):
            raise FormatError(f"{path}: the Basic Offset Table does not point at the fragment items")
    if len(items) < max(frames, declared):
        raise FormatError(f"{path}: {len(items)} fragments for {declared} frames (truncated pixel data?)")
    if len(items) > declared:
        raise UnsupportedError(
            f"{path}: {len(items)} fragments for {declared} frames: frames split over "
            "several fragments are not supported"
        )
    table = np.array(items[:frames], np.uint64).reshape(-1, 2)
    return table[:, 0].copy(), table[:, 1].copy()


def _jpeg_colorspaces(image: _Image) -> tuple[JpegColor, JpegColor]:
    # The Photometric rule of formats/tiff.py, with DICOM's attribute as the
    # only word: RGB components are RGB (libjpeg must not apply the YCbCr
    # transform a JFIF marker would make it guess), YBR is YCbCr. wsidicom and
    # OpenSlide decode so, also for files whose RGB frames carry a JFIF marker.
    photometric = str(image.ds.PhotometricInterpretation)
    if photometric.startswith("YBR"):
        return JpegColor.YCBCR, JpegColor.RGB
    if photometric == "RGB":
        return JpegColor.RGB, JpegColor.RGB
    return JpegColor.AUTO, JpegColor.GRAYSCALE


def _external_decoder(
    name: str,
    function: str,
    shape: tuple[int, int, int],
    dtype: np.dtype,
) -> Callable[[bytes, int], np.ndarray]:
    import imagecodecs

    decode = getattr(imagecodecs, function)

    def decode_frame(data: bytes, index: int) -> np.ndarray:
        frame = np.asarray(decode(data))
        if frame.size != math.prod(shape):
            raise ValueError(f"{name} frame decodes to {frame.shape}, expected {shape}")
        return np.ascontiguousarray(frame.reshape(shape), dtype=dtype)

    return decode_frame


def _tile_positions(image: _Image, frames: int, tiles_across: int, tiles_down: int) -> np.ndarray:
    """Table index (row-major tile) of each frame used, -1 for frames left out."""
    ds, path = image.ds, image.path
    organisation = str(ds.get("DimensionOrganizationType", "")).upper()
    if organisation == "TILED_FULL" or (not organisation and frames == 1 == tiles_across * tiles_down):
        if frames < tiles_across * tiles_down:
            raise FormatError(
                f"{path}: {frames} frames for a TILED_FULL grid of {tiles_across}x{tiles_down} tiles"
            )
        # Frames beyond the first grid are further focal planes or optical paths.
        index = np.full(frames, -1, np.int64)
        index[: tiles_across * tiles_down] = np.arange(tiles_across * tiles_down)
        return index
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    if per_frame is None or len(per_frame) != frames:
        raise FormatError(
            f"{path}: {organisation or 'no DimensionOrganizationType'} and no per-frame "
            "positions for every frame"
        )
    width, height = int(ds.Columns), int(ds.Rows)
    index = np.full(frames, -1, np.int64)
    seen: set[int] = set()
    first_z: object = None
    for i, group in enumerate(per_frame):
        try:
            position = group.PlanePositionSlideSequence[0]
            column = int(position.ColumnPositionInTotalImagePixelMatrix) - 1
            row = int(position.RowPositionInTotalImagePixelMatrix) - 1
        except (AttributeError, IndexError, TypeError, ValueError) as exc:
            raise FormatError(f"{path}: frame {i + 1} has no position in the total pixel matrix") from exc
        z = position.get("ZOffsetInSlideCoordinateSystem")
        if i == 0:
            first_z = z
        elif z != first_z:
            continue  # another focal plane: the first one is the level
        if column % width or row % height or column < 0 or row < 0:
            raise UnsupportedError(f"{path}: frame {i + 1} at ({column + 1}, {row + 1}) is off the tile grid")
        tx, ty = column // width, row // height
        if tx >= tiles_across or ty >= tiles_down:
            raise FormatError(f"{path}: frame {i + 1} lies outside the total pixel matrix")
        tile = ty * tiles_across + tx
        if tile not in seen:  # a later frame at the same place: another optical path
            seen.add(tile)
            index[i] = tile
    return index


def _level_spec(image: _Image) -> LevelSpec:
    """The tile table of one image: every frame a tile of the file ``image.path``."""
    ds, path = image.ds, image.path
    try:
        tile_width, tile_height = int(ds.Columns), int(ds.Rows)
        samples, bits = int(ds.SamplesPerPixel), int(ds.BitsAllocated)
        frames = int(ds.get("NumberOfFrames", 1) or 1)
        signed = int(ds.get("PixelRepresentation", 0)) == 1
        planar = int(ds.get("PlanarConfiguration", 0) or 0)
    except (AttributeError, TypeError, ValueError) as exc:
        raise FormatError(f"{path}: missing or bad image pixel attributes: {exc}") from exc
    width, height = image.width, image.height
    if min(width, height, tile_width, tile_height) <= 0 or max(width, height) > 1 << 31:
        raise FormatError(f"{path}: image size {width}x{height}, frames {tile_width}x{tile_height}")
    if not 0 < frames <= MAX_FRAMES:
        raise FormatError(f"{path}: NumberOfFrames {frames}")
    if samples not in (1, 3) or bits not in (8, 16):
        raise UnsupportedError(f"{path}: {samples} samples of {bits} bits")
    photometric = str(ds.get("PhotometricInterpretation", ""))
    # Pixels come back as stored: only interpretations that are RGB or gray once decoded.
    if photometric not in _PHOTOMETRIC[samples] or (
        photometric.startswith("YBR") and image.pixel_length is not None
    ):
        raise UnsupportedError(
            f"{path}: PhotometricInterpretation {photometric or 'missing'} with {samples} samples"
        )
    dtype = np.dtype(("i" if signed else "u") + str(bits // 8)).newbyteorder("=")
    across, down = -(-width // tile_width), -(-height // tile_height)
    if across * down > MAX_FRAMES:
        raise FormatError(
            f"{path}: {across}x{down} tiles of {tile_width}x{tile_height} (more than {MAX_FRAMES})"
        )
    position = _tile_positions(image, frames, across, down)
    syntax = str(ds.file_meta.get("TransferSyntaxUID", ""))
    frame_bytes = tile_width * tile_height * samples * dtype.itemsize
    codec, compression, name = Codec.RAW, 1, ""
    jpeg_in = jpeg_out = JpegColor.AUTO
    external = None
    planes = 1
    if image.pixel_length is not None:
        if syntax not in _LITTLE_NATIVE and syntax != _BIG_NATIVE:
            raise FormatError(f"{path}: transfer syntax {syntax} with native (unencapsulated) pixel data")
        if image.pixel_length < frames * frame_bytes:
            raise FormatError(
                f"{path}: Pixel Data holds {image.pixel_length} bytes, {frames} frames need "
                f"{frames * frame_bytes}"
            )
        planes = samples if planar == 1 and samples > 1 else 1
        plane_bytes = frame_bytes // planes
        starts = image.pixel_value + np.arange(frames, dtype=np.uint64) * np.uint64(frame_bytes)
        frame_offsets = starts[None, :] + np.arange(planes, dtype=np.uint64)[:, None] * np.uint64(plane_bytes)
        frame_counts = np.full((planes, frames), plane_bytes, np.uint64)
    else:
        needed = int(np.flatnonzero(position >= 0).max()) + 1 if np.any(position >= 0) else 0
        offsets, counts = _frame_table(image, needed)
        frame_offsets, frame_counts = offsets[None, :], counts[None, :]
        if syntax == _JPEG_BASELINE and bits == 8 and samples in (1, 3) and planar == 0:
            codec, compression, name = Codec.JPEG, 7, "JPEG"
            jpeg_in, jpeg_out = _jpeg_colorspaces(image)
        elif syntax in _EXTERNAL or syntax == _JPEG_BASELINE:
            name, function, compression = _EXTERNAL.get(syntax, ("JPEG", "jpeg8_decode", 7))
            codec = Codec.EXTERNAL
            external = _external_decoder(name, function, (tile_height, tile_width, samples), dtype)
        else:
            raise UnsupportedError(f"{path}: transfer syntax {syntax} is not supported")
    offsets_table = np.zeros((planes, down * across), np.uint64)
    counts_table = np.zeros((planes, down * across), np.uint64)
    used_frames = np.flatnonzero(position >= 0)
    offsets_table[:, position[used_frames]] = frame_offsets[:, used_frames]
    counts_table[:, position[used_frames]] = frame_counts[:, used_frames]
    return LevelSpec(
        width=width,
        height=height,
        tile_width=tile_width,
        tile_height=tile_height,
        samples_per_plane=samples // planes,
        offsets=offsets_table.reshape(planes, down, across),
        bytecounts=counts_table.reshape(planes, down, across),
        dtype=dtype,
        codec=codec,
        compression=compression,
        byteswap=syntax == _BIG_NATIVE and dtype.itemsize > 1,
        jpeg_colorspace=jpeg_in,
        jpeg_out_colorspace=jpeg_out,
        external_decoder=external,
        file=path,
        missing_is_fill=len(used_frames) < down * across,
        codec_name=name or ("RAW" if codec is Codec.RAW else ""),
    )


@dataclass(frozen=True)
class DicomImageLoader:
    """Decodes a DICOM associated image (label, overview, thumbnail) when called.

    Holds only the file's path, so it is cheap and keeps no file open; the
    frames are read by the native engine like a level's.

    Example:
        >>> loader = DicomImageLoader(f"{dicom_path}/label.dcm", "label", 40, 20)
        >>> loader().shape
        (20, 40, 3)
    """

    path: str
    name: str
    width: int
    height: int

    def __call__(self) -> np.ndarray:
        """Return the image as an ``(height, width, channels)`` array."""
        from .. import _native

        with warnings.catch_warnings(), _wrap_errors(self.path):
            warnings.simplefilter("ignore")
            image = _read_image(self.path, required=True)
            assert image is not None
            spec = _level_spec(image)
        if (spec.width, spec.height) != (self.width, self.height):
            raise FormatError(
                f"{self.path}: associated image {self.name!r} changed since the slide was opened"
            )
        nbytes = spec.width * spec.height * spec.samples * spec.dtype.itemsize
        if nbytes > MAX_ASSOCIATED_BYTES:
            raise UnsupportedError(
                f"{self.path}: associated image {self.name!r} is {nbytes >> 20} MiB, too large to load whole"
            )
        reader = _native.Reader(self.path)
        try:
            spec.add_to(reader)
            out = np.empty((spec.height, spec.width, spec.samples * spec.dtype.itemsize), np.uint8)
            reader.read_region(0, 0, 0, out, bytes(out.shape[2]), 1)
        finally:
            reader.close()
        return out.view(spec.dtype).reshape(spec.height, spec.width, spec.samples)


def _series_files(path: str) -> tuple[str, list[str], str | None]:
    """The folder to scan, its candidate files, and the file the caller named (None: a folder)."""
    named = None if os.path.isdir(path) else path
    folder = path if named is None else (os.path.dirname(path) or ".")
    try:
        with os.scandir(folder) as entries:
            files = sorted(e.path for e in entries if e.is_file() and not e.name.startswith("."))
    except OSError as exc:
        raise OpenError(f"{folder}: cannot list: {exc.strerror or exc}") from exc
    if len(files) > MAX_FILES:
        raise UnsupportedError(f"{folder}: more than {MAX_FILES} files to scan for a DICOM series")
    return folder, files, named


def _properties(ds: Any) -> dict[str, str]:
    """OpenSlide's ``dicom.*`` keys: every public element of the data set, sequences as ``[i].``."""
    from .properties import format_double

    out: dict[str, str] = {}

    def text(vr: str, value: Any) -> list[str]:
        if vr == "AT":
            return [str(value.group), str(value.element)]
        if vr in ("FL", "FD"):
            return [format_double(float(value))]
        return [str(value)]

    def walk(dataset: Any, prefix: str) -> None:
        for element in dataset:
            if element.tag.is_private or element.tag.element == 0 or not element.keyword:
                continue
            if element.tag == _PIXEL_DATA or element.VR in _BINARY_VRS:
                continue
            key = prefix + element.keyword
            if element.VR == "SQ":
                for i, item in enumerate(element.value):
                    walk(item, f"{key}[{i}].")
                continue
            value = element.value
            if value is None or value == "":
                continue
            values = list(value) if element.VM > 1 or isinstance(value, (list, tuple)) else [value]
            texts = [t for v in values for t in text(element.VR, v)]
            if len(texts) == 1 and element.VR != "AT" and element.VM <= 1:
                out[key] = texts[0]
            else:
                for i, t in enumerate(texts):
                    out[f"{key}[{i}]"] = t

    walk(getattr(ds, "file_meta", []), "dicom.")
    walk(ds, "dicom.")
    return out


def _mpp(image: _Image) -> tuple[float, float] | None:
    ds = image.ds
    try:
        spacing = ds.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0].PixelSpacing
        # PixelSpacing is (between rows, between columns) in millimetres.
        mpp = parse_positive_float(spacing[1]), parse_positive_float(spacing[0])
        if mpp[0] and mpp[1]:
            return mpp[0] * 1000, mpp[1] * 1000
    except (AttributeError, IndexError, TypeError):
        pass
    w = parse_positive_float(ds.get("ImagedVolumeWidth"))
    h = parse_positive_float(ds.get("ImagedVolumeHeight"))
    if w and h:
        return w * 1000 / image.width, h * 1000 / image.height
    return None


def _objective(image: _Image) -> float | None:
    try:
        return parse_positive_float(image.ds.OpticalPathSequence[0].ObjectiveLensPower)
    except (AttributeError, IndexError, TypeError):
        return None


def read_slide_info(path: str) -> SlideInfo:
    """Describe the DICOM WSI series at ``path`` (a folder, or any file of the series).

    Levels are the VOLUME images, largest first (one per size: the named file
    wins its size, then the first in name order); LABEL, OVERVIEW and
    THUMBNAIL images are the associated images ``label``, ``macro`` and
    ``thumbnail``. Raises :class:`~wsiarray.errors.FormatError` for a file
    that is not a conformant VL WSI image, :class:`UnsupportedError` for a
    folder holding several series or a transfer syntax wsiarray cannot read.

    Example:
        >>> info = read_slide_info(dicom_path)
        >>> info.vendor, [(level.width, level.codec_name) for level in info.levels], list(info.associated)
        ('dicom', [(300, 'JPEG'), (150, 'RAW')], ['label'])
        >>> info.properties["openslide.mpp-x"], info.properties["openslide.objective-power"]
        ('0.5', '20')
    """
    with warnings.catch_warnings(), _wrap_errors(path):
        # pydicom warns about values its VRs do not allow (a 65-character UID): not our user's business
        warnings.simplefilter("ignore")
        return _read_series(path)


@contextlib.contextmanager
def _wrap_errors(path: str) -> Iterator[None]:
    # pydicom and numpy raise a zoo of exception types on corrupt data sets
    # (lazily converted values included): callers of wsiarray catch one family.
    try:
        yield
    except WSIError:
        raise
    except OSError as exc:
        raise OpenError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    except Exception as exc:
        raise FormatError(f"{path}: corrupt DICOM data set: {type(exc).__name__}: {exc}") from exc


def _read_series(path: str) -> SlideInfo:
    folder, files, named = _series_files(path)
    images: list[_Image] = []
    series = None
    if named is not None:
        first = _read_image(named, required=True)
        assert first is not None
        series = str(first.ds.SeriesInstanceUID)
        images.append(first)
    for file in files:
        if named is not None and os.path.samefile(file, named):
            continue
        image = _read_image(file, required=False)
        if image is None:
            continue
        uid = str(image.ds.get("SeriesInstanceUID", ""))
        if series is None:
            series = uid
        elif uid != series:
            if named is None:
                raise UnsupportedError(
                    f"{folder}: holds more than one DICOM WSI series ({series}, {uid}): "
                    "open one of its files instead"
                )
            continue
        images.append(image)
    if not images:
        raise OpenError(f"{path}: cannot open: a folder without DICOM VL Whole Slide Microscopy images")
    volumes: dict[tuple[int, int], _Image] = {}
    associated: dict[str, DicomImageLoader] = {}
    for image in images:
        if image.flavor == "VOLUME":
            if "ConcatenationUID" in image.ds:
                # its frames are only part of the level: reading one instance would leave holes
                raise UnsupportedError(
                    f"{image.path}: a level split over concatenated instances (ConcatenationUID) "
                    "is not supported"
                )
            volumes.setdefault((image.width, image.height), image)
        elif image.flavor in ASSOCIATED_NAMES:
            name = ASSOCIATED_NAMES[image.flavor]
            if name not in associated:
                associated[name] = DicomImageLoader(image.path, name, image.width, image.height)
    if not volumes:
        raise FormatError(f"{path}: a DICOM WSI series without VOLUME images")
    ordered = sorted(volumes.values(), key=lambda i: (-i.width * i.height, i.path))
    levels = [_level_spec(image) for image in ordered]
    base = ordered[0]
    info = make_slide_info(
        "dicom",
        levels,
        _properties(base.ds),
        associated=associated,  # type: ignore[arg-type]
        mpp=_mpp(base),
        objective_power=_objective(base),
    )
    info.file_identities = {image.path: image.identity for image in ordered}
    return info
