"""Split parameters from Python (docs/python.md, "Split parameters"): split_threshold splits as
dion-worker's --split_threshold does and split_owners overrides it per parameter; a split
matrix trains on shards that know each other, both owners step it, and the torch weights end
equal to what the shards hold; shards without --peer_addresses refuse the table; bad values
are a ValueError before anything is sent."""
import re
import urllib.request

import pytest
import torch
from torch import nn

from conftest import assert_replica_equals_a_fresh_pull, train_steps

import dion_ps


class TallAndWide(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(16, 48)  # weight 48 x 16 (768 elements): tall
        self.fc2 = nn.Linear(48, 3)   # weight 3 x 48 (144 elements): wide

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(x)))


def model(seed=0):
    torch.manual_seed(seed)
    return TallAndWide()


def split_of(named_parameters, **options):
    _, _, entries = dion_ps.parameter_table(named_parameters, **options)
    return {e["name"]: e["split_owners"] for e in entries}


def test_threshold_splits_as_dion_worker_and_overrides_win():
    m = model()
    # At the threshold (fc1.weight has exactly 768 elements) over every shard, at most one per
    # row of the tall side; fc2.weight is one element short of 144 + 1.
    assert split_of(m.named_parameters(), num_shards=3, split_threshold=768) == {
        "fc1.weight": 3, "fc1.bias": 0, "fc2.weight": 0, "fc2.bias": 0}
    assert split_of(m.named_parameters(), num_shards=3, split_threshold=769)["fc1.weight"] == 0
    assert split_of(m.named_parameters(), num_shards=3, split_threshold=145)["fc2.weight"] == 0
    assert split_of(m.named_parameters(), num_shards=64, split_threshold=144) == {
        "fc1.weight": 48, "fc1.bias": 0, "fc2.weight": 48, "fc2.bias": 0}
    # 0: never; one shard: nothing to split over; the default is dion-worker's 2048 x 2048.
    assert set(split_of(m.named_parameters(), num_shards=3, split_threshold=0).values()) == {0}
    assert set(split_of(m.named_parameters(), num_shards=1, split_threshold=1).values()) == {0}
    assert set(split_of(m.named_parameters(), num_shards=3).values()) == {0}
    assert dion_ps.DEFAULT_SPLIT_THRESHOLD == 2048 * 2048
    # An override wins both ways; 1 keeps the parameter whole; a scalar_params matrix is AdamW.
    assert split_of(m.named_parameters(), num_shards=2, split_threshold=1,
                    split_owners={"fc1.weight": 1, "fc2.weight": 5}) == {
        "fc1.weight": 0, "fc1.bias": 0, "fc2.weight": 5, "fc2.bias": 0}
    assert split_of(m.named_parameters(), num_shards=2, split_threshold=1,
                    scalar_params=["fc2"])["fc2.weight"] == 0


@pytest.mark.parametrize("options, message", [
    ({"split_threshold": -1}, r"split_threshold must be an integer >= 0.*got -1"),
    ({"split_threshold": 1.5}, r"split_threshold must be an integer >= 0.*got 1\.5"),
    ({"split_threshold": True}, r"split_threshold must be an integer"),
    ({"split_owners": [("fc1.weight", 2)]}, r"split_owners must be a dict.*got list"),
    ({"split_owners": {"fc1.weight": -1}}, r"split_owners\['fc1.weight'\] must be an integer "
                                           r"in \[0, 65536\].*got -1"),
    ({"split_owners": {"fc1.weight": 2.0}}, r"split_owners\['fc1.weight'\] must be an integer"),
    ({"split_owners": {"fc1.weight": 65537}}, r"in \[0, 65536\].*got 65537"),
    ({"split_owners": {"fc3.weight": 2}}, r"split_owners names \['fc3.weight'\], which are not "
                                          r"parameters of the model"),
    ({"split_owners": {"fc1.bias": 2}}, r"only Dion matrices are split, and 'fc1.bias' trains "
                                        r"with adamw"),
    ({"split_owners": {"fc2.weight": 2}, "scalar_params": ["fc2"]},
     r"'fc2.weight' trains with adamw"),
])
def test_bad_split_values_are_a_value_error_before_anything_is_sent(options, message):
    with pytest.raises(ValueError, match=message):
        dion_ps.parameter_table(model().named_parameters(), num_shards=2, **options)
    # The constructor checks before connecting: the address is never dialled.
    with pytest.raises(ValueError, match=message):
        dion_ps.RemoteOptimizer(model().named_parameters(), shards=["127.0.0.1:1"],
                                worker_id="w", batch_size=4, **options)


def test_split_over_more_shards_than_rows_is_a_value_error():
    tiny = nn.Linear(3, 2)  # weight 2 x 3: its tall side has 3 rows
    with pytest.raises(ValueError, match=r"'weight' \(2 x 3\) cannot be split over 4 shards: "
                                         r"its tall side has 3 rows"):
        dion_ps.parameter_table(tiny.named_parameters(), num_shards=4,
                                split_owners={"weight": 4})
    # Over fewer shards than asked for, min(k, num_shards) must fit: 3 shards are fine.
    assert split_of(tiny.named_parameters(), num_shards=3,
                    split_owners={"weight": 4})["weight"] == 4


def test_split_table_is_refused_by_shards_without_peer_addresses(two_shards):
    options = dict(shards=two_shards, model_name="split", batch_size=4)
    with pytest.raises(dion_ps.FailedPreconditionError, match="peer_addresses"):
        dion_ps.RemoteOptimizer(model().named_parameters(), worker_id="a",
                                split_owners={"fc1.weight": 2}, **options)
    # Nothing was registered: the same model unsplit registers.
    with dion_ps.RemoteOptimizer(model().named_parameters(), worker_id="b", **options) as opt:
        assert opt.split_over == {}


def metric(address, name):
    """Sum of every series of `name` on the /metrics page at `address`."""
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=10) as response:
        text = response.read().decode()
    values = re.findall(rf"^{name}(?:{{[^}}]*}})? (\S+)$", text, re.MULTILINE)
    assert values, f"{name} is not on {address}/metrics"
    return sum(float(v) for v in values)


def test_split_parameters_train_and_the_replica_holds_what_the_shards_hold(peered_shards):
    trained, initial = model(), model()
    addresses = [s.address for s in peered_shards]
    # fc1.weight (tall) split by the threshold, fc2.weight (wide: split by columns) by request.
    table = dict(model_name="split-train", batch_size=8, rank_fraction=0.5, lr=0.05,
                 adamw_lr=0.01, split_threshold=768, split_owners={"fc2.weight": 2})
    opt = dion_ps.RemoteOptimizer(trained.named_parameters(), shards=addresses, worker_id="w0",
                                  **table)
    assert opt.split_over == {"fc1.weight": 2, "fc2.weight": 2}
    train_steps(trained, opt, 12, input_shape=(16,))
    opt.flush(timeout=20)
    stats = opt.stats()
    assert stats["accepted"] > 0 and stats["refused"] == 0, stats
    opt.wait_for_versions_above([0] * len(opt.names), timeout=20)
    # The replica, assembled from the owners' low-rank steps, equals the blocks a second
    # client pulls in full from their owners.
    assert_replica_equals_a_fresh_pull(opt, trained, initial, addresses, table)
    opt.close()
    # Both owners took part in the split steps: each sent its part (or the sums) to the other.
    for shard in peered_shards:
        assert metric(shard.metrics_address, "dion_peer_sent_bytes_total") > 0, shard.index
        assert metric(shard.metrics_address, "dion_split_step_failures_total") == 0
