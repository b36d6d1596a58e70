// One open file, read with pread: stateless, so every thread (and a forked
// child) can share the descriptor without locking.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

namespace wsi {

// What makes a file "the same file" for caches and pickled handles.
struct FileIdentity {
  uint64_t device = 0;
  uint64_t inode = 0;
  uint64_t size = 0;
  int64_t mtime_ns = 0;
};

class File {
 public:
  explicit File(const std::string& path);
  ~File();
  File(const File&) = delete;
  File& operator=(const File&) = delete;

  const std::string& path() const noexcept { return path_; }
  const FileIdentity& identity() const noexcept { return identity_; }
  uint64_t size() const noexcept { return identity_.size; }

  // Reads exactly [offset, offset + length) into dst; throws wsi::Error
  // (Read) when the range lies outside the file or the read comes up short.
  void read_exact(uint64_t offset, uint64_t length, uint8_t* dst) const;

  void close() noexcept;

 private:
  std::string path_;
  int fd_ = -1;
  FileIdentity identity_;
};

}  // namespace wsi
