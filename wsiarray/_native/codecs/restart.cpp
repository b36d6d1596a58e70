// Restart-interval streams (see restart.hpp).
#include "restart.hpp"

#include <cstdio>
#include <cstring>
#include <string>

#include "../src/error.hpp"

namespace wsi {
namespace {

uint32_t be16(const uint8_t* p) { return uint32_t(p[0]) << 8 | p[1]; }

bool is_rst(uint8_t marker) { return marker >= 0xD0 && marker <= 0xD7; }

}  // namespace

const char* parse_scan_header(const uint8_t* data, size_t size, ScanHeader& out) {
  if (size < 2 || data[0] != 0xFF || data[1] != 0xD8) return "no JPEG start-of-image marker";
  ScanHeader h;
  bool have_frame = false;
  uint8_t ids[4] = {0, 0, 0, 0};
  size_t pos = 2;
  for (;;) {
    if (pos >= size || data[pos] != 0xFF) return "JPEG header: expected a marker";
    while (pos < size && data[pos] == 0xFF) ++pos;  // fill bytes
    if (pos >= size) return "JPEG header is truncated";
    const uint8_t marker = data[pos++];
    if (marker == 0xD8 || marker == 0xD9 || is_rst(marker) || marker == 0x01) {
      return "JPEG header: unexpected marker before the scan";
    }
    if (size - pos < 2) return "JPEG header is truncated";
    const size_t length = be16(data + pos);
    if (length < 2 || length > size - pos) return "JPEG header: marker segment is truncated";
    const uint8_t* seg = data + pos + 2;
    const size_t n = length - 2;
    if (marker == 0xC0 || marker == 0xC1) {
      if (have_frame) return "JPEG header: two frame headers";
      if (n < 6) return "JPEG frame header is truncated";
      if (seg[0] != 8) return "JPEG frame is not 8-bit";
      h.height = be16(seg + 1);
      h.width = be16(seg + 3);
      h.components = seg[5];
      if ((h.components != 1 && h.components != 3) || n < 6 + 3 * size_t(h.components)) {
        return "JPEG frame header: unsupported component count";
      }
      uint32_t hmax = 1, vmax = 1;
      for (uint32_t c = 0; c < h.components; ++c) {
        const uint8_t s = seg[7 + 3 * c];
        const uint32_t hs = s >> 4, vs = s & 15;
        if (hs < 1 || hs > 4 || vs < 1 || vs > 4) return "JPEG frame header: bad sampling factors";
        hmax = hs > hmax ? hs : hmax;
        vmax = vs > vmax ? vs : vmax;
        ids[c] = seg[6 + 3 * c];
      }
      // A one-component scan is not interleaved: its MCU is one 8x8 block.
      h.mcu_width = h.components == 1 ? 8 : 8 * hmax;
      h.mcu_height = h.components == 1 ? 8 : 8 * vmax;
      h.sof_size_at = pos + 3;
      have_frame = true;
    } else if ((marker >= 0xC2 && marker <= 0xCF && marker != 0xC4 && marker != 0xC8 && marker != 0xCC) ||
               marker == 0xF7) {
      return "JPEG frame is not baseline or extended Huffman (progressive, lossless or arithmetic)";
    } else if (marker == 0xDD) {
      if (n < 2) return "JPEG restart interval segment is truncated";
      h.restart_interval = be16(seg);
    } else if (marker == 0xDA) {
      if (!have_frame) return "JPEG scan before the frame header";
      if (n < 1 || seg[0] != h.components || n < 1 + 2 * size_t(h.components)) {
        return "JPEG first scan does not hold every component";
      }
      for (uint32_t c = 0; c < h.components; ++c) {
        if (seg[1 + 2 * c] != ids[c]) return "JPEG first scan does not hold every component";
      }
      h.length = pos + length;
      out = h;
      return nullptr;
    }
    pos += length;
  }
}

void write_scan_header(const uint8_t* header, const ScanHeader& h, uint32_t width, uint32_t height, uint8_t* dst) {
  if (width == 0 || height == 0 || width > kMaxJpegDimension || height > kMaxJpegDimension ||
      h.sof_size_at + 4 > h.length) {
    throw Error(ErrorKind::Decode, "JPEG frame size out of range: " + std::to_string(width) + "x" +
                                       std::to_string(height));
  }
  std::memcpy(dst, header, h.length);
  uint8_t* p = dst + h.sof_size_at;
  p[0] = uint8_t(height >> 8);
  p[1] = uint8_t(height);
  p[2] = uint8_t(width >> 8);
  p[3] = uint8_t(width);
}

void renumber_restart_markers(uint8_t* data, size_t header_length, const std::vector<uint64_t>& end,
                              const std::vector<uint64_t>& index, uint64_t last_index) {
  uint64_t begin = header_length;
  for (size_t k = 0; k < end.size(); ++k) {
    if (end[k] < begin + 2) {
      throw Error(ErrorKind::Decode, "restart interval " + std::to_string(index[k]) + " has " +
                                         std::to_string(end[k] - begin) + " bytes, too few for its marker");
    }
    uint8_t* marker = data + end[k] - 2;
    const uint8_t want = index[k] == last_index ? 0xD9 : uint8_t(0xD0 + index[k] % 8);
    if (marker[0] != 0xFF || marker[1] != want) {
      char found[8];
      std::snprintf(found, sizeof found, "%02X %02X", marker[0], marker[1]);
      char expected[8];
      std::snprintf(expected, sizeof expected, "FF %02X", want);
      throw Error(ErrorKind::Decode, "restart interval " + std::to_string(index[k]) + " ends in bytes " + found +
                                         ", not its marker " + expected +
                                         " (a truncated interval, or restart counts that do not match the file)");
    }
    marker[1] = k + 1 == end.size() ? 0xD9 : uint8_t(0xD0 + k % 8);
    begin = end[k];
  }
}

bool RestartScanner::feed(const uint8_t* data, size_t size, uint64_t at) {
  if (done_) return false;
  if (at > pos_) pending_ff_ = false;  // a gap: only the caller's skipped bytes
  size_t i = pos_ > at ? size_t(pos_ - at) : 0;
  for (; i < size; ++i) {
    const uint8_t b = data[i];
    if (!pending_ff_) {
      if (b == 0xFF) pending_ff_ = true;
      continue;
    }
    if (b == 0xFF) continue;  // fill bytes before a marker
    pending_ff_ = false;
    if (b == 0x00) continue;  // a stuffed 0xFF data byte
    const uint64_t after = at + i + 1;
    if (is_rst(b)) {
      if (b != 0xD0 + ends_.size() % 8) {
        throw Error(ErrorKind::Decode, "restart marker " + std::to_string(ends_.size()) + " is RST" +
                                           std::to_string(b - 0xD0) + ", out of sequence");
      }
      if (ends_.size() >= max_) {
        throw Error(ErrorKind::Decode, "more restart markers than the level has intervals (" +
                                           std::to_string(max_) + ")");
      }
      ends_.push_back(after);
      continue;
    }
    if (b == 0xD9) {
      done_ = true;
      pos_ = after;
      return false;
    }
    throw Error(ErrorKind::Decode, "unexpected JPEG marker FF " + std::to_string(b) + " in scan data at byte " +
                                       std::to_string(after - 2));
  }
  pos_ = at + size;
  return true;
}

}  // namespace wsi
