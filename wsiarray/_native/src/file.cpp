#include "file.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "error.hpp"

namespace wsi {

File::File(const std::string& path) : path_(path) {
  fd_ = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd_ < 0) {
    throw Error(ErrorKind::Open, path + ": " + std::strerror(errno));
  }
  struct stat st {};
  if (::fstat(fd_, &st) != 0) {
    int err = errno;
    ::close(fd_);
    fd_ = -1;
    throw Error(ErrorKind::Open, path + ": " + std::strerror(err));
  }
  identity_.device = static_cast<uint64_t>(st.st_dev);
  identity_.inode = static_cast<uint64_t>(st.st_ino);
  identity_.size = static_cast<uint64_t>(st.st_size);
  identity_.mtime_ns = static_cast<int64_t>(st.st_mtim.tv_sec) * 1000000000LL +
                       static_cast<int64_t>(st.st_mtim.tv_nsec);
}

File::~File() { close(); }

void File::close() noexcept {
  if (fd_ >= 0) {
    ::close(fd_);
    fd_ = -1;
  }
}

void File::read_exact(uint64_t offset, uint64_t length, uint8_t* dst) const {
  if (fd_ < 0) throw Error(ErrorKind::Read, path_ + ": file is closed");
  if (offset > identity_.size || length > identity_.size - offset) {
    throw Error(ErrorKind::Read, path_ + ": byte range " + std::to_string(offset) + "+" +
                                     std::to_string(length) + " lies past the end of the file (" +
                                     std::to_string(identity_.size) + " bytes)");
  }
  uint64_t done = 0;
  while (done < length) {
    ssize_t got = ::pread(fd_, dst + done, static_cast<size_t>(length - done),
                          static_cast<off_t>(offset + done));
    if (got < 0) {
      if (errno == EINTR) continue;
      throw Error(ErrorKind::Read, path_ + ": read failed at offset " +
                                       std::to_string(offset + done) + ": " + std::strerror(errno));
    }
    if (got == 0) {
      throw Error(ErrorKind::Read, path_ + ": file truncated while reading offset " +
                                       std::to_string(offset + done));
    }
    done += static_cast<uint64_t>(got);
  }
}

}  // namespace wsi
