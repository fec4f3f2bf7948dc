"""Fixtures of the dion_ps tests: dion-server shards as child processes on 127.0.0.1.

The build tree is DION_BUILD_DIR (default: build/ at the repository root); its python/
directory, where the build puts the dion_ps package, is put on sys.path.
"""
import copy
import os
import pathlib
import re
import signal
import socket
import subprocess
import sys
import time

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
BUILD = pathlib.Path(os.environ.get("DION_BUILD_DIR", ROOT / "build"))
sys.path.insert(0, str(BUILD / "python"))
SERVER = BUILD / "server" / "dion-server"


def train_steps(model, opt, steps, input_shape, classes=3, seed=1, batch=8):
    """`steps` steps of cross-entropy on random inputs of `input_shape` (per sample) and labels
    in [0, classes), through `opt` (a RemoteOptimizer over `model`'s parameters)."""
    import torch
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        x = torch.randn(batch, *input_shape, generator=g)
        y = torch.randint(0, classes, (batch,), generator=g)
        loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step(loss=loss)
        opt.zero_grad()


def assert_replica_equals_a_fresh_pull(opt, model, initial, shards, table, timeout=20):
    """A second client pulls every parameter in full from `shards` (each block from its owner);
    `opt`'s replica must reach the same versions, all above 0, and hold the same bits, and so
    must `model`'s torch weights, every one changed from `initial` (the registered model).
    `table`: the RemoteOptimizer keywords `opt` was made with."""
    import dion_ps
    import torch
    deadline = time.monotonic() + timeout
    while True:
        puller = copy.deepcopy(initial)
        with dion_ps.RemoteOptimizer(puller.named_parameters(), shards=shards,
                                     worker_id="puller", **table) as pulled:
            target = pulled.versions
        opt.wait_for_versions_above({n: v - 1 for n, v in target.items()}, timeout=timeout)
        opt.refresh()
        if opt.versions == target or time.monotonic() > deadline:
            break
        time.sleep(0.1)  # a batch was still being applied: pull again
    assert opt.versions == target
    assert all(v > 0 for v in target.values()), target
    for (name, p), q, p0 in zip(model.named_parameters(), puller.parameters(),
                                initial.parameters()):
        assert torch.equal(p, q), name
        assert not torch.equal(p, p0), f"{name} never changed"


def reserve_ports(n):
    """`n` distinct free ports on 127.0.0.1: bound together, then released for shards that must
    know every peer's address before they start."""
    sockets = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(n)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


class Shard:
    """One dion-server process; stop() is bounded (SIGKILL after 10 s). `peers`: every shard's
    address in index order (--peer_addresses, for split parameters); `metrics`: serve /metrics
    on a free loopback port (self.metrics_address)."""

    def __init__(self, directory, index=0, count=1, port=0, peers=(), metrics=False):
        self.directory = pathlib.Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.index, self.count = index, count
        self.log = open(self.directory / "server.log", "w+")
        self.process = subprocess.Popen(
            [str(SERVER), f"--listen=127.0.0.1:{port}",
             "--metrics_listen=" + ("127.0.0.1:0" if metrics else ""),
             f"--shard_index={index}", f"--num_shards={count}",
             f"--checkpoint_dir={self.directory / 'checkpoints'}", "--wal_sync=none"]
            + ([f"--peer_addresses={','.join(peers)}"] if peers else []),
            stdout=self.log, stderr=subprocess.STDOUT)
        self.address, self.metrics_address = self._read_addresses()

    def _read_addresses(self):
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and self.process.poll() is None:
            self.log.seek(0)
            match = re.search(r"serving gRPC on (\S+?),.* metrics on (\S+?),", self.log.read())
            if match:
                return match.group(1), (None if match.group(2) == "disabled" else match.group(2))
            time.sleep(0.02)
        self.stop(signal.SIGKILL)
        raise RuntimeError("dion-server did not start: "
                           + (self.directory / "server.log").read_text())

    def send(self, number):
        self.process.send_signal(number)

    def stop(self, sig=signal.SIGTERM):
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log.close()


@pytest.fixture
def two_shards(tmp_path):
    """Two fresh shards (a shard holds one model), in shard-index order."""
    base = tmp_path
    shards = [Shard(base / f"shard-{i}", index=i, count=2) for i in range(2)]
    yield [s.address for s in shards]
    for s in shards:
        s.stop()


@pytest.fixture
def peered_shards(tmp_path):
    """Two fresh shards that know each other (--peer_addresses) and serve /metrics: split
    parameters step on both."""
    addresses = [f"127.0.0.1:{port}" for port in reserve_ports(2)]
    shards = [Shard(tmp_path / f"shard-{i}", index=i, count=2, port=addresses[i].split(":")[1],
                    peers=addresses, metrics=True) for i in range(2)]
    yield shards
    for s in shards:
        s.stop()


@pytest.fixture
def one_shard(tmp_path):
    """A shard of its own, for tests that stop, freeze or restart it."""
    shard = Shard(tmp_path / "shard")
    yield shard
    if shard.process.poll() is None:
        shard.send(signal.SIGCONT)
    shard.stop(signal.SIGKILL)
