#include "resample.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <memory>
#include <type_traits>
#include <utility>

#include "error.hpp"
#include "thread_pool.hpp"

namespace wsi {
namespace {

// Level rows of one band are read into scratch at most this large (a band
// is at least one output row, so a huge factor may need more).
constexpr size_t kBandBytes = size_t(16) << 20;
// Bands read together (their tiles shared out on the threads) at most this large.
constexpr size_t kGroupBytes = size_t(64) << 20;
// Output rows averaged per task.
constexpr uint32_t kRowsPerTask = 16;
// A level pixel covered less than this (in level pixels) by an output pixel
// is left out: float noise in x + i * fx must not read one more row or column.
constexpr double kEdge = 1e-6;
// Coordinates at most this large (in level pixels) keep whole pixels exact in a double.
constexpr double kMaxCoordinate = 4503599627370496.0;  // 2**52

void fail(const std::string& message) { throw Error(ErrorKind::Argument, message); }

// The level pixels [first, end) an output pixel covering [a, b) reads.
int64_t first_pixel(double a) { return int64_t(std::floor(a + kEdge)); }
int64_t end_pixel(double b) { return int64_t(std::ceil(b - kEdge)); }

// One request as read: the scale, its position in the scaled level and the
// columns every output row averages.
struct Geometry {
  uint32_t scale = 1;
  double x = 0, y = 0, fx = 1, fy = 1;  // in the scaled level's pixels
  int64_t sx0 = 0;                      // first level column read
  uint32_t sw = 0;                      // level columns read
  size_t pixel_bytes = 0;
  // Per output column: its first column (relative to sx0) and its taps'
  // normalised weights at tap_start[i] .. tap_start[i + 1].
  std::vector<uint32_t> first;
  std::vector<uint32_t> tap_start;
  std::vector<float> weights;
  // The same taps padded with zero weights to `taps` per output column
  // (the most any column has), for the fixed-length loops of
  // average_columns_f4: padded[i * taps + t]. Empty when taps > kMaxTaps.
  uint32_t taps = 0;
  std::vector<float> padded;
};

// Output columns of at most this many taps (factors up to 7) use the
// fixed-length loops; wider ones the general loop.
constexpr uint32_t kMaxTaps = 8;

// Output rows [j0, j1) of a request and the level rows [sy0, sy0 + sh) they read.
struct Band {
  size_t request = 0;
  uint32_t j0 = 0, j1 = 0;
  int64_t sy0 = 0;
  uint32_t sh = 0;
  size_t offset = 0;  // into the group's scratch
};

size_t checked_mul(size_t a, size_t b) {
  if (b != 0 && a > std::numeric_limits<size_t>::max() / b) fail("resampled read too large");
  return a * b;
}

bool whole(double v) { return std::fabs(v - std::round(v)) < 1e-9 * std::max(1.0, std::fabs(v)); }

Geometry make_geometry(const ResampleRequest& r, DctMode dct) {
  const LevelDesc& level = r.reader->level(r.level);
  if (!(std::isfinite(r.x) && std::isfinite(r.y) && std::isfinite(r.fx) && std::isfinite(r.fy)) ||
      !(r.fx > 0 && r.fy > 0) || std::fabs(r.x) > kMaxCoordinate || std::fabs(r.y) > kMaxCoordinate ||
      r.fx * r.width > kMaxCoordinate || r.fy * r.height > kMaxCoordinate) {
    fail("resampled read: position and factors must be finite, factors > 0");
  }
  Geometry g;
  g.scale = dct_scale(level, r.x, r.y, r.fx, r.fy, dct);
  g.x = r.x / g.scale;
  g.y = r.y / g.scale;
  if (dct == DctMode::Snap && g.scale > 1 && whole(r.fx / g.scale) && whole(r.fy / g.scale)) {
    // Onto the block grid: each output pixel is then whole scaled pixels.
    g.x = std::round(g.x);
    g.y = std::round(g.y);
  }
  g.fx = r.fx / g.scale;
  g.fy = r.fy / g.scale;
  g.pixel_bytes = level.pixel_bytes();
  if (r.width == 0 || r.height == 0) return g;
  g.sx0 = first_pixel(g.x);
  const int64_t sx1 = std::max(end_pixel(g.x + double(r.width) * g.fx), g.sx0 + 1);
  if (sx1 - g.sx0 > int64_t(UINT32_MAX)) fail("resampled read: the level region is wider than 2**32 - 1");
  g.sw = uint32_t(sx1 - g.sx0);
  checked_mul(g.sw, g.pixel_bytes);
  g.first.resize(r.width);
  g.tap_start.resize(size_t(r.width) + 1);
  g.weights.reserve(size_t(r.width) * (size_t(std::ceil(g.fx)) + 2));
  for (uint32_t i = 0; i < r.width; ++i) {
    const double a = g.x + double(i) * g.fx, b = g.x + double(i + 1) * g.fx;
    // Clamped to the columns read: at least one, whatever float noise says.
    const int64_t first = std::min(std::max(first_pixel(a), g.sx0), sx1 - 1);
    const int64_t end = std::max(std::min(end_pixel(b), sx1), first + 1);
    g.first[i] = uint32_t(first - g.sx0);
    g.tap_start[i] = uint32_t(g.weights.size());
    double total = 0;
    const size_t start = g.weights.size();
    for (int64_t k = first; k < end; ++k) {
      const double w = std::max(0.0, std::min(b, double(k + 1)) - std::max(a, double(k)));
      g.weights.push_back(float(w));
      total += w;
    }
    // Normalised by what was kept, so a constant image stays exactly constant.
    for (size_t t = start; t < g.weights.size(); ++t) g.weights[t] = total > 0 ? float(g.weights[t] / total) : 0.0f;
    if (total <= 0) g.weights[start] = 1.0f;
  }
  g.tap_start[r.width] = uint32_t(g.weights.size());
  for (uint32_t i = 0; i < r.width; ++i) g.taps = std::max(g.taps, g.tap_start[i + 1] - g.tap_start[i]);
  if (g.taps <= kMaxTaps) {
    // Zero weights add exactly 0 to a sum, so the padded loop gives the same
    // floats as the unpadded one; the columns they point past sw are zeros
    // that average_rows keeps after each row.
    g.padded.assign(size_t(r.width) * g.taps, 0.0f);
    for (uint32_t i = 0; i < r.width; ++i) {
      std::copy(g.weights.begin() + g.tap_start[i], g.weights.begin() + g.tap_start[i + 1],
                g.padded.begin() + size_t(i) * g.taps);
    }
  }
  return g;
}

template <class T, class A>
T round_sample(A v) {
  if constexpr (std::is_floating_point_v<T>) {
    return T(v);
  } else if constexpr (std::is_unsigned_v<T>) {
    // Half up. Samples and weights are >= 0, so truncation is floor; clamped,
    // as float sums of in-range samples may overshoot by an ulp.
    const A hi = A(std::numeric_limits<T>::max());
    const A r = v + A(0.5);
    return r >= hi ? std::numeric_limits<T>::max() : (r <= A(0) ? T(0) : T(r));
  } else {
    const A r = std::floor(v + A(0.5));
    const A lo = A(std::numeric_limits<T>::min()), hi = A(std::numeric_limits<T>::max());
    return T(std::min(hi, std::max(lo, r)));
  }
}

// Accumulates in float for 8- and 16-bit samples (exact enough: < 2**24
// per sum), in double for wider ones.
template <class T>
using Acc = std::conditional_t<(sizeof(T) <= 2 && std::is_integral_v<T>), float, double>;

struct RowScratch {
  std::vector<float> f;
  std::vector<double> d;
};

RowScratch& row_scratch() {
  static thread_local RowScratch scratch;
  return scratch;
}

template <class A>
A* acc_buffer(size_t n) {
  RowScratch& s = row_scratch();
  if constexpr (std::is_same_v<A, float>) {
    if (s.f.size() < n) s.f.resize(n);
    return s.f.data();
  } else {
    if (s.d.size() < n) s.d.resize(n);
    return s.d.data();
  }
}

// acc[k] = w * row[k] (the first tap) and acc[k] += w * row[k]: restrict,
// so the compiler vectorises them (a uint8_t row could otherwise alias the sums).
template <class T, class A>
void set_row(A* __restrict acc, const T* __restrict row, size_t n, A w) {
  for (size_t k = 0; k < n; ++k) acc[k] = w * A(row[k]);
}
template <class T, class A>
void add_row(A* __restrict acc, const T* __restrict row, size_t n, A w) {
  for (size_t k = 0; k < n; ++k) acc[k] += w * A(row[k]);
}

// The horizontal pass of one output row; CH > 0 fixes the channel count
// at compile time, 0 reads it from `channels`.
template <size_t CH, class T, class A>
void average_columns(const A* __restrict acc, T* __restrict out, const Geometry& g, uint32_t width,
                     size_t channels) {
  if constexpr (CH > 0) channels = CH;
  A sums[kMaxSamples];
  const uint32_t* __restrict first = g.first.data();
  const uint32_t* __restrict tap_start = g.tap_start.data();
  const float* __restrict weights = g.weights.data();
  for (uint32_t i = 0; i < width; ++i) {
    const A* __restrict p = acc + size_t(first[i]) * channels;
    for (size_t c = 0; c < channels; ++c) sums[c] = 0;
    for (uint32_t t = tap_start[i]; t < tap_start[i + 1]; ++t, p += channels) {
      const A w = A(weights[t]);
      for (size_t c = 0; c < channels; ++c) sums[c] += w * p[c];
    }
    for (size_t c = 0; c < channels; ++c) out[size_t(i) * channels + c] = round_sample<T>(sums[c]);
  }
}

// Four floats (and four int32) in one SIMD register (GCC/Clang vector
// extension: SSE2 on x86-64, NEON on arm64).
typedef float F4 __attribute__((vector_size(16)));
typedef int32_t I4 __attribute__((vector_size(16)));

// The horizontal pass for 3- and 4-sample 8- and 16-bit pixels summed in
// float, with K taps per column (zero-padded, Geometry::padded): a pixel is
// one vector, each tap one multiply-add, and the rounding is done on the
// vector. The scalar loop (one multiply-add per sample, a rounding branch
// per sample, a tap count per column) cost 5-6 times cv2's INTER_AREA. A
// 3-sample pixel's load reads one float past it, and the last columns' taps
// read up to K pixels past the row: average_rows pads the row with zeros.
// Same floats, same order, same rounding as average_columns.
template <size_t CH, uint32_t K, class T>
void average_columns_f4(const float* __restrict acc, T* __restrict out, const Geometry& g, uint32_t width) {
  static_assert(CH == 3 || CH == 4);
  const uint32_t* __restrict first = g.first.data();
  const float* __restrict weights = g.padded.data();
  const F4 half = {0.5f, 0.5f, 0.5f, 0.5f};
  const float top = float(std::numeric_limits<T>::max()), bottom = float(std::numeric_limits<T>::min());
  const F4 hi = {top, top, top, top}, lo = {bottom, bottom, bottom, bottom};
  for (uint32_t i = 0; i < width; ++i) {
    const float* __restrict p = acc + size_t(first[i]) * CH;
    const float* __restrict w = weights + size_t(i) * K;
    F4 s;
    std::memcpy(&s, p, sizeof s);
    s *= w[0];
    for (uint32_t t = 1; t < K; ++t) {
      F4 v;
      std::memcpy(&v, p + t * CH, sizeof v);
      s += w[t] * v;
    }
    // round_sample: half up, clamped to the type.
    F4 r = s + half;
    r = r >= hi ? hi : r;
    r = r <= lo ? lo : r;
    I4 v;
    if constexpr (std::is_signed_v<T>) {
      // Signed samples round with floor (r may be negative); floor of a
      // clamped value, via truncation corrected by one where it went up.
      const I4 truncated = __builtin_convertvector(r, I4);
      v = truncated - (__builtin_convertvector(truncated, F4) > r ? I4{1, 1, 1, 1} : I4{0, 0, 0, 0});
    } else {
      v = __builtin_convertvector(r, I4);
    }
    for (size_t c = 0; c < CH; ++c) out[size_t(i) * CH + c] = T(v[c]);
  }
}

template <size_t CH, class T>
bool average_columns_fixed(const float* acc, T* out, const Geometry& g, uint32_t width) {
  switch (g.taps) {
    case 1: average_columns_f4<CH, 1>(acc, out, g, width); return true;
    case 2: average_columns_f4<CH, 2>(acc, out, g, width); return true;
    case 3: average_columns_f4<CH, 3>(acc, out, g, width); return true;
    case 4: average_columns_f4<CH, 4>(acc, out, g, width); return true;
    case 5: average_columns_f4<CH, 5>(acc, out, g, width); return true;
    case 6: average_columns_f4<CH, 6>(acc, out, g, width); return true;
    case 7: average_columns_f4<CH, 7>(acc, out, g, width); return true;
    case 8: average_columns_f4<CH, 8>(acc, out, g, width); return true;
    default: return false;
  }
}

// Averages output rows [j0, j1) of `r` from a band's level rows.
template <class T>
void average_rows(const ResampleRequest& r, const Geometry& g, const Band& band, const uint8_t* src,
                  uint32_t j0, uint32_t j1) {
  using A = Acc<T>;
  const size_t channels = g.pixel_bytes / sizeof(T);
  const size_t n = size_t(g.sw) * channels;
  const size_t src_pitch = size_t(g.sw) * g.pixel_bytes;
  // Zeros after the row: average_columns_f4 reads up to kMaxTaps pixels
  // plus one float past it (zero weights times zeros).
  const size_t pad = size_t(kMaxTaps + 1) * channels + 1;
  A* acc = acc_buffer<A>(n + pad);
  std::fill(acc + n, acc + n + pad, A(0));
  const int64_t band_end = band.sy0 + band.sh;
  for (uint32_t j = j0; j < j1; ++j) {
    const double a = g.y + double(j) * g.fy, b = g.y + double(j + 1) * g.fy;
    const int64_t first = std::min(std::max(first_pixel(a), band.sy0), band_end - 1);
    const int64_t end = std::max(std::min(end_pixel(b), band_end), first + 1);
    double total = 0;
    for (int64_t l = first; l < end; ++l) total += std::max(0.0, std::min(b, double(l + 1)) - std::max(a, double(l)));
    bool started = false;
    for (int64_t l = first; l < end; ++l) {
      double w = std::max(0.0, std::min(b, double(l + 1)) - std::max(a, double(l)));
      // Normalised by what was kept, so a constant image stays exactly constant.
      w = total > 0 ? w / total : (l == first ? 1.0 : 0.0);
      if (w <= 0) continue;
      const T* row = reinterpret_cast<const T*>(src + size_t(l - band.sy0) * src_pitch);
      if (started) {
        add_row<T, A>(acc, row, n, A(w));
      } else {
        set_row<T, A>(acc, row, n, A(w));
        started = true;
      }
    }
    if (!started) std::fill(acc, acc + n, A(0));
    T* out = reinterpret_cast<T*>(r.out + size_t(j) * r.pitch);
    if constexpr (std::is_same_v<A, float>) {
      if (channels == 3 && average_columns_fixed<3>(acc, out, g, r.width)) continue;
      if (channels == 4 && average_columns_fixed<4>(acc, out, g, r.width)) continue;
    }
    switch (channels) {
      case 1: average_columns<1>(acc, out, g, r.width, channels); break;
      case 3: average_columns<3>(acc, out, g, r.width, channels); break;
      case 4: average_columns<4>(acc, out, g, r.width, channels); break;
      default: average_columns<0>(acc, out, g, r.width, channels); break;
    }
  }
}

using AverageFn = void (*)(const ResampleRequest&, const Geometry&, const Band&, const uint8_t*, uint32_t,
                           uint32_t);

AverageFn average_fn(SampleType type) {
  switch (type) {
    case SampleType::U8: return average_rows<uint8_t>;
    case SampleType::I8: return average_rows<int8_t>;
    case SampleType::U16: return average_rows<uint16_t>;
    case SampleType::I16: return average_rows<int16_t>;
    case SampleType::U32: return average_rows<uint32_t>;
    case SampleType::I32: return average_rows<int32_t>;
    case SampleType::F32: return average_rows<float>;
    case SampleType::F64: return average_rows<double>;
  }
  return nullptr;
}

size_t sample_size(SampleType type) {
  switch (type) {
    case SampleType::U8: case SampleType::I8: return 1;
    case SampleType::U16: case SampleType::I16: return 2;
    case SampleType::U32: case SampleType::I32: case SampleType::F32: return 4;
    case SampleType::F64: return 8;
  }
  return 0;
}

// The calling thread's scratch for level rows, kept between calls (fresh
// memory costs a page fault per 4 KiB) unless it grew past a group's size.
struct GroupScratch {
  std::unique_ptr<uint8_t[]> data;
  size_t size = 0;
  uint8_t* get(size_t n) {
    if (size < n) {
      data.reset(new uint8_t[n]);
      size = n;
    }
    return data.get();
  }
  void trim() {
    if (size > kGroupBytes) {
      data.reset();
      size = 0;
    }
  }
};

GroupScratch& group_scratch() {
  static thread_local GroupScratch scratch;
  return scratch;
}

}  // namespace

SampleType sample_type(const std::string& name) {
  if (name == "u1") return SampleType::U8;
  if (name == "i1") return SampleType::I8;
  if (name == "u2") return SampleType::U16;
  if (name == "i2") return SampleType::I16;
  if (name == "u4") return SampleType::U32;
  if (name == "i4") return SampleType::I32;
  if (name == "f4") return SampleType::F32;
  if (name == "f8") return SampleType::F64;
  throw Error(ErrorKind::Unsupported, "resampling " + name + " samples is not supported");
}

uint32_t dct_scale(const LevelDesc& level, double x, double y, double fx, double fy, DctMode dct) {
  if (dct == DctMode::Off) return 1;
  // A factor a hair under 2 (float noise in a target of exactly twice the
  // level's pixel size) still counts as 2.
  const double factor = std::min(fx, fy) * (1 + 1e-9);
  for (uint32_t s : {8u, 4u, 2u}) {
    if (factor < s || !can_scale(level, s)) continue;
    // On the grid of s x s blocks (position and factors whole blocks) a
    // scaled pixel is one output pixel's block: the rest averages whole
    // scaled pixels. Off it, each output edge takes part of a scaled pixel,
    // an extra blur of up to one scaled pixel: measured on tissue 33 dB
    // PSNR at a rest of 1 and 39.8 dB at 2, so off the grid the rest must
    // be at least 4.
    // Snap moves the position onto the grid (make_geometry).
    const bool blocks = whole(fx / s) && whole(fy / s);
    const bool aligned = blocks && (dct == DctMode::Snap || (whole(x / s) && whole(y / s)));
    if (aligned || factor >= 4.0 * s) return s;
  }
  return 1;
}

void read_resampled(const std::vector<ResampleRequest>& requests, const uint8_t* fill, size_t fill_bytes,
                    SampleType type, DctMode dct, size_t workers) {
  if (workers == 0) workers = 1;
  std::vector<Geometry> geometry;
  geometry.reserve(requests.size());
  std::vector<Band> bands;
  std::vector<RegionRequest> direct;
  for (size_t q = 0; q < requests.size(); ++q) {
    const ResampleRequest& r = requests[q];
    if (r.reader == nullptr) fail("resampled read without a reader");
    const LevelDesc& level = r.reader->level(r.level);
    if (level.pixel_bytes() != fill_bytes) fail("regions of a batch differ in pixel size");
    if (level.bytes_per_sample != sample_size(type) || level.pixel_bytes() % sample_size(type) != 0) {
      fail("sample type does not match the level");
    }
    if (r.pitch < checked_mul(r.width, fill_bytes)) fail("output rows too short");
    geometry.push_back(make_geometry(r, dct));
    const Geometry& g = geometry.back();
    if (r.width == 0 || r.height == 0) continue;
    if (g.fx == 1.0 && g.fy == 1.0 && g.x == std::floor(g.x) && g.y == std::floor(g.y)) {
      // A rest of exactly 1 at a whole position (a DCT scale that is the
      // whole factor, on the block grid or snapped onto it) averages one
      // pixel per output pixel with weight 1: the scaled level's pixels are
      // the output, decoded straight into it (no scratch, no pass over it).
      RegionRequest read;
      read.reader = r.reader;
      read.level = r.level;
      read.region = Region{int64_t(g.x), int64_t(g.y), r.width, r.height};
      read.out = r.out;
      read.pitch = r.pitch;
      read.scale = g.scale;
      direct.push_back(read);
      continue;
    }
    // Bands of output rows whose level rows fit kBandBytes (at least one row).
    const size_t row_bytes = size_t(g.sw) * g.pixel_bytes;
    const double rows_fit = double(kBandBytes / row_bytes);
    const uint32_t per_band = uint32_t(std::max(1.0, std::min(double(r.height), (rows_fit - 2) / g.fy)));
    for (uint32_t j0 = 0; j0 < r.height; j0 += per_band) {
      const uint32_t j1 = std::min(r.height, j0 + std::min(per_band, r.height - j0));
      Band band;
      band.request = q;
      band.j0 = j0;
      band.j1 = j1;
      band.sy0 = first_pixel(g.y + double(j0) * g.fy);
      const int64_t sy1 = std::max(end_pixel(g.y + double(j1) * g.fy), band.sy0 + 1);
      if (sy1 - band.sy0 > int64_t(UINT32_MAX)) fail("resampled read: the level region is taller than 2**32 - 1");
      band.sh = uint32_t(sy1 - band.sy0);
      checked_mul(band.sh, row_bytes);
      bands.push_back(band);
    }
  }
  if (!direct.empty()) read_regions(direct, fill, fill_bytes, workers);
  const AverageFn average = average_fn(type);
  GroupScratch& scratch = group_scratch();
  for (size_t b0 = 0; b0 < bands.size();) {
    // A group: bands whose level rows together fit kGroupBytes (at least one).
    size_t total = 0, b1 = b0;
    while (b1 < bands.size()) {
      const Geometry& g = geometry[bands[b1].request];
      const size_t bytes = size_t(bands[b1].sh) * g.sw * g.pixel_bytes;
      if (b1 > b0 && total + bytes > kGroupBytes) break;
      bands[b1].offset = total;
      total += bytes;
      ++b1;
    }
    uint8_t* base = scratch.get(total);
    std::vector<RegionRequest> reads;
    reads.reserve(b1 - b0);
    std::vector<std::pair<size_t, uint32_t>> tasks;  // (band, first output row)
    for (size_t k = b0; k < b1; ++k) {
      const Band& band = bands[k];
      const ResampleRequest& r = requests[band.request];
      const Geometry& g = geometry[band.request];
      RegionRequest read;
      read.reader = r.reader;
      read.level = r.level;
      read.region = Region{g.sx0, band.sy0, g.sw, band.sh};
      read.out = base + band.offset;
      read.pitch = size_t(g.sw) * g.pixel_bytes;
      read.scale = g.scale;
      reads.push_back(read);
      for (uint32_t j = band.j0; j < band.j1; j += kRowsPerTask) tasks.emplace_back(k, j);
    }
    read_regions(reads, fill, fill_bytes, workers);
    parallel_for(tasks.size(), workers, [&](size_t t) {
      const Band& band = bands[tasks[t].first];
      const uint32_t j0 = tasks[t].second, j1 = std::min(band.j1, j0 + kRowsPerTask);
      average(requests[band.request], geometry[band.request], band, base + band.offset, j0, j1);
    });
    b0 = b1;
  }
  scratch.trim();
}

}  // namespace wsi
