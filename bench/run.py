#!/usr/bin/python3
"""kite vs Mosquitto benchmark harness.

Starts each broker with an equivalent generated config on free 127.0.0.1
ports, pinned to one CPU, runs build/bench/kite-bench pinned to the other
CPU for every scenario, and writes results.json, RESULTS-table.md and PNG
plots. Every kite figure is also given as a ratio to Mosquitto's figure
from the same run.

    /usr/bin/python3 bench/run.py --profile quick
    /usr/bin/python3 bench/run.py --profile full --brokers kite,mosquitto
    /usr/bin/python3 bench/run.py --profile smoke     # correctness only

Only the Python standard library is required; plots use matplotlib
(Debian python3-matplotlib, installed by bench/deps.sh) and are skipped with
a warning when it is missing.
"""

import argparse
import ctypes
import datetime
import json
import os
import platform
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GEN_DEFAULT = os.path.join(ROOT, "build", "bench", "kite-bench")
KITE_DEFAULT = os.path.join(ROOT, "build", "kite")
MOSQ_DEFAULT = "/usr/sbin/mosquitto"
# FlashMQ 1.26.2, built from ../shared/anchors by `make bench-flashmq`
# (build-flashmq.sh): the fastest open-source single-node broker we know of,
# run with one worker thread like the others.
FLASHMQ_DEFAULT = os.path.join(ROOT, "build", "flashmq", "flashmq")

BROKER_CPU = 1
GEN_CPU = 0
# kite-all: kite with one shard per online CPU and no CPU pinning (kite
# pins shard i to the i-th CPU it may use), i.e. how an operator runs it.
# The generator keeps CPU 0, so on a 2-CPU machine shard 0 shares it.
ALL_CPUS = os.sysconf("SC_NPROCESSORS_ONLN")
# Run order inside a scenario: the references first (the latency
# scenarios run at half of a reference's saturation rate).
BROKER_KINDS = ("flashmq", "mosquitto", "kite", "kite-all")
REFERENCES = ("flashmq", "mosquitto")
# Default --brokers per profile (make bench and bench-quick pass none).
# flashmq is left out with a loud note when its binary is missing.
DEFAULT_BROKERS = {"full": "kite,mosquitto,flashmq,kite-all",
                   "quick": "kite,mosquitto,flashmq",
                   "smoke": "kite,mosquitto",
                   "persist": "kite,mosquitto"}
# The in-flight window (max_inflight_messages) each broker gets. FlashMQ
# has none: it sends a session's QoS 1/2 messages as they come, up to
# max_qos_msg_pending_per_client unacknowledged. kite gets none either
# (65535 means none), so the two are compared on the same terms. A window
# of 1000 was not "large enough never to be hit": a fan-in subscriber has
# every publisher's window in flight at once (1000 x 64 in lat-fanin-q1),
# so kite delivered 1000 per round trip of a busy generator and held a
# standing queue of 63,000 messages (p50 367 ms) that FlashMQ never had.
# Mosquitto keeps 1000: it scans its in-flight list per acknowledgement,
# and without a limit its QoS 1 rows cost about five times as much
# (fanin-q1-sat 49 instead of 9 CPU-s per million), which would flatter
# kite beside it.
MAX_INFLIGHT = {"kite": 65535, "mosquitto": 1000}
MAX_QUEUED = 1000000

# DESIGN.md "Targets": broker CPU-seconds per million deliveries.
TARGETS = {
    "fanout-q0": {"mosquitto_ref": 7.6, "kite_target": 0.15},
    "fanout-q1": {"mosquitto_ref": 11.8, "kite_target": 0.35},
    "fanin-q0-20k": {"mosquitto_ref": 11.5, "kite_target": 5.0},
    "fanin-q1-20k": {"mosquitto_ref": 11.5, "kite_target": 5.0},
    "fanin-q0-sat": {"mosquitto_ref": 5.1, "kite_target": 0.3},
    "fanin-q1-sat": {"mosquitto_ref": 5.1, "kite_target": 0.3},
    "tls-fanout-q0": {"mosquitto_ref": 4.9, "kite_target": 0.2},
}
IDLE_TARGET_KB = 0.7
# DESIGN.md: idle TLS connection Mosquitto 12 KB, kite <= 8 KB in userspace
# (<= 2 KB with kTLS); TLS handshake CPU both ~0.25 ms, kite <= 0.15 ms.
IDLE_TLS_TARGET_KB = 8.0
HANDSHAKE_TARGET_MS = 0.15
HANDSHAKE_MOSQ_REF_MS = 0.25


def log(msg):
    print(msg, flush=True)


def loud(msg):
    bar = "*" * 78
    print(f"\n{bar}\n*** {msg}\n{bar}\n", file=sys.stderr, flush=True)


# ---- scenarios ---------------------------------------------------------------

# Per profile: (warmup s, duration s) and the sizes that vary.
PROFILES = {
    "smoke": dict(warmup=0.2, duration=0.6, budget_s=30),
    "quick": dict(warmup=0.3, duration=1.0, budget_s=110),
    # full: 60 runs of about 10 s with three brokers (the WebSocket rows
    # added 9 to the 622 s measured), still under the issue's 15 minutes.
    "full": dict(warmup=2.0, duration=6.0, budget_s=840),
    # Durable state only (make bench-persist): the persist-* rows at the
    # full sizes, each run three times (--repeat), medians reported.
    "persist": dict(warmup=1.0, duration=4.0, budget_s=900, repeat=3),
}

# persist-* rows: the same persistent-session load (kite-bench
# --persistent: clean session 0 under the run's client ids) against a
# broker without and with persistence. Variant -> broker config lines per
# broker family; {dir} is a fresh directory per run (--state-dir). kite's
# "on" is its default, persistence_sync 1000; Mosquitto's "on" is its
# autosave (every autosave_interval, default 30 minutes, and at exit).
PERSIST_VARIANTS = {
    "off": {"kite": [], "mosquitto": []},
    "on": {"kite": ["persistence true", "persistence_location {dir}"],
           "mosquitto": ["persistence true", "persistence_location {dir}/"]},
    "never": {"kite": ["persistence true", "persistence_location {dir}",
                       "persistence_sync never"]},
    "always": {"kite": ["persistence true", "persistence_location {dir}",
                        "persistence_sync always"]},
}
# Durable-state targets (the durability issue): throughput with
# persistence as a share of the same broker's throughput without it.
PERSIST_TARGETS = {"on": 0.85, "never": 0.85, "always": 0.50}


def broker_family(kind):
    return kind if kind in REFERENCES else "kite"


def idle_size(want, fd_limit):
    """want, or the most connections one process may hold under
    RLIMIT_NOFILE (rounded down to 1,000), whichever is smaller."""
    room = fd_limit - 600
    if want <= room:
        return want, None
    n = max(1000, room // 1000 * 1000)
    return n, (f"{want} connections wanted, RLIMIT_NOFILE is {fd_limit} "
               f"(hard limit; raising it needs CAP_SYS_RESOURCE): {n} used")


def scenario_list(profile, fd_limit=1 << 20):
    """Every scenario: name, what it measures, generator arguments.

    kind: "sat" (as fast as the windows allow), "rate" (fixed total publish
    rate), "idle" (connections only), "latency" (fixed rate = half of
    Mosquitto's saturation rate in `rate_from`, measured in the same run).
    """
    S = []

    def add(name, kind, title, args, **kw):
        S.append(dict(name=name, kind=kind, title=title, args=args, **kw))

    if profile == "smoke":
        add("fanout-q0", "rate", "1 pub -> 20 subs, QoS 0, 64 B, 200 msg/s",
            "--topology fanout --pubs 1 --subs 20 --qos 0 --rate 200")
        add("fanout-q1", "sat", "1 pub -> 20 subs, QoS 1, saturation",
            "--topology fanout --pubs 1 --subs 20 --qos 1 --window 16")
        add("fanout-q2-v5", "sat", "MQTT 5: 2 pubs -> 10 subs, QoS 2",
            "--topology fanout --pubs 2 --subs 10 --qos 2 --mqtt 5 --window 8")
        add("fanin-q0-rate", "rate", "50 devices -> 1 sub, QoS 0, 500 msg/s",
            "--topology fanin --pubs 50 --subs 1 --qos 0 --rate 500")
        add("fanin-q1-v5-sat", "sat", "MQTT 5: 50 devices -> 1 sub, QoS 1",
            "--topology fanin --pubs 50 --subs 1 --qos 1 --mqtt 5 --window 4")
        add("p2p-q1", "sat", "20 pairs, QoS 1, saturation",
            "--topology p2p --pairs 20 --qos 1 --window 8")
        add("p2p-q2-rate", "rate", "20 pairs, QoS 2, 400 msg/s",
            "--topology p2p --pairs 20 --qos 2 --rate 400")
        add("idle-200", "idle", "200 idle connections over 2 ports",
            "--topology idle --conns 200", ports=2)
        add("tls-fanout-q1", "sat", "mTLS: 1 pub -> 10 subs, QoS 1",
            "--topology fanout --pubs 1 --subs 10 --qos 1 --window 16",
            tls=True)
        add("tls-storm", "storm", "mTLS: 8 connections at a time, each "
            "handshake + CONNECT + SUBSCRIBE + DISCONNECT",
            "--topology storm --conns 8", tls=True)
        add("tls-storm-resume", "storm", "the mTLS storm (8 at a time) "
            "with session resumption", "--topology storm --conns 8 "
            "--tls-resume", tls=True, cert_count=16)
        add("tls-idle-100", "idle", "100 idle mTLS connections",
            "--topology idle --conns 100", tls=True)
        add("ws-fanout-q1", "sat", "WebSockets: 1 pub -> 10 subs, QoS 1",
            "--topology fanout --pubs 1 --subs 10 --qos 1 --window 16",
            ws=True)
        add_persist(add, "persist-fanout-q1", "1 pub -> 10 persistent subs, "
                    "QoS 1", "--topology fanout --pubs 1 --subs 10 --qos 1 "
                    "--window 16", variants=("on",))
        return S

    if profile == "persist":
        add_persist(add, "persist-fanin-q1-sat", "5000 persistent devices -> "
                    "1 persistent sub on devices/+/telemetry, QoS 1, "
                    "saturation", "--topology fanin --pubs 5000 --subs 1 "
                    "--qos 1 --window 4 --burst 4 --max-outstanding 4096")
        add_persist(add, "persist-fanout-q1", "1 persistent pub -> 1000 "
                    "persistent subs, one topic, QoS 1, saturation",
                    "--topology fanout --pubs 1 --subs 1000 --qos 1 "
                    "--window 16")
        return S

    full = profile == "full"
    fan = 1000 if full else 200
    wide = 10000 if full else 2000
    dev = 5000 if full else 1000
    dev_rate = 20000 if full else 10000
    pairs = 1000 if full else 200
    idle1, note1 = idle_size(10000 if full else 2000, fd_limit)
    idle2, note2 = idle_size(50000 if full else 5000, fd_limit)

    add("fanout-q0", "sat", f"1 pub -> {fan} subs, one topic, QoS 0, 64 B",
        f"--topology fanout --pubs 1 --subs {fan} --qos 0 --window 16")
    add("fanout-q1", "sat", f"1 pub -> {fan} subs, one topic, QoS 1, 64 B",
        f"--topology fanout --pubs 1 --subs {fan} --qos 1 --window 16")
    add(f"fanout{wide // 1000}k-q0", "sat",
        f"1 pub -> {wide} subs, one topic, QoS 0, 64 B",
        f"--topology fanout --pubs 1 --subs {wide} --qos 0 --window 4")
    for q in (0, 1):
        add(f"fanin-q{q}-20k" if full else f"fanin-q{q}-rate", "rate",
            f"{dev} devices on devices/ID/telemetry -> 1 sub on "
            f"devices/+/telemetry, QoS {q}, {dev_rate} msg/s total",
            f"--topology fanin --pubs {dev} --subs 1 --qos {q} "
            f"--rate {dev_rate} --window 8")
    for q in (0, 1):
        add(f"fanin-q{q}-sat", "sat",
            f"{dev} devices -> 1 sub on devices/+/telemetry, QoS {q}, "
            "saturation",
            f"--topology fanin --pubs {dev} --subs 1 --qos {q} --window 4 "
            "--burst 4 --max-outstanding 4096")
    # The same fan-out over WebSockets (`protocol websockets` listeners,
    # kite-bench --ws), beside the plain-MQTT rows above in the same run.
    # No wide variant: it would take the full profile past 15 minutes.
    for q in (0, 1):
        add(f"ws-fanout-q{q}", "sat", f"WebSockets: 1 pub -> {fan} subs, "
            f"one topic, QoS {q}, 64 B",
            f"--topology fanout --pubs 1 --subs {fan} --qos {q} --window 16",
            ws=True)
    add("p2p-q1", "sat", f"{pairs} pairs, publisher i -> p2p/i -> "
        "subscriber i, QoS 1", f"--topology p2p --pairs {pairs} --qos 1 "
        "--window 16 --burst 4 --max-outstanding 8192")
    # A client that waits for each answer before it sends again (a QoS 1
    # publish at a time, request and response): what it gets is set by
    # how soon the broker answers, not by its CPU per message.
    add("sync-p2p-q1", "sat", "1 pair, QoS 1, one message at a time: the "
        "publisher waits for each PUBACK, the subscriber acks each delivery",
        "--topology p2p --pairs 1 --qos 1 --window 1")
    add("sync10-p2p-q1", "sat", "10 pairs, QoS 1, one message at a time "
        "each", "--topology p2p --pairs 10 --qos 1 --window 1")
    add(f"idle-{idle1 // 1000}k", "idle", f"{idle1} idle connections",
        f"--topology idle --conns {idle1}", ports=1, size_note=note1)
    if idle2 != idle1:
        add(f"idle-{idle2 // 1000}k", "idle",
            f"{idle2} idle connections over 2 listener ports",
            f"--topology idle --conns {idle2}", ports=2, size_note=note2)
    add("lat-fanout-q0", "latency", f"1 pub -> {fan} subs, QoS 0, at half "
        "of the reference's fanout-q0 saturation",
        f"--topology fanout --pubs 1 --subs {fan} --qos 0 --window 1000",
        rate_from="fanout-q0", fallback_rate=50)
    add("lat-fanin-q1", "latency", f"{dev} devices -> 1 sub, QoS 1, at half "
        "of the reference's fanin-q1-sat saturation",
        f"--topology fanin --pubs {dev} --subs 1 --qos 1 --window 64",
        rate_from="fanin-q1-sat", fallback_rate=20000)
    add("lat-p2p-q1", "latency", f"{pairs} pairs, QoS 1, at half of "
        "the reference's p2p-q1 saturation",
        f"--topology p2p --pairs {pairs} --qos 1 --window 64",
        rate_from="p2p-q1", fallback_rate=20000)

    # TLS: mutual TLS, ECDSA P-256 certificates from `kite cert`, one client
    # certificate per connection (see tls_pki), no session resumption.
    add("tls-fanout-q0", "sat", "mTLS: 1 pub -> 200 subs, one topic, QoS 0, "
        "64 B", "--topology fanout --pubs 1 --subs 200 --qos 0 --window 16",
        tls=True)
    add("tls-fanout-q1", "sat", "mTLS: 1 pub -> 200 subs, one topic, QoS 1, "
        "64 B", "--topology fanout --pubs 1 --subs 200 --qos 1 --window 16",
        tls=True)
    # Every mTLS connection costs the single-threaded generator a full
    # handshake during setup (~2-3 ms here): the TLS sizes are smaller.
    tdev = dev if full else 500
    for q in (0, 1):
        add(f"tls-fanin-q{q}-sat", "sat", f"mTLS: {tdev} devices -> 1 sub on "
            f"devices/+/telemetry, QoS {q}, saturation",
            f"--topology fanin --pubs {tdev} --subs 1 --qos {q} --window 4 "
            "--burst 4 --max-outstanding 4096", tls=True)
    tpairs = pairs if full else 100
    add("tls-p2p-q1", "sat", f"mTLS: {tpairs} pairs, publisher i -> p2p/i "
        "-> subscriber i, QoS 1", f"--topology p2p --pairs {tpairs} --qos 1 "
        "--window 16 --burst 4 --max-outstanding 8192", tls=True)
    add("tls-lat-fanout-q0", "latency", "mTLS: 1 pub -> 200 subs, QoS 0, at "
        "half of the reference's tls-fanout-q0 saturation",
        "--topology fanout --pubs 1 --subs 200 --qos 0 --window 1000",
        rate_from="tls-fanout-q0", fallback_rate=50, tls=True)
    storm = 128 if full else 64
    add("tls-storm", "storm", f"mTLS connection storm: {storm} at a time, "
        "each new connection does a full handshake + CONNECT + SUBSCRIBE + "
        "DISCONNECT, until the broker closes it", "--topology storm "
        f"--conns {storm}", tls=True)
    # The fleet coming back after an outage: each connection offers the
    # session ticket its client identity got last time (kite-bench
    # --tls-resume); compare with tls-storm (DESIGN/issue 15: a resumed
    # TLS 1.3 handshake <= 0.25x a full one in broker CPU).
    add("tls-storm-resume", "storm", f"the mTLS storm ({storm} at a time) "
        "with session resumption: every connection offers its identity's "
        "last session ticket", "--topology storm "
        f"--conns {storm} --tls-resume", tls=True,
        # Identities are handed out round-robin: with every certificate
        # of the PKI, each would connect once in the window and never
        # hold a ticket. Twice the storm: each has its ticket from its
        # last-but-one turn at worst.
        cert_count=2 * storm)
    add("tcp-storm", "storm", f"the same storm over plain TCP ({storm} at "
        "a time): what TLS adds", f"--topology storm --conns {storm}",
        ports=2)
    # wss://: server-authenticated TLS only, because Mosquitto's WebSockets
    # listeners take cafile, certfile and keyfile but no client
    # certificates; compare with tls-fanout-q0 (mTLS) for what the
    # WebSocket framing adds.
    if full:  # quick stays within its 110 s budget
        add("wss-fanout-q0", "sat", "WebSockets over TLS (server "
            "certificate only): 1 pub -> 200 subs, one topic, QoS 0, 64 B",
            "--topology fanout --pubs 1 --subs 200 --qos 0 --window 16",
            ws=True, tls=True, mtls=False)
    tidle1, tnote1 = idle_size(5000 if full else 1000, fd_limit)
    tidle2, tnote2 = idle_size(10000 if full else 2000, fd_limit)
    add(f"tls-idle-{tidle1 // 1000}k", "idle", f"{tidle1} idle mTLS "
        "connections", f"--topology idle --conns {tidle1}", ports=1,
        size_note=tnote1, tls=True)
    if tidle2 != tidle1:
        add(f"tls-idle-{tidle2 // 1000}k", "idle", f"{tidle2} idle mTLS "
            "connections over 2 listener ports",
            f"--topology idle --conns {tidle2}", ports=2, size_note=tnote2,
            tls=True)
    return S


def add_persist(add, base, title, args, variants=tuple(PERSIST_VARIANTS)):
    """One scenario per persistence variant, BASE/VARIANT, for the
    brokers that have it (never and always are kite's own settings)."""
    for v in variants:
        conf = PERSIST_VARIANTS[v]
        add(f"{base}/{v}", "sat", f"{title}; persistence {v}",
            f"{args} --persistent", group="persist", base=base, variant=v,
            conf=conf, families=tuple(conf))


def scenario_opt(sc, name):
    """The number after kite-bench option `name` in the scenario's
    arguments, or None."""
    a = sc["args"].split()
    if name not in a or a.index(name) + 1 >= len(a):
        return None
    try:
        return float(a[a.index(name) + 1])
    except ValueError:
        return None


def tls_certs_needed(scs):
    """One client certificate per connection of the biggest TLS scenario
    (storms cycle through them)."""
    n = 100
    for s in scs:
        if s.get("tls") and s["kind"] != "storm":
            for k in ("--conns", "--subs", "--pubs"):
                v = scenario_opt(s, k)
                if v is not None:
                    n = max(n, int(v))
    return n + 2


def tls_pki(kite, pkidir, nclients):
    """CA, server certificate for 127.0.0.1 and nclients client certificates
    (ECDSA P-256, `kite cert`; CN dev-1..dev-N, which
    use_identity_as_username makes the username). Returns None or why
    it failed."""
    steps = [["ca"], ["server", "127.0.0.1", "localhost"],
             ["clients", "--count", str(nclients), "--prefix", "dev-"]]
    for st in steps:
        try:
            p = subprocess.run([kite, "cert"] + st + ["--dir", pkidir],
                               stdin=subprocess.DEVNULL, capture_output=True,
                               text=True, timeout=120)
        except (OSError, subprocess.TimeoutExpired) as e:
            return f"kite cert {st[0]}: {e}"
        if p.returncode != 0:
            return f"kite cert {st[0]}: {(p.stderr or p.stdout).strip()[-300:]}"
    return None


PKI_CACHE = os.path.join(ROOT, "build", "bench", "pki")
PKI_MAX_AGE_S = 180 * 86400  # `kite cert` issues for about 2 years


def cached_pki(kite, nclients):
    """The PKI in build/bench/pki, issued again only when it has fewer
    than nclients client certificates or is older than PKI_MAX_AGE_S
    (issuing 19,000 takes ~20 s; a larger set serves smaller runs).
    Returns (directory or None, why it failed, seconds spent issuing)."""
    stamp = os.path.join(PKI_CACHE, "stamp.json")
    try:
        with open(stamp) as f:
            st = json.load(f)
        if st["clients"] >= nclients and \
                time.time() - st["issued"] < PKI_MAX_AGE_S:
            return PKI_CACHE, None, 0.0
    except (OSError, ValueError, KeyError, TypeError):
        pass
    t = time.monotonic()
    tmp = f"{PKI_CACHE}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp, mode=0o700)
    why = tls_pki(kite, tmp, nclients)
    if why:
        shutil.rmtree(tmp, ignore_errors=True)
        return None, why, time.monotonic() - t
    with open(os.path.join(tmp, "stamp.json"), "w") as f:
        json.dump({"clients": nclients, "issued": time.time()}, f)
    shutil.rmtree(PKI_CACHE, ignore_errors=True)
    os.rename(tmp, PKI_CACHE)
    return PKI_CACHE, None, time.monotonic() - t


# ---- processes -----------------------------------------------------------------

_libc = ctypes.CDLL(None, use_errno=True)
PR_SET_PDEATHSIG = 1
_children = []


def _pin_and_tie(cpus):
    def pre():
        os.sched_setaffinity(0, cpus)
        # Dies with the harness, whatever happens to it.
        _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    return pre


def kill_all_children():
    for p in list(_children):
        stop_process(p)


def stop_process(p, grace=3.0):
    if p.poll() is None:
        try:
            p.send_signal(signal.SIGTERM)
            p.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(timeout=5)
        except ProcessLookupError:
            pass
    if p in _children:
        _children.remove(p)


def free_ports(n):
    socks, ports = [], []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
        ports.append(s.getsockname()[1])
    for s in socks:
        s.close()
    return ports


def raise_nofile(need):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= need:
        return soft
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (need, max(need, hard)))
    except (ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def flashmq_config(ports, pki=None, extra=(), nofile=20000, ws=False,
                   plain_port=None):
    """FlashMQ's own format (flashmq.conf(5)) with the settings the others
    get: one worker thread, anonymous clients, the same queue bound,
    errors and warnings only. It listens on every address (its listen
    block has no bind address for IPv4 alone): the generator uses
    127.0.0.1. Its tcp_nodelay stays at its default (off), as Mosquitto's
    set_tcp_nodelay does."""
    lines = ["# Generated by bench/run.py: the same settings as the others.",
             "thread_count 1",
             "allow_anonymous true",
             f"max_qos_msg_pending_per_client {min(MAX_QUEUED, 65535)}",
             "log_level warning",
             f"rlimit_nofile {nofile}"]
    if plain_port:  # a WebSocket run's extra plain listener, as the others
        lines += ["listen {", "  protocol mqtt", "  inet_protocol ip4",
                  f"  port {plain_port}", "}"]
    for p in ports:
        lines += ["listen {",
                  "  protocol websockets" if ws else "  protocol mqtt",
                  "  inet_protocol ip4", f"  port {p}"]
        if pki:
            # Mutual TLS: the certificate's CN is the client's username.
            lines += [f"  fullchain {pki}/server.pem",
                      f"  privkey {pki}/server.key",
                      f"  client_verification_ca_file {pki}/ca.pem"]
        lines.append("}")
    if extra:
        lines.append("# The scenario's own lines:")
        lines += list(extra)
    return "\n".join(lines) + "\n"


# TCP answers the first 16 segments of a connection with an ACK at once,
# sent by the receiving kernel while it handles the sender's segment: on
# loopback, on the publisher's CPU. After that the reader (the broker) sends
# it when it reads. A window that closes before every publisher is past
# those measures the brokers too cheap (kite 5-6 CPU-s per million on
# fanin-q0-rate, 8-8.5 after).
QUICK_ACK_SEGMENTS = 16


def warmup_s(sc, base, rate=None):
    """The profile's warm-up, or longer for a paced run: until every
    publisher has sent past TCP's quick ACKs, at most 6 s."""
    total = rate if rate is not None else scenario_opt(sc, "--rate")
    pubs = scenario_opt(sc, "--pubs") or scenario_opt(sc, "--pairs")
    if not total or not pubs:
        return base
    need = (QUICK_ACK_SEGMENTS + 4) * pubs / total
    return round(min(6.0, max(base, need)), 2)


def broker_config(kind, ports, mosquitto_nodelay=False, pki=None,
                  extra=(), ws=False, mtls=True, plain_port=None):
    if kind == "flashmq":
        return flashmq_config(ports, pki, extra,
                              resource.getrlimit(resource.RLIMIT_NOFILE)[0],
                              ws, plain_port)
    lines = ["# Generated by bench/run.py: the same settings for every broker.",
             "per_listener_settings false",
             "allow_anonymous true"]
    if plain_port:
        # Mosquitto 2.0.11 refuses to start with WebSockets listeners only
        # ("Unable to start any listening sockets", eclipse-mosquitto
        # issue #2284): both brokers get one unused plain listener too.
        lines.append(f"listener {plain_port} 127.0.0.1")
    for p in ports:
        lines.append(f"listener {p} 127.0.0.1")
        if ws:
            # Mosquitto (libwebsockets) then listens on [::] whatever the
            # address; Broker.start waits for the port on IPv6 too.
            lines.append("protocol websockets")
        if pki:
            # Listener options, Mosquitto's names: mutual TLS, the client
            # certificate's CN becomes the username.
            lines += [f"cafile {pki}/ca.pem",
                      f"certfile {pki}/server.pem",
                      f"keyfile {pki}/server.key"]
            if mtls:
                lines += ["require_certificate true",
                          "use_identity_as_username true"]
    inflight = MAX_INFLIGHT["mosquitto" if kind == "mosquitto" else "kite"]
    lines += [f"max_inflight_messages {inflight}",
              f"max_queued_messages {MAX_QUEUED}",
              "connection_messages false",
              "sys_interval 0",
              "log_dest stderr",
              "log_type error",
              "log_type warning"]
    if kind == "mosquitto" and mosquitto_nodelay:
        # Off by default (Mosquitto's default, and kite rejects the line).
        lines.append("set_tcp_nodelay true")
    if (pki or extra) and os.geteuid() == 0:
        # Run as root, both brokers switch to the `mosquitto` user, which
        # cannot read the generated keys (mode 0600 in a root-only
        # directory) nor write a persistence directory the harness made.
        lines.append("user root")
    if extra:
        lines.append("# The scenario's own lines:")
        lines += list(extra)
    if kind == "kite":
        # Pinned to one CPU: one shard. kite must keep its threads inside
        # the affinity mask it was started with.
        lines.append("shards 1")
    if kind == "kite-all":
        # Not pinned: one shard per online CPU.
        lines.append(f"shards {ALL_CPUS}")
    return "\n".join(lines) + "\n"


def cpus_allowed(pid):
    """{tid: Cpus_allowed_list} for every thread of pid."""
    out = {}
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/status") as f:
                for line in f:
                    if line.startswith("Cpus_allowed_list:"):
                        out[tid] = line.split(":", 1)[1].strip()
    except OSError:
        pass
    return out


def cpu_ticks(cpus):
    """{cpu: (busy, total)} from /proc/stat, in USER_HZ ticks."""
    out = {}
    with open("/proc/stat") as f:
        for line in f:
            parts = line.split()
            if not parts or not parts[0].startswith("cpu") or parts[0] == "cpu":
                continue
            cpu = int(parts[0][3:])
            if cpu in cpus:
                v = [int(x) for x in parts[1:9]]
                busy = v[0] + v[1] + v[2] + v[5] + v[6] + v[7]
                out[cpu] = (busy, busy + v[3] + v[4])
    return out


def cpu_load(cpus, interval=0.25):
    """Percent busy of each CPU over `interval` seconds."""
    a = cpu_ticks(cpus)
    time.sleep(interval)
    b = cpu_ticks(cpus)
    return {c: 100.0 * (b[c][0] - a[c][0]) / max(1, b[c][1] - a[c][1])
            for c in cpus if c in a and c in b}


def wait_quiet(limit_s, threshold=10.0, interval=0.25):
    """Waits (at most limit_s) until both benchmark CPUs are nearly idle;
    returns the last load seen (over `interval` s)."""
    deadline = time.monotonic() + limit_s
    while True:
        load = cpu_load({GEN_CPU, BROKER_CPU}, interval)
        if all(v < threshold for v in load.values()) or \
                time.monotonic() >= deadline:
            return load
        time.sleep(0.5)


class Broker:
    def __init__(self, kind, binary, workdir, nports, nodelay=False,
                 pki=None, extra=(), ws=False, mtls=True):
        self.kind, self.binary = kind, binary
        self.ports = free_ports(nports + (1 if ws else 0))
        # The generator gets self.ports; a WebSocket run's extra plain
        # listener is only waited for.
        self.plain_port = self.ports.pop() if ws else None
        self.conf = os.path.join(workdir, f"{kind}.conf")
        self.logpath = os.path.join(workdir, f"{kind}.log")
        with open(self.conf, "w") as f:
            f.write(broker_config(kind, self.ports, nodelay, pki, extra,
                                  ws, mtls, self.plain_port))
        self.proc = None
        self.notes = []

    def start(self, timeout=5.0):
        self.logf = open(self.logpath, "w")
        spread = self.kind == "kite-all"
        cpus = set(range(ALL_CPUS)) if spread else {BROKER_CPU}
        self.proc = subprocess.Popen(
            [self.binary, "-c", self.conf], stdin=subprocess.DEVNULL,
            stdout=self.logf, stderr=subprocess.STDOUT,
            preexec_fn=_pin_and_tie(cpus))
        _children.append(self.proc)
        deadline = time.monotonic() + timeout
        pending = set(self.ports) | ({self.plain_port} - {None})
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return f"exited with status {self.proc.returncode}"
            for p in list(pending):
                # Mosquitto's WebSockets listeners bind [::] whatever the
                # address: either family answering means it listens.
                for host in ("127.0.0.1", "::1"):
                    try:
                        with socket.create_connection((host, p), 0.2):
                            pending.discard(p)
                            break
                    except OSError:
                        pass
            if not pending:
                break
            time.sleep(0.02)
        if pending:
            return f"not listening on {sorted(pending)} after {timeout} s"
        if spread:
            return None
        # Every thread must sit on the broker CPU. A broker that pins its
        # own threads elsewhere is noted and moved back (taskset -a).
        bad = {t: c for t, c in cpus_allowed(self.proc.pid).items()
               if c != str(BROKER_CPU)}
        if bad:
            self.notes.append(f"threads outside CPU {BROKER_CPU} at start: "
                              f"{bad}; re-pinned")
            for tid in bad:
                try:
                    os.sched_setaffinity(int(tid), {BROKER_CPU})
                except OSError:
                    pass
        return None

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def stop(self):
        if self.proc is not None:
            stop_process(self.proc)
        if getattr(self, "logf", None):
            self.logf.close()

    def log_text(self):
        try:
            with open(self.logpath, errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    def log_tail(self, n=15):
        try:
            with open(self.logpath, errors="replace") as f:
                return "".join(f.readlines()[-n:])
        except OSError:
            return ""


# ---- one run ---------------------------------------------------------------------

def run_one(args, sc, kind, binary, rate, workdir):
    """Runs one scenario against one fresh broker; returns a result dict."""
    prof = PROFILES[args.profile]
    rec = dict(scenario=sc["name"], broker=kind, title=sc["title"],
               kind=sc["kind"], ok=False, notes=[])
    t_run = time.monotonic()
    timing = rec["timing_s"] = {}
    if args.profile != "smoke":
        t_wait = time.monotonic()
        load = wait_quiet(args.wait_quiet,
                          interval=0.25 if args.wait_quiet else 0.1)
        rec["waited_s"] = round(time.monotonic() - t_wait, 2)
        rec["load_before"] = {str(c): round(v, 1) for c, v in load.items()}
        if any(v >= 10 for v in load.values()):
            rec["notes"].append("CPUs busy before the run: " + ", ".join(
                f"CPU {c} {v:.0f}%" for c, v in sorted(load.items())))
    pki = args.pki if sc.get("tls") else None
    extra, statedir = [], None
    if sc.get("conf"):
        lines = sc["conf"].get(broker_family(kind), [])
        if any("{dir}" in ln for ln in lines):
            # A fresh, empty persistence directory for every run.
            statedir = tempfile.mkdtemp(prefix=f"{kind}-",
                                        dir=args.state_dir or workdir)
        extra = [ln.replace("{dir}", statedir or "") for ln in lines]
    b = Broker(kind, binary, workdir, sc.get("ports", 1),
               args.mosquitto_nodelay, pki, extra, sc.get("ws", False),
               sc.get("mtls", True))
    if extra:
        rec["broker_conf_extra"] = extra
    t_start = time.monotonic()
    err = b.start()
    timing["start"] = round(time.monotonic() - t_start, 3)
    if err:
        rec["start_error"] = err
        rec["notes"].append(f"{kind} did not start: {err}")
        rec["log_tail"] = b.log_tail()
        b.stop()
        if statedir:
            shutil.rmtree(statedir, ignore_errors=True)
        return rec
    try:
        gen_timeout = 240 if args.profile == "full" else 60
        cmd = [args.gen, "--port", ",".join(map(str, b.ports)),
               "--name", sc["name"], "--broker-pid", str(b.proc.pid),
               "--warmup", str(warmup_s(sc, prof["warmup"], rate)),
               "--duration", str(prof["duration"]),
               "--hold", str(max(0.5, prof["duration"] / 2)),
               "--drain", "15", "--setup", "90",
               "--gen-bound", str(args.gen_bound),
               "--timeout", str(gen_timeout)] + sc["args"].split()
        if rate is not None:
            cmd += ["--rate", f"{rate:.1f}"]
        if pki:
            cmd += ["--tls", "--cafile", f"{pki}/ca.pem"]
            if sc.get("mtls", True):
                cmd += ["--cert-dir", pki, "--cert-prefix", "dev-",
                        "--cert-count",
                        str(sc.get("cert_count", args.pki_count))]
        if sc.get("ws"):
            cmd.append("--ws")
        if sc["kind"] != "idle" and not args.no_busy_poll:
            cmd.append("--busy-poll")
        rec["cmd"] = " ".join(cmd)
        t_gen = time.monotonic()
        try:
            p = subprocess.run(cmd, stdin=subprocess.DEVNULL,
                               capture_output=True, text=True,
                               timeout=gen_timeout + 20,
                               preexec_fn=_pin_and_tie({GEN_CPU}))
            out, errout, rc = p.stdout, p.stderr, p.returncode
        except subprocess.TimeoutExpired as e:
            out = e.stdout or ""
            errout = e.stderr or ""
            if isinstance(out, bytes):
                out = out.decode(errors="replace")
            if isinstance(errout, bytes):
                errout = errout.decode(errors="replace")
            rc = -1
            rec["notes"].append("generator killed at the harness timeout")
        rec["gen_rc"] = rc
        timing["generator"] = round(time.monotonic() - t_gen, 3)
        res = None
        for line in out.splitlines():
            if line.startswith("{"):
                try:
                    res = json.loads(line)
                except ValueError:
                    pass
            elif line.strip():
                rec["human"] = line.strip()
        if res is None:
            rec["notes"].append("no JSON from the generator")
            rec["gen_stderr"] = errout[-2000:]
        else:
            rec["result"] = res
            rec["ok"] = bool(res.get("ok")) and rc == 0
            hs, resumed = res.get("tls_handshakes", 0), res.get("tls_resumed", 0)
            if "--tls-resume" in sc["args"] and resumed * 2 < hs:
                # Not the scenario it claims to be: its figure would be
                # the full storm's.
                rec["ok"] = False
                rec["notes"].append(f"only {resumed} of {hs} handshakes "
                                    "resumed")
        if not b.alive():
            rec["ok"] = False
            rec["notes"].append(f"{kind} died during the run "
                                f"(status {b.proc.returncode})")
            rec["log_tail"] = b.log_tail()
        rec["notes"] += b.notes
        if errout.strip() and not rec["ok"]:
            rec["gen_stderr"] = errout[-2000:]
    finally:
        t_stop = time.monotonic()
        b.stop()
        timing["stop"] = round(time.monotonic() - t_stop, 3)
        if statedir:
            rec["state_bytes"] = dir_bytes(statedir)
            shutil.rmtree(statedir, ignore_errors=True)
        timing["total"] = round(time.monotonic() - t_run, 3)
        rec["loadavg"] = os.getloadavg()
        # What the broker logged (errors and warnings only), minus the
        # start-up lines; kept in results.json and counted in the table.
        lines = [ln for ln in b.log_text().splitlines() if ln.strip()
                 and "should not be run as root" not in ln]
        if lines:
            rec["broker_log"] = lines[:20] + (
                [f"... {len(lines) - 20} more lines"] if len(lines) > 20
                else [])
            rec["broker_log_lines"] = len(lines)
    return rec


def dir_bytes(path):
    """Bytes in the files under path (what the broker left at exit)."""
    n = 0
    for dp, _, fns in os.walk(path):
        for fn in fns:
            try:
                n += os.lstat(os.path.join(dp, fn)).st_size
            except OSError:
                pass
    return n


def fs_of(path):
    """(mount point, file system type) holding path, from /proc/mounts."""
    path = os.path.realpath(path)
    best = ("/", "?")
    try:
        with open("/proc/mounts") as f:
            for line in f:
                p = line.split()
                if len(p) < 3:
                    continue
                mp = p[1].replace("\\040", " ")
                if (path == mp or path.startswith(mp.rstrip("/") + "/")) \
                        and len(mp) >= len(best[0]):
                    best = (mp, p[2])
    except OSError:
        pass
    return best


def print_run(rec):
    tag = "ok" if rec["ok"] else "FAILED"
    human = rec.get("human", "")
    log(f"  [{rec['broker']:>9}] {tag:6} {human}")
    for n in rec["notes"]:
        log(f"  [{rec['broker']:>9}]        note: {n}")
    if rec.get("broker_log"):
        log(f"  [{rec['broker']:>9}]        broker log "
            f"({rec['broker_log_lines']} lines): "
            + " | ".join(rec["broker_log"][:3]))
    if not rec["ok"]:
        r = rec.get("result") or {}
        if r.get("errors"):
            log(f"  [{rec['broker']:>9}]        errors: {r['errors']}")
        if rec.get("gen_stderr"):
            log("        generator stderr: " +
                rec["gen_stderr"].strip().replace("\n", "\n        "))
        if rec.get("log_tail"):
            log("        broker log: " +
                rec["log_tail"].strip().replace("\n", "\n        "))


# ---- reporting -----------------------------------------------------------------

def metric(rec, key):
    if not rec or "result" not in rec:
        return None
    v = rec["result"].get(key)
    if isinstance(v, (int, float)) and v >= 0:
        return v
    return None


def lat(rec, key):
    if not rec or "result" not in rec:
        return None
    v = rec["result"].get("latency_us", {}).get(key)
    return v if rec["result"].get("latency_us", {}).get("n") else None


def fmt(v, digits=3):
    if v is None:
        return "–"
    if abs(v) >= 1000:
        return f"{v:,.0f}"
    if abs(v) >= 100:
        return f"{v:.0f}"
    if abs(v) >= 10:
        return f"{v:.1f}"
    return f"{v:.{digits}g}"


def ratio(k, m):
    if k is None or m is None or m == 0:
        return "–"
    return f"{k / m:.3g}×"


def flags(rec):
    if rec is None:
        return "not run"
    f = []
    if not rec["ok"]:
        f.append("FAILED")
    r = rec.get("result") or {}
    if r.get("generator_bound"):
        f.append("generator-bound")
    if r.get("rate_target") and not r.get("rate_met", True):
        f.append("rate not met")
    if r.get("lost"):
        f.append(f"lost {r['lost']}")
    if r.get("stalls"):
        f.append(f"stalls {r['stalls']}")
    if r.get("contended") and r.get("broker_spread"):
        f.append(f"contended (other load "
                 f"{r.get('both_cpus_foreign_pct', 0):.0f}% over CPUs "
                 f"{GEN_CPU}+{BROKER_CPU})")
    elif r.get("contended"):
        f.append(f"contended (other load {r.get('gen_cpu_foreign_pct', 0):.0f}%"
                 f" / {r.get('broker_cpu_foreign_pct', 0):.0f}% on CPU "
                 f"{GEN_CPU} / {BROKER_CPU})")
    return ", ".join(f) or "ok"


KEY_METRIC = {"idle": "rss_per_conn_kb", "storm": "handshakes_per_s"}


def median_runs(doc):
    """{(scenario, broker): run}: with --repeat, the run with the median
    of the scenario's key figure (deliveries/s; idle: RSS per connection;
    storm: handshakes/s); a failed run counts when nothing else ran."""
    groups = {}
    for r in doc["runs"]:
        groups.setdefault((r["scenario"], r["broker"]), []).append(r)
    out = {}
    for k, rs in groups.items():
        key = KEY_METRIC.get(rs[0]["kind"], "deliveries_per_s")
        have = sorted((r for r in rs if metric(r, key) is not None),
                      key=lambda r: metric(r, key))
        out[k] = have[(len(have) - 1) // 2] if have else rs[-1]
    return out


def median(vals):
    v = sorted(x for x in vals if x is not None)
    if not v:
        return None
    n = len(v)
    return v[n // 2] if n % 2 else (v[n // 2 - 1] + v[n // 2]) / 2


def persist_lines(doc, pscs):
    """The durable-state section: every persistence variant of a broker
    beside the same broker without persistence, medians over --repeat."""
    groups = {}
    for r in doc["runs"]:
        groups.setdefault((r["scenario"], r["broker"]), []).append(r)

    def med(name, broker, key):
        return median(metric(r, key) for r in groups.get((name, broker), []))

    L = ["## Durable state: persistent sessions, QoS 1, persistence off "
         "and on", ""]
    L.append("Every client connects with a persistent session (kite-bench "
             "`--persistent`: clean session 0, so the broker keeps and, "
             "with persistence, logs every queued and in-flight message). "
             "`off`: no persistence; kite `on`: `persistence true` with its "
             "default `persistence_sync 1000` (acknowledgements wait for "
             "the write, fdatasync at most 1 s later); `never`: write, no "
             "fdatasync; `always`: write + fdatasync before every "
             "acknowledgement (group commit: one fdatasync at a time per "
             "shard, covering every write made before it); Mosquitto "
             "`on`: `persistence true`, which saves its whole database every "
             "`autosave_interval` (default 30 minutes) and at exit, so "
             "nothing is written during the window. Figures are medians of "
             f"{doc['meta'].get('repeat', 1)} run(s); `× off` divides by the "
             "same broker's `off` median. Targets (durability issue): kite "
             "with persistence and no sync per acknowledgement (`on`, "
             "`never`) keeps ≥ 85% of its throughput without persistence; "
             "`always` keeps ≥ 50%. Persistence directories: "
             + (f"{doc['meta']['state_dir']['fstype']} on "
                f"{doc['meta']['state_dir']['mount']}"
                if doc["meta"].get("state_dir") else "?") + ".")
    L.append("")
    L.append("| scenario | broker | persistence | deliveries/s | × off | "
             "target | met | CPU-s / M deliveries | × off | kite / Mosq "
             "(deliveries/s) | broker CPU % | dir at exit MiB | runs: "
             "deliveries/s | notes |")
    L.append("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    bases = []
    for sc in pscs:
        if sc["base"] not in bases:
            bases.append(sc["base"])
    for base in bases:
        vs = [sc for sc in pscs if sc["base"] == base]
        for b in BROKER_KINDS:
            for sc in vs:
                rs = groups.get((sc["name"], b))
                if not rs:
                    continue
                off = f"{base}/off"
                d = med(sc["name"], b, "deliveries_per_s")
                c = med(sc["name"], b, "broker_cpu_s_per_m")
                d0 = med(off, b, "deliveries_per_s")
                c0 = med(off, b, "broker_cpu_s_per_m")
                v = sc["variant"]
                tgt = PERSIST_TARGETS.get(v) if b != "mosquitto" else None
                met = "–"
                if tgt is not None and d is not None and d0:
                    met = "yes" if d / d0 >= tgt else "**NO**"
                dm = med(sc["name"], "mosquitto", "deliveries_per_s")
                vsm = ratio(d, dm) if b != "mosquitto" else "–"
                sb = [r.get("state_bytes") for r in rs
                      if r.get("state_bytes") is not None]
                fl = {}
                for r in rs:
                    for f in flags(r).split(", "):
                        if f != "ok":
                            key = f.split(" (")[0]
                            fl[key] = fl.get(key, 0) + 1
                notes = ", ".join(f"{k} {n}/{len(rs)}" for k, n in fl.items())
                L.append(
                    f"| {base} | {b} | {v} | {fmt(d)} | "
                    f"{ratio(d, d0) if v != 'off' else '1×'} | "
                    f"{'≥ ' + format(tgt, '.0%') if tgt else '–'} | {met} | "
                    f"{fmt(c)} | {ratio(c, c0) if v != 'off' else '1×'} | "
                    f"{vsm} | "
                    f"{fmt(med(sc['name'], b, 'broker_cpu_pct'))} | "
                    f"{format(median(x / 2**20 for x in sb), '.1f') if sb else '–'} | "
                    + " / ".join(fmt(metric(r, "deliveries_per_s"))
                                 for r in rs)
                    + f" | {notes or 'ok'} |")
    L.append("")
    L.append("A run flagged generator-bound had kite-bench's CPU full: its "
             "throughput is the generator's, and the CPU-s per million "
             "deliveries column says what persistence costs the broker.")
    L.append("")
    return L


def fmq_target(sc):
    """The issue's target for a scenario, as a ratio to FlashMQ's figure
    from the same run (or an absolute one): (text, check(kite, fmq) ->
    True/False, or None when it cannot be judged)."""
    name, kind = sc["name"], sc["kind"]
    if kind == "idle":
        lim = IDLE_TLS_TARGET_KB if sc.get("tls") else IDLE_TARGET_KB
        return (f"≤ {lim} KiB", lambda k, f: k["kb"] <= lim)
    if kind == "storm":
        return ("–", None)
    if kind == "latency" or kind == "rate":
        extra = ""
        if name.startswith("fanin-q0-rate") or name.startswith("fanin-q0-20k"):
            extra = ", ≤ 5 CPU-s/M"

        def ok(k, f):
            good = k["rate_met"] and (f["p99"] is None or k["p99"] is None
                                      or k["p99"] <= f["p99"])
            if extra:
                good = good and k["cpu"] is not None and k["cpu"] <= 5
            return good
        return ("keeps up, p99 ≤ FlashMQ" + extra, ok)
    lim = 0.4 if "fanout" in name else 0.6
    return (f"≤ {lim}× CPU/M",
            lambda k, f: None if k["cpu"] is None or not f["cpu"]
            else k["cpu"] / f["cpu"] <= lim)


def fmq_lines(doc, scs, runs):
    """kite beside FlashMQ (and Mosquitto) for every scenario, with the
    ratio to FlashMQ and the issue's target; the rows still short of it
    are listed after the table."""
    L = ["## kite / FlashMQ (the issue's targets are ratios to FlashMQ)", "",
         "Per scenario the figure that matters: broker CPU-s per million "
         "deliveries for flows, KiB of broker RSS per connection for idle "
         "runs, broker CPU-ms per handshake for storms; p50 / p99 latency "
         "in µs for fixed-rate rows.", "",
         "| scenario | figure | FlashMQ | Mosquitto | kite | kite/FlashMQ | "
         "FlashMQ p50/p99 µs | kite p50/p99 µs | target | met | notes |",
         "|---|---|---|---|---|---|---|---|---|---|---|"]
    short = []
    for sc in scs:
        f = runs.get((sc["name"], "flashmq"))
        m = runs.get((sc["name"], "mosquitto"))
        k = runs.get((sc["name"], "kite"))
        key, label = {"idle": ("rss_per_conn_kb", "KiB/conn"),
                      "storm": ("broker_cpu_ms_per_handshake",
                                "CPU-ms/handshake")}.get(
            sc["kind"], ("broker_cpu_s_per_m", "CPU-s/M"))
        fv, mv, kv = metric(f, key), metric(m, key), metric(k, key)
        lat_f = lat_k = "–"
        if sc["kind"] in ("rate", "latency"):
            lat_f = f"{fmt(lat(f, 'p50'))} / {fmt(lat(f, 'p99'))}"
            lat_k = f"{fmt(lat(k, 'p50'))} / {fmt(lat(k, 'p99'))}"
        text, check = fmq_target(sc)
        met = "–"
        if check and k and f and k.get("result") and f.get("result"):
            kr = k["result"]
            v = check(dict(cpu=metric(k, "broker_cpu_s_per_m"),
                           kb=kv if sc["kind"] == "idle" else None,
                           p99=lat(k, "p99"),
                           rate_met=kr.get("rate_met", True) and k["ok"]),
                      dict(cpu=metric(f, "broker_cpu_s_per_m"),
                           p99=lat(f, "p99")))
            met = "–" if v is None else ("yes" if v else "**no**")
            if v is False:
                short.append(sc["name"])
        full = ("--tls-resume" in sc["args"] and k and k["ok"]
                and runs.get(("tls-storm", "kite")))
        if full and full["ok"]:
            # The issue's target here is kite against itself: a resumed
            # handshake at most a quarter of a full one.
            fk = metric(full, key)
            if kv and fk:
                text = (f"≤ 0.25× kite's tls-storm "
                        f"(here {kv / fk:.3g}×)")
                met = "yes" if kv / fk <= 0.25 else "**no**"
                if met != "yes":
                    short.append(sc["name"])
        note = f"fmq: {flags(f)}; kite: {flags(k)}"
        if k and k.get("rate_from"):
            note += f"; rate: half of {k['rate_from']}'s saturation"
        L.append(f"| {sc['name']} | {label} | {fmt(fv)} | {fmt(mv)} | "
                 f"{fmt(kv)} | {ratio(kv, fv)} | {lat_f} | {lat_k} | {text} "
                 f"| {met} | {note} |")
    L.append("")
    L.append("Rows where kite is not yet at the target: "
             + (", ".join(short) if short else "none") + ".")
    L.append("")
    return L


def gen_cost_lines(doc, scs, runs):
    """The generator's own cost per scenario and broker: its working CPU
    (busy-poll spinning left out) per million deliveries, its send and
    receive calls per delivery, and that cost over the broker's. A ratio
    of 0.5 or less means this generator core can load a broker twice as
    cheap per delivery as the one measured."""
    kinds = [k for k in BROKER_KINDS
             if any(r["broker"] == k for r in doc["runs"])]
    rows, limited = [], []
    for sc in scs:
        if sc["kind"] in ("idle", "storm"):
            continue
        for kind in kinds:
            rec = runs.get((sc["name"], kind))
            g = metric(rec, "gen_cpu_s_per_m")
            if g is None:
                continue
            r = rec["result"]
            d = r.get("deliveries_in_window") or 0
            per = (lambda key: fmt(r[key] / d) if d and key in r else "–")
            b = metric(rec, "broker_cpu_s_per_m")
            calls = (r.get("gen_sends_in_window", 0)
                     + r.get("gen_recvs_in_window", 0))
            # CPU-s per million deliveries / calls per delivery = µs per
            # call: what one send or receive costs the generator.
            us_call = g * d / calls if d and calls else None
            if sc["kind"] == "sat" and b and g >= b:
                limited.append(f"{sc['name']} ({kind}, {g / b:.2f})")
            rows.append(f"| {sc['name']} | {kind} | {fmt(g)} | "
                        f"{fmt(b)} | {ratio(g, b).rstrip('×')} | "
                        f"{per('gen_sends_in_window')} | "
                        f"{per('gen_recvs_in_window')} | {fmt(us_call)} | "
                        f"{fmt(metric(rec, 'gen_work_pct'))} |")
    if not rows:
        return []
    return ["## Generator cost (kite-bench's own CPU)", "",
            "Working CPU-s of kite-bench per million deliveries (spinning "
            "left out, counted in thread CPU time), its send and receive "
            "calls per delivery, and its cost over the broker's: at 0.5 or "
            "less one generator core can load a broker twice as cheap as "
            "this one. Per-million figures move less than rates when other "
            "processes share the CPUs.", "",
            "| scenario | broker | gen CPU-s/M | broker CPU-s/M | gen / broker "
            "| sends / delivery | recvs / delivery | gen µs per call "
            "| gen working % |",
            "|---|---|---|---|---|---|---|---|---|"] + rows + [
            "", "Saturation rows where the generator costs at least as much "
            "per delivery as the broker (one generator core cannot saturate "
            "this broker there, whatever the working share says; gen / "
            "broker): " + (", ".join(limited) if limited else "none") + ".",
            ""]


def write_table(path, doc, scs):
    runs = median_runs(doc)
    # The persist-* rows have their own section (write_persist).
    pscs = [sc for sc in scs if sc.get("group") == "persist"]
    scs = [sc for sc in scs if sc.get("group") != "persist"]
    kite_on = doc["kite_measured"]
    # kite-all's columns appear only when it ran.
    all_on = any(r["broker"] == "kite-all" for r in doc["runs"])
    L = []
    L.append(f"# kite vs Mosquitto — {doc['meta']['profile']} run, "
             f"{doc['meta']['date']}")
    L.append("")
    L.append(f"Machine: {doc['meta']['cpus']} CPUs "
             f"({doc['meta'].get('cpu_model', '?')}), kernel "
             f"{doc['meta']['kernel']} (Meltdown: "
             f"{doc['meta'].get('meltdown', '?')}; a getppid syscall "
             f"{doc['meta'].get('syscall_ns', '?')} ns). Broker pinned to CPU {BROKER_CPU}, "
             f"kite-bench to CPU {GEN_CPU}. Mosquitto: "
             f"{doc['meta']['mosquitto_version']}.")
    if not kite_on:
        L.append("")
        L.append("**kite was NOT measured in this run** "
                 f"({doc['meta'].get('kite_reason', '')}): Mosquitto only.")
    L.append("")
    L.append("Ratios are kite / Mosquitto from this run (below 1× is better "
             "for CPU, latency and memory; above 1× for throughput).")
    L.append("")
    if all_on:
        L.append(f"**kite-all** is kite with `shards {ALL_CPUS}` (one per "
                 "online CPU) and no CPU pinning: the all-cores "
                 "configuration an operator would run, not a clean scaling "
                 f"figure. kite-bench stays pinned to CPU {GEN_CPU}, so on "
                 f"this {ALL_CPUS}-CPU machine kite's shard 0 shares that "
                 "CPU with the generator. Its broker CPU % can exceed 100 "
                 "(both CPUs); contention is counted over both CPUs "
                 "together, and its bottleneck reads \"both CPUs busy\" "
                 "when broker and generator filled the machine.")
        L.append("")
    if any(r["broker"] == "flashmq" for r in doc["runs"]) and scs:
        L += fmq_lines(doc, scs, runs)
    if pscs:
        L += persist_lines(doc, pscs)
    if scs:
        L.append("## Broker CPU-seconds per million deliveries (lower is better)")
        L.append("")
        L.append("| scenario | what | Mosquitto | kite | kite/Mosq | "
                 + ("kite-all | kite-all/Mosq | " if all_on else "")
                 + "kite target | Mosquitto (DESIGN.md) | notes |")
        L.append("|---|---|---|---|---|---|---|---|" + ("---|---|" if all_on
                                                        else ""))
        for sc in scs:
            if sc["kind"] in ("idle", "storm"):
                continue
            m = runs.get((sc["name"], "mosquitto"))
            k = runs.get((sc["name"], "kite"))
            t = TARGETS.get(sc["name"], {})
            mv, kv = metric(m, "broker_cpu_s_per_m"), metric(k, "broker_cpu_s_per_m")
            note = f"mosq: {flags(m)}; kite: {flags(k) if kite_on else 'not measured'}"
            cols = ""
            if all_on:
                a = runs.get((sc["name"], "kite-all"))
                av = metric(a, "broker_cpu_s_per_m")
                cols = f"{fmt(av)} | {ratio(av, mv)} | "
                note += f"; kite-all: {flags(a)}"
            L.append(f"| {sc['name']} | {sc['title']} | {fmt(mv)} | {fmt(kv)} | "
                     f"{ratio(kv, mv)} | {cols}{fmt(t.get('kite_target'))} | "
                     f"{fmt(t.get('mosquitto_ref'))} | {note} |")
        L.append("")
        L.append("## Throughput and generator load")
        L.append("")
        L.append("| scenario | Mosq deliveries/s | kite deliveries/s | kite/Mosq "
                 + ("| kite-all deliveries/s | kite-all/Mosq " if all_on else "")
                 + "| Mosq pub/s | kite pub/s | Mosq broker CPU % | kite broker CPU % "
                 + ("| kite-all broker CPU % | gen working CPU % (Mosq / kite / "
                    "kite-all) | bottleneck (Mosq / kite / kite-all) |" if all_on
                    else "| gen working CPU % (Mosq / kite) | bottleneck "
                    "(Mosq / kite) |"))
        L.append("|---|---|---|---|---|---|---|---|---|---|" + ("---|---|---|"
                                                                if all_on else ""))
        for sc in scs:
            if sc["kind"] in ("idle", "storm"):
                continue
            m = runs.get((sc["name"], "mosquitto"))
            k = runs.get((sc["name"], "kite"))
            a = runs.get((sc["name"], "kite-all"))
            md, kd = metric(m, "deliveries_per_s"), metric(k, "deliveries_per_s")
            ad = metric(a, "deliveries_per_s")
            L.append(f"| {sc['name']} | {fmt(md)} | {fmt(kd)} | {ratio(kd, md)} | "
                     + (f"{fmt(ad)} | {ratio(ad, md)} | " if all_on else "")
                     + f"{fmt(metric(m, 'pub_rate'))} | {fmt(metric(k, 'pub_rate'))} | "
                     f"{fmt(metric(m, 'broker_cpu_pct'))} | "
                     f"{fmt(metric(k, 'broker_cpu_pct'))} | "
                     + (f"{fmt(metric(a, 'broker_cpu_pct'))} | " if all_on else "")
                     + f"{fmt(metric(m, 'gen_work_pct'))} / "
                     f"{fmt(metric(k, 'gen_work_pct'))}"
                     + (f" / {fmt(metric(a, 'gen_work_pct'))}" if all_on else "")
                     + f" | {(m or {}).get('result', {}).get('bottleneck', '–')} / "
                     f"{(k or {}).get('result', {}).get('bottleneck', '–')}"
                     + (f" / {(a or {}).get('result', {}).get('bottleneck', '–')}"
                        if all_on else "") + " |")
        L.append("")
        L.append("## End-to-end latency, µs (publisher send → subscriber receive)")
        L.append("")
        L.append("| scenario | rate msg/s | Mosq p50 | kite p50 | ratio | Mosq p99 "
                 "| kite p99 | ratio | Mosq p99.9 | kite p99.9 | ratio | Mosq max "
                 "| kite max |")
        L.append("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
        for sc in scs:
            if sc["kind"] in ("idle", "storm"):
                continue
            m = runs.get((sc["name"], "mosquitto"))
            k = runs.get((sc["name"], "kite"))
            rt = metric(m, "rate_target") or metric(k, "rate_target")
            row = [sc["name"], fmt(rt) if rt else "saturation"]
            for q in ("p50", "p99", "p999"):
                mv, kv = lat(m, q), lat(k, q)
                row += [fmt(mv), fmt(kv), ratio(kv, mv)]
            row += [fmt(lat(m, "max")), fmt(lat(k, "max"))]
            L.append("| " + " | ".join(row) + " |")
        L.append("")
        L.append("Saturation latencies mostly measure the generator's in-flight "
                 "window (queueing by design); the `lat-*` rows are the latency "
                 "figures.")
        L.append("")
        if all_on:
            L.append("kite-all latency, µs (ratios to Mosquitto's figures "
                     "above):")
            L.append("")
            L.append("| scenario | rate msg/s | kite-all p50 | ratio | kite-all "
                     "p99 | ratio | kite-all p99.9 | ratio | kite-all max |")
            L.append("|---|---|---|---|---|---|---|---|---|")
            for sc in scs:
                if sc["kind"] in ("idle", "storm"):
                    continue
                m = runs.get((sc["name"], "mosquitto"))
                a = runs.get((sc["name"], "kite-all"))
                rt = metric(m, "rate_target") or metric(a, "rate_target")
                row = [sc["name"], fmt(rt) if rt else "saturation"]
                for q in ("p50", "p99", "p999"):
                    mv, av = lat(m, q), lat(a, q)
                    row += [fmt(av), ratio(av, mv)]
                row.append(fmt(lat(a, "max")))
                L.append("| " + " | ".join(row) + " |")
            L.append("")
        L.append("## Memory")
        L.append("")
        L.append("| scenario | Mosq KiB/conn | kite KiB/conn | kite/Mosq | "
                 + ("kite-all KiB/conn | kite-all/Mosq | " if all_on else "")
                 + "kite target | Mosq RSS KiB | kite RSS KiB | "
                 + ("kite-all RSS KiB | " if all_on else "") + "notes |")
        L.append("|---|---|---|---|---|---|---|---|" + ("---|---|---|" if all_on
                                                        else ""))
        for sc in scs:
            if sc["kind"] != "idle":
                continue
            m = runs.get((sc["name"], "mosquitto"))
            k = runs.get((sc["name"], "kite"))
            mv, kv = metric(m, "rss_per_conn_kb"), metric(k, "rss_per_conn_kb")
            a = runs.get((sc["name"], "kite-all"))
            av = metric(a, "rss_per_conn_kb")
            tgt = IDLE_TLS_TARGET_KB if sc.get("tls") else IDLE_TARGET_KB
            L.append(f"| {sc['name']} | {fmt(mv)} | {fmt(kv)} | {ratio(kv, mv)} | "
                     + (f"{fmt(av)} | {ratio(av, mv)} | " if all_on else "")
                     + f"≤ {tgt} | {fmt(metric(m, 'broker_rss_kb_end'))} | "
                     f"{fmt(metric(k, 'broker_rss_kb_end'))} | "
                     + (f"{fmt(metric(a, 'broker_rss_kb_end'))} | " if all_on
                        else "")
                     + f"mosq: {flags(m)}; "
                     f"kite: {flags(k) if kite_on else 'not measured'}"
                     + (f"; kite-all: {flags(a)}" if all_on else "") + " |")
        L.append("")
        storms = [sc for sc in scs if sc["kind"] == "storm"]
        if storms:
            L.append("## Connection storm (new connections per second until "
                     "saturation)")
            L.append("")
            L.append("Each connection: TCP connect, TLS handshake (mTLS, no "
                     "resumption) where marked, CONNECT, SUBSCRIBE, DISCONNECT, "
                     "then the broker closes it; a fixed number are in flight. "
                     "CPU-ms per handshake = broker CPU time in the window / "
                     "cycles completed (everything above included). DESIGN.md: "
                     f"TLS handshake ≈ {HANDSHAKE_MOSQ_REF_MS} ms for Mosquitto, "
                     f"kite ≤ {HANDSHAKE_TARGET_MS} ms.")
            L.append("")
            L.append("| scenario | Mosq handshakes/s | kite handshakes/s | "
                     "kite/Mosq | Mosq CPU-ms/handshake | kite CPU-ms/handshake "
                     "| kite/Mosq | "
                     + ("kite-all handshakes/s | kite-all/Mosq | kite-all "
                        "CPU-ms/handshake | kite-all/Mosq | " if all_on else "")
                     + "kite target | broker CPU % (Mosq / kite"
                     + (" / kite-all" if all_on else "") + ") | "
                     "gen working CPU % (Mosq / kite"
                     + (" / kite-all" if all_on else "") + ") | bottleneck "
                     "(Mosq / kite" + (" / kite-all" if all_on else "") + ") "
                     "| notes |")
            L.append("|---|---|---|---|---|---|---|---|---|---|---|---|"
                     + ("---|---|---|---|" if all_on else ""))
            for sc in storms:
                m = runs.get((sc["name"], "mosquitto"))
                k = runs.get((sc["name"], "kite"))
                mh, kh = (metric(m, "handshakes_per_s"),
                          metric(k, "handshakes_per_s"))
                mc, kc = (metric(m, "broker_cpu_ms_per_handshake"),
                          metric(k, "broker_cpu_ms_per_handshake"))
                a = runs.get((sc["name"], "kite-all"))
                ah, ac = (metric(a, "handshakes_per_s"),
                          metric(a, "broker_cpu_ms_per_handshake"))
                L.append(f"| {sc['name']} | {fmt(mh)} | {fmt(kh)} | "
                         f"{ratio(kh, mh)} | {fmt(mc)} | {fmt(kc)} | "
                         f"{ratio(kc, mc)} | "
                         + (f"{fmt(ah)} | {ratio(ah, mh)} | {fmt(ac)} | "
                            f"{ratio(ac, mc)} | " if all_on else "")
                         + f"{'≤ ' + str(HANDSHAKE_TARGET_MS) if sc.get('tls') else '–'}"
                         f" | {fmt(metric(m, 'broker_cpu_pct'))} / "
                         f"{fmt(metric(k, 'broker_cpu_pct'))}"
                         + (f" / {fmt(metric(a, 'broker_cpu_pct'))}" if all_on
                            else "")
                         + f" | {fmt(metric(m, 'gen_work_pct'))} / "
                         f"{fmt(metric(k, 'gen_work_pct'))}"
                         + (f" / {fmt(metric(a, 'gen_work_pct'))}" if all_on
                            else "")
                         + f" | {(m or {}).get('result', {}).get('bottleneck', '–')} / "
                         f"{(k or {}).get('result', {}).get('bottleneck', '–')}"
                         + (f" / {(a or {}).get('result', {}).get('bottleneck', '–')}"
                            if all_on else "")
                         + f" | mosq: {flags(m)}; kite: "
                         f"{flags(k) if kite_on else 'not measured'}"
                         + (f"; kite-all: {flags(a)}" if all_on else "") + " |")
            L.append("")
    if any(sc.get("ws") for sc in scs):
        L.append("WebSocket scenarios (`ws-*`, `wss-*`): the listeners have "
                 "`protocol websockets`; kite-bench --ws sends an upgrade "
                 "(GET /mqtt, subprotocol mqtt), then every MQTT packet as "
                 "one masked binary frame, and reads any framing. `wss-*`: "
                 "TLS with the server certificate only (Mosquitto's "
                 "WebSockets listeners take no client certificates), so "
                 "compare it with `tls-fanout-q0` (mutual TLS) only loosely.")
        L.append("")
    tls_runs = [r for r in doc["runs"] if (r.get("result") or {}).get("tls")]
    if tls_runs:
        vers = sorted({r["result"]["tls"] for r in tls_runs})
        L.append("TLS scenarios (`tls-*`): mutual TLS, ECDSA P-256 CA, server "
                 "and one client certificate per connection from `kite cert`, "
                 "`require_certificate true`, `use_identity_as_username "
                 "true`, no session resumption; negotiated: "
                 + ", ".join(vers) + ".")
        L.append("")
    logged = [f"{r['scenario']} ({r['broker']}): {r['broker_log_lines']} "
              f"lines, first: `{r['broker_log'][0]}`"
              for r in doc["runs"] if r.get("broker_log")]
    L.append("Broker log lines at level warning or error (full text in "
             "results.json, `broker_log`): "
             + ("; ".join(logged) if logged else "none") + ".")
    L.append("")
    if scs:
        L.append("Peak RSS (VmHWM, KiB) per scenario: " + ", ".join(
            f"{sc['name']} {fmt(metric(runs.get((sc['name'], 'mosquitto')), 'broker_hwm_kb'))}"
            f" / {fmt(metric(runs.get((sc['name'], 'kite')), 'broker_hwm_kb'))}"
            + (f" / {fmt(metric(runs.get((sc['name'], 'kite-all')), 'broker_hwm_kb'))}"
               if all_on else "")
            for sc in scs) + " (Mosquitto / kite" + (" / kite-all" if all_on
                                                      else "") + ").")
        L.append("")
    L += gen_cost_lines(doc, scs, runs)
    cont = [f"{r['scenario']} ({r['broker']})" for r in doc["runs"]
            if (r.get("result") or {}).get("contended")]
    L.append("Contended runs (more than 10% of CPU 0 or CPU 1 used by other "
             "processes during the window, for kite-all of both together; "
             "CPU-s per million deliveries is the figure least affected): " + (", ".join(cont) if cont else
                                              "none") + ".")
    L.append("")
    bound = [f"{r['scenario']} ({r['broker']})" for r in doc["runs"]
             if (r.get("result") or {}).get("generator_bound")]
    L.append("Generator-bound runs (kite-bench working more than "
             f"{doc['meta']['gen_bound_pct']}% of CPU {GEN_CPU} during the "
             "window; with busy-poll, time spent spinning with nothing to "
             "do is not work): "
             + (", ".join(bound) if bound else "none") + ".")
    with open(path, "w") as f:
        f.write("\n".join(L) + "\n")


def persist_plot(plt, outdir, doc, scs, colors, written):
    """persist_deliveries_per_s.png: each persist-* row's variants per
    broker (medians), labelled with the share of the broker's `off`."""
    pscs = [sc for sc in scs if sc.get("group") == "persist"]
    if not pscs:
        return
    groups = {}
    for r in doc["runs"]:
        groups.setdefault((r["scenario"], r["broker"]), []).append(r)
    bars = []  # (label, broker, value, share of off)
    for base in dict.fromkeys(sc["base"] for sc in pscs):
        for b in BROKER_KINDS:
            off = median(metric(r, "deliveries_per_s")
                         for r in groups.get((f"{base}/off", b), []))
            for sc in pscs:
                if sc["base"] != base or (sc["name"], b) not in groups:
                    continue
                v = median(metric(r, "deliveries_per_s")
                           for r in groups[(sc["name"], b)])
                if v is not None:
                    bars.append((f"{base}\n{b} {sc['variant']}", b, v,
                                 v / off if off else None))
    if not bars:
        return
    fig, ax = plt.subplots(figsize=(max(6, 0.8 * len(bars) + 2), 4.8))
    xs = range(len(bars))
    ax.bar(xs, [x[2] for x in bars], 0.7, color=[colors[x[1]] for x in bars])
    for x, (_, _, v, share) in zip(xs, bars):
        if share is not None:
            ax.annotate(f"{share:.0%}", (x, v), ha="center", va="bottom",
                        fontsize=8)
    ax.set_xticks(list(xs))
    ax.set_xticklabels([x[0] for x in bars], rotation=45, ha="right",
                       fontsize=7)
    ax.set_ylabel("deliveries/s (median)")
    ax.set_yscale("log")
    ax.set_title("Persistent sessions, QoS 1: persistence variants "
                 "(share of the broker's `off`)")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    p = os.path.join(outdir, "persist_deliveries_per_s.png")
    fig.savefig(p, dpi=110)
    plt.close(fig)
    written.append(p)


def write_plots(outdir, doc, scs):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        loud("matplotlib missing (apt-get install python3-matplotlib, or "
             "sh bench/deps.sh): no PNG plots written")
        return []
    runs = median_runs(doc)
    all_scs = scs
    scs = [sc for sc in scs if sc.get("group") != "persist"]
    brokers = [b for b in BROKER_KINDS
               if any(r["broker"] == b and "result" in r for r in doc["runs"])]
    colors = {"mosquitto": "#3b6ea5", "kite": "#e07b00", "flashmq": "#7a4fa0",
              "kite-all": "#4a9a3c"}
    labels = {"kite-all": f"kite-all ({ALL_CPUS} shards, unpinned)"}
    written = []

    def bars(fname, title, ylabel, names, getter, logy=False, ratios=True):
        names = [n for n in names
                 if any(getter(runs.get((n, b))) is not None for b in brokers)]
        if not names:
            return
        fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(names) + 2), 4.5))
        w = 0.8 / max(1, len(brokers))
        for i, b in enumerate(brokers):
            vals = [getter(runs.get((n, b))) for n in names]
            xs = [j + (i - (len(brokers) - 1) / 2) * w for j in range(len(names))]
            ax.bar(xs, [v if v is not None else 0 for v in vals], w,
                   label=labels.get(b, b), color=colors[b])
            if ratios and b != "mosquitto":
                for x, n, v in zip(xs, names, vals):
                    mv = getter(runs.get((n, "mosquitto")))
                    if v is not None and mv:
                        ax.annotate(f"{v / mv:.2g}×", (x, v), ha="center",
                                    va="bottom", fontsize=8)
        ax.set_xticks(range(len(names)))
        ax.set_xticklabels(names, rotation=30, ha="right")
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        if logy:
            ax.set_yscale("log")
        ax.legend()
        ax.grid(axis="y", alpha=0.3)
        fig.tight_layout()
        p = os.path.join(outdir, fname)
        fig.savefig(p, dpi=110)
        plt.close(fig)
        written.append(p)

    persist_plot(plt, outdir, doc, all_scs, colors, written)
    flow = [s["name"] for s in scs if s["kind"] not in ("idle", "storm")]
    storms = [s["name"] for s in scs if s["kind"] == "storm"]
    bars("storm_cpu_ms_per_handshake.png",
         "Broker CPU-ms per new connection (handshake + CONNECT + "
         "SUBSCRIBE)", "CPU-ms", storms,
         lambda r: metric(r, "broker_cpu_ms_per_handshake"))
    bars("storm_handshakes_per_s.png", "New connections per second",
         "connections/s", storms, lambda r: metric(r, "handshakes_per_s"))
    bars("cpu_per_million.png",
         "Broker CPU-seconds per million deliveries (lower is better)",
         "CPU-s / 1M deliveries", flow,
         lambda r: metric(r, "broker_cpu_s_per_m"), logy=True)
    bars("deliveries_per_s.png", "Deliveries per second",
         "deliveries/s", flow, lambda r: metric(r, "deliveries_per_s"),
         logy=True)
    bars("idle_rss_per_conn.png", "Broker RSS per idle connection",
         "KiB / connection", [s["name"] for s in scs if s["kind"] == "idle"],
         lambda r: metric(r, "rss_per_conn_kb"))
    latn = [s["name"] for s in scs if s["kind"] in ("latency", "rate")]
    for q, label in (("p50", "p50"), ("p99", "p99"), ("p999", "p99.9")):
        bars(f"latency_{q}.png", f"End-to-end latency {label} at fixed rates",
             "µs", latn, lambda r, q=q: lat(r, q), logy=True)
    return written


# ---- main ----------------------------------------------------------------------

def cpu_model():
    """The CPU's name as /proc/cpuinfo gives it ("?" when it does not)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "?"


def kernel_entry_mitigation():
    """What the kernel does on every entry against Meltdown (PTI switches
    page tables per syscall). It prices a syscall, so it moves brokers
    that make many (Mosquitto, FlashMQ) more than kite, which batches
    them in io_uring: tables from machines that differ here do not
    compare."""
    try:
        with open("/sys/devices/system/cpu/vulnerabilities/meltdown") as f:
            return f.read().strip()
    except OSError:
        return "?"


def syscall_ns():
    """Nanoseconds one trivial syscall (getppid) costs here, net of the
    interpreter's loop: hosts differ tenfold (a VM with PTI pays ~1 us),
    and brokers that make more syscalls per message pay it more."""
    n = 200000
    t = time.perf_counter()
    for _ in range(n):
        os.getppid()
    sys_s = time.perf_counter() - t
    t = time.perf_counter()
    for _ in range(n):
        abs(0)  # a call of the same shape that never enters the kernel
    loop_s = time.perf_counter() - t
    return round(max(0.0, sys_s - loop_s) / n * 1e9)


def mosquitto_version(binary):
    try:
        out = subprocess.run([binary, "-h"], capture_output=True, text=True,
                             timeout=5).stdout
        return out.splitlines()[0].strip()
    except (OSError, IndexError, subprocess.TimeoutExpired):
        return "unknown"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--profile", choices=sorted(PROFILES), default="full")
    ap.add_argument("--brokers", default=None,
                    help="comma list of kite (1 shard, pinned to CPU "
                         f"{BROKER_CPU}), mosquitto, kite-all (a shard per "
                         "CPU, unpinned); default: "
                         + "; ".join(f"{p}: {b}" for p, b in
                                     DEFAULT_BROKERS.items()))
    ap.add_argument("--kite", default=KITE_DEFAULT)
    ap.add_argument("--mosquitto", default=MOSQ_DEFAULT)
    ap.add_argument("--flashmq", default=FLASHMQ_DEFAULT,
                    help="FlashMQ binary (make bench-flashmq builds it from "
                         "../shared/anchors)")
    ap.add_argument("--gen", default=GEN_DEFAULT)
    ap.add_argument("--out", default=None,
                    help="results directory (full: bench/results, quick: "
                         "bench/results/quick, smoke: build/bench/smoke, "
                         "persist: bench/results/persist)")
    ap.add_argument("--only", default="",
                    help="comma list of scenario names to run")
    ap.add_argument("--require-kite", action="store_true",
                    help="fail when kite is asked for but cannot run")
    ap.add_argument("--no-plots", action="store_true")
    ap.add_argument("--gen-bound", type=float, default=90.0)
    ap.add_argument("--list", action="store_true", help="list scenarios")
    ap.add_argument("--mosquitto-nodelay", action="store_true",
                    help="add `set_tcp_nodelay true` to Mosquitto's config "
                         "(default: Mosquitto's default, Nagle on)")
    ap.add_argument("--no-busy-poll", action="store_true",
                    help="let kite-bench sleep in epoll between events "
                         "(default: it spins while publishing, see README)")
    ap.add_argument("--repeat", type=int, default=None, metavar="N",
                    help="run every scenario N times (rounds in scenario "
                         "order); tables show the median run (persist "
                         "profile: 3, else 1)")
    ap.add_argument("--state-dir", default=None, metavar="DIR",
                    help="where persist-* runs get their fresh persistence "
                         "directories (default: the run's temporary "
                         "directory); its file system is in results.json")
    ap.add_argument("--wait-quiet", type=float, default=0.0, metavar="S",
                    help="before each run, wait up to S seconds for CPUs "
                         f"{GEN_CPU} and {BROKER_CPU} to be under 10%% busy "
                         "(shared machines)")
    args = ap.parse_args()
    if args.brokers is None:
        args.brokers = DEFAULT_BROKERS[args.profile]

    # Children inherit the limit: the broker and kite-bench each need one
    # descriptor per connection.
    lim = raise_nofile(1 << 20)
    scs = scenario_list(args.profile, lim)
    if args.list:
        for s in scs:
            log(f"{s['name']:16} {s['kind']:8} {s['title']}")
        return 0
    if args.only:
        want = set(args.only.split(","))
        unknown = want - {s["name"] for s in scs}
        if unknown:
            log(f"unknown scenarios: {sorted(unknown)}")
            return 2
        scs = [s for s in scs if s["name"] in want]
    outdir = args.out or {
        "full": os.path.join(ROOT, "bench", "results"),
        "quick": os.path.join(ROOT, "bench", "results", "quick"),
        "smoke": os.path.join(ROOT, "build", "bench", "smoke"),
        "persist": os.path.join(ROOT, "bench", "results", "persist"),
    }[args.profile]
    os.makedirs(outdir, exist_ok=True)

    brokers = [b.strip() for b in args.brokers.split(",") if b.strip()]
    for b in brokers:
        if b not in BROKER_KINDS:
            log(f"unknown broker {b!r}")
            return 2
    if not os.access(args.gen, os.X_OK):
        log(f"{args.gen} missing: run `make {args.gen}` first")
        return 2

    binaries = {"mosquitto": args.mosquitto, "kite": args.kite,
                "kite-all": args.kite, "flashmq": args.flashmq}
    if "flashmq" in brokers and not os.access(args.flashmq, os.X_OK):
        loud(f"FlashMQ NOT MEASURED: {args.flashmq} missing (make "
             "bench-flashmq, or sh ../shared/anchors/build-flashmq.sh "
             "build/flashmq)")
        brokers.remove("flashmq")
    kites = [b for b in brokers if b not in REFERENCES]
    kite_reason = ""
    if not kites:
        kite_reason = f"not requested (--brokers {args.brokers})"
    elif not os.access(args.kite, os.X_OK):
        kite_reason = f"{args.kite} does not exist"
    if "mosquitto" in brokers and not os.access(args.mosquitto, os.X_OK):
        log(f"{args.mosquitto} missing (apt-get install mosquitto)")
        return 2
    if kite_reason and kites:
        loud(f"KITE NOT MEASURED: {kite_reason}. Running Mosquitto only.")
        brokers = [b for b in brokers if b in REFERENCES]
    # References first: latency scenarios run at half of one's saturation.
    brokers.sort(key=BROKER_KINDS.index)
    if not brokers:
        log("nothing to run")
        return 1 if kite_reason else 2
    if os.cpu_count() < 2:
        log("need 2 CPUs (broker on CPU 1, generator on CPU 0)")
        return 2

    for s in scs:
        if s.get("size_note"):
            log(f"note: {s['name']}: {s['size_note']}")

    def on_signal(sig, frame):
        kill_all_children()
        sys.exit(128 + sig)
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    prof = PROFILES[args.profile]
    if args.repeat is None:
        args.repeat = prof.get("repeat", 1)
    if args.repeat < 1:
        log("--repeat must be at least 1")
        return 2
    meta = dict(profile=args.profile, repeat=args.repeat,
                loadavg_start=os.getloadavg(),
                date=datetime.datetime.now().isoformat(timespec="seconds"),
                kernel=platform.release(), cpus=os.cpu_count(),
                cpu_model=cpu_model(), meltdown=kernel_entry_mitigation(),
                syscall_ns=syscall_ns(),
                mosquitto_version=mosquitto_version(args.mosquitto),
                kite=args.kite, generator=args.gen, broker_cpu=BROKER_CPU,
                generator_cpu=GEN_CPU, gen_bound_pct=args.gen_bound,
                brokers=brokers, kite_all_shards=ALL_CPUS,
                warmup_s=prof["warmup"], duration_s=prof["duration"],
                busy_poll=not args.no_busy_poll,
                mosquitto_nodelay=args.mosquitto_nodelay,
                configs={b: broker_config(b, [1883], args.mosquitto_nodelay)
                         for b in binaries})
    doc = dict(meta=meta, runs=[], kite_measured=False)
    workdir = tempfile.mkdtemp(prefix="kite-bench-")
    if any(s.get("conf") for s in scs):
        if args.state_dir:
            os.makedirs(args.state_dir, exist_ok=True)
        sd = args.state_dir or workdir
        mp, fstype = fs_of(sd)
        meta["state_dir"] = dict(path=sd, mount=mp, fstype=fstype)
        log(f"persistence directories under {sd} ({fstype} on {mp})")
        if fstype in ("tmpfs", "ramfs"):
            loud(f"{sd} is on {fstype}: fdatasync costs nothing there, "
                 "persistence_sync figures mean little (--state-dir)")
    args.pki, args.pki_count = None, 0
    if any(s.get("tls") for s in scs):
        args.pki_count = tls_certs_needed(scs)
        pkidir, why, t_pki = None, None, 0.0
        if not os.access(args.kite, os.X_OK):
            why = f"{args.kite} does not exist (it issues the certificates)"
        else:
            pkidir, why, t_pki = cached_pki(args.kite, args.pki_count)
        if why:
            loud(f"TLS scenarios SKIPPED: {why}")
            meta["tls_skipped"] = why
            scs = [s for s in scs if not s.get("tls")]
            failed_pki = True
        else:
            args.pki = pkidir
            failed_pki = False
            meta["tls_pki"] = (f"kite cert: ECDSA P-256 CA, server CN "
                               f"127.0.0.1, {args.pki_count} client "
                               "certificates " + (
                                   f"issued in {t_pki:.1f} s" if t_pki else
                                   "reused") + f" ({pkidir})")
            meta["configs_tls"] = {b: broker_config(b, [8883],
                                                    args.mosquitto_nodelay,
                                                    "PKI")
                                   for b in binaries}
            log(f"PKI: {meta['tls_pki']}")
    else:
        failed_pki = False
    t0 = time.monotonic()
    failed = failed_pki
    kite_started_once = False
    try:
        for rnd, sc in ((r, s) for r in range(args.repeat) for s in scs):
            # The budget counts benchmarking, not --wait-quiet waiting.
            waited = sum(r.get("waited_s", 0) for r in doc["runs"])
            # The budgets were set for two brokers (kite and Mosquitto).
            budget = prof["budget_s"] * max(2, len(brokers)) / 2
            if time.monotonic() - t0 - waited > budget:
                loud(f"time budget of {budget:.0f} s spent: "
                     f"skipping {sc['name']} and the rest")
                failed = True
                break
            log(f"== {sc['name']}: {sc['title']}"
                + (f" (round {rnd + 1} of {args.repeat})"
                   if args.repeat > 1 else ""))
            for kind in list(brokers):
                if sc.get("families") and \
                        broker_family(kind) not in sc["families"]:
                    continue  # e.g. persistence_sync: kite's own
                rate = None
                if sc["kind"] == "latency":
                    # Half of FlashMQ's saturation when it ran (the
                    # issue's targets are ratios to it), else Mosquitto's.
                    src = None
                    for ref in REFERENCES:
                        src = src or next((r for r in doc["runs"]
                                           if r["scenario"] == sc["rate_from"]
                                           and r["broker"] == ref
                                           and metric(r, "pub_rate")), None)
                    rate = (0.5 * src["result"]["pub_rate"] if src
                            else sc["fallback_rate"])
                    if src:
                        rec_rate_from = src["broker"]
                    else:
                        rec_rate_from = None
                        log(f"  no reference saturation for {sc['rate_from']}:"
                            f" using {rate} msg/s")
                rec = run_one(args, sc, kind, binaries[kind], rate, workdir)
                rec["round"] = rnd
                if sc["kind"] == "latency":
                    rec["rate_from"] = rec_rate_from
                if kind == "flashmq" and rec.get("start_error"):
                    # This scenario only: a setting FlashMQ lacks must not
                    # take it out of every row after it.
                    loud(f"FlashMQ NOT MEASURED in {sc['name']}: it failed "
                         f"to start: {rec['start_error']}\n"
                         + rec.get("log_tail", ""))
                    continue
                if kind not in REFERENCES and rec.get("start_error"):
                    kite_reason = (f"build/kite ({kind}) failed to start: "
                                   f"{rec['start_error']}")
                    loud(f"KITE NOT MEASURED: {kite_reason}. Continuing "
                         f"without {kind}.\n" + rec.get("log_tail", ""))
                    brokers.remove(kind)
                    continue
                if kind not in REFERENCES:
                    kite_started_once = True
                doc["runs"].append(rec)
                print_run(rec)
                if not rec["ok"]:
                    failed = True
    finally:
        kill_all_children()
        shutil.rmtree(workdir, ignore_errors=True)

    doc["kite_measured"] = kite_started_once
    meta["kite_reason"] = kite_reason
    meta["loadavg_end"] = os.getloadavg()
    meta["elapsed_s"] = round(time.monotonic() - t0, 1)
    with open(os.path.join(outdir, "results.json"), "w") as f:
        json.dump(doc, f, indent=1)
    write_table(os.path.join(outdir, "RESULTS-table.md"), doc, scs)
    plots = [] if args.no_plots else write_plots(outdir, doc, scs)
    log(f"\nwrote {outdir}/results.json, RESULTS-table.md"
        + (f" and {len(plots)} plots" if plots else "")
        + f" in {meta['elapsed_s']} s")
    contended = [f"{r['scenario']}/{r['broker']}" for r in doc["runs"]
                 if (r.get("result") or {}).get("contended")]
    if contended:
        loud("other processes used the benchmark CPUs during: "
             + ", ".join(contended) + ". Their throughput and latency "
             "are not trustworthy; rerun on a quiet machine (--wait-quiet).")
    if kite_reason and "kite" in args.brokers:
        loud(f"KITE WAS NOT MEASURED: {kite_reason}")
        if args.require_kite:
            return 1
    if failed:
        log("some runs FAILED (see above)")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
