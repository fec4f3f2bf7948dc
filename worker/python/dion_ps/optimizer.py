"""RemoteOptimizer: a torch.optim-shaped front of the dion-ps client library (docs/python.md).

The shards hold the weights and the optimizer state; this object hands each step's gradients
to the C++ client (which compresses the Dion matrices with error feedback and pushes) and
writes the weights of the client's replica back into the torch parameters, in place.

Thread-safety: step, flush and close from one training thread; versions and stats from any.
"""
import math
import numbers
from collections.abc import Mapping

import numpy as np
import torch

from dion_ps import _dion_ps

SCALAR_OPTIMIZERS = ("adamw", "lion")
# dion-worker's --split_threshold default (common/training_defaults.h): 2048 x 2048 elements.
DEFAULT_SPLIT_THRESHOLD = _dion_ps.DEFAULT_SPLIT_THRESHOLD


def as_matrix(tensor):
    """The (rows, cols) a tensor travels as: a conv kernel (out, in, kh, kw) as
    (out, in*kh*kw), any tensor of 2 or more dimensions as (shape[0], the rest), a vector (n,)
    as (1, n), a scalar as (1, 1)."""
    shape = tuple(tensor.shape)
    if len(shape) == 0:
        return 1, 1
    if len(shape) == 1:
        return 1, shape[0]
    return shape[0], math.prod(shape[1:])


def _matches(name, patterns):
    return any(name == p or name.startswith(p + ".") for p in patterns)


def parameter_table(named_parameters, *, rank_fraction=0.25, lr=0.01, adamw_lr=0.001,
                    scalar_optimizer="adamw", momentum=0.95, weight_decay=0.0,
                    betas=(0.9, 0.95), eps=1e-8, scalar_params=(), num_shards=1,
                    split_threshold=DEFAULT_SPLIT_THRESHOLD, split_owners=None):
    """The table the shards register, as microsoft/dion groups parameters: Dion for every
    matrix and conv kernel (2 or more dimensions), `scalar_optimizer` (AdamW or Lion, learning
    rate adamw_lr) for vectors and scalars and for the parameters named in `scalar_params`
    (exact names or module prefixes: microsoft/dion puts embeddings and the output layer
    there). Each entry carries the tensor's current value as the exact initial value.

    Split parameters (docs/python.md): over `num_shards` shards, a Dion matrix with at least
    `split_threshold` elements is split by rows of its tall side over all of them, as
    dion-worker --split_threshold does (0: never); `split_owners` ({name: k}) overrides that
    per parameter (k >= 2: over min(k, num_shards) shards; 0 or 1: whole). Each entry's
    "split_owners" says what was chosen (0: whole).

    Returns (names, tensors, entries). ValueError for a tensor that is not float32 on the CPU,
    an unknown scalar optimizer, or a bad num_shards, split_threshold or split_owners."""
    if scalar_optimizer not in SCALAR_OPTIMIZERS:
        raise ValueError(f"scalar_optimizer must be one of {SCALAR_OPTIMIZERS}, "
                         f"got {scalar_optimizer!r}")
    if not _is_int(num_shards) or num_shards < 1:
        raise ValueError(f"num_shards must be an integer >= 1, got {num_shards!r}")
    if not _is_int(split_threshold) or split_threshold < 0:
        raise ValueError("split_threshold must be an integer >= 0 (elements; 0: never split), "
                         f"got {split_threshold!r}")
    overrides = _split_overrides(split_owners)
    names, tensors, entries = [], [], []
    for name, p in named_parameters:
        if p.dtype != torch.float32 or p.device.type != "cpu":
            raise ValueError(f"parameter {name!r} is {p.dtype} on {p.device}; dion_ps trains "
                             "float32 parameters on the CPU")
        rows, cols = as_matrix(p)
        dion = p.dim() >= 2 and not _matches(name, scalar_params)
        optimizer = "dion" if dion else scalar_optimizer
        entry = {
            "name": name,
            "shape": [rows, cols] if dion or p.dim() >= 2 else [cols],
            "optimizer": optimizer,
            "lr": lr if dion else adamw_lr,
            "weight_decay": weight_decay,
            "mu": momentum,
            "rank_fraction": rank_fraction,
            "beta1": betas[0],
            "beta2": betas[1],
            "eps": eps,
            "split_owners": _split_owners(name, optimizer, rows, cols, num_shards,
                                          split_threshold, overrides),
            "initial_value": np.ascontiguousarray(
                p.detach().reshape(rows, cols).numpy(), dtype=np.float32),
        }
        names.append(name)
        tensors.append(p)
        entries.append(entry)
    if not entries:
        raise ValueError("the model has no parameters")
    unknown = sorted(set(overrides) - set(names))
    if unknown:
        raise ValueError(f"split_owners names {unknown}, which are not parameters of the model "
                         f"(its parameters: {names})")
    return names, tensors, entries


def _is_int(value):
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _split_overrides(split_owners):
    """split_owners ({name: k}) checked: k an integer in [0, MAX_SPLIT_OWNERS]."""
    if split_owners is None:
        return {}
    if not isinstance(split_owners, Mapping):
        raise ValueError("split_owners must be a dict {parameter name: number of shards}, "
                         f"got {type(split_owners).__name__}")
    limit = _dion_ps.MAX_SPLIT_OWNERS
    for name, k in split_owners.items():
        if not _is_int(k) or not 0 <= k <= limit:
            raise ValueError(f"split_owners[{name!r}] must be an integer in [0, {limit}] "
                             f"(0 or 1: whole), got {k!r}")
    return dict(split_owners)


def _split_owners(name, optimizer, rows, cols, num_shards, split_threshold, overrides):
    """The entry's split_owners: its override, else what --split_threshold gives a Dion
    matrix (dion-worker's rule, through the extension); 0 for a whole parameter."""
    if name not in overrides:
        if optimizer != "dion":
            return 0
        return _dion_ps.split_owners(rows, cols, split_threshold, num_shards)
    k = int(overrides[name])
    if k <= 1:
        return 0
    if optimizer != "dion":
        raise ValueError(f"split_owners[{name!r}] = {k}: only Dion matrices are split, "
                         f"and {name!r} trains with {optimizer}")
    owners, tall = min(k, num_shards), max(rows, cols)
    if owners > tall:
        raise ValueError(f"split_owners[{name!r}] = {k}: {name!r} ({rows} x {cols}) "
                         f"cannot be split over {owners} shards: its tall side has {tall} rows, "
                         "expected at least one per shard")
    return k


class RemoteOptimizer:
    """Trains `named_parameters` (e.g. model.named_parameters()) on the shards at `shards`
    (host:port, in shard-index order) as worker `worker_id`:

        opt = RemoteOptimizer(model.named_parameters(), shards=[...], worker_id="w0",
                              batch_size=128)
        for x, y in loader:
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            opt.step(loss=loss)       # push the gradients, load the replica's weights
            opt.zero_grad()
        opt.close()                   # or: with RemoteOptimizer(...) as opt: ...

    The first worker registers the parameter table (parameter_table says how parameters are
    grouped) with the tensors' current values as initial weights; every other worker must
    offer an equal table, values included (seed the model the same way on every worker), or
    the constructor raises FailedPreconditionError naming the first difference. Learning
    rates and the other hyper-parameters belong to the table: the shards apply them.

    compression_rank_fraction (default: rank_fraction) sets the rank of the pushed factors;
    lookahead k > 0 loads the replica extrapolated k versions ahead (staleness compensation,
    docs/algorithm.md); synchronous=True makes each step wait until every parameter has a newer
    version. tls_ca_file, tls_cert_file, tls_key_file, tls_server_name and token_file are the
    client's TLS and token (the flags of dion-worker). split_threshold (elements, default
    dion-worker's 4194304; 0: never) and split_owners ({name: k}) split large Dion matrices by
    rows over the shards, which then need --peer_addresses (parameter_table); split_over maps
    each split parameter to its number of shards. record_acknowledged keeps, per parameter,
    the sum of what the shards settled (settled()), for tests.
    """

    def __init__(self, named_parameters, shards, worker_id, *, batch_size=None,
                 rank_fraction=0.25, compression_rank_fraction=None, lr=0.01, adamw_lr=0.001,
                 scalar_optimizer="adamw", momentum=0.95, weight_decay=0.0, betas=(0.9, 0.95),
                 eps=1e-8, scalar_params=(), split_threshold=DEFAULT_SPLIT_THRESHOLD,
                 split_owners=None, model_name="torch-model", max_in_flight=2,
                 lookahead=0.0, synchronous=False, sync_timeout=60.0, tls_ca_file=None,
                 tls_cert_file=None, tls_key_file=None, tls_server_name=None, token_file=None,
                 rpc_deadline=10.0, give_up_after=60.0, seed=1, dp_clip=0.0,
                 record_acknowledged=False):
        if isinstance(shards, str):
            shards = [s for s in shards.split(",") if s]
        if not shards:
            raise ValueError("shards: expected at least one host:port")
        if batch_size is not None and batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if not 0 <= lookahead <= 100:
            raise ValueError(f"lookahead must be in [0, 100], got {lookahead}")
        self.names, self._tensors, entries = parameter_table(
            named_parameters, rank_fraction=rank_fraction, lr=lr, adamw_lr=adamw_lr,
            scalar_optimizer=scalar_optimizer, momentum=momentum, weight_decay=weight_decay,
            betas=betas, eps=eps, scalar_params=scalar_params, num_shards=len(shards),
            split_threshold=split_threshold, split_owners=split_owners)
        self.optimizers = {e["name"]: e["optimizer"] for e in entries}
        # name -> over how many shards it is split, for the split parameters only.
        self.split_over = {e["name"]: min(e["split_owners"], len(shards)) for e in entries
                           if min(e["split_owners"], len(shards)) >= 2}
        self._matrix = [as_matrix(t) for t in self._tensors]
        # Writable numpy views over the tensors' storage: the replica is copied straight in.
        self._weights = []
        for name, t, (rows, cols) in zip(self.names, self._tensors, self._matrix):
            if not t.is_contiguous():
                raise ValueError(f"parameter {name!r} is not contiguous; call "
                                 ".contiguous() on it (or the model) first")
            self._weights.append(t.detach().view(rows, cols).numpy())
        self.batch_size = batch_size
        self.lookahead = float(lookahead)
        self.synchronous = synchronous
        self.sync_timeout = float(sync_timeout)
        self.worker_id = worker_id
        self._zeros = {}
        self.last_submit_seconds = 0.0  # the C++ Client::Submit of the last step
        options = {
            "shards": list(shards), "worker_id": worker_id,
            "compression_rank_fraction": (compression_rank_fraction
                                          if compression_rank_fraction else rank_fraction),
            "max_in_flight": max_in_flight, "lookahead": self.lookahead,
            "rpc_deadline": rpc_deadline, "give_up_after": give_up_after, "seed": seed,
            "dp_clip": dp_clip, "tls_ca_file": tls_ca_file, "tls_cert_file": tls_cert_file,
            "tls_key_file": tls_key_file, "tls_server_name": tls_server_name,
            "token_file": token_file, "record_acknowledged": record_acknowledged,
        }
        self._client = _dion_ps._Client(model_name, entries, options)
        self._closed = False
        self.refresh()

    # ---- the torch.optim surface

    def step(self, closure=None, *, samples=None, loss=None):
        """Pushes the parameters' .grad (a parameter without one contributes zeros) as one
        local step of `samples` samples (default: batch_size) with training loss `loss` (a
        float or a tensor; default: the closure's result, else 0), then loads the replica's
        weights into the parameters. Returns the closure's loss. InvalidArgumentError (nothing
        pushed) for a NaN or Inf gradient; the client's fatal error (UnavailableError after a
        shard stayed down) once there is one."""
        result = None
        if closure is not None:
            with torch.enable_grad():
                result = closure()
        if loss is None:
            loss = result
        samples = samples if samples is not None else self.batch_size
        if samples is None or samples < 1:
            raise ValueError("step needs samples >= 1: pass samples= or set batch_size")
        before = self._client.versions() if self.synchronous else None
        self.last_submit_seconds = self._client.submit(self._gradients(), int(samples),
                                                       _as_float(loss))
        if before is not None:
            self._client.wait_for_versions_above(before, self.sync_timeout)
        self.refresh()
        return result

    def zero_grad(self, set_to_none=True):
        for t in self._tensors:
            if t.grad is None:
                continue
            if set_to_none:
                t.grad = None
            else:
                t.grad.detach_()
                t.grad.zero_()

    def refresh(self, lookahead=None):
        """Loads the replica's weights into the parameters (extrapolated `lookahead` versions
        ahead, default the constructor's; pass 0 to evaluate the weights as they are). Returns
        the sum of the parameters' versions."""
        k = self.lookahead if lookahead is None else float(lookahead)
        return self._client.copy_weights_into(self._weights, k)

    # ---- flushing, state, shutdown

    def flush(self, timeout=30.0):
        """Pushes what is accumulated and waits until every push is acknowledged.
        DeadlineExceededError after `timeout` seconds. Ctrl-C interrupts the wait."""
        self._client.flush(float(timeout))

    def flush_all(self, timeout=5.0):
        """Before exiting: flush, and each Dion matrix's error-feedback residual goes out whole
        too, so nothing accumulated is lost. Returns what was pushed (a dict)."""
        return self._client.flush_all(float(timeout))

    def wait_for_versions_above(self, versions, timeout=30.0):
        """Waits until every parameter's version is above `versions` (a dict by name or a
        list in table order)."""
        if isinstance(versions, dict):
            versions = [versions[n] for n in self.names]
        self._client.wait_for_versions_above(list(versions), float(timeout))

    @property
    def versions(self):
        """The replica's version of each parameter, by name."""
        return dict(zip(self.names, self._client.versions()))

    def stats(self):
        """The client's counters (pushes, accepted, refused, resyncs, bytes, ...)."""
        return self._client.stats()

    def state_dict(self):
        """What a checkpoint of this worker holds: the versions of its weights (the weights
        and the optimizer state live on the shards, which checkpoint them)."""
        return {"worker_id": self.worker_id, "versions": self.versions}

    def outstanding(self, name):
        """For tests: what of `name`'s gradients is neither applied nor in flight (sum units)."""
        return self._client.outstanding(self.names.index(name))

    def settled(self, name):
        """For tests (record_acknowledged=True): the sum of what the shards applied or dropped
        as stale of `name`, in sum units (gradient x samples), in float64."""
        return self._client.settled(self.names.index(name))

    def close(self):
        """Stops the client; accumulated gradients are dropped (flush_all first to keep them).
        Idempotent."""
        if not self._closed:
            self._closed = True
            self._client.close()

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        try:
            if exc_type is None:
                self.flush_all()
        finally:
            self.close()
        return False

    # ---- helpers

    def _gradients(self):
        grads = []
        for name, t, (rows, cols) in zip(self.names, self._tensors, self._matrix):
            g = t.grad
            if g is None:
                if name not in self._zeros:
                    self._zeros[name] = np.zeros((rows, cols), dtype=np.float32)
                grads.append(self._zeros[name])
                continue
            if g.is_sparse or g.dtype != torch.float32:
                raise ValueError(f"gradient of {name!r} must be a dense float32 tensor")
            grads.append(g.detach().reshape(rows, cols).numpy())
        return grads


def _as_float(loss):
    if loss is None:
        return 0.0
    if isinstance(loss, torch.Tensor):
        return float(loss.detach().item())
    return float(loss)
