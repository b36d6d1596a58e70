// The codec table, and the byte-stream decoders' common frame: decode a
// contiguous tile (in place when the target is one, else in a per-thread
// scratch tile), fix byte order and predictor, copy the target's window;
// bilevel tiles are inflated packed and unpacked to 0/1 bytes.
#include <array>
#include <cstring>
#include <string>
#include <vector>

#include "../src/error.hpp"
#include "codecs.hpp"
#include "headers.hpp"

namespace wsi {
namespace {

uint8_t* scratch_tile(size_t size) {
  static thread_local std::vector<uint8_t> tile;
  if (tile.size() < size) tile.resize(size);
  return tile.data();
}

// Decodes the stream into `n` bytes at `dst`.
using Inflate = void (*)(const TileStream& src, const CodecParams& params, const TileLayout& layout, uint8_t* dst,
                         size_t n);

// Bilevel tiles: inflate the packed rows into scratch (an eighth of the
// tile), then unpack only the target's window to 0/1 bytes.
template <Inflate inflate>
void packed_stream(const TileStream& src, const CodecParams& params, const TileLayout& layout,
                   const TileTarget& dst) {
  const uint64_t row_bits = uint64_t(layout.width) * layout.samples;
  const TileLayout packed{uint32_t((row_bits + 7) / 8), layout.height, 1, 1};
  uint8_t* tile = scratch_tile(packed.bytes());
  inflate(src, params, packed, tile, packed.bytes());
  const size_t first = size_t(dst.x) * layout.samples, count = size_t(dst.width) * layout.samples;
  for (uint32_t r = 0; r < dst.height; ++r) {
    unpack_bits(tile + size_t(dst.y + r) * packed.row_bytes(), first, count, dst.row(r));
  }
}

template <Inflate inflate, bool fix_ups>
void byte_stream(const TileStream& src, const CodecParams& params, const TileLayout& layout,
                 const TileTarget& dst) {
  if (fix_ups && params.bilevel) {
    packed_stream<inflate>(src, params, layout, dst);
    return;
  }
  const size_t bytes = layout.bytes(), row_bytes = layout.row_bytes();
  const bool in_place = dst.contiguous(layout);
  uint8_t* tile = in_place ? dst.base : scratch_tile(bytes);
  inflate(src, params, layout, tile, bytes);
  if (fix_ups) {
    if (params.byteswap) byteswap_samples(tile, bytes, layout.bytes_per_sample);
    if (params.predictor == 2) undo_horizontal_predictor(tile, layout);
  }
  if (in_place) return;
  const size_t px = layout.pixel_bytes(), span = size_t(dst.width) * px;
  const uint8_t* from = tile + size_t(dst.y) * row_bytes + size_t(dst.x) * px;
  for (uint32_t r = 0; r < dst.height; ++r) std::memcpy(dst.row(r), from + size_t(r) * row_bytes, span);
}

void inflate_raw(const TileStream& src, const CodecParams&, const TileLayout& layout, uint8_t* dst, size_t n) {
  // Only rows inside the image must be stored (a short last strip is fine).
  const uint64_t need = uint64_t(src.stored_rows) * layout.row_bytes();
  if (src.size < need) {
    throw Error(ErrorKind::Decode,
                "uncompressed tile has " + std::to_string(src.size) + " bytes, needs " + std::to_string(need));
  }
  const size_t copied = src.size < n ? src.size : n;
  std::memcpy(dst, src.data, copied);
  std::memset(dst + copied, 0, n - copied);
}

void inflate_zlib(const TileStream& src, const CodecParams&, const TileLayout&, uint8_t* dst, size_t n) {
  inflate_deflate(src.data, src.size, dst, n);
}

void inflate_tiff_lzw(const TileStream& src, const CodecParams&, const TileLayout&, uint8_t* dst, size_t n) {
  inflate_lzw(src.data, src.size, dst, n);
}

void inflate_external(const TileStream& src, const CodecParams& params, const TileLayout& layout, uint8_t* dst,
                      size_t n) {
  if (params.external == nullptr || !*params.external) throw Error(ErrorKind::Format, "no external decoder");
  // External decoders size their output from the stream's own header: a
  // header that disagrees with the TIFF (a decompression bomb) is refused
  // before they allocate anything.
  check_stream_header(params.compression, src.data, src.size, layout,
                      TileExtent{src.stored_cols, src.stored_rows, params.strips});
  (*params.external)(src.data, src.size, src.index, dst, n);
}

// Each byte value's eight bits as eight 0/1 bytes in memory order, MSB first.
const std::array<uint64_t, 256>& bit_table() {
  static const std::array<uint64_t, 256> table = [] {
    std::array<uint64_t, 256> t{};
    for (unsigned v = 0; v < 256; ++v) {
      uint8_t bytes[8];
      for (unsigned b = 0; b < 8; ++b) bytes[b] = uint8_t((v >> (7 - b)) & 1u);
      std::memcpy(&t[v], bytes, 8);
    }
    return t;
  }();
  return table;
}

}  // namespace

void unpack_bits(const uint8_t* row, size_t first, size_t count, uint8_t* out) {
  const std::array<uint64_t, 256>& table = bit_table();
  size_t i = first;
  const size_t end = first + count;
  for (; i < end && (i & 7) != 0; ++i) *out++ = uint8_t((row[i >> 3] >> (7 - (i & 7))) & 1u);
  for (; i + 8 <= end; i += 8, out += 8) std::memcpy(out, &table[row[i >> 3]], 8);
  for (; i < end; ++i) *out++ = uint8_t((row[i >> 3] >> (7 - (i & 7))) & 1u);
}

void decode_raw(const TileStream& s, const CodecParams& p, const TileLayout& l, const TileTarget& t) {
  byte_stream<inflate_raw, true>(s, p, l, t);
}
void decode_deflate(const TileStream& s, const CodecParams& p, const TileLayout& l, const TileTarget& t) {
  byte_stream<inflate_zlib, true>(s, p, l, t);
}
void decode_lzw(const TileStream& s, const CodecParams& p, const TileLayout& l, const TileTarget& t) {
  byte_stream<inflate_tiff_lzw, true>(s, p, l, t);
}
// tifffile's decoder already returns native byte order with the predictor undone.
void decode_external(const TileStream& s, const CodecParams& p, const TileLayout& l, const TileTarget& t) {
  byte_stream<inflate_external, false>(s, p, l, t);
}

DecodeFn codec_decoder(Codec codec) {
  switch (codec) {
    case Codec::Raw: return decode_raw;
    case Codec::Deflate: return decode_deflate;
    case Codec::Lzw: return decode_lzw;
    case Codec::Jpeg: return decode_jpeg;
    case Codec::External: return decode_external;
    case Codec::JpegRestart: return nullptr;
  }
  return nullptr;
}

}  // namespace wsi
