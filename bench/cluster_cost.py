#!/usr/bin/python3
"""What crossing nodes costs, roughly: CPU-seconds per million deliveries
of two kite nodes (shards 1 each) and their nats-server together, for
point-to-point pairs that stay on one node and pairs that cross.

kite-bench puts connection i on port i % nports, subscribers first: with
--port A,B and an even number of pairs every subscriber is on its
publisher's node; with an odd number every pair crosses. Both runs load
both nodes the same way, at the same fixed rate. CPU is read from /proc
for the three processes over the middle of the run (after setup and
warmup), so it includes NATS's own cost of carrying the messages.

    /usr/bin/python3 bench/cluster_cost.py [--kite build/kite] \
        [--bench build/bench/kite-bench] [--rate 10000] [--qos 0,1]

The machine is shared: read it as an order of magnitude, not a
benchmark; docs/SCALE.md says how it is used."""

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time

TICK = os.sysconf("SC_CLK_TCK")


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def cpu_s(pid):
    with open("/proc/%d/stat" % pid) as f:
        parts = f.read().rsplit(")", 1)[1].split()
    return (int(parts[11]) + int(parts[12])) / TICK


def wait_port(port, timeout=5):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit("port %d not listening" % port)


def run(args, pairs, qos, ports, pids):
    warm, dur = 2, args.duration
    cmd = [args.bench, "--port", "%d,%d" % ports, "--topology", "p2p",
           "--pairs", str(pairs), "--qos", str(qos), "--rate", str(args.rate),
           "--warmup", str(warm), "--duration", str(dur), "--quiet"]
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    # Setup (connects, subscriptions) then warmup; sample inside the window.
    time.sleep(warm + 1.5)
    c0 = [cpu_s(x) for x in pids]
    t0 = time.monotonic()
    time.sleep(dur - 2)
    c1 = [cpu_s(x) for x in pids]
    t1 = time.monotonic()
    out, _ = p.communicate(timeout=120)
    res = json.loads(out.splitlines()[0])
    if not res["ok"]:
        raise SystemExit("kite-bench failed: %s" % res["errors"])
    deliveries = res["deliveries_per_s"] * (t1 - t0)
    per_m = [(b - a) / deliveries * 1e6 for a, b in zip(c0, c1)]
    return res, per_m


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--kite", default="build/kite")
    ap.add_argument("--bench", default="build/bench/kite-bench")
    ap.add_argument("--rate", type=int, default=10000)
    ap.add_argument("--pairs", type=int, default=500)
    ap.add_argument("--duration", type=int, default=10)
    ap.add_argument("--qos", default="0,1")
    args = ap.parse_args()
    nats = shutil.which("nats-server") or "/usr/sbin/nats-server"
    d = tempfile.mkdtemp(prefix="kite-cluster-cost-")
    procs = []
    try:
        np_ = free_port()
        procs.append(subprocess.Popen([nats, "-a", "127.0.0.1", "-p", str(np_)],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        wait_port(np_)
        ports = (free_port(), free_port())
        for name, port in zip("ab", ports):
            conf = os.path.join(d, name + ".conf")
            with open(conf, "w") as f:
                f.write("listener %d 127.0.0.1\nallow_anonymous true\nshards 1\n"
                        "max_queued_messages 100000\n"
                        "cluster_nats_url nats://127.0.0.1:%d\ncluster_node_name %s\n"
                        % (port, np_, name))
            log = open(os.path.join(d, name + ".log"), "w")
            procs.append(subprocess.Popen([args.kite, "-c", conf], stdout=log, stderr=log))
            wait_port(port)
        time.sleep(1)
        pids = [p.pid for p in procs[1:]] + [procs[0].pid]
        print("| QoS | pairs | where | deliveries/s | node a | node b | nats-server | total CPU-s/M |")
        print("|---|---|---|---|---|---|---|---|")
        for qos in [int(q) for q in args.qos.split(",")]:
            for pairs, where in ((args.pairs, "same node"), (args.pairs + 1, "across nodes")):
                pairs += pairs % 2 != (where == "across nodes")
                res, per_m = run(args, pairs, qos, ports, pids)
                print("| %d | %d | %s | %.0f | %.2f | %.2f | %.2f | **%.2f** |"
                      % (qos, pairs, where, res["deliveries_per_s"], per_m[0], per_m[1],
                         per_m[2], sum(per_m)), flush=True)
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                p.kill()
        shutil.rmtree(d, True)


if __name__ == "__main__":
    sys.exit(main())
