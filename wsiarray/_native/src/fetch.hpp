// The fetcher: reads the compressed bytes of planned tiles, one read per
// run, from a ByteSource (file.hpp: a local file in its access mode, or a
// preloaded span of it; a fault-injecting or remote source can be slotted in
// behind the same interface).
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <utility>
#include <vector>

#include "file.hpp"
#include "plan.hpp"

namespace wsi {

// Reads the bytes of tiles [first, last) of plan.tiles, which must lie in
// one run, with one read into `buffer` (grown as needed); returns where
// tile `first`'s bytes start (the others follow at their file offsets).
// A failure names tile `first`. A source that holds the bytes in memory
// (ByteSource::view) is returned from without a copy.
const uint8_t* fetch_span(const ByteSource& source, const Plan& plan, size_t first, size_t last,
                          std::vector<uint8_t>& buffer, const LevelGeometry& g, const TileLabel& label);

// Where fetch_plan puts each run and tile in one buffer of `bytes` bytes.
struct FetchLayout {
  uint64_t bytes = 0;
  std::vector<uint64_t> run_start;   // per run
  std::vector<uint64_t> tile_start;  // per tile
};
FetchLayout fetch_layout(const Plan& plan);

// Reads every run of the plan into `data` as `layout` says, on up to
// `workers` threads of the pool; a run's bytes come from
// sources[its tiles' PlanTile::file].
void fetch_plan(const std::vector<const ByteSource*>& sources, const Plan& plan, const FetchLayout& layout, uint8_t* data,
                size_t workers, const LevelGeometry& g, const TileLabel& label);

// Remote files (File::remote): the byte ranges one request needs are merged
// and fetched with one RangeFetcher call before its tiles are decoded.

// Sorts `ranges` and merges those that overlap or lie less than `max_gap`
// apart into spans of at most `max_span` bytes (a longer single range stays
// whole); empty ranges are dropped.
std::vector<ByteRange> merge_ranges(std::vector<ByteRange> ranges, uint64_t max_gap, uint64_t max_span);

// Byte ranges of one remote file fetched together and held in memory: a read
// that one fetched span holds is served (and viewed) from memory, any other
// goes to `fallback` (the file itself: one fetch of its own).
class FetchedSpans final : public ByteSource {
 public:
  // Merges `wanted` with the file's RemoteOptions and fetches the spans with
  // one call of the file's fetcher; throws Error(Read) with the URL on failure.
  FetchedSpans(const File& file, const ByteSource& fallback, std::vector<ByteRange> wanted);
  void read(uint64_t offset, uint64_t length, uint8_t* dst) const override;
  const uint8_t* view(uint64_t offset, uint64_t length) const override;
  size_t span_count() const { return spans_.size(); }
  uint64_t bytes() const { return bytes_; }

 private:
  const ByteSource& fallback_;
  std::vector<ByteRange> spans_;   // sorted, disjoint
  std::vector<uint64_t> starts_;   // where each span starts in data_
  std::unique_ptr<uint8_t[]> data_;  // bytes_ bytes (not zeroed: every byte is fetched)
  uint64_t bytes_ = 0;
};

// The remote byte ranges of a set of requests, collected per file, then
// fetched with one call per file (RemoteFetch::fetch); a local file's
// ranges are ignored (they are read as before).
class RemoteFetch {
 public:
  // `fallback` reads what the fetched spans do not hold (the file's own source).
  void add(const File& file, const ByteSource& fallback, uint64_t offset, uint64_t length);
  void fetch();
  // The fetched spans of `file`, or nullptr (a local file, or nothing asked of it).
  const ByteSource* source(const File& file) const;

 private:
  struct Wanted {
    const File* file;
    const ByteSource* fallback;
    std::vector<ByteRange> ranges;
  };
  std::vector<Wanted> wanted_;
  std::vector<std::pair<const File*, std::unique_ptr<FetchedSpans>>> fetched_;
};

}  // namespace wsi
