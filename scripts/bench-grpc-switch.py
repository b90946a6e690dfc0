#!/usr/bin/env python3
"""Proxyless gRPC beside Envoy: the time from a core assignment change to the first call that
the new core serves, for a gRPC client with its own xDS resolver (xds:///voltha-grpc, no
Envoy) and for a gRPC client through Envoy, both fed by one voltha-xds, on the same changes.

    .venv/bin/python scripts/bench-grpc-switch.py --bin-dir target/release [--changes 20]

What it does:
1. starts two fake VOLTHA cores (`voltha-fake-core`, vcore-a on 127.0.0.2 and vcore-b on
   127.0.0.3, one port) and writes an assignment naming vcore-a;
2. runs `voltha-xds serve` on the embedded default profile (config/voltha-xds.yaml) moved to free
   loopback ports, its file source polled every 10 ms (as examples/switchbench.rs does), default
   debounce (50 ms quiet), and one Envoy from `voltha-xds bootstrap` (node cluster voltha);
3. opens two channels in this process: `xds:///voltha-grpc` with a bootstrap from
   `voltha-xds bootstrap --grpc` (node cluster voltha), and Envoy's NBI listener;
4. `--changes` times, `--interval` seconds apart: switches the assignment to the other core
   (write + rename). For each channel, a thread calls voltha.HealthService/GetHealthStatus
   back to back (1 s deadline each) from just before the rename until a call is served by the
   new core; the switch time runs from just before the rename to that call's completion.
5. prints, per path, the switch time p50 (nearest rank) and max, and the failed calls.

Every wait is bounded; everything started is stopped at the end.
"""

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time

import grpc

HEALTH = "/voltha.HealthService/GetHealthStatus"
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(host, port, limit=20.0):
    end = time.monotonic() + limit
    while time.monotonic() < end:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.02)
    raise SystemExit(f"nothing listens on {host}:{port} after {limit}s")


def assignment(host):
    return json.dumps({"0001": {"id": "core", "host": host}})


def core_of(channel):
    call = channel.unary_unary(HEALTH, request_serializer=lambda b: b, response_deserializer=lambda b: b)
    _, info = call.with_call(b"", timeout=1)
    return dict(info.initial_metadata()).get("x-voltha-core", "?")


def nearest_rank(values, q):
    s = sorted(values)
    return s[max(0, -(-len(s) * q // 100) - 1)]


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--bin-dir", required=True, help="where voltha-xds and voltha-fake-core are")
    p.add_argument("--envoy", default=os.environ.get("ENVOY_BIN", os.path.join(ROOT, ".venv/bin/envoy")))
    p.add_argument("--changes", type=int, default=20)
    p.add_argument("--interval", type=float, default=2.0)
    a = p.parse_args()
    xds_bin = os.path.join(a.bin_dir, "voltha-xds")
    core_bin = os.path.join(a.bin_dir, "voltha-fake-core")
    tmp = tempfile.mkdtemp(prefix="bench-grpc-")
    procs = []
    try:
        core_port = free_port()
        cores = {"vcore-a": "127.0.0.2", "vcore-b": "127.0.0.3"}
        for cid, ip in cores.items():
            procs.append(subprocess.Popen([core_bin, "--id", cid, "--listen", f"{ip}:{core_port}"],
                                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        for ip in cores.values():
            wait_port(ip, core_port)
        path = os.path.join(tmp, "assignment.json")
        with open(path, "w") as f:
            f.write(assignment(cores["vcore-a"]))
        nbi, rest, front = free_port(), free_port(), free_port()
        with open(os.path.join(ROOT, "config/voltha-xds.yaml")) as f:
            cfg = f.read()
        cfg = (cfg.replace("0.0.0.0:50555", f"127.0.0.1:{nbi}")
               .replace("0.0.0.0:8882", f"127.0.0.1:{rest}")
               .replace("0.0.0.0:3000", f"127.0.0.1:{front}")
               .replace("port: 50556", f"port: {core_port}")
               .replace("path: config/assignment.json", f'path: "{path}"')
               .replace("poll_interval: 250ms", "poll_interval: 10ms"))
        cfg_path = os.path.join(tmp, "config.yaml")
        with open(cfg_path, "w") as f:
            f.write(cfg)
        xds, admin, debug = free_port(), free_port(), free_port()
        log = open(os.path.join(tmp, "voltha-xds.log"), "w")
        procs.append(subprocess.Popen([xds_bin, "serve", "--config", cfg_path,
                                       "--xds-listen", f"127.0.0.1:{xds}",
                                       "--admin-listen", f"127.0.0.1:{admin}",
                                       "--admin-debug-listen", f"127.0.0.1:{debug}"],
                                      stdout=log, stderr=log))
        wait_port("127.0.0.1", xds)
        common = ["--node-cluster", "voltha", "--xds", f"127.0.0.1:{xds}"]
        grpc_bs = subprocess.check_output([xds_bin, "bootstrap", "--grpc", "--node-id", "bench-grpc"] + common)
        bs_path = os.path.join(tmp, "grpc-bootstrap.json")
        with open(bs_path, "wb") as f:
            f.write(grpc_bs)
        os.environ["GRPC_XDS_BOOTSTRAP"] = bs_path
        envoy_admin = free_port()
        envoy_bs = subprocess.check_output([xds_bin, "bootstrap", "--node-id", "bench-envoy",
                                            "--admin-port", str(envoy_admin)] + common)
        envoy_bs_path = os.path.join(tmp, "envoy.yaml")
        with open(envoy_bs_path, "wb") as f:
            f.write(envoy_bs)
        elog = open(os.path.join(tmp, "envoy.log"), "w")
        procs.append(subprocess.Popen([a.envoy, "-c", envoy_bs_path, "--disable-hot-restart",
                                       "--concurrency", "1", "--log-level", "warn"], stdout=elog, stderr=elog))
        channels = {
            "proxyless gRPC (xds:///voltha-grpc)": grpc.insecure_channel("xds:///voltha-grpc"),
            "gRPC through Envoy": grpc.insecure_channel(f"127.0.0.1:{nbi}"),
        }
        for name, ch in channels.items():
            end = time.monotonic() + 30
            while True:
                try:
                    if core_of(ch) == "vcore-a":
                        break
                except grpc.RpcError:
                    pass
                if time.monotonic() > end:
                    raise SystemExit(f"{name}: no call reached vcore-a in 30 s")
                time.sleep(0.02)
        results = {name: [] for name in channels}
        failed = {name: 0 for name in channels}
        missed = {name: 0 for name in channels}
        target = "vcore-a"
        for i in range(a.changes):
            target = "vcore-b" if target == "vcore-a" else "vcore-a"
            start = threading.Event()
            t0 = [0.0]

            def follow(name, ch):
                start.wait()
                limit = t0[0] + a.interval
                while time.perf_counter() < limit:
                    try:
                        if core_of(ch) == target:
                            results[name].append((time.perf_counter() - t0[0]) * 1000)
                            return
                    except grpc.RpcError:
                        failed[name] += 1
                missed[name] += 1

            threads = [threading.Thread(target=follow, args=(n, c)) for n, c in channels.items()]
            for t in threads:
                t.start()
            tmp_path = path + ".tmp"
            with open(tmp_path, "w") as f:
                f.write(assignment(cores[target]))
            t0[0] = time.perf_counter()
            start.set()
            os.rename(tmp_path, path)
            for t in threads:
                t.join()
            time.sleep(max(0.0, a.interval - (time.perf_counter() - t0[0])))
        print(f"{a.changes} changes, {a.interval} s apart, binaries in {a.bin_dir}")
        print("| path | switch p50 ms | switch max ms | no switch within interval | calls failed |")
        print("|---|---|---|---|---|")
        for name in channels:
            r = results[name]
            p50 = f"{nearest_rank(r, 50):.1f}" if r else "-"
            mx = f"{max(r):.1f}" if r else "-"
            print(f"| {name} | {p50} | {mx} | {missed[name]} | {failed[name]} |")
        for ch in channels.values():
            ch.close()
    finally:
        for pr in reversed(procs):
            pr.terminate()
        for pr in procs:
            try:
                pr.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pr.kill()


if __name__ == "__main__":
    sys.exit(main())
