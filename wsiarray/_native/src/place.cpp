#include "place.hpp"

#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>

#if (defined(__GNUC__) || defined(__clang__)) && (defined(__x86_64__) || defined(__i386__))
#include <immintrin.h>
#define WSI_PLANES_SSSE3 1
#if defined(__clang__)
#define WSI_PLANES_TARGET __attribute__((target("ssse3")))
#else
#define WSI_PLANES_TARGET __attribute__((target("ssse3"), optimize("O3")))
#endif
#endif

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

template <size_t N>
void gather_fixed(uint8_t* to, const uint8_t* from, size_t from_step, size_t count) {
  for (size_t i = 0; i < count; ++i) std::memcpy(to + i * N, from + i * from_step, N);
}

// Plane `plane` of pixels [first, count): every pixel_bytes-th sample, packed.
void gather_plane(const uint8_t* src, size_t first, size_t count, size_t pixel_bytes, size_t sample_bytes,
                  size_t plane, uint8_t* to) {
  const uint8_t* from = src + first * pixel_bytes + plane * sample_bytes;
  to += first * sample_bytes;
  count -= first;
  switch (sample_bytes) {
    case 1: gather_fixed<1>(to, from, pixel_bytes, count); break;
    case 2: gather_fixed<2>(to, from, pixel_bytes, count); break;
    case 4: gather_fixed<4>(to, from, pixel_bytes, count); break;
    case 8: gather_fixed<8>(to, from, pixel_bytes, count); break;
    default:
      for (size_t i = 0; i < count; ++i) std::memcpy(to + i * sample_bytes, from + i * pixel_bytes, sample_bytes);
  }
}

#ifdef WSI_PLANES_SSSE3
// 16 pixels of C one-byte samples (C 16-byte vectors) at a time: output byte
// i of plane k is source byte C * i + k, which lies in vector (C * i + k) / 16;
// one shuffle per vector picks the bytes it holds, the others become zero.
// Returns the pixels done (a multiple of 16). The engine builds with -Os; this
// loop wants its vectors and masks unrolled into registers (GCC's O3: 3x faster).
template <size_t C>
WSI_PLANES_TARGET size_t bytes_to_planes_ssse3(const uint8_t* src, size_t count, size_t planes, uint8_t* dst,
                                               size_t plane_pitch) {
  alignas(16) uint8_t masks[C][C][16];
  for (size_t k = 0; k < planes; ++k) {
    for (size_t j = 0; j < C; ++j) {
      for (size_t i = 0; i < 16; ++i) {
        const size_t at = C * i + k;
        masks[k][j][i] = at / 16 == j ? uint8_t(at % 16) : uint8_t(0x80);
      }
    }
  }
  size_t i = 0;
  for (; i + 16 <= count; i += 16) {
    __m128i v[C];
    for (size_t j = 0; j < C; ++j) v[j] = _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + C * i + 16 * j));
    for (size_t k = 0; k < planes; ++k) {
      __m128i acc = _mm_shuffle_epi8(v[0], _mm_load_si128(reinterpret_cast<const __m128i*>(masks[k][0])));
      for (size_t j = 1; j < C; ++j) {
        acc = _mm_or_si128(acc, _mm_shuffle_epi8(v[j], _mm_load_si128(reinterpret_cast<const __m128i*>(masks[k][j]))));
      }
      _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + k * plane_pitch + i), acc);
    }
  }
  return i;
}

bool has_ssse3() {
  static const bool yes = [] {
    __builtin_cpu_init();
    return __builtin_cpu_supports("ssse3") != 0;
  }();
  return yes;
}
#endif

}  // namespace

void pixels_to_planes(const uint8_t* src, size_t count, size_t pixel_bytes, size_t sample_bytes, size_t planes,
                      uint8_t* dst, size_t plane_pitch) {
  size_t done = 0;
#ifdef WSI_PLANES_SSSE3
  if (sample_bytes == 1 && has_ssse3()) {
    if (pixel_bytes == 3) done = bytes_to_planes_ssse3<3>(src, count, planes, dst, plane_pitch);
    if (pixel_bytes == 4) done = bytes_to_planes_ssse3<4>(src, count, planes, dst, plane_pitch);
  }
#endif
  for (size_t k = 0; k < planes; ++k) {
    gather_plane(src, done, count, pixel_bytes, sample_bytes, k, dst + k * plane_pitch);
  }
}

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
