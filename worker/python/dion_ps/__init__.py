"""dion_ps: train a PyTorch model on the dion-ps shards (docs/python.md).

    opt = dion_ps.RemoteOptimizer(model.named_parameters(),
                                  shards=["127.0.0.1:7000", "127.0.0.1:7001"],
                                  worker_id="w0", batch_size=128)
    loss.backward(); opt.step(loss=loss); opt.zero_grad()
"""
from dion_ps.data import EpochOrder, partition, samples_per_epoch
from dion_ps.errors import (DataLossError, DeadlineExceededError, DionError,
                            FailedPreconditionError, InvalidArgumentError,
                            PermissionDeniedError, UnauthenticatedError, UnavailableError)
from dion_ps.optimizer import (DEFAULT_SPLIT_THRESHOLD, RemoteOptimizer, as_matrix,
                               parameter_table)
from dion_ps.progress import ProgressReporter

__all__ = [
    "RemoteOptimizer", "ProgressReporter", "parameter_table", "as_matrix", "partition",
    "DEFAULT_SPLIT_THRESHOLD",
    "samples_per_epoch", "EpochOrder", "DionError",
    "InvalidArgumentError", "DeadlineExceededError", "FailedPreconditionError",
    "UnavailableError", "PermissionDeniedError", "UnauthenticatedError", "DataLossError",
]
