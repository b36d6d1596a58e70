// One open file and the ways of reading its bytes (file access modes). Every
// source is stateless after it is made, so every thread (and a forked child)
// can share it without locking.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace wsi {

// What makes a file "the same file" for caches and pickled handles.
struct FileIdentity {
  uint64_t device = 0;
  uint64_t inode = 0;
  uint64_t size = 0;
  int64_t mtime_ns = 0;
};

// How a reader gets a file's bytes (wsiarray.open(file_access=...)):
//   Pread    pread into the caller's buffer (through the page cache);
//   Mmap     the file mapped read-only, runs copied out of the mapping under
//            a SIGBUS guard, then the file's size checked (a file shrunk
//            underneath is a read error, as with pread);
//   Direct   O_DIRECT preads into aligned bounce buffers, bypassing the page cache;
//   Preload  Direct, and a dense request (a whole level) first reads its
//            whole byte span with large aligned reads, then decodes from memory.
enum class FileAccess { Pread, Mmap, Direct, Preload };

// Parses "pread", "mmap", "direct", "preload"; throws Error(Argument) otherwise.
FileAccess parse_file_access(const std::string& name);
const char* file_access_name(FileAccess access) noexcept;

// One byte range of a file: [offset, offset + length).
struct ByteRange {
  uint64_t offset = 0;
  uint64_t length = 0;
};

// Fetches byte ranges of a remote object (an fsspec URL): the bindings wrap
// a Python callable (wsiarray._remote.RangeFetcher) that fetches all the
// ranges of one call concurrently, retrying transient errors.
class RangeFetcher {
 public:
  virtual ~RangeFetcher() = default;
  // Reads range i into dst[i] (exactly ranges[i].length bytes) for every i,
  // with one call into Python; throws wsi::Error (Read) when it cannot, or
  // when the callable returns anything but one buffer of each range's length.
  virtual void fetch(const std::vector<ByteRange>& ranges, const std::vector<uint8_t*>& dst) const = 0;
};

// How a remote file's requests are fetched (wsiarray._request.parse_remote_max_gap).
struct RemoteOptions {
  // Byte ranges of one request closer than this are fetched as one range:
  // an object store's request costs a round trip (tens of ms), which buys
  // megabytes of bandwidth, so the default is large (see docs/guide/remote.md).
  uint64_t max_gap = uint64_t(8) << 20;
  // A merged range grows to at most this many bytes (a single longer range
  // is fetched whole).
  uint64_t max_span = uint64_t(16) << 20;
};

// Anything that reads byte ranges of one file.
class ByteSource {
 public:
  virtual ~ByteSource() = default;
  // Reads exactly [offset, offset + length) into dst; throws wsi::Error
  // (Read) when the range lies outside the source or the read comes up short.
  virtual void read(uint64_t offset, uint64_t length, uint8_t* dst) const = 0;
  // The bytes [offset, offset + length) where they already lie in this
  // process's memory and stay valid while the source lives, else nullptr
  // (then call read). Only sources whose memory cannot fault return them.
  virtual const uint8_t* view(uint64_t offset, uint64_t length) const {
    (void)offset;
    (void)length;
    return nullptr;
  }
};

class File {
 public:
  // Opens `path` for `access`: O_DIRECT for Direct and Preload (an OpenError
  // naming the mode where the file system refuses it), a read-only mapping
  // for Mmap.
  explicit File(const std::string& path, FileAccess access = FileAccess::Pread);
  // A remote object (`path` is its URL): reads go through `fetcher`, and
  // `identity` (made by wsiarray._remote from the URL, ETag and size) keys
  // the cache.
  File(const std::string& url, const FileIdentity& identity, std::shared_ptr<const RangeFetcher> fetcher,
       const RemoteOptions& options);
  ~File();
  File(const File&) = delete;
  File& operator=(const File&) = delete;

  const std::string& path() const noexcept { return path_; }
  const FileIdentity& identity() const noexcept { return identity_; }
  uint64_t size() const noexcept { return identity_.size; }
  FileAccess access() const noexcept { return access_; }
  // The fetcher of a remote file, else nullptr.
  const RangeFetcher* fetcher() const noexcept { return closed_ ? nullptr : fetcher_.get(); }
  bool remote() const noexcept { return fetcher_ != nullptr; }
  const RemoteOptions& remote_options() const noexcept { return remote_; }

  // Reads exactly [offset, offset + length) into dst in the file's access
  // mode; throws wsi::Error (Read) when the range lies outside the file or
  // the read comes up short (a file truncated underneath, in every mode).
  void read_exact(uint64_t offset, uint64_t length, uint8_t* dst) const;

  void close() noexcept;

 private:
  void check_range(uint64_t offset, uint64_t length) const;
  void read_pread(uint64_t offset, uint64_t length, uint8_t* dst) const;
  void read_direct(uint64_t offset, uint64_t length, uint8_t* dst) const;
  void read_mapped(uint64_t offset, uint64_t length, uint8_t* dst) const;
  void fail_open(int err, const std::string& why);

  std::string path_;
  int fd_ = -1;
  FileAccess access_ = FileAccess::Pread;
  const uint8_t* map_ = nullptr;  // Mmap: the whole file, identity_.size bytes
  FileIdentity identity_;
  std::shared_ptr<const RangeFetcher> fetcher_;  // remote files only
  RemoteOptions remote_;
  bool closed_ = false;
};

// Reads through the file's own access mode.
class FileSource final : public ByteSource {
 public:
  explicit FileSource(const File& file) : file_(file) {}
  void read(uint64_t offset, uint64_t length, uint8_t* dst) const override { file_.read_exact(offset, length, dst); }

 private:
  const File& file_;
};

// A byte span of a file read into memory once (Preload): reads inside the
// span are served from memory (and viewed without a copy), reads outside it
// go to `fallback`.
class PreloadedSpan final : public ByteSource {
 public:
  // Reads [first, last) of `file` with reads of at most `chunk` bytes on up
  // to `workers` threads of the pool, into one buffer aligned for O_DIRECT.
  PreloadedSpan(const File& file, const ByteSource& fallback, uint64_t first, uint64_t last, size_t workers);
  void read(uint64_t offset, uint64_t length, uint8_t* dst) const override;
  const uint8_t* view(uint64_t offset, uint64_t length) const override;

 private:
  const ByteSource& fallback_;
  uint64_t first_ = 0;  // file offset of data_[0]
  uint64_t length_ = 0;
  std::unique_ptr<uint8_t, void (*)(void*)> data_;
};

// Alignment of O_DIRECT offsets, lengths and buffers: the largest logical
// block size in common use (4Kn disks), so one value serves every device.
constexpr uint64_t kDirectAlign = 4096;

}  // namespace wsi
