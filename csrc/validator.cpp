#include "validator.h"

#include <algorithm>
#include <cstring>
#include <memory>

#include "format.h"

namespace soda {
namespace {

struct Failure {
  std::string message;
  std::string file;
  int64_t offset;
};

// Index of the first token outside [0, vocab), or n.
template <typename T>
uint64_t scan_tokens(const uint8_t* base, uint64_t n, int64_t vocab, int64_t* max_out) {
  const uint64_t block = 1 << 16;
  int64_t max_seen = -1;
  for (uint64_t start = 0; start < n; start += block) {
    const uint64_t end = std::min(n, start + block);
    T lo, hi;
    std::memcpy(&lo, base + start * sizeof(T), sizeof(T));
    hi = lo;
    for (uint64_t i = start; i < end; ++i) {
      T v;
      std::memcpy(&v, base + i * sizeof(T), sizeof(T));
      lo = std::min(lo, v);
      hi = std::max(hi, v);
    }
    if (lo < 0 || static_cast<int64_t>(hi) >= vocab) {
      for (uint64_t i = start; i < end; ++i) {
        T v;
        std::memcpy(&v, base + i * sizeof(T), sizeof(T));
        if (v < 0 || static_cast<int64_t>(v) >= vocab) return i;
      }
    }
    max_seen = std::max<int64_t>(max_seen, static_cast<int64_t>(hi));
  }
  *max_out = max_seen;
  return n;
}

uint64_t scan(int code, const uint8_t* base, uint64_t n, int64_t vocab, int64_t* max_out) {
  switch (code) {
    case kUInt8: return scan_tokens<uint8_t>(base, n, vocab, max_out);
    case kInt8: return scan_tokens<int8_t>(base, n, vocab, max_out);
    case kInt16: return scan_tokens<int16_t>(base, n, vocab, max_out);
    case kUInt16: return scan_tokens<uint16_t>(base, n, vocab, max_out);
    case kInt32: return scan_tokens<int32_t>(base, n, vocab, max_out);
    case kInt64: return scan_tokens<int64_t>(base, n, vocab, max_out);
    case kFloat32: return scan_tokens<float>(base, n, vocab, max_out);
    case kFloat64: return scan_tokens<double>(base, n, vocab, max_out);
    default: return 0;
  }
}

int64_t token_value(int code, const uint8_t* p) {
  switch (code) {
#define LOAD(C, T) case C: { T v; std::memcpy(&v, p, sizeof(T)); return static_cast<int64_t>(v); }
    LOAD(kUInt8, uint8_t) LOAD(kInt8, int8_t) LOAD(kInt16, int16_t) LOAD(kUInt16, uint16_t)
    LOAD(kInt32, int32_t) LOAD(kInt64, int64_t) LOAD(kFloat32, float) LOAD(kFloat64, double)
#undef LOAD
    default: return 0;
  }
}

}  // namespace

ValidationReport validate_dataset(const std::string& prefix, int64_t vocab_size) {
  ValidationReport report;
  const std::string idx = idx_path(prefix), bin = bin_path(prefix);
  auto fail = [&](const std::string& message, const std::string& file, int64_t offset) {
    report.ok = false;
    report.error = message;
    report.file = file;
    report.offset = offset;
    return report;
  };
  if (!file_exists(idx)) return fail("index file is missing (the dataset is incomplete or absent)", idx, -1);
  if (!file_exists(bin)) return fail("data file is missing", bin, -1);

  std::unique_ptr<MappedFile> mapped_idx;
  try {
    mapped_idx = std::make_unique<MappedFile>(idx);
  } catch (const std::exception& e) {
    return fail(e.what(), idx, -1);
  }
  const uint8_t* d = mapped_idx->data();
  const uint64_t size = mapped_idx->size();
  if (size < kHeaderBytes)
    return fail("index is " + std::to_string(size) + " bytes, shorter than the 34-byte header", idx, 0);
  if (std::memcmp(d, kMagic, 9) != 0) return fail("bad magic (expected MMIDIDX\\0\\0)", idx, 0);
  uint64_t version;
  std::memcpy(&version, d + 9, 8);
  if (version != kVersion) return fail("unsupported version " + std::to_string(version) + " (expected 1)", idx, 9);
  const int code = d[17];
  report.dtype_code = code;
  const int item = itemsize(code);
  if (item == 0) return fail("unknown dtype code " + std::to_string(code), idx, 17);
  uint64_t n, dcount;
  std::memcpy(&n, d + 18, 8);
  std::memcpy(&dcount, d + 26, 8);
  report.num_sequences = n;
  if (n > size || dcount > size)
    return fail("sequence count " + std::to_string(n) + " or document index length " + std::to_string(dcount) +
                " is larger than the file", idx, 18);
  const uint64_t plain = kHeaderBytes + 12 * n + 8 * dcount;
  if (size == plain + n && n > 0) {
    report.multimodal = true;
  } else if (size != plain) {
    return fail("index is " + std::to_string(size) + " bytes but N=" + std::to_string(n) + ", D=" +
                std::to_string(dcount) + " need 34 + 12N + 8D = " + std::to_string(plain), idx, 18);
  }
  IndexView view(prefix);  // the header checks above make this succeed
  const int64_t lengths_at = kHeaderBytes, pointers_at = kHeaderBytes + 4 * n, docs_at = kHeaderBytes + 12 * n;

  uint64_t total = 0;
  for (uint64_t i = 0; i < n; ++i) {
    const int64_t len = view.length(i);
    if (len < 0)
      return fail("length of sequence " + std::to_string(i) + " is negative (" + std::to_string(len) + ")", idx,
                  lengths_at + 4 * i);
    const int64_t expected = (i == 0) ? 0 : view.pointer(i - 1) + int64_t{view.length(i - 1)} * item;
    const int64_t ptr = view.pointer(i);
    if (i == 0 && ptr != 0) return fail("first pointer is " + std::to_string(ptr) + ", not 0", idx, pointers_at);
    if (i > 0 && ptr < view.pointer(i - 1))
      return fail("pointers are not monotone: pointer " + std::to_string(i) + " (" + std::to_string(ptr) +
                  ") is below pointer " + std::to_string(i - 1), idx, pointers_at + 8 * i);
    if (ptr != expected)
      return fail("pointer " + std::to_string(i) + " is " + std::to_string(ptr) + " but the length of sequence " +
                  std::to_string(i - 1) + " puts it at " + std::to_string(expected), idx, pointers_at + 8 * i);
    total += static_cast<uint64_t>(len);
  }
  report.num_tokens = total;

  if (dcount == 0) return fail("document index is empty (it must hold at least [0])", idx, docs_at);
  if (view.document_index(0) != 0)
    return fail("document index starts at " + std::to_string(view.document_index(0)) + ", not 0", idx, docs_at);
  for (uint64_t j = 1; j < dcount; ++j) {
    if (view.document_index(j) < view.document_index(j - 1))
      return fail("document index decreases at entry " + std::to_string(j), idx, docs_at + 8 * j);
    if (view.document_index(j) > static_cast<int64_t>(n))
      return fail("document index entry " + std::to_string(j) + " (" + std::to_string(view.document_index(j)) +
                  ") is beyond the sequence count " + std::to_string(n), idx, docs_at + 8 * j);
  }
  if (view.document_index(dcount - 1) != static_cast<int64_t>(n))
    return fail("document index ends at " + std::to_string(view.document_index(dcount - 1)) +
                ", not at the sequence count " + std::to_string(n), idx, docs_at + 8 * (dcount - 1));
  report.num_documents = dcount - 1;

  const int64_t bin_size = file_size(bin);
  const int64_t need = static_cast<int64_t>(total) * item;
  if (bin_size < need)
    return fail("data file is truncated: " + std::to_string(bin_size) + " bytes, the index needs " +
                std::to_string(need), bin, bin_size);
  if (bin_size > need)
    return fail("data file has " + std::to_string(bin_size - need) + " bytes beyond the " + std::to_string(need) +
                " its index describes", bin, need);

  if (vocab_size > 0 && total > 0) {
    std::unique_ptr<MappedFile> mapped_bin;
    try {
      mapped_bin = std::make_unique<MappedFile>(bin);
    } catch (const std::exception& e) {
      return fail(e.what(), bin, -1);
    }
    int64_t max_token = -1;
    const uint64_t bad = scan(code, mapped_bin->data(), total, vocab_size, &max_token);
    if (bad < total) {
      const int64_t byte = static_cast<int64_t>(bad) * item;
      // The sequence holding it: last pointer <= byte (sequences of length 0 share pointers).
      uint64_t lo = 0, hi = n;
      while (hi - lo > 1) {
        uint64_t mid = (lo + hi) / 2;
        if (view.pointer(mid) <= byte) lo = mid; else hi = mid;
      }
      while (lo + 1 < n && view.pointer(lo + 1) <= byte) ++lo;
      return fail("token id " + std::to_string(token_value(code, mapped_bin->data() + byte)) + " in sequence " +
                  std::to_string(lo) + " is outside the vocabulary [0, " + std::to_string(vocab_size) + ")",
                  bin, byte);
    }
    report.max_token = max_token;
  }
  report.ok = true;
  return report;
}

}  // namespace soda
