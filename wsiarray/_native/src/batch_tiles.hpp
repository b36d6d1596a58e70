// Tiles that several regions of one batch (one read_regions call) cover,
// when no tile cache is configured: each is decoded once, kept in memory of
// the batch, and placed from there for every region that covers it. Tiles
// only one region covers are not kept (and are decoded only where covered).
//
// Random patches of a batch overlap often at coarse levels: 32 patches of
// 1024 x 1024 pixels on a 5000 x 6600 level cover about half their tiles
// twice or more.
#pragma once

#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <utility>
#include <vector>

#include "cache.hpp"

namespace wsi {

// Orders tile keys (file identity, level, plane, tile), for sorted lookups.
bool key_less(const TileKey& a, const TileKey& b);

class BatchTiles {
 public:
  // Keeps the tiles among `uses` (a key and the tile's bytes per use, any
  // order) that appear at least twice, at most `max_bytes` of them in all.
  BatchTiles(std::vector<std::pair<TileKey, size_t>> uses, size_t max_bytes);
  BatchTiles(const BatchTiles&) = delete;
  BatchTiles& operator=(const BatchTiles&) = delete;

  bool empty() const { return keys_.empty(); }
  // Whether the tile is one this batch keeps.
  bool wants(const TileKey& key) const { return index(key) < keys_.size(); }
  // Calls use() with the tile and returns true when it is decoded already.
  bool find(const TileKey& key, const TileCache::Use& use);
  // Calls use() with the tile, decoding it first (decode(), as for
  // TileCache::get, given the slot's rows) unless another thread has or is
  // decoding it, which this one then waits for. A failed decode leaves the
  // slot empty for the next thread to try, and rethrows.
  void get(const TileKey& key, const TileLayout& layout, const TileCache::Use& use,
           const TileCache::Decode& decode);

 private:
  enum class State : uint8_t { Empty, Decoding, Ready };
  size_t index(const TileKey& key) const;  // keys_.size() when not kept
  TileView view(size_t i) const;

  std::vector<TileKey> keys_;     // sorted, unique
  std::vector<size_t> offset_;    // per key, into data_; offset_[n] = total
  std::vector<State> state_;
  std::vector<const uint8_t*> page_;  // per key: its one "page", for TileView
  uint8_t* data_ = nullptr;           // the calling thread's scratch (batch_scratch)
  std::mutex mutex_;
  std::condition_variable changed_;
};

}  // namespace wsi
