// Streaming writer of megatron-core IndexedDataset files, with an atomic, durable finalize.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "format.h"

namespace soda {

// The element type of a caller's token array: numpy kind ('i' signed, 'u' unsigned) and itemsize.
struct TokenArrayType {
  char kind;
  int itemsize;
};

class DatasetWriter {
 public:
  // Tokens are stored with `dtype_code` and must lie in [0, vocab_size). Writes go to temporary
  // files next to the prefix; nothing under the final names changes until finalize().
  DatasetWriter(const std::string& prefix, int dtype_code, int64_t vocab_size, bool overwrite,
                size_t buffer_bytes);
  ~DatasetWriter();  // an unfinalized writer removes its temporary files
  DatasetWriter(const DatasetWriter&) = delete;
  DatasetWriter& operator=(const DatasetWriter&) = delete;

  // Appends sequences given as one flat token array plus a length per sequence. Each sequence is
  // its own document unless `sequences_per_document` groups them. All checks run before anything
  // is written, so a refused call leaves the writer as it was.
  void add_documents(const void* tokens, TokenArrayType type, size_t num_tokens, const int64_t* lengths,
                     size_t num_lengths, const int64_t* sequences_per_document, size_t num_documents);

  // Appends a complete dataset (its index and its .bin, copied in the kernel where possible).
  void append_dataset(const std::string& prefix);

  // Low-level appends for code that already holds bytes of this writer's dtype (the packer).
  void append_sequence_bytes(const uint8_t* data, size_t num_bytes);
  void end_document();

  void finalize();
  void abort() noexcept;

  int dtype_code() const { return dtype_code_; }
  int64_t vocab_size() const { return vocab_size_; }
  uint64_t num_sequences() const { return lengths_.size(); }
  uint64_t num_documents() const { return document_indices_.size() - 1; }
  uint64_t num_tokens() const { return num_tokens_; }
  bool finalized() const { return finalized_; }

 private:
  static constexpr size_t kChunkBytes = size_t{256} << 10;      // check-then-write unit, cache-sized
  static constexpr size_t kDirectWriteBytes = size_t{1} << 20;  // calls this large skip the buffer
  static constexpr uint64_t kWritebackBytes = uint64_t{8} << 20; // start disk writeback this often

  void write_bytes(const void* data, size_t n);
  void write_to_file(const void* data, size_t n);
  void start_writeback();
  void rollback(uint64_t logical_bytes);
  void flush();
  void write_index_file();
  void check_open() const;

  std::string prefix_;
  std::string bin_tmp_, idx_tmp_;
  int dtype_code_;
  int itemsize_;
  int64_t vocab_size_;
  bool overwrite_;
  int fd_ = -1;
  bool finalized_ = false;
  std::vector<uint8_t> buffer_;
  size_t buffered_ = 0;
  uint64_t file_bytes_ = 0;       // bytes in the .bin so far (the buffer holds the next ones)
  uint64_t writeback_bytes_ = 0;  // bytes already handed to writeback
  uint64_t num_tokens_ = 0;
  std::vector<int32_t> lengths_;
  std::vector<int64_t> document_indices_{0};
};

}  // namespace soda
