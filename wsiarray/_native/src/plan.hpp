// The planner: turns a region request into plain data (which tiles, which
// merged byte ranges, where each tile lands in the output, what is fill).
// Pure: no file, no decoder, no cache; testable from Python through
// _engine.plan_region.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace wsi {

// Adjacent tiles are fetched with one pread up to this many bytes.
constexpr uint64_t kMaxRunBytes = 4u << 20;
// No tile stream (and no decoded tile) may be larger.
constexpr uint64_t kMaxTileBytes = 256u << 20;
// At most this many samples per pixel, and planes.
constexpr uint32_t kMaxSamples = 64;

// A level's pixel and tile geometry.
struct LevelGeometry {
  uint32_t width = 0;
  uint32_t height = 0;
  uint32_t tile_width = 0;
  uint32_t tile_height = 0;
  uint32_t planes = 1;
  uint32_t samples_per_plane = 1;
  uint32_t bytes_per_sample = 1;

  uint32_t tiles_across() const { return (width + tile_width - 1) / tile_width; }
  uint32_t tiles_down() const { return (height + tile_height - 1) / tile_height; }
  uint64_t tile_count() const { return uint64_t(planes) * tiles_across() * tiles_down(); }
  size_t plane_bytes() const { return size_t(samples_per_plane) * bytes_per_sample; }
  size_t pixel_bytes() const { return size_t(planes) * plane_bytes(); }
};

// Checks sizes and sample layout; returns "" or what is wrong.
std::string geometry_problem(const LevelGeometry& g);

// The tile tables: planes * tiles_down * tiles_across entries, plane-major
// then row-major.
struct TileTables {
  const uint64_t* offsets = nullptr;
  const uint64_t* bytecounts = nullptr;
};

// A request in level pixel coordinates; may extend past the image.
struct Region {
  int64_t x = 0;
  int64_t y = 0;
  uint32_t width = 0;
  uint32_t height = 0;
};

// What names a tile in messages: "<path>: level L (IFD n), tile (x, y)".
struct TileLabel {
  const std::string* path = nullptr;
  size_t level = 0;
  uint32_t ifd = 0;
};

// A rectangle of pixels.
struct Rect {
  uint32_t x = 0;
  uint32_t y = 0;
  uint32_t width = 0;
  uint32_t height = 0;
};

// One tile the request touches.
struct PlanTile {
  uint32_t plane = 0;
  uint32_t tx = 0;
  uint32_t ty = 0;
  uint64_t index = 0;      // into the tile tables
  uint64_t offset = 0;     // file offset of its bytes
  uint64_t bytecount = 0;  // 0: never written (decodes to zeros)
  Rect in_tile;            // the covered part, in tile pixels
  uint32_t out_x = 0;      // where in_tile lands in the output (same size)
  uint32_t out_y = 0;
  bool whole = false;      // the request covers the whole tile
  // 0: in_tile lands at (out_x, out_y) in one piece. Otherwise the tile
  // lands in Plan::pieces[piece_first, piece_first + piece_count), and
  // in_tile is their bounding window in the tile (what to decode) and
  // (out_x, out_y) the top-left of their bounding box in the output.
  uint32_t piece_count = 0;
  size_t piece_first = 0;
};

// One part of a tile placed somewhere else than its neighbours in the tile
// (a cell of a placed level, see Placement).
struct Piece {
  Rect in_tile;
  uint32_t out_x = 0;
  uint32_t out_y = 0;
};

// Consecutive tiles whose bytes are contiguous in the file: one read each.
struct Run {
  size_t first = 0;  // index into Plan::tiles
  size_t count = 0;
  uint64_t offset = 0;
  uint64_t size = 0;
};

struct Plan {
  Region region;
  // The request clipped to the image, in level pixels (empty: x0 >= x1 or y0 >= y1).
  int64_t x0 = 0, y0 = 0, x1 = 0, y1 = 0;
  std::vector<PlanTile> tiles;  // plane-major, then row-major
  std::vector<Run> runs;        // cover tiles in order
  std::vector<Rect> fills;      // output parts outside the image, disjoint
  std::vector<Piece> pieces;    // of tiles placed in several pieces

  bool empty() const { return x0 >= x1 || y0 >= y1; }
};

// "<path>: level L (IFD n), tile (tx, ty)[ of plane p]".
std::string describe_tile(const TileLabel& label, const LevelGeometry& g, uint32_t plane, uint32_t tx,
                          uint32_t ty);

// Plans `region`: lists the tiles it touches, checks each tile's bytes lie
// inside a file of `file_size` bytes (TileReadError naming the tile
// otherwise), merges contiguous tiles into runs of at most kMaxRunBytes and,
// when `workers` > 1, at most a quarter of an even share of the tiles, and
// lists the fill rectangles. `g` must be valid (geometry_problem) and the
// tables hold g.tile_count() entries each.
void make_plan(const LevelGeometry& g, const TileTables& tables, uint64_t file_size, const Region& region,
               size_t workers, const TileLabel& label, Plan& plan);

// Where a stored image's cells land in a placed level (a level composed of
// one or more stored images, each a "layer": a Leica SCN region placed at its
// offset in the collection, the overlapping camera tiles of a Ventana BIF).
// The stored image is cut into cells of cell_width x cell_height pixels
// (dividing the tile size); cell column first_column + i starts at level x
// xs[i], cell row first_row + j at level y ys[j]. xs and ys strictly
// increase. Where neighbouring cells overlap, the one to the right (below)
// wins: cell i shows [xs[i], min(xs[i] + its width, xs[i + 1])). Where
// layers overlap, the earlier layer wins. Cells not listed are not shown.
struct Placement {
  uint32_t cell_width = 0;
  uint32_t cell_height = 0;
  uint32_t first_column = 0;
  uint32_t first_row = 0;
  std::vector<int64_t> xs;
  std::vector<int64_t> ys;
};

// Placed coordinates must lie within +-kMaxPlacedCoordinate.
constexpr int64_t kMaxPlacedCoordinate = int64_t(1) << 40;
// At most this many layers per level.
constexpr size_t kMaxLayers = 255;

// A rectangle in level pixels, [x0, x1) x [y0, y1).
struct Box {
  int64_t x0 = 0, y0 = 0, x1 = 0, y1 = 0;
  bool empty() const { return x0 >= x1 || y0 >= y1; }
};

// One layer of a placed level: the stored image's geometry, tile tables
// and placement.
struct Layer {
  const LevelGeometry* g = nullptr;
  TileTables tables;
  const Placement* placement = nullptr;
  TileLabel label;
};

// Checks a placement against its stored image; returns "" or what is wrong.
std::string placement_problem(const LevelGeometry& g, const Placement& p);

// The level pixels a layer's cells cover: their bounding box, and whether
// they cover all of it (no gaps between cells).
Box placed_box(const LevelGeometry& g, const Placement& p, bool* gapless);

// Plans the part of `region` that layer `index` of a placed level of
// width x height shows: the pieces of its cells inside the level, less the
// boxes of the layers before it, grouped into tiles (one decode each) and
// runs as make_plan does. Lists the fills for the whole level (outside the
// layers' boxes; the whole request where a layer has gaps) when index is 0,
// none otherwise. Placements must be valid (placement_problem).
void make_layer_plan(const std::vector<Layer>& layers, size_t index, uint32_t width, uint32_t height,
                     uint64_t file_size, const Region& region, size_t workers, Plan& plan);

}  // namespace wsi
