// How the binding turns a non-OK absl::Status into a Python exception: the class
// dion_ps.errors.from_status picks for its code, with the C++ message unchanged.
//
// Thread-safety: REQUIRES the GIL.
#ifndef DION_WORKER_PYTHON_RAISE_STATUS_H_
#define DION_WORKER_PYTHON_RAISE_STATUS_H_

#include <pybind11/pybind11.h>

#include <string>

#include "absl/status/status.h"

namespace dion {

[[noreturn]] inline void RaiseStatus(const absl::Status& status) {
  namespace py = pybind11;
  py::object error = py::module_::import("dion_ps.errors")
                         .attr("from_status")(static_cast<int>(status.code()),
                                              absl::StatusCodeToString(status.code()),
                                              std::string(status.message()));
  PyErr_SetObject(reinterpret_cast<PyObject*>(Py_TYPE(error.ptr())), error.ptr());
  throw py::error_already_set();
}

}  // namespace dion

#endif  // DION_WORKER_PYTHON_RAISE_STATUS_H_
