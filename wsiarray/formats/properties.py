"""OpenSlide-compatible property keys shared by every vendor module.

Each vendor module gathers its own ``<vendor>.*`` keys; this module adds the
keys every slide has (``openslide.*`` and ``tiff.*``), formatted the way
OpenSlide formats them, and assembles the final :class:`SlideInfo`.
All property values are strings.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import tifffile

from .base import LevelSpec, SlideInfo
from .tiff import PageLoader

__all__ = [
    "format_double",
    "icc_profile",
    "make_slide_info",
    "parse_positive_float",
    "resolution_mpp",
    "tiff_properties",
]

#: String tags OpenSlide copies from the first IFD (``_openslide_tiff_add_properties``).
_STRING_TAGS = (
    "ImageDescription",
    "Make",
    "Model",
    "Software",
    "DateTime",
    "Artist",
    "HostComputer",
    "Copyright",
    "DocumentName",
)
_FLOAT_TAGS = ("XResolution", "YResolution", "XPosition", "YPosition")
_RESOLUTION_UNITS = {1: "none", 2: "inch", 3: "centimeter"}
#: Micrometres per ResolutionUnit (only units that are lengths).
_UNIT_UM = {2: 25400.0, 3: 10000.0}


def format_double(value: float) -> str:
    """Format a float the way OpenSlide does (``g_ascii_dtostr``: ``%.17g``).

    Example:
        >>> format_double(4.0), format_double(0.2521)
        ('4', '0.25209999999999999')
    """
    return f"{value:.17g}"


def parse_positive_float(text: object) -> float | None:
    """``float(text)`` if that is finite and > 0, else None (never raises).

    Example:
        >>> parse_positive_float(" 0.4990"), parse_positive_float("nan")
        (0.499, None)
    """
    try:
        value = float(str(text).strip())
    except ValueError:
        return None
    return value if math.isfinite(value) and value > 0 else None


def _rational(value: object) -> float | None:
    # tifffile gives RATIONAL tags as (numerator, denominator) tuples
    if isinstance(value, tuple) and len(value) == 2:
        numerator, denominator = value
        if not denominator:
            return None
        return numerator / denominator
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None


def _tag_text(value: object) -> str | None:
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    return value.strip("\x00") if isinstance(value, str) else None


def tiff_properties(page: tifffile.TiffPage) -> dict[str, str]:
    """``tiff.*`` keys and ``openslide.comment`` from the first IFD, as OpenSlide sets them.

    Like libtiff, a missing ResolutionUnit reads as its default, inch.

    Example:
        >>> tif = tifffile.TiffFile(path)
        >>> tiff_properties(tif.pages.first)["tiff.ResolutionUnit"]
        'centimeter'
    """
    props: dict[str, str] = {}
    tags = page.tags
    for name in _STRING_TAGS:
        tag = tags.get(name)
        text = _tag_text(tag.value) if tag is not None else None
        if text is not None:
            props[f"tiff.{name}"] = text
    if "tiff.ImageDescription" in props:
        props["openslide.comment"] = props["tiff.ImageDescription"]
    for name in _FLOAT_TAGS:
        tag = tags.get(name)
        value = _rational(tag.value) if tag is not None else None
        if value is not None and math.isfinite(value):
            props[f"tiff.{name}"] = format_double(value)
    tag = tags.get("ResolutionUnit")
    unit = int(tag.value) if tag is not None else 2
    props["tiff.ResolutionUnit"] = _RESOLUTION_UNITS.get(unit, "unknown")
    return props


def icc_profile(page: tifffile.TiffPage) -> bytes | None:
    """The page's ICC profile (TIFF tag InterColorProfile, 34675), or None when it has none.

    Example:
        >>> icc_profile(tifffile.TiffFile(path).pages.first) is None
        True
    """
    tag = page.tags.get(34675)
    if tag is None:
        return None
    value = tag.value
    if isinstance(value, (tuple, list)):
        value = bytes(value)
    return bytes(value) if isinstance(value, (bytes, bytearray)) and value else None


def resolution_mpp(page: tifffile.TiffPage) -> tuple[float, float] | None:
    """Micrometres per pixel from X/YResolution when ResolutionUnit is a length.

    OpenSlide's generic-tiff driver does this for centimetres; inches are
    accepted too.  Zero or missing resolutions give None.

    Example:
        >>> resolution_mpp(tifffile.TiffFile(path).pages.first)  # 20000 px/cm
        (0.5, 0.5)
    """
    tag = page.tags.get("ResolutionUnit")
    um = _UNIT_UM.get(int(tag.value) if tag is not None else 2)
    x_tag, y_tag = page.tags.get("XResolution"), page.tags.get("YResolution")
    if um is None or x_tag is None or y_tag is None:
        return None
    x, y = _rational(x_tag.value), _rational(y_tag.value)
    if not (x and y and math.isfinite(x) and math.isfinite(y) and x > 0 and y > 0):
        return None
    return um / x, um / y


def _level_properties(levels: Sequence[LevelSpec]) -> dict[str, str]:
    props = {"openslide.level-count": str(len(levels))}
    w0, h0 = levels[0].width, levels[0].height
    for n, level in enumerate(levels):
        # OpenSlide's downsample: the mean of the two axes' ratios, never assumed 2**n
        downsample = level.downsample
        if downsample is None:
            downsample = (w0 / level.width + h0 / level.height) / 2
        props[f"openslide.level[{n}].width"] = str(level.width)
        props[f"openslide.level[{n}].height"] = str(level.height)
        props[f"openslide.level[{n}].downsample"] = format_double(downsample)
        if level.tile_hint:
            props[f"openslide.level[{n}].tile-width"] = str(level.tile_width)
            props[f"openslide.level[{n}].tile-height"] = str(level.tile_height)
    return props


def make_slide_info(
    vendor: str,
    levels: Sequence[LevelSpec],
    properties: Mapping[str, str],
    *,
    associated: Mapping[str, PageLoader] | None = None,
    mpp: tuple[float, float] | None = None,
    objective_power: float | None = None,
    channel_names: Sequence[str] | None = None,
    icc_profile: bytes | None = None,
    associated_icc_profiles: Mapping[str, bytes] | None = None,
) -> SlideInfo:
    """Assemble a :class:`SlideInfo`, adding the ``openslide.*`` keys.

    ``properties`` holds the vendor's own keys plus :func:`tiff_properties`;
    vendor, level, mpp, objective-power and associated-image keys are
    derived here so every vendor formats them identically. ICC profiles (level
    0's, and associated images' by name) give OpenSlide's ``openslide.icc-size``
    and ``openslide.associated.<name>.icc-size``.

    Example:
        >>> levels = wsiarray.open(path).format_info.levels
        >>> info = make_slide_info("generic-tiff", levels, {}, mpp=(0.5, 0.5))
        >>> info.properties["openslide.level-count"], info.properties["openslide.mpp-x"]
        ('3', '0.5')
    """
    props = dict(properties)
    props["openslide.vendor"] = vendor
    props.update(_level_properties(levels))
    if mpp is not None:
        props["openslide.mpp-x"] = format_double(mpp[0])
        props["openslide.mpp-y"] = format_double(mpp[1])
    if objective_power is not None:
        props["openslide.objective-power"] = format_double(objective_power)
    associated = dict(associated or {})
    for name, loader in associated.items():
        props[f"openslide.associated.{name}.width"] = str(loader.width)
        props[f"openslide.associated.{name}.height"] = str(loader.height)
    if icc_profile:
        props["openslide.icc-size"] = str(len(icc_profile))
    associated_icc = {name: icc for name, icc in (associated_icc_profiles or {}).items()
                      if icc and name in associated}
    for name, icc in associated_icc.items():
        props[f"openslide.associated.{name}.icc-size"] = str(len(icc))
    return SlideInfo(
        vendor=vendor,
        levels=list(levels),
        properties=dict(sorted(props.items())),
        associated=associated,
        mpp=mpp,
        objective_power=objective_power,
        channel_names=tuple(channel_names) if channel_names is not None else None,
        icc_profile=icc_profile or None,
        associated_icc_profiles=associated_icc,
    )
