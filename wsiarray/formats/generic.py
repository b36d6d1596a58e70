"""Generic pyramidal TIFF: the fallback for any TIFF no vendor module claims.

Follows OpenSlide's ``generic-tiff`` driver: level 0 is the first IFD, lower
levels are later IFDs of the main chain marked reduced-resolution
(NewSubfileType bit 0), plus the first IFD's SubIFDs where a writer stores
the pyramid there.  Unlike OpenSlide, transparency masks (NewSubfileType
bit 2, Photometric MASK) are never levels, even when also marked reduced,
and pages whose samples or dtype differ from level 0 are ignored.  Levels
may be stripped or tiled independently (strips are full-width tiles): a
stripped full-resolution image with tiled reduced images, which OpenSlide
refuses, is a pyramid as in tifffile.  The pixel size comes from
X/YResolution when ResolutionUnit is a length.
"""

from __future__ import annotations

import tifffile

from .base import SlideInfo
from .properties import icc_profile, make_slide_info, resolution_mpp, tiff_properties
from .tiff import (
    check_page,
    is_mask,
    is_reduced,
    iter_pages,
    pyramid_levels,
    same_layout,
    subifd_pages,
)

__all__ = ["detect"]


def _is_level(page: tifffile.TiffPage, first: tifffile.TiffPage) -> bool:
    return not is_mask(page) and same_layout(page, first)


def detect(tif: tifffile.TiffFile, path: str) -> SlideInfo:
    """Describe ``tif`` as a generic (pyramidal) TIFF; accepts any valid TIFF.

    Example:
        >>> info = detect(tifffile.TiffFile(path), path)
        >>> [(level.width, level.height) for level in info.levels]
        [(1000, 763), (500, 382), (250, 191)]
    """
    first = tif.pages.first
    check_page(first, f"{path}: level 0 (IFD 0)")

    candidates: list[list[tifffile.TiffPage]] = []
    for index, page in enumerate(iter_pages(tif)):
        if index == 0:
            candidates.append([page])
            if page.subifds:
                candidates += [
                    [sub] for sub in subifd_pages(tif, page, f"{path}: IFD 0") if _is_level(sub, first)
                ]
        elif is_reduced(page) and _is_level(page, first):
            candidates.append([page])

    return make_slide_info(
        "generic-tiff",
        pyramid_levels(path, candidates),
        tiff_properties(first),
        mpp=resolution_mpp(first),
        icc_profile=icc_profile(first),
    )
