"""The GPU device check of issue 11: pixels and throughput of ``device="cuda"`` against the CPU path.

One command, made to finish in about 6 minutes on one H200 (16 cores)::

    python -m benchmarks.gpu_check --slides DIR --out gpu_check.json

``--backend`` picks nvImageCodec's decoder (``hw``, ``cuda``, ``hybrid``; default: each
of them for the pixel check, ``--throughput-backend`` for the timings). ``--backend cpu``
is the dry run: nvImageCodec's CPU backend into NumPy, small sizes, no CuPy or GPU
needed, so the script itself is exercised on any machine (its numbers say nothing about
a GPU). ``tools/pack_gpu_check.sh`` packs this script with the wheels and slides it
needs for a GPU machine without network.

What it measures (a Markdown table on stdout, everything in the JSON):

1. **Pixels**: every level of every slide given (JPEG, JPEG 2000, deflate, ...) read whole
   with ``device="cuda"`` and ``"cpu"``: max and mean |diff|, fraction of pixels that
   differ. For RGB-coded JPEG levels (Aperio) both colour fixes, decoded tile by tile:
   the Adobe APP14 segment wsiarray inserts, and ``ColorSpec.SYCC`` ("no conversion")
   on the stream without it; and 64 random 224-px patches per JPEG level (their partly
   covered tiles are decoded by region of interest).
2. **Throughput** against the CPU path on ``--threads`` threads, in megapixels per
   second, with the CPU cores busy during each (process CPU time / wall time):
   ``--patches`` random 224-px patches in batches of 64; a whole level 0 of a synthetic
   19920x26420 JPEG slide (``device="cuda"``, and a CPU read followed by
   ``cupy.asarray``); ``to_dask(0, device="cuda").sum().compute()``; a raw level read
   with kvikio (``WSIARRAY_GPU_KVIKIO=1``) against ``pread`` + one copy.

The synthetic slides are written with tifffile from tiles encoded by imagecodecs, or by
nvImageCodec's encoder where imagecodecs is missing (the GPU machine has none).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import tifffile

import wsiarray

#: Environment the GPU stage reads (wsiarray._request).
BACKEND_ENV = "WSIARRAY_GPU_BACKEND"
KVIKIO_ENV = "WSIARRAY_GPU_KVIKIO"
ADOBE_BYTES = 16  # FF EE, length 14, "Adobe", version, flags0, flags1, transform


# -- slides ---------------------------------------------------------------------------------


def _texture_tiles(count: int, tile: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:tile, 0:tile].astype(np.float32) / tile
    tiles = []
    for _ in range(count):
        f = rng.uniform(2, 9, 3)
        phase = rng.uniform(0, 6.3, 3)
        rgb = [np.sin(f[c] * 6.3 * xx + phase[c]) * np.cos(f[(c + 1) % 3] * 6.3 * yy) for c in range(3)]
        base = (np.stack(rgb, -1) * 60 + 170 + rng.normal(0, 12, (tile, tile, 3))).clip(0, 255)
        tiles.append(base.astype(np.uint8))
    return tiles


def _encoder() -> Callable[[np.ndarray], bytes]:
    try:
        import imagecodecs

        return lambda a: bytes(imagecodecs.jpeg8_encode(a, level=90))
    except ImportError:
        from nvidia import nvimgcodec

        encoder = nvimgcodec.Encoder()
        params = nvimgcodec.EncodeParams(quality_value=90)
        return lambda a: bytes(encoder.encode(a, "jpeg", params))


def write_jpeg_slide(path: Path, width: int, height: int, tile: int = 256) -> Path:
    """A JPEG slide of ``width x height`` whose tiles are a few dozen textures, repeated."""
    if path.exists():
        return path
    encode = _encoder()
    streams = [encode(t) for t in _texture_tiles(64, tile)]
    across, down = -(-width // tile), -(-height // tile)
    order = (np.arange(across * down) * 7919) % len(streams)
    tmp = path.with_suffix(".tmp")
    tifffile.imwrite(tmp, data=(streams[i] for i in order), shape=(height, width, 3), dtype=np.uint8,
                     tile=(tile, tile), compression="jpeg", photometric="ycbcr", subsampling=(2, 2),
                     bigtiff=True)
    tmp.replace(path)
    return path


def write_raw_slide(path: Path, width: int, height: int, tile: int = 512) -> Path:
    """An uncompressed RGB slide (the kvikio measurement)."""
    if not path.exists():
        tiles = _texture_tiles(16, tile, seed=1)
        across, down = -(-width // tile), -(-height // tile)
        tifffile.imwrite(path, data=(tiles[i % 16] for i in range(across * down)), shape=(height, width, 3),
                         dtype=np.uint8, tile=(tile, tile), photometric="rgb", bigtiff=True)
    return path


def write_deflate_slide(path: Path, width: int = 2000, height: int = 1500) -> Path:
    if not path.exists():
        image = np.concatenate([np.concatenate(_texture_tiles(8, 250, seed=2), 1)] * 6, 0)[:height, :width]
        tifffile.imwrite(path, image, tile=(256, 256), compression="zlib", photometric="rgb")
    return path


# -- measuring ------------------------------------------------------------------------------


def _to_host(array: Any) -> np.ndarray:
    return array.get() if hasattr(array, "get") else np.asarray(array)


def _sync() -> None:
    if "cupy" in sys.modules:
        sys.modules["cupy"].cuda.runtime.deviceSynchronize()


def timed(fn: Callable[[], Any], repeats: int = 3) -> tuple[float, float]:
    """Best wall time of ``repeats`` runs, and the CPU cores busy in that run."""
    best, busy = float("inf"), 0.0
    for _ in range(repeats):
        before = resource.getrusage(resource.RUSAGE_SELF)
        start = time.perf_counter()
        fn()
        _sync()
        wall = time.perf_counter() - start
        after = resource.getrusage(resource.RUSAGE_SELF)
        cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
        if wall < best:
            best, busy = wall, cpu / wall
    return best, busy


def diff_stats(got: np.ndarray, want: np.ndarray) -> dict[str, float]:
    d = np.abs(got.astype(np.int16) - want.astype(np.int16))
    return {"max": int(d.max()) if d.size else 0, "mean": float(d.mean()) if d.size else 0.0,
            "fraction": float((d.reshape(-1, d.shape[-1]).max(1) > 0).mean()) if d.size else 0.0}


def colour_fixes(slide: wsiarray.Slide, level: int, backend: str, most: int = 64) -> dict[str, Any]:
    """Per tile: the APP14 stream as given, and the same stream without it decoded as SYCC."""
    from nvidia import nvimgcodec

    from wsiarray._cuda.codec import decoder

    native = slide._opened().native
    width, height = slide.level_dimensions[level]
    streams = native.jpeg_streams(level, 0, 0, width, height, 4)
    picked = np.flatnonzero(streams["kind"] == 0)[:most]
    tile_w, tile_h = slide.levels[level].tile_size
    raw = [bytes(streams["data"][s:s + n]) for s, n in streams["spans"][picked]]
    if not raw or raw[0][2:4] != b"\xff\xee":
        return {}
    reference = slide.read_level_region(level, (0, 0), (width, height))
    dec = decoder(backend, None if backend == "cpu" else 0, 4)
    sycc = nvimgcodec.DecodeParams(color_spec=nvimgcodec.ColorSpec.SYCC,
                                   sample_format=nvimgcodec.SampleFormat.I_YCC)
    out: dict[str, Any] = {}
    for name, codes, params in [
        ("app14", [nvimgcodec.CodeStream(r) for r in raw], None),
        ("sycc", [nvimgcodec.CodeStream(r[:2] + r[2 + ADOBE_BYTES:]) for r in raw], sycc),
    ]:
        images = dec.decode(codes, params=params) if params is not None else dec.decode(codes)
        worst: dict[str, float] = {"max": 0, "mean": 0.0, "fraction": 0.0, "failed": 0}
        for k, t in enumerate(picked):
            if images[k] is None:
                worst["failed"] += 1
                continue
            got = _to_host(images[k].cpu() if hasattr(images[k], "cpu") else images[k])
            x0, y0 = int(streams["tx"][t]) * tile_w, int(streams["ty"][t]) * tile_h
            h, w = min(got.shape[0], height - y0), min(got.shape[1], width - x0)
            stats = diff_stats(got[:h, :w, :3], reference[y0:y0 + h, x0:x0 + w])
            worst = {**worst, "max": max(worst["max"], stats["max"]),
                     "mean": max(worst["mean"], stats["mean"]),
                     "fraction": max(worst["fraction"], stats["fraction"])}
        out[name] = worst
    return out


def patch_check(slide: wsiarray.Slide, level: int, count: int = 64) -> dict[str, float]:
    """Random 224-px patches (partly covered tiles: decoded by region of interest) against the CPU."""
    width, height = slide.level_dimensions[level]
    rng = np.random.default_rng(level)
    where = np.stack([rng.integers(-100, max(1, width - 100), count), rng.integers(-100, max(1, height - 100),
                                                                                 count)], 1)
    level0 = (where * slide.level_downsamples[level]).astype(np.int64)
    got = _to_host(next(slide.read_region(level0, (224, 224), level, batch_size=count, device="cuda")))
    return diff_stats(got, next(slide.read_region(level0, (224, 224), level, batch_size=count)))


def pixel_check(paths: list[str], backends: list[str]) -> list[dict[str, Any]]:
    rows = []
    for backend in backends:
        os.environ[BACKEND_ENV] = backend
        for path in paths:
            slide = wsiarray.open(path)
            for level in range(slide.level_count):
                row: dict[str, Any] = {"slide": os.path.basename(path), "level": level, "backend": backend,
                                       "codec": slide.levels[level].compression,
                                       "gpu_jpeg": slide._opened().native.jpeg_streams_problem(level) == ""}
                try:
                    got = _to_host(slide.read_region(level=level, device="cuda", num_workers=4))
                    row.update(diff_stats(got, slide.read_region(level=level, num_workers=4)))
                    if row["gpu_jpeg"]:
                        row["colour_fixes"] = colour_fixes(slide, level, backend)
                        row["patches"] = patch_check(slide, level)
                except Exception as exc:  # recorded, not fatal: the check goes on
                    row["error"] = f"{type(exc).__name__}: {exc}"
                rows.append(row)
    return rows


def throughput(jpeg: str, raw: str | None, backend: str, threads: int, patches: int,
               on_gpu: bool) -> list[dict[str, Any]]:
    os.environ[BACKEND_ENV] = backend
    rows: list[dict[str, Any]] = []
    slide = wsiarray.open(jpeg)
    width, height = slide.level_dimensions[0]
    rng = np.random.default_rng(0)
    locations = np.stack([rng.integers(0, width - 224, patches), rng.integers(0, height - 224, patches)], 1)

    def add(what: str, device: str, pixels: int, fn: Callable[[], Any], repeats: int = 3) -> None:
        try:
            wall, busy = timed(fn, repeats)
            rows.append({"what": what, "device": device, "seconds": wall, "mpix_s": pixels / wall / 1e6,
                         "cores_busy": busy})
        except Exception as exc:
            rows.append({"what": what, "device": device, "error": f"{type(exc).__name__}: {exc}"})

    def batches(device: str) -> Callable[[], None]:
        return lambda: list(slide.read_region(locations, (224, 224), batch_size=64, num_workers=threads,
                                              device=device))

    npatch = patches * 224 * 224
    add(f"{patches} patches, batches of 64", "cpu", npatch, batches("cpu"))
    add(f"{patches} patches, batches of 64", f"cuda ({backend})", npatch, batches("cuda"))
    level = width * height
    add("whole level 0", "cpu", level, lambda: slide.read_region(level=0, num_workers=threads), 2)
    add("whole level 0", f"cuda ({backend})", level,
        lambda: slide.read_region(level=0, num_workers=threads, device="cuda"), 2)
    if on_gpu:
        import cupy

        add("whole level 0", "cpu + cupy.asarray", level,
            lambda: cupy.asarray(slide.read_region(level=0, num_workers=threads)), 2)
    add("to_dask(0).sum().compute()", "cpu", level, lambda: slide.to_dask(0).sum().compute(), 2)
    add("to_dask(0).sum().compute()", f"cuda ({backend})", level,
        lambda: slide.to_dask(0, device="cuda").sum().compute(), 2)
    if raw is not None and on_gpu:
        raw_slide = wsiarray.open(raw)
        rw, rh = raw_slide.level_dimensions[0]
        for switch in ("0", "1"):
            os.environ[KVIKIO_ENV] = switch
            add("raw level 0", "cuda, kvikio" if switch == "1" else "cuda, pread + copy", rw * rh,
                lambda: raw_slide.read_region(level=0, num_workers=threads, device="cuda"), 2)
        os.environ[KVIKIO_ENV] = "0"
    return rows


def markdown(pixels: list[dict[str, Any]], speed: list[dict[str, Any]]) -> str:
    lines = ["| slide | level | codec | backend | GPU JPEG | max | mean | fraction | APP14 max | SYCC max "
             "| patches max |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in pixels:
        fixes = r.get("colour_fixes") or {}
        if "error" in r:
            lines.append(f"| {r['slide']} | {r['level']} | {r['codec']} | {r['backend']} | {r['gpu_jpeg']} | "
                         f"error: {r['error'][:80]} | | | | | |")
            continue
        lines.append(f"| {r['slide']} | {r['level']} | {r['codec']} | {r['backend']} | {r['gpu_jpeg']} | "
                     f"{r['max']} | {r['mean']:.4f} | {r['fraction']:.4f} | "
                     f"{fixes.get('app14', {}).get('max', '')} | {fixes.get('sycc', {}).get('max', '')} | "
                     f"{r.get('patches', {}).get('max', '')} |")
    lines += ["", "| what | device | seconds | MP/s | cores busy |", "|---|---|---|---|---|"]
    for r in speed:
        if "error" in r:
            lines.append(f"| {r['what']} | {r['device']} | error: {r['error'][:80]} | | |")
        else:
            lines.append(f"| {r['what']} | {r['device']} | {r['seconds']:.3f} | {r['mpix_s']:.0f} | "
                         f"{r['cores_busy']:.1f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--slides", nargs="*", default=[], help="slides or folders for the pixel check")
    parser.add_argument("--backend", choices=["hw", "cuda", "hybrid", "cpu"], action="append",
                        help="backends for the pixel check (repeatable; default: hw, cuda, hybrid)")
    parser.add_argument("--throughput-backend", default=None, help="backend for the timings (default: first)")
    parser.add_argument("--threads", type=int, default=16)
    parser.add_argument("--patches", type=int, default=2000)
    parser.add_argument("--size", type=int, nargs=2, default=(19920, 26420), metavar=("WIDTH", "HEIGHT"))
    parser.add_argument("--work", default="/tmp/wsiarray-gpu-check", help="where synthetic slides go")
    parser.add_argument("--out", default="gpu_check.json")
    args = parser.parse_args(argv)
    backends = args.backend or ["hw", "cuda", "hybrid"]
    dry = backends == ["cpu"]
    if dry:  # the dry run: small sizes, nothing that needs a GPU
        args.size, args.patches = (2048, 1536), min(args.patches, 200)
        args.threads = min(args.threads, os.cpu_count() or 1)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    jpeg = write_jpeg_slide(work / f"jpeg-{args.size[0]}x{args.size[1]}.tif", *args.size)
    deflate = write_deflate_slide(work / "deflate.tif")
    raw = None if dry else write_raw_slide(work / "raw-8192.tif", 8192, 8192)
    paths: list[str] = []
    for entry in args.slides:
        p = Path(entry)
        if p.is_dir() and not any(f.suffix == ".dcm" for f in p.iterdir()):  # a DICOM folder is one slide
            paths += sorted(str(f) for f in p.iterdir() if f.is_file())
        else:
            paths.append(str(p))
    paths += [str(deflate), str(write_jpeg_slide(work / "jpeg-small.tif", 1000, 763))]
    readable = []
    for p in paths:
        try:
            wsiarray.open(p)
            readable.append(p)
        except wsiarray.WSIError:
            pass
    made = time.perf_counter() - started
    pixels = pixel_check(readable, backends)
    speed = throughput(str(jpeg), None if raw is None else str(raw), args.throughput_backend or backends[0],
                       args.threads, args.patches, on_gpu=not dry)
    table = markdown(pixels, speed)
    print(table)
    report = {"dry_run": dry, "backends": backends, "threads": args.threads, "slides_seconds": made,
              "total_seconds": time.perf_counter() - started, "pixels": pixels, "throughput": speed,
              "wsiarray": wsiarray.__version__, "python": sys.version}
    Path(args.out).write_text(json.dumps(report, indent=1, default=str))
    print(f"\n{len(pixels)} level checks, {len(speed)} timings in {report['total_seconds']:.0f} s; "
          f"JSON: {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
