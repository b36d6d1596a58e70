// Errors raised by the native engine; bindings map each kind to a
// wsiarray.errors class, so Python sees one WSIError hierarchy.
#pragma once

#include <memory>
#include <stdexcept>
#include <string>

namespace wsi {

// Argument: a caller mistake (wrong output shape, level out of range, ...).
// Cache: the tile cache cannot be made or attached (/dev/shm too small, an unsafe segment).
enum class ErrorKind { Open, Format, Unsupported, Read, Decode, Argument, Cache };

// `cause` is opaque to the engine: the bindings put the Python exception an
// external decoder raised there, and chain it as __cause__ when they raise
// this error in Python. Code that adds context to a message keeps it.
class Error : public std::runtime_error {
 public:
  Error(ErrorKind kind, const std::string& message, std::shared_ptr<void> cause = nullptr)
      : std::runtime_error(message), kind_(kind), cause_(std::move(cause)) {}
  ErrorKind kind() const noexcept { return kind_; }
  const std::shared_ptr<void>& cause() const noexcept { return cause_; }

 private:
  ErrorKind kind_;
  std::shared_ptr<void> cause_;
};

}  // namespace wsi
