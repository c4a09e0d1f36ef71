// megatron-core IndexedDataset on-disk format, file helpers and crash-test points.
//
// Layout (little-endian, no padding), identical to megatron.core.datasets.indexed_dataset:
//   <prefix>.idx: magic "MMIDIDX\0\0" (9) | version u64 = 1 | dtype code u8 | N u64 | D u64 |
//                 int32 lengths[N] | int64 byte pointers[N] | int64 document_indices[D] |
//                 optional int8 modes[N] (multimodal datasets only)
//   <prefix>.bin: the tokens of all sequences, concatenated.
// The .idx is the commit point: a prefix whose .idx exists is complete.
#pragma once

#include <cerrno>
#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <string>

namespace soda {

constexpr char kMagic[9] = {'M', 'M', 'I', 'D', 'I', 'D', 'X', '\0', '\0'};
constexpr uint64_t kVersion = 1;
constexpr size_t kHeaderBytes = 9 + 8 + 1 + 8 + 8;  // = 34

// megatron-core DType codes.
enum DTypeCode : uint8_t {
  kUInt8 = 1, kInt8 = 2, kInt16 = 3, kInt32 = 4, kInt64 = 5, kFloat64 = 6, kFloat32 = 7, kUInt16 = 8,
};

// Bytes per item for a dtype code, 0 for an unknown code.
int itemsize(int code);
// Whether tokens of this dtype code are integers (megatron also allows float codes).
bool is_integer_code(int code);
const char* dtype_name(int code);
// Largest token id + 1 that an integer dtype code can hold (0 for float or unknown codes).
int64_t dtype_capacity(int code);

// An OS-level failure carrying errno and the path, raised in Python as the matching OSError.
struct OsError : std::runtime_error {
  int err;
  std::string path;
  OsError(int e, const std::string& what, const std::string& p)
      : std::runtime_error(what + ": " + std::strerror(e)), err(e), path(p) {}
};

std::string idx_path(const std::string& prefix);
std::string bin_path(const std::string& prefix);
bool file_exists(const std::string& path);
int64_t file_size(const std::string& path);  // -1 when missing
std::string parent_dir(const std::string& path);

void write_all(int fd, const void* data, size_t n, const std::string& path);
void fsync_fd(int fd, const std::string& path);
void fsync_dir(const std::string& dir);
void rename_file(const std::string& from, const std::string& to);
void unlink_if_exists(const std::string& path);

// Test hook for crash-safety tests: when the environment variable MEGATRON_SODA_CRASH_AT names
// `point`, the process kills itself with SIGKILL there, exactly as an external kill would.
void crash_point(const char* point);

// A read-only memory map of a whole file (empty files map to nullptr/0).
class MappedFile {
 public:
  explicit MappedFile(const std::string& path);
  ~MappedFile();
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;
  const uint8_t* data() const { return data_; }
  size_t size() const { return size_; }

 private:
  const uint8_t* data_ = nullptr;
  size_t size_ = 0;
};

// The parsed .idx of a prefix, arrays pointing into the mapped file. Constructing it checks only
// what is needed to address the arrays safely (magic, version, dtype code, exact file size);
// validate_dataset checks everything else.
struct IndexView {
  explicit IndexView(const std::string& prefix);
  std::string prefix;
  MappedFile file;
  int dtype_code = 0;
  uint64_t num_sequences = 0;
  uint64_t num_document_indices = 0;
  bool multimodal = false;
  // The arrays start at byte 34, so they are unaligned: read them through memcpy.
  int32_t length(uint64_t i) const { return load<int32_t>(lengths_, i); }
  int64_t pointer(uint64_t i) const { return load<int64_t>(pointers_, i); }
  int64_t document_index(uint64_t i) const { return load<int64_t>(document_indices_, i); }
  const uint8_t* lengths_bytes() const { return lengths_; }
  const uint8_t* document_indices_bytes() const { return document_indices_; }
  const uint8_t* modes_bytes() const { return modes_; }

 private:
  template <typename T>
  static T load(const uint8_t* base, uint64_t i) {
    T v;
    std::memcpy(&v, base + i * sizeof(T), sizeof(T));
    return v;
  }
  const uint8_t* lengths_ = nullptr;
  const uint8_t* pointers_ = nullptr;
  const uint8_t* document_indices_ = nullptr;
  const uint8_t* modes_ = nullptr;
};

}  // namespace soda
