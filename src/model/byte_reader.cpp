// ByteReader: the one place where the model parsers touch bytes, so the range
// check below guards every read of a checkpoint or tokenizer, from a file or
// from memory alike.
#include "model/byte_reader.hpp"

#include <sys/stat.h>

#include <cerrno>
#include <cstring>

#include "flashcomm/error.hpp"

namespace flashcomm::detail {

void ByteReader::read(std::int64_t offset, void* dst, std::int64_t bytes, const std::string& what) {
  const std::int64_t total = size();
  // Written so that no sum can overflow, whatever a header claimed.
  if (offset < 0 || bytes < 0 || offset > total || bytes > total - offset) {
    throw FormatError(
        fmt::format("{}: truncated: cannot read {} ({} bytes at offset {}) from {} bytes", name(),
                    what, bytes, offset, total));
  }
  if (bytes > 0) {
    read_inside(offset, dst, bytes, what);
  }
}

namespace {

// Refuses what is not a regular file before it is opened: opening a FIFO
// for reading would block until a writer comes, which may be never.
const std::string& regular_file(const std::string& path, const char* kind) {
  struct stat info {};
  if (::stat(path.c_str(), &info) == 0 && !S_ISREG(info.st_mode)) {
    throw FormatError(fmt::format("{}: the {} is not a regular file", path, kind));
  }
  return path;
}

}  // namespace

FileReader::FileReader(const std::string& path, const char* kind)
    : ByteReader(path), file_(std::fopen(regular_file(path, kind).c_str(), "rb")) {
  if (!file_) {
    throw FormatError(fmt::format("{}: cannot open {}: {}", path, kind, std::strerror(errno)));
  }
  struct stat info {};
  if (fstat(fileno(file_.get()), &info) != 0) {
    throw FormatError(fmt::format("{}: cannot stat {}: {}", path, kind, std::strerror(errno)));
  }
  if (!S_ISREG(info.st_mode)) {
    throw FormatError(fmt::format("{}: the {} is not a regular file", path, kind));
  }
  size_ = static_cast<std::int64_t>(info.st_size);
}

void FileReader::read_inside(std::int64_t offset, void* dst, std::int64_t bytes,
                             const std::string& what) {
  if (offset != position_ && fseeko(file_.get(), static_cast<off_t>(offset), SEEK_SET) != 0) {
    throw FormatError(fmt::format("{}: cannot seek to {} (offset {}): {}", name(), what, offset,
                                  std::strerror(errno)));
  }
  position_ = offset;
  // The size was taken when the file was opened; it may have shrunk since.
  const size_t got = std::fread(dst, 1, static_cast<size_t>(bytes), file_.get());
  position_ += static_cast<std::int64_t>(got);
  if (got != static_cast<size_t>(bytes)) {
    throw FormatError(fmt::format(
        "{}: cannot read {} ({} bytes at offset {}): {}", name(), what, bytes, offset,
        std::ferror(file_.get()) != 0 ? std::strerror(errno) : "unexpected end of file"));
  }
}

void MemoryReader::read_inside(std::int64_t offset, void* dst, std::int64_t bytes,
                               const std::string& /*what*/) {
  std::memcpy(dst, bytes_.data() + offset, static_cast<size_t>(bytes));
}

}  // namespace flashcomm::detail
