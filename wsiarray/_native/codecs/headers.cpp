// Stream header parsers (see headers.hpp). Each reads only marker, box or
// chunk headers up to the first size field, bounds-checking every read.
#include "headers.hpp"

#include <cstring>

#include "../src/error.hpp"

namespace wsi {
namespace {

uint32_t be16(const uint8_t* p) { return uint32_t(p[0]) << 8 | p[1]; }
uint32_t be32(const uint8_t* p) { return be16(p) << 16 | be16(p + 2); }
uint64_t be64(const uint8_t* p) { return uint64_t(be32(p)) << 32 | be32(p + 4); }
uint32_t le16(const uint8_t* p) { return uint32_t(p[1]) << 8 | p[0]; }
uint32_t le24(const uint8_t* p) { return le16(p) | uint32_t(p[2]) << 16; }
uint32_t le32(const uint8_t* p) { return le16(p) | le16(p + 2) << 16; }

// ISO BMFF-style boxes (JP2, JPEG XL container): finds the first top-level
// box of `type`; its payload is [*begin, *end).
bool find_box(const uint8_t* data, size_t size, const char* type, size_t* begin, size_t* end) {
  size_t pos = 0;
  while (size - pos >= 8) {
    uint64_t length = be32(data + pos);
    size_t header = 8;
    if (length == 1) {
      if (size - pos < 16) return false;
      length = be64(data + pos + 8);
      header = 16;
    } else if (length == 0) {
      length = size - pos;  // the box runs to the end
    }
    if (length < header || length > size - pos) return false;
    if (std::memcmp(data + pos + 4, type, 4) == 0) {
      *begin = pos + header;
      *end = pos + size_t(length);
      return true;
    }
    pos += size_t(length);
  }
  return false;
}

// LSB-first bit reader (JPEG XL).
struct BitReader {
  const uint8_t* data;
  size_t size;
  size_t bit = 0;
  bool ok = true;

  uint32_t read(unsigned count) {
    uint32_t value = 0;
    for (unsigned i = 0; i < count; ++i, ++bit) {
      if (bit / 8 >= size) {
        ok = false;
        return 0;
      }
      value |= uint32_t((data[bit / 8] >> (bit % 8)) & 1) << i;
    }
    return value;
  }
  // U32(BitsOffset(9, 1), BitsOffset(13, 1), BitsOffset(18, 1), BitsOffset(30, 1)): a size.
  uint64_t size_u32() {
    static const unsigned widths[4] = {9, 13, 18, 30};
    const uint32_t selector = read(2);
    return uint64_t(read(widths[selector])) + 1;
  }
};

const char* jxl_size_header(const uint8_t* data, size_t size, StreamHeader& out) {
  if (size < 2 || data[0] != 0xFF || data[1] != 0x0A) return "no JPEG XL codestream signature";
  BitReader bits{data + 2, size - 2};
  const bool small = bits.read(1) != 0;
  const uint64_t height = small ? (uint64_t(bits.read(5)) + 1) * 8 : bits.size_u32();
  const uint32_t ratio = bits.read(3);
  uint64_t width = 0;
  if (ratio == 0) {
    width = small ? (uint64_t(bits.read(5)) + 1) * 8 : bits.size_u32();
  } else {
    static const uint32_t num[8] = {0, 1, 12, 4, 3, 16, 5, 2};
    static const uint32_t den[8] = {1, 1, 10, 3, 2, 9, 4, 1};
    width = height * num[ratio] / den[ratio];
  }
  if (!bits.ok) return "JPEG XL size header is truncated";
  out = StreamHeader{width, height, 0, 0};
  return nullptr;
}

// JPEG XR's codestream header ("WMPHOTO\0", big-endian bit fields).
const char* jxr_image_header(const uint8_t* data, size_t size, StreamHeader& out) {
  if (size < 12 || std::memcmp(data, "WMPHOTO\0", 8) != 0) return "no JPEG XR image header";
  const bool short_header = (data[10] & 0x80) != 0;
  const size_t need = short_header ? 16 : 20;
  if (size < need) return "JPEG XR image header is truncated";
  const uint64_t w = short_header ? be16(data + 12) : be32(data + 12);
  const uint64_t h = short_header ? be16(data + 14) : be32(data + 16);
  out = StreamHeader{w + 1, h + 1, 0, 0};
  return nullptr;
}

std::string dims(uint64_t w, uint64_t h) { return std::to_string(w) + "x" + std::to_string(h); }

}  // namespace

const char* parse_jpeg_header(const uint8_t* data, size_t size, StreamHeader& out) {
  if (size < 2 || data[0] != 0xFF || data[1] != 0xD8) return "no JPEG start-of-image marker";
  size_t pos = 2;
  for (;;) {
    // As libjpeg: bytes before a marker are skipped, then any 0xFF fill.
    while (pos < size && data[pos] != 0xFF) ++pos;
    while (pos < size && data[pos] == 0xFF) ++pos;
    if (pos >= size) return "no JPEG frame header (SOF) before the end of the stream";
    const uint8_t marker = data[pos++];
    if (marker == 0x01 || (marker >= 0xD0 && marker <= 0xD7)) continue;  // no length
    if (marker == 0xD8) return "second JPEG start-of-image marker before the frame header";
    if (marker == 0xD9) return "no JPEG frame header (SOF) before the end of image";
    if (marker == 0xDA) return "JPEG scan before the frame header (SOF)";
    if (size - pos < 2) return "JPEG marker segment is truncated";
    const size_t length = be16(data + pos);
    if (length < 2 || length > size - pos) return "JPEG marker segment is truncated";
    const bool sof = (marker >= 0xC0 && marker <= 0xCF && marker != 0xC4 && marker != 0xC8 && marker != 0xCC) ||
                     marker == 0xF7;  // SOF55: JPEG-LS
    if (sof) {
      if (length < 8) return "JPEG frame header is truncated";
      const uint8_t* p = data + pos + 2;
      out = StreamHeader{be16(p + 3), be16(p + 1), p[5], p[0]};
      return nullptr;
    }
    pos += length;
  }
}

const char* parse_j2k_header(const uint8_t* data, size_t size, StreamHeader& out) {
  static const uint8_t jp2[12] = {0, 0, 0, 12, 'j', 'P', ' ', ' ', 0x0D, 0x0A, 0x87, 0x0A};
  if (size >= 12 && std::memcmp(data, jp2, 12) == 0) {
    size_t begin = 0, end = 0;
    // The decoder sizes its image from the codestream, not from the ihdr box.
    if (!find_box(data, size, "jp2c", &begin, &end)) return "JP2 file without a codestream box";
    return parse_j2k_header(data + begin, end - begin, out);
  }
  // SIZ must follow SOC directly (ISO 15444-1 A.5.1).
  if (size < 4 || be16(data) != 0xFF4F || be16(data + 2) != 0xFF51) return "no JPEG 2000 SOC and SIZ markers";
  const uint8_t* p = data + 4;
  const size_t avail = size - 4;
  if (avail < 38) return "JPEG 2000 SIZ segment is truncated";
  const size_t length = be16(p);
  const uint32_t components = be16(p + 36);
  if (components == 0 || length != 38 + 3 * size_t(components) || length > avail) {
    return "JPEG 2000 SIZ segment is malformed";
  }
  const uint32_t xsiz = be32(p + 4), ysiz = be32(p + 8), xo = be32(p + 12), yo = be32(p + 16);
  if (xo >= xsiz || yo >= ysiz) return "JPEG 2000 image offset outside the image";
  uint32_t bits = 0;
  for (uint32_t c = 0; c < components; ++c) {
    const uint32_t b = (p[38 + 3 * c] & 0x7F) + 1u;
    if (b > bits) bits = b;
  }
  out = StreamHeader{xsiz - xo, ysiz - yo, components, bits};
  return nullptr;
}

const char* parse_png_header(const uint8_t* data, size_t size, StreamHeader& out) {
  static const uint8_t signature[8] = {0x89, 'P', 'N', 'G', 0x0D, 0x0A, 0x1A, 0x0A};
  if (size < 26 || std::memcmp(data, signature, 8) != 0 || std::memcmp(data + 12, "IHDR", 4) != 0) {
    return "no PNG signature and IHDR chunk";
  }
  const uint8_t depth = data[24], colour = data[25];
  uint32_t samples = 0;
  switch (colour) {
    case 0: samples = 1; break;
    case 2: samples = 3; break;
    case 3: samples = 0; break;  // palette: expanded by the decoder
    case 4: samples = 2; break;
    case 6: samples = 4; break;
    default: return "PNG colour type is invalid";
  }
  out = StreamHeader{be32(data + 16), be32(data + 20), samples, depth};
  return nullptr;
}

const char* parse_webp_header(const uint8_t* data, size_t size, StreamHeader& out) {
  if (size < 20 || std::memcmp(data, "RIFF", 4) != 0 || std::memcmp(data + 8, "WEBP", 4) != 0) {
    return "no WebP RIFF header";
  }
  const uint8_t* chunk = data + 12;
  const size_t avail = size - 20;  // payload bytes after the first chunk's header
  const uint8_t* p = chunk + 8;
  // Samples: 0, as an alpha channel may or may not be stored (tifffile adds one).
  if (std::memcmp(chunk, "VP8X", 4) == 0) {
    if (avail < 10) return "WebP VP8X chunk is truncated";
    out = StreamHeader{uint64_t(le24(p + 4)) + 1, uint64_t(le24(p + 7)) + 1, 0, 8};
    return nullptr;
  }
  if (std::memcmp(chunk, "VP8L", 4) == 0) {
    if (avail < 5 || p[0] != 0x2F) return "WebP VP8L header is malformed";
    const uint32_t bits = le32(p + 1);
    out = StreamHeader{uint64_t(bits & 0x3FFF) + 1, uint64_t((bits >> 14) & 0x3FFF) + 1, 0, 8};
    return nullptr;
  }
  if (std::memcmp(chunk, "VP8 ", 4) == 0) {
    if (avail < 10) return "WebP VP8 frame header is truncated";
    if ((p[0] & 1) != 0 || p[3] != 0x9D || p[4] != 0x01 || p[5] != 0x2A) return "WebP VP8 key frame is malformed";
    out = StreamHeader{le16(p + 6) & 0x3FFFu, le16(p + 8) & 0x3FFFu, 0, 8};
    return nullptr;
  }
  return "WebP stream without a VP8, VP8L or VP8X chunk";
}

const char* parse_jxl_header(const uint8_t* data, size_t size, StreamHeader& out) {
  static const uint8_t container[12] = {0, 0, 0, 12, 'J', 'X', 'L', ' ', 0x0D, 0x0A, 0x87, 0x0A};
  if (size >= 12 && std::memcmp(data, container, 12) == 0) {
    size_t begin = 0, end = 0;
    if (find_box(data, size, "jxlc", &begin, &end)) return jxl_size_header(data + begin, end - begin, out);
    // A partial codestream box starts with its 4-byte index; the first holds the header.
    if (find_box(data, size, "jxlp", &begin, &end) && end - begin >= 4) {
      return jxl_size_header(data + begin + 4, end - begin - 4, out);
    }
    return "JPEG XL container without a codestream box";
  }
  return jxl_size_header(data, size, out);
}

const char* parse_jxr_header(const uint8_t* data, size_t size, StreamHeader& out) {
  if (size >= 8 && std::memcmp(data, "WMPHOTO\0", 8) == 0) return jxr_image_header(data, size, out);
  if (size < 8 || data[0] != 'I' || data[1] != 'I' || data[2] != 0xBC) return "no JPEG XR signature";
  const uint32_t ifd = le32(data + 4);
  if (ifd > size || size - ifd < 2) return "JPEG XR directory lies outside the stream";
  const uint32_t entries = le16(data + ifd);
  if ((size - ifd - 2) / 12 < entries) return "JPEG XR directory is truncated";
  uint64_t width = 0, height = 0, offset = 0;
  for (uint32_t i = 0; i < entries; ++i) {
    const uint8_t* e = data + ifd + 2 + 12 * size_t(i);
    const uint32_t tag = le16(e), type = le16(e + 2);
    const uint64_t value = type == 3 ? le16(e + 8) : le32(e + 8);
    if (tag == 0xBC80) width = value;
    if (tag == 0xBC81) height = value;
    if (tag == 0xBCC0) offset = value;  // ImageOffset: the codestream
  }
  if (offset == 0 || offset >= size) return "JPEG XR container without an image";
  StreamHeader image;
  if (const char* problem = jxr_image_header(data + offset, size - size_t(offset), image)) return problem;
  if ((width != 0 && width != image.width) || (height != 0 && height != image.height)) {
    return "JPEG XR container and codestream disagree on the image size";
  }
  out = image;
  return nullptr;
}

HeaderCodec header_parser(uint32_t compression) {
  switch (compression) {
    case 7:      // JPEG
    case 33007:  // ALT_JPEG
    case 34892:  // JPEG_LOSSY (DNG)
      return {"JPEG", parse_jpeg_header};
    case 33003:  // Aperio JPEG 2000 YCbCr
    case 33004:
    case 33005:  // Aperio JPEG 2000 RGB
    case 34712:
      return {"JPEG 2000", parse_j2k_header};
    case 34933: return {"PNG", parse_png_header};
    case 34927:
    case 50001: return {"WebP", parse_webp_header};
    case 50002:
    case 52546: return {"JPEG XL", parse_jxl_header};
    case 22610:
    case 34934: return {"JPEG XR", parse_jxr_header};
    default: return {};
  }
}

std::string header_problem(const char* codec, const StreamHeader& h, const TileLayout& layout,
                           const TileExtent& e) {
  const uint64_t tw = layout.width, th = layout.height;
  bool fits = false;
  if (e.strip) {
    fits = h.width == tw && h.height >= e.stored_rows && h.height <= th;
  } else {
    fits = (h.width == tw && h.height == th) || (h.width == e.stored_cols && h.height == e.stored_rows) ||
           (h.width == tw && h.height == e.stored_rows);
  }
  const std::string says = std::string(codec) + " header says ";
  if (!fits) {
    std::string tiff = dims(tw, th);
    if (e.strip && e.stored_rows < th) tiff = dims(tw, e.stored_rows) + " to " + tiff;
    if (!e.strip && (e.stored_cols < tw || e.stored_rows < th)) {
      tiff += " (or " + dims(e.stored_cols, e.stored_rows) + " at the image edge)";
    }
    return says + dims(h.width, h.height) + ", the TIFF says " + tiff;
  }
  if (h.samples != 0 && h.samples != layout.samples) {
    return says + std::to_string(h.samples) + " components, the TIFF says " + std::to_string(layout.samples) +
           " samples per pixel";
  }
  if (h.bits != 0 && h.bits > 8 * layout.bytes_per_sample) {
    return says + std::to_string(h.bits) + " bits per sample, the TIFF says " +
           std::to_string(8 * layout.bytes_per_sample);
  }
  return {};
}

void check_stream_header(uint32_t compression, const uint8_t* data, size_t size, const TileLayout& layout,
                         const TileExtent& extent) {
  const HeaderCodec codec = header_parser(compression);
  if (codec.parse == nullptr) return;
  StreamHeader h;
  if (const char* problem = codec.parse(data, size, h)) throw Error(ErrorKind::Decode, problem);
  const std::string problem = header_problem(codec.name, h, layout, extent);
  if (!problem.empty()) throw Error(ErrorKind::Decode, problem);
}

}  // namespace wsi
