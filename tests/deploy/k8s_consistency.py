#!/usr/bin/python3
"""dion-ps-specific checks of rendered Kubernetes overlays (part of ctest deploy_k8s).

  k8s_consistency.py RENDERED.json SERVER_HELP.txt WORKER_HELP.txt CHECKPOINT_HELP.txt

RENDERED.json: the --json output of deploy/tools/validate_k8s.mjs for the overlays
(schema validity is checked there). *_HELP.txt: the --help output of dion-server,
dion-worker and `dion checkpoint`, for their flag names. Per rendered file (one overlay), checks what the schemas
cannot know:
  - the shard count agrees everywhere: StatefulSet replicas == DION_NUM_SHARDS == number of
    DION_SHARDS addresses, which name dion-ps-<i>.<serviceName>:<grpc port> in index order;
  - the worker count agrees: Job completions == parallelism == DION_NUM_WORKERS, Indexed;
  - the shards' learning-rate cooldown spans the run: DION_LR_SCHEDULE_SAMPLES == DION_EPOCHS x
    the Fashion-MNIST training set;
  - every --flag in the containers' args is a flag of the binary, every $(VAR) is defined
    (ConfigMap or env), every ConfigMap key is used by some container;
  - security: pod runAsNonRoot with a non-zero uid; each container readOnlyRootFilesystem,
    allowPrivilegeEscalation false, capabilities drop ALL, resource requests and limits;
  - shards have native gRPC readiness and liveness probes on their gRPC port;
  - the CronJob dion-checkpoint runs `dion checkpoint` (from the worker image) against
    DION_SHARDS on a valid 5-field schedule, one run at a time (concurrencyPolicy Forbid),
    with no retry within a run, and the NetworkPolicy lets it reach the shards' gRPC port;
  - selectors of the Services, the PodDisruptionBudget and the NetworkPolicies match the pods
    they are meant for; pods carry the labels and the "metrics" port name that
    deploy/prometheus/prometheus.yml discovers; all namespaced objects are in one namespace.
Python 3 standard library only. Exit 0 when all hold, 1 otherwise.
"""
import json
import re
import sys
from collections import defaultdict

NAME, COMPONENT = "app.kubernetes.io/name", "app.kubernetes.io/component"
FASHION_MNIST_TRAIN_SAMPLES = 60000


def flags_of(help_text):
    return set(re.findall(r"^\s+--(\w+) \(", help_text, re.M))


def matches(selector, labels):
    return all(labels.get(k) == v for k, v in (selector or {}).items())


def template(obj):
    spec = obj["spec"]
    return (spec["jobTemplate"]["spec"] if obj["kind"] == "CronJob" else spec)["template"]


def pod_spec(obj):
    return template(obj)["spec"]


def checkpoint_flags_of(help_text):
    return set(re.findall(r"^\s+--(\w+)\s", help_text, re.M))


CRON_FIELD = r"(\*|\d+(-\d+)?)(/\d+)?(,(\*|\d+(-\d+)?)(/\d+)?)*"


def check_cronjob(file, cron, worker_image, fail):
    where = f"{file} CronJob/{cron['metadata']['name']}"
    spec = cron["spec"]
    if not re.fullmatch(r"\s*".join([CRON_FIELD] * 5), spec.get("schedule", "").strip()):
        fail(f"{where}: schedule {spec.get('schedule')!r} is not a 5-field cron expression")
    if spec.get("concurrencyPolicy") != "Forbid":
        fail(f"{where}: concurrencyPolicy must be Forbid (one coordinated checkpoint at a time)")
    if spec["jobTemplate"]["spec"].get("backoffLimit") != 0:
        fail(f"{where}: backoffLimit must be 0 (a retry asks for the next cut: the next run's job)")
    c = pod_spec(cron)["containers"][0]
    if c.get("command", [])[-1:] != ["checkpoint"] or not c["command"][0].endswith("/dion") or \
            c.get("image") != worker_image:
        fail(f"{where}: must run `dion checkpoint` from the worker image, runs "
             f"{c.get('command')} from {c.get('image')}")
    if "--shards=$(DION_SHARDS)" not in c.get("args", []):
        fail(f"{where}: args {c.get('args')} must include --shards=$(DION_SHARDS)")


def check_overlay(file, objects, server_flags, worker_flags, checkpoint_flags, fail):
    by_kind = defaultdict(list)
    for o in objects:
        by_kind[o["kind"]].append(o)

    def one(kind, name=None):
        found = [o for o in by_kind[kind] if name is None or o["metadata"]["name"] == name]
        if len(found) != 1:
            fail(f"{file}: expected one {kind} {name or ''}, found {len(found)}")
            return None
        return found[0]

    sts, job, config = one("StatefulSet", "dion-ps"), one("Job", "dion-worker"), \
        one("ConfigMap", "dion-ps-config")
    cron = one("CronJob", "dion-checkpoint")
    if not (sts and job and config and cron):
        return
    data = config.get("data", {})

    # Namespace: every namespaced object in the overlay's one namespace.
    namespaces = {o["metadata"].get("namespace") for o in objects if o["kind"] != "Namespace"}
    declared = {o["metadata"]["name"] for o in by_kind["Namespace"]}
    if len(namespaces) != 1 or None in namespaces or not namespaces <= declared:
        fail(f"{file}: namespaced objects in {namespaces}, Namespace objects {declared}")

    # Shard layout.
    replicas = sts["spec"].get("replicas", 1)
    shards = data.get("DION_SHARDS", "").split(",")
    grpc_port = next((p["containerPort"] for p in pod_spec(sts)["containers"][0]["ports"]
                      if p.get("name") == "grpc"), None)
    expected = [f"dion-ps-{i}.{sts['spec']['serviceName']}:{grpc_port}" for i in range(replicas)]
    if str(replicas) != data.get("DION_NUM_SHARDS") or shards != expected:
        fail(f"{file}: StatefulSet replicas {replicas}, DION_NUM_SHARDS "
             f"{data.get('DION_NUM_SHARDS')}, DION_SHARDS {shards}; expected {expected}")
    headless = one("Service", sts["spec"]["serviceName"])
    if headless and headless["spec"].get("clusterIP") != "None":
        fail(f"{file}: Service {sts['spec']['serviceName']} must be headless (clusterIP: None)")

    # Workers.
    spec = job["spec"]
    if spec.get("completionMode") != "Indexed" or \
            not (str(spec.get("completions")) == str(spec.get("parallelism")) ==
                 data.get("DION_NUM_WORKERS")):
        fail(f"{file}: Job completionMode {spec.get('completionMode')}, completions "
             f"{spec.get('completions')}, parallelism {spec.get('parallelism')}, "
             f"DION_NUM_WORKERS {data.get('DION_NUM_WORKERS')}: must be Indexed and all equal")

    # The cooldown's horizon: the samples the shards apply over the whole run.
    epochs, horizon = data.get("DION_EPOCHS", ""), data.get("DION_LR_SCHEDULE_SAMPLES", "")
    if not (epochs.isdigit() and horizon.isdigit() and
            int(horizon) == int(epochs) * FASHION_MNIST_TRAIN_SAMPLES):
        fail(f"{file}: DION_LR_SCHEDULE_SAMPLES {horizon!r} must be DION_EPOCHS {epochs!r} x "
             f"{FASHION_MNIST_TRAIN_SAMPLES} (the training set), or the learning rates cool "
             "down at the wrong time")

    check_cronjob(file, cron, pod_spec(job)["containers"][0].get("image"), fail)

    used_keys = set()
    for obj, flags, component in ((sts, server_flags, "shard"), (job, worker_flags, "worker"),
                                  (cron, checkpoint_flags, "checkpointer")):
        ps = pod_spec(obj)
        where = f"{file} {obj['kind']}/{obj['metadata']['name']}"
        labels = template(obj)["metadata"].get("labels", {})
        if labels.get(NAME) != "dion-ps" or labels.get(COMPONENT) != component:
            fail(f"{where}: pod labels {labels} lack {NAME}=dion-ps, {COMPONENT}={component}")
        selector = obj["spec"].get("selector", {}).get("matchLabels")
        if selector is not None and not matches(selector, labels):
            fail(f"{where}: selector {selector} does not match its pod labels")
        psc = ps.get("securityContext", {})
        if psc.get("runAsNonRoot") is not True or not psc.get("runAsUser"):
            fail(f"{where}: pod securityContext needs runAsNonRoot and a non-zero runAsUser")
        if ps.get("automountServiceAccountToken") is not False:
            fail(f"{where}: automountServiceAccountToken should be false")
        for c in ps["containers"]:
            cw = f"{where} container {c['name']}"
            sc = c.get("securityContext", {})
            if sc.get("readOnlyRootFilesystem") is not True or \
                    sc.get("allowPrivilegeEscalation") is not False or \
                    sc.get("capabilities", {}).get("drop") != ["ALL"]:
                fail(f"{cw}: securityContext {sc} needs readOnlyRootFilesystem, no privilege "
                     "escalation, drop ALL")
            res = c.get("resources", {})
            for part in ("requests", "limits"):
                if not {"cpu", "memory"} <= set(res.get(part, {})):
                    fail(f"{cw}: resources.{part} needs cpu and memory")
            if component != "checkpointer" and \
                    not any(p.get("name") == "metrics" for p in c.get("ports", [])):
                fail(f"{cw}: no port named 'metrics' (Prometheus discovers it by name)")
            env = {e["name"] for e in c.get("env", [])}
            from_config = any(ef.get("configMapRef", {}).get("name") == "dion-ps-config"
                              for ef in c.get("envFrom", []))
            for arg in c.get("args", []):
                m = re.match(r"--(\w+)=", arg)
                if not m or m.group(1) not in flags:
                    fail(f"{cw}: argument {arg!r} is not a flag of the binary")
                for var in re.findall(r"\$\((\w+)\)", arg):
                    if var in env:
                        continue
                    if from_config and var in data:
                        used_keys.add(var)
                    else:
                        fail(f"{cw}: $({var}) in {arg!r} is defined nowhere")
            if component == "shard":
                for probe in ("readinessProbe", "livenessProbe"):
                    port = c.get(probe, {}).get("grpc", {}).get("port")
                    if port != grpc_port:
                        fail(f"{cw}: {probe} must be a native grpc probe on port {grpc_port}")
    unused = set(data) - used_keys
    if unused:
        fail(f"{file}: ConfigMap keys used by no container: {sorted(unused)}")

    # Selectors of Services, PDB, NetworkPolicies.
    shard_labels = template(sts)["metadata"]["labels"]
    worker_labels = template(job)["metadata"]["labels"]
    checkpointer_labels = template(cron)["metadata"]["labels"]
    checkpointer_admitted = False
    for svc in by_kind["Service"]:
        if not matches(svc["spec"].get("selector"), shard_labels):
            fail(f"{file}: Service {svc['metadata']['name']} does not select the shards")
    for pdb in by_kind["PodDisruptionBudget"]:
        if not matches(pdb["spec"]["selector"].get("matchLabels"), shard_labels) or \
                matches(pdb["spec"]["selector"].get("matchLabels"), worker_labels):
            fail(f"{file}: PodDisruptionBudget must select the shards and only them")
    policies = {np_["metadata"]["name"]: np_ for np_ in by_kind["NetworkPolicy"]}
    covered = {"shard": False, "worker": False}
    for np_ in policies.values():
        target = np_["spec"]["podSelector"].get("matchLabels")
        for component, labels in (("shard", shard_labels), ("worker", worker_labels)):
            if matches(target, labels):
                covered[component] = True
                for rule in np_["spec"].get("ingress", []):
                    for peer in rule.get("from", []):
                        peer_labels = peer.get("podSelector", {}).get("matchLabels", {})
                        grpc_rule = any(p.get("port") == "grpc" for p in rule.get("ports", []))
                        to_shard = component == "shard"
                        if grpc_rule and to_shard and matches(peer_labels, checkpointer_labels):
                            checkpointer_admitted = True
                        elif grpc_rule and not (to_shard and matches(peer_labels, worker_labels)):
                            fail(f"{file}: NetworkPolicy {np_['metadata']['name']}: gRPC "
                                 f"open to {peer_labels}, only workers and the checkpointer "
                                 "-> shards are allowed")
                        if not grpc_rule and peer_labels.get(NAME) != "prometheus":
                            fail(f"{file}: NetworkPolicy {np_['metadata']['name']}: "
                                 f"{rule.get('ports')} open to {peer_labels}")
    if not all(covered.values()):
        fail(f"{file}: NetworkPolicies cover {covered}: shards and workers both need one")
    if not checkpointer_admitted:
        fail(f"{file}: no NetworkPolicy lets the CronJob's pods ({checkpointer_labels}) reach "
             "the shards' gRPC port")


def main(argv):
    if len(argv) != 5:
        print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
        return 2
    with open(argv[1]) as f:
        rendered = json.load(f)
    server_flags = flags_of(open(argv[2]).read())
    worker_flags = flags_of(open(argv[3]).read())
    checkpoint_flags = checkpoint_flags_of(open(argv[4]).read())
    failures = []
    if len(server_flags) < 10 or len(worker_flags) < 10 or "shards" not in checkpoint_flags:
        failures.append(f"could not read the flags from --help ({len(server_flags)} server, "
                        f"{len(worker_flags)} worker, {sorted(checkpoint_flags)} checkpoint)")
    by_file = defaultdict(list)
    for entry in rendered:
        by_file[entry["file"]].append(entry["object"])
    for file, objects in sorted(by_file.items()):
        before = len(failures)
        check_overlay(file, objects, server_flags, worker_flags, checkpoint_flags,
                      failures.append)
        print(f"{'ok  ' if len(failures) == before else 'FAIL'} {file}: {len(objects)} objects")
    for f in failures:
        print(f"FAIL {f}")
    return 1 if failures or not by_file else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
