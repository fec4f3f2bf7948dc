"""The flag defaults of the built dion-server and dion-worker, read from their --helpfull
output, and which of their flags are training settings.

Deployments (dion local, deploy/k8s, deploy/docker) set a process's topology: where it runs,
which shard or worker it is, its paths, threads and timeouts, and values derived from those
(the cooldown horizon from the run's length). Every other flag is a training setting, whose
value is the binary's own default unless a user chose another. Python 3 standard library only.
"""
import re
import subprocess

# Not training settings: topology, resources, paths, timeouts, durability, transport security
# and credentials (TLS certificates, tokens), and what `dion local`'s report reads from worker
# 0 (its evaluations and the snapshots that locate the time to a target accuracy).
TOPOLOGY = {
    "dion-server": {
        "listen", "metrics_listen", "shard_index", "num_shards", "checkpoint_dir",
        "checkpoint_interval", "checkpoint_keep", "compute_threads", "blas_threads",
        "shutdown_grace", "max_message_bytes", "broadcast_queue", "lr_schedule_samples",
        "wal", "wal_dir", "wal_sync", "wal_recover",
        "tls_cert_file", "tls_key_file", "tls_client_ca_file", "auth_tokens_file",
        "peer_addresses", "peer_tls_ca_file", "peer_tls_server_name", "peer_token_file",
        "peer_timeout"},
    "dion-worker": {
        "shards", "worker_index", "num_workers", "worker_id", "mode", "data_dir",
        "metrics_listen", "blas_threads", "give_up_after", "rpc_deadline", "start_file",
        "start_timeout", "progress_interval", "eval_interval", "target_accuracy",
        "snapshot_interval", "evaluate", "no_evaluate",
        "tls_ca_file", "tls_cert_file", "tls_key_file", "token_file", "tls_server_name"},
}


def defaults_of(binary):
    """{flag: default as printed} of `binary --helpfull` (Abseil's usage format)."""
    text = subprocess.run([binary, "--helpfull"], capture_output=True, text=True,
                          timeout=30).stdout
    found = {}
    # Each entry starts "    --name (description); default: value;", possibly over lines.
    for entry in re.split(r"\n(?=\s{4}--\w+ \()", text):
        entry = entry.split("\n\n")[0]  # a blank line ends the last entry of a file's flags
        m = re.match(r"\s*--(\w+) \(", entry)
        d = re.findall(r"default: (.*?);\s*$", entry, re.S)
        if m and d:
            found[m.group(1)] = d[-1].strip()
    if len(found) < 20:
        raise AssertionError(f"{binary} --helpfull: read only {len(found)} flag defaults")
    return found


_DURATION = re.compile(r"^(?:(\d+(?:\.\d+)?)(h|ms|us|ns|m|s))+$")
_UNIT_S = {"h": 3600, "m": 60, "s": 1, "ms": 1e-3, "us": 1e-6, "ns": 1e-9}


def normalized(value):
    """A comparable form: numbers and durations as floats (seconds), strings unquoted."""
    value = value.strip()
    if len(value) >= 2 and value[0] == value[-1] == '"':
        return value[1:-1]
    if value in ("inf", "-inf"):
        return float(value)
    if _DURATION.match(value):
        return sum(float(n) * _UNIT_S[u] for n, u in re.findall(r"(\d+(?:\.\d+)?)(h|ms|us|ns|m|s)",
                                                                value))
    try:
        return float(value)
    except ValueError:
        return value


def flag_value(arg):
    """(name, value) of "--name=value", "--name" (true) or "--noname" (false)."""
    m = re.match(r"^--?(\w+)(?:=(.*))?$", arg)
    if not m:
        return None, None
    return m.group(1), m.group(2) if m.group(2) is not None else "true"


def check_flags(where, binary_name, args, defaults, fail, allowed=frozenset()):
    """Fails for each training flag in `args` whose value is not the binary's default (a flag
    in `allowed` may be set to anything; a flag the binary lacks always fails)."""
    for arg in args:
        name, value = flag_value(arg)
        if name is None:
            fail(f"{where}: {arg!r} is not a --flag")
            continue
        if name not in defaults and name.startswith("no") and name[2:] in defaults:
            name, value = name[2:], "false"
        if name not in defaults:
            fail(f"{where}: --{name} is not a flag of {binary_name}")
        elif name in TOPOLOGY[binary_name] or name in allowed:
            continue
        elif normalized(value) != normalized(defaults[name]):
            fail(f"{where}: sets the training flag --{name}={value}; {binary_name}'s default is "
                 f"{defaults[name]} (leave it to the binary, or change the default in "
                 "common/training_defaults.h)")
