"""Aperio SVS, told apart and laid out the way OpenSlide's ``aperio`` driver does.

An SVS file is a TIFF whose first ImageDescription starts with ``Aperio``.
Per Aperio's data-interchange notes: the first IFD is the full-resolution
image (tiled), the second is a stripped thumbnail, then come the tiled
lower-resolution levels, and at the end stripped label and macro images.
Writers do not mark these with NewSubfileType consistently (TCGA slides give
the thumbnail NewSubfileType 0 between level 0 and level 1), so pages are
told apart by tiling, position and description, never by NewSubfileType.

The first description is ``header|Key = value|Key = value...``; every pair
becomes an ``aperio.<Key>`` property, ``MPP`` gives the pixel size and
``AppMag`` the objective power.
"""

from __future__ import annotations

import re

import tifffile

from ..errors import FormatError
from .base import SlideInfo
from .properties import icc_profile, make_slide_info, parse_positive_float, tiff_properties
from .tiff import (
    PageLoader,
    check_page,
    is_mask,
    iter_pages,
    pyramid_levels,
    same_layout,
)

__all__ = ["detect", "parse_description", "split_description"]

#: OpenSlide's test: the first ImageDescription starts with this.
APERIO_PREFIX = "Aperio"
#: More ``key = value`` pairs than this in one description are ignored.
MAX_PROPERTIES = 4096
_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_.-]*\Z")


def split_description(description: str) -> tuple[str, list[tuple[str, str]]]:
    """An Aperio ImageDescription as its header and its ``Key = value`` pairs, in order.

    The one Aperio description parser: the header is everything before the
    first ``|`` (as written); each later item is split at its first ``=``
    with surrounding whitespace stripped, as OpenSlide splits it; items
    without ``=`` or with an empty key are skipped. Repeated keys are all
    kept: :func:`parse_description` keeps the last (OpenSlide's rule for
    ``aperio.*`` properties), :class:`wsiarray.CuImage` the first (cuCIM's
    rule for its ``"aperio"`` metadata).

    Example:
        >>> split_description("Aperio Image Library v10|AppMag = 20|junk|AppMag = 40")
        ('Aperio Image Library v10', [('AppMag', '20'), ('AppMag', '40')])
    """
    header, *items = description.split("|")
    pairs: list[tuple[str, str]] = []
    for item in items[:MAX_PROPERTIES]:
        key, sep, value = item.partition("=")
        key = key.strip()
        if sep and key:
            pairs.append((key, value.strip()))
    return header, pairs


def parse_description(description: str) -> dict[str, str]:
    """Aperio ImageDescription -> ``aperio.*`` properties.

    The header (everything before the first ``|``) is kept as
    ``aperio.Header``; items without ``=`` are skipped, like OpenSlide does,
    and a repeated key keeps its last value (OpenSlide's rule, applied on top
    of :func:`split_description`).

    Example:
        >>> parse_description("Aperio Image Library v10|AppMag = 20|MPP = 0.4990|junk")
        {'aperio.Header': 'Aperio Image Library v10', 'aperio.AppMag': '20', 'aperio.MPP': '0.4990'}
    """
    header, pairs = split_description(description)
    props = {"aperio.Header": header.strip()}
    for key, value in pairs:
        props[f"aperio.{key}"] = value  # the last value of a repeated key wins
    return props


def _associated_name(index: int, page: tifffile.TiffPage) -> str | None:
    # The second IFD is the thumbnail whatever it says; others name themselves
    # in the description ("Aperio Image Library v11\nlabel 387x463").
    if index == 1:
        return "thumbnail"
    description = page.description or ""
    lowered = description.lower()
    for name in ("label", "macro"):
        if name in lowered:
            return name
    # OpenSlide's fallback: the first word of the description's second line
    lines = description.splitlines()
    words = lines[1].split() if len(lines) > 1 else []
    if words and _NAME.match(words[0]):
        return words[0]
    return None


def detect(tif: tifffile.TiffFile, path: str) -> SlideInfo | None:
    """Describe ``tif`` as an Aperio slide, or return None if it is not one.

    Example:
        >>> info = detect(tifffile.TiffFile(svs_path), svs_path)
        >>> sorted(info.associated), info.objective_power
        (['label', 'macro', 'thumbnail'], 40.0)
        >>> detect(tifffile.TiffFile(path), path) is None  # not an Aperio file
        True
    """
    first = tif.pages.first
    description = first.description or ""
    if not description.startswith(APERIO_PREFIX) or not first.is_tiled:
        return None  # OpenSlide also requires a tiled first IFD
    check_page(first, f"{path}: level 0 (IFD 0)")

    candidates: list[list[tifffile.TiffPage]] = []
    associated: dict[str, PageLoader] = {}
    descriptions: dict[str, str] = {}
    icc_profiles: dict[str, bytes] = {}
    for index, page in enumerate(iter_pages(tif)):
        if page.is_tiled:
            if index == 0 or (same_layout(page, first) and not is_mask(page)):
                candidates.append([page])
            continue
        name = _associated_name(index, page)
        if name is None or name in associated:
            continue
        try:
            check_page(page, f"{path}: associated image {name!r} (IFD {index})")
        except FormatError:
            continue  # a broken label must not make the slide unreadable
        associated[name] = PageLoader(path, name, (index,), int(page.imagewidth), int(page.imagelength))
        descriptions[name] = page.description or ""
        icc = icc_profile(page)
        if icc is not None:
            icc_profiles[name] = icc

    levels = pyramid_levels(path, candidates)
    props = tiff_properties(first)
    props.update(parse_description(description))
    mpp = parse_positive_float(props.get("aperio.MPP"))
    info = make_slide_info(
        "aperio",
        levels,
        props,
        associated=associated,
        mpp=(mpp, mpp) if mpp is not None else None,
        objective_power=parse_positive_float(props.get("aperio.AppMag")),
        icc_profile=icc_profile(first),
        associated_icc_profiles=icc_profiles,
    )
    info.associated_descriptions = descriptions
    return info
