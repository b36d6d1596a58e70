#include "plan.hpp"

#include <algorithm>

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

}  // namespace

void make_plan(const LevelGeometry& g, const TileTables& tables, uint64_t file_size, const Region& region,
               size_t workers, const TileLabel& label, Plan& plan) {
  plan.region = region;
  plan.tiles.clear();
  plan.runs.clear();
  plan.fills.clear();
  plan.x0 = std::max<int64_t>(region.x, 0);
  plan.y0 = std::max<int64_t>(region.y, 0);
  // (A request starting past the image is empty; no sum can overflow.)
  plan.x1 = region.x >= int64_t(g.width) ? int64_t(g.width) : std::min<int64_t>(region.x + region.width, g.width);
  plan.y1 = region.y >= int64_t(g.height) ? int64_t(g.height)
                                          : std::min<int64_t>(region.y + region.height, g.height);

  // Fill: the bands above and below the image, then left and right of it.
  const int64_t w = region.width, h = region.height;
  if (plan.empty()) {
    add_fill(plan, 0, 0, w, h);
    return;
  }
  const int64_t top = plan.y0 - region.y, bottom = plan.y1 - region.y;
  const int64_t left = plan.x0 - region.x, right = plan.x1 - region.x;
  add_fill(plan, 0, 0, w, top);
  add_fill(plan, 0, top, left, bottom);
  add_fill(plan, right, top, w, bottom);
  add_fill(plan, 0, bottom, w, h);

  const uint32_t tw = g.tile_width, th = g.tile_height;
  const uint32_t tx0 = uint32_t(plan.x0 / tw), tx1 = uint32_t((plan.x1 - 1) / tw);
  const uint32_t ty0 = uint32_t(plan.y0 / th), ty1 = uint32_t((plan.y1 - 1) / th);
  const uint64_t across = g.tiles_across(), down = g.tiles_down();
  plan.tiles.reserve(size_t(g.planes) * (tx1 - tx0 + 1) * (ty1 - ty0 + 1));
  for (uint32_t p = 0; p < g.planes; ++p) {
    for (uint32_t ty = ty0; ty <= ty1; ++ty) {
      for (uint32_t tx = tx0; tx <= tx1; ++tx) {
        PlanTile t;
        t.plane = p;
        t.tx = tx;
        t.ty = ty;
        t.index = (p * down + ty) * across + tx;
        t.offset = tables.offsets[t.index];
        t.bytecount = tables.bytecounts[t.index];
        if (t.bytecount > kMaxTileBytes || t.offset > file_size || t.bytecount > file_size - t.offset) {
          throw Error(ErrorKind::Read, describe_tile(label, g, p, tx, ty) + ": tile bytes " +
                                           std::to_string(t.offset) + "+" + std::to_string(t.bytecount) +
                                           " lie outside the file (" + std::to_string(file_size) + " bytes)");
        }
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

  // Small runs when several threads share a request, so that they all get work.
  const std::vector<PlanTile>& tiles = plan.tiles;
  size_t max_tiles = tiles.size();
  if (workers > 1) max_tiles = std::max<size_t>(1, tiles.size() / (workers * 4));
  for (size_t i = 0; i < tiles.size(); ++i) {
    const PlanTile& t = tiles[i];
    if (!plan.runs.empty()) {
      Run& run = plan.runs.back();
      const PlanTile& prev = tiles[i - 1];
      if (t.bytecount > 0 && prev.bytecount > 0 && t.offset == prev.offset + prev.bytecount &&
          run.size + t.bytecount <= kMaxRunBytes && run.count < max_tiles) {
        run.count += 1;
        run.size += t.bytecount;
        continue;
      }
    }
    plan.runs.push_back(Run{i, 1, t.offset, t.bytecount});
  }
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
