// Python bindings: megatron_soda._C. The Python API in megatron_soda/data wraps these.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include "format.h"
#include "packer.h"
#include "validator.h"
#include "writer.h"

namespace py = pybind11;
using namespace soda;

namespace {

constexpr size_t kDefaultBuffer = size_t{16} << 20;

// Hands a vector to numpy without copying.
py::array_t<int64_t> to_numpy(std::vector<int64_t>&& v) {
  auto* owned = new std::vector<int64_t>(std::move(v));
  py::capsule free_when_done(owned, [](void* p) { delete static_cast<std::vector<int64_t>*>(p); });
  return py::array_t<int64_t>({owned->size()}, {sizeof(int64_t)}, owned->data(), free_when_done);
}

using Int64Array = py::array_t<int64_t, py::array::c_style | py::array::forcecast>;

py::dict plan_to_dict(PackingPlan&& plan) {
  py::dict out;
  out["row_length"] = plan.row_length;
  out["num_tokens"] = plan.num_tokens;
  out["num_empty_documents"] = plan.num_empty_documents;
  out["row_offsets"] = to_numpy(std::move(plan.row_offsets));
  out["piece_document"] = to_numpy(std::move(plan.piece_document));
  out["piece_start"] = to_numpy(std::move(plan.piece_start));
  out["piece_length"] = to_numpy(std::move(plan.piece_length));
  out["split_documents"] = to_numpy(std::move(plan.split_documents));
  return out;
}

void add_documents(DatasetWriter& w, const py::array& tokens, const Int64Array& lengths,
                   const std::optional<Int64Array>& sequences_per_document) {
  if (tokens.ndim() != 1) throw std::invalid_argument("tokens must be a 1-D array");
  if (!(tokens.flags() & py::array::c_style)) throw std::invalid_argument("tokens must be C-contiguous");
  if (lengths.ndim() != 1) throw std::invalid_argument("lengths must be a 1-D array");
  TokenArrayType type{tokens.dtype().kind(), static_cast<int>(tokens.itemsize())};
  const int64_t* spd = sequences_per_document ? sequences_per_document->data() : nullptr;
  const size_t ndocs = sequences_per_document ? sequences_per_document->size() : 0;
  py::gil_scoped_release release;
  w.add_documents(tokens.data(), type, tokens.size(), lengths.data(), lengths.size(), spd, ndocs);
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "C++ core of megatron_soda: IndexedDataset writer, merger, validator and sequence packer.";

  py::register_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const OsError& e) {
      // OSError(errno, message, filename) becomes FileExistsError, FileNotFoundError, ...
      py::object err = py::reinterpret_borrow<py::object>(PyExc_OSError)(e.err, std::string(e.what()), e.path);
      PyErr_SetObject(PyExc_OSError, err.ptr());
    }
  });

  py::class_<DatasetWriter>(m, "DatasetWriter")
      .def(py::init<const std::string&, int, int64_t, bool, size_t>(), py::arg("prefix"), py::arg("dtype_code"),
           py::arg("vocab_size"), py::arg("overwrite") = false, py::arg("buffer_bytes") = kDefaultBuffer)
      .def("add_documents", &add_documents, py::arg("tokens"), py::arg("lengths"),
           py::arg("sequences_per_document") = py::none())
      .def("append_dataset", &DatasetWriter::append_dataset, py::arg("prefix"),
           py::call_guard<py::gil_scoped_release>())
      .def("finalize", &DatasetWriter::finalize, py::call_guard<py::gil_scoped_release>())
      .def("abort", &DatasetWriter::abort)
      .def_property_readonly("dtype_code", &DatasetWriter::dtype_code)
      .def_property_readonly("vocab_size", &DatasetWriter::vocab_size)
      .def_property_readonly("num_sequences", &DatasetWriter::num_sequences)
      .def_property_readonly("num_documents", &DatasetWriter::num_documents)
      .def_property_readonly("num_tokens", &DatasetWriter::num_tokens)
      .def_property_readonly("finalized", &DatasetWriter::finalized);

  m.def("dtype_capacity", &dtype_capacity, py::arg("dtype_code"),
        "Largest token id + 1 that an integer dtype code can hold.");

  py::class_<ValidationReport>(m, "ValidationReport")
      .def_readonly("ok", &ValidationReport::ok)
      .def_readonly("error", &ValidationReport::error)
      .def_readonly("file", &ValidationReport::file)
      .def_readonly("offset", &ValidationReport::offset)
      .def_readonly("dtype_code", &ValidationReport::dtype_code)
      .def_readonly("num_sequences", &ValidationReport::num_sequences)
      .def_readonly("num_documents", &ValidationReport::num_documents)
      .def_readonly("num_tokens", &ValidationReport::num_tokens)
      .def_readonly("max_token", &ValidationReport::max_token)
      .def_readonly("multimodal", &ValidationReport::multimodal);
  m.def("validate_dataset", &validate_dataset, py::arg("prefix"), py::arg("vocab_size") = 0,
        py::call_guard<py::gil_scoped_release>());

  m.def(
      "plan_packing",
      [](const Int64Array& lengths, int64_t row_length, uint64_t seed) {
        if (lengths.ndim() != 1) throw std::invalid_argument("lengths must be a 1-D array");
        PackingPlan plan;
        {
          py::gil_scoped_release release;
          plan = plan_packing(lengths.data(), lengths.size(), row_length, seed);
        }
        return plan_to_dict(std::move(plan));
      },
      py::arg("lengths"), py::arg("row_length"), py::arg("seed") = 0);
  m.def(
      "pack_dataset",
      [](const std::string& source, const std::string& output, int64_t row_length, uint64_t seed, bool overwrite,
         size_t buffer_bytes) {
        PackingPlan plan;
        {
          py::gil_scoped_release release;
          plan = pack_dataset(source, output, row_length, seed, overwrite, buffer_bytes);
        }
        return plan_to_dict(std::move(plan));
      },
      py::arg("source"), py::arg("output"), py::arg("row_length"), py::arg("seed") = 0, py::arg("overwrite") = false,
      py::arg("buffer_bytes") = kDefaultBuffer);
}
