"""Ventana (Roche) BIF and Ventana TIFF, read the way OpenSlide's ``ventana`` driver reads them.

A Ventana file is a TIFF whose first IFD's XMP (tag 700) holds an ``iScan``
element (every non-empty attribute becomes a ``ventana.*`` property;
``ScanRes`` is the pixel size, ``Magnification`` the objective power).  The
levels are the IFDs described ``level=k mag=M``, in order with falling
magnification (downsample ``mag0 / mag``); ``Label Image``/``Label_Image`` is
the ``macro`` and ``Thumbnail`` the ``thumbnail``.

A BIF's level 0 carries ``<EncodeInfo>`` XMP: every level-0 TIFF tile is one
camera snapshot, and snapshots overlap.  Like OpenSlide, the tile advance is
the tile size less the confidence-weighted mean OverlapX of all ``RIGHT``
joints (OverlapY of ``UP`` joints), each area of interest (AOI) sits at its
stage position, and a lower level k stores each snapshot shrunk by 2**k,
un-stitched, so a level-k tile holds 2**k x 2**k snapshots.  Each AOI becomes
a layer of a placed level (:class:`~wsiarray.formats.base.Placement`): cells
of ``tile / 2**k`` pixels at ``floor(position / 2**k)``, the snapshot to the
right or below winning where they overlap.  Without EncodeInfo (Ventana TIFF)
the levels are plain tile grids.
"""

from __future__ import annotations

import math
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass, replace

import numpy as np
import tifffile

from ..errors import FormatError, UnsupportedError
from .base import LevelSpec, Placement, SlideInfo
from .properties import make_slide_info, parse_positive_float, tiff_properties
from .tiff import PageLoader, check_page, iter_pages, level_from_pages

__all__ = ["detect"]

#: Associated images by ImageDescription.
ASSOCIATED = {"Label Image": "macro", "Label_Image": "macro", "Thumbnail": "thumbnail"}
#: At most this many snapshot rows or columns per area (the cell tables are this long).
MAX_GRID = 1 << 20
_INTEGER = re.compile(r"[+-]?\d+\Z")


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _xmp(page: tifffile.TiffPage) -> bytes | None:
    tag = page.tags.get(700)
    if tag is None:
        return None
    value = tag.value
    if isinstance(value, str):
        value = value.encode("utf-8", "replace")
    return bytes(value).rstrip(b"\x00") if isinstance(value, (bytes, bytearray)) else None


def _number(element: ET.Element, name: str, what: str) -> float:
    try:
        value = float(element.get(name, ""))
    except ValueError:
        raise FormatError(f"{what}: {_local(element.tag)} attribute {name} is not a number") from None
    if not math.isfinite(value):
        raise FormatError(f"{what}: {_local(element.tag)} attribute {name} is not finite")
    return value


@dataclass
class _Area:
    first_column: int
    first_row: int
    columns: int
    rows: int
    x: float  # level-0 position of the first snapshot
    y: float


@dataclass
class _Stitching:
    areas: list[_Area]
    advance_x: float
    advance_y: float


def _stitching(xmp: bytes, tile_width: int, tile_height: int, what: str) -> _Stitching:
    """EncodeInfo -> areas and the tile advance, by OpenSlide's rules (its refusals raise)."""
    try:
        root = ET.fromstring(xmp)
    except ET.ParseError as exc:
        raise FormatError(f"{what}: level-0 XMP is not XML: {exc}") from None
    if _local(root.tag) != "EncodeInfo":
        raise FormatError(f"{what}: level-0 XMP is not EncodeInfo")
    stitch = next((c for c in root if _local(c.tag) == "SlideStitchInfo"), None)
    origin = next((c for c in root if _local(c.tag) == "AoiOrigin"), None)
    infos = [c for c in stitch if _local(c.tag) == "ImageInfo"] if stitch is not None else []
    origins = list(origin) if origin is not None else []
    if not infos or len(infos) != len(origins):
        raise FormatError(f"{what}: missing or inconsistent area metadata")
    areas: list[_Area] = []
    sum_x = sum_y = 0.0
    weight_x = weight_y = 0.0
    for info, aoi in zip(infos, origins, strict=False):
        if not int(_number(info, "AOIScanned", what)):
            continue
        if (_number(info, "Width", what), _number(info, "Height", what)) != (tile_width, tile_height):
            raise UnsupportedError(f"{what}: snapshot size differs from the level-0 tile size")
        ox, oy = int(_number(aoi, "OriginX", what)), int(_number(aoi, "OriginY", what))
        if ox < 0 or oy < 0 or ox % tile_width or oy % tile_height:
            raise UnsupportedError(f"{what}: area origin {ox},{oy} is not a multiple of the tile size")
        columns, rows = int(_number(info, "NumCols", what)), int(_number(info, "NumRows", what))
        if not (0 < columns <= MAX_GRID and 0 < rows <= MAX_GRID):
            raise FormatError(f"{what}: an area of {columns}x{rows} snapshots")
        for joint in info:
            if _local(joint.tag) != "TileJointInfo":
                continue
            direction = joint.get("Direction")
            confidence = _number(joint, "Confidence", what)
            if direction == "RIGHT":
                sum_x -= confidence * _number(joint, "OverlapX", what)
                weight_x += confidence
            elif direction == "UP":
                sum_y -= confidence * _number(joint, "OverlapY", what)
                weight_y += confidence
            else:
                # LEFT (DP 200) joints would need per-joint placement; OpenSlide refuses them too
                raise UnsupportedError(
                    f"{what}: tile joint direction {direction!r} (only RIGHT and UP are read)"
                )
        areas.append(
            _Area(
                ox // tile_width,
                oy // tile_height,
                columns,
                rows,
                float(int(_number(info, "Pos-X", what))),
                float(int(_number(info, "Pos-Y", what))),
            )
        )
    if not areas:
        raise FormatError(f"{what}: no scanned area")

    def advance(total: float, weight: float, tile: int, counts: list[int], axis: str) -> float:
        if weight:
            value = tile + total / weight
        elif max(counts) == 1:
            value = float(tile)  # one snapshot across: nothing overlaps (OpenSlide divides by zero here)
        else:
            raise UnsupportedError(f"{what}: no {axis} tile joint with a non-zero confidence to stitch by")
        if not value >= 1:
            raise UnsupportedError(f"{what}: tile advance {value} is not positive")
        return value

    advance_x = advance(sum_x, weight_x, tile_width, [a.columns for a in areas], "RIGHT")
    advance_y = advance(sum_y, weight_y, tile_height, [a.rows for a in areas], "UP")
    # Stage y grows upwards: flip it, as OpenSlide does
    heights = [int((a.rows - 1) * advance_y + tile_height) for a in areas]
    top = max(a.y + h for a, h in zip(areas, heights, strict=False))
    for a, h in zip(areas, heights, strict=False):
        a.y = top - a.y - h
    return _Stitching(areas, advance_x, advance_y)


def _placed_level(
    spec: LevelSpec, stitching: _Stitching, downsample: float, tile: tuple[int, int], what: str
) -> LevelSpec:
    """Level ``spec`` (downsample 2**k) as the snapshots' cells placed by ``stitching``."""
    cell_w, cell_h = tile[0] / downsample, tile[1] / downsample
    if (
        cell_w != int(cell_w)
        or cell_h != int(cell_h)
        or cell_w < 1
        or cell_h < 1
        or spec.tile_width % int(cell_w)
        or spec.tile_height % int(cell_h)
    ):
        raise UnsupportedError(
            f"{what}: snapshots of {tile[0]}x{tile[1]} do not shrink to whole cells "
            f"at downsample {downsample}"
        )
    layers = []
    right = bottom = 0.0
    for area in stitching.areas:
        x = (area.x + np.arange(area.columns) * stitching.advance_x) / downsample
        y = (area.y + np.arange(area.rows) * stitching.advance_y) / downsample
        xs, ys = np.floor(x).astype(np.int64), np.floor(y).astype(np.int64)
        if np.any(np.diff(xs) <= 0) or np.any(np.diff(ys) <= 0):
            raise UnsupportedError(
                f"{what}: snapshots advance by less than a pixel at downsample {downsample}"
            )
        right, bottom = max(right, x[-1] + cell_w), max(bottom, y[-1] + cell_h)
        placement = Placement(int(cell_w), int(cell_h), xs, ys, area.first_column, area.first_row)
        layers.append(replace(spec, placement=placement))
    return replace(
        spec,
        width=math.ceil(right),
        height=math.ceil(bottom),
        layers=tuple(layers),
        downsample=downsample,
        tile_hint=False,
    )


def detect(tif: tifffile.TiffFile, path: str) -> SlideInfo | None:
    """Describe ``tif`` as a Ventana BIF or Ventana TIFF, or return None if it is not one.

    Example:
        >>> detect(tifffile.TiffFile(path), path) is None  # a generic TIFF
        True
    """
    xmp = _xmp(tif.pages.first)
    if xmp is None or b"iScan" not in xmp:
        return None
    what = f"{path}: Ventana"
    try:
        root = ET.fromstring(xmp)
    except ET.ParseError as exc:
        raise FormatError(f"{what}: IFD 0 XMP is not XML: {exc}") from None
    iscan = root if _local(root.tag) == "iScan" else next((c for c in root if _local(c.tag) == "iScan"), None)
    if iscan is None:
        return None
    props = {f"ventana.{key}": value for key, value in iscan.attrib.items() if value}

    level_pages: list[tuple[int, tifffile.TiffPage, float]] = []
    associated: dict[str, PageLoader] = {}
    for index, page in enumerate(iter_pages(tif)):
        description = page.description or ""
        if "level=" in description:
            fields = dict(item.split("=", 1) for item in description.split() if "=" in item)
            try:
                number, mag = int(fields.get("level", "")), float(fields.get("mag", ""))
            except ValueError:
                raise FormatError(f"{what}: IFD {index} description {description!r}") from None
            if number != len(level_pages) or not (mag > 0) or (level_pages and mag >= level_pages[-1][2]):
                raise FormatError(
                    f"{what}: unexpected level or magnification in IFD {index} ({description!r})"
                )
            level_pages.append((index, page, mag))
        elif description in ASSOCIATED and ASSOCIATED[description] not in associated:
            name = ASSOCIATED[description]
            try:
                check_page(page, f"{what}: associated image {name!r} (IFD {index})")
            except FormatError:
                continue
            associated[name] = PageLoader(path, name, (index,), int(page.imagewidth), int(page.imagelength))
    if not level_pages:
        raise FormatError(f"{what}: no pyramid levels")

    base = level_pages[0][1]
    mag0 = level_pages[0][2]
    specs = [
        level_from_pages([page], f"{what}: level {n} (IFD {index})")
        for n, (index, page, _) in enumerate(level_pages)
    ]
    encode_info = _xmp(base)
    levels: list[LevelSpec] = []
    if encode_info is None:
        levels = [
            replace(spec, downsample=mag0 / mag)
            for spec, (_, _, mag) in zip(specs, level_pages, strict=False)
        ]
    else:
        tile = (specs[0].tile_width, specs[0].tile_height)
        stitching = _stitching(encode_info, *tile, f"{what}: level 0")
        for n, (spec, (_, _, mag)) in enumerate(zip(specs, level_pages, strict=False)):
            try:
                levels.append(_placed_level(spec, stitching, mag0 / mag, tile, f"{what}: level {n}"))
            except UnsupportedError:
                if n == 0:
                    raise
                break  # snapshots smaller than a pixel: this and smaller levels are left out
        for i, area in enumerate(stitching.areas):
            box = (
                int(stitching.advance_x * area.first_column),
                int(stitching.advance_y * area.first_row),
                math.ceil(stitching.advance_x * (area.columns - 1) + tile[0]),
                math.ceil(stitching.advance_y * (area.rows - 1) + tile[1]),
            )
            for key, value in zip(("x", "y", "width", "height"), box, strict=False):
                props[f"openslide.region[{i}].{key}"] = str(value)

    properties = tiff_properties(base)
    properties.update(props)
    mpp = parse_positive_float(props.get("ventana.ScanRes"))
    magnification = props.get("ventana.Magnification", "").strip()
    return make_slide_info(
        "ventana",
        levels,
        properties,
        associated=associated,
        mpp=(mpp, mpp) if mpp is not None else None,
        objective_power=float(magnification) if _INTEGER.match(magnification) else None,
    )
