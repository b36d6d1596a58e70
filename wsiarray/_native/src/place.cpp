#include "place.hpp"

#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>

namespace wsi {
namespace {

// Output spans at least this large are faulted in with one system call.
constexpr size_t kPrefaultBytes = 4u << 20;

void fill_pixels(uint8_t* dst, size_t count, const uint8_t* pixel, size_t pixel_bytes) {
  if (count == 0) return;
  if (std::all_of(pixel, pixel + pixel_bytes, [&](uint8_t b) { return b == pixel[0]; })) {
    std::memset(dst, pixel[0], count * pixel_bytes);
    return;
  }
  for (size_t i = 0; i < count; ++i) std::memcpy(dst + i * pixel_bytes, pixel, pixel_bytes);
}

template <size_t N>
void scatter_fixed(uint8_t* to, size_t to_step, const uint8_t* from, size_t count) {
  for (size_t i = 0; i < count; ++i) std::memcpy(to + i * to_step, from + i * N, N);
}

// Copies `count` pixels of one plane (`bytes` each, packed) into every
// `to_step`-th byte position of an interleaved output row.
void scatter_samples(uint8_t* to, size_t to_step, const uint8_t* from, size_t bytes, size_t count) {
  switch (bytes) {
    case 1: scatter_fixed<1>(to, to_step, from, count); break;
    case 2: scatter_fixed<2>(to, to_step, from, count); break;
    case 4: scatter_fixed<4>(to, to_step, from, count); break;
    case 8: scatter_fixed<8>(to, to_step, from, count); break;
    default:
      for (size_t i = 0; i < count; ++i) std::memcpy(to + i * to_step, from + i * bytes, bytes);
  }
}

}  // namespace

void fill_rects(const Output& out, const std::vector<Rect>& rects, const uint8_t* pixel) {
  for (const Rect& r : rects) {
    uint8_t* first = out.base + size_t(r.y) * out.pitch + size_t(r.x) * out.pixel_bytes;
    for (uint32_t y = 0; y < r.height; ++y) fill_pixels(first + size_t(y) * out.pitch, r.width, pixel, out.pixel_bytes);
  }
}

void place_tile(const Output& out, const PlanTile& tile, const LevelGeometry& g, const TileView& decoded) {
  const size_t plane_bytes = g.plane_bytes();
  const size_t row_bytes = size_t(g.tile_width) * plane_bytes;
  const size_t span = size_t(tile.in_tile.width) * plane_bytes;
  uint8_t* origin = tile_origin(out, tile, g);
  const bool planar = g.planes > 1;
  static thread_local std::vector<uint8_t> row;
  if (planar && row.size() < span) row.resize(span);
  for (uint32_t r = 0; r < tile.in_tile.height; ++r) {
    uint8_t* to = origin + size_t(r) * out.pitch;
    // Planes scatter to every pixel_bytes-th byte: gather the row first.
    uint8_t* target = planar ? row.data() : to;
    decoded.copy(size_t(tile.in_tile.y + r) * row_bytes + size_t(tile.in_tile.x) * plane_bytes, span, target);
    if (planar) scatter_samples(to, out.pixel_bytes, row.data(), plane_bytes, tile.in_tile.width);
  }
}

void place_pieces(const Output& out, const Plan& plan, const PlanTile& tile, const LevelGeometry& g,
                  const TileView& decoded) {
  if (tile.piece_count == 0) {
    place_tile(out, tile, g, decoded);
    return;
  }
  PlanTile part = tile;
  for (size_t k = 0; k < tile.piece_count; ++k) {
    const Piece& piece = plan.pieces[tile.piece_first + k];
    part.in_tile = piece.in_tile;
    part.out_x = piece.out_x;
    part.out_y = piece.out_y;
    place_tile(out, part, g, decoded);
  }
}

void prefault_rows(const Output& out, uint32_t top, uint32_t bottom) {
#ifdef MADV_POPULATE_WRITE
  bottom = std::min(bottom, out.height);
  if (top >= bottom) return;
  const uintptr_t begin = reinterpret_cast<uintptr_t>(out.base + size_t(top) * out.pitch);
  const uintptr_t end =
      reinterpret_cast<uintptr_t>(out.base + size_t(bottom - 1) * out.pitch + size_t(out.width) * out.pixel_bytes);
  if (end - begin < kPrefaultBytes) return;
  static const uintptr_t page = uintptr_t(sysconf(_SC_PAGESIZE));
  const uintptr_t from = begin & ~(page - 1), to = (end + page - 1) & ~(page - 1);
  madvise(reinterpret_cast<void*>(from), to - from, MADV_POPULATE_WRITE);
#else
  (void)out;
  (void)top;
  (void)bottom;
#endif
}

}  // namespace wsi
