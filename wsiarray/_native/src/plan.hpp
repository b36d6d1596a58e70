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
  uint32_t file = 0;       // the reader's file holding its bytes (see PlaneFile)
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

// Where one plane's tiles live when a level's planes are in several files
// (a multi-file OME-TIFF's channels): the reader's file index, its size and
// its path (for messages).
struct PlaneFile {
  uint32_t file = 0;
  uint64_t size = 0;
  const std::string* path = nullptr;
};

// Plans `region`: lists the tiles it touches, checks each tile's bytes lie
// inside a file of `file_size` bytes (TileReadError naming the tile
// otherwise), merges contiguous tiles into runs of at most kMaxRunBytes and,
// when `workers` > 1, at most a quarter of an even share of the tiles, and
// lists the fill rectangles. `g` must be valid (geometry_problem) and the
// tables hold g.tile_count() entries each. With `plane_files` (g.planes
// entries), plane p's tiles are checked against plane_files[p].size instead
// of `file_size`, carry its file index, and no run spans two files.
void make_plan(const LevelGeometry& g, const TileTables& tables, uint64_t file_size, const Region& region,
               size_t workers, const TileLabel& label, Plan& plan, const PlaneFile* plane_files = nullptr);

// Levels whose tiles are the restart intervals of one JPEG (Codec::JpegRestart)
// are not decoded tile by tile: a block is a rectangle of intervals decoded
// as one JPEG (restart.hpp), one decoder call for many 64x8 tiles.
struct Block {
  uint32_t tx0 = 0, tx1 = 0;  // tile columns decoded: [tx0, tx1), margins included
  uint32_t ty0 = 0, ty1 = 0;  // tile rows decoded
  Rect window;                // the pixels wanted, relative to tile (tx0, ty0)'s origin
  uint32_t out_x = 0;         // where the window lands in the output
  uint32_t out_y = 0;
};

struct BlockLimits {
  // Tiles decoded beside the wanted ones where they exist: chroma upsampling
  // reads one chroma sample past a frame's edge, so a block of a subsampled
  // JPEG needs its neighbours to give the pixels the whole-level decode gives.
  uint32_t margin_x = 0;
  uint32_t margin_y = 0;
  uint32_t max_tiles_across = 0;  // libjpeg decodes frames at most 65500 px wide
  uint64_t max_bytes = kMaxRunBytes;  // compressed bytes per block (rows are split to stay under it)
  size_t blocks = 1;  // blocks wanted (rows are split so that threads share the request)
};

// Cuts the clipped request of `plan` (planned with make_plan on `g`, whose
// tables are `tables`) into blocks: column groups of at most
// max_tiles_across - 2 * margin_x wanted tiles, row groups so that there
// are about limits.blocks blocks and no block's compressed bytes exceed
// max_bytes (a single row may).
void plan_blocks(const LevelGeometry& g, const TileTables& tables, const Plan& plan, const BlockLimits& limits,
                 std::vector<Block>& blocks);
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
