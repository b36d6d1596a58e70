"""The decode stage: one batched nvImageCodec call per request into a preallocated output.

A request is one region, a batch of patches (one ``(N, H, W, C)`` output) or a dask
chunk: a list of ``(native reader, level, x, y)`` in level pixels, all of one size.

For each region of a level the native engine can hand out as JPEG streams
(``Reader.jpeg_streams_problem(level) == ""``), ``Reader.jpeg_streams`` plans it, reads
its tiles (GIL released), checks every tile's header against the TIFF and returns each
tile as a standalone JPEG (tables spliced in, Adobe APP14 on RGB-coded tiles) with its
placement. Then, per request:

1. the output is allocated on the target and filled with the fill pixel (the parsed
   ``fill=``: the one rule every read uses);
2. every stream of every region goes into one ``Decoder.decode`` call: a tile wholly
   inside its region decodes straight into its window of the output (rows padded to
   the output's pitch); an edge tile (partly covered, or a frame smaller than the tile)
   decodes into a zeroed scratch tile, whose covered part is then copied;
3. never-written tiles are black (zeros) or, where the format says missing tiles are
   background, the fill: the CPU path's rule, from the native ``kind``.

Regions of other levels (deflate, LZW, raw, JPEG 2000 via imagecodecs, planar or placed
levels, other sample types) are read by the native CPU path into host memory and copied
up in one copy per request: exact by construction. Raw levels can instead be read into
GPU memory with kvikio (:mod:`.raw`, ``WSIARRAY_GPU_KVIKIO=1``; off until measured).

Python work is per request and per region, not per tile, except for building the lists
nvImageCodec's list API takes (its ``CodeStream`` and ``as_image`` objects, one list
comprehension each) and the copies of edge and never-written tiles (the tiles on a
region's border).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ..errors import TileDecodeError
from . import raw
from .codec import GPU_DECODER_THREADS, decoder, nvimgcodec
from .device import Target, upload

#: One region of a request: the native reader, the level and the region's top-left in level pixels.
Where = tuple[Any, int, int, int]

#: Values of ``Reader.jpeg_streams``' ``kind``.
STREAM, ZEROS = 0, 1


def _decodable(where: Where, dtype: np.dtype) -> bool:
    reader, level = where[0], where[1]
    return dtype == np.uint8 and reader.jpeg_streams_problem(level) == ""


def read_requests(target: Target, requests: Sequence[Where], width: int, height: int, fill: bytes,
                  dtype: Any, channels: int, workers: int) -> Any:
    """Read every region of ``requests`` into one ``(N, height, width, channels)`` array on ``target``.

    ``fill`` is one pixel's bytes (``_request.parse_fill``); ``workers`` the native threads
    that read and splice (and, on the CPU backend, nvImageCodec's decode threads).

    Example:
        >>> out = read_requests(Target(np, "cpu", None), [(reader, 0, 0, 0)], 256, 256,  # doctest: +SKIP
        ...                     bytes(3), np.uint8, 3, 1)
    """
    dtype = np.dtype(dtype)
    count = len(requests)
    decodable = [_decodable(w, dtype) for w in requests]
    use_raw = target.on_gpu and raw.enabled()
    if count == 0 or width == 0 or height == 0 or not (any(decodable) or use_raw):
        return upload(_host_read(requests, width, height, fill, dtype, channels, workers), target)
    threads = max(1, workers) if not target.on_gpu else GPU_DECODER_THREADS
    nv = nvimgcodec()
    exports = [w[0].jpeg_streams(w[1], w[2], w[3], width, height, workers) if ok else None
               for w, ok in zip(requests, decodable, strict=True)]
    with target.running() as stream:
        xp = target.xp
        out = target.empty((count, height, width, channels), dtype)
        pixels = out.view(np.uint8).reshape(count, height, width, -1)
        pixels[...] = xp.asarray(np.frombuffer(fill, np.uint8))
        codes: list[Any] = []
        images: list[Any] = []
        owners: list[tuple[int, int]] = []  # (request, tile) of each stream, for messages
        edges: list[tuple[Any, int, np.ndarray, np.ndarray]] = []
        for i, export in enumerate(exports):
            if export is None:
                if use_raw and raw.read_raw(target, requests[i][0], *requests[i][1:], pixels[i]):
                    continue
                host = _host_read([requests[i]], width, height, fill, dtype, channels, workers)
                out[i] = host[0] if not target.on_gpu else xp.asarray(host[0])
                continue
            _add_request(xp, nv, out[i], export, codes, images, owners, edges, i)
        if codes:
            kwargs = {"cuda_stream": stream.ptr} if stream is not None else {}
            decoded = decoder(target.backend, target.index, threads).decode(codes, images=images, **kwargs)
            failed = [k for k, image in enumerate(decoded) if image is None]
            if failed:
                request, tile = owners[failed[0]]
                where, export = requests[request], exports[request]
                raise TileDecodeError(
                    f"{where[0].path}: level {where[1]}, tile ({int(export['tx'][tile])}, "
                    f"{int(export['ty'][tile])}): nvImageCodec ({target.backend}) could not decode it")
        for view, _, scratch, rects in edges:
            for k, (tx, ty, w, h, ox, oy) in enumerate(rects):
                view[oy:oy + h, ox:ox + w] = scratch[k, ty:ty + h, tx:tx + w]
        return out


def _add_request(xp: Any, nv: Any, view: Any, export: dict[str, Any], codes: list[Any], images: list[Any],
                 owners: list[tuple[int, int]], edges: list[Any], request: int) -> None:
    """Queue one region's streams: whole tiles into ``view`` (its output), edge tiles into scratch."""
    kind = export["kind"]
    frames = export["frames"].astype(np.int64)
    tile_rect = export["tile_rect"].astype(np.int64)
    out_rect = export["out_rect"].astype(np.int64)
    for ox, oy, w, h in out_rect[kind == ZEROS]:  # never written, black (rare: sparse layouts)
        view[oy:oy + h, ox:ox + w] = 0
    streams = np.flatnonzero(kind == STREAM)
    if len(streams) == 0:
        return
    full = (tile_rect[streams, 2] == frames[streams, 0]) & (tile_rect[streams, 3] == frames[streams, 1])
    direct = streams[export["whole"][streams].astype(bool) & full]
    edge = streams[~np.isin(streams, direct)]
    data, spans = export["data"], export["spans"].astype(np.int64)
    tile_w = int(frames[streams, 0].max())
    tile_h = int(frames[streams, 1].max())
    scratch = xp.zeros((len(edge), tile_h, tile_w, view.shape[2]), view.dtype) if len(edge) else None
    order = np.concatenate([direct, edge])
    codes.extend([nv.CodeStream(data[s:s + n]) for s, n in spans[order]])
    images.extend(
        [nv.as_image(view[oy:oy + h, ox:ox + w]) for ox, oy, w, h in out_rect[direct]]
        + [nv.as_image(scratch[k, :fh, :fw]) for k, (fw, fh) in enumerate(frames[edge])])
    owners.extend((request, int(t)) for t in order)
    if len(edge):
        rects = np.concatenate([tile_rect[edge], out_rect[edge, :2]], axis=1)
        edges.append((view, request, scratch, rects))


def _host_read(requests: Sequence[Where], width: int, height: int, fill: bytes, dtype: np.dtype,
               channels: int, workers: int) -> np.ndarray:
    """The native CPU path into host memory: levels the GPU decoder does not take."""
    host = np.empty((len(requests), height, width, channels), dtype)
    if host.size:
        pixels = host.view(np.uint8).reshape(len(requests), height, width, -1)
        for i, (reader, level, x, y) in enumerate(requests):
            reader.read_region(level, x, y, pixels[i], fill, workers)
    return host
