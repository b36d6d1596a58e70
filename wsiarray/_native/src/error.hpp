// Errors raised by the native engine; bindings map each kind to a
// wsiarray.errors class, so Python sees one WSIError hierarchy.
#pragma once

#include <stdexcept>
#include <string>

namespace wsi {

// Argument: a caller mistake (wrong output shape, level out of range, ...).
// Cache: the tile cache cannot be made or attached (/dev/shm too small, an unsafe segment).
enum class ErrorKind { Open, Format, Unsupported, Read, Decode, Argument, Cache };

class Error : public std::runtime_error {
 public:
  Error(ErrorKind kind, const std::string& message)
      : std::runtime_error(message), kind_(kind) {}
  ErrorKind kind() const noexcept { return kind_; }

 private:
  ErrorKind kind_;
};

}  // namespace wsi
