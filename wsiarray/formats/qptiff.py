"""Akoya (PerkinElmer) QPTIFF: Vectra, Polaris and PhenoCycler whole-slide scans.

Every IFD has Software ``PerkinElmer-QPI...`` (tifffile's ``is_qpi``) and an
XML ImageDescription, ``<PerkinElmer-QPI-ImageDescription>``, whose
``ImageType`` says what the page is: ``FullResolution`` (one page per channel
of a multiplex scan, or one RGB page of a brightfield one), ``Thumbnail``,
``ReducedResolution`` (again one page per channel, level after level),
``Overview`` and ``Label``.  Level 0 is the FullResolution pages as the planes
of one level (as OME-TIFF's channel pages); each run of ReducedResolution pages
of one size, as many as level 0 has and of its layout, is a lower level.
Channel names are each FullResolution page's ``<Biomarker>`` (Polaris,
PhenoCycler), else its ``<Name>`` (the fluor or filter).  The Thumbnail,
Overview and Label pages are the ``thumbnail``, ``macro`` and ``label``
associated images.  Pages without an ImageType are placed as tifffile's QPI
series places them: the run of level-0-shaped pages first, the page after it
the thumbnail, and after the lower levels the overview, then the label.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET

import tifffile

from ..errors import FormatError, UnsupportedError
from .base import SlideInfo
from .properties import icc_profile, make_slide_info, parse_positive_float, resolution_mpp, tiff_properties
from .tiff import MAX_SAMPLES, PageLoader, check_page, iter_pages, page_name, pyramid_levels, same_layout

__all__ = ["detect"]

#: A page's XML longer than this is not parsed (its ScanProfile can be large; this bounds memory).
MAX_XML_CHARS = 16 << 20
#: ImageType -> associated image name (OpenSlide's names).
_ASSOCIATED = {"Thumbnail": "thumbnail", "Overview": "macro", "Label": "label"}
#: Per-channel elements copied into ``qptiff.Channel[i].*`` properties.
_CHANNEL_KEYS = ("Name", "Biomarker", "Color", "ExposureTime", "SignalUnits")


def _fields(page: tifffile.TiffPage, what: str) -> dict[str, str]:
    """The page's top-level XML elements with text (``ImageType``, ``Name``, ...); {} without XML."""
    text = page.description or ""
    if not text.lstrip().startswith("<"):
        return {}
    if len(text) > MAX_XML_CHARS:
        raise UnsupportedError(f"{what}: QPI XML is {len(text)} characters (more than {MAX_XML_CHARS})")
    try:
        # ElementTree refuses a str that declares an encoding other than the str's own (utf-16)
        root = ET.fromstring(re.sub(r"^\s*<\?xml[^>]*\?>", "", text))
    except ET.ParseError as exc:
        raise FormatError(f"{what}: invalid QPI XML: {exc}") from exc
    fields = {}
    for child in root:
        value = (
            "".join(child.itertext()).strip() if len(child) == 0 else (child.findtext("Name") or "").strip()
        )
        if value and len(value) <= 1024 and child.tag not in fields:
            fields[str(child.tag)] = value
    return fields


def _objective(text: str | None) -> float | None:
    """``"20x"`` or ``"20x [20x]"`` -> 20.0."""
    match = re.match(r"\s*([0-9]+(?:\.[0-9]+)?)", text or "")
    return parse_positive_float(match.group(1)) if match else None


def detect(tif: tifffile.TiffFile, path: str) -> SlideInfo | None:
    """Describe ``tif`` as a QPTIFF, or return None if it is not one.

    Example:
        >>> info = detect(tifffile.TiffFile(qptiff_path), qptiff_path)
        >>> info.vendor, info.channel_names, sorted(info.associated)
        ('qptiff', ('DAPI', 'CD8', 'PD-L1'), ['label', 'macro', 'thumbnail'])
    """
    first = tif.pages.first
    if not first.is_qpi:
        return None
    check_page(first, f"{path}: IFD 0")
    pages = list(iter_pages(tif))
    fields = [_fields(page, f"{path}: {page_name(page)}") for page in pages]
    kinds = [f.get("ImageType") for f in fields]

    # Level 0: the FullResolution pages (without ImageType: the run of pages shaped like IFD 0).
    full = [i for i, kind in enumerate(kinds) if kind == "FullResolution"]
    if not full:
        full = [0]
        while full[-1] + 1 < len(pages) and kinds[full[-1] + 1] is None:
            page = pages[full[-1] + 1]
            if not same_layout(page, first) or page.shape != first.shape:
                break
            full.append(full[-1] + 1)
    level0 = [pages[i] for i in full]
    if any(not same_layout(page, level0[0]) or page.shape != level0[0].shape for page in level0):
        raise FormatError(f"{path}: the FullResolution pages differ in size or layout")
    if len(level0) * int(level0[0].samplesperpixel) > MAX_SAMPLES:
        raise UnsupportedError(f"{path}: {len(level0)} channel pages (more than {MAX_SAMPLES} channels)")

    # Lower levels: runs of reduced pages of one size, one page per channel (a short run is dropped).
    candidates = [level0]
    used = set(full)
    run: list[int] = []
    for i in range(full[-1] + 1, len(pages)):
        page, kind = pages[i], kinds[i]
        untyped_level = kind is None and same_layout(page, level0[0]) and page.shape != level0[0].shape
        if not (kind == "ReducedResolution" or untyped_level) or not same_layout(page, level0[0]):
            continue
        if run and pages[run[0]].shape != page.shape:
            run = []
        run.append(i)
        if len(run) == len(level0):
            candidates.append([pages[j] for j in run])
            used.update(run)
            run = []
    levels = pyramid_levels(path, candidates)

    # Associated images: by ImageType, else by place (as tifffile's QPI series).
    associated: dict[str, PageLoader] = {}
    descriptions: dict[str, str] = {}
    untyped = [i for i in range(len(pages)) if i not in used and kinds[i] is None]
    by_place: dict[int, str] = {}
    if untyped and untyped[0] == full[-1] + 1:
        by_place[untyped.pop(0)] = "thumbnail"
    by_place.update(zip(untyped, ("macro", "label"), strict=False))  # more untyped pages: ignored
    for i, page in enumerate(pages):
        name = _ASSOCIATED.get(kinds[i] or "") or by_place.get(i)
        if name is None or name in associated or i in used:
            continue
        check_page(page, f"{path}: {name} ({page_name(page)})")
        associated[name] = PageLoader(path, name, (i,), int(page.imagewidth), int(page.imagelength))
        descriptions[name] = page.description or ""

    props = tiff_properties(first)
    props.update({f"qptiff.{key}": value for key, value in fields[0].items() if key not in _CHANNEL_KEYS})
    names = []
    for c, i in enumerate(full):
        channel = fields[i]
        props.update({f"qptiff.Channel[{c}].{key}": channel[key] for key in _CHANNEL_KEYS if key in channel})
        names.append(channel.get("Biomarker") or channel.get("Name") or f"C{c}")
    info = make_slide_info(
        "qptiff",
        levels,
        props,
        associated=associated,
        mpp=resolution_mpp(first),
        objective_power=_objective(fields[0].get("Objective")),
        channel_names=names if len(names) == levels[0].samples else None,
        icc_profile=icc_profile(first),
    )
    info.associated_descriptions = descriptions
    return info
