// Deflate (Adobe 8 and old-style 32946) tiles through zlib, one reusable
// inflate state per thread.
#include <zlib.h>

#include <climits>
#include <cstring>
#include <string>

#include "../src/error.hpp"
#include "codecs.hpp"

namespace wsi {
namespace {

struct Inflater {
  z_stream stream{};
  bool ready = false;
  Inflater() { ready = inflateInit(&stream) == Z_OK; }
  ~Inflater() {
    if (ready) inflateEnd(&stream);
  }
  Inflater(const Inflater&) = delete;
  Inflater& operator=(const Inflater&) = delete;
};

}  // namespace

void inflate_deflate(const uint8_t* src, size_t size, uint8_t* dst, size_t dst_size) {
  static thread_local Inflater inflater;
  if (!inflater.ready) throw Error(ErrorKind::Decode, "deflate: zlib could not initialise");
  if (size > UINT_MAX || dst_size > UINT_MAX) throw Error(ErrorKind::Decode, "deflate: tile too large");
  z_stream& z = inflater.stream;
  inflateReset(&z);
  z.next_in = const_cast<Bytef*>(src);
  z.avail_in = static_cast<uInt>(size);
  z.next_out = dst;
  z.avail_out = static_cast<uInt>(dst_size);
  int rc = Z_OK;
  while (z.avail_out > 0 && rc == Z_OK) rc = inflate(&z, Z_NO_FLUSH);
  if (rc == Z_OK && z.avail_out == 0) {
    // The tile is complete: still run to the end of the stream, so that a
    // corrupt tile fails its Adler-32 check as it does in zlib and tifffile.
    // Bounded: a stream that goes on past the tile must not cost a long loop.
    uint8_t spill[64];
    for (int round = 0; rc == Z_OK && round < 1024; ++round) {
      z.next_out = spill;
      z.avail_out = sizeof spill;
      rc = inflate(&z, Z_NO_FLUSH);
    }
    // Extra data, or a stream that stops right after the tile: tolerated.
    if (rc == Z_BUF_ERROR || rc == Z_OK) rc = Z_STREAM_END;
    z.next_out = dst + dst_size;
    z.avail_out = 0;
  }
  if (rc == Z_BUF_ERROR) {
    throw Error(ErrorKind::Decode, "deflate: stream ends before the tile is complete");
  }
  if (rc != Z_OK && rc != Z_STREAM_END) {
    throw Error(ErrorKind::Decode, std::string("deflate: ") + (z.msg ? z.msg : "corrupt stream"));
  }
  // A stream that ends early but cleanly leaves the rest of the tile black.
  std::memset(z.next_out, 0, z.avail_out);
}

}  // namespace wsi
