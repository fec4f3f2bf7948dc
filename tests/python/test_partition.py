"""dion_ps.partition, samples_per_epoch and EpochOrder (docs/python.md, "Partitions"): the
split is a partition (disjoint parts covering every sample), iid parts are near-equal,
Dirichlet label skew grows as alpha shrinks, the same seed gives the same split, and a
dion-worker given the same flags trains on parts of exactly the sizes Python computes; the
flags `dion local` passes reach fashion_cnn.py with the same defaults as dion-worker's."""
import gzip
import importlib.util
import pathlib
import re
import subprocess

import numpy as np
import pytest

from conftest import BUILD, ROOT

import dion_ps

WORKER = BUILD / "worker" / "dion-worker"
FASHION = pathlib.Path("/usr/share/datasets/fashion-mnist")


def scrambled_labels(n=6000, classes=10):
    return (np.arange(n) * 7919 % n) % classes


def label_skew(parts, labels, classes=10):
    """Mean total-variation distance of the workers' label histograms from the global one."""
    overall = np.bincount(labels, minlength=classes) / len(labels)
    return np.mean([0.5 * np.abs(np.bincount(labels[p], minlength=classes) / len(p)
                                 - overall).sum() for p in parts])


@pytest.mark.parametrize("kind,alpha", [("iid", 0.5), ("dirichlet", 1.0), ("dirichlet", 0.1)])
def test_parts_are_disjoint_ascending_and_cover_every_sample(kind, alpha):
    labels = scrambled_labels()
    parts = dion_ps.partition(labels, 4, kind, alpha, seed=3)
    assert len(parts) == 4
    for part in parts:
        assert part.dtype == np.int64 and np.all(np.diff(part) > 0)
    everything = np.concatenate(parts)
    assert np.array_equal(np.sort(everything), np.arange(len(labels)))
    if kind == "iid":
        assert {len(p) for p in parts} == {1500}


def test_same_seed_same_split_and_skew_grows_as_alpha_shrinks():
    labels = scrambled_labels()
    a = dion_ps.partition(labels, 4, "dirichlet", 0.1, seed=5)
    b = dion_ps.partition(labels.tolist(), 4, "dirichlet", 0.1, seed=5)  # any int sequence
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    c = dion_ps.partition(labels, 4, "dirichlet", 0.1, seed=6)
    assert not all(np.array_equal(x, y) for x, y in zip(a, c))
    skew = [np.mean([label_skew(dion_ps.partition(labels, 4, kind, alpha, seed=s), labels)
                     for s in range(1, 4)])
            for kind, alpha in (("iid", 0.5), ("dirichlet", 1.0), ("dirichlet", 0.1))]
    assert skew[0] < 0.05 < skew[0] + 0.1 < skew[1] < skew[2] - 0.1, skew


def test_bad_arguments_raise_with_the_cpp_message():
    labels = scrambled_labels(100)
    with pytest.raises(dion_ps.InvalidArgumentError, match="alpha"):
        dion_ps.partition(labels, 4, "dirichlet", 0.0)
    with pytest.raises(dion_ps.InvalidArgumentError, match="expected iid or dirichlet"):
        dion_ps.partition(labels, 4, "random")
    with pytest.raises(dion_ps.InvalidArgumentError, match=r"label\[1\] = 9"):
        dion_ps.partition(labels, 4, num_classes=2)
    with pytest.raises(dion_ps.InvalidArgumentError, match="partition"):
        dion_ps.samples_per_epoch(0, 100, 4, synchronous=True)


def test_synchronous_epochs_have_the_same_size_on_every_worker():
    labels = scrambled_labels()
    parts = dion_ps.partition(labels, 4, "dirichlet", 0.1, seed=1)
    assert max(map(len, parts)) > 2 * min(map(len, parts))
    for p in parts:
        assert dion_ps.samples_per_epoch(len(p), len(labels), 4, synchronous=False) == len(p)
        per_epoch = dion_ps.samples_per_epoch(len(p), len(labels), 4, synchronous=True)
        assert per_epoch == 1500
        order = dion_ps.EpochOrder(len(p), per_epoch, seed=7)
        stream = np.concatenate([order.next() for _ in range(4)])
        # Consecutive passes: each run of len(p) positions is a permutation of the partition.
        for start in range(0, len(stream) - len(p) + 1, len(p)):
            assert np.array_equal(np.sort(stream[start:start + len(p)]), np.arange(len(p)))


def read_labels():
    with gzip.open(FASHION / "train-labels-idx1-ubyte.gz") as f:
        return np.frombuffer(f.read(), dtype=np.uint8, offset=8)


@pytest.mark.skipif(not (FASHION / "train-labels-idx1-ubyte.gz").exists(),
                    reason="Fashion-MNIST is not installed (scripts/setup.sh installs it)")
def test_dion_worker_trains_on_the_parts_python_computes(one_shard):
    """Four dion-workers (one step each, at once), workers 2 and 3 synchronous: each reports
    the size of the part Python computes, and its epoch's size by the same rule."""
    labels = read_labels()
    parts = dion_ps.partition(labels, 4, "dirichlet", 0.1, seed=1)
    workers = [subprocess.Popen(
        [str(WORKER), f"--shards={one_shard.address}", f"--worker_index={w}",
         "--num_workers=4", "--partition=dirichlet", "--dirichlet_alpha=0.1", "--model_seed=1",
         "--max_steps=1", "--no_evaluate", "--flush_timeout=5s"]
        + (["--synchronous"] if w >= 2 else []),
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for w in range(4)]
    for w, worker in enumerate(workers):
        _, stderr = worker.communicate(timeout=60)
        line = re.search(r"training on (\d+) of (\d+) samples \(dirichlet partition\).*, "
                         r"(\d+) samples per epoch", stderr)
        assert line, stderr
        per_epoch = 15000 if w >= 2 else len(parts[w])
        assert (int(line[1]), int(line[2]), int(line[3])) == (len(parts[w]), 60000, per_epoch)


def fashion_cnn_flags():
    spec = importlib.util.spec_from_file_location(
        "fashion_cnn", ROOT / "worker" / "python" / "examples" / "fashion_cnn.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.parse_flags


def test_fashion_cnn_takes_the_partition_flags_with_dion_workers_defaults():
    parse = fashion_cnn_flags()
    flags = parse(["--shards=a:1", "--partition=dirichlet", "--dirichlet_alpha=0.1"])
    assert (flags.partition, flags.dirichlet_alpha) == ("dirichlet", 0.1)
    # `dion local` passes --partition and --dirichlet_alpha only when they differ from
    # dion-worker's defaults, so the script's defaults must be the same.
    help_text = subprocess.run([str(WORKER), "--helpfull"], capture_output=True, text=True,
                               timeout=30).stdout
    defaults = parse(["--shards=a:1"])
    for name in ("partition", "dirichlet_alpha", "model_seed", "split_threshold"):
        match = re.search(rf"--{name} \(.*?\);\s+default: (\S+?);", help_text, re.S)
        assert match, name
        cpp_default = match[1].strip('"')
        assert str(getattr(defaults, name)) == cpp_default or \
            float(getattr(defaults, name)) == float(cpp_default), name
