#!/usr/bin/python3
"""dion-ps-specific checks of rendered Kubernetes overlays (part of ctest deploy_k8s).

  k8s_consistency.py RENDERED.json SERVER_HELP.txt WORKER_HELP.txt CHECKPOINT_HELP.txt \
      CERT_MANAGER.json

RENDERED.json: the --json output of deploy/tools/validate_k8s.mjs for the overlays
(schema validity is checked there). *_HELP.txt: the --helpfull output of dion-server and
dion-worker and the --help output of `dion checkpoint`, for their flag names.
CERT_MANAGER.json: the same output as RENDERED.json for deploy/k8s/cert-manager. Per rendered file (one overlay), checks what the schemas cannot know:
  - the shard count agrees everywhere: StatefulSet replicas == DION_NUM_SHARDS == number of
    DION_SHARDS addresses, which name dion-ps-<i>.<serviceName>:<grpc port> in index order;
  - the worker count agrees: Job completions == parallelism == DION_NUM_WORKERS, Indexed;
  - the shards' learning-rate cooldown spans the run: DION_LR_SCHEDULE_SAMPLES == DION_EPOCHS x
    the Fashion-MNIST training set;
  - every --flag in the containers' args is a flag of the binary, every $(VAR) is defined
    (ConfigMap or env), every ConfigMap key is used by some container;
  - security: pod runAsNonRoot with a non-zero uid; each container readOnlyRootFilesystem,
    allowPrivilegeEscalation false, capabilities drop ALL, resource requests and limits;
  - TLS and tokens (SECRET_FILES): the shards serve TLS with tls.crt and tls.key of the Secret
    dion-tls and admit the tokens of the Secret dion-tokens; workers and the CronJob trust its
    ca.crt, check the certificate for the headless Service's name (--tls_server_name) and send
    the worker and the admin token (the register container: the admin token). Every such flag names a file of a Secret
    volume mounted read-only as a whole directory (no subPath: the kubelet then updates it in
    place when the Secret changes), readable by the pod's group only; a pod mounts exactly
    the keys it needs (no worker sees the shards' key or another role's token); no Secret
    object is rendered (applying one would overwrite the real Secrets). With client
    certificates (deploy/k8s/components/mtls: the shards have --tls_client_ca_file), all
    or nothing: the workers and the CronJob present the certificate of the Secret
    dion-client-tls and the shards' probes present the shards' own (MTLS_FILES, PROBE_MTLS);
  - shards have startup, readiness and liveness probes that run
    deploy/image/grpc_health_check.py over TLS against their gRPC port, trusting the mounted
    ca.crt and checking the certificate for the headless Service's name;
  - the worker pods' one initContainer (the register container) registers the model with the
    admin token before the worker trains with a worker token: `--mode=evaluate` and every
    argument of the worker but its per-process ones (PER_PROCESS_FLAGS), so that both define
    the same model;
  - the CronJob dion-checkpoint runs `dion checkpoint` (from the worker image) against
    DION_SHARDS on a valid 5-field schedule, one run at a time (concurrencyPolicy Forbid),
    with no retry within a run, and the NetworkPolicy lets it reach the shards' gRPC port;
  - selectors of the Services, the PodDisruptionBudget and the NetworkPolicies match the pods
    they are meant for; pods carry the labels and the "metrics" port name that
    deploy/prometheus/prometheus.yml discovers; all namespaced objects are in one namespace.
And for the cert-manager example: its Certificate writes the Secret dion-tls, is valid for the
headless Service's name of every overlay (which workers and the CronJob check with
--tls_server_name), for server and client auth, and is issued by a CA Issuer whose CA
certificate the example also makes; the client Certificate dion-client-tls comes from the same
issuer, for client auth.
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
    """The flags `dion checkpoint --help` lists, one or several a line ("  --a, --b  text")."""
    flags = set()
    for m in re.finditer(r"^\s+(--\w+(?:,\s*--\w+)*)(?:\s|$)", help_text, re.M):
        flags.update(re.findall(r"--(\w+)", m.group(1)))
    return flags


# What each component's args must point at: flag -> (Secret, key) of a mounted Secret volume.
# These are also all the Secret keys the component's pods may mount.
SECRET_FILES = {
    "shard": {"tls_cert_file": ("dion-tls", "tls.crt"), "tls_key_file": ("dion-tls", "tls.key"),
              "auth_tokens_file": ("dion-tokens", "tokens"),
              "peer_tls_ca_file": ("dion-tls", "ca.crt"),
              "peer_token_file": ("dion-tokens", "peer-token")},
    "worker": {"tls_ca_file": ("dion-tls", "ca.crt"),
               "token_file": ("dion-tokens", "worker-token")},
    "checkpointer": {"tls_ca_file": ("dion-tls", "ca.crt"),
                     "token_file": ("dion-tokens", "admin-token")},
    "registrar": {"tls_ca_file": ("dion-tls", "ca.crt"),
                  "token_file": ("dion-tokens", "admin-token")},
}
# With client certificates (the shards' args have --tls_client_ca_file, from
# deploy/k8s/components/mtls), in addition: the clients' own certificate.
MTLS_FILES = {
    "shard": {"tls_client_ca_file": ("dion-tls", "ca.crt")},
    "worker": {"tls_cert_file": ("dion-client-tls", "tls.crt"),
               "tls_key_file": ("dion-client-tls", "tls.key")},
    "checkpointer": {"tls_cert_file": ("dion-client-tls", "tls.crt"),
                     "tls_key_file": ("dion-client-tls", "tls.key")},
    "registrar": {"tls_cert_file": ("dion-client-tls", "tls.crt"),
                  "tls_key_file": ("dion-client-tls", "tls.key")},
}
# ... and the shards' probe presents the shards' certificate.
PROBE_MTLS = {"--cert": ("dion-tls", "tls.crt"), "--key": ("dion-tls", "tls.key")}
# Clients check the shards' one certificate for the headless Service's name, not for the
# shard's host name (gRPC accepts no wildcard *.dion-ps over a one-label name).
CLIENT_COMPONENTS = ("worker", "checkpointer", "registrar")
# The shards' probes also read the CA certificate.
PROBE_CA = ("dion-tls", "ca.crt")
PROBE_SCRIPT = "/usr/local/bin/grpc_health_check.py"


def secret_files(ps, c):
    """{path in the container: (Secret, key, mode, problem or None)} of the container's Secret
    volume mounts."""
    volumes = {v["name"]: v for v in ps.get("volumes", [])}
    found = {}
    for m in c.get("volumeMounts", []):
        secret = volumes.get(m["name"], {}).get("secret")
        if secret is None:
            continue
        problem = None
        if m.get("subPath") or m.get("subPathExpr"):
            problem = "mounted with subPath (the kubelet never updates such a file)"
        elif m.get("readOnly") is not True:
            problem = "not mounted readOnly"
        items = secret.get("items")
        if not items:
            problem = problem or "mounts every key of the Secret (list the needed ones in items)"
            items = []
        for item in items:
            mode = item.get("mode", secret.get("defaultMode", 0o644))
            found[f"{m['mountPath'].rstrip('/')}/{item['path']}"] = \
                (secret["secretName"], item["key"], mode, problem)
    return found


def check_secret_mounts(where, ps, c, component, service, mtls, fail):
    """The flags of SECRET_FILES[component] (and MTLS_FILES with client certificates) name
    mounted Secret files, and nothing else of a Secret is mounted."""
    files = secret_files(ps, c)
    args = dict(re.match(r"--(\w+)=(.*)", a).groups() for a in c.get("args", [])
                if re.match(r"--(\w+)=", a))
    wanted = dict(SECRET_FILES[component], **(MTLS_FILES[component] if mtls else {}))
    if component == "shard":
        probe_files = {"--ca": PROBE_CA, **(PROBE_MTLS if mtls else {})}
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            command = c.get(probe, {}).get("exec", {}).get("command", [])
            for option, secret_key in probe_files.items():
                name = f"{probe} {option}"
                wanted[name] = secret_key
                args[name] = next((a.split("=", 1)[1] for a in command
                                   if a.startswith(option + "=")), None)
    group = ps.get("securityContext", {}).get("fsGroup")
    for flag, (secret, key) in wanted.items():
        path = args.get(flag)
        got = files.get(path)
        shown = flag if " " in flag else "--" + flag  # a probe's option is "<probe> --<name>"
        if path is None:
            fail(f"{where}: {shown} is not set; it must name {key} of the Secret {secret}")
        elif got is None or got[:2] != (secret, key):
            fail(f"{where}: {shown}={path} is not {key} of the Secret {secret} "
                 f"(mounted Secret files: {sorted(files)})")
        elif got[3]:
            fail(f"{where}: {shown}={path}: {got[3]}")
        elif got[2] & 0o007 or not (got[2] & 0o040 and group):
            fail(f"{where}: {path} has mode {got[2]:#o} with fsGroup {group}: it must be "
                 "readable by the pod's fsGroup and by no other user")
    if component == "shard" and (args.get("peer_tls_server_name") != service or
                                 args.get("peer_addresses") != "$(DION_SHARDS)"):
        fail(f"{where}: --peer_addresses={args.get('peer_addresses')} and "
             f"--peer_tls_server_name={args.get('peer_tls_server_name')}: must be $(DION_SHARDS) "
             f"(every shard, in index order) and {service}, the name of the shards' certificate")
    if component in CLIENT_COMPONENTS and args.get("tls_server_name") != service:
        fail(f"{where}: --tls_server_name={args.get('tls_server_name')}: must be the headless "
             f"Service's name {service}, the name of the shards' certificate")
    extra = {(s_, k) for s_, k, _, _ in files.values()} - set(wanted.values())
    if extra:
        fail(f"{where}: mounts Secret keys it does not use: {sorted(extra)}")


def check_probes(where, c, grpc_port, service, fail):
    """Exec probes: grpc_health_check.py over TLS to the gRPC port, checking the certificate
    for the headless Service's name (the kubelet's native grpc probe cannot speak TLS)."""
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        command = c.get(probe, {}).get("exec", {}).get("command", [])
        if not (len(command) >= 3 and command[1] == PROBE_SCRIPT and
                command[2] == f"127.0.0.1:{grpc_port}" and
                any(a.startswith("--ca=") for a in command) and
                f"--server_name={service}" in command):
            fail(f"{where}: {probe} must run {PROBE_SCRIPT} 127.0.0.1:{grpc_port} with --ca and "
                 f"--server_name={service}, runs {command}")
        elif c[probe].get("timeoutSeconds", 1) < 2:
            fail(f"{where}: {probe} timeoutSeconds must leave the probe's Python time to start")


def check_cert_manager(objects, overlays, fail):
    """The example's Certificate for the Secret dion-tls covers every overlay's Service name."""
    certs = [o for o in objects if o["kind"] == "Certificate"]
    issuers = {o["metadata"]["name"]: o for o in objects if o["kind"] == "Issuer"}
    tls = [c for c in certs if c["spec"].get("secretName") == "dion-tls"]
    if len(tls) != 1:
        fail(f"cert-manager: expected one Certificate for the Secret dion-tls, found {len(tls)}")
        return
    spec = tls[0]["spec"]
    names = spec.get("dnsNames", [])
    for file, service in overlays.items():
        if service not in names:
            fail(f"cert-manager: Certificate dion-tls (dnsNames {names}) is not valid for "
                 f"{service}, the name clients check ({file})")
    if not {"server auth", "client auth"} <= set(spec.get("usages", [])):
        fail(f"cert-manager: Certificate dion-tls usages {spec.get('usages')} need server auth "
             "and client auth")
    issuer = issuers.get(spec["issuerRef"]["name"])
    ca_secret = (issuer or {}).get("spec", {}).get("ca", {}).get("secretName")
    if spec["issuerRef"].get("kind", "Issuer") != "Issuer" or ca_secret is None or \
            not any(c["spec"].get("isCA") and c["spec"].get("secretName") == ca_secret
                    for c in certs):
        fail(f"cert-manager: Certificate dion-tls must be issued by a CA Issuer of the example "
             f"whose CA Certificate it makes (issuerRef {spec['issuerRef']})")
    client = [c for c in certs if c["spec"].get("secretName") == "dion-client-tls"]
    if len(client) != 1 or "client auth" not in client[0]["spec"].get("usages", []) or \
            client[0]["spec"]["issuerRef"] != spec["issuerRef"]:
        fail("cert-manager: expected one Certificate for the Secret dion-client-tls (the mTLS "
             "component's), for client auth, from the issuer of dion-tls")
    print(f"ok   cert-manager: Certificate dion-tls valid for {names}, dion-client-tls")


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


def check_container(cw, ps, c, role, flags, data, fail):
    """Security context, resources, metrics port, flags and $(VAR)s of one container; returns
    the ConfigMap keys it uses."""
    used = set()
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
    if role in ("shard", "worker") and \
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
                used.add(var)
            else:
                fail(f"{cw}: $({var}) in {arg!r} is defined nowhere")
    return used


# Worker flags that differ between the register container and the worker it registers for.
PER_PROCESS_FLAGS = {"worker_index", "num_workers", "epochs", "metrics_listen", "token_file",
                     "worker_id", "mode"}


def check_registrar(where, ps, fail):
    """One register container, `--mode=evaluate`, with the worker's every other argument (so it
    registers the same model: an overlay's model flag must reach both)."""
    init = ps.get("initContainers", [])
    if len(init) != 1:
        fail(f"{where}: expected one register initContainer, found {len(init)}")
        return
    worker_args, register_args = ps["containers"][0].get("args", []), init[0].get("args", [])
    if "--mode=evaluate" not in register_args:
        fail(f"{where}: the register container must run --mode=evaluate, runs {register_args}")
    missing = [a for a in worker_args
               if re.match(r"--(\w+)", a).group(1) not in PER_PROCESS_FLAGS and
               a not in register_args]
    if missing:
        fail(f"{where}: the register container lacks the worker's {missing}: it would register "
             "another model than the workers train")


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
        return None
    data = config.get("data", {})
    if by_kind["Secret"]:
        fail(f"{file}: renders Secrets {[o['metadata']['name'] for o in by_kind['Secret']]}: "
             "applying them would overwrite the real dion-tls and dion-tokens")

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

    # Client certificates are all or nothing: the shards require them exactly when the clients
    # have one (check_secret_mounts then expects MTLS_FILES of every component).
    mtls = any(a.startswith("--tls_client_ca_file=")
               for a in pod_spec(sts)["containers"][0].get("args", []))
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
        containers = [(c, component) for c in ps["containers"]]
        if obj is job:
            containers += [(c, "registrar") for c in ps.get("initContainers", [])]
            check_registrar(where, ps, fail)
        elif ps.get("initContainers"):
            fail(f"{where}: has initContainers; only the workers' register container is expected")
        for c, role in containers:
            cw = f"{where} container {c['name']}"
            used_keys |= check_container(cw, ps, c, role, flags, data, fail)
            check_secret_mounts(cw, ps, c, role, sts["spec"]["serviceName"], mtls, fail)
            if role == "shard":
                check_probes(cw, c, grpc_port, sts["spec"]["serviceName"], fail)
    unused = set(data) - used_keys
    if unused:
        fail(f"{file}: ConfigMap keys used by no container: {sorted(unused)}")

    # Selectors of Services, PDB, NetworkPolicies.
    shard_labels = template(sts)["metadata"]["labels"]
    worker_labels = template(job)["metadata"]["labels"]
    checkpointer_labels = template(cron)["metadata"]["labels"]
    checkpointer_admitted = False
    shards_admitted = False  # each other, for the reductions of row-split parameters
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
                        elif grpc_rule and to_shard and matches(peer_labels, shard_labels):
                            shards_admitted = True
                        elif grpc_rule and not (to_shard and matches(peer_labels, worker_labels)):
                            fail(f"{file}: NetworkPolicy {np_['metadata']['name']}: gRPC "
                                 f"open to {peer_labels}, only workers, the checkpointer and "
                                 "shards -> shards are allowed")
                        if not grpc_rule and peer_labels.get(NAME) != "prometheus":
                            fail(f"{file}: NetworkPolicy {np_['metadata']['name']}: "
                                 f"{rule.get('ports')} open to {peer_labels}")
    if not all(covered.values()):
        fail(f"{file}: NetworkPolicies cover {covered}: shards and workers both need one")
    if not shards_admitted:
        fail(f"{file}: no NetworkPolicy lets the shards ({shard_labels}) reach each other's "
             "gRPC port (their reductions of row-split parameters)")
    if not checkpointer_admitted:
        fail(f"{file}: no NetworkPolicy lets the CronJob's pods ({checkpointer_labels}) reach "
             "the shards' gRPC port")
    return sts["spec"]["serviceName"]


def main(argv):
    if len(argv) != 6:
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
    shard_names = {}
    for file, objects in sorted(by_file.items()):
        before = len(failures)
        service = check_overlay(file, objects, server_flags, worker_flags, checkpoint_flags,
                              failures.append)
        if service:
            shard_names[file] = service
        print(f"{'ok  ' if len(failures) == before else 'FAIL'} {file}: {len(objects)} objects")
    with open(argv[5]) as f:
        check_cert_manager([e["object"] for e in json.load(f)], shard_names, failures.append)
    for f in failures:
        print(f"FAIL {f}")
    return 1 if failures or not by_file else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
