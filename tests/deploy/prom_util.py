"""Helpers shared by the deploy tests that run a real Prometheus (Python standard library only).

free_ports / consecutive_free_ports, http_get, Prometheus (HTTP API client), wait_until,
check (prints ok / FAIL and collects failures), and run_bounded: the temporary directory and
child-process cleanup every such test needs.
"""
import json
import os
import socket
import tempfile
import time
import urllib.parse
import urllib.request


def free_ports(n):
    socks = []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def consecutive_free_ports(n):
    """The first of n consecutive loopback ports that were all free a moment ago."""
    for _ in range(50):
        first, = free_ports(1)
        if first + n > 65536:
            continue
        socks = []
        try:
            for port in range(first, first + n):
                s = socket.socket()
                socks.append(s)
                s.bind(("127.0.0.1", port))
            return first
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise AssertionError(f"no {n} consecutive free ports in 50 tries")


def http_get(url, timeout=5):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.read().decode()


class Prometheus:
    def __init__(self, port):
        self.base = f"http://127.0.0.1:{port}"

    def api(self, path, **params):
        url = f"{self.base}/api/v1/{path}"
        if params:
            url += "?" + urllib.parse.urlencode(params)
        body = json.loads(http_get(url))
        if body.get("status") != "success":
            raise AssertionError(f"{path} {params}: {body}")
        return body["data"]

    def query(self, expr):
        return self.api("query", query=expr)["result"]

    def value(self, expr):
        """The single sample value of an instant query, or None when it returns nothing."""
        result = self.query(expr)
        if not result:
            return None
        if len(result) != 1:
            raise AssertionError(f"{expr}: expected one series, got {result}")
        return float(result[0]["value"][1])


def wait_until(what, predicate, deadline):
    last = None
    while time.monotonic() < deadline:
        try:
            if predicate():
                return
        except Exception as e:  # not up yet
            last = e
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what} (last error: {last})")


def check(failures, ok, message):
    print(("ok   " if ok else "FAIL ") + message)
    if not ok:
        failures.append(message)


def run_bounded(run, args, prefix, tools):
    """Checks that `tools` are executable, then calls run(args, tmp, procs) in a temporary
    directory; kills whatever is left in `procs` (name -> Popen) afterwards. Returns the exit
    code: 1 if a tool is missing or a check failed."""
    for tool in tools:
        if not os.access(tool, os.X_OK):
            print(f"FAIL {tool} not found: install the Debian package prometheus "
                  "(scripts/setup.sh)")
            return 1
    started = time.monotonic()
    procs = {}
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        try:
            failures = run(args, tmp, procs)
        finally:
            for p in procs.values():
                if p.poll() is None:
                    p.kill()
                    p.wait()
    print(f"{len(failures)} failed checks, {time.monotonic() - started:.1f} s")
    return 1 if failures else 0
