#include "format.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdlib>
#include <limits>

namespace soda {

int itemsize(int code) {
  switch (code) {
    case kUInt8: case kInt8: return 1;
    case kInt16: case kUInt16: return 2;
    case kInt32: case kFloat32: return 4;
    case kInt64: case kFloat64: return 8;
    default: return 0;
  }
}

bool is_integer_code(int code) { return itemsize(code) > 0 && code != kFloat32 && code != kFloat64; }

const char* dtype_name(int code) {
  switch (code) {
    case kUInt8: return "uint8";
    case kInt8: return "int8";
    case kInt16: return "int16";
    case kInt32: return "int32";
    case kInt64: return "int64";
    case kFloat64: return "float64";
    case kFloat32: return "float32";
    case kUInt16: return "uint16";
    default: return "unknown";
  }
}

int64_t dtype_capacity(int code) {
  switch (code) {
    case kUInt8: return int64_t{1} << 8;
    case kInt8: return int64_t{1} << 7;
    case kInt16: return int64_t{1} << 15;
    case kUInt16: return int64_t{1} << 16;
    case kInt32: return int64_t{1} << 31;
    case kInt64: return std::numeric_limits<int64_t>::max();
    default: return 0;
  }
}

std::string idx_path(const std::string& prefix) { return prefix + ".idx"; }
std::string bin_path(const std::string& prefix) { return prefix + ".bin"; }

bool file_exists(const std::string& path) {
  struct stat st;
  return ::stat(path.c_str(), &st) == 0;
}

int64_t file_size(const std::string& path) {
  struct stat st;
  if (::stat(path.c_str(), &st) != 0) return -1;
  return static_cast<int64_t>(st.st_size);
}

std::string parent_dir(const std::string& path) {
  auto slash = path.find_last_of('/');
  if (slash == std::string::npos) return ".";
  if (slash == 0) return "/";
  return path.substr(0, slash);
}

void write_all(int fd, const void* data, size_t n, const std::string& path) {
  const char* p = static_cast<const char*>(data);
  while (n > 0) {
    ssize_t w = ::write(fd, p, n);
    if (w < 0) {
      if (errno == EINTR) continue;
      throw OsError(errno, "write failed", path);
    }
    p += w;
    n -= static_cast<size_t>(w);
  }
}

void fsync_fd(int fd, const std::string& path) {
  if (::fsync(fd) != 0) throw OsError(errno, "fsync failed", path);
}

void fsync_dir(const std::string& dir) {
  int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY);
  if (fd < 0) throw OsError(errno, "cannot open directory", dir);
  int rc = ::fsync(fd);
  int err = errno;
  ::close(fd);
  if (rc != 0) throw OsError(err, "fsync failed", dir);
}

void rename_file(const std::string& from, const std::string& to) {
  if (::rename(from.c_str(), to.c_str()) != 0) throw OsError(errno, "rename to " + to + " failed", from);
}

void unlink_if_exists(const std::string& path) {
  if (::unlink(path.c_str()) != 0 && errno != ENOENT) throw OsError(errno, "cannot remove", path);
}

void crash_point(const char* point) {
  const char* target = std::getenv("MEGATRON_SODA_CRASH_AT");
  if (target != nullptr && std::strcmp(target, point) == 0) ::kill(::getpid(), SIGKILL);
}

MappedFile::MappedFile(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDONLY);
  if (fd < 0) throw OsError(errno, "cannot open", path);
  struct stat st;
  if (::fstat(fd, &st) != 0) {
    int err = errno;
    ::close(fd);
    throw OsError(err, "cannot stat", path);
  }
  size_ = static_cast<size_t>(st.st_size);
  if (size_ > 0) {
    void* m = ::mmap(nullptr, size_, PROT_READ, MAP_SHARED, fd, 0);
    if (m == MAP_FAILED) {
      int err = errno;
      ::close(fd);
      throw OsError(err, "cannot mmap", path);
    }
    ::madvise(m, size_, MADV_SEQUENTIAL);
    data_ = static_cast<const uint8_t*>(m);
  }
  ::close(fd);
}

MappedFile::~MappedFile() {
  if (data_ != nullptr) ::munmap(const_cast<uint8_t*>(data_), size_);
}

IndexView::IndexView(const std::string& prefix_) : prefix(prefix_), file(idx_path(prefix_)) {
  const std::string path = idx_path(prefix);
  const uint8_t* d = file.data();
  if (file.size() < kHeaderBytes)
    throw std::runtime_error(path + ": index is " + std::to_string(file.size()) +
                             " bytes, shorter than the 34-byte header");
  if (std::memcmp(d, kMagic, 9) != 0) throw std::runtime_error(path + ": bad magic at offset 0");
  uint64_t version;
  std::memcpy(&version, d + 9, 8);
  if (version != kVersion)
    throw std::runtime_error(path + ": unsupported version " + std::to_string(version) + " at offset 9");
  dtype_code = d[17];
  if (itemsize(dtype_code) == 0)
    throw std::runtime_error(path + ": unknown dtype code " + std::to_string(dtype_code) + " at offset 17");
  std::memcpy(&num_sequences, d + 18, 8);
  std::memcpy(&num_document_indices, d + 26, 8);
  // Guard the size arithmetic against absurd counts from a damaged header.
  const uint64_t limit = file.size();
  if (num_sequences > limit || num_document_indices > limit)
    throw std::runtime_error(path + ": counts in the header (N=" + std::to_string(num_sequences) +
                             ", D=" + std::to_string(num_document_indices) + ") exceed the file size");
  const uint64_t plain = kHeaderBytes + 12 * num_sequences + 8 * num_document_indices;
  if (file.size() == plain) {
    multimodal = false;
  } else if (file.size() == plain + num_sequences && num_sequences > 0) {
    multimodal = true;
  } else {
    throw std::runtime_error(path + ": index is " + std::to_string(file.size()) + " bytes, but N=" +
                             std::to_string(num_sequences) + " and D=" +
                             std::to_string(num_document_indices) + " need " + std::to_string(plain));
  }
  lengths_ = d + kHeaderBytes;
  pointers_ = d + kHeaderBytes + 4 * num_sequences;
  document_indices_ = d + kHeaderBytes + 12 * num_sequences;
  if (multimodal) modes_ = d + plain;
}

}  // namespace soda
