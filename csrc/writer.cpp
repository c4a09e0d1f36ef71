#include "writer.h"

#include <fcntl.h>
#include <sys/types.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <limits>
#include <stdexcept>

namespace soda {
namespace {

// First index in [0, n) whose value is outside [0, vocab), or n. The min/max pass vectorizes;
// the locating pass only runs on failure.
template <typename In>
size_t first_out_of_range(const In* p, size_t n, int64_t vocab) {
  if (n == 0) return 0;
  In lo = p[0], hi = p[0];
  for (size_t i = 1; i < n; ++i) {
    lo = std::min(lo, p[i]);
    hi = std::max(hi, p[i]);
  }
  bool ok = true;
  if constexpr (std::is_signed_v<In>) ok = lo >= 0;
  ok = ok && static_cast<uint64_t>(hi) < static_cast<uint64_t>(vocab);
  if (ok) return n;
  for (size_t i = 0; i < n; ++i) {
    int64_t v = static_cast<int64_t>(p[i]);
    if constexpr (std::is_unsigned_v<In>) {
      if (static_cast<uint64_t>(p[i]) >= static_cast<uint64_t>(vocab)) return i;
    } else if (v < 0 || v >= vocab) {
      return i;
    }
  }
  return n;
}

template <typename In, typename Out>
void convert(const In* in, size_t n, uint8_t* out) {
  Out* o = reinterpret_cast<Out*>(out);
  for (size_t i = 0; i < n; ++i) o[i] = static_cast<Out>(in[i]);
}

using ConvertFn = void (*)(const void*, size_t, uint8_t*);

template <typename In>
ConvertFn converter_to(int code) {
  switch (code) {
    case kUInt8: return [](const void* p, size_t n, uint8_t* o) { convert<In, uint8_t>((const In*)p, n, o); };
    case kInt8: return [](const void* p, size_t n, uint8_t* o) { convert<In, int8_t>((const In*)p, n, o); };
    case kInt16: return [](const void* p, size_t n, uint8_t* o) { convert<In, int16_t>((const In*)p, n, o); };
    case kUInt16: return [](const void* p, size_t n, uint8_t* o) { convert<In, uint16_t>((const In*)p, n, o); };
    case kInt32: return [](const void* p, size_t n, uint8_t* o) { convert<In, int32_t>((const In*)p, n, o); };
    case kInt64: return [](const void* p, size_t n, uint8_t* o) { convert<In, int64_t>((const In*)p, n, o); };
    default: throw std::invalid_argument("unsupported output dtype");
  }
}

// Calls `fn.template operator()<In>()` with In the C++ type of the caller's array.
template <typename Fn>
auto dispatch_input(TokenArrayType t, Fn&& fn) {
  if (t.kind == 'i') {
    switch (t.itemsize) {
      case 1: return fn(int8_t{});
      case 2: return fn(int16_t{});
      case 4: return fn(int32_t{});
      case 8: return fn(int64_t{});
    }
  } else if (t.kind == 'u') {
    switch (t.itemsize) {
      case 1: return fn(uint8_t{});
      case 2: return fn(uint16_t{});
      case 4: return fn(uint32_t{});
      case 8: return fn(uint64_t{});
    }
  }
  throw std::invalid_argument("tokens must be an integer array (numpy kind 'i' or 'u'), got kind '" +
                              std::string(1, t.kind) + "' itemsize " + std::to_string(t.itemsize));
}

bool same_type(TokenArrayType t, int code) {
  switch (code) {
    case kUInt8: return t.kind == 'u' && t.itemsize == 1;
    case kInt8: return t.kind == 'i' && t.itemsize == 1;
    case kInt16: return t.kind == 'i' && t.itemsize == 2;
    case kUInt16: return t.kind == 'u' && t.itemsize == 2;
    case kInt32: return t.kind == 'i' && t.itemsize == 4;
    case kInt64: return t.kind == 'i' && t.itemsize == 8;
    default: return false;
  }
}

// Copies a whole file into fd at its current offset, in the kernel when the filesystem allows.
void copy_file_into(const std::string& src, int out_fd, const std::string& out_path, std::vector<uint8_t>& buf) {
  int in = ::open(src.c_str(), O_RDONLY | O_CLOEXEC);
  if (in < 0) throw OsError(errno, "cannot open", src);
  bool use_kernel_copy = true;
  while (true) {
    ssize_t n;
    if (use_kernel_copy) {
      n = ::copy_file_range(in, nullptr, out_fd, nullptr, size_t{1} << 30, 0);
      if (n < 0 && (errno == EXDEV || errno == ENOSYS || errno == EINVAL || errno == EOPNOTSUPP)) {
        use_kernel_copy = false;
        continue;
      }
    } else {
      n = ::read(in, buf.data(), buf.size());
      if (n > 0) {
        try {
          write_all(out_fd, buf.data(), static_cast<size_t>(n), out_path);
        } catch (...) {
          ::close(in);
          throw;
        }
      }
    }
    if (n == 0) break;
    if (n < 0) {
      if (errno == EINTR) continue;
      int err = errno;
      ::close(in);
      throw OsError(err, "copy failed", src);
    }
  }
  ::close(in);
}

}  // namespace

DatasetWriter::DatasetWriter(const std::string& prefix, int dtype_code, int64_t vocab_size, bool overwrite,
                             size_t buffer_bytes)
    : prefix_(prefix), dtype_code_(dtype_code), itemsize_(itemsize(dtype_code)), vocab_size_(vocab_size),
      overwrite_(overwrite), buffer_(std::max<size_t>(buffer_bytes, 1 << 16)) {
  if (!is_integer_code(dtype_code))
    throw std::invalid_argument("dtype code " + std::to_string(dtype_code) + " (" + dtype_name(dtype_code) +
                                ") is not an integer token dtype");
  if (vocab_size <= 0 || vocab_size > dtype_capacity(dtype_code))
    throw std::invalid_argument("vocab_size " + std::to_string(vocab_size) + " does not fit dtype " +
                                dtype_name(dtype_code));
  if (!overwrite && file_exists(idx_path(prefix)))
    throw OsError(EEXIST, "dataset already exists; pass overwrite=True (--overwrite) to replace it",
                  idx_path(prefix));
  // A name of its own for every writer (pid and a per-process counter), created exclusively: two
  // writers of one prefix, in one process or several, never share or truncate each other's files.
  static std::atomic<uint64_t> counter{0};
  for (int attempt = 0; fd_ < 0; ++attempt) {
    const std::string suffix = ".tmp-" + std::to_string(::getpid()) + "-" + std::to_string(counter++);
    bin_tmp_ = bin_path(prefix) + suffix;
    idx_tmp_ = idx_path(prefix) + suffix;
    fd_ = ::open(bin_tmp_.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
    if (fd_ < 0 && (errno != EEXIST || attempt > 1000)) throw OsError(errno, "cannot create", bin_tmp_);
  }
}

DatasetWriter::~DatasetWriter() {
  if (!finalized_) abort();
}

void DatasetWriter::check_open() const {
  if (finalized_) throw std::runtime_error(prefix_ + ": writer is already finalized");
  if (fd_ < 0) throw std::runtime_error(prefix_ + ": writer was aborted");
}

void DatasetWriter::write_to_file(const void* data, size_t n) {
  write_all(fd_, data, n, bin_tmp_);
  file_bytes_ += n;
  start_writeback();
}

void DatasetWriter::start_writeback() {
#ifdef __linux__
  // Hand finished ranges to the disk while the CPU keeps going, so the closing fsync has little
  // left to wait for. Durability is unchanged: finalize() still fsyncs.
  if (file_bytes_ - writeback_bytes_ >= kWritebackBytes) {
    ::sync_file_range(fd_, static_cast<off_t>(writeback_bytes_), static_cast<off_t>(file_bytes_ - writeback_bytes_),
                      SYNC_FILE_RANGE_WRITE);
    writeback_bytes_ = file_bytes_;
  }
#endif
}

void DatasetWriter::flush() {
  if (buffered_ > 0) {
    write_to_file(buffer_.data(), buffered_);
    buffered_ = 0;
  }
}

void DatasetWriter::write_bytes(const void* data, size_t n) {
  if (buffered_ + n <= buffer_.size()) {
    std::memcpy(buffer_.data() + buffered_, data, n);
    buffered_ += n;
    return;
  }
  flush();
  if (n >= buffer_.size()) {
    write_to_file(data, n);  // large: straight from the caller's memory
  } else {
    std::memcpy(buffer_.data(), data, n);
    buffered_ = n;
  }
}

void DatasetWriter::rollback(uint64_t logical_bytes) {
  if (logical_bytes >= file_bytes_) {
    buffered_ = static_cast<size_t>(logical_bytes - file_bytes_);
    return;
  }
  if (::ftruncate(fd_, static_cast<off_t>(logical_bytes)) != 0 ||
      ::lseek(fd_, static_cast<off_t>(logical_bytes), SEEK_SET) < 0) {
    const int err = errno;
    abort();  // the file no longer matches the index: this writer cannot go on
    throw OsError(err, "cannot roll back a refused call", bin_tmp_);
  }
  file_bytes_ = logical_bytes;
  writeback_bytes_ = std::min(writeback_bytes_, logical_bytes);
  buffered_ = 0;
}

void DatasetWriter::add_documents(const void* tokens, TokenArrayType type, size_t num_tokens,
                                  const int64_t* lengths, size_t num_lengths,
                                  const int64_t* sequences_per_document, size_t num_documents) {
  check_open();
  // 1. Shape checks.
  uint64_t total = 0;
  for (size_t i = 0; i < num_lengths; ++i) {
    if (lengths[i] < 0 || lengths[i] > std::numeric_limits<int32_t>::max())
      throw std::invalid_argument("length " + std::to_string(lengths[i]) + " of sequence " + std::to_string(i) +
                                  " is outside [0, 2^31)");
    total += static_cast<uint64_t>(lengths[i]);
  }
  if (total != num_tokens)
    throw std::invalid_argument("lengths sum to " + std::to_string(total) + " but " + std::to_string(num_tokens) +
                                " tokens were given");
  if (sequences_per_document != nullptr) {
    uint64_t seqs = 0;
    for (size_t d = 0; d < num_documents; ++d) {
      if (sequences_per_document[d] < 0)
        throw std::invalid_argument("sequences_per_document[" + std::to_string(d) + "] is negative");
      seqs += static_cast<uint64_t>(sequences_per_document[d]);
    }
    if (seqs != num_lengths)
      throw std::invalid_argument("sequences_per_document sums to " + std::to_string(seqs) + " but " +
                                  std::to_string(num_lengths) + " lengths were given");
  }
  // 2. Check and write chunk by chunk, so each chunk is read from memory once while in cache. A
  // refused call is rolled back to where it began.
  const uint64_t logical_before = file_bytes_ + buffered_;
  const size_t bad = dispatch_input(type, [&](auto tag) -> size_t {
    using In = decltype(tag);
    const In* in = static_cast<const In*>(tokens);
    const bool direct = same_type(type, dtype_code_) && num_tokens * sizeof(In) >= kDirectWriteBytes;
    const ConvertFn convert_fn = converter_to<In>(dtype_code_);
    if (direct) flush();
    const size_t chunk = kChunkBytes / sizeof(In);
    for (size_t done = 0; done < num_tokens; done += chunk) {
      const size_t n = std::min(chunk, num_tokens - done);
      const size_t first_bad = first_out_of_range<In>(in + done, n, vocab_size_);
      if (first_bad < n) return done + first_bad;
      if (direct) {
        write_to_file(in + done, n * sizeof(In));
      } else {
        for (size_t k = 0; k < n;) {
          if (buffered_ + itemsize_ > buffer_.size()) flush();
          const size_t m = std::min((buffer_.size() - buffered_) / itemsize_, n - k);
          convert_fn(in + done + k, m, buffer_.data() + buffered_);
          buffered_ += m * itemsize_;
          k += m;
        }
      }
    }
    return num_tokens;
  });
  if (bad < num_tokens) {
    rollback(logical_before);
    const int64_t value = dispatch_input(type, [&](auto tag) {
      using In = decltype(tag);
      return static_cast<int64_t>(static_cast<const In*>(tokens)[bad]);
    });
    size_t seq = 0;
    uint64_t start = 0;
    while (seq < num_lengths && start + static_cast<uint64_t>(lengths[seq]) <= bad) start += lengths[seq++];
    throw std::invalid_argument("token id " + std::to_string(value) + " at position " + std::to_string(bad - start) +
                                " of sequence " + std::to_string(num_sequences() + seq) +
                                " is outside the vocabulary [0, " + std::to_string(vocab_size_) + ")");
  }
  num_tokens_ += num_tokens;
  lengths_.reserve(lengths_.size() + num_lengths);
  for (size_t i = 0; i < num_lengths; ++i) lengths_.push_back(static_cast<int32_t>(lengths[i]));
  if (sequences_per_document == nullptr) {
    for (size_t i = 0; i < num_lengths; ++i) document_indices_.push_back(document_indices_.back() + 1);
  } else {
    for (size_t d = 0; d < num_documents; ++d)
      document_indices_.push_back(document_indices_.back() + sequences_per_document[d]);
  }
}

void DatasetWriter::append_dataset(const std::string& prefix) {
  check_open();
  IndexView view(prefix);
  if (view.dtype_code != dtype_code_)
    throw std::invalid_argument(idx_path(prefix) + ": dtype " + dtype_name(view.dtype_code) +
                                " differs from the output's " + dtype_name(dtype_code_));
  if (view.multimodal) throw std::invalid_argument(idx_path(prefix) + ": multimodal datasets are not supported");
  const uint64_t n = view.num_sequences;
  uint64_t tokens = 0;
  for (uint64_t i = 0; i < n; ++i) tokens += static_cast<uint64_t>(view.length(i));
  const int64_t bin_bytes = file_size(bin_path(prefix));
  if (bin_bytes < 0) throw OsError(ENOENT, "missing data file", bin_path(prefix));
  if (static_cast<uint64_t>(bin_bytes) != tokens * itemsize_)
    throw std::runtime_error(bin_path(prefix) + " is " + std::to_string(bin_bytes) + " bytes but its index needs " +
                             std::to_string(tokens * itemsize_) + "; run tools/validate_dataset.py on it");
  if (view.num_document_indices == 0 || view.document_index(0) != 0 ||
      view.document_index(view.num_document_indices - 1) != static_cast<int64_t>(n))
    throw std::runtime_error(idx_path(prefix) + ": document index does not run from 0 to N");
  flush();
  copy_file_into(bin_path(prefix), fd_, bin_tmp_, buffer_);
  file_bytes_ += tokens * itemsize_;
  start_writeback();
  num_tokens_ += tokens;
  const int64_t offset = static_cast<int64_t>(lengths_.size());
  lengths_.reserve(lengths_.size() + n);
  for (uint64_t i = 0; i < n; ++i) lengths_.push_back(view.length(i));
  for (uint64_t d = 1; d < view.num_document_indices; ++d)
    document_indices_.push_back(offset + view.document_index(d));
}

void DatasetWriter::append_sequence_bytes(const uint8_t* data, size_t num_bytes) {
  check_open();
  if (num_bytes % itemsize_ != 0) throw std::invalid_argument("byte count is not a multiple of the item size");
  const size_t n = num_bytes / itemsize_;
  if (n > static_cast<size_t>(std::numeric_limits<int32_t>::max()))
    throw std::invalid_argument("sequence longer than 2^31 - 1 tokens");
  write_bytes(data, num_bytes);
  num_tokens_ += n;
  lengths_.push_back(static_cast<int32_t>(n));
}

void DatasetWriter::end_document() {
  check_open();
  document_indices_.push_back(static_cast<int64_t>(lengths_.size()));
}

void DatasetWriter::write_index_file() {
  // No live writer can own this name: the .bin of the same suffix was created exclusively.
  int fd = ::open(idx_tmp_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) throw OsError(errno, "cannot create", idx_tmp_);
  try {
    std::vector<uint8_t> head(kHeaderBytes);
    const uint64_t n = lengths_.size(), d = document_indices_.size();
    std::memcpy(head.data(), kMagic, 9);
    std::memcpy(head.data() + 9, &kVersion, 8);
    head[17] = static_cast<uint8_t>(dtype_code_);
    std::memcpy(head.data() + 18, &n, 8);
    std::memcpy(head.data() + 26, &d, 8);
    write_all(fd, head.data(), head.size(), idx_tmp_);
    write_all(fd, lengths_.data(), n * sizeof(int32_t), idx_tmp_);
    std::vector<int64_t> pointers(std::min<uint64_t>(n, 1 << 20));
    int64_t ptr = 0;
    for (uint64_t i = 0; i < n;) {
      size_t m = std::min<uint64_t>(pointers.size(), n - i);
      for (size_t j = 0; j < m; ++j, ++i) {
        pointers[j] = ptr;
        ptr += static_cast<int64_t>(lengths_[i]) * itemsize_;
      }
      write_all(fd, pointers.data(), m * sizeof(int64_t), idx_tmp_);
    }
    write_all(fd, document_indices_.data(), d * sizeof(int64_t), idx_tmp_);
    fsync_fd(fd, idx_tmp_);
  } catch (...) {
    ::close(fd);
    throw;
  }
  if (::close(fd) != 0) throw OsError(errno, "close failed", idx_tmp_);
}

void DatasetWriter::finalize() {
  check_open();
  if (document_indices_.back() != static_cast<int64_t>(lengths_.size()))
    throw std::runtime_error(prefix_ + ": " + std::to_string(lengths_.size() - document_indices_.back()) +
                             " sequences were added after the last end_document()");
  try {
    flush();
    fsync_fd(fd_, bin_tmp_);
    if (::close(fd_) != 0) throw OsError(errno, "close failed", bin_tmp_);
    fd_ = -1;
    crash_point("bin_synced");
    write_index_file();
    crash_point("idx_synced");
    const std::string dir = parent_dir(prefix_);
    // The old .idx goes first, so no moment has an old index over a new .bin. Until here the old
    // dataset stayed complete and readable.
    if (file_exists(idx_path(prefix_))) {
      if (!overwrite_)
        throw OsError(EEXIST, "dataset appeared while writing; pass overwrite=True to replace it",
                      idx_path(prefix_));
      unlink_if_exists(idx_path(prefix_));
      fsync_dir(dir);
      crash_point("old_index_removed");
    }
    rename_file(bin_tmp_, bin_path(prefix_));
    fsync_dir(dir);  // the .bin rename is durable before the .idx can appear, on any filesystem
    crash_point("bin_renamed");
    rename_file(idx_tmp_, idx_path(prefix_));  // the commit point
    crash_point("idx_renamed");
    fsync_dir(dir);
  } catch (...) {
    abort();
    throw;
  }
  finalized_ = true;
  std::vector<uint8_t>().swap(buffer_);
}

void DatasetWriter::abort() noexcept {
  if (finalized_) return;
  if (fd_ >= 0) ::close(fd_);
  fd_ = -1;
  ::unlink(bin_tmp_.c_str());
  ::unlink(idx_tmp_.c_str());
}

}  // namespace soda
