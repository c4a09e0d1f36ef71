// Checks every invariant of an IndexedDataset prefix and names the first violation.
#pragma once

#include <cstdint>
#include <string>

namespace soda {

struct ValidationReport {
  bool ok = false;
  std::string error;     // the first violation; empty when ok
  std::string file;      // the file it is in
  int64_t offset = -1;   // its byte offset in that file, -1 when it has none
  int dtype_code = 0;
  uint64_t num_sequences = 0;
  uint64_t num_documents = 0;
  uint64_t num_tokens = 0;
  int64_t max_token = -1;  // only when token ids were scanned
  bool multimodal = false;
};

// Header, dtype, counts, file sizes, pointers against lengths, document index and, when
// vocab_size > 0, every token id against the vocabulary.
ValidationReport validate_dataset(const std::string& prefix, int64_t vocab_size);

}  // namespace soda
