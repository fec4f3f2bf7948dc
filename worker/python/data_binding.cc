#include "worker/python/data_binding.h"

#include <pybind11/numpy.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <string>
#include <vector>

#include "absl/types/span.h"
#include "worker/python/raise_status.h"
#include "worker/train/epoch_order.h"
#include "worker/train/partition.h"

namespace dion {
namespace {

namespace py = pybind11;

template <typename T>
T ValueOrRaise(absl::StatusOr<T> value) {
  if (!value.ok()) RaiseStatus(value.status());
  return *std::move(value);
}

py::array_t<int64_t> ToNumpy(const std::vector<int64_t>& v) {
  py::array_t<int64_t> out(static_cast<py::ssize_t>(v.size()));
  std::copy(v.begin(), v.end(), out.mutable_data());
  return out;
}

// Every worker's part (PartitionAll), as int64 arrays of sample indices, ascending.
std::vector<py::array_t<int64_t>> Partition(
    const py::array_t<int, py::array::c_style | py::array::forcecast>& labels, int num_classes,
    int num_workers, const std::string& kind, double alpha, uint64_t seed,
    int64_t min_samples_per_worker) {
  if (labels.ndim() != 1) {
    throw py::value_error("partition: labels must be a 1-D array of class indices");
  }
  PartitionOptions options;
  options.kind = ValueOrRaise(ParsePartitionKind(kind));
  options.alpha = alpha;
  options.seed = seed;
  options.min_samples_per_worker = min_samples_per_worker;
  // Milliseconds for a data set of Fashion-MNIST's size: not worth releasing the GIL.
  const std::vector<std::vector<int64_t>> parts = ValueOrRaise(PartitionAll(
      absl::Span<const int>(labels.data(), static_cast<size_t>(labels.size())), num_classes,
      num_workers, options));
  std::vector<py::array_t<int64_t>> out;
  out.reserve(parts.size());
  for (const std::vector<int64_t>& part : parts) out.push_back(ToNumpy(part));
  return out;
}

}  // namespace

void BindData(py::module_& m) {
  m.def("_partition", &Partition, py::arg("labels"), py::arg("num_classes"),
        py::arg("num_workers"), py::arg("kind"), py::arg("alpha"), py::arg("seed"),
        py::arg("min_samples_per_worker") = 0);
  m.def(
      "_samples_per_epoch",
      [](int64_t partition_size, int64_t total, int num_workers, bool synchronous) {
        return ValueOrRaise(SamplesPerEpoch(partition_size, total, num_workers, synchronous));
      },
      py::arg("partition_size"), py::arg("total"), py::arg("num_workers"),
      py::arg("synchronous"));
  py::class_<EpochOrder>(m, "_EpochOrder")
      .def(py::init([](int64_t partition_size, int64_t samples_per_epoch, uint64_t seed) {
             return ValueOrRaise(EpochOrder::Create(partition_size, samples_per_epoch, seed));
           }),
           py::arg("partition_size"), py::arg("samples_per_epoch"), py::arg("seed"))
      .def("next", [](EpochOrder& order) { return ToNumpy(order.Next()); });
}

}  // namespace dion
