"""OME-TIFF: the first OME-XML Image, its channels and its SubIFD pyramid.

The OME-XML in the first ImageDescription says which IFD holds each plane
(``TiffData`` elements, else IFDs in ``DimensionOrder`` from IFD 0).  The
slide is the first Image at Z=0, T=0; its channels, one IFD each (or one
interleaved IFD for RGB), form one level with several planes.  Lower levels
are the channel IFDs' SubIFDs (level k = SubIFD k-1), as Bio-Formats 6+ and
tifffile write them.  Other Images named like label, macro or thumbnail
become associated images.  Everything the XML claims is bounded before use.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass

import tifffile

from ..errors import FormatError, UnsupportedError, WSIError
from .base import SlideInfo
from .properties import icc_profile, make_slide_info, parse_positive_float, tiff_properties
from .tiff import (
    MAX_PAGES,
    MAX_SAMPLES,
    PageLoader,
    check_page,
    page_name,
    pages_at,
    pyramid_levels,
    same_layout,
    subifd_pages,
)

__all__ = ["detect", "length_to_um"]

#: OME-XML longer than this is refused rather than parsed (memory bound).
MAX_XML_CHARS = 16 << 20
#: Largest SizeZ / SizeT / SizeC accepted from the XML.
MAX_DIM_SIZE = 1 << 31
_ORDERS = {"XYZCT", "XYZTC", "XYCTZ", "XYCZT", "XYTCZ", "XYTZC"}
_ASSOCIATED = ("label", "macro", "thumbnail")

_SI_PREFIX = {
    "Y": 1e24, "Z": 1e21, "E": 1e18, "P": 1e15, "T": 1e12, "G": 1e9, "M": 1e6,
    "k": 1e3, "h": 1e2, "da": 1e1, "": 1.0, "d": 1e-1, "c": 1e-2, "m": 1e-3,
    "µ": 1e-6, "μ": 1e-6, "u": 1e-6, "n": 1e-9, "p": 1e-12, "f": 1e-15,
    "a": 1e-18, "z": 1e-21, "y": 1e-24,
}  # fmt: skip
#: Micrometres per OME ``UnitsLength`` value; "pixel" and "reference frame" are not lengths.
_UM_PER_UNIT = {f"{prefix}m": factor * 1e6 for prefix, factor in _SI_PREFIX.items()}
_UM_PER_UNIT.update({
    "Å": 1e-4, "thou": 25.4, "li": 25400 / 12, "in": 25400.0, "ft": 304800.0,
    "yd": 914400.0, "mi": 1609344e3, "pt": 25400 / 72,
})  # fmt: skip


def length_to_um(value: str | None, unit: str | None) -> float | None:
    """An OME length in micrometres (default unit µm), or None if not a positive length.

    Example:
        >>> length_to_um("0.5", "nm"), length_to_um("1.0", "pixel")
        (0.0005, None)
    """
    number = parse_positive_float(value) if value is not None else None
    factor = _UM_PER_UNIT.get((unit or "µm").strip())
    return number * factor if number is not None and factor is not None else None


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]  # OME namespaces change with every schema year


def _children(element: ET.Element, name: str) -> list[ET.Element]:
    return [child for child in element if _local(child.tag) == name]


def _child(element: ET.Element, name: str) -> ET.Element | None:
    found = _children(element, name)
    return found[0] if found else None


def _int_attr(element: ET.Element, name: str, default: int | None, what: str) -> int:
    text = element.get(name)
    if text is None:
        if default is None:
            raise FormatError(f"{what}: OME-XML {_local(element.tag)} has no {name}")
        return default
    try:
        value = int(text.strip())
    except ValueError:
        raise FormatError(f"{what}: OME-XML {_local(element.tag)} {name}={text!r} is not a number") from None
    if not 0 <= value < MAX_DIM_SIZE:
        raise FormatError(f"{what}: OME-XML {_local(element.tag)} {name}={value} is out of range")
    return value


@dataclass(frozen=True)
class _TiffData:
    ifd: int
    first: tuple[int, int, int]  # (C, Z, T)
    count: int | None  # None: every plane from ``first`` on
    local: bool  # stored in this file (not another file of a multi-file set)


@dataclass(frozen=True)
class _Image:
    element: ET.Element
    pixels: ET.Element
    size_x: int
    size_y: int
    size_c: int
    size_z: int
    size_t: int
    order: str
    channels: list[ET.Element]
    tiffdata: list[_TiffData]

    def plane_index(self, c: int, z: int, t: int, size_c: int) -> int:
        """Linear plane index of (c, z, t) in DimensionOrder, with ``size_c`` C planes."""
        sizes = {"C": size_c, "Z": self.size_z, "T": self.size_t}
        coords = {"C": c, "Z": z, "T": t}
        index, stride = 0, 1
        for dim in self.order[2:]:
            index += coords[dim] * stride
            stride *= sizes[dim]
        return index

    def ifd_of(self, plane: int, start: int, size_c: int, what: str) -> int:
        """The IFD holding linear plane ``plane``; ``start`` is the first IFD when no TiffData."""
        if not self.tiffdata:
            return start + plane
        for data in self.tiffdata:
            first = self.plane_index(*data.first, size_c)
            if first <= plane and (data.count is None or plane < first + data.count):
                if not data.local:
                    raise UnsupportedError(
                        f"{what}: plane {plane} is stored in another file (multi-file OME-TIFF)"
                    )
                return data.ifd + plane - first
        raise FormatError(f"{what}: OME-XML maps no IFD to plane {plane}")


def _parse_image(element: ET.Element, root_uuid: str | None, what: str) -> _Image:
    pixels = _child(element, "Pixels")
    if pixels is None:
        raise FormatError(f"{what}: OME-XML Image has no Pixels")
    order = (pixels.get("DimensionOrder") or "XYCZT").strip()
    if order not in _ORDERS:
        raise FormatError(f"{what}: OME-XML DimensionOrder {order!r} is invalid")
    sizes = [_int_attr(pixels, f"Size{d}", None, what) for d in "XYCZT"]
    if min(sizes) < 1:
        raise FormatError(f"{what}: OME-XML Pixels sizes {sizes} include zero")
    tiffdata = []
    for data in _children(pixels, "TiffData")[:MAX_PAGES]:
        has_ifd = data.get("IFD") is not None
        count = _int_attr(data, "PlaneCount", 1 if has_ifd else 0, what)
        uuid = _child(data, "UUID")
        local = uuid is None or root_uuid is None or (uuid.text or "").strip() == root_uuid
        tiffdata.append(_TiffData(
            ifd=_int_attr(data, "IFD", 0, what),
            first=tuple(_int_attr(data, f"First{d}", 0, what) for d in "CZT"),  # type: ignore[arg-type]
            count=count if (has_ifd or data.get("PlaneCount") is not None) else None,
            local=local,
        ))  # fmt: skip
    return _Image(element, pixels, *sizes, order, _children(pixels, "Channel"), tiffdata)


def _channel_ifds(image: _Image, start: int, tif: tifffile.TiffFile, what: str) -> list[tifffile.TiffPage]:
    """Pages of the C planes at Z=0, T=0, after checking them against the XML."""
    ifd0 = image.ifd_of(0, start, image.size_c, what)
    first = pages_at(tif, [ifd0], what)[ifd0]
    check_page(first, f"{what} (IFD {ifd0})")
    spp = int(first.samplesperpixel)
    if image.size_c % spp:
        raise FormatError(f"{what}: SizeC {image.size_c} is not a multiple of SamplesPerPixel {spp}")
    planes = image.size_c // spp
    if image.size_c > MAX_SAMPLES:
        raise UnsupportedError(f"{what}: {image.size_c} channels (more than {MAX_SAMPLES})")
    ifds = [image.ifd_of(image.plane_index(c, 0, 0, planes), start, planes, what) for c in range(planes)]
    pages = pages_at(tif, ifds, what)
    result = [pages[ifd] for ifd in ifds]
    for ifd, page in zip(ifds, result, strict=True):
        if (page.imagewidth, page.imagelength) != (image.size_x, image.size_y):
            raise FormatError(
                f"{what}: IFD {ifd} is {page.imagewidth}x{page.imagelength} but OME-XML says "
                f"{image.size_x}x{image.size_y}"
            )
    return result


def _attr_properties(prefix: str, element: ET.Element) -> dict[str, str]:
    return {f"{prefix}.{_local(key)}": value for key, value in element.attrib.items()}


def _objective(root: ET.Element, image: _Image) -> ET.Element | None:
    instruments = _children(root, "Instrument")
    objectives = [o for instrument in instruments for o in _children(instrument, "Objective")]
    settings = _child(image.element, "ObjectiveSettings")
    if settings is not None:
        for objective in objectives:
            if objective.get("ID") == settings.get("ID"):
                return objective
    return objectives[0] if len(objectives) == 1 else None


def _associated(
    images: Sequence[ET.Element], tif: tifffile.TiffFile, path: str, root_uuid: str | None
) -> tuple[dict[str, PageLoader], dict[str, str]]:
    """Loaders for other Images named like label, macro or thumbnail, and their first page's description."""
    result: dict[str, PageLoader] = {}
    descriptions: dict[str, str] = {}
    start = 0  # first IFD of the image when there are no TiffData elements
    for number, element in enumerate(images[:MAX_PAGES]):
        what = f"{path}: OME Image {number}"
        try:
            image = _parse_image(element, root_uuid, what)
            planes = len(image.channels) or image.size_c
            name = next((n for n in _ASSOCIATED if n in (element.get("Name") or "").lower()), None)
            if number > 0 and name is not None and name not in result:
                pages = _channel_ifds(image, start, tif, what)
                indices = tuple(int(page.index) for page in pages)
                result[name] = PageLoader(path, name, indices, image.size_x, image.size_y)
                descriptions[name] = pages[0].description or ""
            start += planes * image.size_z * image.size_t
        except WSIError:
            continue  # an unreadable label must not make the slide unreadable
    return result, descriptions


def detect(tif: tifffile.TiffFile, path: str) -> SlideInfo | None:
    """Describe ``tif`` as an OME-TIFF, or return None if it is not one.

    Example:
        >>> info = detect(tifffile.TiffFile(ome_path), ome_path)
        >>> info.channel_names, info.mpp
        (('DAPI', 'CD3', 'CD8'), (0.5, 0.5))
    """
    first = tif.pages.first
    if not first.is_ome:
        return None
    check_page(first, f"{path}: IFD 0")
    xml = first.description
    if len(xml) > MAX_XML_CHARS:
        raise UnsupportedError(f"{path}: OME-XML is {len(xml)} characters (more than {MAX_XML_CHARS})")
    try:
        root = ET.fromstring(xml)
    except ET.ParseError as exc:
        raise FormatError(f"{path}: invalid OME-XML: {exc}") from exc
    if _local(root.tag) != "OME":
        raise FormatError(f"{path}: OME-XML root element is {_local(root.tag)!r}, not 'OME'")
    if _child(root, "BinaryOnly") is not None:
        raise UnsupportedError(f"{path}: OME-XML is in a companion file (BinaryOnly)")
    images = _children(root, "Image")
    if not images:
        raise FormatError(f"{path}: OME-XML describes no Image")
    root_uuid = (root.get("UUID") or "").strip() or None
    image = _parse_image(images[0], root_uuid, f"{path}: OME Image 0")

    level0 = _channel_ifds(image, 0, tif, f"{path}: OME Image 0")
    candidates = [level0]
    subs = [subifd_pages(tif, page, f"{path}: {page_name(page)}") for page in level0]
    for k in range(min(len(s) for s in subs)):
        pages = [s[k] for s in subs]
        if not all(same_layout(page, base) for page, base in zip(pages, level0, strict=True)):
            break  # not a pyramid level of this image; neither is anything after it
        candidates.append(pages)
    levels = pyramid_levels(path, candidates)

    props = tiff_properties(first)
    props.update(_attr_properties("ome", root))
    props.pop("ome.schemaLocation", None)
    props["ome.image-count"] = str(len(images))
    props.update(_attr_properties("ome.Image", image.element))
    props.update(_attr_properties("ome.Pixels", image.pixels))
    for i, channel in enumerate(image.channels[:MAX_SAMPLES]):
        props.update(_attr_properties(f"ome.Channel[{i}]", channel))
    if image.size_z > 1 or image.size_t > 1:
        props["ome.selected-plane"] = f"Z=0 T=0 of SizeZ={image.size_z} SizeT={image.size_t}"
    objective = _objective(root, image)
    if objective is not None:
        props.update(_attr_properties("ome.Objective", objective))

    pixels = image.pixels
    mpp_x = length_to_um(pixels.get("PhysicalSizeX"), pixels.get("PhysicalSizeXUnit"))
    mpp_y = length_to_um(pixels.get("PhysicalSizeY"), pixels.get("PhysicalSizeYUnit"))
    samples = levels[0].samples
    names = None
    if len(image.channels) == samples:
        names = [ch.get("Name") or ch.get("ID") or f"C{i}" for i, ch in enumerate(image.channels)]
    associated, descriptions = _associated(images, tif, path, root_uuid)
    info = make_slide_info(
        "ome-tiff",
        levels,
        props,
        associated=associated,
        mpp=(mpp_x, mpp_y if mpp_y is not None else mpp_x) if mpp_x is not None else None,
        objective_power=(
            parse_positive_float(objective.get("NominalMagnification")) if objective is not None else None
        ),
        channel_names=names,
        icc_profile=icc_profile(first),
    )
    info.associated_descriptions = descriptions
    return info
