#include "packer.h"

#include <algorithm>
#include <numeric>
#include <random>
#include <stdexcept>

#include "format.h"
#include "writer.h"

namespace soda {
namespace {

// For each remaining capacity c in [1, L], the rows that have exactly c tokens free, plus a
// two-level bitmap of the non-empty capacities so "smallest capacity >= need" costs O(L / 4096).
class CapacityIndex {
 public:
  explicit CapacityIndex(int64_t row_length)
      : rows_(row_length + 1), words_((row_length + 64) / 64, 0), summary_((words_.size() + 63) / 64, 0) {}

  void add(int64_t capacity, int64_t row) {
    if (capacity <= 0) return;
    auto& bucket = rows_[capacity];
    bucket.push_back(row);
    if (bucket.size() == 1) set(capacity, true);
  }

  // Removes and returns a row with the smallest capacity >= need, or -1.
  int64_t take_best_fit(int64_t need, int64_t* capacity) {
    const int64_t c = first_set_at_or_after(need);
    if (c < 0) return -1;
    auto& bucket = rows_[c];
    const int64_t row = bucket.back();
    bucket.pop_back();
    if (bucket.empty()) set(c, false);
    *capacity = c;
    return row;
  }

 private:
  void set(int64_t c, bool on) {
    const size_t w = c / 64, s = w / 64;
    if (on) {
      words_[w] |= uint64_t{1} << (c % 64);
      summary_[s] |= uint64_t{1} << (w % 64);
    } else {
      words_[w] &= ~(uint64_t{1} << (c % 64));
      if (words_[w] == 0) summary_[s] &= ~(uint64_t{1} << (w % 64));
    }
  }

  int64_t first_set_at_or_after(int64_t c) const {
    if (c >= static_cast<int64_t>(rows_.size())) return -1;
    size_t w = c / 64;
    uint64_t bits = words_[w] & (~uint64_t{0} << (c % 64));
    if (bits) return static_cast<int64_t>(w * 64 + __builtin_ctzll(bits));
    // Next non-empty word through the summary.
    size_t next = w + 1;
    for (size_t s = next / 64; s < summary_.size(); ++s) {
      uint64_t sb = summary_[s];
      if (s == next / 64) sb &= (next % 64 == 0) ? ~uint64_t{0} : (~uint64_t{0} << (next % 64));
      if (sb) {
        const size_t word = s * 64 + __builtin_ctzll(sb);
        return static_cast<int64_t>(word * 64 + __builtin_ctzll(words_[word]));
      }
    }
    return -1;
  }

  std::vector<std::vector<int64_t>> rows_;
  std::vector<uint64_t> words_;
  std::vector<uint64_t> summary_;
};

struct Piece {
  int64_t document, start, length;
};

}  // namespace

PackingPlan plan_packing(const int64_t* lengths, size_t num_documents, int64_t row_length, uint64_t seed) {
  if (row_length <= 0) throw std::invalid_argument("row length must be positive, got " + std::to_string(row_length));
  PackingPlan plan;
  plan.row_length = row_length;
  std::vector<std::vector<Piece>> rows;
  std::vector<Piece> pieces;
  pieces.reserve(num_documents);
  for (size_t i = 0; i < num_documents; ++i) {
    const int64_t len = lengths[i];
    if (len < 0) throw std::invalid_argument("document " + std::to_string(i) + " has negative length");
    if (len == 0) {
      ++plan.num_empty_documents;
      continue;
    }
    plan.num_tokens += len;
    int64_t start = 0;
    if (len > row_length) {
      plan.split_documents.push_back(static_cast<int64_t>(i));
      for (; len - start >= row_length; start += row_length)
        rows.push_back({Piece{static_cast<int64_t>(i), start, row_length}});
    }
    if (len - start > 0) pieces.push_back(Piece{static_cast<int64_t>(i), start, len - start});
  }

  // Decreasing length; equal lengths in a seeded random order (a counting sort keeps this O(n + L)).
  std::mt19937_64 rng(seed);
  std::shuffle(pieces.begin(), pieces.end(), rng);
  std::vector<int64_t> count(row_length + 2, 0);
  for (const auto& p : pieces) ++count[row_length - p.length + 1];
  std::partial_sum(count.begin(), count.end(), count.begin());
  std::vector<Piece> ordered(pieces.size());
  for (const auto& p : pieces) ordered[count[row_length - p.length]++] = p;

  CapacityIndex free_space(row_length);
  for (const auto& p : ordered) {
    int64_t capacity = 0;
    int64_t row = free_space.take_best_fit(p.length, &capacity);
    if (row < 0) {
      row = static_cast<int64_t>(rows.size());
      rows.emplace_back();
      capacity = row_length;
    }
    rows[row].push_back(p);
    free_space.add(capacity - p.length, row);
  }

  std::shuffle(rows.begin(), rows.end(), rng);
  size_t total_pieces = 0;
  for (const auto& r : rows) total_pieces += r.size();
  plan.piece_document.reserve(total_pieces);
  plan.piece_start.reserve(total_pieces);
  plan.piece_length.reserve(total_pieces);
  plan.row_offsets.reserve(rows.size() + 1);
  for (const auto& r : rows) {
    for (const auto& p : r) {
      plan.piece_document.push_back(p.document);
      plan.piece_start.push_back(p.start);
      plan.piece_length.push_back(p.length);
    }
    plan.row_offsets.push_back(static_cast<int64_t>(plan.piece_document.size()));
  }
  return plan;
}

PackingPlan pack_dataset(const std::string& source, const std::string& output, int64_t row_length, uint64_t seed,
                         bool overwrite, size_t buffer_bytes) {
  if (source == output) throw std::invalid_argument("output prefix " + output + " is the source");
  IndexView view(source);
  if (!is_integer_code(view.dtype_code))
    throw std::invalid_argument(idx_path(source) + ": dtype " + dtype_name(view.dtype_code) + " is not an integer type");
  const uint64_t n = view.num_sequences;
  bool one_sequence_per_document = view.num_document_indices == n + 1;
  for (uint64_t d = 0; one_sequence_per_document && d <= n; ++d)
    one_sequence_per_document = view.document_index(d) == static_cast<int64_t>(d);
  if (!one_sequence_per_document)
    throw std::invalid_argument(idx_path(source) + ": documents with several sequences (an already packed dataset?) "
                                "cannot be packed; pack the unpacked source instead");
  // Byte offsets come from the lengths (checked against the .bin size below), never from the stored
  // pointers, so a damaged index cannot send a read outside the mapping.
  std::vector<int64_t> lengths(n), offsets(n);
  uint64_t tokens = 0;
  for (uint64_t i = 0; i < n; ++i) {
    lengths[i] = view.length(i);
    if (lengths[i] < 0) throw std::runtime_error(idx_path(source) + ": negative length; run tools/validate_dataset.py on it");
    offsets[i] = static_cast<int64_t>(tokens);
    tokens += static_cast<uint64_t>(lengths[i]);
  }
  const int item = itemsize(view.dtype_code);
  MappedFile bin(bin_path(source));
  if (bin.size() != tokens * item)
    throw std::runtime_error(bin_path(source) + " is " + std::to_string(bin.size()) + " bytes but its index needs " +
                             std::to_string(tokens * item) + "; run tools/validate_dataset.py on it");
  PackingPlan plan = plan_packing(lengths.data(), n, row_length, seed);

  // The source already passed a dtype check when it was written; its ids are copied as they are.
  DatasetWriter writer(output, view.dtype_code, dtype_capacity(view.dtype_code), overwrite, buffer_bytes);
  for (int64_t r = 0; r < plan.num_rows(); ++r) {
    for (int64_t k = plan.row_offsets[r]; k < plan.row_offsets[r + 1]; ++k) {
      const int64_t byte = (offsets[plan.piece_document[k]] + plan.piece_start[k]) * item;
      writer.append_sequence_bytes(bin.data() + byte, static_cast<size_t>(plan.piece_length[k]) * item);
    }
    writer.end_document();
  }
  writer.finalize();
  return plan;
}

}  // namespace soda
