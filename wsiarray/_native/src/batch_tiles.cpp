#include "batch_tiles.hpp"

#include <algorithm>
#include <cstring>
#include <tuple>

#include "error.hpp"

namespace wsi {
namespace {

// The memory of the tiles kept, per thread that starts batches, kept between
// batches (fresh memory costs a page fault per 4 KiB) unless it grew past
// this.
constexpr size_t kKeepBytes = size_t(64) << 20;

struct Scratch {
  std::unique_ptr<uint8_t[]> data;
  size_t size = 0;
};

uint8_t* batch_scratch(size_t n) {
  static thread_local Scratch scratch;
  if (scratch.size < n || (scratch.size > kKeepBytes && n <= kKeepBytes)) {
    scratch.data.reset();
    scratch.data.reset(new uint8_t[n]);
    scratch.size = n;
  }
  return scratch.data.get();
}

auto fields(const TileKey& k) {
  return std::make_tuple(k.file.device, k.file.inode, k.file.size, k.file.mtime_ns, k.level, k.plane, k.tile);
}

bool key_equal(const TileKey& a, const TileKey& b) { return fields(a) == fields(b); }

}  // namespace

bool key_less(const TileKey& a, const TileKey& b) { return fields(a) < fields(b); }

BatchTiles::BatchTiles(std::vector<std::pair<TileKey, size_t>> uses, size_t max_bytes) {
  std::sort(uses.begin(), uses.end(), [](const auto& a, const auto& b) { return key_less(a.first, b.first); });
  size_t total = 0;
  for (size_t i = 0; i < uses.size();) {
    size_t j = i + 1;
    while (j < uses.size() && key_equal(uses[j].first, uses[i].first)) ++j;
    const size_t bytes = uses[i].second;
    if (j - i >= 2 && total + bytes <= max_bytes) {
      keys_.push_back(uses[i].first);
      offset_.push_back(total);
      total += bytes;
    }
    i = j;
  }
  offset_.push_back(total);
  state_.assign(keys_.size(), State::Empty);
  if (keys_.empty()) return;
  data_ = batch_scratch(total);
  page_.resize(keys_.size());
  for (size_t i = 0; i < keys_.size(); ++i) page_[i] = data_ + offset_[i];
}

size_t BatchTiles::index(const TileKey& key) const {
  auto it = std::lower_bound(keys_.begin(), keys_.end(), key, key_less);
  return it != keys_.end() && key_equal(*it, key) ? size_t(it - keys_.begin()) : keys_.size();
}

TileView BatchTiles::view(size_t i) const {
  const size_t size = offset_[i + 1] - offset_[i];
  return TileView{&page_[i], size, size};
}

bool BatchTiles::find(const TileKey& key, const TileCache::Use& use) {
  const size_t i = index(key);
  if (i >= keys_.size()) return false;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    if (state_[i] != State::Ready) return false;
  }
  // Ready tiles never change again in this batch: used without the lock.
  use(view(i));
  return true;
}

void BatchTiles::get(const TileKey& key, const TileLayout& layout, const TileCache::Use& use,
                     const TileCache::Decode& decode) {
  const size_t i = index(key);
  if (i >= keys_.size()) {
    decode(nullptr, false);
    return;
  }
  {
    std::unique_lock<std::mutex> lock(mutex_);
    changed_.wait(lock, [&] { return state_[i] != State::Decoding; });
    if (state_[i] == State::Ready) {
      lock.unlock();
      use(view(i));
      return;
    }
    state_[i] = State::Decoding;
  }
  uint8_t* slot = data_ + offset_[i];
  const size_t row_bytes = layout.row_bytes();
  try {
    if (layout.bytes() != offset_[i + 1] - offset_[i]) throw Error(ErrorKind::Argument, "batch tile size mismatch");
    const TileTarget target = TileTarget::tile(layout, slot, row_bytes);
    const TileCache::Rows rows = decode(&target, true);
    // A whole tile went straight to the output: copy it into the slot; a
    // partly covered one was decoded into the slot and is placed from it.
    for (size_t r = 0; r < rows.count; ++r) std::memcpy(slot + r * row_bytes, rows.data + r * rows.pitch, row_bytes);
    if (rows.count == 0) use(view(i));
  } catch (...) {
    std::lock_guard<std::mutex> lock(mutex_);
    state_[i] = State::Empty;
    changed_.notify_all();
    throw;
  }
  std::lock_guard<std::mutex> lock(mutex_);
  state_[i] = State::Ready;
  changed_.notify_all();
}

namespace {

Coverage stamped(Coverage cover, uint64_t request) {
  cover.request = request;
  return cover;
}

}  // namespace

bool RequestCache::find(const TileKey& key, size_t size, const Coverage& cover, const TileCache::Use& use) const {
  if (cache_) return cache_->find(key, size, stamped(cover, request_), use);
  return batch_ != nullptr && batch_->find(key, use);
}

void RequestCache::get(const TileKey& key, const TileLayout& layout, const Coverage& cover,
                       const TileCache::Use& use, const TileCache::Decode& decode) const {
  if (cache_) {
    cache_->get(key, layout, stamped(cover, request_), use, decode);
  } else if (batch_ != nullptr) {
    batch_->get(key, layout, use, decode);
  } else {
    decode(nullptr, false);
  }
}

}  // namespace wsi
