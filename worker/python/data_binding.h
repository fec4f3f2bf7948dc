// The data side of dion_ps._dion_ps: the partition of a training set across workers
// (worker/train/partition.h) and the per-worker epoch order and size (worker/train/
// epoch_order.h), so that Python workers split and visit the data exactly as dion-worker does.
//
// Thread-safety: BindData runs once, at import; the bound functions are stateless and an
// _EpochOrder is used from one thread.
#ifndef DION_WORKER_PYTHON_DATA_BINDING_H_
#define DION_WORKER_PYTHON_DATA_BINDING_H_

#include <pybind11/pybind11.h>

namespace dion {

// Adds _partition, _samples_per_epoch and _EpochOrder to `m`.
void BindData(pybind11::module_& m);

}  // namespace dion

#endif  // DION_WORKER_PYTHON_DATA_BINDING_H_
