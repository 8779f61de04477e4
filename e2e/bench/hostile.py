#!/usr/bin/env python3
"""Memory of thaw's components under hostile clients (docs/benchmarks.md).

Runs on loopback only:

* activator (static functions, no cluster) backed by `testfn`:
  - 10,000 idle client connections: RSS, and another client's requests;
  - every Function's queue full: 10 Functions of concurrency 1 held busy by
    one sleeping request each, then requests until the activator-wide bound
    (--max-queued-requests, 10,000) answers 503: RSS, and the 503s counted;
* operator (against the cluster of $KUBECONFIG, watching an empty namespace):
  - 10,000 slowloris connections (headers dripped a byte at a time): RSS,
    and an activator report still accepted meanwhile.

Usage: e2e/bench/hostile.py [--target-dir target/release] [--testfn PATH] [--skip-operator]
"""

import argparse
import json
import os
import resource
import socket
import subprocess
import sys
import time
import urllib.request

CONNECTIONS = 10_000
FUNCTIONS = 10


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def wait_http(url, timeout=30):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1) as r:
                if r.status == 200:
                    return
        except Exception:
            time.sleep(0.05)
    raise SystemExit(f"{url} did not answer within {timeout}s")


def request(port, path, timeout=10, host="localhost"):
    """One GET on a new connection: (status, seconds)."""
    start = time.time()
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    status = int(data.split(b" ", 2)[1]) if data.startswith(b"HTTP/") else 0
    return status, time.time() - start


def open_idle(port, n):
    conns = []
    for _ in range(n):
        s = socket.socket()
        s.setblocking(True)
        s.connect(("127.0.0.1", port))
        conns.append(s)
    return conns


def activator(target, testfn_binary, results):
    testfn_port = free_port()
    http_port, admin_port = free_port(), free_port()
    testfn = subprocess.Popen(
        [testfn_binary],
        env={**os.environ, "PORT": str(testfn_port)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    args = [
        os.path.join(target, "thaw"), "activator",
        f"--http-addr=127.0.0.1:{http_port}",
        f"--admin-addr=127.0.0.1:{admin_port}",
        "--max-queued-requests=10000",
    ]
    for i in range(FUNCTIONS):
        args.append(f"--static-function=bench/f{i}=127.0.0.1:{testfn_port},concurrency=1")
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "RUST_LOG": "warn"})
    try:
        wait_http(f"http://127.0.0.1:{admin_port}/readyz")
        wait_http(f"http://127.0.0.1:{testfn_port}/healthz")
        results["activator_idle_rss_mib"] = rss_mib(proc.pid)

        conns = open_idle(http_port, CONNECTIONS)
        time.sleep(2)
        results["activator_10k_idle_connections_rss_mib"] = rss_mib(proc.pid)
        latencies = []
        for _ in range(20):
            status, seconds = request(http_port, "/fn/bench/f0/")
            assert status == 200, status
            latencies.append(seconds)
        latencies.sort()
        results["activator_request_p50_ms_with_10k_idle"] = round(latencies[10] * 1000, 2)
        for s in conns:
            s.close()
        time.sleep(1)

        # Every Function's queue full: one sleeping request per Function
        # holds its only slot, the rest wait until the activator-wide bound.
        held = []
        for i in range(FUNCTIONS):
            s = socket.create_connection(("127.0.0.1", http_port))
            s.sendall(f"GET /fn/bench/f{i}/?sleep=120000 HTTP/1.1\r\nHost: localhost\r\n\r\n".encode())
            held.append(s)
        time.sleep(0.5)
        extra = 500
        for n in range(CONNECTIONS + extra):
            s = socket.create_connection(("127.0.0.1", http_port))
            s.sendall(f"GET /fn/bench/f{n % FUNCTIONS}/ HTTP/1.1\r\nHost: localhost\r\n\r\n".encode())
            held.append(s)
        time.sleep(3)
        results["activator_all_queues_full_rss_mib"] = rss_mib(proc.pid)
        refused = 0
        for s in held[FUNCTIONS:]:
            s.setblocking(False)
            try:
                data = s.recv(4096)
                if data.startswith(b"HTTP/1.1 503") and b"retry-after" in data.lower():
                    refused += 1
            except BlockingIOError:
                pass
        results["activator_queue_refused_503"] = refused
        results["activator_queued"] = CONNECTIONS + extra - refused
        for s in held:
            s.close()
    finally:
        proc.terminate()
        testfn.terminate()
        proc.wait(timeout=20)
        testfn.wait(timeout=20)


def operator(target, results):
    kubeconfig = os.environ.get("KUBECONFIG")
    if not kubeconfig:
        raise SystemExit("KUBECONFIG must name the cluster the operator runs against")
    ns = f"bench-hostile-{os.getpid()}"
    kubectl = os.environ.get("KUBECTL", "kubectl")
    subprocess.run([kubectl, "create", "namespace", ns], check=True, stdout=subprocess.DEVNULL)
    port = free_port()
    proc = subprocess.Popen(
        [os.path.join(target, "thaw"), "operator", f"--http-addr=127.0.0.1:{port}",
         f"--kubeconfig={kubeconfig}", f"--lease-namespace={ns}", f"--watch-namespace={ns}",
         "--identity=bench", "--allow-unauthenticated-stats"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, "RUST_LOG": "warn"})
    try:
        wait_http(f"http://127.0.0.1:{port}/readyz")
        results["operator_idle_rss_mib"] = rss_mib(proc.pid)
        # The flood comes from another loopback address than the report,
        # as it would from another pod.
        slow = []
        for _ in range(CONNECTIONS):
            s = socket.socket()
            s.setblocking(True)
            try:
                s.bind(("127.0.0.2", 0))
                s.connect(("127.0.0.1", port))
                s.sendall(b"POST /v1/stats HTTP/1.1\r\nHost: x\r\n")
            except OSError:
                pass
            slow.append(s)
        time.sleep(1)
        results["operator_10k_slowloris_rss_mib"] = rss_mib(proc.pid)
        # A report from a real activator, on a new connection meanwhile.
        report = json.dumps({"version": 1, "activator": "bench", "sequence": 1,
                             "intervalMs": 1000, "functions": []}).encode()
        start = time.time()
        accepted = False
        while time.time() - start < 30 and not accepted:
            for s in slow:  # keep dripping
                try:
                    s.send(b"X")
                except OSError:
                    pass
            try:
                req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/stats", data=report,
                                             headers={"content-type": "application/json"})
                with urllib.request.urlopen(req, timeout=2) as r:
                    accepted = r.status == 204
            except Exception:
                time.sleep(0.2)
        results["operator_report_accepted_during_slowloris_s"] = round(time.time() - start, 2) if accepted else None
        results["operator_peak_rss_mib"] = rss_mib(proc.pid)
        for s in slow:
            s.close()
    finally:
        proc.terminate()
        proc.wait(timeout=20)
        subprocess.run([kubectl, "delete", "namespace", ns, "--wait=false"],
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--target-dir", default="target/release")
    parser.add_argument("--testfn", help="the testfn binary (default: <target-dir>/testfn)")
    parser.add_argument("--skip-operator", action="store_true")
    parser.add_argument("--skip-activator", action="store_true")
    args = parser.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 3 * CONNECTIONS
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(want, hard), hard))
    results = {}
    if not args.skip_activator:
        activator(args.target_dir, args.testfn or os.path.join(args.target_dir, "testfn"), results)
    if not args.skip_operator:
        operator(args.target_dir, results)
    json.dump(results, sys.stdout, indent=2)
    print()


if __name__ == "__main__":
    main()
