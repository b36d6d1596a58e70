// Tile decoders. Each writes one decoded tile of `width` x `height` pixels
// (`samples` interleaved samples of `bytes_per_sample` bytes) to `dst`, whose
// rows are `pitch` bytes apart, so a tile can land straight in the caller's
// output array. All throw wsi::Error(Decode) on corrupt input and never read
// outside [src, src + size) or write outside the tile area.
#pragma once

#include <cstddef>
#include <cstdint>

namespace wsi {

struct TileLayout {
  uint32_t width = 0;
  uint32_t height = 0;
  uint32_t samples = 0;
  uint32_t bytes_per_sample = 1;
  size_t row_bytes() const { return size_t(width) * samples * bytes_per_sample; }
  size_t bytes() const { return row_bytes() * height; }
};

// Colour spaces use libjpeg's J_COLOR_SPACE values; -1 keeps libjpeg's guess.
struct JpegParams {
  const uint8_t* tables = nullptr;
  size_t tables_size = 0;
  int in_colorspace = -1;
  int out_colorspace = -1;
};

void decode_jpeg(const uint8_t* src, size_t size, const JpegParams& params,
                 const TileLayout& layout, uint8_t* dst, size_t pitch);
// The same, row r of the tile to rows[r]: rows may lie anywhere (in the
// pages of a cache entry, say).
void decode_jpeg_rows(const uint8_t* src, size_t size, const JpegParams& params,
                      const TileLayout& layout, uint8_t* const* rows);
// Decodes only the window [x, x + width) x [y, y + height) of the tile into
// dst (`width` pixels per row), skipping rows above it and iMCU columns
// outside it.
void decode_jpeg_window(const uint8_t* src, size_t size, const JpegParams& params,
                        const TileLayout& layout, uint32_t x, uint32_t y, uint32_t width,
                        uint32_t height, uint8_t* dst, size_t pitch);

// Byte-stream codecs decode into a contiguous buffer of dst_size bytes; a
// stream that ends cleanly but early leaves zeros.
void decode_deflate(const uint8_t* src, size_t size, uint8_t* dst, size_t dst_size);
void decode_lzw(const uint8_t* src, size_t size, uint8_t* dst, size_t dst_size);

// In-place fix-ups of a contiguous tile after a byte-stream codec: swap to
// native byte order, then undo TIFF predictor 2 (horizontal differencing).
void byteswap_samples(uint8_t* data, size_t bytes, uint32_t bytes_per_sample);
void undo_horizontal_predictor(uint8_t* data, const TileLayout& layout);

}  // namespace wsi
