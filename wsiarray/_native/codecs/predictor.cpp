// Post-processing shared by the byte-stream codecs: native byte order, then
// TIFF predictor 2 (horizontal differencing per sample along each row).
#include <cstring>

#include "codecs.hpp"

namespace wsi {
namespace {

template <typename T>
void swap_all(uint8_t* data, size_t count) {
  for (size_t i = 0; i < count; ++i) {
    T v;
    std::memcpy(&v, data + i * sizeof(T), sizeof(T));
    if constexpr (sizeof(T) == 2) v = __builtin_bswap16(v);
    if constexpr (sizeof(T) == 4) v = __builtin_bswap32(v);
    if constexpr (sizeof(T) == 8) v = __builtin_bswap64(v);
    std::memcpy(data + i * sizeof(T), &v, sizeof(T));
  }
}

template <typename T>
void integrate_rows(uint8_t* data, const TileLayout& layout) {
  const size_t row = size_t(layout.width) * layout.samples;
  const size_t s = layout.samples;
  for (uint32_t y = 0; y < layout.height; ++y) {
    T* p = reinterpret_cast<T*>(data + y * layout.row_bytes());
    for (size_t i = s; i < row; ++i) p[i] = static_cast<T>(p[i] + p[i - s]);
  }
}

}  // namespace

void byteswap_samples(uint8_t* data, size_t bytes, uint32_t bytes_per_sample) {
  switch (bytes_per_sample) {
    case 2: swap_all<uint16_t>(data, bytes / 2); break;
    case 4: swap_all<uint32_t>(data, bytes / 4); break;
    case 8: swap_all<uint64_t>(data, bytes / 8); break;
    default: break;
  }
}

void undo_horizontal_predictor(uint8_t* data, const TileLayout& layout) {
  switch (layout.bytes_per_sample) {
    case 1: integrate_rows<uint8_t>(data, layout); break;
    case 2: integrate_rows<uint16_t>(data, layout); break;
    case 4: integrate_rows<uint32_t>(data, layout); break;
    case 8: integrate_rows<uint64_t>(data, layout); break;
    default: break;
  }
}

}  // namespace wsi
