"""Philips TIFF (the Philips IntelliSite export), read the way OpenSlide's ``philips`` driver reads it.

A Philips TIFF is a tiled (Big)TIFF whose Software tag starts with ``Philips``
and whose first ImageDescription is an XML ``DataObject`` of ObjectType
``DPUfsImport`` (OpenSlide's detection; anything else is left to the next
format module). The XML is a tree of ``Attribute`` elements (``Name``, DICOM
``Group``/``Element``, a ``PMSVR`` value type); ``IDataObjectArray`` attributes
hold ``Array/DataObject`` children:

- ``PIM_DP_SCANNED_IMAGES`` holds one ``DPScannedImage`` per image, told apart
  by ``PIM_DP_IMAGE_TYPE``: ``WSI`` (the pyramid), ``LABELIMAGE`` and
  ``MACROIMAGE`` (a base64 JPEG in ``PIM_DP_IMAGE_DATA``).
- The WSI's ``PIIM_PIXEL_DATA_REPRESENTATION_SEQUENCE`` holds one
  ``PixelDataRepresentation`` per pyramid level, in level order, each with its
  ``DICOM_PIXEL_SPACING`` (``"row spacing" "column spacing"`` in mm).

ImageWidth/ImageLength of every level include the padding of the last tile
column and row, so the levels' aspect ratios disagree. As OpenSlide does, level
0 keeps its stored size and level k is ``floor(size0 / d)`` with ``d`` the mean
of the two axes' spacing ratios to level 0 rounded to a whole number (halves
up); ``d`` is the level's downsample. Tiles the scanner never wrote (offset and
byte count 0, outside every region of interest) are the request's fill.
``label``/``macro`` are the stripped pages whose description starts with
``Label``/``Macro``, else the JPEGs in the XML. Properties are OpenSlide's:
``philips.<Name>`` for the attributes of the ``DPUfsImport`` object and of the
first WSI image, ``philips.PIIM_PIXEL_DATA_REPRESENTATION_SEQUENCE[i].<Name>``
for its levels, ``openslide.barcode`` (the base64-decoded
``PIM_DP_UFS_BARCODE``), ``openslide.mpp-x/y`` (1000 x the WSI's
``DICOM_PIXEL_SPACING``, column then row); no ImageDescription (it can hold
megabytes of base64) and no objective power (the XML has none).
"""

from __future__ import annotations

import base64
import binascii
import math
import xml.etree.ElementTree as ET
from dataclasses import dataclass, replace

import numpy as np
import tifffile

from ..errors import FormatError, TileDecodeError, UnsupportedError
from .base import LevelSpec, SlideInfo, TileDecoder
from .properties import make_slide_info, parse_positive_float, tiff_properties
from .tiff import (
    MAX_ASSOCIATED_BYTES,
    MAX_DIMENSION,
    MAX_LEVELS,
    PageLoader,
    check_page,
    iter_pages,
    level_from_pages,
    open_tiff,
    same_layout,
    wrap_errors,
)

__all__ = ["XmlImageLoader", "detect", "level_downsamples", "parse_xml", "philips_properties"]

#: OpenSlide's test: the Software tag starts with this.
SOFTWARE_PREFIX = "Philips"
#: The XML root's ObjectType.
ROOT_TYPE = "DPUfsImport"
#: Associated images stored as base64 JPEGs in the XML, by PIM_DP_IMAGE_TYPE.
XML_IMAGES = {"LABELIMAGE": "label", "MACROIMAGE": "macro"}
#: Associated images stored as stripped pages, by the start of their ImageDescription.
PAGE_IMAGES = (("Label", "label"), ("Macro", "macro"))
_SEQUENCE = "PIIM_PIXEL_DATA_REPRESENTATION_SEQUENCE"
_JPEG = 7  # TIFF Compression value of JPEG, for the stream-header check


def parse_xml(description: str) -> ET.Element | None:
    """The ``DPUfsImport`` root of a first ImageDescription, or None when it is not one.

    Example:
        >>> parse_xml('<DataObject ObjectType="DPUfsImport"></DataObject>').tag
        'DataObject'
        >>> parse_xml("Aperio Image Library") is None
        True
    """
    try:
        root = ET.fromstring(description)
    except ET.ParseError:
        return None
    if root.tag != "DataObject" or root.get("ObjectType") != ROOT_TYPE:
        return None
    return root


def _attributes(obj: ET.Element) -> list[ET.Element]:
    return [child for child in obj if child.tag == "Attribute" and child.get("Name")]


def _attribute(obj: ET.Element, name: str) -> ET.Element | None:
    return next((a for a in _attributes(obj) if a.get("Name") == name), None)


def _objects(attribute: ET.Element | None) -> list[ET.Element]:
    """The DataObjects of an ``IDataObjectArray`` attribute, in order."""
    if attribute is None:
        return []
    return [obj for array in attribute if array.tag == "Array" for obj in array if obj.tag == "DataObject"]


def _scanned_images(root: ET.Element, image_type: str) -> list[ET.Element]:
    """The DPScannedImage objects of ``PIM_DP_SCANNED_IMAGES`` whose PIM_DP_IMAGE_TYPE is ``image_type``."""

    def image_type_of(obj: ET.Element) -> str | None:
        attribute = _attribute(obj, "PIM_DP_IMAGE_TYPE")
        return (attribute.text or "") if attribute is not None else None

    images = _objects(_attribute(root, "PIM_DP_SCANNED_IMAGES"))
    scanned = [obj for obj in images if obj.get("ObjectType") == "DPScannedImage"]
    return [obj for obj in scanned if image_type_of(obj) == image_type]


def philips_properties(root: ET.Element) -> dict[str, str]:
    """``philips.*`` properties as OpenSlide names them.

    The attributes of the ``DPUfsImport`` object and of its first WSI image
    (their text, as written), and of that image's pixel-data representations
    as ``PIIM_PIXEL_DATA_REPRESENTATION_SEQUENCE[i].<Name>``; other arrays
    (the label and macro images among them) give no properties.

    Example:
        >>> root = parse_xml(
        ...     '<DataObject ObjectType="DPUfsImport">'
        ...     '<Attribute Name="DICOM_MANUFACTURER" PMSVR="IString">PHILIPS</Attribute>'
        ...     '</DataObject>'
        ... )
        >>> philips_properties(root)
        {'philips.DICOM_MANUFACTURER': 'PHILIPS'}
    """
    props: dict[str, str] = {}

    def add(obj: ET.Element, prefix: str, nested: bool) -> None:
        for attribute in _attributes(obj):
            name = attribute.get("Name", "")
            if attribute.get("PMSVR") != "IDataObjectArray":
                props[f"philips.{prefix}{name}"] = attribute.text or ""
            elif nested and name == _SEQUENCE:
                for i, representation in enumerate(_objects(attribute)):
                    add(representation, f"{prefix}{name}[{i}].", False)

    add(root, "", False)
    wsi = _scanned_images(root, "WSI")
    if wsi:
        add(wsi[0], "", True)
    return props


def _values(text: str | None) -> list[str]:
    """The items of an ``IDoubleArray``/``IStringArray`` value: ``"a" "b"`` -> ``["a", "b"]``."""
    return (text or "").replace('"', " ").split()


def _spacing(text: str | None, what: str) -> tuple[float, float]:
    """``"row" "column"`` spacing text -> (row, column); both finite and > 0, else FormatError."""
    values = [parse_positive_float(v) for v in _values(text)[:2]]
    if len(values) != 2 or values[0] is None or values[1] is None:
        raise FormatError(f"{what}: DICOM_PIXEL_SPACING {text!r} is not two positive numbers")
    return values[0], values[1]


def level_downsamples(root: ET.Element, levels: int, what: str) -> list[int]:
    """Each level's whole-number downsample from the XML pixel spacings (OpenSlide's rule).

    ``round(mean(row_k / row_0, column_k / column_0))`` with halves rounded up;
    the XML must describe exactly ``levels`` levels, with downsamples that
    never fall, else :class:`~wsiarray.errors.FormatError`.

    Example:
        >>> attr = '<Attribute Name="DICOM_PIXEL_SPACING" PMSVR="IDoubleArray">{}</Attribute>'
        >>> reps = "".join(
        ...     f'<DataObject ObjectType="PixelDataRepresentation">{attr.format(s)}</DataObject>'
        ...     for s in ('"0.00025" "0.00025"', '"0.0005" "0.0005"', '"0.00055" "0.00095"')
        ... )
        >>> root = parse_xml(
        ...     '<DataObject ObjectType="DPUfsImport"><Attribute Name="PIM_DP_SCANNED_IMAGES" '
        ...     'PMSVR="IDataObjectArray"><Array><DataObject ObjectType="DPScannedImage">'
        ...     '<Attribute Name="PIM_DP_IMAGE_TYPE" PMSVR="IString">WSI</Attribute>'
        ...     '<Attribute Name="PIIM_PIXEL_DATA_REPRESENTATION_SEQUENCE" PMSVR="IDataObjectArray">'
        ...     f'<Array>{reps}</Array></Attribute></DataObject></Array></Attribute></DataObject>'
        ... )
        >>> level_downsamples(root, 3, "x.tiff")
        [1, 2, 3]
    """
    wsi = _scanned_images(root, "WSI")
    if not wsi:
        raise FormatError(f"{what}: the XML has no WSI image (PIM_DP_IMAGE_TYPE WSI)")
    representations = _objects(_attribute(wsi[0], _SEQUENCE))
    if len(representations) != levels:
        raise FormatError(
            f"{what}: the XML describes {len(representations)} pyramid levels "
            f"({_SEQUENCE}) but the file has {levels} tiled levels"
        )
    spacings = []
    for i, representation in enumerate(representations):
        attribute = _attribute(representation, "DICOM_PIXEL_SPACING")
        spacings.append(_spacing(attribute.text if attribute is not None else None, f"{what}: level {i}"))
    (row0, column0), out = spacings[0], [1]
    for i, (row, column) in enumerate(spacings[1:], start=1):
        ratio = (row / row0 + column / column0) / 2
        downsample = math.floor(ratio + 0.5) if ratio < 2.0**62 else 2**62  # an empty level, refused below
        if downsample < out[-1]:
            raise FormatError(
                f"{what}: level {i}'s pixel spacing gives downsample {ratio:.6g}, "
                f"below level {i - 1}'s {out[-1]}"
            )
        out.append(downsample)
    return out


def _regridded(
    decode: TileDecoder, across: int, down: int, stored_across: int, stored_down: int
) -> TileDecoder:
    """``decode`` (indices in the page's tile grid) called with indices in a grid of ``across x down``."""

    def decode_tile(data: bytes, index: int) -> np.ndarray:
        plane, within = divmod(index, across * down)
        row, column = divmod(within, across)
        return decode(data, plane * stored_across * stored_down + row * stored_across + column)

    return decode_tile


def _sized(spec: LevelSpec, width: int, height: int, downsample: int) -> LevelSpec:
    """``spec`` as a level of ``width x height``: tiles past the page's grid are never written."""
    across, down = -(-width // spec.tile_width), -(-height // spec.tile_height)
    offsets = np.zeros((spec.planes, down, across), np.uint64)
    counts = np.zeros_like(offsets)
    rows, columns = min(down, spec.tiles_down), min(across, spec.tiles_across)
    offsets[:, :rows, :columns] = spec.offsets[:, :rows, :columns]
    counts[:, :rows, :columns] = spec.bytecounts[:, :rows, :columns]
    decoder = spec.external_decoder
    if decoder is not None and (across, down) != (spec.tiles_across, spec.tiles_down):
        decoder = _regridded(decoder, across, down, spec.tiles_across, spec.tiles_down)
    return replace(
        spec,
        width=width,
        height=height,
        offsets=offsets,
        bytecounts=counts,
        external_decoder=decoder,
        missing_is_fill=True,
        downsample=float(downsample),
    )


def _xml_jpeg(root: ET.Element, image_type: str) -> bytes | None:
    """The first ``image_type`` image's JPEG, base64-decoded strictly; None when absent or not base64."""
    images = _scanned_images(root, image_type)
    data = _attribute(images[0], "PIM_DP_IMAGE_DATA") if images else None
    if data is None or not data.text:
        return None
    try:
        return base64.b64decode("".join(data.text.split()), validate=True)
    except (binascii.Error, ValueError):
        return None


def _jpeg_size(jpeg: bytes) -> tuple[int, int] | None:
    """A JPEG's (width, height) from its frame header; None when it has none we can read."""
    from .. import _native

    try:
        header = _native.stream_header(_JPEG, jpeg)
    except TileDecodeError:
        return None
    if header is None:
        return None
    width, height = int(header[0]), int(header[1])
    if not (0 < width <= MAX_DIMENSION and 0 < height <= MAX_DIMENSION):
        return None
    return width, height


@dataclass(frozen=True)
class XmlImageLoader:
    """Decodes a label or macro stored as a base64 JPEG in the XML, when called.

    Holds only the path and the image's type, so it keeps neither the file
    open nor the JPEG in memory; the XML is parsed again on the call.

    Example:
        >>> loader = wsiarray.open(philips_path).format_info.associated["label"]
        >>> loader.image_type, loader().shape
        ('LABELIMAGE', (30, 40, 3))
    """

    path: str
    name: str
    image_type: str
    width: int
    height: int

    def __call__(self) -> np.ndarray:
        """Return the image as an ``(height, width, 3)`` array."""
        import imagecodecs

        what = f"{self.path}: associated image {self.name!r}"
        tif = open_tiff(self.path)
        try:
            with wrap_errors(self.path, f"decoding associated image {self.name!r}", decoding=True):
                root = parse_xml(tif.pages.first.description or "")
                jpeg = _xml_jpeg(root, self.image_type) if root is not None else None
                if jpeg is None or _jpeg_size(jpeg) != (self.width, self.height):
                    raise FormatError(f"{what}: the XML image changed since the slide was opened")
                if self.width * self.height * 3 > MAX_ASSOCIATED_BYTES:
                    raise UnsupportedError(f"{what}: too large to load whole")
                image = np.asarray(imagecodecs.jpeg8_decode(jpeg))
        finally:
            tif.close()
        if image.ndim == 2:
            image = image[:, :, None]
        if image.shape[:2] != (self.height, self.width):
            raise TileDecodeError(f"{what}: decoded {image.shape[1]}x{image.shape[0]} pixels")
        return image


def _barcode(text: str | None) -> str | None:
    if not text:
        return None
    try:
        value = base64.b64decode("".join(text.split()), validate=True)
    except (binascii.Error, ValueError):
        return None
    return value.split(b"\0", 1)[0].decode("utf-8", "replace")


def _mpp(root: ET.Element) -> tuple[float, float] | None:
    """(x, y) µm per pixel: 1000 x the WSI's DICOM_PIXEL_SPACING column and row; None when unusable."""
    wsi = _scanned_images(root, "WSI")
    attribute = _attribute(wsi[0], "DICOM_PIXEL_SPACING") if wsi else None
    try:
        row, column = _spacing(attribute.text if attribute is not None else None, "mpp")
    except FormatError:
        return None  # the pixel size is optional; levels do not depend on it
    return column * 1000, row * 1000


def detect(tif: tifffile.TiffFile, path: str) -> SlideInfo | None:
    """Describe ``tif`` as a Philips TIFF, or return None if it is not one.

    Example:
        >>> info = detect(tifffile.TiffFile(philips_path), philips_path)
        >>> [(level.width, level.height) for level in info.levels], sorted(info.associated)
        ([(512, 384), (256, 192)], ['label', 'macro'])
        >>> detect(tifffile.TiffFile(path), path) is None  # not a Philips file
        True
    """
    first = tif.pages.first
    if not str(first.software or "").startswith(SOFTWARE_PREFIX):
        return None
    root = parse_xml(first.description or "")
    if root is None:
        return None
    what = f"{path}: Philips"
    if not first.is_tiled:
        raise UnsupportedError(f"{what}: level 0 (IFD 0) is not tiled")
    check_page(first, f"{what}: level 0 (IFD 0)")

    level_pages: list[tuple[int, tifffile.TiffPage]] = []
    associated: dict[str, PageLoader | XmlImageLoader] = {}
    for index, page in enumerate(iter_pages(tif)):
        description = (page.description or "") if index else ""
        name = next((n for prefix, n in PAGE_IMAGES if description.startswith(prefix)), None)
        if name is not None:
            if name in associated:
                continue
            try:
                check_page(page, f"{what}: associated image {name!r} (IFD {index})")
            except FormatError:
                continue  # a broken label must not make the slide unreadable
            associated[name] = PageLoader(path, name, (index,), int(page.imagewidth), int(page.imagelength))
        elif page.is_tiled:
            if not same_layout(page, first) and index:
                raise FormatError(f"{what}: IFD {index} differs from level 0 in samples, type or size")
            level_pages.append((index, page))
    if len(level_pages) > MAX_LEVELS:
        raise FormatError(f"{what}: {len(level_pages)} pyramid levels (more than {MAX_LEVELS})")

    downsamples = level_downsamples(root, len(level_pages), what)
    width0, height0 = int(first.imagewidth), int(first.imagelength)
    levels = []
    for n, ((index, page), downsample) in enumerate(zip(level_pages, downsamples, strict=True)):
        width, height = width0 // downsample, height0 // downsample
        if width < 1 or height < 1:
            raise FormatError(
                f"{what}: level {n}'s pixel spacing gives an empty level (downsample {downsample})"
            )
        spec = level_from_pages([page], f"{what}: level {n} (IFD {index})")
        levels.append(_sized(spec, width, height, downsample))

    for image_type, name in XML_IMAGES.items():
        if name in associated:
            continue  # a stripped page wins, as in OpenSlide
        jpeg = _xml_jpeg(root, image_type)
        size = _jpeg_size(jpeg) if jpeg is not None else None
        if size is not None:  # like OpenSlide, an image that is not a JPEG is left out
            associated[name] = XmlImageLoader(path, name, image_type, *size)

    props = tiff_properties(first)
    props.pop("tiff.ImageDescription", None)  # OpenSlide leaves out the XML (and its base64 images)
    props.pop("openslide.comment", None)
    props.update(philips_properties(root))
    barcode = _barcode(props.get("philips.PIM_DP_UFS_BARCODE"))
    if barcode is not None:
        props["openslide.barcode"] = barcode
    return make_slide_info(
        "philips",
        levels,
        props,
        associated=associated,  # type: ignore[arg-type]
        mpp=_mpp(root),
    )
