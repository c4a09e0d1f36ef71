// Packs documents into fixed-length rows by best-fit decreasing, and writes packed datasets.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace soda {

// Rows as runs of pieces: row r holds pieces [row_offsets[r], row_offsets[r+1]); a piece is
// `piece_length` tokens of document `piece_document` starting at token `piece_start`.
struct PackingPlan {
  int64_t row_length = 0;
  std::vector<int64_t> row_offsets{0};
  std::vector<int64_t> piece_document;
  std::vector<int64_t> piece_start;
  std::vector<int64_t> piece_length;
  std::vector<int64_t> split_documents;  // documents longer than a row, cut at row boundaries
  int64_t num_tokens = 0;
  int64_t num_empty_documents = 0;  // skipped: they hold no tokens

  int64_t num_rows() const { return static_cast<int64_t>(row_offsets.size()) - 1; }
  double fill() const {
    return num_rows() == 0 ? 1.0 : static_cast<double>(num_tokens) / (static_cast<double>(num_rows()) * row_length);
  }
};

// A document that fits in a row is never split. One longer than a row is cut into full rows of
// its own plus a remainder that is packed like any document. Ties in length are ordered by a
// permutation drawn from `seed`, and the rows are shuffled by it, so the plan is a pure function of
// (lengths, row_length, seed).
PackingPlan plan_packing(const int64_t* lengths, size_t num_documents, int64_t row_length, uint64_t seed);

// Packs the sequences of `source` (one sequence per document, as GPT data is written) into rows
// of `output`: one output document per row, one output sequence per piece, so the row's document
// boundaries (cu_seqlens) survive. Returns the plan it used.
PackingPlan pack_dataset(const std::string& source, const std::string& output, int64_t row_length, uint64_t seed,
                         bool overwrite, size_t buffer_bytes);

}  // namespace soda
