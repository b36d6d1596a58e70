// Reads at a target resolution: a region of a level, downsampled by a
// fractional factor with an area average, in one native call per request
// (or batch) with no GIL.
//
// Output pixel (i, j) of a request covers the level rectangle
//   [x + i * fx, x + (i + 1) * fx) x [y + j * fy, y + (j + 1) * fy)
// and is the mean of the level pixels it covers, each weighted by the part of
// it inside (fractional edges), rounded half up for integer samples. Pixels
// outside the image count as the fill pixel: the result is that of reading
// the covering level rectangle with `fill` and averaging it.
//
// With `dct`, a JPEG level whose remaining factor is 2 or more on both axes
// is read at 1/2, 1/4 or 1/8 with libjpeg's DCT scaling (RegionRequest::scale;
// which one: dct_scale) and the fractional rest is averaged the same way:
// less to decode (the entropy decoding stays), a little less exact.
//
// A request is cut into bands of output rows whose covering level rows fit a
// bounded scratch buffer; bands are read (all tiles of a group of bands on
// the shared threads) and then averaged (rows on the shared threads).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "reader.hpp"

namespace wsi {

// The sample type of a level's pixels, for the arithmetic of the average.
enum class SampleType { U8, I8, U16, I16, U32, I32, F32, F64 };

// A numpy dtype string without byte order ("u1", "i2", "f4", ...), or throws
// Error(Argument).
SampleType sample_type(const std::string& name);

struct ResampleRequest {
  const Reader* reader = nullptr;
  size_t level = 0;
  double x = 0, y = 0;    // the output's top-left corner, in level pixels (fractional)
  double fx = 1, fy = 1;  // level pixels per output pixel, > 0
  uint8_t* out = nullptr;  // height rows of `pitch` bytes, width pixels each
  size_t pitch = 0;
  uint32_t width = 0;
  uint32_t height = 0;
};

// How JPEG levels may be decoded smaller (see dct_scale):
// - Off: full size;
// - On: at 1/s when the request lies on the grid of s x s blocks, or the
//   factors are at least 4 s;
// - Snap: as On, and a request whose factors are whole multiples of s but
//   whose position is off the grid is moved to the nearest grid point (by at
//   most s / 2 level pixels, half an output pixel) and decoded at 1/s.
enum class DctMode : int { Off = 0, On = 1, Snap = 2 };

// The DCT scale read_resampled uses for a request at (x, y) with factors
// (fx, fy): 1, 2, 4 or 8, the largest s the level allows with s <= the
// factors when the request lies on the grid of s x s blocks (with Snap:
// when the factors are whole multiples of s), else with s <= a quarter of
// the factors (see resample.cpp).
uint32_t dct_scale(const LevelDesc& level, double x, double y, double fx, double fy, DctMode dct);

// Reads every request with up to `workers` threads (see above). `fill` is
// one pixel of the (common) pixel size; every level's samples are `type`.
void read_resampled(const std::vector<ResampleRequest>& requests, const uint8_t* fill, size_t fill_bytes,
                    SampleType type, DctMode dct, size_t workers);

}  // namespace wsi
