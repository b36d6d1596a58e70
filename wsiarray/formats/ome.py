"""OME-TIFF: the first OME-XML Image, its channels and its SubIFD pyramid.

The OME-XML in the first ImageDescription says which IFD holds each plane
(``TiffData`` elements, else IFDs in ``DimensionOrder`` from IFD 0).  The
slide is the first Image at Z=0, T=0; its channels, one IFD each (or one
interleaved IFD for RGB), form one level with several planes.  Lower levels
are the channel IFDs' SubIFDs (level k = SubIFD k-1), as Bio-Formats 6+ and
tifffile write them.  Other Images named like label, macro or thumbnail
become associated images.  Everything the XML claims is bounded before use.

A multi-file set (Bio-Formats' layout) is one image whatever member is
opened: the master TIFF holding the XML, a ``BinaryOnly`` member (its
``MetadataFile`` names the master or companion), or the ``.companion.ome``
XML itself.  ``TiffData`` ``UUID`` elements name each plane's file
(``FileName``, next to the XML's file); the members are opened with
tifffile, and a level's planes may then live in several files
(``LevelSpec.plane_files``).  A member that is missing is an
:class:`~wsiarray.errors.OpenError` naming it.
"""

from __future__ import annotations

import dataclasses
import os
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass

import tifffile

from .._remote import RemoteSource
from ..errors import FormatError, OpenError, UnsupportedError, WSIError
from .base import LevelSpec, SlideInfo
from .properties import icc_profile, make_slide_info, parse_positive_float, tiff_properties
from .tiff import (
    MAX_PAGES,
    MAX_SAMPLES,
    PageLoader,
    check_page,
    open_tiff,
    page_name,
    pages_at,
    pyramid_levels,
    same_layout,
    subifd_pages,
)

__all__ = ["detect", "is_companion", "length_to_um", "read_companion"]

#: OME-XML longer than this is refused rather than parsed (memory bound).
MAX_XML_CHARS = 16 << 20
#: Largest SizeZ / SizeT / SizeC accepted from the XML.
MAX_DIM_SIZE = 1 << 31
_ORDERS = {"XYZCT", "XYZTC", "XYCTZ", "XYCZT", "XYTCZ", "XYTZC"}
_ASSOCIATED = ("label", "macro", "thumbnail")
#: Most member files of one multi-file set (the native reader holds at most 256 files).
MAX_MEMBERS = 255
#: Names a companion OME-XML file may have.
_COMPANION_SUFFIXES = (".companion.ome", ".ome", ".ome.xml", ".xml")

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
    file: str | None  # the member's FileName; None: the file holding the OME-XML


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

    def ifd_of(self, plane: int, start: int, size_c: int, what: str) -> tuple[str | None, int]:
        """The file (None: the XML's) and IFD holding linear plane ``plane``; ``start`` is the
        first IFD when no TiffData."""
        if not self.tiffdata:
            return None, start + plane
        for data in self.tiffdata:
            first = self.plane_index(*data.first, size_c)
            if first <= plane and (data.count is None or plane < first + data.count):
                return data.file, data.ifd + plane - first
        raise FormatError(f"{what}: OME-XML maps no IFD to plane {plane}")


def _member_name(uuid: ET.Element | None, root_uuid: str | None, what: str) -> str | None:
    """The file a TiffData's UUID names (its FileName), None for the file holding the XML."""
    if uuid is None or (root_uuid is not None and (uuid.text or "").strip() == root_uuid):
        return None
    name = (uuid.get("FileName") or "").strip()
    if not name:
        if root_uuid is None:
            return None  # a single file that did not name itself
        raise FormatError(f"{what}: OME-XML TiffData UUID {(uuid.text or '').strip()!r} has no FileName")
    parts = name.replace("\\", "/").split("/")
    if os.path.isabs(name) or ".." in parts or "\0" in name or len(name) > 4096:
        raise FormatError(f"{what}: OME-XML TiffData FileName {name!r} is not a name next to the XML")
    return name


class _Members:
    """The files of a (possibly multi-file) OME-TIFF set, opened once each with tifffile.

    ``home`` is the file holding the XML (a member's ``None``); ``opened`` the
    file the user opened, whose planes stay in the slide's own path.
    """

    def __init__(self, home: str, opened: str | None, opened_tif: tifffile.TiffFile | None) -> None:
        self.home = home
        self.opened = opened
        self._tifs: dict[tuple[int, int], tuple[str, tifffile.TiffFile, bool]] = {}
        self.identities: dict[str, tuple[int, int, int, int]] = {}
        if opened is not None and opened_tif is not None:
            if isinstance(opened, RemoteSource):
                self._tifs[(-1, hash(opened))] = (opened, opened_tif, False)
            else:
                st = os.stat(opened)
                self._tifs[(st.st_dev, st.st_ino)] = (opened, opened_tif, False)

    def path(self, name: str | None) -> str:
        return self.home if name is None else os.path.join(os.path.dirname(self.home), name)

    def tif(self, name: str | None, what: str) -> tifffile.TiffFile:
        path = self.path(name)
        if isinstance(self.home, RemoteSource):
            if name is None and self.home == self.opened:
                return self._tifs[(-1, hash(self.home))][1]
            raise UnsupportedError(f"{what}: multi-file OME-TIFF sets cannot be read remotely "
                                   f"(member {name or path!r})")
        try:
            st = os.stat(path)
        except OSError as exc:
            raise OpenError(
                f"{what}: multi-file OME-TIFF member {name or os.path.basename(path)!r} is missing "
                f"({path}: {exc.strerror or exc})"
            ) from None
        key = (st.st_dev, st.st_ino)
        if key not in self._tifs:
            if len(self._tifs) >= MAX_MEMBERS:
                raise UnsupportedError(f"{what}: more than {MAX_MEMBERS} member files")
            self._tifs[key] = (path, open_tiff(path), True)
            self.identities[path] = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
        return self._tifs[key][1]

    def file_of(self, page: tifffile.TiffPage) -> str | None:
        """The path of the member holding ``page``; None for the file the user opened."""
        for path, tif, _ in self._tifs.values():
            if tif is page.parent:
                return None if path == self.opened else path
        raise FormatError(f"{self.home}: a page of no member file")

    def page(self, name: str | None, ifd: int, what: str) -> tifffile.TiffPage:
        tif = self.tif(name, what)
        return pages_at(tif, [ifd], f"{what} ({self.path(name)})")[ifd]

    def close(self) -> None:
        for _, tif, owned in self._tifs.values():
            if owned:
                tif.close()


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
        tiffdata.append(_TiffData(
            ifd=_int_attr(data, "IFD", 0, what),
            first=tuple(_int_attr(data, f"First{d}", 0, what) for d in "CZT"),  # type: ignore[arg-type]
            count=count if (has_ifd or data.get("PlaneCount") is not None) else None,
            file=_member_name(_child(data, "UUID"), root_uuid, what),
        ))  # fmt: skip
    return _Image(element, pixels, *sizes, order, _children(pixels, "Channel"), tiffdata)


def _channel_ifds(image: _Image, start: int, members: _Members, what: str) -> list[tifffile.TiffPage]:
    """Pages of the C planes at Z=0, T=0 (in whichever member files), after checking them
    against the XML."""
    file0, ifd0 = image.ifd_of(0, start, image.size_c, what)
    first = members.page(file0, ifd0, what)
    check_page(first, f"{what} (IFD {ifd0})")
    spp = int(first.samplesperpixel)
    if image.size_c % spp:
        raise FormatError(f"{what}: SizeC {image.size_c} is not a multiple of SamplesPerPixel {spp}")
    planes = image.size_c // spp
    if image.size_c > MAX_SAMPLES:
        raise UnsupportedError(f"{what}: {image.size_c} channels (more than {MAX_SAMPLES})")
    places = [image.ifd_of(image.plane_index(c, 0, 0, planes), start, planes, what) for c in range(planes)]
    result = [members.page(name, ifd, what) for name, ifd in places]
    for (name, ifd), page in zip(places, result, strict=True):
        if (page.imagewidth, page.imagelength) != (image.size_x, image.size_y):
            raise FormatError(
                f"{what}: IFD {ifd}{f' of {name}' if name else ''} is {page.imagewidth}x{page.imagelength} "
                f"but OME-XML says {image.size_x}x{image.size_y}"
            )
    return result


def _in_files(spec: LevelSpec, pages: Sequence[tifffile.TiffPage], members: _Members) -> LevelSpec:
    """``spec`` with the member file(s) its planes' tiles are in."""
    files: list[str | None] = []
    for page in pages:
        per_page = int(page.samplesperpixel) if int(page.planarconfig) == 2 else 1
        files += [members.file_of(page)] * per_page
    if len(set(files)) == 1:
        return spec if files[0] is None else dataclasses.replace(spec, file=files[0])
    return dataclasses.replace(spec, file=files[0], plane_files=tuple(files))


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
    images: Sequence[ET.Element], members: _Members, path: str, root_uuid: str | None
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
                pages = _channel_ifds(image, start, members, what)
                files = {members.file_of(page) for page in pages}
                if len(files) > 1:
                    continue  # a PageLoader reads one file
                indices = tuple(int(page.index) for page in pages)
                loader_path = files.pop() or path
                result[name] = PageLoader(loader_path, name, indices, image.size_x, image.size_y)
                descriptions[name] = pages[0].description or ""
            start += planes * image.size_z * image.size_t
        except WSIError:
            continue  # an unreadable label must not make the slide unreadable
    return result, descriptions


def _parse_xml(xml: str, what: str) -> ET.Element:
    if len(xml) > MAX_XML_CHARS:
        raise UnsupportedError(f"{what}: OME-XML is {len(xml)} characters (more than {MAX_XML_CHARS})")
    try:
        root = ET.fromstring(xml)
    except ET.ParseError as exc:
        raise FormatError(f"{what}: invalid OME-XML: {exc}") from exc
    if _local(root.tag) != "OME":
        raise FormatError(f"{what}: OME-XML root element is {_local(root.tag)!r}, not 'OME'")
    return root


def _read_text(path: str, what: str) -> str:
    """A companion file's OME-XML, read with a bound on its size."""
    try:
        with open(path, "rb") as fh:
            data = fh.read(MAX_XML_CHARS * 4 + 1)
    except OSError as exc:
        raise OpenError(f"{what}: cannot read {path}: {exc.strerror or exc}") from None
    if len(data) > MAX_XML_CHARS * 4:
        raise UnsupportedError(f"{what}: {path} is too large to be OME-XML")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise FormatError(f"{what}: {path} is not UTF-8 OME-XML: {exc}") from None


def is_companion(path: str) -> bool:
    """True if ``path`` looks like a companion OME-XML file (``*.companion.ome``).

    Example:
        >>> is_companion(svs_path)
        False
    """
    try:
        with open(path, "rb") as fh:
            head = fh.read(4096)
    except OSError:
        return False
    head = head.lstrip(b"\xef\xbb\xbf \t\r\n")
    return head.startswith(b"<") and (b"<OME" in head or path.lower().endswith(_COMPANION_SUFFIXES))


def read_companion(path: str) -> SlideInfo:
    """Describe the multi-file OME-TIFF set whose OME-XML is the companion file ``path``.

    Example:
        >>> info = read_companion(companion_path)
        >>> info.vendor, info.channel_names
        ('ome-tiff', ('DAPI', 'CD3'))
    """
    root = _parse_xml(_read_text(path, path), path)
    if _child(root, "BinaryOnly") is not None:
        raise FormatError(f"{path}: a companion OME-XML file that is BinaryOnly itself")
    members = _Members(path, None, None)
    try:
        return _describe(root, members, path, None)
    finally:
        members.close()


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
    root = _parse_xml(first.description, path)
    home = path
    binary_only = _child(root, "BinaryOnly")
    if binary_only is not None:
        # A member of a set: the XML is in the master TIFF or a companion file.
        name = (binary_only.get("MetadataFile") or "").strip()
        if not name or os.path.isabs(name) or ".." in name.replace("\\", "/").split("/"):
            raise FormatError(f"{path}: OME-XML is BinaryOnly but names no MetadataFile next to it")
        if isinstance(path, RemoteSource):
            raise UnsupportedError(f"{path}: multi-file OME-TIFF sets cannot be read remotely")
        home = os.path.join(os.path.dirname(path), name)
        if not os.path.exists(home):
            raise OpenError(f"{path}: the multi-file OME-TIFF's metadata file {name!r} is missing ({home})")
        if is_companion(home):
            root = _parse_xml(_read_text(home, path), home)
        else:
            master = open_tiff(home)
            try:
                root = _parse_xml(master.pages.first.description or "", home)
            finally:
                master.close()
        if _child(root, "BinaryOnly") is not None:
            raise FormatError(f"{home}: the metadata file named by {path} is BinaryOnly itself")
    members = _Members(home, path, tif)
    try:
        return _describe(root, members, path, first)
    finally:
        members.close()


def _describe(root: ET.Element, members: _Members, path: str, opened: tifffile.TiffPage | None) -> SlideInfo:
    """The slide the OME-XML ``root`` describes; ``opened``: IFD 0 of the file opened, if a TIFF."""
    images = _children(root, "Image")
    if not images:
        raise FormatError(f"{path}: OME-XML describes no Image")
    root_uuid = (root.get("UUID") or "").strip() or None
    image = _parse_image(images[0], root_uuid, f"{path}: OME Image 0")

    level0 = _channel_ifds(image, 0, members, f"{path}: OME Image 0")
    candidates = [level0]
    subs = [subifd_pages(page.parent, page, f"{path}: {page_name(page)}") for page in level0]
    for k in range(min(len(s) for s in subs)):
        pages = [s[k] for s in subs]
        if not all(same_layout(page, base) for page, base in zip(pages, level0, strict=True)):
            break  # not a pyramid level of this image; neither is anything after it
        candidates.append(pages)
    by_size: dict[tuple[int, int], list[tifffile.TiffPage]] = {}
    for pages in candidates:
        by_size.setdefault((int(pages[0].imagewidth), int(pages[0].imagelength)), pages)
    levels = [
        _in_files(spec, by_size[(spec.width, spec.height)], members)
        for spec in pyramid_levels(path, candidates)
    ]

    first = opened if opened is not None else level0[0]
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
    if members.identities:
        props["ome.files"] = str(len(members.identities) + (opened is not None))
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
    associated, descriptions = _associated(images, members, path, root_uuid)
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
    info.file_identities = dict(members.identities)
    return info
