// What a tile's own stream says about its size, checked against the TIFF
// before any decoder allocates anything sized from it.
//
// One parser per self-describing codec, all with one signature: they scan a
// few dozen bytes of the stream (marker or box headers, never pixel data),
// copy nothing, and return nullptr with `out` set, or a short reason the
// stream's size could not be read (a stream whose size cannot be verified is
// not decoded). `header_parser` maps a TIFF Compression value to the parser
// of the stream it holds; codecs without one (zstd, LZMA, PackBits, LERC,
// ...) are decoded into a buffer of the tile's size and need none.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

#include "codecs.hpp"

namespace wsi {

struct StreamHeader {
  uint64_t width = 0;
  uint64_t height = 0;
  uint32_t samples = 0;  // components; 0: the stream does not say (or it is ambiguous)
  uint32_t bits = 0;     // bits per sample; 0: the stream does not say
};

using HeaderParser = const char* (*)(const uint8_t* data, size_t size, StreamHeader& out);

// JPEG (any SOFn, incl. lossless SOF3) and JPEG-LS (SOF55): the first frame header.
const char* parse_jpeg_header(const uint8_t* data, size_t size, StreamHeader& out);
// JPEG 2000: a raw codestream (SOC, SIZ) or a JP2 file (its jp2c box's SIZ).
const char* parse_j2k_header(const uint8_t* data, size_t size, StreamHeader& out);
// PNG: IHDR.
const char* parse_png_header(const uint8_t* data, size_t size, StreamHeader& out);
// WebP: the RIFF container's VP8X canvas, or the VP8 / VP8L frame header.
const char* parse_webp_header(const uint8_t* data, size_t size, StreamHeader& out);
// JPEG XL: the codestream's SizeHeader (bare, or in a jxlc/first jxlp box).
const char* parse_jxl_header(const uint8_t* data, size_t size, StreamHeader& out);
// JPEG XR: the ImageWidth/ImageHeight tags of its container's IFD.
const char* parse_jxr_header(const uint8_t* data, size_t size, StreamHeader& out);

struct HeaderCodec {
  const char* name = nullptr;  // for messages, e.g. "JPEG 2000"
  HeaderParser parse = nullptr;
};

// The parser for the streams of a TIFF Compression value; parse is nullptr
// for codecs whose streams do not carry their own dimensions.
HeaderCodec header_parser(uint32_t compression);

// Where a tile sits, for the sizes its stream may legally have.
struct TileExtent {
  uint32_t stored_cols = 0;  // columns inside the image
  uint32_t stored_rows = 0;  // rows inside the image
  bool strip = false;        // a strip (full width; the last may be shorter)
};

// Empty when `h` fits a tile of `layout` at `extent`, else why not, e.g.
// "JPEG header says 60000x60000, the TIFF says 256x256". Legal sizes mirror
// tifffile: a tile is its full size, or cropped to the image at the right
// and bottom edges (both, or the rows only); a strip is full width with at
// least its rows inside the image and at most RowsPerStrip.
std::string header_problem(const char* codec, const StreamHeader& h, const TileLayout& layout,
                           const TileExtent& extent);

// Parses `data` with the compression's parser (if any) and throws
// Error(Decode) when it cannot be read or disagrees with the TIFF.
void check_stream_header(uint32_t compression, const uint8_t* data, size_t size, const TileLayout& layout,
                         const TileExtent& extent);

}  // namespace wsi
