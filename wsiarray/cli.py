"""Command line: ``wsiarray info SLIDE`` and ``wsiarray convert SLIDE OUT.zarr``.

Example:
    $ wsiarray info CMU-1-Small-Region.svs
    $ wsiarray convert CMU-1-Small-Region.svs CMU-1-Small-Region.ome.zarr
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from .errors import WSIError
from .slide import Slide
from .slide import open as open_slide

__all__ = ["describe", "main"]


def describe(slide: Slide) -> str:
    """A human-readable summary of ``slide``: vendor, levels, pixel size, associated images.

    Example:
        >>> print(describe(wsiarray.open(svs_path)))
        file:        .../small.svs
        vendor:      aperio
        pixels:      uint8, 3 channel(s) R,G,B
        mpp:         0.25 x 0.25 um/px
        objective:   40x
        levels:
          level  width  height  downsample     tile  compression  decoder
              0   1024     768           1  256x256         JPEG   native
              1    512     384           2  256x256         JPEG   native
        associated images:
          thumbnail: 256x192
          label: 100x80
          macro: 300x120
    """
    mpp = f"{slide.mpp[0]:g} x {slide.mpp[1]:g} um/px" if slide.mpp else "unknown"
    power = f"{slide.objective_power:g}x" if slide.objective_power else "unknown"
    lines = [
        f"file:        {slide.path}",
        f"vendor:      {slide.vendor}",
        f"pixels:      {slide.dtype}, {slide.channels} channel(s) {','.join(slide.channel_names)}",
        f"mpp:         {mpp}",
        f"objective:   {power}",
        "levels:",
    ]
    header = ("level", "width", "height", "downsample", "tile", "compression", "decoder")
    rows = [
        (
            str(level.index),
            str(level.width),
            str(level.height),
            f"{level.downsample:.4g}",
            f"{level.tile_width}x{level.tile_height}",
            level.compression,
            "native" if level.native_codec else "imagecodecs",
        )
        for level in slide.levels
    ]
    widths = [max(len(r[i]) for r in (header, *rows)) for i in range(len(header))]
    for row in (header, *rows):
        lines.append("  " + "  ".join(cell.rjust(w) for cell, w in zip(row, widths, strict=False)))
    associated = slide.associated_images
    if associated:
        lines.append("associated images:")
        for name in associated:
            image = associated[name]
            lines.append(f"  {name}: {image.shape[1]}x{image.shape[0]}")
    else:
        lines.append("associated images: none")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``wsiarray`` command."""
    parser = argparse.ArgumentParser(prog="wsiarray", description="Whole-slide image tools.")
    commands = parser.add_subparsers(dest="command", required=True)
    info = commands.add_parser("info", help="describe a slide: vendor, levels, pixel size")
    info.add_argument("slide", help="path to a slide file")
    info.add_argument("--properties", action="store_true", help="also list every metadata property")
    convert = commands.add_parser(
        "convert", help="write a slide as an OME-Zarr pyramid (NGFF 0.5, Zarr v3)"
    )
    convert.add_argument("slide", help="path to a slide file")
    convert.add_argument("out", help="output folder, e.g. slide.ome.zarr")
    convert.add_argument("--levels", type=int, nargs="+", metavar="N", help="levels to write (default: all)")
    convert.add_argument("--chunk-size", type=int, default=None, metavar="PX",
                         help="Zarr chunk side in pixels, rounded to whole tiles (default: about 1024)")
    convert.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    bar = convert.add_mutually_exclusive_group()
    bar.add_argument("--progress", dest="progress", action="store_true", default=None,
                     help="show a progress bar (default: when stderr is a terminal)")
    bar.add_argument("--no-progress", dest="progress", action="store_false", help="never show a progress bar")
    args = parser.parse_args(argv)

    if args.command == "convert":
        return _convert(args)

    if args.command == "info":
        try:
            with open_slide(args.slide) as slide:
                print(describe(slide))
                if args.properties:
                    print("properties:")
                    for key in sorted(slide.properties):
                        print(f"  {key} = {slide.properties[key]}")
        except WSIError as exc:
            print(f"wsiarray: {exc}", file=sys.stderr)
            return 1
    return 0


def _convert(args: argparse.Namespace) -> int:
    from .zarr_export import DEFAULT_ZARR_CHUNK, to_zarr

    try:
        with open_slide(args.slide) as slide:
            group = to_zarr(
                slide,
                args.out,
                levels=args.levels,
                chunks=args.chunk_size or DEFAULT_ZARR_CHUNK,
                overwrite=args.overwrite,
                progress=args.progress,
            )
            keys = sorted(group.array_keys(), key=int)
            arrays = ", ".join(f"{key} {tuple(group[key].shape)}" for key in keys)
            print(f"wrote {args.out}: {arrays}")
    except WSIError as exc:
        print(f"wsiarray: {exc}", file=sys.stderr)
        return 1
    except FileExistsError as exc:
        print(f"wsiarray: {args.out}: {exc} (use --overwrite to replace it)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
