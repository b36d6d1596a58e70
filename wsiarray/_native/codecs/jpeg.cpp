// JPEG tiles through libjpeg-turbo's jpeglib.h API: abbreviated streams with
// the TIFF JPEGTables, colour space from the Photometric tag, scanlines
// written straight to the caller's rows. One decompressor per thread.
#include <csetjmp>
#include <cstdio>
#include <cstring>
#include <string>

// jpeglib.h needs size_t and FILE declared first.
#include <jpeglib.h>

#include "../src/error.hpp"
#include "codecs.hpp"

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

// Returns false with d.err.message set on failure. No object with a
// destructor lives in this frame, so longjmp out of libjpeg is safe.
bool decode(Decompressor& d, const uint8_t* src, size_t size, const JpegParams& p,
            const TileLayout& layout, uint8_t* dst, size_t pitch) {
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
  if (p.in_colorspace >= 0) cinfo->jpeg_color_space = static_cast<J_COLOR_SPACE>(p.in_colorspace);
  if (p.out_colorspace >= 0) cinfo->out_color_space = static_cast<J_COLOR_SPACE>(p.out_colorspace);
  jpeg_start_decompress(cinfo);
  if (static_cast<uint32_t>(cinfo->output_components) != layout.samples ||
      cinfo->output_width > 65535) {
    std::snprintf(d.err.message, sizeof d.err.message,
                  "JPEG decodes to %d components, the TIFF says %u samples",
                  cinfo->output_components, layout.samples);
    jpeg_abort_decompress(cinfo);
    return false;
  }
  const uint32_t rows = cinfo->output_height < layout.height ? cinfo->output_height : layout.height;
  const size_t jpeg_row = size_t(cinfo->output_width) * layout.samples;
  const size_t tile_row = layout.row_bytes();
  if (jpeg_row == tile_row) {
    // The common case: scanlines go straight to their final place.
    JSAMPROW pointers[16];
    while (cinfo->output_scanline < rows) {
      uint32_t n = rows - cinfo->output_scanline;
      if (n > 16) n = 16;
      for (uint32_t k = 0; k < n; ++k) pointers[k] = dst + size_t(cinfo->output_scanline + k) * pitch;
      jpeg_read_scanlines(cinfo, pointers, n);
    }
  } else {
    // A frame narrower or wider than the tile (short last strips, odd
    // writers): go through one row and keep the overlap.
    const size_t keep = jpeg_row < tile_row ? jpeg_row : tile_row;
    while (cinfo->output_scanline < rows) {
      uint8_t* out = dst + size_t(cinfo->output_scanline) * pitch;
      JSAMPROW pointer = d.row;
      jpeg_read_scanlines(cinfo, &pointer, 1);
      std::memcpy(out, d.row, keep);
      std::memset(out + keep, 0, tile_row - keep);
    }
  }
  for (uint32_t r = rows; r < layout.height; ++r) std::memset(dst + size_t(r) * pitch, 0, tile_row);
  // abort, not finish: a frame taller than the tile is left unread.
  jpeg_abort_decompress(cinfo);
  return true;
}

}  // namespace

void decode_jpeg(const uint8_t* src, size_t size, const JpegParams& params,
                 const TileLayout& layout, uint8_t* dst, size_t pitch) {
  if (layout.bytes_per_sample != 1) throw Error(ErrorKind::Unsupported, "JPEG with more than 8 bits");
  Decompressor& d = thread_decompressor();
  if (!decode(d, src, size, params, layout, dst, pitch)) {
    throw Error(ErrorKind::Decode, std::string("JPEG: ") + d.err.message);
  }
}

}  // namespace wsi
