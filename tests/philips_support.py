"""Philips TIFF look-alikes written with tifffile (no public Philips sample may be redistributed).

The layout follows OpenSlide's format page and the XML of the public
``Philips-1.tiff``/CAMELYON16 exports as their published metadata dumps show it:
Software ``Philips DP v1.0``; IFD 0's ImageDescription the ``DPUfsImport`` XML;
every level a JPEG-tiled page whose ImageWidth/ImageLength are padded to whole
tiles (reduced pages with NewSubfileType 1 and descriptions ``level=k mag=M
quality=Q``); sparse tiles written with offset and byte count 0; the label and
macro base64 JPEGs in ``PIM_DP_SCANNED_IMAGES``, or (``label_page``) a stripped
page described ``Label``. These are look-alikes, not scanner output.
"""

from __future__ import annotations

import base64
import math
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import imagecodecs
import numpy as np
import tifffile

__all__ = ["philips_xml", "write_philips"]

SOFTWARE = "Philips DP v1.0"
BARCODE = "BARCODE-0042"
#: The WSI image's own DICOM_PIXEL_SPACING (mm, row then column), as in the public samples.
WSI_SPACING = ("0.000226316", "0.000226321")


def _attribute(
    name: str, value: object, pmsvr: str = "IString", group: str = "0x301D", element: str = "0x1000"
) -> str:
    return f'<Attribute Name="{name}" Group="{group}" Element="{element}" PMSVR="{pmsvr}">{value}</Attribute>'


def _doubles(*values: object) -> str:
    return " ".join(f"&quot;{v}&quot;" for v in values)


def philips_xml(
    spacings: Sequence[tuple[float, float]],
    sizes: Sequence[tuple[int, int]],
    images: Sequence[tuple[str, bytes]] = (),
    *,
    barcode: str = BARCODE,
) -> str:
    """The DPUfsImport XML: per-level spacings (row, column mm), stored sizes (w, h), images (type, JPEG)."""
    representations = "".join(
        '<DataObject ObjectType="PixelDataRepresentation">'
        + _attribute(
            "DICOM_PIXEL_SPACING", _doubles(f"{row:.6g}", f"{column:.6g}"), "IDoubleArray", "0x0028", "0x0030"
        )
        + _attribute(
            "PIIM_DP_PIXEL_DATA_REPRESENTATION_POSITION",
            _doubles(0, 0, 0),
            "IDoubleArray",
            "0x101D",
            "0x100B",
        )
        + _attribute("PIIM_PIXEL_DATA_REPRESENTATION_COLUMNS", width, "IUInt32", "0x2001", "0x115E")
        + _attribute("PIIM_PIXEL_DATA_REPRESENTATION_NUMBER", i, "IUInt16", "0x1001", "0x8B02")
        + _attribute("PIIM_PIXEL_DATA_REPRESENTATION_ROWS", height, "IUInt32", "0x2001", "0x115D")
        + "</DataObject>"
        for i, ((row, column), (width, height)) in enumerate(zip(spacings, sizes, strict=False))
    )
    wsi = (
        '<DataObject ObjectType="DPScannedImage">'
        + _attribute("PIM_DP_IMAGE_TYPE", "WSI", group="0x301D", element="0x1004")
        + _attribute("DICOM_DERIVATION_DESCRIPTION", "tiff-useBigTIFF=1-useRgb=0-levels=10003-q80", "IString")
        + _attribute("DICOM_LOSSY_IMAGE_COMPRESSION_METHOD", _doubles("PHILIPS_TIFF_1_0"), "IStringArray")
        + _attribute("DICOM_PIXEL_SPACING", _doubles(*WSI_SPACING), "IDoubleArray", "0x0028", "0x0030")
        + _attribute("DICOM_SAMPLES_PER_PIXEL", 3, "IUInt16", "0x0028", "0x0002")
        + _attribute(
            "PIIM_PIXEL_DATA_REPRESENTATION_SEQUENCE",
            f"<Array>{representations}</Array>",
            "IDataObjectArray",
            "0x1001",
            "0x8B01",
        )
        + _attribute("PIM_DP_IMAGE_COLUMNS", sizes[0][0], "IUInt32", element="0x1007")
        + _attribute("PIM_DP_IMAGE_ROWS", sizes[0][1], "IUInt32", element="0x1006")
        + _attribute("PIM_DP_SOURCE_FILE", "%FILENAME%")
        + "</DataObject>"
    )
    others = "".join(
        '<DataObject ObjectType="DPScannedImage">'
        + _attribute("PIM_DP_IMAGE_DATA", base64.b64encode(jpeg).decode(), element="0x1005")
        + _attribute("PIM_DP_IMAGE_TYPE", image_type, element="0x1004")
        + "</DataObject>"
        for image_type, jpeg in images
    )
    return (
        '<?xml version="1.0" encoding="UTF-8" ?>\n<DataObject ObjectType="DPUfsImport">'
        + _attribute("DICOM_MANUFACTURER", "PHILIPS", group="0x0008", element="0x0070")
        + _attribute("DICOM_DEVICE_SERIAL_NUMBER", "FMT0042", group="0x0018", element="0x1000")
        + _attribute("DICOM_INSTITUTION_NAME", "Hôpital Sainte-Lumière", group="0x0008", element="0x0080")
        + _attribute(
            "PIM_DP_SCANNED_IMAGES", f"<Array>{wsi}{others}</Array>", "IDataObjectArray", element="0x1003"
        )
        + _attribute("PIM_DP_UFS_BARCODE", base64.b64encode(barcode.encode()).decode(), element="0x1002")
        + _attribute("PIM_DP_UFS_INTERFACE_VERSION", "3.0", element="0x1001")
        + _attribute("DICOM_SOFTWARE_VERSIONS", _doubles("1.6.6186"), "IStringArray", "0x0018", "0x1020")
        + "</DataObject>\n"
    )


def _texture(height: int, width: int, seed: int) -> np.ndarray:
    """Smooth gradients plus a little noise: compresses like tissue, shows any misplaced pixel."""
    y, x = np.mgrid[0:height, 0:width]
    rng = np.random.default_rng(seed)
    image = np.stack([(x * 3 + y) % 256, (y * 2 + x // 3) % 256, ((x // 16) * 40 + (y // 16) * 25) % 256], -1)
    return np.clip(image + rng.integers(-6, 7, image.shape), 0, 255).astype(np.uint8)


def _pad(image: np.ndarray, tile: int) -> np.ndarray:
    """``image`` padded with white to whole tiles, as the exporter pads every level."""
    height, width = image.shape[:2]
    out = np.full((math.ceil(height / tile) * tile, math.ceil(width / tile) * tile, 3), 255, np.uint8)
    out[:height, :width] = image
    return out


def _tiles(
    image: np.ndarray, tile: int, sparse: set[tuple[int, int]], encode: Callable[[np.ndarray], bytes]
) -> Iterator[bytes]:
    for row in range(image.shape[0] // tile):
        for column in range(image.shape[1] // tile):
            if (row, column) in sparse:
                yield b""  # tifffile writes offset and byte count 0
            else:
                yield encode(
                    np.ascontiguousarray(
                        image[row * tile : (row + 1) * tile, column * tile : (column + 1) * tile]
                    )
                )


def write_philips(
    path: str | Path,
    *,
    width: int = 1000,
    height: int = 700,
    tile: int = 256,
    levels: int = 3,
    spacings: Sequence[tuple[float, float]] | None = None,
    sparse: dict[int, set[tuple[int, int]]] | None = None,
    label: bool = True,
    macro: bool = True,
    label_page: bool = False,
    compression: str = "jpeg",
    edit: Callable[[str], str] | None = None,
    software: str = SOFTWARE,
    bigtiff: bool = False,
) -> list[np.ndarray]:
    """Write a Philips look-alike; returns each level's stored (padded) pixels.

    Level 0 holds ``width x height`` pixels of texture padded white to whole
    tiles; level k is the 2x2 mean of level k-1's unpadded part, padded again.
    ``spacings`` (row, column mm per level) default to 0.000227273 * 2**k
    written with 6 significant digits, like the exporter's; ``sparse`` maps a
    level to the (row, column) tiles it leaves unwritten; ``edit`` rewrites
    the XML before it is written.
    """
    stored = [_pad(_texture(height, width, 1), tile)]
    true = stored[0][:height, :width]
    for _ in range(1, levels):
        h2, w2 = true.shape[0] // 2, true.shape[1] // 2
        true = true[: 2 * h2, : 2 * w2].reshape(h2, 2, w2, 2, 3).mean((1, 3)).round().astype(np.uint8)
        stored.append(_pad(true, tile))
    if spacings is None:
        spacings = [(0.000227273 * 2**k, 0.000227273 * 2**k) for k in range(levels)]
    images = []
    if label:
        images.append(("LABELIMAGE", imagecodecs.jpeg8_encode(_texture(30, 40, 2), level=90)))
    if macro:
        images.append(("MACROIMAGE", imagecodecs.jpeg8_encode(_texture(50, 120, 3), level=90)))
    xml = philips_xml(spacings, [(a.shape[1], a.shape[0]) for a in stored], images)
    if edit is not None:
        xml = edit(xml)
    if compression == "jpeg":
        codec: dict = {"compression": "jpeg", "photometric": "ycbcr", "subsampling": (2, 2)}

        def encode(block: np.ndarray) -> bytes:
            return imagecodecs.jpeg8_encode(block, level=85, subsampling="420")
    else:
        codec = {"compression": compression, "photometric": "rgb"}

        def encode(block: np.ndarray) -> bytes:
            return imagecodecs.jpeg2k_encode(block, level=0, codecformat="j2k")

    with tifffile.TiffWriter(path, bigtiff=bigtiff) as tif:
        for k, image in enumerate(stored):
            tif.write(
                _tiles(image, tile, (sparse or {}).get(k, set()), encode),
                shape=image.shape,
                dtype=np.uint8,
                tile=(tile, tile),
                # the XML as UTF-8 bytes: tifffile's description= takes 7-bit ASCII only
                description=None if k == 0 else f"level={k} mag={40 / 2**k:g} quality=80",
                extratags=[(270, 2, 0, xml.encode(), True)] if k == 0 else (),
                software=software,
                subfiletype=1 if k else 0,
                metadata=None,
                **codec,
            )
        if label_page:
            tif.write(
                _texture(24, 36, 4), photometric="rgb", description="Label", software=software, metadata=None
            )
    return stored
