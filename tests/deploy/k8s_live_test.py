#!/usr/bin/python3
"""The TLS and token wiring of deploy/k8s, run for real on 127.0.0.1 (ctest deploy_k8s_live).

  k8s_live_test.py --server BIN --worker BIN --dion BIN --source_root DIR

Renders deploy/k8s/overlays/small with and without components/mtls (kubectl kustomize, then
deploy/tools/validate_k8s.mjs --json), makes the Secrets' files with
deploy/tools/make_secrets.sh and lays them out as the kubelet mounts them (the same paths,
under a scratch directory). Then, per rendering, with the containers' own args and probe
commands (paths re-rooted there, addresses and ports on 127.0.0.1, one shard):
  1. dion-server starts with the StatefulSet's args, and the startup probe's command passes;
  2. dion-worker with the Job's args is refused before the Job's register container (its
     initContainer, admin token) has registered the table, and then trains a few steps of the
     synthetic task;
  3. `dion checkpoint` with the CronJob's args writes a coordinated checkpoint;
  4. the checkpoint is refused with the worker's token instead of the admin token, and
     without TLS; with client certificates, also without the client certificate;
  5. rotation as docs/deploy.md describes it: the worker token's line is removed from the
     mounted tokens file by an atomic swap of the directory (as the kubelet does), and a worker
     with that token is then refused, without a restart of the shard.
Skips (exit 77) without kubectl or the validator, as deploy_k8s does. ~45 s.
"""
import argparse
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time

SHARD_INDEX, NUM_SHARDS = "0", "1"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def render(root, tmp, mtls):
    """The rendered objects of overlays/small (+ components/mtls), {kind: object}."""
    kubectl = os.environ.get("KUBECTL", "kubectl")
    name = "small-mtls" if mtls else "small"
    target = os.path.join(root, "deploy/k8s/overlays/small")
    if mtls:
        target = os.path.join(tmp, name)
        os.makedirs(target)
        rel = os.path.relpath(os.path.join(root, "deploy/k8s"), target)
        with open(os.path.join(target, "kustomization.yaml"), "w") as f:
            f.write("apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n"
                    f"resources: [{rel}/overlays/small]\ncomponents: [{rel}/components/mtls]\n")
    rendered = subprocess.run([kubectl, "kustomize", target], capture_output=True, text=True,
                              check=True, timeout=60).stdout
    with open(os.path.join(tmp, name + ".yaml"), "w") as f:
        f.write(rendered)
    out = os.path.join(tmp, name + ".json")
    subprocess.run(["node", os.path.join(root, "deploy/tools/validate_k8s.mjs"), "--json", out,
                    os.path.join(tmp, name + ".yaml")], check=True, capture_output=True,
                   timeout=60)
    with open(out) as f:
        return {e["object"]["kind"]: e["object"] for e in json.load(f)}


def container(obj, init=False):
    """(pod spec, its first container, or first initContainer)."""
    spec = obj["spec"]
    pod = (spec["jobTemplate"]["spec"] if obj["kind"] == "CronJob" else spec)["template"]["spec"]
    return pod, pod["initContainers" if init else "containers"][0]


def lay_out_mounts(pod, c, secrets_dir, mount_root):
    """Copies each mounted Secret key to mount_root + mountPath/path, as the kubelet would."""
    files = {"dion-tls": {"tls.crt": "tls.crt", "tls.key": "tls.key", "ca.crt": "ca.crt"},
             "dion-client-tls": {"tls.crt": "client.crt", "tls.key": "client.key"},
             "dion-tokens": {k: k for k in ("tokens", "worker-token", "admin-token",
                                            "reader-token", "peer-token")}}
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    for m in c.get("volumeMounts", []):
        secret = volumes.get(m["name"], {}).get("secret")  # not a PVC template, an emptyDir
        if not secret:
            continue
        target = mount_root + m["mountPath"]
        os.makedirs(target, exist_ok=True)
        for item in secret["items"]:
            shutil.copy(os.path.join(secrets_dir, files[secret["secretName"]][item["key"]]),
                        os.path.join(target, item["path"]))


def resolve(args, env, mount_root, replace):
    """$(VAR) from env, /etc/dion re-rooted, --name=value replaced per `replace` (None: the
    argument is left out)."""
    out = []
    for a in args:
        a = re.sub(r"\$\((\w+)\)", lambda m: env[m.group(1)], a)
        a = a.replace("=/etc/dion/", f"={mount_root}/etc/dion/")
        name = a.split("=", 1)[0]
        if name not in replace:
            out.append(a)
        elif replace[name] is not None:
            out.append(replace[name])
    return out


class Run:
    """One shard, its workers and checkpoint runs from one rendering; each kind of pod has its
    own mount root (mounts[kind]), as each pod has its own view of the Secrets."""

    def __init__(self, root, binaries, objects, secrets_dir, tmp, fail):
        self.root, self.binaries, self.objects, self.tmp, self.fail = \
            root, binaries, objects, tmp, fail
        self.failed = False
        # "register": the Job's initContainer.
        self.mounts = {kind: os.path.join(tmp, "mounts", kind)
                       for kind in ("StatefulSet", "Job", "CronJob", "register")}
        for kind, mount_root in self.mounts.items():
            lay_out_mounts(*self.container(kind), secrets_dir, mount_root)
        self.shards = f"127.0.0.1:{free_port()}"
        self.env = dict(objects["ConfigMap"]["data"], DION_SHARD_INDEX=SHARD_INDEX,
                        DION_NUM_SHARDS=NUM_SHARDS, DION_WORKER_INDEX="0", DION_NUM_WORKERS="1",
                        DION_SHARDS=self.shards)

    def container(self, kind):
        if kind == "register":
            return container(self.objects["Job"], init=True)
        return container(self.objects[kind])

    def command(self, kind, replace):
        _, c = self.container(kind)
        return resolve(c.get("args", []), self.env, self.mounts[kind], replace)

    def run(self, what, argv, expect_ok, expect_text="", timeout=60):
        """Runs argv; fails unless it exits 0 exactly when expect_ok, printing expect_text."""
        p = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
        ok = (p.returncode == 0) == expect_ok and expect_text in p.stdout + p.stderr
        tail = (p.stdout + p.stderr).strip().splitlines()[-1:] or [""]
        print(f"{'ok  ' if ok else 'FAIL'} {what}: exit {p.returncode}: {tail[0][:200]}")
        if not ok:
            self.failed = True
            self.fail(f"{what}: exit {p.returncode}, expected "
                      f"{'0' if expect_ok else 'non-zero'} and {expect_text!r}\n{p.stdout}\n{p.stderr}")
        return p

    def start_shard(self):
        args = self.command("StatefulSet", {
            "--listen": f"--listen={self.shards}",
            "--metrics_listen": f"--metrics_listen=127.0.0.1:{free_port()}",
            "--checkpoint_dir": f"--checkpoint_dir={os.path.join(self.tmp, 'checkpoints')}",
            "--checkpoint_interval": "--checkpoint_interval=0"})
        self.log = open(os.path.join(self.tmp, "server.log"), "w")
        return subprocess.Popen([self.binaries["server"], *args], stdout=self.log,
                                stderr=subprocess.STDOUT)

    def probe(self):
        _, c = container(self.objects["StatefulSet"])
        mount_root = self.mounts["StatefulSet"]
        command = [a.replace("=/etc/dion/", f"={mount_root}/etc/dion/")
                   for a in c["startupProbe"]["exec"]["command"]]
        # The image's copy of the script is this one (deploy/docker/Dockerfile).
        command[:3] = ["/usr/bin/python3",
                       os.path.join(self.root, "deploy/image/grpc_health_check.py"), self.shards]
        return self.run("startup probe (the manifest's command)", command + ["--wait=30"], True)

    def register(self):
        args = self.command("register", {})
        return self.run("register container (the Job's initContainer)",
                        [self.binaries["worker"], *args, "--dataset=synthetic"], True)

    def worker(self, what, expect_ok, expect_text=""):
        """The Job's worker for 20 steps; one that is refused gives up after 8 s (several
        attempts, so that a slow TLS handshake on a loaded machine is not the last error)."""
        args = self.command("Job", {
            "--metrics_listen": f"--metrics_listen=127.0.0.1:{free_port()}",
            "--epochs": "--epochs=1",
            "--give_up_after": f"--give_up_after={'30s' if expect_ok else '8s'}"})
        return self.run(what, [self.binaries["worker"], *args, "--dataset=synthetic",
                               "--max_steps=20"], expect_ok, expect_text)

    def checkpoint(self, what, expect_ok, expect_text="", replace=None):
        args = self.command("CronJob", dict({"--deadline": "--deadline=30s"}, **(replace or {})))
        return self.run(what, [self.binaries["dion"], "checkpoint", *args], expect_ok,
                        expect_text)


def swap_tokens(mount_dir, drop_token):
    """Rewrites the tokens file without the line of drop_token, the way the kubelet updates a
    Secret volume: a new directory, then an atomic rename over the old one's symlink."""
    current = os.path.join(mount_dir, "tokens")
    with open(current) as f:
        lines = [line for line in f if not line.startswith(drop_token + " ")]
    staged = mount_dir + ".new"
    os.makedirs(staged)
    with open(os.path.join(staged, "tokens"), "w") as f:
        f.writelines(lines)
    os.rename(mount_dir, mount_dir + ".old")
    os.rename(staged, mount_dir)


def exercise(run, mtls, fail):
    shard = run.start_shard()
    try:
        time.sleep(0.5)
        if shard.poll() is not None:  # e.g. a flag this dion-server does not know
            with open(os.path.join(run.tmp, "server.log")) as f:
                fail(f"dion-server with the StatefulSet's args exited {shard.returncode}:\n"
                     f"{f.read()[-2000:]}")
            return
        run.probe()
        run.worker("worker before the table is registered", False, "registered")
        run.register()
        run.worker("worker with the Job's args", True)
        run.checkpoint("dion checkpoint with the CronJob's args", True)
        worker_token = f"{run.mounts['Job']}/etc/dion/tokens/worker-token"
        run.checkpoint("dion checkpoint with the worker token", False, "PERMISSION_DENIED",
                       {"--token_file": f"--token_file={worker_token}"})
        run.checkpoint("dion checkpoint without TLS", False, "",
                       {"--tls_ca_file": None, "--tls_server_name": None, "--token_file": None,
                        "--tls_cert_file": None, "--tls_key_file": None})
        if mtls:
            run.checkpoint("dion checkpoint without a client certificate", False, "",
                           {"--tls_cert_file": None, "--tls_key_file": None})
        with open(worker_token) as f:
            token = f.read().strip()
        swap_tokens(f"{run.mounts['StatefulSet']}/etc/dion/tokens", token)
        time.sleep(2)  # the shard checks the file at most once per second, on calls
        run.worker("worker after its token was removed from the shard's file", False,
                   "UNAUTHENTICATED")
        if shard.poll() is not None:
            fail(f"dion-server exited with {shard.returncode} during the run")
    finally:
        shard.terminate()
        shard.wait(timeout=60)
        if run.failed:
            with open(os.path.join(run.tmp, "server.log")) as f:
                print(f"---- dion-server's log:\n{f.read()[-3000:]}")


def main():
    parser = argparse.ArgumentParser()
    for name in ("--server", "--worker", "--dion", "--source_root"):
        parser.add_argument(name, required=True)
    args = parser.parse_args()
    if not shutil.which(os.environ.get("KUBECTL", "kubectl")) or not shutil.which("node"):
        print("SKIP kubectl or node not found (see tests/deploy/k8s_check.sh)")
        return 77
    binaries = {"server": args.server, "worker": args.worker, "dion": args.dion}
    failures = []
    for mtls in (False, True):
        with tempfile.TemporaryDirectory() as tmp:
            print(f"---- overlays/small{' + components/mtls' if mtls else ''}")
            secrets = os.path.join(tmp, "secrets")
            subprocess.run(["bash", os.path.join(args.source_root, "deploy/tools/make_secrets.sh"),
                            secrets], check=True, capture_output=True, timeout=60)
            objects = render(args.source_root, tmp, mtls)
            run = Run(args.source_root, binaries, objects, secrets, tmp, failures.append)
            exercise(run, mtls, failures.append)
    for f in failures:
        print(f"FAIL {f}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
