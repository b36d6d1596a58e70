// JPEG tiles through libjpeg-turbo's jpeglib.h API: abbreviated streams with
// the TIFF JPEGTables, colour space from the Photometric tag, scanlines
// written straight to the caller's rows. One decompressor per thread.
#include <algorithm>
#include <csetjmp>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

// jpeglib.h needs size_t and FILE declared first.
#include <jpeglib.h>

#include "../src/error.hpp"
#include "codecs.hpp"
#include "headers.hpp"

namespace wsi {
namespace {

struct ErrorManager {
  jpeg_error_mgr pub;
  jmp_buf jump;
  char message[JMSG_LENGTH_MAX];
};

void on_error(j_common_ptr cinfo) {
  auto* err = reinterpret_cast<ErrorManager*>(cinfo->err);
  (*cinfo->err->format_message)(cinfo, err->message);
  longjmp(err->jump, 1);
}

// Warnings (e.g. "premature end of data segment") are not fatal, as in
// imagecodecs; nothing goes to stderr.
void on_message(j_common_ptr, int) {}

struct Decompressor {
  jpeg_decompress_struct cinfo{};
  ErrorManager err{};
  // JPEG frames are at most 65535 pixels wide: one row fits in this buffer.
  unsigned char row[65535 * 4];

  Decompressor() {
    cinfo.err = jpeg_std_error(&err.pub);
    err.pub.error_exit = on_error;
    err.pub.emit_message = on_message;
    err.message[0] = '\0';
    jpeg_create_decompress(&cinfo);
  }
  ~Decompressor() { jpeg_destroy_decompress(&cinfo); }
  Decompressor(const Decompressor&) = delete;
  Decompressor& operator=(const Decompressor&) = delete;
};

Decompressor& thread_decompressor() {
  static thread_local Decompressor d;
  return d;
}

// Reads the tables stream, then the tile's stream up to its first scan:
// libjpeg parses the frame header (any SOF it accepts) but allocates nothing
// sized from it yet. Returns false with d.err.message set on failure. No
// object with a destructor lives in this frame, so longjmp out of libjpeg is
// safe.
bool read_header(Decompressor& d, const uint8_t* src, size_t size, const JpegParams& p) {
  jpeg_decompress_struct* cinfo = &d.cinfo;
  if (setjmp(d.err.jump)) {
    jpeg_abort_decompress(cinfo);
    return false;
  }
  if (p.tables != nullptr && p.tables_size > 0) {
    jpeg_mem_src(cinfo, p.tables, static_cast<unsigned long>(p.tables_size));
    jpeg_read_header(cinfo, FALSE);
  }
  jpeg_mem_src(cinfo, src, static_cast<unsigned long>(size));
  if (jpeg_read_header(cinfo, TRUE) != JPEG_HEADER_OK) {
    std::snprintf(d.err.message, sizeof d.err.message, "no image in JPEG stream");
    jpeg_abort_decompress(cinfo);
    return false;
  }
  return true;
}

// The colour space a tile's samples are coded in, after read_header: the
// level's (from the TIFF Photometric tag or DICOM's photometric
// interpretation) when it names one, else libjpeg's guess from the stream's
// markers. The one rule for the decoder below and for the standalone streams
// handed to other decoders (inspect_jpeg).
J_COLOR_SPACE coded_colorspace(const jpeg_decompress_struct& cinfo, const JpegParams& p) {
  return p.in_colorspace >= 0 ? static_cast<J_COLOR_SPACE>(p.in_colorspace) : cinfo.jpeg_color_space;
}

// Reads a tile's header with the level's tables and checks its frame
// against the TIFF (`full`: the full-size tile) before anything is sized
// from it (a progressive frame of 60000x60000 would allocate gigabytes of
// coefficients). Throws Error(Decode); on success the decompressor holds the
// parsed header.
void read_checked_header(Decompressor& d, const TileStream& src, const CodecParams& params, const TileLayout& full) {
  if (!read_header(d, src.data, src.size, params.jpeg)) {
    throw Error(ErrorKind::Decode, std::string("JPEG: ") + d.err.message);
  }
  const jpeg_decompress_struct& c = d.cinfo;
  const StreamHeader header{c.image_width, c.image_height, uint32_t(c.num_components), uint32_t(c.data_precision)};
  const std::string problem =
      header_problem("JPEG", header, full, TileExtent{src.stored_cols, src.stored_rows, params.strips});
  if (!problem.empty()) {
    jpeg_abort_decompress(&d.cinfo);
    throw Error(ErrorKind::Decode, problem);
  }
}

// Decodes the window of `out` (a TileTarget) of the tile whose header
// read_header read. A window smaller than the tile skips
// the rows above it and crops the columns to whole iMCUs around it, so only
// what is needed is decoded. Returns false with d.err.message set on
// failure; as read_header, no object with a destructor lives in this frame.
bool decode(Decompressor& d, const JpegParams& p, const TileLayout& layout, const TileTarget& out) {
  const TileTarget& win = out;
  jpeg_decompress_struct* cinfo = &d.cinfo;
  if (setjmp(d.err.jump)) {
    jpeg_abort_decompress(cinfo);
    return false;
  }
  cinfo->jpeg_color_space = coded_colorspace(*cinfo, p);
  if (p.out_colorspace >= 0) cinfo->out_color_space = static_cast<J_COLOR_SPACE>(p.out_colorspace);
  // Set on every tile: jpeg_read_header resets it to 1/1.
  cinfo->scale_num = 1;
  cinfo->scale_denom = p.scale_denom;
  jpeg_start_decompress(cinfo);
  if (static_cast<uint32_t>(cinfo->output_components) != layout.samples ||
      cinfo->output_width > 65535) {
    std::snprintf(d.err.message, sizeof d.err.message,
                  "JPEG decodes to %d components, the TIFF says %u samples",
                  cinfo->output_components, layout.samples);
    jpeg_abort_decompress(cinfo);
    return false;
  }
  const size_t comps = layout.samples;
  const bool exact = cinfo->output_width == layout.width && cinfo->output_height == layout.height;
  const bool whole = win.x == 0 && win.y == 0 && win.width == layout.width && win.height == layout.height;
  if (exact && whole) {
    // The common case: scanlines go straight to their final place.
    JSAMPROW pointers[16];
    while (cinfo->output_scanline < layout.height) {
      uint32_t n = layout.height - cinfo->output_scanline;
      if (n > 16) n = 16;
      for (uint32_t k = 0; k < n; ++k) pointers[k] = out.row(cinfo->output_scanline + k);
      jpeg_read_scanlines(cinfo, pointers, n);
    }
    jpeg_abort_decompress(cinfo);
    return true;
  }
  JDIMENSION first_col = 0;
  // Scaled decodes (a 1/2..1/8 tile) are cheap enough whole; cropping is
  // kept to the full-size path it was verified on.
  if (exact && p.scale_denom == 1) {
    // Only a window of a regular tile: decode just the iMCU columns and the
    // rows it needs (libjpeg-turbo gives the same pixels as a full decode).
    // The crop keeps one extra iMCU on each side: fancy upsampling treats a
    // crop edge as an image edge, so pixels next to it would differ.
    const uint32_t imcu = uint32_t(cinfo->max_h_samp_factor) * DCTSIZE;
    const uint32_t left = win.x > imcu ? win.x - imcu : 0;
    const uint32_t right = std::min<uint32_t>(win.x + win.width + imcu, cinfo->output_width);
    JDIMENSION xoffset = left, width = right - left;
    if (width < cinfo->output_width) jpeg_crop_scanline(cinfo, &xoffset, &width);
    first_col = xoffset;
    if (win.y > 0) jpeg_skip_scanlines(cinfo, win.y);
  }
  // Rows of the frame go through one row buffer; a frame smaller than the
  // tile (short last strips, edge tiles cropped to the image) leaves zeros.
  const uint32_t frame_w = cinfo->output_width, frame_h = cinfo->output_height;
  const size_t out_row = size_t(win.width) * comps;
  for (uint32_t r = 0; r < win.height; ++r) {
    uint8_t* row = out.row(r);
    const uint32_t y = win.y + r;
    size_t n = 0;  // bytes of the row the frame covers; only the rest is zeroed
    if (y < frame_h) {
      while (cinfo->output_scanline <= y) {
        JSAMPROW pointer = d.row;
        jpeg_read_scanlines(cinfo, &pointer, 1);
      }
      if (win.x < first_col + frame_w) {
        const uint32_t avail = first_col + frame_w - win.x;
        n = size_t(avail < win.width ? avail : win.width) * comps;
        std::memcpy(row, d.row + size_t(win.x - first_col) * comps, n);
      }
    }
    if (n < out_row) std::memset(row + n, 0, out_row - n);
  }
  // abort, not finish: rows below the window are never decoded.
  jpeg_abort_decompress(cinfo);
  return true;
}

}  // namespace

void decode_jpeg(const TileStream& src, const CodecParams& params, const TileLayout& layout,
                 const TileTarget& dst) {
  if (layout.bytes_per_sample != 1) throw Error(ErrorKind::Unsupported, "JPEG with more than 8 bits");
  const uint32_t scale = params.jpeg.scale_denom;
  if (scale != 1 && scale != 2 && scale != 4 && scale != 8) throw Error(ErrorKind::Argument, "JPEG scale");
  // The stream is a full-size tile whatever the scale: its header is checked
  // against the tile the TIFF declares.
  const TileLayout full{layout.width * scale, layout.height * scale, layout.samples, layout.bytes_per_sample};
  if (uint64_t(dst.x) + dst.width > layout.width || uint64_t(dst.y) + dst.height > layout.height) {
    throw Error(ErrorKind::Decode, "JPEG window outside the tile");
  }
  Decompressor& d = thread_decompressor();
  read_checked_header(d, src, params, full);
  if (!decode(d, params.jpeg, layout, dst)) {
    throw Error(ErrorKind::Decode, std::string("JPEG: ") + d.err.message);
  }
}

JpegTileInfo inspect_jpeg(const TileStream& src, const CodecParams& params, const TileLayout& layout) {
  if (layout.bytes_per_sample != 1) throw Error(ErrorKind::Unsupported, "JPEG with more than 8 bits");
  Decompressor& d = thread_decompressor();
  read_checked_header(d, src, params, layout);
  const jpeg_decompress_struct& c = d.cinfo;
  JpegTileInfo info;
  info.width = c.image_width;
  info.height = c.image_height;
  info.components = uint32_t(c.num_components);
  info.rgb_coded = c.num_components == 3 && coded_colorspace(c, params.jpeg) == JCS_RGB;
  jpeg_abort_decompress(&d.cinfo);
  return info;
}

namespace {

// Adobe APP14, transform 0: "the three components are RGB, not YCbCr".
constexpr uint8_t kAdobeRgb[] = {0xFF, 0xEE, 0x00, 0x0E, 'A', 'd', 'o', 'b', 'e', 0x00, 0x64,
                                 0x00, 0x00, 0x00, 0x00, 0x00};

}  // namespace

const char* jpeg_splice_prefix(const uint8_t* tables, size_t size, bool rgb_coded, std::vector<uint8_t>& out) {
  out.clear();
  if (size > 0) {
    if (size < 4 || tables[0] != 0xFF || tables[1] != 0xD8 || tables[size - 2] != 0xFF || tables[size - 1] != 0xD9) {
      return "JPEGTables is not an SOI ... EOI stream";
    }
  }
  out.reserve(2 + sizeof kAdobeRgb + size);
  out.push_back(0xFF);
  out.push_back(0xD8);
  if (rgb_coded) out.insert(out.end(), kAdobeRgb, kAdobeRgb + sizeof kAdobeRgb);
  if (size > 0) out.insert(out.end(), tables + 2, tables + size - 2);
  return nullptr;
}

size_t jpeg_jfif_bytes(const uint8_t* data, size_t size) {
  // FF D8, FF E0, a 2-byte length (itself included), "JFIF\0".
  if (size < 11 || data[0] != 0xFF || data[1] != 0xD8 || data[2] != 0xFF || data[3] != 0xE0) return 0;
  const size_t length = (size_t(data[4]) << 8) | data[5];
  if (length < 7 || 4 + length > size || std::memcmp(data + 6, "JFIF", 5) != 0) return 0;
  return 2 + length;
}

void decode_jpeg_frame(const uint8_t* data, size_t size, const JpegParams& params, uint32_t frame_width,
                       uint32_t frame_height, const TileLayout& layout, const TileTarget& dst) {
  const uint32_t scale = params.scale_denom;
  if (scale != 1 && scale != 2 && scale != 4 && scale != 8) throw Error(ErrorKind::Argument, "JPEG scale");
  if (layout.bytes_per_sample != 1) throw Error(ErrorKind::Unsupported, "JPEG with more than 8 bits");
  if (uint64_t(dst.x) + dst.width > layout.width || uint64_t(dst.y) + dst.height > layout.height) {
    throw Error(ErrorKind::Decode, "JPEG window outside the frame");
  }
  Decompressor& d = thread_decompressor();
  if (!read_header(d, data, size, params)) throw Error(ErrorKind::Decode, std::string("JPEG: ") + d.err.message);
  const jpeg_decompress_struct& c = d.cinfo;
  if (c.image_width != frame_width || c.image_height != frame_height ||
      uint32_t(c.num_components) != layout.samples) {
    jpeg_abort_decompress(&d.cinfo);
    throw Error(ErrorKind::Decode, "JPEG frame is not the one assembled");
  }
  if (!decode(d, params, layout, dst)) throw Error(ErrorKind::Decode, std::string("JPEG: ") + d.err.message);
}

}  // namespace wsi
