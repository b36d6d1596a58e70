"""The native planner on its own (``_native.plan_region``: no file, no decoder), the
plan and fetched bytes of an open reader (``Reader.plan`` / ``Reader.fetch``), and
caller mistakes raising :class:`wsiarray.ArgumentError`."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
import tifffile
from hypothesis import given
from hypothesis import strategies as st
from wsitest import SyntheticSpec

import wsiarray
from wsiarray import _native
from wsiarray.errors import ArgumentError, TileReadError

MIB = 1 << 20
PLAN_KEYS = {"region", "clipped", "plane", "tx", "ty", "index", "offset", "bytecount", "tile_rect",
             "out_rect", "whole", "runs", "fill"}


def tables(planes: int, down: int, across: int, sizes: int | np.ndarray = 100, *, gap: int = 0,
           start: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """Tile tables with tiles stored in table order, ``gap`` bytes apart."""
    count = planes * down * across
    counts = np.broadcast_to(np.asarray(sizes, np.uint64), (count,)).astype(np.uint64)
    offsets = start + np.concatenate([[0], np.cumsum(counts + np.uint64(gap))[:-1]]).astype(np.uint64)
    return offsets.reshape(planes, down, across), counts.reshape(planes, down, across).copy()


def plan(width: int = 1000, height: int = 763, tile: tuple[int, int] = (256, 256), planes: int = 1,
         region: tuple[int, int, int, int] = (0, 0, 1000, 763), *, workers: int = 1,
         offsets: np.ndarray | None = None, bytecounts: np.ndarray | None = None,
         file_size: int | None = None, **kwargs) -> dict:
    tw, th = tile
    across, down = -(-width // tw), -(-height // th)
    if offsets is None or bytecounts is None:
        offsets, bytecounts = tables(planes, down, across)
    if file_size is None:
        file_size = int((offsets + bytecounts).max()) if offsets.size else 0
    x, y, w, h = region
    return _native.plan_region(width, height, tw, th, offsets, bytecounts, file_size, x, y, w, h,
                               workers=workers, **kwargs)


def covered(p: dict, region_size: tuple[int, int], planes: int) -> np.ndarray:
    """How often each output pixel is written, per plane: by tiles of that plane, or by fill."""
    w, h = region_size
    count = np.zeros((planes, h, w), np.int32)
    for plane, (x, y, rw, rh) in zip(p["plane"], p["out_rect"], strict=True):
        count[plane, y:y + rh, x:x + rw] += 1
    for x, y, rw, rh in p["fill"]:
        count[:, y:y + rh, x:x + rw] += 1
    return count


def test_fields_and_aligned_region() -> None:
    p = plan(region=(256, 256, 512, 256))
    assert set(p) == PLAN_KEYS
    assert p["region"] == (256, 256, 512, 256)
    assert p["clipped"] == (256, 256, 768, 512)
    assert p["tx"].tolist() == [1, 2] and p["ty"].tolist() == [1, 1]
    assert p["index"].tolist() == [5, 6]  # 4 tiles across
    assert p["tile_rect"].tolist() == [[0, 0, 256, 256]] * 2
    assert p["out_rect"].tolist() == [[0, 0, 256, 256], [256, 0, 256, 256]]
    assert p["whole"].dtype == bool and p["whole"].all()
    assert p["fill"].shape == (0, 4)
    assert p["offset"].dtype == np.uint64 and p["tile_rect"].dtype == np.uint32
    offsets, counts = tables(1, 3, 4)
    assert p["offset"].tolist() == offsets.ravel()[[5, 6]].tolist()
    assert p["bytecount"].tolist() == counts.ravel()[[5, 6]].tolist()


def test_unaligned_region_and_edge_tiles() -> None:
    p = plan(region=(1, 1, 256, 256))
    assert list(zip(p["tx"].tolist(), p["ty"].tolist(), strict=True)) == [(0, 0), (1, 0), (0, 1), (1, 1)]
    assert p["tile_rect"].tolist() == [[1, 1, 255, 255], [0, 1, 1, 255], [1, 0, 255, 1], [0, 0, 1, 1]]
    assert p["out_rect"].tolist() == [[0, 0, 255, 255], [255, 0, 1, 255], [0, 255, 255, 1], [255, 255, 1, 1]]
    assert not p["whole"].any()
    # The image's last tiles are partial (1000 = 3 * 256 + 232): never whole.
    p = plan(region=(768, 512, 232, 251))
    assert p["tile_rect"].tolist() == [[0, 0, 232, 251]] and not p["whole"][0]


def test_partly_outside() -> None:
    p = plan(region=(-10, -20, 100, 50))
    assert p["clipped"] == (0, 0, 90, 30)
    assert p["out_rect"].tolist() == [[10, 20, 90, 30]]
    assert p["fill"].tolist() == [[0, 0, 100, 20], [0, 20, 10, 30]]
    p = plan(region=(990, 760, 20, 10))
    assert p["out_rect"].tolist() == [[0, 0, 10, 3]]
    assert p["fill"].tolist() == [[10, 0, 10, 3], [0, 3, 20, 7]]


@pytest.mark.parametrize("region", [(1000, 0, 10, 10), (0, 763, 10, 10), (-10, 0, 10, 10), (-50, -50, 20, 20),
                                    (2**40, 2**40, 5, 5), (-(2**62), 0, 5, 5), (5, 5, 0, 3), (5, 5, 3, 0)])
def test_wholly_outside_or_empty(region: tuple[int, int, int, int]) -> None:
    p = plan(region=region)
    assert len(p["tx"]) == 0 and p["runs"].shape == (0, 4)
    w, h = region[2:]
    assert p["fill"].tolist() == ([[0, 0, w, h]] if w and h else [])


def test_multi_plane() -> None:
    p = plan(width=600, height=300, tile=(256, 256), planes=3, region=(200, 200, 100, 50),
             samples_per_plane=1, bytes_per_sample=2)
    assert p["plane"].tolist() == [0, 0, 1, 1, 2, 2]
    assert p["index"].tolist() == [0, 1, 6, 7, 12, 13]  # 2 down x 3 across per plane
    assert not p["whole"].any()
    # A tile whose whole area is covered is whole on any plane.
    p = plan(width=512, height=256, planes=2, region=(0, 0, 512, 256))
    assert p["whole"].all() and p["plane"].tolist() == [0, 0, 1, 1]


def test_runs_merge_contiguous_tiles() -> None:
    offsets, counts = tables(1, 3, 4)
    p = plan(offsets=offsets, bytecounts=counts)
    assert p["runs"].tolist() == [[0, 12, 16, 1200]]
    # Gaps split runs: every tile its own read.
    offsets, counts = tables(1, 3, 4, gap=1)
    p = plan(offsets=offsets, bytecounts=counts)
    assert p["runs"][:, 1].tolist() == [1] * 12
    assert p["runs"][:, 2].tolist() == offsets.ravel().tolist()
    # Tiles stored in reverse order are not contiguous in request order.
    offsets, counts = tables(1, 3, 4)
    p = plan(offsets=offsets[:, :, ::-1].copy(), bytecounts=counts)
    assert len(p["runs"]) == 12
    # A region covering the middle of a row reads only the tiles it needs.
    offsets, counts = tables(1, 3, 4)
    p = plan(region=(300, 300, 300, 10), offsets=offsets, bytecounts=counts)
    assert p["runs"].tolist() == [[0, 2, int(offsets[0, 1, 1]), 200]]


def test_runs_cap_at_4_mib() -> None:
    offsets, counts = tables(1, 3, 4, sizes=MIB + 1)
    p = plan(offsets=offsets, bytecounts=counts)
    # 3 * (1 MiB + 1) <= 4 MiB < 4 * (1 MiB + 1).
    assert p["runs"][:, 1].tolist() == [3, 3, 3, 3]
    assert (p["runs"][:, 3] <= 4 * MIB).all()
    offsets, counts = tables(1, 3, 4, sizes=4 * MIB)
    p = plan(offsets=offsets, bytecounts=counts)
    assert p["runs"][:, 1].tolist() == [1] * 12


@pytest.mark.parametrize(("workers", "per_run"), [(1, 48), (2, 6), (3, 4), (4, 3), (12, 1), (100, 1)])
def test_runs_share_out_across_workers(workers: int, per_run: int) -> None:
    offsets, counts = tables(1, 6, 8, sizes=10)
    p = plan(width=2048, height=1536, offsets=offsets, bytecounts=counts, region=(0, 0, 2048, 1536),
             workers=workers)
    assert p["runs"][:, 1].max() == per_run
    assert p["runs"][:, 1].sum() == 48


def test_zero_byte_tiles_are_their_own_runs() -> None:
    offsets, counts = tables(1, 1, 4)
    counts[0, 0, 1] = 0
    offsets[0, 0, 1] = 0
    offsets[0, 0, 2:] -= np.uint64(100)
    p = plan(width=1024, height=256, offsets=offsets, bytecounts=counts, region=(0, 0, 1024, 256))
    assert p["runs"].tolist() == [[0, 1, 16, 100], [1, 1, 0, 0], [2, 2, 116, 200]]
    assert p["bytecount"].tolist() == [100, 0, 100, 100]


@pytest.mark.parametrize("bad", ["offset", "count", "huge"])
def test_bytes_outside_the_file(bad: str) -> None:
    offsets, counts = tables(1, 3, 4)
    size = int((offsets + counts).max())
    if bad == "offset":
        offsets[0, 1, 2] = size + 1
    elif bad == "count":
        counts[0, 1, 2] = size
    else:
        offsets[0, 1, 2] = 2**64 - 1
    with pytest.raises(TileReadError, match=r"myfile: level 0 \(IFD 0\), tile \(2, 1\): tile bytes .* lie "
                                            r"outside the file"):
        plan(offsets=offsets, bytecounts=counts, file_size=size, name="myfile")
    # Tiles outside the request are not looked at.
    plan(offsets=offsets, bytecounts=counts, file_size=size, region=(0, 0, 256, 256))


def test_bad_arguments() -> None:
    offsets, counts = tables(1, 3, 4)
    with pytest.raises(ArgumentError, match="tile tables"):
        plan(offsets=offsets[:, :2].copy(), bytecounts=counts[:, :2].copy())
    with pytest.raises(ArgumentError, match="zero"):
        _native.plan_region(0, 10, 256, 256, offsets, counts, 10**6, 0, 0, 1, 1)
    with pytest.raises(ArgumentError, match="region size"):
        plan(region=(0, 0, -1, 5))
    with pytest.raises(ArgumentError, match="sample size"):
        plan(bytes_per_sample=3)
    assert issubclass(ArgumentError, ValueError)


@given(
    width=st.integers(1, 700), height=st.integers(1, 700), tw=st.integers(1, 300), th=st.integers(1, 300),
    planes=st.integers(1, 3), x=st.integers(-400, 800), y=st.integers(-400, 800),
    w=st.integers(0, 600), h=st.integers(0, 600), workers=st.integers(1, 8),
)
def test_plan_partitions_the_output(width: int, height: int, tw: int, th: int, planes: int, x: int, y: int,
                                    w: int, h: int, workers: int) -> None:
    p = plan(width=width, height=height, tile=(tw, th), planes=planes, region=(x, y, w, h), workers=workers)
    # Every output pixel is written exactly once per plane: by a tile, or by the fill.
    assert (covered(p, (w, h), planes) == 1).all()
    x0, y0, x1, y1 = max(x, 0), max(y, 0), min(x + w, width), min(y + h, height)
    inside = x0 < x1 and y0 < y1
    rows = zip(p["out_rect"].tolist(), p["tile_rect"].tolist(), p["tx"].tolist(), p["ty"].tolist(),
               p["whole"], strict=True)
    for (ox, oy, rw, rh), (tx_, ty_, tw_, th_), tx, ty, whole in rows:
        # A tile's covered part in the tile and in the output are the same pixels.
        assert (tw_, th_) == (rw, rh) and rw > 0 and rh > 0
        assert tx * tw + tx_ == x + ox and ty * th + ty_ == y + oy
        assert tx_ + tw_ <= tw and ty_ + th_ <= th
        assert bool(whole) == (tw_ == tw and th_ == th)
        # ... and inside the clipped region.
        assert x0 <= x + ox and x + ox + rw <= x1 and y0 <= y + oy and y + oy + rh <= y1
    if inside:
        # Fill is exactly the part outside the image.
        fill = np.zeros((h, w), bool)
        for fx, fy, fw, fh in p["fill"]:
            assert fw > 0 and fh > 0
            fill[fy:fy + fh, fx:fx + fw] = True
        want = np.ones((h, w), bool)
        want[y0 - y:y1 - y, x0 - x:x1 - x] = False
        assert (fill == want).all()
    # Runs cover the tiles in order, each tile once.
    runs = p["runs"]
    assert runs[:, 0].tolist() == np.concatenate([[0], np.cumsum(runs[:, 1])[:-1]]).tolist()[:len(runs)]
    assert int(runs[:, 1].sum()) == len(p["tx"])
    for first, n, offset, size in runs:
        assert offset == p["offset"][first]
        assert size == p["bytecount"][first:first + n].sum()


# -- an open reader: Reader.plan, Reader.fetch, Reader.level_info ------------------------------

FETCH_SPEC = SyntheticSpec("plan-fetch", width=1000, height=763, compression="jpeg", photometric="ycbcr",
                           tile=(256, 256))


def open_native(path: str) -> tuple[_native.Reader, tifffile.TiffPage, bytes]:
    with open(path, "rb") as f:
        content = f.read()
    with tifffile.TiffFile(path) as tif:
        page = tif.pages[0]
        reader = _native.Reader(path)
        across, down = -(-page.imagewidth // page.tilewidth), -(-page.imagelength // page.tilelength)
        offsets = np.asarray(page.dataoffsets, np.uint64).reshape(1, down, across)
        counts = np.asarray(page.databytecounts, np.uint64).reshape(1, down, across)
        reader.add_level(width=page.imagewidth, height=page.imagelength, tile_width=page.tilewidth,
                         tile_height=page.tilelength, samples_per_plane=page.samplesperpixel,
                         bytes_per_sample=1, codec=3, byteswap=False, predictor=1,
                         jpeg_tables=page.jpegtables or b"", jpeg_in=-1, jpeg_out=-1, offsets=offsets,
                         bytecounts=counts, external=None, page_index=0)
        return reader, page, content


@pytest.fixture(scope="module")
def fetch_slide(synthetic: Callable[[SyntheticSpec], str]) -> str:
    return synthetic(FETCH_SPEC)


@pytest.mark.parametrize("region", [(0, 0, 1000, 763), (1, 1, 256, 256), (-30, 700, 100, 100),
                                    (5000, 0, 10, 10)])
@pytest.mark.parametrize("workers", [1, 3])
def test_reader_fetch_returns_the_files_bytes(fetch_slide: str, region: tuple[int, int, int, int],
                                              workers: int) -> None:
    reader, page, content = open_native(fetch_slide)
    x, y, w, h = region
    got = reader.fetch(0, x, y, w, h, workers=workers)
    planned = reader.plan(0, x, y, w, h, workers=workers)
    want = _native.plan_region(page.imagewidth, page.imagelength, page.tilewidth, page.tilelength,
                               *[np.asarray(t, np.uint64).reshape(1, 3, 4) for t in
                                 (page.dataoffsets, page.databytecounts)],
                               len(content), x, y, w, h, workers=workers)
    for key in PLAN_KEYS:
        assert np.array_equal(np.asarray(got[key]), np.asarray(want[key])), key
        assert np.array_equal(np.asarray(planned[key]), np.asarray(want[key])), key
    data = got["data"]
    assert data.dtype == np.uint8 and len(data) == int(got["runs"][:, 3].sum())
    assert got["spans"].shape == (len(got["tx"]), 2)
    for index, (start, length) in zip(got["index"], got["spans"], strict=True):
        offset, count = page.dataoffsets[index], page.databytecounts[index]
        assert length == count
        assert data[start:start + length].tobytes() == content[offset:offset + count]
    reader.close()


def test_level_info(fetch_slide: str) -> None:
    reader, page, _ = open_native(fetch_slide)
    info = reader.level_info(0)
    assert (info["width"], info["height"], info["tile_width"], info["tile_height"]) == (1000, 763, 256, 256)
    assert (info["tiles_across"], info["tiles_down"], info["planes"], info["codec"]) == (4, 3, 1, 3)
    assert info["offsets"].shape == (1, 3, 4)
    assert info["offsets"].ravel().tolist() == list(page.dataoffsets)
    assert info["jpeg_tables"] == (page.jpegtables or b"")
    with pytest.raises(ArgumentError, match="no level 1"):
        reader.level_info(1)
    reader.close()


def test_fetched_tiles_decode_to_the_slide(fetch_slide: str) -> None:
    """What a second decoder would do with Reader.fetch: decode each tile, place it by out_rect."""
    import imagecodecs

    reader, page, _ = open_native(fetch_slide)
    x, y, w, h = 100, 50, 600, 500
    got = reader.fetch(0, x, y, w, h)
    out = np.zeros((h, w, 3), np.uint8)
    for (start, length), (tx_, ty_, rw, rh), (ox, oy, _, _) in zip(got["spans"], got["tile_rect"],
                                                                   got["out_rect"], strict=True):
        tile = imagecodecs.jpeg8_decode(got["data"][start:start + length].tobytes(), tables=page.jpegtables)
        out[oy:oy + rh, ox:ox + rw] = tile[ty_:ty_ + rh, tx_:tx_ + rw]
    want = np.empty((h, w, 3), np.uint8)
    reader.read_region(0, x, y, want, bytes(3), 1)
    assert np.abs(out.astype(int) - want).max() <= 1
    reader.close()


# -- caller mistakes ---------------------------------------------------------------------------


def test_caller_mistakes_raise_argument_error(fetch_slide: str) -> None:
    reader, _, _ = open_native(fetch_slide)
    out = np.empty((10, 10, 3), np.uint8)
    with pytest.raises(ArgumentError, match="fill value"):
        reader.read_region(0, 0, 0, out, bytes(4), 1)
    with pytest.raises(ArgumentError, match="pixel size"):
        reader.read_region(0, 0, 0, np.empty((10, 10, 4), np.uint8), bytes(3), 1)
    with pytest.raises(ArgumentError, match="no level 3"):
        reader.read_region(3, 0, 0, out, bytes(3), 1)
    with pytest.raises(ArgumentError, match="no level 2"):
        reader.plan(2, 0, 0, 10, 10)
    where = np.array([[0, 0, 0, 0], [1, 0, 0, 0]], np.int64)
    batch = np.empty((2, 10, 10, 3), np.uint8)
    with pytest.raises(ArgumentError, match="reader or level"):
        _native.read_batch([reader], where, batch, bytes(3), 1)
    with pytest.raises(ArgumentError, match="no level 5"):
        _native.read_batch([reader], np.array([[0, 5, 0, 0]], np.int64), batch[:1], bytes(3), 1)
    with pytest.raises(ArgumentError, match="fill value"):
        _native.read_batch([reader], where[:1], batch[:1], bytes(2), 1)
    with pytest.raises(ArgumentError, match="unknown cache type"):
        _native.cache_configure("lru", 1 << 20, 0, True, "")
    with pytest.raises(wsiarray.ArgumentError):
        reader.fetch(0, 0, 0, -5, 5)
    reader.close()
