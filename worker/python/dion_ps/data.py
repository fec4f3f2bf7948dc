"""How a training set is split across workers and visited epoch by epoch: the C++ code
dion-worker runs (worker/train/partition.h, worker/train/epoch_order.h), so that a Python
worker trains on exactly the samples, in exactly the order, a C++ worker with the same flags
would (docs/python.md, "Partitions").

    parts = dion_ps.partition(labels, num_workers=4, kind="dirichlet", alpha=0.1, seed=1)
    mine = parts[worker_index]
    per_epoch = dion_ps.samples_per_epoch(len(mine), len(labels), 4, synchronous=False)
    order = dion_ps.EpochOrder(len(mine), per_epoch, seed)
    for epoch in range(epochs):
        positions = order.next()          # indices into `mine`
"""
import numpy as np

from dion_ps import _dion_ps


def partition(labels, num_workers, kind="iid", alpha=0.5, seed=1, num_classes=None,
              min_samples_per_worker=0):
    """Every worker's sample indices (a list of num_workers ascending int64 arrays) for the
    class labels `labels` (integers in [0, num_classes); num_classes defaults to max + 1).

    kind "iid": a seeded shuffle cut into near-equal parts; "dirichlet": per class,
    Dirichlet(alpha) proportions over the workers (smaller alpha, more label skew). `seed` is
    dion-worker's --model_seed. Bad arguments raise dion_ps.InvalidArgumentError."""
    labels = np.ascontiguousarray(np.asarray(labels).reshape(-1), dtype=np.int32)
    if num_classes is None:
        num_classes = int(labels.max()) + 1 if len(labels) else 1
    return _dion_ps._partition(labels, num_classes, num_workers, kind, alpha, seed,
                               min_samples_per_worker)


def samples_per_epoch(partition_size, total, num_workers, synchronous):
    """Samples of a worker's epoch: its partition's size, or under synchronous training
    total // num_workers on every worker (every worker then takes the same number of steps)."""
    return _dion_ps._samples_per_epoch(partition_size, total, num_workers, synchronous)


class EpochOrder:
    """The positions (into a partition of partition_size samples) of each epoch in turn:
    consecutive slices of samples_per_epoch from an endless stream of reshuffled passes."""

    def __init__(self, partition_size, samples_per_epoch, seed):
        self._order = _dion_ps._EpochOrder(partition_size, samples_per_epoch, seed)

    def next(self):
        """The next epoch's positions, an int64 array of samples_per_epoch entries."""
        return self._order.next()
