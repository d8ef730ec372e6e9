#!/usr/bin/python3
"""What a compaction of kite's logs costs the clients being served.

Fills a kite that has persistence on with R retained messages (and
optionally S persistent sessions with queued messages, as
bench/restart_time.py does), then, for D seconds, measures a QoS 0 round
trip (publish to `probe`, receive it back on a subscription of the same
client) every 2 ms, with `autosave_interval` set so that compactions run
every few seconds, and once more with compaction off. Prints the round
trip's median, p99, p99.9 and maximum in each case and how many
compactions ran. A compaction restates every session and the whole
retained store; if it ran in one loop turn, a client of shard 0 would wait
for all of it.

    /usr/bin/python3 bench/compaction_stall.py --retained 1000000
    /usr/bin/python3 bench/compaction_stall.py --kite OLD/kite --retained 1000000

Python standard library only; reuses bench/restart_time.py's filler.
"""

import argparse
import json
import os
import shutil
import socket
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import restart_time as rt  # noqa: E402


def probe(port, seconds, period=0.002):
    s = socket.create_connection(("127.0.0.1", port))
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    s.sendall(rt.connect("stall-probe", True, 0) + rt.subscribe(1, "probe", 0))
    got = rt.recv_packets(s, 2, 30)
    assert [g[0] for g in got] == [2, 9], got
    s.settimeout(30)
    rtts = []
    end = time.monotonic() + seconds
    # Retained, so that each probe is a change to log: kite compacts on
    # autosave_interval only when something changed.
    body = rt.pkt(0x31, rt.mstr("probe") + b"x")
    while time.monotonic() < end:
        t = time.monotonic()
        s.sendall(body)
        buf = b""
        while len(buf) < len(body):  # forwarded without the retain bit
            d = s.recv(4096)
            if not d:
                raise ConnectionError("probe: closed by the broker")
            buf += d
        rtts.append(time.monotonic() - t)
        left = period - (time.monotonic() - t)
        if left > 0:
            time.sleep(left)
    s.sendall(rt.DISCONNECT)
    s.close()
    return rtts


def pct(v, q):
    v = sorted(v)
    return v[min(len(v) - 1, int(q * len(v)))]


def one(a, binary, autosave):
    work = tempfile.mkdtemp(prefix="stall-", dir=a.dir)
    pdir = os.path.join(work, "state")
    os.makedirs(pdir)
    port = rt.free_port()
    conf = os.path.join(work, "kite.conf")
    with open(conf, "w") as f:
        f.write(rt.broker_conf("kite", port, pdir, a.shards))
        f.write(f"autosave_interval {autosave}\n")
    b = rt.Broker("kite", binary, port, conf, os.path.join(work, "kite.log"))
    try:
        b.start()
        rt.wait_serving(b, False, timeout=30)
        fa = argparse.Namespace(sessions=a.sessions, per_session=a.per_session,
                                retained=a.retained, rounds=1,
                                payload=a.payload)
        rt.fill(port, fa)
        before = b.new_log().count("compacting shard 0")
        rtts = probe(port, a.seconds)
        compactions = b.new_log().count("compacting shard 0") - before
        b.stop("term")
    finally:
        if b.p and b.p.poll() is None:
            b.p.kill()
        shutil.rmtree(work, ignore_errors=True)
    ms = [x * 1000 for x in rtts]
    return dict(autosave_interval=autosave, probes=len(ms),
                compactions_of_shard0=compactions,
                p50_ms=round(statistics.median(ms), 3),
                p99_ms=round(pct(ms, 0.99), 3),
                p999_ms=round(pct(ms, 0.999), 3),
                max_ms=round(max(ms), 3))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--kite", default=os.path.join(rt.ROOT, "build", "kite"))
    ap.add_argument("--shards", type=int, default=0)
    ap.add_argument("--retained", type=int, default=1000000)
    ap.add_argument("--sessions", type=int, default=0)
    ap.add_argument("--per-session", type=int, default=0)
    ap.add_argument("--payload", type=int, default=64)
    ap.add_argument("--seconds", type=float, default=20)
    ap.add_argument("--every", type=int, default=4,
                    help="autosave_interval (s) of the compacting run")
    ap.add_argument("--dir", default=None)
    ap.add_argument("--out", default=None, help="JSON results file")
    a = ap.parse_args()
    res = dict(binary=a.kite, argv=sys.argv, cpus=os.cpu_count(),
               loadavg_start=os.getloadavg(), retained=a.retained,
               sessions=a.sessions, per_session=a.per_session, runs=[])
    for autosave in (a.every, 0):
        r = one(a, a.kite, autosave)
        r["label"] = ("compacting every %d s" % a.every) if autosave \
            else "no compaction"
        res["runs"].append(r)
        print(json.dumps(r), flush=True)
    res["loadavg_end"] = os.getloadavg()
    if a.out:
        with open(a.out, "w") as f:
            json.dump(res, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
