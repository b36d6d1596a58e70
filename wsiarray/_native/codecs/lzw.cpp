// TIFF LZW (MSB-first codes of 9 to 12 bits, "early change"), as libtiff
// writes it. Table entries point into the output already written: a new
// code's string is the previous string plus the byte that follows it there.
#include <cstring>
#include <string>

#include "../src/error.hpp"
#include "codecs.hpp"

namespace wsi {
namespace {

constexpr uint32_t kClear = 256;
constexpr uint32_t kEnd = 257;
constexpr uint32_t kFirst = 258;
constexpr uint32_t kMaxCodes = 4096;

struct Entry {
  size_t offset;
  uint32_t length;
};

class BitReader {
 public:
  BitReader(const uint8_t* src, size_t size) : src_(src), size_(size) {}
  // Returns false when fewer than `bits` bits are left.
  bool read(uint32_t bits, uint32_t& code) {
    while (count_ < bits) {
      if (pos_ >= size_) return false;
      buffer_ = (buffer_ << 8) | src_[pos_++];
      count_ += 8;
    }
    count_ -= bits;
    code = static_cast<uint32_t>(buffer_ >> count_) & ((1u << bits) - 1);
    return true;
  }

 private:
  const uint8_t* src_;
  size_t size_;
  size_t pos_ = 0;
  uint64_t buffer_ = 0;
  uint32_t count_ = 0;
};

}  // namespace

void inflate_lzw(const uint8_t* src, size_t size, uint8_t* dst, size_t dst_size) {
  if (size >= 2 && src[0] == 0 && (src[1] & 1)) {
    throw Error(ErrorKind::Unsupported, "LZW: old-style (pre-TIFF 6) LZW is not supported");
  }
  static thread_local Entry table[kMaxCodes];
  BitReader bits(src, size);
  uint32_t width = 9;
  uint32_t next = kFirst;
  bool have_prev = false;
  size_t prev_offset = 0;
  uint32_t prev_length = 0;
  size_t out = 0;
  uint32_t code = 0;
  while (out < dst_size && bits.read(width, code)) {
    if (code == kEnd) break;
    if (code == kClear) {
      width = 9;
      next = kFirst;
      have_prev = false;
      continue;
    }
    size_t offset = out;
    uint32_t length = 0;
    if (code < 256) {
      dst[out] = static_cast<uint8_t>(code);
      length = 1;
    } else if (!have_prev || code > next || (code == next && next >= kMaxCodes)) {
      throw Error(ErrorKind::Decode, "LZW: invalid code " + std::to_string(code));
    } else {
      // code == next is the KwKwK case: the previous string plus its own first byte.
      const bool pending = code == next;
      const Entry e = pending ? Entry{prev_offset, prev_length + 1} : table[code];
      length = e.length;
      size_t n = length;
      if (n > dst_size - out) n = dst_size - out;
      // Byte by byte: in the KwKwK case the last byte is the one written first.
      for (size_t k = 0; k < n; ++k) dst[out + k] = dst[e.offset + k];
    }
    if (have_prev && next < kMaxCodes) {
      table[next++] = Entry{prev_offset, prev_length + 1};
      if (next == (1u << width) - 1 && width < 12) ++width;
    }
    have_prev = true;
    prev_offset = offset;
    prev_length = length;
    out += length;
  }
  if (out < dst_size) std::memset(dst + out, 0, dst_size - out);
}

}  // namespace wsi
