#!/usr/bin/python3
"""What crossing nodes costs in a kite cluster (docs/CLUSTER.md).

Starts one nats-server (JetStream on, so QoS 1 crosses nodes through the
stream KITE_MSGS as in production; --no-jetstream for core NATS only) and
two kite nodes (`shards 1` each) on free 127.0.0.1 ports, then runs
kite-bench at a fixed rate, one publisher and N subscribers:

  alone   a third kite with no cluster configured (the baseline)
  local   the publisher and its subscribers on node A
  cross   the publisher on node A, its subscribers on node B

For each run it reads the CPU time (user + system, /proc/PID/stat) of node
A, node B and nats-server before and after kite-bench, and reports CPU-s
per million deliveries: kite's (both nodes) and nats-server's. The whole
kite-bench run is counted (connects, warm-up, drain), against every
delivery it received.

With --pairs N it runs N point-to-point pairs instead (one publisher and
one subscriber per pair, the rate spread over them; kite-bench puts
connection i on port i % nports, subscribers first):

  alone   every pair on the third kite
  local   pairs spread over nodes A and B, each pair on one node (N even)
  cross   the same with N + 1 pairs (odd): every pair crosses nodes

Everything shares the machine (no pinning): CPU per delivery is the
figure, not throughput, and nothing here says how a cluster scales.

    /usr/bin/python3 bench/cluster.py --kite build/x/kite \\
        --gen build/x/bench/kite-bench [--rate 10000] [--duration 5] [--pairs 500]
"""

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NATS = shutil.which("nats-server") or "/usr/sbin/nats-server"
TICK = os.sysconf("SC_CLK_TCK")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def listening(port):
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


def wait_for(cond, timeout, what):
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            sys.exit("cluster bench: timed out waiting for %s" % what)
        time.sleep(0.05)


def cpu_s(pid):
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


class Proc:
    def __init__(self, cmd, log):
        self.log = open(log, "wb")
        self.path = log
        self.p = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT,
                                  stdin=subprocess.DEVNULL)

    def output(self):
        with open(self.path, errors="replace") as f:
            return f.read()

    def stop(self):
        if self.p.poll() is None:
            self.p.terminate()
            try:
                self.p.wait(10)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait()
        self.log.close()


def start_node(kite, tmp, name, nats_port):
    port = free_port()
    conf = os.path.join(tmp, name + ".conf")
    with open(conf, "w") as f:
        f.write("listener %d 127.0.0.1\nallow_anonymous true\nlog_dest stderr\n"
                "shards 1\nmax_queued_messages 1000000\nmax_inflight_messages 1000\n"
                "connection_messages false\nsys_interval 0\n" % port)
        if nats_port:
            f.write("cluster_nats_url nats://127.0.0.1:%d\ncluster_node_name %s\n"
                    % (nats_port, name))
    p = Proc([kite, "-c", conf], os.path.join(tmp, name + ".log"))
    wait_for(lambda: listening(port) or p.p.poll() is not None, 10, "kite " + name)
    if p.p.poll() is not None:
        sys.exit("kite %s did not start:\n%s" % (name, p.output()))
    p.port = port
    return p


def run(args, nodes, nats, where, qos, subs):
    """One row; subs is the number of subscribers (fan-out) or, with
    --pairs, of pairs."""
    a, b, alone = nodes
    if args.pairs:
        ports = [alone.port] if where == "alone" else [a.port, b.port]
        if where == "cross":
            subs += 1  # odd: connection i and i + pairs on different nodes
        name = "%s-q%d-%dpairs" % (where, qos, subs)
        shape = ["--topology", "p2p", "--pairs", str(subs)]
    else:
        pub_port = alone.port if where == "alone" else a.port
        sub_port = b.port if where == "cross" else pub_port
        # kite-bench puts connection i on ports[i % n]: subscribers
        # first, then the publisher.
        ports = [sub_port] * subs + [pub_port]
        name = "%s-q%d-%dsub" % (where, qos, subs)
        shape = ["--topology", "fanout", "--pubs", "1", "--subs", str(subs),
                 "--window", "256"]
    cmd = [args.gen, "--port", ",".join(map(str, ports))] + shape + [
           "--qos", str(qos), "--rate", str(args.rate),
           "--warmup", "1", "--duration", str(args.duration), "--drain", "10",
           "--name", name, "--quiet"]
    pids = {"node A": (alone if where == "alone" else a).p.pid, "node B": b.p.pid,
            "nats-server": nats.p.pid}
    before = {k: cpu_s(p) for k, p in pids.items()}
    r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                       timeout=args.duration + 120)
    after = {k: cpu_s(p) for k, p in pids.items()}
    lines = [l for l in r.stdout.splitlines() if l.startswith("{")]
    if not lines:
        sys.exit("kite-bench failed (%d): %s" % (r.returncode, r.stderr))
    res = json.loads(lines[-1])
    used = {k: after[k] - before[k] for k in pids}
    got = res["received"]
    per_m = lambda s: s / (got / 1e6) if got else float("nan")
    row = {
        "scenario": name, "where": where, "qos": qos, "subs": subs,
        "rate": args.rate, "sent": res["sent"], "received": got,
        "lost": res["lost"], "dups": res["dups"],
        "cpu_s": used,
        "kite_cpu_s_per_m": per_m(used["node A"] + used["node B"]),
        "nats_cpu_s_per_m": per_m(used["nats-server"]),
        "p50_us": res.get("latency_us", {}).get("p50") if isinstance(res.get("latency_us"), dict) else None,
    }
    print("%-18s kite %.2f CPU-s/M (A %.2f s, B %.2f s)  nats %.2f CPU-s/M  "
          "recv %d lost %d dups %d" % (name, row["kite_cpu_s_per_m"], used["node A"],
                                       used["node B"], row["nats_cpu_s_per_m"], got,
                                       res["lost"], res["dups"]), flush=True)
    return row


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kite", default=os.path.join(ROOT, "build", "kite"))
    ap.add_argument("--gen", default=os.path.join(ROOT, "build", "bench", "kite-bench"))
    ap.add_argument("--rate", type=int, default=10000, help="publishes/s (10000)")
    ap.add_argument("--duration", type=int, default=5, help="seconds measured (5)")
    ap.add_argument("--subs", default="1,4", help="subscriber counts (1,4)")
    ap.add_argument("--pairs", type=int, default=0,
                    help="point-to-point pairs instead of fan-out (even; "
                         "cross runs one more)")
    ap.add_argument("--qos", default="0,1", help="QoS levels (0,1)")
    ap.add_argument("--no-jetstream", action="store_true",
                    help="nats-server without -js: QoS 1 crosses at most once")
    ap.add_argument("--out", help="write the rows as JSON here")
    args = ap.parse_args()
    for path in (args.kite, args.gen, NATS):
        if not os.path.exists(path):
            sys.exit("cluster bench: %s not found" % path)
    tmp = tempfile.mkdtemp(prefix="kite-cluster-bench-")
    procs = []
    try:
        nport = free_port()
        cmd = [NATS, "-a", "127.0.0.1", "-p", str(nport)]
        if not args.no_jetstream:
            cmd += ["-js", "-sd", os.path.join(tmp, "js")]
        nats = Proc(cmd, os.path.join(tmp, "nats.log"))
        procs.append(nats)
        wait_for(lambda: listening(nport), 10, "nats-server")
        nodes = [start_node(args.kite, tmp, n, nport) for n in ("A", "B")]
        nodes.append(start_node(args.kite, tmp, "alone", None))
        procs += nodes
        want = ("no JetStream stream for QoS 1/2" if args.no_jetstream
                else "sends QoS 1/2 messages through JetStream")
        for n in nodes[:2]:
            wait_for(lambda: want in n.output(), 20, "'%s' from a node" % want)
        rows = []
        for qos in map(int, args.qos.split(",")):
            counts = ([args.pairs + args.pairs % 2] if args.pairs
                      else map(int, args.subs.split(",")))
            for subs in counts:
                for where in ("alone", "local", "cross"):
                    rows.append(run(args, nodes, nats, where, qos, subs))
        if args.out:
            with open(args.out, "w") as f:
                json.dump({"jetstream": not args.no_jetstream, "rows": rows}, f, indent=1)
        print("\n| scenario | kite CPU-s / M deliveries | nats-server CPU-s / M | "
              "received | lost | dups |\n|---|---|---|---|---|---|")
        for r in rows:
            print("| %s | %.2f | %.2f | %d | %d | %d |" % (
                r["scenario"], r["kite_cpu_s_per_m"], r["nats_cpu_s_per_m"],
                r["received"], r["lost"], r["dups"]))
    finally:
        for p in reversed(procs):
            p.stop()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
