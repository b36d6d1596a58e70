// Tile decoders behind one signature, looked up by codec id:
//
//   decode(stream, params, layout, target)
//
// writes the pixels of `target`'s window of one decoded tile (`layout`:
// width x height pixels of `samples` interleaved samples) to the target's
// rows: base + r * pitch, or rows[r] (row pointers, e.g. into the pages of a
// cache entry). A whole-tile target with base/pitch lets JPEG write its
// scanlines straight to the caller's output; byte-stream codecs (raw,
// deflate, LZW, external) decode a contiguous tile, in place when the target
// is one, and apply byte swap and the horizontal predictor as part of
// decoding. All throw wsi::Error(Decode) on corrupt input and never read
// outside the stream or write outside the target's window.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <vector>

namespace wsi {

// JpegRestart: the tiles are the restart intervals of one JPEG (NDPI); its
// header is the level's jpeg_tables and reads go through restart.hpp, not
// the per-tile decoders (codec_decoder gives none).
enum class Codec : int { Raw = 0, Deflate = 1, Lzw = 2, Jpeg = 3, JpegRestart = 4, External = 255 };

struct TileLayout {
  uint32_t width = 0;
  uint32_t height = 0;
  uint32_t samples = 0;
  uint32_t bytes_per_sample = 1;
  size_t pixel_bytes() const { return size_t(samples) * bytes_per_sample; }
  size_t row_bytes() const { return size_t(width) * pixel_bytes(); }
  size_t bytes() const { return row_bytes() * height; }
};

// One tile's compressed bytes.
struct TileStream {
  const uint8_t* data = nullptr;
  size_t size = 0;
  uint64_t index = 0;     // into the level's tile tables (for external decoders)
  uint32_t stored_rows = 0;  // rows inside the image: a short last strip may store only those
  uint32_t stored_cols = 0;  // columns inside the image (an edge tile's stream may hold only those)
};

// Colour spaces use libjpeg's J_COLOR_SPACE values; -1 keeps libjpeg's guess.
struct JpegParams {
  const uint8_t* tables = nullptr;
  size_t tables_size = 0;
  int in_colorspace = -1;
  int out_colorspace = -1;
  // 1, 2, 4 or 8: decode at 1/scale_denom of the tile's size with
  // libjpeg's DCT scaling (reads at a target resolution, resample.hpp). The
  // layout a decoder gets is then the scaled tile's; the stream's header is
  // still checked against the full tile (scale_denom times the layout).
  uint32_t scale_denom = 1;
};

// Decodes one tile's bytes (index into the tile tables) into `dst`, a
// contiguous tile of dst_size bytes. Used for codecs decoded outside the
// engine (imagecodecs through Python); may throw wsi::Error.
using ExternalDecoder = std::function<void(const uint8_t* src, size_t size, uint64_t index,
                                           uint8_t* dst, size_t dst_size)>;

// A level's decoding parameters, fixed for all its tiles.
struct CodecParams {
  JpegParams jpeg;
  bool byteswap = false;  // samples are stored in the other byte order
  int predictor = 1;      // 1 none, 2 horizontal differencing
  const ExternalDecoder* external = nullptr;
  uint32_t compression = 0;  // the TIFF Compression value: which stream header to check (headers.hpp)
  bool strips = false;       // tiles are strips: the last may be shorter
  // Bilevel (1 bit per sample): the stream holds rows of width * samples bits,
  // most significant bit first, each row padded to a byte; they decode to one
  // byte per sample, 0 or 1 (raw, deflate and LZW only).
  bool bilevel = false;
};

// Where decoded pixels go: the window [x, x + width) x [y, y + height) of
// the tile, its row r at rows[r] when rows is set, else at base + r * pitch.
struct TileTarget {
  uint8_t* base = nullptr;
  size_t pitch = 0;
  uint8_t* const* rows = nullptr;
  uint32_t x = 0, y = 0, width = 0, height = 0;

  uint8_t* row(uint32_t r) const { return rows != nullptr ? rows[r] : base + size_t(r) * pitch; }
  bool whole(const TileLayout& l) const { return x == 0 && y == 0 && width == l.width && height == l.height; }
  // One contiguous tile: a byte-stream codec may decode straight into it.
  bool contiguous(const TileLayout& l) const { return rows == nullptr && whole(l) && pitch == l.row_bytes(); }

  static TileTarget tile(const TileLayout& l, uint8_t* base, size_t pitch) {
    return TileTarget{base, pitch, nullptr, 0, 0, l.width, l.height};
  }
  static TileTarget row_pointers(const TileLayout& l, uint8_t* const* rows) {
    return TileTarget{nullptr, 0, rows, 0, 0, l.width, l.height};
  }
};

using DecodeFn = void (*)(const TileStream& src, const CodecParams& params, const TileLayout& layout,
                          const TileTarget& dst);

// The decoder of a codec, or nullptr for an unknown id.
DecodeFn codec_decoder(Codec codec);

// The codecs (all through codec_decoder).
void decode_raw(const TileStream&, const CodecParams&, const TileLayout&, const TileTarget&);
void decode_deflate(const TileStream&, const CodecParams&, const TileLayout&, const TileTarget&);
void decode_lzw(const TileStream&, const CodecParams&, const TileLayout&, const TileTarget&);
void decode_jpeg(const TileStream&, const CodecParams&, const TileLayout&, const TileTarget&);
void decode_external(const TileStream&, const CodecParams&, const TileLayout&, const TileTarget&);

// What the native JPEG decoder makes of one tile, without decoding it: its
// header read with the level's tables and checked against the TIFF as
// decode_jpeg checks it (throws Error(Decode) likewise), the frame's size
// and components, and whether its three components are RGB-coded (decoded
// without a YCbCr transform; the rule decode_jpeg applies). `layout` is the
// full-size tile. For handing tiles to other decoders (streams.hpp).
struct JpegTileInfo {
  uint32_t width = 0;
  uint32_t height = 0;
  uint32_t components = 0;
  bool rgb_coded = false;
};
JpegTileInfo inspect_jpeg(const TileStream& src, const CodecParams& params, const TileLayout& layout);

// The bytes that turn an abbreviated tile stream into a standalone JPEG:
// `prefix + tile[2:]` where prefix is SOI, for RGB-coded tiles an Adobe
// APP14 segment with transform 0 (decoders that assume YCbCr for three
// components, such as nvImageCodec, then keep RGB), and the tables stream's
// segments (tables[2:-2]; none when size is 0). Returns nullptr, or why the
// tables are not a tables-only stream.
const char* jpeg_splice_prefix(const uint8_t* tables, size_t size, bool rgb_coded, std::vector<uint8_t>& out);

// The size of the JFIF APP0 segment right after a stream's SOI (marker and
// length included), or 0 when there is none. A JFIF marker says "YCbCr" to
// decoders that honour it over an Adobe segment (nvImageCodec), so it is
// left out of the standalone streams of RGB-coded tiles (DICOM RGB frames
// carry one: their colour follows the photometric interpretation).
size_t jpeg_jfif_bytes(const uint8_t* data, size_t size);

// Decodes `target`'s window of a complete JPEG stream (no tables stream)
// whose frame must be frame_width x frame_height (checked before anything is
// allocated): an assembled run of restart intervals (restart.hpp). `layout`
// is the decoded frame, i.e. the frame size divided by params.scale_denom,
// rounded up.
void decode_jpeg_frame(const uint8_t* data, size_t size, const JpegParams& params, uint32_t frame_width,
                       uint32_t frame_height, const TileLayout& layout, const TileTarget& target);

// Pieces the byte-stream decoders share (codecs/table.cpp, predictor.cpp):
// inflate into a contiguous tile of dst_size bytes (a stream that ends
// cleanly but early leaves zeros) ...
void inflate_deflate(const uint8_t* src, size_t size, uint8_t* dst, size_t dst_size);
void inflate_lzw(const uint8_t* src, size_t size, uint8_t* dst, size_t dst_size);
// ... then, in place, swap to native byte order and undo TIFF predictor 2.
void byteswap_samples(uint8_t* data, size_t bytes, uint32_t bytes_per_sample);
void undo_horizontal_predictor(uint8_t* data, const TileLayout& layout);
// Bits [first, first + count) of a packed row (MSB first) as bytes 0/1 at `out`.
void unpack_bits(const uint8_t* row, size_t first, size_t count, uint8_t* out);

}  // namespace wsi
