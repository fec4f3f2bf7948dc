#!/usr/bin/python3
"""`dion` finds its resources wherever it runs from (ctest deploy_install_layout).

  install_layout_test.py --build_dir DIR --dion BIN --source_root DIR

  1. `cmake --install BUILD_DIR --prefix SCRATCH/prefix` lays out bin/dion, bin/dion-server,
     bin/dion-worker and share/dion-ps/prometheus/rules/dion-alerts.yml;
  2. the installed `dion local --dry_run --prometheus_config=...` starts the installed
     dion-server and dion-worker and names the installed alert rules;
  3. a copy of the built `dion` in a directory outside the build and source trees names the
     alert rules of the source tree it was built from.
`promtool check config` accepts each written configuration when promtool is installed.
Python 3 standard library only; cheap (no second build, no training).
"""
import argparse
import os
import shutil
import subprocess
import sys
import tempfile

RULES = "prometheus/rules/dion-alerts.yml"


def dry_run(dion, config, extra=()):
    """Runs `dion local --dry_run` writing `config`; returns (stdout, config text)."""
    run = subprocess.run([dion, "local", "--dry_run", "--metrics_base_port=9500",
                          f"--prometheus_config={config}", "--lr_schedule_samples=720000",
                          *extra], capture_output=True, text=True, timeout=60)
    if run.returncode != 0:
        raise AssertionError(f"{dion} local --dry_run: exit status {run.returncode}\n"
                             f"{run.stdout}{run.stderr}")
    with open(config) as f:
        return run.stdout, f.read()


def check(failures, condition, what, detail=""):
    """Prints the outcome; `detail` only when it failed."""
    print(f"{'ok  ' if condition else 'FAIL'} {what}" + ("" if condition else f"\n{detail}"))
    if not condition:
        failures.append(what)


def promtool_accepts(failures, config):
    promtool = shutil.which("promtool")
    if promtool:
        run = subprocess.run([promtool, "check", "config", config], capture_output=True,
                             text=True, timeout=60)
        check(failures, run.returncode == 0, f"promtool check config {config}",
              run.stdout + run.stderr)


def main():
    parser = argparse.ArgumentParser()
    for name in ("--build_dir", "--dion", "--source_root"):
        parser.add_argument(name, required=True)
    args = parser.parse_args()
    failures = []
    with tempfile.TemporaryDirectory(prefix="dion-install-") as tmp:
        prefix = os.path.join(tmp, "prefix")
        install = subprocess.run(["cmake", "--install", args.build_dir, "--prefix", prefix],
                                 capture_output=True, text=True, timeout=120)
        check(failures, install.returncode == 0, f"cmake --install {args.build_dir}",
              install.stdout[-2000:] + install.stderr[-2000:])
        installed_rules = os.path.join(prefix, "share/dion-ps", RULES)
        for path in ("bin/dion", "bin/dion-server", "bin/dion-worker"):
            check(failures, os.access(os.path.join(prefix, path), os.X_OK),
                  f"{path} installed and executable")
        check(failures, os.path.isfile(installed_rules), f"share/dion-ps/{RULES} installed")
        if failures:
            return 1

        config = os.path.join(tmp, "installed.yml")
        commands, text = dry_run(os.path.join(prefix, "bin/dion"), config)
        check(failures, f'  - "{installed_rules}"' in text,
              "the installed dion names the installed rules", text)
        check(failures, f"shard 0: {prefix}/bin/dion-server " in commands and
              f"worker 0: {prefix}/bin/dion-worker " in commands,
              "the installed dion starts the installed binaries", commands)
        promtool_accepts(failures, config)

        elsewhere = os.path.join(tmp, "elsewhere")
        os.makedirs(elsewhere)
        copy = shutil.copy(args.dion, os.path.join(elsewhere, "dion"))
        config = os.path.join(tmp, "elsewhere.yml")
        _, text = dry_run(copy, config, [f"--server_binary={prefix}/bin/dion-server",
                                         f"--worker_binary={prefix}/bin/dion-worker"])
        source_rules = os.path.join(os.path.abspath(args.source_root), "deploy", RULES)
        check(failures, f'  - "{source_rules}"' in text,
              f"a copy of dion outside the build tree names {source_rules}", text)
        promtool_accepts(failures, config)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
