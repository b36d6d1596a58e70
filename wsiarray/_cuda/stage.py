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
2. every stream of every region goes into one ``Decoder.decode`` call, each straight into
   its window of the output (rows padded to the output's pitch): a tile wholly inside its
   region whole, a partly covered one (an edge tile) through nvImageCodec's region of
   interest (``CodeStream.get_sub_code_stream(region=...)``): no scratch, no copy;
3. never-written tiles are black (zeros) or, where the format says missing tiles are
   background, the fill: the CPU path's rule, from the native ``kind``.

Regions of other levels (deflate, LZW, raw, JPEG 2000 via imagecodecs, planar or placed
levels, other sample types) are read by the native CPU path into host memory and copied
up in one copy per request: exact by construction. Raw levels can instead be read into
GPU memory with kvikio (:mod:`.raw`, ``WSIARRAY_GPU_KVIKIO=1``; off until measured).

The native streams of every region of a request come from one call
(``_native.jpeg_streams_batch``, GIL released). Python work is per request and per
region, not per tile, except for building the lists nvImageCodec's list API takes (its
``CodeStream`` and ``as_image`` objects, one list comprehension each) and painting
never-written tiles black.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from .. import _native
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
    jpeg = [i for i, ok in enumerate(decodable) if ok]
    export = _export([requests[i] for i in jpeg], width, height, workers) if jpeg else None
    with target.running() as stream:
        xp = target.xp
        out = target.empty((count, height, width, channels), dtype)
        pixels = out.view(np.uint8).reshape(count, height, width, -1)
        pixels[...] = xp.asarray(np.frombuffer(fill, np.uint8))
        for i, ok in enumerate(decodable):  # levels the GPU decoder does not take
            if ok or (use_raw and raw.read_raw(target, requests[i][0], *requests[i][1:], pixels[i])):
                continue
            host = _host_read([requests[i]], width, height, fill, dtype, channels, workers)
            out[i] = host[0] if not target.on_gpu else xp.asarray(host[0])
        if export is not None:
            codes, images, owners = _queue(nv, out, export, np.asarray(jpeg, np.int64))
            if codes:
                kwargs = {"cuda_stream": stream.ptr} if stream is not None else {}
                decode = decoder(target.backend, target.index, threads).decode
                decoded = decode(codes, images=images, **kwargs)
                failed = [k for k, image in enumerate(decoded) if image is None]
                if failed:
                    tile = owners[failed[0]]
                    where = requests[jpeg[int(export["request"][tile])]]
                    raise TileDecodeError(
                        f"{where[0].path}: level {where[1]}, tile ({int(export['tx'][tile])}, "
                        f"{int(export['ty'][tile])}): nvImageCodec ({target.backend}) could not decode it")
        return out


def _export(requests: Sequence[Where], width: int, height: int, workers: int) -> dict[str, Any]:
    """The native streams of every region, in one call (``_native.jpeg_streams_batch``)."""
    readers: dict[int, tuple[int, Any]] = {}
    for where in requests:
        readers.setdefault(id(where[0]), (len(readers), where[0]))
    table = np.array([(readers[id(w[0])][0], w[1], w[2], w[3]) for w in requests], np.int64).reshape(-1, 4)
    return _native.jpeg_streams_batch([r for _, r in readers.values()], table, width, height, workers)


def _queue(nv: Any, out: Any, export: dict[str, Any], slots: np.ndarray) -> tuple[list[Any], list[Any], Any]:
    """The code streams and output windows of every tile, for one ``decode`` call.

    A tile the region covers wholly, with a frame of the full tile, decodes whole into its
    window of the output; a partly covered one decodes only its covered window
    (``get_sub_code_stream(region=...)``), also straight into the output (exact on
    nvImageCodec's CPU backend, like the native decoder's cropped decode; to be confirmed
    on GPU decoders by ``benchmarks/gpu_check.py``). Never-written tiles are painted here:
    black (kind 1); the fill (kind 2) is already there.
    """
    kind = export["kind"]
    region = slots[export["request"].astype(np.int64)]  # each tile's slot in the output
    tile_rect = export["tile_rect"].astype(np.int64)
    out_rect = export["out_rect"].astype(np.int64)
    for r, (ox, oy, w, h) in zip(region[kind == ZEROS], out_rect[kind == ZEROS], strict=True):
        out[r, oy:oy + h, ox:ox + w] = 0  # never written, black (rare: sparse layouts)
    streams = np.flatnonzero(kind == STREAM)
    frames = export["frames"].astype(np.int64)
    whole = (tile_rect[:, 0] == 0) & (tile_rect[:, 1] == 0) & (tile_rect[:, 2] == frames[:, 0]) \
        & (tile_rect[:, 3] == frames[:, 1])
    data, spans = export["data"], export["spans"].astype(np.int64)
    # One row per stream: start, length, whole?, slot, window in the tile, window in the output.
    rows = np.concatenate([spans[streams], whole[streams, None], region[streams, None], tile_rect[streams],
                           out_rect[streams, :2]], axis=1).tolist()
    # nvImageCodec's list API takes one Python object per stream: the unavoidable per-tile work.
    codes = [nv.CodeStream(data[s:s + n]) if full else
             nv.CodeStream(data[s:s + n]).get_sub_code_stream(region=nv.Region(ty, tx, ty + h, tx + w))
             for s, n, full, _, tx, ty, w, h, _, _ in rows]
    images = [nv.as_image(out[r, oy:oy + h, ox:ox + w]) for _, _, _, r, _, _, w, h, ox, oy in rows]
    return codes, images, streams


def _host_read(requests: Sequence[Where], width: int, height: int, fill: bytes, dtype: np.dtype,
               channels: int, workers: int) -> np.ndarray:
    """The native CPU path into host memory: levels the GPU decoder does not take."""
    host = np.empty((len(requests), height, width, channels), dtype)
    if host.size:
        pixels = host.view(np.uint8).reshape(len(requests), height, width, -1)
        for i, (reader, level, x, y) in enumerate(requests):
            reader.read_region(level, x, y, pixels[i], fill, workers)
    return host
