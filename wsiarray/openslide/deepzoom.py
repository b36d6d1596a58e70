"""Deep Zoom tiles of a slide, with openslide-python's ``DeepZoomGenerator`` API and tile geometry.

A Deep Zoom pyramid halves the image (rounding up) from full size down to 1x1;
each Deep Zoom level is cut into ``tile_size`` tiles that overlap their
neighbours by ``overlap`` pixels on every inner edge. A tile is read from the
slide level that :meth:`~wsiarray.openslide.AbstractSlide.get_best_level_for_downsample`
picks for the Deep Zoom level's downsample, resized with Lanczos when that level
is not exactly the Deep Zoom level's size, and composited on
``openslide.background-color`` (white by default). With ``limit_bounds`` the
pyramid covers only the ``openslide.bounds-*`` rectangle, when the slide has one.

Works with any slide object of the openslide API (``wsiarray.openslide`` or
openslide-python's).

Example:
    >>> import wsiarray.openslide as openslide
    >>> from wsiarray.openslide.deepzoom import DeepZoomGenerator
    >>> dz = DeepZoomGenerator(openslide.OpenSlide(path), tile_size=254, overlap=1)
    >>> dz.level_count, dz.level_tiles[-1], dz.level_dimensions[-1]
    (11, (4, 4), (1000, 763))
    >>> dz.get_tile(10, (3, 3)).size  # the bottom-right tile: what is left, plus the overlap
    (239, 2)
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from PIL import Image

from . import (
    PROPERTY_NAME_BACKGROUND_COLOR,
    PROPERTY_NAME_BOUNDS_HEIGHT,
    PROPERTY_NAME_BOUNDS_WIDTH,
    PROPERTY_NAME_BOUNDS_X,
    PROPERTY_NAME_BOUNDS_Y,
)

if TYPE_CHECKING:
    from . import AbstractSlide

__all__ = ["DeepZoomGenerator"]

#: The XML namespace of a ``.dzi`` file.
DZI_NAMESPACE = "http://schemas.microsoft.com/deepzoom/2008"


class DeepZoomGenerator:
    """Deep Zoom tiles and ``.dzi`` metadata for ``osr``.

    ``tile_size`` is the tile edge without overlap (``tile_size + 2 * overlap`` a
    power of two suits viewers best), ``overlap`` the pixels added on each inner
    edge, ``limit_bounds`` restricts the pyramid to the slide's non-empty bounds.
    """

    def __init__(self, osr: AbstractSlide, tile_size: int = 254, overlap: int = 1,
                 limit_bounds: bool = False) -> None:
        self._osr = osr
        self._tile_size = tile_size
        self._overlap = overlap
        self._limit_bounds = limit_bounds
        properties = osr.properties
        level_dimensions = osr.level_dimensions
        width0, height0 = level_dimensions[0]
        if limit_bounds:
            # the bounds rectangle in level-0 pixels; a slide without it keeps its full size
            self._l0_offset = (int(properties.get(PROPERTY_NAME_BOUNDS_X, 0)),
                               int(properties.get(PROPERTY_NAME_BOUNDS_Y, 0)))
            scale_x = int(properties.get(PROPERTY_NAME_BOUNDS_WIDTH, width0)) / width0
            scale_y = int(properties.get(PROPERTY_NAME_BOUNDS_HEIGHT, height0)) / height0
            self._l_dimensions = tuple((math.ceil(w * scale_x), math.ceil(h * scale_y))
                                       for w, h in level_dimensions)
        else:
            self._l0_offset = (0, 0)
            self._l_dimensions = tuple(level_dimensions)
        # Deep Zoom levels: halve (rounding up) from level 0's size to 1x1, then smallest first
        size = self._l_dimensions[0]
        z_dimensions = [size]
        while size[0] > 1 or size[1] > 1:
            size = (max(1, math.ceil(size[0] / 2)), max(1, math.ceil(size[1] / 2)))
            z_dimensions.append(size)
        self._z_dimensions = tuple(reversed(z_dimensions))
        self._tiles = tuple((math.ceil(w / tile_size), math.ceil(h / tile_size))
                            for w, h in self._z_dimensions)
        count = len(self._z_dimensions)
        # per Deep Zoom level: its downsample from level 0, the slide level it is read from,
        # and that level's downsample from the Deep Zoom level
        l0_z_downsamples = [2.0 ** (count - 1 - z) for z in range(count)]
        self._slide_levels = tuple(osr.get_best_level_for_downsample(d) for d in l0_z_downsamples)
        downsamples = osr.level_downsamples
        self._l0_l_downsamples = tuple(downsamples)
        self._l_z_downsamples = tuple(d / downsamples[level]
                                      for d, level in zip(l0_z_downsamples, self._slide_levels, strict=True))
        self._background = "#" + properties.get(PROPERTY_NAME_BACKGROUND_COLOR, "ffffff")

    def __repr__(self) -> str:
        return (f"{type(self).__name__}({self._osr!r}, tile_size={self._tile_size!r}, "
                f"overlap={self._overlap!r}, limit_bounds={self._limit_bounds!r})")

    @property
    def level_count(self) -> int:
        """The number of Deep Zoom levels."""
        return len(self._z_dimensions)

    @property
    def level_tiles(self) -> tuple[tuple[int, int], ...]:
        """``(tiles across, tiles down)`` of each Deep Zoom level, smallest level first."""
        return self._tiles

    @property
    def level_dimensions(self) -> tuple[tuple[int, int], ...]:
        """``(width, height)`` of each Deep Zoom level, smallest level first."""
        return self._z_dimensions

    @property
    def tile_count(self) -> int:
        """The number of tiles in the pyramid.

        Example:
            >>> import wsiarray.openslide as openslide
            >>> from wsiarray.openslide.deepzoom import DeepZoomGenerator
            >>> DeepZoomGenerator(openslide.OpenSlide(path)).tile_count
            29
        """
        return sum(across * down for across, down in self._tiles)

    def get_dzi(self, format: str) -> str:
        """The ``.dzi`` XML of the pyramid; ``format`` is the tiles' file type (``"jpeg"``, ``"png"``).

        Example:
            >>> import wsiarray.openslide as openslide
            >>> from wsiarray.openslide.deepzoom import DeepZoomGenerator
            >>> print(DeepZoomGenerator(openslide.OpenSlide(path)).get_dzi("jpeg"))
            <Image TileSize="254" Overlap="1" Format="jpeg" xmlns="..."><Size ... Height="763" /></Image>
        """
        from xml.sax.saxutils import quoteattr

        width, height = self._l_dimensions[0]
        return (f'<Image TileSize={quoteattr(str(self._tile_size))} Overlap={quoteattr(str(self._overlap))} '
                f'Format={quoteattr(str(format))} xmlns="{DZI_NAMESPACE}">'
                f'<Size Width="{width}" Height="{height}" /></Image>')

    def _tile_info(self, level: int, address: tuple[int, int]
                   ) -> tuple[tuple[tuple[int, int], int, tuple[int, int]], tuple[int, int]]:
        """``((level-0 location, slide level, size in that level), size of the Deep Zoom tile)``."""
        if not 0 <= level < len(self._z_dimensions):
            raise ValueError("Invalid level")
        tiles = self._tiles[level]
        if len(address) != 2 or not all(0 <= t < limit for t, limit in zip(address, tiles, strict=True)):
            raise ValueError("Invalid address")
        slide_level = self._slide_levels[level]
        l_z = self._l_z_downsamples[level]
        l0_l = self._l0_l_downsamples[slide_level]
        l_limits = self._l_dimensions[slide_level]
        location, l_size, z_size = [], [], []
        for axis in (0, 1):
            t = address[axis]
            before = self._overlap if t != 0 else 0
            after = self._overlap if t != tiles[axis] - 1 else 0
            # the tile in Deep Zoom pixels: its share of the level plus the overlaps
            z_start = self._tile_size * t
            z_extent = min(self._tile_size, self._z_dimensions[level][axis] - z_start) + before + after
            # the same tile in the slide level's pixels, and at level 0
            l_start = l_z * (z_start - before)
            location.append(int(l0_l * l_start + self._l0_offset[axis]))
            l_size.append(min(math.ceil(l_z * z_extent), l_limits[axis] - math.ceil(l_start)))
            z_size.append(z_extent)
        return ((location[0], location[1]), slide_level, (l_size[0], l_size[1])), (z_size[0], z_size[1])

    def get_tile_coordinates(self, level: int, address: tuple[int, int]
                             ) -> tuple[tuple[int, int], int, tuple[int, int]]:
        """The ``read_region`` arguments ``(location, level, size)`` of a tile.

        Example:
            >>> import wsiarray.openslide as openslide
            >>> from wsiarray.openslide.deepzoom import DeepZoomGenerator
            >>> DeepZoomGenerator(openslide.OpenSlide(path)).get_tile_coordinates(9, (1, 0))
            ((506, 0), 1, (246, 256))
        """
        return self._tile_info(level, address)[0]

    def get_tile_dimensions(self, level: int, address: tuple[int, int]) -> tuple[int, int]:
        """``(width, height)`` of a tile.

        Example:
            >>> import wsiarray.openslide as openslide
            >>> from wsiarray.openslide.deepzoom import DeepZoomGenerator
            >>> DeepZoomGenerator(openslide.OpenSlide(path)).get_tile_dimensions(9, (1, 1))
            (247, 129)
        """
        return self._tile_info(level, address)[1]

    def get_tile(self, level: int, address: tuple[int, int]) -> Image.Image:
        """The RGB tile at ``address`` ``(column, row)`` of Deep Zoom level ``level``."""
        (location, slide_level, l_size), z_size = self._tile_info(level, address)
        tile = self._osr.read_region(location, slide_level, l_size)
        # composite on the background first, then shrink (openslide-python's order: the
        # shrink then sees opaque pixels, which matters where the tile is transparent)
        out = Image.new("RGB", tile.size, self._background)
        out.paste(tile, None, tile)
        if out.size != z_size:
            # shrink keeping the aspect ratio, as openslide-python does, so a tile can come
            # out a pixel smaller than get_tile_dimensions says
            out.thumbnail(z_size, Image.Resampling.LANCZOS)
        profile = tile.info.get("icc_profile")
        if profile:
            out.info["icc_profile"] = profile
        return out
