"""Format layer: what a slide file contains, as plain tables for the native engine.

:func:`read_slide_info` hands a folder or a DICOM file (``DICM`` preamble) to
:mod:`.dicom` (pydicom) and a companion OME-XML file (``*.companion.ome``) to
:mod:`.ome`; any other file it opens with tifffile, lets each vendor module
try to claim it (Aperio, Hamamatsu NDPI, Leica SCN, Ventana BIF, Philips TIFF, Akoya QPTIFF,
then OME-TIFF, then generic pyramidal TIFF, the way OpenSlide tries its drivers), and returns
a :class:`SlideInfo`: levels as :class:`LevelSpec` tile tables, OpenSlide-style properties, and lazy loaders
for associated images.  No pixels are read here.
"""

from __future__ import annotations

import os

from .._remote import RemoteSource
from ..errors import UnsupportedError
from . import aperio, dicom, generic, leica, ndpi, ome, philips, qptiff, ventana
from .base import Codec, JpegColor, LevelSpec, SlideInfo
from .tiff import open_binary, open_tiff, wrap_errors

__all__ = ["Codec", "JpegColor", "LevelSpec", "SlideInfo", "read_slide_info"]

#: Vendor detectors in the order they are tried; generic accepts any TIFF.
_DETECTORS = (
    aperio.detect, ndpi.detect, leica.detect, ventana.detect, philips.detect, qptiff.detect, ome.detect,
    generic.detect,
)  # fmt: skip


def read_slide_info(path: str | os.PathLike[str]) -> SlideInfo:
    """Describe the slide at ``path``: levels, properties, associated images.

    Raises :class:`~wsiarray.errors.OpenError` if the file cannot be opened or
    is not a TIFF, :class:`~wsiarray.errors.FormatError` if its structure is
    corrupt, and :class:`~wsiarray.errors.UnsupportedError` if it uses a
    feature (such as a compression) wsiarray cannot read; never anything else
    for a bad file.  Tile offsets are not checked against the file size here:
    the native engine reports those when a tile is read.

    Example:
        >>> info = read_slide_info(svs_path)
        >>> info.vendor, info.properties["openslide.mpp-x"]
        ('aperio', '0.25')
    """
    fh = None
    if isinstance(path, RemoteSource):
        # One block-cached file serves the sniffing and tifffile's parse.
        fh = open_binary(path)
        head = fh.read(4096)
        if head[128:132] == b"DICM":
            raise UnsupportedError(f"{path}: DICOM WSI cannot be read remotely yet (a series is many "
                                   "objects); copy it to a local folder")
        if head.lstrip(b"\xef\xbb\xbf \t\r\n").startswith(b"<"):
            raise UnsupportedError(f"{path}: companion OME-XML files cannot be read remotely (multi-file)")
    else:
        path = os.fspath(path)
        if isinstance(path, bytes):
            path = os.fsdecode(path)
        if dicom.is_dicom(path):
            return dicom.read_slide_info(path)
        if ome.is_companion(path):
            return ome.read_companion(path)
    tif = open_tiff(path, fh)
    try:
        with wrap_errors(path, "reading the TIFF structure"):
            for detect in _DETECTORS:
                info = detect(tif, path)
                if info is not None:
                    return info
        raise UnsupportedError(f"{path}: no format module recognises this TIFF")
    finally:
        tif.close()
