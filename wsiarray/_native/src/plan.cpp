#include "plan.hpp"

#include <algorithm>
#include <limits>

#include "error.hpp"

namespace wsi {

std::string geometry_problem(const LevelGeometry& g) {
  if (g.width == 0 || g.height == 0 || g.tile_width == 0 || g.tile_height == 0) return "zero image or tile size";
  if (g.samples_per_plane == 0 || g.planes == 0 || uint64_t(g.planes) * g.samples_per_plane > kMaxSamples) {
    return "unsupported sample layout";
  }
  const uint32_t bps = g.bytes_per_sample;
  if (bps != 1 && bps != 2 && bps != 4 && bps != 8) return "sample size must be 1, 2, 4 or 8 bytes";
  if (uint64_t(g.tile_width) * g.tile_height * g.plane_bytes() > kMaxTileBytes) return "tiles larger than 256 MiB";
  return "";
}

std::string describe_tile(const TileLabel& label, const LevelGeometry& g, uint32_t plane, uint32_t tx,
                          uint32_t ty) {
  std::string s = (label.path ? *label.path : std::string("<tile tables>")) + ": level " +
                  std::to_string(label.level) + " (IFD " + std::to_string(label.ifd) + "), tile (" +
                  std::to_string(tx) + ", " + std::to_string(ty) + ")";
  if (g.planes > 1) s += " of plane " + std::to_string(plane);
  return s;
}

namespace {

void add_fill(Plan& plan, int64_t x0, int64_t y0, int64_t x1, int64_t y1) {
  if (x0 >= x1 || y0 >= y1) return;
  plan.fills.push_back(Rect{uint32_t(x0), uint32_t(y0), uint32_t(x1 - x0), uint32_t(y1 - y0)});
}


// Looks up a tile's bytes and checks they lie inside the file.
void set_tile_bytes(const LevelGeometry& g, const TileTables& tables, uint64_t file_size, const TileLabel& label,
                    PlanTile& t) {
  t.offset = tables.offsets[t.index];
  t.bytecount = tables.bytecounts[t.index];
  if (t.bytecount > kMaxTileBytes || t.offset > file_size || t.bytecount > file_size - t.offset) {
    throw Error(ErrorKind::Read, describe_tile(label, g, t.plane, t.tx, t.ty) + ": tile bytes " +
                                     std::to_string(t.offset) + "+" + std::to_string(t.bytecount) +
                                     " lie outside the file (" + std::to_string(file_size) + " bytes)");
  }
}

// Merges consecutive tiles with contiguous bytes into runs.
void make_runs(Plan& plan, size_t workers) {
  // Small runs when several threads share a request, so that they all get work.
  const std::vector<PlanTile>& tiles = plan.tiles;
  size_t max_tiles = tiles.size();
  if (workers > 1) max_tiles = std::max<size_t>(1, tiles.size() / (workers * 4));
  for (size_t i = 0; i < tiles.size(); ++i) {
    const PlanTile& t = tiles[i];
    if (!plan.runs.empty()) {
      Run& run = plan.runs.back();
      const PlanTile& prev = tiles[i - 1];
      if (t.bytecount > 0 && prev.bytecount > 0 && t.file == prev.file && t.offset == prev.offset + prev.bytecount &&
          run.size + t.bytecount <= kMaxRunBytes && run.count < max_tiles) {
        run.count += 1;
        run.size += t.bytecount;
        continue;
      }
    }
    plan.runs.push_back(Run{i, 1, t.offset, t.bytecount});
  }
}

}  // namespace

namespace {

// Starts `plan` for `region` of a width x height image: clears it, clips the
// region to the image (plan.x0..y1) and adds the fill outside the image: the
// bands above and below it, then left and right of it. False when no pixel
// of the image is in the region (all fill).
bool start_plan(const Region& region, int64_t width, int64_t height, Plan& plan) {
  plan.region = region;
  plan.tiles.clear();
  plan.runs.clear();
  plan.fills.clear();
  plan.pieces.clear();
  plan.x0 = std::max<int64_t>(region.x, 0);
  plan.y0 = std::max<int64_t>(region.y, 0);
  // (A request starting past the image is empty; no sum can overflow.)
  plan.x1 = region.x >= width ? width : std::min<int64_t>(region.x + region.width, width);
  plan.y1 = region.y >= height ? height : std::min<int64_t>(region.y + region.height, height);
  const int64_t w = region.width, h = region.height;
  if (plan.empty()) {
    add_fill(plan, 0, 0, w, h);
    return false;
  }
  const int64_t top = plan.y0 - region.y, bottom = plan.y1 - region.y;
  const int64_t left = plan.x0 - region.x, right = plan.x1 - region.x;
  add_fill(plan, 0, 0, w, top);
  add_fill(plan, 0, top, left, bottom);
  add_fill(plan, right, top, w, bottom);
  add_fill(plan, 0, bottom, w, h);
  return true;
}

}  // namespace

void make_plan(const LevelGeometry& g, const TileTables& tables, uint64_t file_size, const Region& region,
               size_t workers, const TileLabel& label, Plan& plan, const PlaneFile* plane_files) {
  if (!start_plan(region, g.width, g.height, plan)) return;

  const uint32_t tw = g.tile_width, th = g.tile_height;
  const uint32_t tx0 = uint32_t(plan.x0 / tw), tx1 = uint32_t((plan.x1 - 1) / tw);
  const uint32_t ty0 = uint32_t(plan.y0 / th), ty1 = uint32_t((plan.y1 - 1) / th);
  const uint64_t across = g.tiles_across(), down = g.tiles_down();
  plan.tiles.reserve(size_t(g.planes) * (tx1 - tx0 + 1) * (ty1 - ty0 + 1));
  for (uint32_t p = 0; p < g.planes; ++p) {
    const uint64_t size = plane_files != nullptr ? plane_files[p].size : file_size;
    TileLabel plane_label = label;
    if (plane_files != nullptr && plane_files[p].path != nullptr) plane_label.path = plane_files[p].path;
    for (uint32_t ty = ty0; ty <= ty1; ++ty) {
      for (uint32_t tx = tx0; tx <= tx1; ++tx) {
        PlanTile t;
        t.plane = p;
        t.tx = tx;
        t.ty = ty;
        t.index = (p * down + ty) * across + tx;
        t.file = plane_files != nullptr ? plane_files[p].file : 0;
        set_tile_bytes(g, tables, size, plane_label, t);
        const int64_t tile_x = int64_t(tx) * tw, tile_y = int64_t(ty) * th;
        const int64_t cx0 = std::max(tile_x, plan.x0), cx1 = std::min(tile_x + tw, plan.x1);
        const int64_t cy0 = std::max(tile_y, plan.y0), cy1 = std::min(tile_y + th, plan.y1);
        t.in_tile = Rect{uint32_t(cx0 - tile_x), uint32_t(cy0 - tile_y), uint32_t(cx1 - cx0), uint32_t(cy1 - cy0)};
        t.out_x = uint32_t(cx0 - region.x);
        t.out_y = uint32_t(cy0 - region.y);
        t.whole = t.in_tile.width == tw && t.in_tile.height == th;
        plan.tiles.push_back(t);
      }
    }
  }

  make_runs(plan, workers);
}

namespace {

// Width of stored cell column c (the last may be cut by the image edge).
uint32_t cell_extent(uint32_t cell, uint32_t size, uint64_t index) {
  return uint32_t(std::min<uint64_t>(cell, size - index * cell));
}

// Where cell i of an axis shows: [positions[i], end), the next cell winning.
int64_t shown_end(const std::vector<int64_t>& positions, size_t i, uint32_t cell, uint32_t size, uint32_t first) {
  int64_t end = positions[i] + cell_extent(cell, size, uint64_t(first) + i);
  if (i + 1 < positions.size()) end = std::min(end, positions[i + 1]);
  return end;
}

bool axis_gapless(const std::vector<int64_t>& positions, uint32_t cell, uint32_t size, uint32_t first) {
  for (size_t i = 0; i + 1 < positions.size(); ++i) {
    if (positions[i] + cell_extent(cell, size, uint64_t(first) + i) < positions[i + 1]) return false;
  }
  return true;
}

std::string axis_problem(const char* axis, const std::vector<int64_t>& positions, uint32_t cell, uint32_t tile,
                         uint32_t size, uint32_t first) {
  const std::string a(axis);
  if (cell == 0 || tile % cell != 0) return "cell " + a + " must divide the tile " + a;
  const uint64_t cells = (uint64_t(size) + cell - 1) / cell;
  if (positions.empty() || first >= cells || positions.size() > cells - first) {
    return "cell " + a + " positions (" + std::to_string(positions.size()) + " from " + std::to_string(first) +
           ") do not fit the image's " + std::to_string(cells) + " cells";
  }
  for (size_t i = 0; i < positions.size(); ++i) {
    if (positions[i] < -kMaxPlacedCoordinate || positions[i] > kMaxPlacedCoordinate) {
      return "cell " + a + " position out of range";
    }
    if (i > 0 && positions[i] <= positions[i - 1]) return "cell " + a + " positions must increase";
  }
  return "";
}

// `boxes` less `cut`, as disjoint boxes.
void subtract(std::vector<Box>& boxes, const Box& cut) {
  std::vector<Box> out;
  for (const Box& b : boxes) {
    const Box c{std::max(b.x0, cut.x0), std::max(b.y0, cut.y0), std::min(b.x1, cut.x1), std::min(b.y1, cut.y1)};
    if (c.empty()) {
      out.push_back(b);
      continue;
    }
    const Box parts[4] = {{b.x0, b.y0, b.x1, c.y0}, {b.x0, c.y1, b.x1, b.y1}, {b.x0, c.y0, c.x0, c.y1},
                          {c.x1, c.y0, b.x1, c.y1}};
    for (const Box& part : parts) {
      if (!part.empty()) out.push_back(part);
    }
  }
  boxes.swap(out);
}

// The cells of an axis that show inside [lo, hi): [first, last).
std::pair<size_t, size_t> shown_cells(const std::vector<int64_t>& positions, int64_t lo, int64_t hi) {
  size_t first = size_t(std::upper_bound(positions.begin(), positions.end(), lo) - positions.begin());
  if (first > 0) --first;
  const size_t last = size_t(std::lower_bound(positions.begin(), positions.end(), hi) - positions.begin());
  return {first, std::max(first, last)};
}

struct PlacedPiece {
  uint64_t tile = 0;  // row-major index in a plane
  Piece piece;
};

void add_box_fill(Plan& plan, const Box& b) {
  add_fill(plan, b.x0 - plan.region.x, b.y0 - plan.region.y, b.x1 - plan.region.x, b.y1 - plan.region.y);
}

}  // namespace

std::string placement_problem(const LevelGeometry& g, const Placement& p) {
  std::string problem = axis_problem("width", p.xs, p.cell_width, g.tile_width, g.width, p.first_column);
  if (problem.empty()) problem = axis_problem("height", p.ys, p.cell_height, g.tile_height, g.height, p.first_row);
  return problem;
}

Box placed_box(const LevelGeometry& g, const Placement& p, bool* gapless) {
  if (gapless != nullptr) {
    *gapless = axis_gapless(p.xs, p.cell_width, g.width, p.first_column) &&
               axis_gapless(p.ys, p.cell_height, g.height, p.first_row);
  }
  return Box{p.xs.front(), p.ys.front(),
             shown_end(p.xs, p.xs.size() - 1, p.cell_width, g.width, p.first_column),
             shown_end(p.ys, p.ys.size() - 1, p.cell_height, g.height, p.first_row)};
}

void make_layer_plan(const std::vector<Layer>& layers, size_t index, uint32_t width, uint32_t height,
                     uint64_t file_size, const Region& region, size_t workers, Plan& plan) {
  const bool inside = start_plan(region, width, height, plan);
  if (index > 0) plan.fills.clear();  // the first layer's plan fills for them all
  const Box clip{plan.x0, plan.y0, plan.x1, plan.y1};

  if (index == 0 && inside) {
    // Inside the level: what no layer's box covers, or all of it (written
    // before any tile) when some layer has gaps between its cells.
    std::vector<Box> uncovered{clip};
    for (const Layer& layer : layers) {
      bool gapless = true;
      const Box box = placed_box(*layer.g, *layer.placement, &gapless);
      if (!gapless) {
        uncovered.assign(1, clip);
        break;
      }
      subtract(uncovered, box);
    }
    for (const Box& b : uncovered) add_box_fill(plan, b);
  }
  if (!inside) return;

  const Layer& layer = layers[index];
  const LevelGeometry& g = *layer.g;
  const Placement& p = *layer.placement;
  std::vector<Box> earlier;
  for (size_t k = 0; k < index; ++k) earlier.push_back(placed_box(*layers[k].g, *layers[k].placement, nullptr));

  const auto columns = shown_cells(p.xs, clip.x0, clip.x1);
  const auto rows = shown_cells(p.ys, clip.y0, clip.y1);
  const uint32_t tw = g.tile_width, th = g.tile_height;
  const uint64_t across = g.tiles_across(), down = g.tiles_down();
  std::vector<PlacedPiece> placed;
  std::vector<Box> parts;
  for (size_t j = rows.first; j < rows.second; ++j) {
    const int64_t y0 = std::max(p.ys[j], clip.y0);
    const int64_t y1 = std::min(shown_end(p.ys, j, p.cell_height, g.height, p.first_row), clip.y1);
    if (y0 >= y1) continue;
    const uint64_t stored_row = (uint64_t(p.first_row) + j) * p.cell_height;
    for (size_t i = columns.first; i < columns.second; ++i) {
      const int64_t x0 = std::max(p.xs[i], clip.x0);
      const int64_t x1 = std::min(shown_end(p.xs, i, p.cell_width, g.width, p.first_column), clip.x1);
      if (x0 >= x1) continue;
      const uint64_t stored_column = (uint64_t(p.first_column) + i) * p.cell_width;
      parts.assign(1, Box{x0, y0, x1, y1});
      for (const Box& cut : earlier) subtract(parts, cut);
      for (const Box& b : parts) {
        const uint64_t sx = stored_column + uint64_t(b.x0 - p.xs[i]);
        const uint64_t sy = stored_row + uint64_t(b.y0 - p.ys[j]);
        PlacedPiece pp;
        pp.tile = (sy / th) * across + sx / tw;
        pp.piece.in_tile = Rect{uint32_t(sx % tw), uint32_t(sy % th), uint32_t(b.x1 - b.x0), uint32_t(b.y1 - b.y0)};
        pp.piece.out_x = uint32_t(b.x0 - region.x);
        pp.piece.out_y = uint32_t(b.y0 - region.y);
        placed.push_back(pp);
      }
    }
  }
  std::stable_sort(placed.begin(), placed.end(),
                   [](const PlacedPiece& a, const PlacedPiece& b) { return a.tile < b.tile; });

  // One plan tile per stored tile: its pieces, or one piece when they tile
  // their bounding box at one offset (then it may decode straight to the output).
  std::vector<PlanTile> one_plane;
  for (size_t a = 0; a < placed.size();) {
    size_t b = a + 1;
    while (b < placed.size() && placed[b].tile == placed[a].tile) ++b;
    PlanTile t;
    t.tx = uint32_t(placed[a].tile % across);
    t.ty = uint32_t(placed[a].tile / across);
    uint32_t ix0 = UINT32_MAX, iy0 = UINT32_MAX, ix1 = 0, iy1 = 0, ox = UINT32_MAX, oy = UINT32_MAX;
    uint64_t area = 0;
    bool aligned = true;
    const Piece& head = placed[a].piece;
    for (size_t k = a; k < b; ++k) {
      const Piece& q = placed[k].piece;
      ix0 = std::min(ix0, q.in_tile.x);
      iy0 = std::min(iy0, q.in_tile.y);
      ix1 = std::max(ix1, q.in_tile.x + q.in_tile.width);
      iy1 = std::max(iy1, q.in_tile.y + q.in_tile.height);
      ox = std::min(ox, q.out_x);
      oy = std::min(oy, q.out_y);
      area += uint64_t(q.in_tile.width) * q.in_tile.height;
      aligned = aligned && int64_t(q.out_x) - q.in_tile.x == int64_t(head.out_x) - head.in_tile.x &&
                int64_t(q.out_y) - q.in_tile.y == int64_t(head.out_y) - head.in_tile.y;
    }
    t.in_tile = Rect{ix0, iy0, ix1 - ix0, iy1 - iy0};
    if (aligned && area == uint64_t(ix1 - ix0) * (iy1 - iy0)) {
      t.out_x = uint32_t(int64_t(head.out_x) - head.in_tile.x + ix0);
      t.out_y = uint32_t(int64_t(head.out_y) - head.in_tile.y + iy0);
      t.whole = t.in_tile.width == tw && t.in_tile.height == th;
    } else {
      t.out_x = ox;
      t.out_y = oy;
      t.piece_first = plan.pieces.size();
      t.piece_count = uint32_t(b - a);
      for (size_t k = a; k < b; ++k) plan.pieces.push_back(placed[k].piece);
    }
    one_plane.push_back(t);
    a = b;
  }
  plan.tiles.reserve(one_plane.size() * g.planes);
  for (uint32_t plane = 0; plane < g.planes; ++plane) {
    for (PlanTile t : one_plane) {
      t.plane = plane;
      t.index = (plane * down + t.ty) * across + t.tx;
      set_tile_bytes(g, layer.tables, file_size, layer.label, t);
      plan.tiles.push_back(t);
    }
  }
  make_runs(plan, workers);
}

void plan_blocks(const LevelGeometry& g, const TileTables& tables, const Plan& plan, const BlockLimits& limits,
                 std::vector<Block>& blocks) {
  blocks.clear();
  if (plan.empty()) return;
  const uint32_t tw = g.tile_width, th = g.tile_height;
  const uint32_t across = g.tiles_across(), down = g.tiles_down();
  const uint32_t tx0 = uint32_t(plan.x0 / tw), tx1 = uint32_t((plan.x1 - 1) / tw) + 1;
  const uint32_t ty0 = uint32_t(plan.y0 / th), ty1 = uint32_t((plan.y1 - 1) / th) + 1;
  const uint32_t mx = limits.margin_x, my = limits.margin_y;
  if (limits.max_tiles_across <= 2 * mx) throw Error(ErrorKind::Format, "tiles too wide for a JPEG frame");
  const uint32_t cols_per_block = limits.max_tiles_across - 2 * mx;
  const size_t column_groups = (tx1 - tx0 + cols_per_block - 1) / cols_per_block;
  // Rows per block: about limits.blocks blocks, fewer rows where a row's
  // bytes are many.
  const uint32_t rows = ty1 - ty0;
  const size_t want = std::max<size_t>(limits.blocks, 1);
  const size_t per_column_group = (want + column_groups - 1) / column_groups;
  const uint32_t per_group = uint32_t((rows + per_column_group - 1) / per_column_group);
  for (uint32_t cx = tx0; cx < tx1; cx += cols_per_block) {
    const uint32_t cx1 = std::min(cx + cols_per_block, tx1);
    const uint32_t dx0 = cx >= mx ? cx - mx : 0, dx1 = std::min(cx1 + mx, across);
    uint32_t ry = ty0;
    while (ry < ty1) {
      // Grow the block row by row up to per_group rows and max_bytes.
      uint32_t ry1 = ry;
      uint64_t bytes = 0;
      while (ry1 < ty1 && ry1 - ry < per_group) {
        const uint64_t i0 = uint64_t(ry1) * across + dx0, i1 = uint64_t(ry1) * across + dx1 - 1;
        const uint64_t row_bytes = tables.offsets[i1] + tables.bytecounts[i1] - tables.offsets[i0];
        if (ry1 > ry && bytes + row_bytes > limits.max_bytes) break;
        bytes += row_bytes;
        ++ry1;
      }
      Block b;
      b.tx0 = dx0;
      b.tx1 = dx1;
      b.ty0 = ry >= my ? ry - my : 0;
      b.ty1 = std::min(ry1 + my, down);
      const int64_t px0 = std::max<int64_t>(plan.x0, int64_t(cx) * tw);
      const int64_t px1 = std::min<int64_t>(plan.x1, int64_t(cx1) * tw);
      const int64_t py0 = std::max<int64_t>(plan.y0, int64_t(ry) * th);
      const int64_t py1 = std::min<int64_t>(plan.y1, int64_t(ry1) * th);
      b.window = Rect{uint32_t(px0 - int64_t(b.tx0) * tw), uint32_t(py0 - int64_t(b.ty0) * th), uint32_t(px1 - px0),
                      uint32_t(py1 - py0)};
      b.out_x = uint32_t(px0 - plan.region.x);
      b.out_y = uint32_t(py0 - plan.region.y);
      blocks.push_back(b);
      ry = ry1;
    }
  }
}

}  // namespace wsi
