"""The format layer alone (``wsiarray.formats``): no native engine involved.

Real slides come from ``../shared/data`` (skipped when absent, via the
``data_file`` fixture); synthetic files written here with tifffile cover the
cases the corpus lacks (OME Z/T and plane mapping, SubIFD pyramids, strips,
separate planes, a full SVS layout).
"""

from __future__ import annotations

import contextlib
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import tifffile

from wsiarray.errors import FormatError, OpenError, UnsupportedError, WSIError
from wsiarray.formats import read_slide_info
from wsiarray.formats.aperio import parse_description
from wsiarray.formats.base import Codec, JpegColor, LevelSpec
from wsiarray.formats.ome import length_to_um
from wsiarray.formats.properties import format_double

# file -> (vendor, [(width, height, tile width, tile height) per level], samples, dtype)
EXPECTED = {
    "aperio/CMU-1-Small-Region.svs": ("aperio", [(2220, 2967, 240, 240)], 3, "uint8"),
    "aperio/tcga-cr-7395-01a-01-ts1.svs": (
        "aperio", [(4443, 3567, 256, 256), (2221, 1783, 256, 256)], 3, "uint8"),
    "aperio/small.svs": ("aperio", [(16, 16, 64, 64)], 3, "uint8"),
    "generic/boxes.tiff": (
        "generic-tiff",
        [(300, 250, 64, 64), (150, 125, 64, 64), (75, 62, 64, 64), (37, 31, 64, 64)],
        3, "uint8"),
    "generic/cog-jpeg-dqt-only.tiff": (
        "generic-tiff",
        [(64, 64, 256, 256), (32, 32, 128, 128), (16, 16, 128, 128), (8, 8, 128, 128), (4, 4, 128, 128)],
        3, "uint8"),
    "generic/rgba8-zstd.tiff": (
        "generic-tiff",
        [(64, 64, 16, 16), (32, 32, 128, 128), (16, 16, 128, 128), (8, 8, 128, 128), (4, 4, 128, 128)],
        4, "uint8"),
    "generic/webp-rgba-bigtiff.tif": (
        "generic-tiff", [(1024, 2048, 256, 256), (512, 1024, 256, 256), (256, 512, 256, 256)], 4, "uint8"),
    "generic/quad-tile.jpg.tiff": ("generic-tiff", [(512, 384, 128, 128)], 3, "uint8"),
    "generic/uint16-deflate-pyramid.tif": (
        "generic-tiff",
        [(2658, 2667, 256, 256), (1329, 1334, 128, 128), (665, 667, 128, 128), (333, 334, 128, 128),
         (167, 167, 128, 128)],
        1, "uint16"),
    "generic/rgb-with-mask-ifds.tif": (
        "generic-tiff", [(256, 256, 64, 64), (128, 128, 64, 64), (64, 64, 64, 64)], 3, "uint8"),
    "generic/tiled-rect-128x32.tif": ("generic-tiff", [(490, 367, 32, 128)], 3, "uint8"),
    "generic/tile-larger-than-image.tif": ("generic-tiff", [(499, 374, 512, 512)], 1, "int8"),
    "ome/2048x2048_ome6_tiled.ome.tif": (
        "ome-tiff", [(2048, 2048, 1024, 1024), (1024, 1024, 1024, 1024)], 3, "uint16"),
    # broken pixels, sound structure: they open; the native engine fails on read
    "bad/tile-offsets-past-eof.tif": ("generic-tiff", [(300, 225, 256, 256)], 3, "uint8"),
    "bad/unreadable.svs": ("aperio", [(16, 16, 64, 64)], 3, "uint8"),
}  # fmt: skip

# file -> (exception class, exactly; text the message must contain)
BAD = {
    "bad/broken.svs": (OpenError, "not a TIFF file"),
    "bad/unopenable.tiff": (UnsupportedError, "compression 52479"),
    "bad/absurd-samples-per-pixel.tif": (FormatError, "SamplesPerPixel 65535"),
    "bad/corrupted-ifd-88-bytes.tif": (FormatError, "corrupted IFD"),
    "bad/test_ifd_loop_to_self.tif": (FormatError, "loops back"),
}


def assemble_raw(level: LevelSpec, path: str | Path) -> np.ndarray:
    """Rebuild an uncompressed level from its offset tables alone (checks tile and plane order)."""
    assert level.codec is Codec.RAW and level.predictor == 1
    th, tw, spp = level.tile_height, level.tile_width, level.samples_per_plane
    out = np.zeros((level.tiles_down * th, level.tiles_across * tw, level.samples), level.dtype)
    data = Path(path).read_bytes()
    for p in range(level.planes):
        for ty in range(level.tiles_down):
            for tx in range(level.tiles_across):
                start = int(level.offsets[p, ty, tx])
                tile = np.frombuffer(data[start : start + int(level.bytecounts[p, ty, tx])], level.dtype)
                if level.byteswap:
                    tile = tile.byteswap()
                rows = tile.size // (tw * spp)  # the last strip may be short
                out[ty * th : ty * th + rows, tx * tw : (tx + 1) * tw, p * spp : (p + 1) * spp] = tile[
                    : rows * tw * spp
                ].reshape(rows, tw, spp)
    return out[: level.height, : level.width]


# ---------------------------------------------------------------- real slides


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_levels(data_file, name: str) -> None:
    vendor, levels, samples, dtype = EXPECTED[name]
    info = read_slide_info(data_file(name))
    assert info.vendor == vendor
    assert [(lv.width, lv.height, lv.tile_width, lv.tile_height) for lv in info.levels] == levels
    for level in info.levels:
        assert level.samples == samples
        assert level.dtype == np.dtype(dtype)
        grid = (level.planes, -(-level.height // level.tile_height), -(-level.width // level.tile_width))
        assert level.offsets.shape == level.bytecounts.shape == grid
        assert level.offsets.dtype == level.bytecounts.dtype == np.uint64
    props = info.properties
    assert all(isinstance(v, str) for v in props.values())
    assert props["openslide.vendor"] == vendor
    assert props["openslide.level-count"] == str(len(levels))
    w0, h0 = levels[0][:2]
    for n, (w, h, tw, th) in enumerate(levels):
        assert props[f"openslide.level[{n}].width"] == str(w)
        assert props[f"openslide.level[{n}].height"] == str(h)
        assert props[f"openslide.level[{n}].tile-width"] == str(tw)
        assert props[f"openslide.level[{n}].tile-height"] == str(th)
        assert props[f"openslide.level[{n}].downsample"] == format_double((w0 / w + h0 / h) / 2)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_levels_match_tifffile(data_file, name: str) -> None:
    path = data_file(name)
    info = read_slide_info(path)
    with tifffile.TiffFile(path) as tif:
        reference = tif.series[0].levels
        assert len(info.levels) == len(reference)
        for level, ref in zip(info.levels, reference, strict=True):
            shape = dict(zip(ref.axes, ref.shape, strict=True))  # OME levels are CYX: C counts as samples
            assert (level.width, level.height) == (shape["X"], shape["Y"])
            assert level.samples == shape.get("S", 1) * shape.get("C", 1)
            assert level.dtype == ref.dtype.newbyteorder("=")


def test_aperio_properties(data_file) -> None:
    info = read_slide_info(data_file("aperio/CMU-1-Small-Region.svs"))
    props = info.properties
    assert info.mpp == (0.499, 0.499)
    assert info.objective_power == 20
    assert props["aperio.MPP"] == "0.4990"
    assert props["aperio.AppMag"] == "20"
    assert props["aperio.Filename"] == "CMU-1"
    assert props["openslide.mpp-x"] == props["openslide.mpp-y"] == "0.499"
    assert props["openslide.objective-power"] == "20"
    assert props["openslide.comment"] == props["tiff.ImageDescription"]
    assert props["tiff.ImageDescription"].startswith("Aperio Image Library v11.2.1")
    assert props["aperio.Header"].startswith("Aperio Image Library")
    assert props["tiff.ResolutionUnit"] == "inch"  # libtiff's default, as OpenSlide reports it
    assert props["openslide.level[0].downsample"] == "1"


def test_aperio_jpeg_tables(data_file) -> None:
    (level,) = read_slide_info(data_file("aperio/CMU-1-Small-Region.svs")).levels
    assert level.codec is Codec.JPEG
    assert level.jpeg_tables.startswith(b"\xff\xd8")
    # no JFIF/Adobe marker: only Photometric=RGB says the components are not YCbCr
    assert level.jpeg_colorspace is JpegColor.RGB
    assert level.jpeg_out_colorspace is JpegColor.RGB


def test_aperio_jpeg2000_without_mpp(data_file) -> None:
    info = read_slide_info(data_file("aperio/tcga-cr-7395-01a-01-ts1.svs"))
    assert [level.compression for level in info.levels] == [33005, 33005]
    assert all(level.codec is Codec.EXTERNAL and level.external_decoder for level in info.levels)
    assert info.mpp is None and "openslide.mpp-x" not in info.properties
    assert info.properties["aperio.ICC Profile"].startswith("IEC 61966-2.1")
    # the JPEG thumbnail between level 0 and level 1 is associated, not a level
    assert list(info.associated) == ["thumbnail"]


@pytest.mark.parametrize(
    ("name", "shapes"),
    [
        ("aperio/CMU-1-Small-Region.svs",
         {"thumbnail": (768, 574, 3), "label": (463, 387, 3), "macro": (431, 1280, 3)}),
        ("aperio/tcga-cr-7395-01a-01-ts1.svs", {"thumbnail": (768, 956, 3)}),
        ("aperio/small.svs", {"thumbnail": (16, 16, 3)}),
    ],
)  # fmt: skip
def test_aperio_associated(data_file, name: str, shapes: dict) -> None:
    path = data_file(name)
    info = read_slide_info(path)
    assert set(info.associated) == set(shapes)
    with tifffile.TiffFile(path) as tif:
        reference = {s.name.lower(): s.asarray() for s in tif.series[1:]}
    for key, shape in shapes.items():
        image = info.associated[key]()
        assert image.shape == shape and image.dtype == np.uint8
        np.testing.assert_array_equal(image, reference[key].reshape(shape))
        assert info.properties[f"openslide.associated.{key}.width"] == str(shape[1])
        assert info.properties[f"openslide.associated.{key}.height"] == str(shape[0])


def test_generic_mask_ifds_are_not_levels(data_file) -> None:
    info = read_slide_info(data_file("generic/rgb-with-mask-ifds.tif"))
    assert len(info.levels) == 3  # OpenSlide counts 5: the masks carry the reduced bit too
    assert [level.page_index for level in info.levels] == [0, 2, 3]
    assert all(level.samples == 3 and level.dtype == np.uint8 for level in info.levels)


def test_generic_properties(data_file) -> None:
    info = read_slide_info(data_file("generic/boxes.tiff"))
    props = info.properties
    assert props["openslide.level[1].downsample"] == "2"
    assert props["openslide.level[2].downsample"] == format_double((300 / 75 + 250 / 62) / 2)
    assert props["tiff.ResolutionUnit"] == "centimeter"
    x_resolution = 14861707 / 524288  # pixels per centimetre
    assert props["tiff.XResolution"] == format_double(x_resolution)
    assert info.mpp == pytest.approx((10000 / x_resolution,) * 2)
    assert props["openslide.mpp-x"] == format_double(10000 / x_resolution)
    assert info.associated == {}


def test_generic_codecs(data_file) -> None:
    codecs = {
        "generic/boxes.tiff": Codec.DEFLATE,
        "generic/quad-tile.jpg.tiff": Codec.JPEG,
        "generic/tile-larger-than-image.tif": Codec.LZW,
        "generic/tiled-rect-128x32.tif": Codec.RAW,
        "generic/rgba8-zstd.tiff": Codec.EXTERNAL,
        "generic/webp-rgba-bigtiff.tif": Codec.EXTERNAL,
    }
    for name, codec in codecs.items():
        assert {level.codec for level in read_slide_info(data_file(name)).levels} == {codec}, name


def test_raw_tiles_rebuild_the_image(data_file) -> None:
    path = data_file("generic/tiled-rect-128x32.tif")
    (level,) = read_slide_info(path).levels
    np.testing.assert_array_equal(assemble_raw(level, path), tifffile.imread(path))


def test_ome_channels(data_file) -> None:
    info = read_slide_info(data_file("ome/2048x2048_ome6_tiled.ome.tif"))
    level0, level1 = info.levels
    assert (level0.planes, level0.samples_per_plane) == (3, 1)
    assert level0.byteswap == (sys.byteorder == "little")  # the file is big-endian
    assert info.channel_names == ("Channel:0:0", "Channel:0:1", "Channel:0:2")
    # PhysicalSize in "pixel" units is not a length: no pixel size
    assert info.mpp is None and "openslide.mpp-x" not in info.properties
    props = info.properties
    assert props["ome.Pixels.PhysicalSizeXUnit"] == "pixel"
    assert props["ome.Pixels.SizeC"] == "3"
    assert props["ome.Creator"] == "OME Bio-Formats 6.3.0"
    assert props["ome.image-count"] == "1"
    assert "ome.selected-plane" not in props
    assert not set(level0.offsets.ravel()) & set(level1.offsets.ravel())


@pytest.mark.parametrize("name", sorted(BAD))
def test_bad_files_raise(data_file, name: str) -> None:
    cls, text = BAD[name]
    path = data_file(name)
    tracemalloc.start()
    start = time.perf_counter()
    try:
        with pytest.raises(WSIError) as caught:
            read_slide_info(path)
        elapsed = time.perf_counter() - start
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert type(caught.value) is cls, caught.value
    assert text in str(caught.value)
    assert path in str(caught.value)
    assert elapsed < 1.0
    assert peak < 100 << 20


# ----------------------------------------------------------- synthetic files


def test_not_found_empty_and_directory(tmp_path: Path) -> None:
    with pytest.raises(OpenError, match="cannot open"):
        read_slide_info(tmp_path / "missing.svs")
    with pytest.raises(OpenError, match="cannot open"):
        read_slide_info(tmp_path)
    (tmp_path / "empty.tif").write_bytes(b"")
    with pytest.raises(OpenError, match="not a TIFF"):
        read_slide_info(tmp_path / "empty.tif")
    (tmp_path / "header.tif").write_bytes(b"II*\x00\x08\x00\x00\x00")
    with pytest.raises(FormatError):
        read_slide_info(tmp_path / "header.tif")


def test_truncated_file(tmp_path: Path) -> None:
    path = tmp_path / "t.tif"
    tifffile.imwrite(path, np.zeros((64, 64), np.uint8), tile=(16, 16))
    data = path.read_bytes()
    for size in range(8, len(data), 7):
        path.write_bytes(data[:size])
        with contextlib.suppress(WSIError):  # any WSIError is fine; nothing else may escape
            read_slide_info(path)


def _svs(path: Path) -> None:
    """An SVS layout: level 0, thumbnail, level 1, label, macro."""
    rng = np.random.default_rng(1)
    header = "Aperio Image Library v12.0.15\r\n1024x768 [0,0 1024x768] (256x256) JPEG/RGB Q=70"
    with tifffile.TiffWriter(path) as tw:

        def write(shape: tuple[int, int], description: str, **kwargs) -> None:
            image = rng.integers(0, 255, (*shape, 3), dtype=np.uint8)
            tw.write(image, photometric="rgb", description=description, metadata=None, **kwargs)

        write((768, 1024), f"{header}|AppMag = 40|MPP = 0.2520|Empty|Date = 01/02/24", tile=(256, 256))
        write((192, 256), "Aperio Image Library v12.0.15\n1024x768 -> 256x192 - ", rowsperstrip=64)
        write((384, 512), f"{header} -> 512x384", tile=(256, 256))
        write((80, 100), "Aperio Image Library v12.0.15\nlabel 100x80")
        write((120, 300), "Aperio Image Library v12.0.15\nmacro 300x120")


def test_aperio_layout(tmp_path: Path) -> None:
    path = tmp_path / "s.svs"
    _svs(path)
    info = read_slide_info(path)
    assert info.vendor == "aperio"
    assert [(lv.width, lv.height, lv.page_index) for lv in info.levels] == [(1024, 768, 0), (512, 384, 2)]
    assert {k: v().shape for k, v in info.associated.items()} == {
        "thumbnail": (192, 256, 3),
        "label": (80, 100, 3),
        "macro": (120, 300, 3),
    }
    assert info.mpp == (0.252, 0.252) and info.objective_power == 40
    assert info.properties["openslide.mpp-x"] == "0.252"
    assert info.properties["aperio.Date"] == "01/02/24"
    assert "aperio.Empty" not in info.properties


def test_parse_description() -> None:
    description = "Aperio Image Library v10\r\nmore|AppMag = 20| Key = a = b |no pair|K = 1|K = 2"
    props = parse_description(description)
    assert props == {
        "aperio.Header": "Aperio Image Library v10\r\nmore",
        "aperio.AppMag": "20",
        "aperio.Key": "a = b",
        "aperio.K": "2",
    }


def test_format_double() -> None:
    # OpenSlide's g_ascii_dtostr output: 17 significant digits, shortest when exact
    assert format_double(1.0) == "1"
    assert format_double(0.2521) == "0.25209999999999999"
    assert format_double(4.0000620925178509) == "4.0000620925178509"


def test_generic_subifd_pyramid_and_strips(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    image = rng.integers(0, 255, (300, 200, 3), dtype=np.uint8)
    path = tmp_path / "sub.tif"
    with tifffile.TiffWriter(path) as tw:
        tw.write(
            image,
            subifds=2,
            tile=(64, 64),
            photometric="rgb",
            metadata=None,
            resolution=(25400 / 0.5, 25400 / 0.5),
            resolutionunit="INCH",
        )
        tw.write(image[::2, ::2], subfiletype=1, tile=(64, 64), photometric="rgb", metadata=None)
        tw.write(image[::4, ::4], subfiletype=1, tile=(64, 64), photometric="rgb", metadata=None)
        tw.write(image[:10, :10], photometric="rgb", metadata=None)  # a second image: not a level
    info = read_slide_info(path)
    assert info.vendor == "generic-tiff"
    assert [(lv.width, lv.height, lv.page_index) for lv in info.levels] == [
        (200, 300, 0),
        (100, 150, 0),
        (50, 75, 0),
    ]
    assert info.mpp == pytest.approx((0.5, 0.5))

    strips = tmp_path / "strips.tif"
    tifffile.imwrite(strips, image, photometric="rgb", rowsperstrip=64, metadata=None)
    (level,) = read_slide_info(strips).levels
    assert (level.tile_width, level.tile_height, level.tiles_down) == (200, 64, 5)
    np.testing.assert_array_equal(assemble_raw(level, strips), image)


def test_separate_planes(tmp_path: Path) -> None:
    image = np.random.default_rng(3).integers(0, 60000, (3, 100, 90), dtype=np.uint16)
    path = tmp_path / "planar.tif"
    tifffile.imwrite(path, image, photometric="rgb", planarconfig="separate", tile=(32, 32), byteorder=">")
    (level,) = read_slide_info(path).levels
    assert (level.planes, level.samples_per_plane) == (3, 1)
    np.testing.assert_array_equal(assemble_raw(level, path), np.moveaxis(image, 0, -1))


def test_ome_z_stack_pyramid_and_label(tmp_path: Path) -> None:
    rng = np.random.default_rng(4)
    data = rng.integers(0, 4000, (2, 2, 256, 192), dtype=np.uint16)  # Z, C, Y, X
    path = tmp_path / "zc.ome.tif"
    metadata = {
        "axes": "ZCYX",
        "Name": "slide",
        "Channel": {"Name": ["DAPI", "CD3"]},
        "PhysicalSizeX": 250,
        "PhysicalSizeXUnit": "nm",
        "PhysicalSizeY": 0.5,
    }
    with tifffile.TiffWriter(path, ome=True) as tw:
        tw.write(data, subifds=2, tile=(64, 64), metadata=metadata)
        tw.write(data[:, :, ::2, ::2], subfiletype=1, tile=(64, 64))
        tw.write(data[:, :, ::4, ::4], subfiletype=1, tile=(64, 64))
        label = rng.integers(0, 255, (40, 50, 3), dtype=np.uint8)
        tw.write(label, photometric="rgb", metadata={"Name": "label"})
    info = read_slide_info(path)
    assert info.vendor == "ome-tiff"
    sizes = [(lv.width, lv.height, lv.samples) for lv in info.levels]
    assert sizes == [(192, 256, 2), (96, 128, 2), (48, 64, 2)]
    assert info.channel_names == ("DAPI", "CD3")
    assert info.mpp == pytest.approx((0.25, 0.5))
    assert info.properties["ome.selected-plane"] == "Z=0 T=0 of SizeZ=2 SizeT=1"
    np.testing.assert_array_equal(assemble_raw(info.levels[0], path), np.moveaxis(data[0], 0, -1))
    lowest = np.moveaxis(data[0, :, ::4, ::4], 0, -1)
    np.testing.assert_array_equal(assemble_raw(info.levels[2], path), lowest)
    np.testing.assert_array_equal(info.associated["label"](), label)


OME_XML = (
    '<?xml version="1.0" encoding="UTF-8"?>'
    '<OME xmlns="http://www.openmicroscopy.org/Schemas/OME/2016-06" UUID="urn:uuid:1">'
    '<Image ID="Image:0"><Pixels ID="Pixels:0" DimensionOrder="{order}" Type="uint8" SizeX="8" SizeY="4" '
    'SizeC="2" SizeZ="2" SizeT="1" PhysicalSizeX="0.5" PhysicalSizeY="0.5">'
    '<Channel ID="Channel:0:0" SamplesPerPixel="1"/><Channel ID="Channel:0:1" Name="B" SamplesPerPixel="1"/>'
    "{tiffdata}</Pixels></Image></OME>"
)


def _ome_pages(path: Path, xml: str) -> None:
    # IFD k is filled with the value k, so a level's planes show which IFDs it uses
    pages = np.arange(4, dtype=np.uint8)[:, None, None] * np.ones((4, 4, 8), np.uint8)
    with tifffile.TiffWriter(path) as tw:
        for k, page in enumerate(pages):
            tw.write(page, description=xml if k == 0 else None, metadata=None)


@pytest.mark.parametrize(
    ("order", "tiffdata", "planes"),
    [
        ("XYCZT", "", [0, 1]),  # no TiffData: IFDs in DimensionOrder
        ("XYZCT", "", [0, 2]),
        ("XYCZT",
         '<TiffData IFD="3" FirstC="0" PlaneCount="1"/><TiffData IFD="1" FirstC="1" PlaneCount="1"/>',
         [3, 1]),
        ("XYZCT", '<TiffData IFD="0" PlaneCount="4"/>', [0, 2]),
    ],
)  # fmt: skip
def test_ome_plane_mapping(tmp_path: Path, order: str, tiffdata: str, planes: list[int]) -> None:
    path = tmp_path / "map.ome.tif"
    _ome_pages(path, OME_XML.format(order=order, tiffdata=tiffdata))
    info = read_slide_info(path)
    (level,) = info.levels
    assert assemble_raw(level, path)[0, 0].tolist() == planes
    assert info.channel_names == ("Channel:0:0", "B")
    assert info.mpp == (0.5, 0.5)


@pytest.mark.parametrize(
    ("xml", "cls", "text"),
    [
        ('<?xml version="1.0"?><OME><Image></OME>', FormatError, "invalid OME-XML"),
        (OME_XML.format(order="XYCZT", tiffdata='<TiffData IFD="0" PlaneCount="4"><UUID>urn:uuid:2</UUID>'
                                                 "</TiffData>"), FormatError, "has no FileName"),
        (OME_XML.format(order="XYCZT", tiffdata='<TiffData IFD="0" PlaneCount="4">'
                                                 '<UUID FileName="gone.tif">urn:uuid:2</UUID></TiffData>'),
         OpenError, "'gone.tif' is missing"),
        (OME_XML.format(order="XYCZT", tiffdata='<TiffData IFD="9" PlaneCount="4"/>'), FormatError,
         "IFD 9 does not exist"),
        (OME_XML.format(order="XYQZT", tiffdata=""), FormatError, "DimensionOrder"),
        (OME_XML.replace('SizeC="2"', 'SizeC="99"').format(order="XYCZT", tiffdata=""), UnsupportedError,
         "99 channels"),
    ],
)  # fmt: skip
def test_ome_bad_xml(tmp_path: Path, xml: str, cls: type, text: str) -> None:
    path = tmp_path / "bad.ome.tif"
    _ome_pages(path, xml)
    with pytest.raises(WSIError) as caught:
        read_slide_info(path)
    assert type(caught.value) is cls and text in str(caught.value), caught.value


def test_length_to_um() -> None:
    assert length_to_um("0.25", None) == 0.25  # OME's default unit is µm
    assert length_to_um("0.25", "µm") == 0.25
    assert length_to_um("250", "nm") == pytest.approx(0.25)
    assert length_to_um("1", "mm") == 1000
    assert length_to_um("1", "pixel") is None
    assert length_to_um("-1", "µm") is None
    assert length_to_um("abc", "µm") is None
