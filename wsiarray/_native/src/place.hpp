// The placer: puts decoded pixels where a plan says. Fills the parts of the
// output outside the image, copies the covered part of a decoded tile (in
// one piece or split in cache pages) into the output, scattering a plane's
// samples into interleaved pixels, and faults output rows in ahead of the
// decoders. Also the inverse for callers that want channels first: gathering
// interleaved pixels into planes.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "../codecs/codecs.hpp"
#include "cache.hpp"
#include "plan.hpp"

namespace wsi {

// The output of one request: `height` rows of `pitch` bytes, each holding
// `width` pixels of g.pixel_bytes() bytes.
struct Output {
  uint8_t* base = nullptr;
  size_t pitch = 0;
  uint32_t width = 0;
  uint32_t height = 0;
  size_t pixel_bytes = 0;
};

// Writes the fill pixel (pixel_bytes bytes) to every rectangle.
void fill_rects(const Output& out, const std::vector<Rect>& rects, const uint8_t* pixel);

// Where the covered part of `tile` starts in the output (its plane's first sample).
inline uint8_t* tile_origin(const Output& out, const PlanTile& tile, const LevelGeometry& g) {
  return out.base + size_t(tile.out_y) * out.pitch + size_t(tile.out_x) * out.pixel_bytes +
         size_t(tile.plane) * g.plane_bytes();
}

// The output as a decode target for the covered window of a single-plane
// tile: a whole tile decodes straight into the output.
inline TileTarget output_target(const Output& out, const PlanTile& tile, const LevelGeometry& g) {
  return TileTarget{tile_origin(out, tile, g), out.pitch, nullptr, tile.in_tile.x, tile.in_tile.y,
                    tile.in_tile.width, tile.in_tile.height};
}

// Copies the covered part of a decoded tile (laid out as g's tiles, one
// plane) to the output.
void place_tile(const Output& out, const PlanTile& tile, const LevelGeometry& g, const TileView& decoded);

// The same for a tile placed in pieces (PlanTile::piece_count), or in one.
void place_pieces(const Output& out, const Plan& plan, const PlanTile& tile, const LevelGeometry& g,
                  const TileView& decoded);

// Faults in output rows [top, bottom) with one madvise when they span at
// least 4 MiB, instead of a page fault per 4 KiB as decoders first write
// them. Best effort.
void prefault_rows(const Output& out, uint32_t top, uint32_t bottom);

// Copies the first `planes` samples (`sample_bytes` each) of `count` packed
// pixels (`pixel_bytes` each) at `src` into planes: plane k, at
// dst + k * plane_pitch, holds sample k of every pixel, packed. One-byte
// samples of 3- and 4-byte pixels use SSSE3 shuffles where the CPU has them.
void pixels_to_planes(const uint8_t* src, size_t count, size_t pixel_bytes, size_t sample_bytes, size_t planes,
                      uint8_t* dst, size_t plane_pitch);

}  // namespace wsi
