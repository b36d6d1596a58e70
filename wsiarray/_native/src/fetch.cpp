#include "fetch.hpp"

#include <algorithm>
#include <cstring>
#include <string>

#include "error.hpp"
#include "thread_pool.hpp"

namespace wsi {
namespace {

void read_named(const ByteSource& source, uint64_t offset, uint64_t length, uint8_t* dst, const PlanTile& tile,
                const LevelGeometry& g, const TileLabel& label) {
  if (length == 0) return;
  try {
    source.read(offset, length, dst);
  } catch (const Error& e) {
    throw Error(e.kind(), describe_tile(label, g, tile.plane, tile.tx, tile.ty) + ": " + e.what());
  }
}

}  // namespace

const uint8_t* fetch_span(const ByteSource& source, const Plan& plan, size_t first, size_t last,
                          std::vector<uint8_t>& buffer, const LevelGeometry& g, const TileLabel& label) {
  const PlanTile& a = plan.tiles[first];
  const PlanTile& b = plan.tiles[last - 1];
  const uint64_t span = b.offset + b.bytecount - a.offset;
  if (const uint8_t* bytes = source.view(a.offset, span)) return bytes;
  if (buffer.size() < span) buffer.resize(span);
  read_named(source, a.offset, span, buffer.data(), a, g, label);
  return buffer.data();
}

FetchLayout fetch_layout(const Plan& plan) {
  FetchLayout layout;
  layout.run_start.reserve(plan.runs.size());
  layout.tile_start.resize(plan.tiles.size());
  for (const Run& run : plan.runs) {
    layout.run_start.push_back(layout.bytes);
    for (size_t k = 0; k < run.count; ++k) {
      layout.tile_start[run.first + k] = layout.bytes + (plan.tiles[run.first + k].offset - run.offset);
    }
    layout.bytes += run.size;
  }
  return layout;
}

void fetch_plan(const std::vector<const ByteSource*>& sources, const Plan& plan, const FetchLayout& layout,
                uint8_t* data, size_t workers, const LevelGeometry& g, const TileLabel& label) {
  for (const PlanTile& t : plan.tiles) {
    if (t.file >= sources.size()) throw Error(ErrorKind::Argument, "tile in file " + std::to_string(t.file) + " of " + std::to_string(sources.size()));
  }
  parallel_for(plan.runs.size(), workers, [&](size_t i) {
    const Run& run = plan.runs[i];
    const ByteSource& source = *sources[plan.tiles[run.first].file];
    read_named(source, run.offset, run.size, data + layout.run_start[i], plan.tiles[run.first], g, label);
  });
}

std::vector<ByteRange> merge_ranges(std::vector<ByteRange> ranges, uint64_t max_gap, uint64_t max_span) {
  ranges.erase(std::remove_if(ranges.begin(), ranges.end(), [](const ByteRange& r) { return r.length == 0; }),
               ranges.end());
  std::sort(ranges.begin(), ranges.end(),
            [](const ByteRange& a, const ByteRange& b) { return a.offset < b.offset; });
  std::vector<ByteRange> merged;
  for (const ByteRange& r : ranges) {
    if (!merged.empty()) {
      ByteRange& last = merged.back();
      const uint64_t end = last.offset + last.length;  // callers check ranges against the file size
      const uint64_t r_end = r.offset + r.length;
      if (r.offset <= end && r_end <= end) continue;  // inside the last span
      const uint64_t gap = r.offset > end ? r.offset - end : 0;
      const uint64_t grown = std::max(end, r_end) - last.offset;
      if (gap <= max_gap && (grown <= max_span || r.offset < end)) {
        last.length = grown;
        continue;
      }
    }
    merged.push_back(r);
  }
  return merged;
}

FetchedSpans::FetchedSpans(const File& file, const ByteSource& fallback, std::vector<ByteRange> wanted)
    : fallback_(fallback) {
  const RangeFetcher* fetcher = file.fetcher();
  if (fetcher == nullptr) throw Error(ErrorKind::Read, file.path() + ": file is closed");
  for (const ByteRange& r : wanted) {
    if (r.offset > file.size() || r.length > file.size() - r.offset) {
      throw Error(ErrorKind::Read, file.path() + ": byte range " + std::to_string(r.offset) + "+" +
                                       std::to_string(r.length) + " lies past the end of the object (" +
                                       std::to_string(file.size()) + " bytes)");
    }
  }
  const RemoteOptions& options = file.remote_options();
  spans_ = merge_ranges(std::move(wanted), options.max_gap, options.max_span);
  uint64_t total = 0;
  starts_.reserve(spans_.size());
  for (const ByteRange& r : spans_) {
    starts_.push_back(total);
    total += r.length;  // each <= the file size, and they are disjoint: no overflow
  }
  if (spans_.empty()) return;
  data_.reset(new uint8_t[size_t(total)]);
  bytes_ = total;
  std::vector<uint8_t*> dst;
  dst.reserve(spans_.size());
  for (uint64_t start : starts_) dst.push_back(data_.get() + start);
  fetcher->fetch(spans_, dst);
}

const uint8_t* FetchedSpans::view(uint64_t offset, uint64_t length) const {
  // The last span starting at or before `offset`.
  auto it = std::upper_bound(spans_.begin(), spans_.end(), offset,
                             [](uint64_t value, const ByteRange& r) { return value < r.offset; });
  if (it == spans_.begin()) return nullptr;
  --it;
  const uint64_t into = offset - it->offset;
  if (into > it->length || length > it->length - into) return nullptr;
  return data_.get() + starts_[size_t(it - spans_.begin())] + into;
}

void FetchedSpans::read(uint64_t offset, uint64_t length, uint8_t* dst) const {
  if (length == 0) return;
  if (const uint8_t* bytes = view(offset, length)) {
    std::memcpy(dst, bytes, size_t(length));
    return;
  }
  fallback_.read(offset, length, dst);
}

void RemoteFetch::add(const File& file, const ByteSource& fallback, uint64_t offset, uint64_t length) {
  if (!file.remote() || length == 0) return;
  for (Wanted& w : wanted_) {
    if (w.file == &file) {
      w.ranges.push_back(ByteRange{offset, length});
      return;
    }
  }
  wanted_.push_back(Wanted{&file, &fallback, {ByteRange{offset, length}}});
}

void RemoteFetch::fetch() {
  for (Wanted& w : wanted_) {
    fetched_.emplace_back(w.file, std::make_unique<FetchedSpans>(*w.file, *w.fallback, std::move(w.ranges)));
  }
  wanted_.clear();
}

const ByteSource* RemoteFetch::source(const File& file) const {
  for (const auto& [f, spans] : fetched_) {
    if (f == &file) return spans.get();
  }
  return nullptr;
}

}  // namespace wsi
