"""Leica SCN, read the way OpenSlide's ``leica`` driver reads it.

An SCN file is a BigTIFF whose first IFD is tiled and whose ImageDescription
is the SCN XML (namespace ``.../scn/2010/10/01`` or ``.../2010/03/10``): a
``<collection>`` (its size in nanometres and a barcode) holding ``<image>``
elements, each with a ``<view>`` (offset and size in the collection, nm),
scan settings and ``<pixels>`` whose ``<dimension>`` elements name the IFD of
each resolution.  The image whose view is the whole collection is the macro;
every other brightfield image is a main image.

OpenSlide's geometry: level k is the whole collection at the k-th largest
resolution, ``ceil(collection_nm / nm_per_px)`` pixels (the x resolution for
both axes, the finest of the main images), and each main image is placed at
``trunc(view_offset / nm_per_px)``; pixels outside the main images are
transparent (wsiarray's fill).  Several brightfield main images are
composited, the first winning where they overlap.  The main images become
the layers of a placed level (:class:`~wsiarray.formats.base.Placement`).
"""

from __future__ import annotations

import base64
import binascii
import math
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass, replace

import numpy as np
import tifffile

from ..errors import FormatError, UnsupportedError
from .base import Placement, SlideInfo
from .properties import make_slide_info, resolution_mpp, tiff_properties
from .tiff import PageLoader, check_page, level_from_pages, pages_at

__all__ = ["detect"]

#: The SCN XML namespaces OpenSlide accepts.
NAMESPACES = (
    "http://www.leica-microsystems.com/scn/2010/10/01",
    "http://www.leica-microsystems.com/scn/2010/03/10",
)
#: More images or dimensions than this are refused.
MAX_IMAGES = 1024
#: Main images whose nm/px differ by more than this fraction are refused, as OpenSlide does.
RESOLUTION_TOLERANCE = 0.02
_INTEGER = re.compile(r"[+-]?\d+\Z")


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _child(element: ET.Element | None, path: str) -> ET.Element | None:
    for part in path.split("/"):
        if element is None:
            return None
        element = next((c for c in element if _local(c.tag) == part), None)
    return element


def _text(element: ET.Element | None, path: str) -> str | None:
    found = _child(element, path)
    return found.text if found is not None else None


def _int(element: ET.Element, name: str, what: str) -> int:
    try:
        return int(element.get(name, ""))
    except ValueError:
        raise FormatError(f"{what}: attribute {name} is not an integer") from None


@dataclass
class _Image:
    element: ET.Element
    illumination: str | None
    objective: str | None
    view: tuple[int, int, int, int]  # offset x, y, size x, y (nm)
    dimensions: list[tuple[int, int, int]]  # (width, height, ifd), z = 0, widest first
    macro: bool


def _images(collection: ET.Element, size: tuple[int, int], what: str) -> list[_Image]:
    images = []
    for element in collection:
        if _local(element.tag) != "image":
            continue
        if len(images) >= MAX_IMAGES:
            raise FormatError(f"{what}: more than {MAX_IMAGES} images")
        view = _child(element, "view")
        pixels = _child(element, "pixels")
        if view is None or pixels is None:
            raise FormatError(f"{what}: an image without view or pixels")
        box = tuple(_int(view, name, what) for name in ("offsetX", "offsetY", "sizeX", "sizeY"))
        if box[2] <= 0 or box[3] <= 0 or box[0] < 0 or box[1] < 0:
            raise FormatError(f"{what}: an image view of size {box[2]}x{box[3]} nm at {box[0]},{box[1]}")
        dimensions = []
        for dim in pixels:
            if _local(dim.tag) != "dimension" or dim.get("z") not in (None, "0"):
                continue  # OpenSlide ignores other focal planes
            width, height, ifd = (_int(dim, name, what) for name in ("sizeX", "sizeY", "ifd"))
            if width <= 0 or height <= 0 or ifd < 0:
                raise FormatError(f"{what}: a dimension of {width}x{height} at IFD {ifd}")
            dimensions.append((width, height, ifd))
        dimensions.sort(key=lambda d: -d[0])  # stable, as OpenSlide sorts them
        images.append(
            _Image(
                element=element,
                illumination=_text(element, "scanSettings/illuminationSettings/illuminationSource"),
                objective=_text(element, "scanSettings/objectiveSettings/objective"),
                view=box,  # type: ignore[arg-type]
                dimensions=dimensions,
                macro=box == (0, 0, size[0], size[1]),
            )
        )
    return images


def _barcode(collection: ET.Element, namespace: str) -> str | None:
    text = _text(collection, "barcode")
    if text is not None and namespace == NAMESPACES[0]:
        try:
            return base64.b64decode(text, validate=False).decode("utf-8", "replace")
        except (binascii.Error, ValueError):
            return None
    return text if text is not None else collection.get("barcode")


def _properties(image: _Image, barcode: str | None) -> dict[str, str]:
    element = image.element
    props: dict[str, str] = {}
    pairs = {
        "leica.aperture": _text(element, "scanSettings/illuminationSettings/numericalAperture"),
        "leica.creation-date": _text(element, "creationDate"),
        "leica.illumination-source": image.illumination,
        "leica.objective": image.objective,
    }
    device = _child(element, "device")
    if device is not None:
        pairs["leica.device-model"] = device.get("model")
        pairs["leica.device-version"] = device.get("version")
    if barcode is not None:
        pairs["leica.barcode"] = barcode
        pairs["openslide.barcode"] = barcode
    props.update({key: value for key, value in pairs.items() if value is not None})
    return props


def detect(tif: tifffile.TiffFile, path: str) -> SlideInfo | None:
    """Describe ``tif`` as a Leica SCN slide, or return None if it is not one.

    Raises :class:`~wsiarray.errors.UnsupportedError` for SCN files OpenSlide
    refuses (no brightfield main image, several macros, dissimilar main images).

    Example:
        >>> info = detect(tifffile.TiffFile(path), path)  # a generic TIFF
        >>> info is None
        True
    """
    first = tif.pages.first
    description = first.description or ""
    if not first.is_tiled or "<scn" not in description[:4096]:
        return None
    try:
        root = ET.fromstring(description)
    except ET.ParseError:
        return None
    namespace = root.tag[1:].split("}")[0] if root.tag.startswith("{") else ""
    if _local(root.tag) != "scn" or namespace not in NAMESPACES:
        return None
    what = f"{path}: Leica SCN"
    collection = _child(root, "collection")
    if collection is None:
        raise FormatError(f"{what}: no collection")
    size = (_int(collection, "sizeX", what), _int(collection, "sizeY", what))
    if size[0] <= 0 or size[1] <= 0:
        raise FormatError(f"{what}: collection of {size[0]}x{size[1]} nm")
    images = _images(collection, size, what)
    mains = [im for im in images if not im.macro and im.illumination == "brightfield"]
    macros = [im for im in images if im.macro and im.illumination == "brightfield"]
    if not mains:
        kinds = sorted({im.illumination or "unknown" for im in images if not im.macro})
        raise UnsupportedError(
            f"{what}: no brightfield main image (main images: {', '.join(kinds) or 'none'})"
        )
    if len(macros) > 1:
        raise UnsupportedError(f"{what}: several macro images")
    head = mains[0]
    for image in mains[1:]:
        if image.objective != head.objective or len(image.dimensions) != len(head.dimensions):
            raise UnsupportedError(f"{what}: main images with different objectives or resolutions")
    if not head.dimensions:
        raise FormatError(f"{what}: a main image without dimensions")

    pages = pages_at(tif, {d[2] for im in mains for d in im.dimensions}, what)
    levels = []
    for k, (width, _, _) in enumerate(head.dimensions):
        npp = base = head.view[2] / width
        for image in mains[1:]:
            other = image.view[2] / image.dimensions[k][0]
            if abs(other - base) / base > RESOLUTION_TOLERANCE:
                raise UnsupportedError(f"{what}: main image resolutions differ by more than 2%")
            npp = min(npp, other)
        layers = []
        for image in mains:
            page = pages[image.dimensions[k][2]]
            spec = level_from_pages([page], f"{what}: level {k} (IFD {page.index})")
            xs = int(image.view[0] / npp) + np.arange(spec.tiles_across, dtype=np.int64) * spec.tile_width
            ys = int(image.view[1] / npp) + np.arange(spec.tiles_down, dtype=np.int64) * spec.tile_height
            layers.append(replace(spec, placement=Placement(spec.tile_width, spec.tile_height, xs, ys)))
        width_px, height_px = math.ceil(size[0] / npp), math.ceil(size[1] / npp)
        levels.append(
            replace(layers[0], width=width_px, height=height_px, layers=tuple(layers), tile_hint=False)
        )

    base_page = pages[head.dimensions[0][2]]
    props = tiff_properties(base_page)
    # OpenSlide does not report the SCN XML (IFD 0's description) as the comment
    for key in ("tiff.ImageDescription", "openslide.comment"):
        props.pop(key, None)
    props.update(_properties(head, _barcode(collection, namespace)))
    for i, layer in enumerate(levels[0].layers):
        placement = layer.placement
        assert placement is not None
        for key, value in zip(
            ("x", "y", "width", "height"),
            (placement.xs[0], placement.ys[0], layer.width, layer.height),
            strict=False,
        ):
            props[f"openslide.region[{i}].{key}"] = str(int(value))
    x0 = min(int(layer.placement.xs[0]) for layer in levels[0].layers if layer.placement is not None)
    y0 = min(int(layer.placement.ys[0]) for layer in levels[0].layers if layer.placement is not None)
    x1 = max(
        int(layer.placement.xs[0]) + layer.width for layer in levels[0].layers if layer.placement is not None
    )
    y1 = max(
        int(layer.placement.ys[0]) + layer.height for layer in levels[0].layers if layer.placement is not None
    )
    props.update(
        {
            "openslide.bounds-x": str(x0),
            "openslide.bounds-y": str(y0),
            "openslide.bounds-width": str(x1 - x0),
            "openslide.bounds-height": str(y1 - y0),
        }
    )

    associated: dict[str, PageLoader] = {}
    if macros and macros[0].dimensions:
        width, _height, ifd = macros[0].dimensions[0]
        page = pages_at(tif, (ifd,), what)[ifd]
        try:
            check_page(page, f"{what}: macro (IFD {ifd})")
            associated["macro"] = PageLoader(
                path, "macro", (ifd,), int(page.imagewidth), int(page.imagelength)
            )
        except FormatError:
            pass  # a broken macro must not make the slide unreadable
    objective = head.objective.strip() if head.objective else None
    return make_slide_info(
        "leica",
        levels,
        props,
        associated=associated,
        mpp=resolution_mpp(base_page),
        objective_power=float(objective) if objective and _INTEGER.match(objective) else None,
    )
