// One baseline JPEG whose restart intervals are the tiles (Hamamatsu NDPI):
// its scan header, and streams of any rectangle of intervals assembled from
// it. A restart interval resets the DC predictors and starts on an MCU, so
// the intervals of a rectangle, row after row, are the entropy-coded data of
// a JPEG of that rectangle's size: the level's header with the frame size
// (SOF) patched, the intervals' bytes with their restart markers renumbered
// from RST0 (libjpeg expects RST0 after the first interval of a scan), and an
// EOI. Every offset and length is checked before use.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

namespace wsi {

// libjpeg's JPEG_MAX_DIMENSION: no frame may be wider or taller (the SOF's
// 16-bit fields would allow 65535).
constexpr uint32_t kMaxJpegDimension = 65500;

struct ScanHeader {
  uint32_t width = 0;    // the frame header's size (0 in levels over 65535 px)
  uint32_t height = 0;
  uint32_t components = 0;
  uint32_t mcu_width = 0;   // 8 * the largest horizontal sampling factor (8 for one component)
  uint32_t mcu_height = 0;
  uint32_t restart_interval = 0;  // MCUs per interval (DRI); 0: none
  size_t sof_size_at = 0;  // where the frame header's height (then width) field is
  size_t length = 0;       // bytes up to the first entropy-coded byte (SOI .. SOS)
};

// Parses the markers from SOI through the first SOS. Returns nullptr, or
// why the header is not one this module reads (not baseline/extended
// Huffman, not 8-bit, a non-interleaved first scan, truncated segments).
const char* parse_scan_header(const uint8_t* data, size_t size, ScanHeader& out);

// Copies header.length bytes of `header` to `dst` with the frame size set to
// width x height (each 1..kMaxJpegDimension).
void write_scan_header(const uint8_t* header, const ScanHeader& h, uint32_t width, uint32_t height, uint8_t* dst);

// The intervals of one stream, in order: interval k of the stream is
// [end[k-1], end[k]) of `data` (end[-1] = the header's length) and is the
// file's interval `index[k]`, whose last two bytes must be RST(index % 8),
// or EOI for the file's last interval (`last_index`). Rewrites those bytes
// to RST(k % 8) and an EOI after the stream's last interval. Throws
// Error(Decode) naming the interval when a marker is not where the tables
// say (truncated intervals, restart counts that do not match the file).
void renumber_restart_markers(uint8_t* data, size_t header_length, const std::vector<uint64_t>& end,
                              const std::vector<uint64_t>& index, uint64_t last_index);

// Finds restart markers in the scan data of a stream fed to it in pieces:
// the offsets (relative to the stream) just past each RSTn, in order, until
// EOI. Markers must come in sequence (RST0, RST1, ..., RST7, RST0, ...).
class RestartScanner {
 public:
  // `start`: the first entropy-coded byte; at most `max_markers` are kept
  // (more is an error: the file has more intervals than its grid).
  RestartScanner(uint64_t start, uint64_t max_markers) : pos_(start), max_(max_markers) {}
  // `data` holds bytes [at, at + size) of the stream; pieces come in order
  // and start at or after `next()`. Returns false once EOI was seen.
  bool feed(const uint8_t* data, size_t size, uint64_t at);
  uint64_t next() const { return pos_; }
  bool done() const { return done_; }
  const std::vector<uint64_t>& ends() const { return ends_; }

 private:
  uint64_t pos_;
  uint64_t max_;
  bool pending_ff_ = false;
  bool done_ = false;
  std::vector<uint64_t> ends_;
};

}  // namespace wsi
