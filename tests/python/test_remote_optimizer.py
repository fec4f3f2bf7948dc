"""dion_ps.RemoteOptimizer against real dion-server shards (docs/python.md): training through
two shards leaves the torch weights equal to what the shards hold; conv kernels travel as
(out, in*kh*kw) and come back in their shape; a push the shard refuses is restored, so what the
shards applied plus what is left equals every gradient submitted; a mismatched model is refused
with the shard's message; waits release the GIL and Ctrl-C interrupts them."""
import copy
import math
import signal
import threading
import time

import numpy as np
import pytest
import torch
from torch import nn

from conftest import Shard, assert_replica_equals_a_fresh_pull, train_steps

import dion_ps


class TinyCnn(nn.Module):
    def __init__(self, classes=3):
        super().__init__()
        self.conv = nn.Conv2d(2, 4, 3)           # (4, 2, 3, 3): travels as 4 x 18
        self.fc = nn.Linear(4 * 4 * 4, classes)  # 64 -> classes

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).flatten(1))


CNN_INPUT = (2, 6, 6)  # one sample: 2 channels of 6 x 6


def tiny_model(seed=0, classes=3):
    torch.manual_seed(seed)
    return TinyCnn(classes)


def test_conv_kernel_travels_as_a_matrix_and_comes_back_in_its_shape(two_shards):
    model = tiny_model()
    kernel = model.conv.weight.detach().clone()
    assert dion_ps.as_matrix(model.conv.weight) == (4, 18)
    assert dion_ps.as_matrix(model.conv.bias) == (1, 4)
    names, _, entries = dion_ps.parameter_table(model.named_parameters())
    table = dict(zip(names, entries))
    assert table["conv.weight"]["shape"] == [4, 18]
    assert table["conv.weight"]["optimizer"] == "dion"
    assert table["conv.bias"]["optimizer"] == "adamw"
    # Row i of the matrix is output channel i, its (in, kh, kw) entries in row-major order.
    np.testing.assert_array_equal(table["conv.weight"]["initial_value"][1].reshape(2, 3, 3),
                                  kernel[1].numpy())
    with dion_ps.RemoteOptimizer(model.named_parameters(), shards=two_shards, worker_id="rt",
                                 model_name="round-trip", batch_size=8) as opt:
        with torch.no_grad():
            model.conv.weight.zero_()
        opt.refresh()  # the registered value, back from a shard through 4 x 18
    assert model.conv.weight.shape == (4, 2, 3, 3)
    assert torch.equal(model.conv.weight, kernel)


def test_training_through_two_shards_leaves_the_pulled_weights_in_the_model(two_shards):
    model = tiny_model()
    initial = copy.deepcopy(model)
    table = dict(model_name="train", batch_size=8, rank_fraction=0.5, lr=0.05, adamw_lr=0.01)
    opt = dion_ps.RemoteOptimizer(model.named_parameters(), shards=two_shards, worker_id="w0",
                                  **table)
    train_steps(model, opt, 12, CNN_INPUT)
    opt.flush(timeout=20)
    assert opt.stats()["accepted"] > 0 and opt.stats()["refused"] == 0
    # Accepted pushes are applied when their batch closes (50 ms at the latest).
    opt.wait_for_versions_above([0] * len(opt.names), timeout=20)
    assert_replica_equals_a_fresh_pull(opt, model, initial, two_shards, table)
    opt.close()


def test_mismatched_model_is_refused_with_the_shards_message(two_shards):
    with dion_ps.RemoteOptimizer(tiny_model().named_parameters(), shards=two_shards,
                                 worker_id="a", model_name="mismatch", batch_size=8):
        with pytest.raises(dion_ps.FailedPreconditionError) as refused:
            dion_ps.RemoteOptimizer(tiny_model(classes=5).named_parameters(),
                                    shards=two_shards, worker_id="b", model_name="mismatch",
                                    batch_size=8)
    message = str(refused.value)
    assert "fc.weight" in message and "shape" in message, message
    assert refused.value.code_name == "FAILED_PRECONDITION"
    with pytest.raises(ValueError, match="float32"):
        dion_ps.RemoteOptimizer(tiny_model().double().named_parameters(), shards=two_shards,
                                worker_id="c", model_name="mismatch-f64", batch_size=8)


def test_non_finite_gradient_is_refused_and_nothing_is_pushed(two_shards):
    model = tiny_model()
    with dion_ps.RemoteOptimizer(model.named_parameters(), shards=two_shards, worker_id="nan",
                                 model_name="nan", batch_size=8) as opt:
        for p in model.parameters():
            p.grad = torch.zeros_like(p)
        model.fc.bias.grad[1] = math.nan
        with pytest.raises(dion_ps.InvalidArgumentError, match="fc.bias.*NaN"):
            opt.step()
        assert opt.stats()["local_steps"] == 0


def test_refused_push_is_restored_and_nothing_is_lost(one_shard, tmp_path):
    model = tiny_model()
    opt = dion_ps.RemoteOptimizer(model.named_parameters(), shards=[one_shard.address],
                                  worker_id="w0", model_name="restore", rank_fraction=0.5,
                                  compression_rank_fraction=0.25, give_up_after=30,
                                  record_acknowledged=True)
    rng = np.random.default_rng(5)
    total = {n: np.zeros(dion_ps.as_matrix(p)) for n, p in model.named_parameters()}

    def submit(steps):
        for _ in range(steps):
            samples = int(rng.integers(4, 12))
            for name, p in model.named_parameters():
                g = rng.normal(0, 0.1, size=tuple(p.shape)).astype(np.float32)
                p.grad = torch.from_numpy(g)
                total[name] += g.reshape(total[name].shape).astype(np.float64) * samples
            opt.step(samples=samples, loss=1.0)

    submit(4)
    opt.flush(timeout=20)
    opt.wait_for_versions_above([0] * len(opt.names), timeout=20)  # later bases are >= 1
    # Freeze the shard with pushes in flight, then replace it by a fresh one on the same port:
    # the pushes go out again with base versions the new shard never had and are refused as
    # not applied (OUT_OF_RANGE); the client restores them and sends them once more.
    one_shard.send(signal.SIGSTOP)
    submit(3)
    address = one_shard.address
    one_shard.stop(signal.SIGKILL)
    port = int(address.rsplit(":", 1)[1])
    restarted = Shard(tmp_path / "restarted", port=port)
    try:
        submit(3)
        opt.flush(timeout=30)
        stats = opt.stats()
        assert stats["refused"] >= 1, stats
        assert opt._client.restored() == stats["refused"]
        opt.close()  # no acknowledgement after this
        for name in opt.names:
            accounted = opt.settled(name) + opt.outstanding(name)
            error = np.linalg.norm(accounted - total[name]) / np.linalg.norm(total[name])
            # float32 sums of ~10 steps of O(0.1 * 10) entries: 1e-5 relative is ~10x margin.
            assert error < 1e-5, (name, error)
    finally:
        opt.close()
        restarted.stop(signal.SIGKILL)


def test_waits_release_the_gil_and_ctrl_c_interrupts_them(one_shard):
    model = tiny_model()
    opt = dion_ps.RemoteOptimizer(model.named_parameters(), shards=[one_shard.address],
                                  worker_id="w0", model_name="gil", batch_size=8)
    one_shard.send(signal.SIGSTOP)  # acknowledgements stop: flush has to wait
    train_steps(model, opt, 1, CNN_INPUT)
    counts = []
    stop = threading.Event()

    def spin():
        n = 0
        while not stop.is_set():
            n += 1
            if n % 1000 == 0:
                counts.append(time.monotonic())

    spinner = threading.Thread(target=spin)
    spinner.start()
    try:
        started = time.monotonic()
        with pytest.raises(dion_ps.DeadlineExceededError):
            opt.flush(timeout=1.5)
        waited = time.monotonic() - started
        during = [t for t in counts if started <= t <= started + waited]
    finally:
        stop.set()
        spinner.join()
    assert waited >= 1.4
    # The spinner ran throughout the wait, not only between the binding's 100 ms slices (with
    # the GIL held in them it would progress in at most ~1 of every 5 bins of 20 ms).
    bins = {int((t - started) / 0.02) for t in during}
    assert len(bins) > 0.5 * waited / 0.02, (len(bins), waited)
    # Ctrl-C during a long wait raises KeyboardInterrupt within a slice.
    threading.Timer(0.3, lambda: signal.raise_signal(signal.SIGINT)).start()
    started = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        opt.flush(timeout=30)
    assert time.monotonic() - started < 2.0
    one_shard.send(signal.SIGCONT)
    opt.flush(timeout=20)
    opt.close()


def test_progress_line_is_the_one_dion_local_parses():
    fields = {"worker": 2, "epoch": 3, "steps": 10, "samples": 640, "elapsed_s": 1.5,
              "samples_per_s": 426.7, "loss": 0.5, "accepted": 7, "staleness_hist": [1, 2, 3],
              "test_loss": 0.4, "test_accuracy": 0.875, "eval_elapsed_s": 1.25}
    line = dion_ps.progress.format_progress_line(fields)
    assert line.startswith("progress worker=2 epoch=3 steps=10 samples=640 ")
    parsed = dion_ps.progress.parse_progress_line(line)
    assert parsed["test_accuracy"] == 0.875 and parsed["staleness_hist"] == [1, 2, 3]
    with pytest.raises(dion_ps.InvalidArgumentError, match="steps"):
        dion_ps.progress.parse_progress_line("progress worker=1 epoch=1")
