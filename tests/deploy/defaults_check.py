#!/usr/bin/python3
"""The deployments leave the training settings to the binaries (ctest deploy_defaults).

  defaults_check.py --server BIN --worker BIN --dion BIN --source_root DIR

The defaults are read from the built dion-server and dion-worker (--helpfull). Fails when
  1. `dion local` with default options passes a child any training flag (`dion local
     --dry_run` prints the command lines it would start), or shows in its --help a default
     other than the child's for one of the settings it forwards;
  2. the Kubernetes ConfigMap of deploy/k8s/base, or an overlay's ConfigMap or added args,
     sets a training flag to a value other than the binary's default (the overrides an overlay
     documents are listed in OVERLAY_OVERRIDES);
  3. an ENTRYPOINT or CMD of deploy/docker/Dockerfile does.
Training flag: any flag but topology, resources and paths (flag_defaults.TOPOLOGY). Python 3
standard library only; no kubectl (tests/deploy/k8s_check.sh validates the rendered objects).
"""
import argparse
import json
import os
import re
import subprocess
import sys

sys.dont_write_bytecode = True  # no __pycache__ in the source tree
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from flag_defaults import TOPOLOGY, check_flags, defaults_of, flag_value, normalized  # noqa: E402

# What each overlay deliberately changes (its kustomization.yaml says so): binary -> flags.
OVERLAY_OVERRIDES = {"large": {"dion-worker": {"epochs", "hidden_layers"}}}

# `dion local` flags that stand for a child's flag: local name -> (binary, child flag).
FORWARDED = {name: ("dion-worker", name) for name in (
    "dataset", "data_dir", "partition", "dirichlet_alpha", "epochs", "batch_size",
    "rank_fraction", "compression_rank_fraction", "lr", "adamw_lr", "lookahead")}
FORWARDED.update({name: ("dion-server", name) for name in (
    "lr_final_scale", "staleness_policy", "max_staleness", "target_samples", "target_workers",
    "batch_deadline", "adaptive_batching")})
FORWARDED["seed"] = ("dion-worker", "model_seed")
FORWARDED["lr_cooldown"] = ("dion-server", "lr_cooldown_fraction")


def check_dion_local(args, defaults, fail):
    run = subprocess.run([args.dion, "local", "--dry_run"], capture_output=True, text=True,
                         timeout=60)
    if run.returncode != 0 and "horizon" in run.stderr:
        # No Fashion-MNIST here: give the horizon it would have computed (12 x 60000).
        run = subprocess.run([args.dion, "local", "--dry_run", "--lr_schedule_samples=720000"],
                             capture_output=True, text=True, timeout=60)
    if run.returncode != 0:
        fail(f"dion local --dry_run: exit status {run.returncode}: {run.stderr.strip()}")
        return
    children = 0
    for line in run.stdout.splitlines():
        role, _, command = line.partition(": ")
        words = command.split()
        if not words:
            continue
        binary = os.path.basename(words[0])
        if binary not in defaults:
            fail(f"dion local --dry_run: {role} runs {words[0]}, not dion-server or dion-worker")
            continue
        children += 1
        check_flags(f"dion local child {role}", binary, words[1:], defaults[binary], fail)
        for arg in words[1:]:
            name, _ = flag_value(arg)
            if name not in TOPOLOGY[binary] and name != "mode":
                fail(f"dion local child {role}: passes {arg} though no option was set")
    if children != 2 + 4 + 1:
        fail(f"dion local --dry_run: expected 2 shards, 4 workers and an evaluator, got "
             f"{children} command lines:\n{run.stdout}")
    print(f"ok   dion local --dry_run: {children} command lines")

    shown = defaults_of_local(args.dion)
    for local_name, (binary, name) in FORWARDED.items():
        if local_name not in shown or name not in defaults[binary]:
            fail(f"dion local --{local_name} or {binary} --{name} does not exist")
        elif normalized(shown[local_name]) != normalized(defaults[binary][name]):
            fail(f"dion local --help shows --{local_name} default {shown[local_name]}, "
                 f"{binary}'s --{name} default is {defaults[binary][name]}")


def defaults_of_local(dion):
    """dion local's flag defaults: defaults_of() needs a plain binary, so wrap the subcommand."""
    wrapper = os.path.join(os.environ.get("TMPDIR", "/tmp"), f"dion-local-{os.getpid()}.sh")
    with open(wrapper, "w") as f:
        f.write(f'#!/bin/sh\nexec "{dion}" local "$@"\n')
    os.chmod(wrapper, 0o755)
    try:
        return defaults_of(wrapper)
    finally:
        os.remove(wrapper)


def config_data(path):
    """The DION_* entries of a ConfigMap file, {key: value} (folded values are skipped: only
    the shard address list uses them)."""
    with open(path) as f:
        return dict(re.findall(r'^  (DION_\w+): "(.*)"$', f.read(), re.M))


def container_args(path):
    """The items of the `args:` lists of a manifest (not the flags of a probe's command)."""
    found, indent = [], None
    with open(path) as f:
        for line in f:
            m = re.match(r"^(\s*)args:\s*$", line)
            if m:
                indent = len(m.group(1))
                continue
            if indent is None or re.match(r"^\s*(#.*)?$", line):
                continue
            item = re.match(r"^(\s*)- (--\S+)$", line)
            if item and len(item.group(1)) >= indent:
                found.append(item.group(2))
            elif len(line) - len(line.lstrip()) <= indent:
                indent = None
    return found


def added_args(kustomization):
    """(kind, arg) of each argument an overlay's JSON patches append to a container."""
    with open(kustomization) as f:
        blocks = f.read().split("- target:")
    found = []
    for block in blocks[1:]:
        kind = re.search(r"kind: (\w+)", block)
        for arg in re.findall(r"path: /spec/template/spec/containers/\d+/args/-\s+value: (\S+)",
                              block):
            found.append((kind.group(1) if kind else "?", arg))
    return found


def check_k8s(root, defaults, fail):
    k8s = os.path.join(root, "deploy/k8s")
    base = config_data(os.path.join(k8s, "base/configmap.yaml"))
    workloads = {"StatefulSet": ("dion-server", container_args(
                     os.path.join(k8s, "base/shard-statefulset.yaml"))),
                 "Job": ("dion-worker", container_args(os.path.join(k8s, "base/worker-job.yaml")))}
    overlays = sorted(os.listdir(os.path.join(k8s, "overlays")))
    for overlay in [None] + overlays:
        data = dict(base)
        where = "deploy/k8s/base"
        extra = []
        if overlay:
            where = f"deploy/k8s/overlays/{overlay}"
            config = os.path.join(k8s, "overlays", overlay, "config.yaml")
            if os.path.exists(config):
                data.update(config_data(config))
            extra = added_args(os.path.join(k8s, "overlays", overlay, "kustomization.yaml"))
        for kind, (binary, args) in workloads.items():
            # $(VAR) from the ConfigMap; variables from the pod (indices) are topology.
            resolved = [re.sub(r"\$\((\w+)\)", lambda m: data.get(m.group(1), "0"), a)
                        for a in args + [a for k, a in extra if k == kind]]
            allowed = OVERLAY_OVERRIDES.get(overlay, {}).get(binary, set())
            check_flags(f"{where} {kind}", binary, resolved, defaults[binary], fail, allowed)
        print(f"ok   {where}: checked")


def check_dockerfile(root, defaults, fail):
    path = os.path.join(root, "deploy/docker/Dockerfile")
    with open(path) as f:
        text = f.read()
    checked = 0
    for stage in re.split(r"^FROM ", text, flags=re.M)[1:]:
        entry = re.search(r"^ENTRYPOINT (\[.*\])$", stage, re.M)
        if not entry:
            continue
        command = json.loads(entry.group(1))
        cmd = re.search(r"^CMD (\[.*\])$", stage, re.M)
        args = command[1:] + (json.loads(cmd.group(1)) if cmd else [])
        binary = os.path.basename(command[0])
        if binary not in defaults:
            fail(f"{path}: ENTRYPOINT {command[0]} is neither dion-server nor dion-worker")
            continue
        check_flags(f"{path} ({binary} image)", binary, args, defaults[binary], fail)
        checked += 1
    if checked != 2:
        fail(f"{path}: expected the dion-server and dion-worker images, found {checked}")
    print(f"ok   deploy/docker/Dockerfile: {checked} images")


def main():
    parser = argparse.ArgumentParser()
    for name in ("--server", "--worker", "--dion", "--source_root"):
        parser.add_argument(name, required=True)
    args = parser.parse_args()
    defaults = {"dion-server": defaults_of(args.server), "dion-worker": defaults_of(args.worker)}
    failures = []
    check_dion_local(args, defaults, failures.append)
    check_k8s(args.source_root, defaults, failures.append)
    check_dockerfile(args.source_root, defaults, failures.append)
    for f in failures:
        print(f"FAIL {f}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
