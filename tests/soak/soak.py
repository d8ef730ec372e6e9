#!/usr/bin/python3
"""Bounded soak of the broker under mixed hostile and ordinary traffic.

    make soak                         # 10 minutes on build/kite
    SOAK_SECONDS=60 make soak         # shorter
    KITE_BIN=/usr/sbin/mosquitto SOAK_SECONDS=60 make soak   # for comparison
    SOAK_EXTRA_CONF=$'persistence true\\npersistence_location /tmp/s/' make soak
                                      # as root, kite runs as `mosquitto`:
                                      # chown mosquitto /tmp/s first

Starts $KITE_BIN (default build/kite) on 127.0.0.1 with a plain listener and
a server-only TLS listener (certificates made here with openssl; with
SOAK_MTLS=1 the TLS listener requires a client certificate, takes its CN
as the username and has an acl_file, as the seeds do), then runs
at once, until SOAK_SECONDS have passed:

  churn       clients connect, publish and leave, plain and TLS; one in
              three vanishes without DISCONNECT
  stalled     connections that send part of a packet (CONNECT, PUBLISH after
              CONNECT, a TLS ClientHello) and stall for 3-15 s
  garbage     random bytes as the first packet, and after CONNECT, on both
              ports
  slow        subscribers that stop reading (SO_RCVBUF 4096), replaced one
              at a time every 60 s, fed by a QoS 0 stream
  qos12       a publisher alternating QoS 1 and QoS 2, a subscriber (QoS 2)
              that must get every message
  sighup      SIGHUP to the broker every 30 s
  probe       well-behaved paho clients (plain and TLS) round-tripping a
              QoS 1 message every 2 s

RSS (VmRSS), open fds (/proc/PID/fd) and CPU time (/proc/PID/stat) are
sampled before the load, after a warm-up (the start sample), every 30 s,
at the end under load, and after the load stops. The soak fails on:

  - the broker exiting (crash) or not stopping cleanly on SIGTERM (exit 0)
  - end RSS > start RSS + SOAK_RSS_TOLERANCE_MB (default 64)
  - end fds > start fds + SOAK_FD_TOLERANCE (default 64; the load's own
    connections come and go), or, once the load has stopped and 3 s passed,
    fds > fds before the load + 8 (leaked descriptors)
  - CPU above 10% of a core once the load has stopped (spinning)
  - a probe failing to round-trip its message within 5 s
  - a QoS 1/2 message acknowledged to its publisher never delivered
  - a SIGHUP reload refused ("Reload failed" in the broker's log)

Python 3 stdlib and paho-mqtt only (plus the repository's raw MQTT encoder,
tests/integration/mqttraw.py, itself stdlib only). Not part of `make test`.
"""

import os
import queue
import random
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests" / "integration"))

import mqttraw  # noqa: E402
import paho.mqtt.client as mqtt  # noqa: E402

HOST = "127.0.0.1"
MB = 1024 * 1024
CLK_TCK = os.sysconf("SC_CLK_TCK")

SECONDS = float(os.environ.get("SOAK_SECONDS", "600"))
RSS_TOL = float(os.environ.get("SOAK_RSS_TOLERANCE_MB", "64")) * MB
FD_TOL = int(os.environ.get("SOAK_FD_TOLERANCE", "64"))
FD_LEAK_TOL = 8
QUIET_CPU_MAX = 0.10
WARMUP = min(30.0, SECONDS / 6)
REPORT_EVERY = 30.0
SIGHUP_EVERY = 30.0
PROBE_EVERY = 2.0
PROBE_TIMEOUT = 5.0

# Load (modest: the machine is shared).
CHURN_PLAIN_PER_S = 20
# SOAK_TLS_CHURN: more TLS clients, for the kernel-TLS run in the VM
# (tests/vm/test_ktls_soak_vm.sh), where TLS is what is under test.
CHURN_TLS_PER_S = float(os.environ.get("SOAK_TLS_CHURN", "2"))
# SOAK_MTLS=1: the TLS listener as the seeds have it (require_certificate,
# use_identity_as_username, an acl_file naming the certificate's CN):
# every TLS client, probe and stalled handshake presents a certificate.
MTLS = os.environ.get("SOAK_MTLS", "") == "1"
MTLS_CN = "soak-device"
STALLED_AT_ONCE = 20
GARBAGE_PER_S = 5
SLOW_CONSUMERS = 4
SLOW_REPLACE_EVERY = 60.0
STREAM_MSGS_PER_S = 1000
STREAM_PAYLOAD = 512
QOS12_PER_S = 50


# --- the broker process ---------------------------------------------------------

def free_port():
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def listening(port):
    want = "0100007F:%04X" % port
    with open("/proc/net/tcp") as f:
        next(f)
        return any(l.split()[1] == want and l.split()[3] == "0A" for l in f)


def sample(pid):
    """{'rss': bytes, 'fds': n, 'cpu': seconds, 't': monotonic}"""
    rss = 0
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1]) * 1024
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / CLK_TCK
    fds = len(os.listdir("/proc/%d/fd" % pid))
    return {"rss": rss, "fds": fds, "cpu": cpu, "t": time.monotonic()}


def make_certs(d):
    def run(*cmd):
        subprocess.run(cmd, cwd=d, check=True, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"]
    run("openssl", "req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem",
        "-days", "2", "-subj", "/CN=kite soak CA")
    run("openssl", "req", "-new", *ec, "-keyout", "server.key", "-out", "server.csr",
        "-subj", "/CN=localhost")
    Path(d, "san.ext").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    run("openssl", "x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey",
        "ca.key", "-CAcreateserial", "-out", "server.pem", "-days", "2",
        "-extfile", "san.ext")
    if MTLS:
        run("openssl", "req", "-new", *ec, "-keyout", "client.key", "-out",
            "client.csr", "-subj", "/CN=" + MTLS_CN)
        run("openssl", "x509", "-req", "-in", "client.csr", "-CA", "ca.pem",
            "-CAkey", "ca.key", "-CAcreateserial", "-out", "client.pem",
            "-days", "2")
        # Anonymous (the plain listener) and the certificate's CN may use
        # the soak's topics, nothing else.
        Path(d, "soak.acl").write_text(
            "topic readwrite soak/#\n\nuser %s\ntopic readwrite soak/#\n" % MTLS_CN)


def broker_config(d, plain, tls, mosquitto):
    text = ("per_listener_settings false\nallow_anonymous true\n"
            "log_dest stderr\nlog_type error\nlog_type warning\n"
            "listener %d 127.0.0.1\n"
            "listener %d 127.0.0.1\ncertfile %s/server.pem\nkeyfile %s/server.key\n"
            "require_certificate %s\n" % (plain, tls, d, d, "true" if MTLS else "false"))
    if MTLS:
        text += ("cafile %s/ca.pem\nuse_identity_as_username true\n"
                 "acl_file %s/soak.acl\n" % (d, d))
    if mosquitto and os.geteuid() == 0:
        text += "user root\n"
    # More lines for the broker (e.g. persistence), as they would sit in
    # its config file.
    extra = os.environ.get("SOAK_EXTRA_CONF", "")
    if extra:
        text += extra.rstrip("\n") + "\n"
    return text


# --- the load ----------------------------------------------------------------------

class Raw(mqttraw.RawClient):
    """mqttraw's client on a socket made here (plain or TLS). Over TLS it
    only reads what fits one select() (a CONNACK, a SUBACK): enough here."""

    def __init__(self, sock, timeout=5.0):
        self.sock = sock
        self.buf = bytearray()
        self.pending = []
        self.timeout = timeout
        self.eof = False


class Stats:
    def __init__(self):
        self.lock = threading.Lock()
        self.c = {}

    def add(self, key, n=1):
        with self.lock:
            self.c[key] = self.c.get(key, 0) + n

    def snapshot(self):
        with self.lock:
            return dict(self.c)


class Soak:
    def __init__(self, plain, tls, ca, stats):
        self.plain, self.tls, self.ca = plain, tls, ca
        self.stats = stats
        self.stop = threading.Event()
        self.failures = []
        self.flock = threading.Lock()
        self.tls_ctx = ssl.create_default_context(cafile=ca)
        self.cert = None
        if MTLS:
            d = os.path.dirname(ca)
            self.cert = (os.path.join(d, "client.pem"), os.path.join(d, "client.key"))
            self.tls_ctx.load_cert_chain(*self.cert)
        self.threads = []

    def fail(self, what):
        with self.flock:
            self.failures.append("%.0fs: %s" % (time.monotonic() - self.t0, what))

    def start(self):
        self.t0 = time.monotonic()
        for fn in (self.churn_plain, self.churn_plain, self.churn_tls, self.stalled,
                   self.garbage, self.slow, self.stream, self.qos12, self.probe):
            t = threading.Thread(target=self._guard, args=(fn,), daemon=True,
                                 name=fn.__name__)
            t.start()
            self.threads.append(t)

    def _guard(self, fn):
        try:
            fn()
        except Exception as e:  # a bug in the soak itself: say so
            self.fail("worker %s crashed: %r" % (fn.__name__, e))

    def join(self):
        self.stop.set()
        for t in self.threads:
            t.join(20)

    def _pace(self, per_s):
        self.stop.wait(random.expovariate(per_s))

    def _raw(self, tls, timeout=5):
        s = socket.create_connection((HOST, self.tls if tls else self.plain), timeout=timeout)
        if tls:
            s = self.tls_ctx.wrap_socket(s, server_hostname="localhost")
        return s

    def _client(self, tls):
        return Raw(self._raw(tls))

    # churn: connect, publish, disconnect (or vanish)
    def _churn_once(self, tls, n):
        c = self._client(tls)
        try:
            if c.connect("churn-%s-%d" % ("t" if tls else "p", n), keepalive=30).rc != 0:
                self.stats.add("churn refused")
                return
            c.send(mqttraw.publish("soak/churn/%d" % (n % 16), b"x" * random.randint(0, 2048),
                                   qos=random.choice((0, 1)), pid=1))
            if n % 3:
                c.send(mqttraw.disconnect())
                self.stats.add("churn disconnect")
            else:
                self.stats.add("churn vanish")
        finally:
            c.close()

    def churn_plain(self):
        n = 0
        while not self.stop.is_set():
            n += 1
            try:
                self._churn_once(False, n + random.randint(0, 1 << 30))
            except (OSError, mqttraw.Closed, mqttraw.Timeout) as e:
                self.stats.add("churn error %s" % type(e).__name__)
            self._pace(CHURN_PLAIN_PER_S / 2)

    def churn_tls(self):
        n = 0
        while not self.stop.is_set():
            n += 1
            try:
                self._churn_once(True, n)
            except (OSError, mqttraw.Closed, mqttraw.Timeout) as e:
                self.stats.add("churn error %s" % type(e).__name__)
            self._pace(CHURN_TLS_PER_S)

    # stalled partial packets
    def stalled(self):
        held = []  # (socket, release time)
        kinds = ("connect", "publish", "tls-hello", "tls-connect")
        while not self.stop.is_set():
            now = time.monotonic()
            for s, until in [h for h in held if h[1] <= now]:
                s.close()
                held.remove((s, until))
            while len(held) < STALLED_AT_ONCE and not self.stop.is_set():
                kind = random.choice(kinds)
                try:
                    if kind == "connect":
                        s = self._raw(False)
                        s.sendall(mqttraw.connect("stall", keepalive=10)[:7])
                    elif kind == "publish":
                        c = self._client(False)
                        c.connect("stall-pub-%d" % random.randint(0, 1 << 30), keepalive=5)
                        s = c.sock
                        s.sendall(mqttraw.publish("soak/stall", b"y" * 4000)[:1000])
                    elif kind == "tls-hello":
                        s = socket.create_connection((HOST, self.tls), timeout=5)
                        s.sendall(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03")
                    else:
                        s = self._raw(True)
                        s.sendall(mqttraw.connect("stall-tls")[:9])
                    held.append((s, time.monotonic() + random.uniform(3, 15)))
                    self.stats.add("stalled " + kind)
                except (OSError, mqttraw.Closed, mqttraw.Timeout) as e:
                    self.stats.add("stalled error %s" % type(e).__name__)
            self.stop.wait(0.2)
        for s, _ in held:
            s.close()

    # garbage bytes
    def garbage(self):
        while not self.stop.is_set():
            tls = random.random() < 0.3
            after_connect = random.random() < 0.5
            try:
                if after_connect:
                    c = self._client(tls)
                    c.connect("garbage-%d" % random.randint(0, 1 << 30))
                    s = c.sock
                else:
                    # Garbage instead of a TLS ClientHello on the TLS port too.
                    s = socket.create_connection((HOST, self.tls if tls else self.plain),
                                                 timeout=5)
                try:
                    s.sendall(os.urandom(random.randint(1, 3000)))
                    s.settimeout(2)
                    s.recv(100)
                    self.stats.add("garbage closed")
                except (ConnectionResetError, BrokenPipeError, ssl.SSLError):
                    self.stats.add("garbage closed")
                except socket.timeout:
                    # Random bytes can be the start of a long packet.
                    self.stats.add("garbage still open after 2s")
                finally:
                    s.close()
            except (OSError, mqttraw.Closed, mqttraw.Timeout) as e:
                self.stats.add("garbage error %s" % type(e).__name__)
            self._pace(GARBAGE_PER_S)

    # slow consumers and the QoS 0 stream that fills them
    def _slow_consumer(self, n):
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.settimeout(5)
        s.connect((HOST, self.plain))
        c = Raw(s)
        c.connect("slow-%d" % n, keepalive=0)
        c.subscribe([("soak/stream/#", 0), ("soak/q/#", 1)])
        return s  # and never read again

    def slow(self):
        held, n = [], 0
        last_replace = time.monotonic()
        while not self.stop.is_set():
            try:
                while len(held) < SLOW_CONSUMERS:
                    n += 1
                    held.append(self._slow_consumer(n))
                    self.stats.add("slow consumers")
                if time.monotonic() - last_replace >= SLOW_REPLACE_EVERY:
                    held.pop(0).close()
                    last_replace = time.monotonic()
            except (OSError, mqttraw.Closed, mqttraw.Timeout) as e:
                self.stats.add("slow error %s" % type(e).__name__)
            self.stop.wait(0.5)
        for s in held:
            s.close()

    def stream(self):
        while not self.stop.is_set():
            try:
                c = self._client(False)
                c.connect("stream-pub")
                c.sock.settimeout(10)
                batch = 50
                msg = mqttraw.publish("soak/stream/a", b"s" * STREAM_PAYLOAD)
                while not self.stop.is_set():
                    t = time.monotonic()
                    c.send(msg * batch)
                    self.stats.add("stream msgs", batch)
                    self.stop.wait(max(0.0, batch / STREAM_MSGS_PER_S - (time.monotonic() - t)))
                c.send(mqttraw.disconnect())
                c.close()
            except (OSError, mqttraw.Closed, mqttraw.Timeout) as e:
                self.stats.add("stream error %s" % type(e).__name__)
                self.stop.wait(1)

    # QoS 1/2: every message the broker acknowledged reaches the subscriber
    def qos12(self):
        got = set()
        glock = threading.Lock()

        def on_message(c, u, m):
            with glock:
                got.add(m.payload)
        sub = paho(self.plain, "qos12-sub", clean=False, on_message=on_message)
        sub.subscribe("soak/q/#", 2)
        time.sleep(0.5)
        pub = paho(self.plain, "qos12-pub")
        infos, n = [], 0
        try:
            while not self.stop.is_set():
                n += 1
                payload = b"q-%d" % n
                infos.append((payload, pub.publish("soak/q/%d" % (n % 8), payload, 1 + n % 2)))
                self._pace(QOS12_PER_S)
            deadline = time.monotonic() + 10
            acked = []
            for payload, info in infos:
                try:
                    info.wait_for_publish(max(0.1, deadline - time.monotonic()))
                except (RuntimeError, ValueError):
                    pass
                if info.is_published():
                    acked.append(payload)
            while time.monotonic() < deadline:
                with glock:
                    if all(p in got for p in acked):
                        break
                time.sleep(0.1)
            with glock:
                missing = [p for p in acked if p not in got]
            self.stats.add("qos12 sent", len(infos))
            self.stats.add("qos12 acked", len(acked))
            self.stats.add("qos12 delivered", len(acked) - len(missing))
            if missing:
                self.fail("%d of %d acknowledged QoS 1/2 messages never delivered "
                          "(first %r)" % (len(missing), len(acked), missing[0]))
        finally:
            for c in (pub, sub):
                c.disconnect()
                c.loop_stop()

    # well-behaved probes
    def probe(self):
        probes = {}
        for name, port, tls in (("plain", self.plain, False), ("tls", self.tls, True)):
            q = queue.Queue()
            c = paho(port, "probe-" + name, tls=self.ca if tls else None,
                     cert=self.cert,
                     on_message=lambda cl, u, m, q=q: q.put(m.payload))
            c.subscribe("soak/probe/" + name, 1)
            probes[name] = (c, q)
        n = 0
        try:
            while not self.stop.wait(PROBE_EVERY):
                for name, (c, q) in probes.items():
                    n += 1
                    payload = b"probe-%d" % n
                    t = time.monotonic()
                    c.publish("soak/probe/" + name, payload, 1)
                    ok = False
                    while time.monotonic() - t < PROBE_TIMEOUT:
                        try:
                            if q.get(timeout=0.1) == payload:
                                ok = True
                                break
                        except queue.Empty:
                            pass
                    if ok:
                        self.stats.add("probe ok")
                        ms = (time.monotonic() - t) * 1000
                        with self.stats.lock:
                            self.stats.c["probe max ms"] = max(
                                self.stats.c.get("probe max ms", 0), int(ms))
                    else:
                        self.stats.add("probe FAILED")
                        self.fail("%s probe: message %d not back within %.0fs"
                                  % (name, n, PROBE_TIMEOUT))
        finally:
            for c, _ in probes.values():
                c.disconnect()
                c.loop_stop()


def paho(port, client_id, clean=True, tls=None, on_message=None, cert=None):
    c = mqtt.Client(client_id=client_id, clean_session=clean, protocol=mqtt.MQTTv311)
    if tls:
        c.tls_set(ca_certs=tls, certfile=cert and cert[0], keyfile=cert and cert[1])
    connected = threading.Event()
    c.on_connect = lambda cl, u, f, rc: rc == 0 and connected.set()
    if on_message:
        c.on_message = on_message
    c.connect("localhost" if tls else HOST, port, 30)
    c.loop_start()
    if not connected.wait(5):
        c.loop_stop()
        raise RuntimeError("%s: no CONNACK" % client_id)
    return c


# --- main -------------------------------------------------------------------------

def fmt(s):
    return "RSS %7.1f MB  fds %4d  CPU %6.1f s" % (s["rss"] / MB, s["fds"], s["cpu"])


def main():
    binary = os.environ.get("KITE_BIN") or str(REPO / "build" / "kite")
    if not os.path.exists(binary):
        print("soak: no broker at %s (make all, or set KITE_BIN)" % binary)
        return 2
    mosquitto = os.path.basename(binary) == "mosquitto"
    d = tempfile.mkdtemp(prefix="kite-soak-")
    proc = None
    try:
        make_certs(d)
        # Run as root, kite drops to its `user` (mosquitto) and reads the
        # config and keys again on every SIGHUP: readable to that user, or
        # every reload of the soak would fail.
        os.chmod(d, 0o755)
        for f in os.listdir(d):
            os.chmod(os.path.join(d, f), 0o644)
        plain, tls = free_port(), free_port()
        while tls == plain:
            tls = free_port()
        conf = Path(d, "soak.conf")
        conf.write_text(broker_config(d, plain, tls, mosquitto))
        log = open(Path(d, "broker.log"), "wb")
        # An AddressSanitizer build keeps up to 256 MB of freed memory in
        # quarantine, which the RSS check would read as a leak: a small
        # quarantine keeps the check meaningful (other builds ignore it).
        env = dict(os.environ)
        env.setdefault("ASAN_OPTIONS", "quarantine_size_mb=8:"
                       "thread_local_quarantine_size_kb=64")
        proc = subprocess.Popen([binary, "-c", str(conf)], stdout=log,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                cwd=d, env=env)
        deadline = time.monotonic() + 5
        while not (listening(plain) and listening(tls)):
            if proc.poll() is not None or time.monotonic() > deadline:
                print("soak: broker did not start:\n" + Path(d, "broker.log").read_text())
                return 1
            time.sleep(0.02)
        pid = proc.pid
        print("soak: %s (pid %d), plain :%d, TLS :%d%s, %.0f s (warm-up %.0f s)"
              % (binary, pid, plain, tls, " (client certificates, CN as "
                 "username, acl_file)" if MTLS else "", SECONDS, WARMUP))
        before = sample(pid)
        print("  before load   %s" % fmt(before))

        stats = Stats()
        soak = Soak(plain, tls, str(Path(d, "ca.pem")), stats)
        soak.start()
        t0 = time.monotonic()
        end = t0 + SECONDS
        start = None
        next_report = t0 + WARMUP
        next_hup = t0 + SIGHUP_EVERY
        prev = before
        peak_rss = before["rss"]
        crashed = None
        while time.monotonic() < end:
            time.sleep(0.25)
            if proc.poll() is not None:
                crashed = proc.returncode
                break
            now = time.monotonic()
            if now >= next_hup:
                proc.send_signal(signal.SIGHUP)
                stats.add("sighup")
                next_hup += SIGHUP_EVERY
            if now >= next_report:
                s = sample(pid)
                peak_rss = max(peak_rss, s["rss"])
                cpu_pct = 100 * (s["cpu"] - prev["cpu"]) / (s["t"] - prev["t"])
                if start is None:
                    start = s
                    label = "start (warm)"
                else:
                    label = "t=%4.0fs" % (now - t0)
                print("  %-13s %s  (%5.1f%% of a core)  probes ok %d" % (
                    label, fmt(s), cpu_pct, stats.snapshot().get("probe ok", 0)))
                sys.stdout.flush()
                prev = s
                next_report = now + REPORT_EVERY
        failures = []
        if crashed is None:
            last = sample(pid)
            peak_rss = max(peak_rss, last["rss"])
            if start is None:
                start = last
            cpu_pct = 100 * (last["cpu"] - start["cpu"]) / max(1e-9, last["t"] - start["t"])
            print("  end (load)    %s  (%5.1f%% of a core since start)" % (fmt(last), cpu_pct))
        soak.join()
        if crashed is None and proc.poll() is not None:
            crashed = proc.returncode
        if crashed is None:
            time.sleep(3)
            quiet0 = sample(pid)
            time.sleep(2)
            quiet1 = sample(pid)
            quiet_cpu = (quiet1["cpu"] - quiet0["cpu"]) / (quiet1["t"] - quiet0["t"])
            print("  after load    %s  (%5.1f%% of a core, idle)" % (fmt(quiet1), 100 * quiet_cpu))
            print("  peak RSS %.1f MB" % (peak_rss / MB))
            if last["rss"] > start["rss"] + RSS_TOL:
                failures.append("RSS grew %.1f MB under load (tolerance %.0f MB)"
                                % ((last["rss"] - start["rss"]) / MB, RSS_TOL / MB))
            if last["fds"] > start["fds"] + FD_TOL:
                failures.append("fds grew by %d under load (tolerance %d)"
                                % (last["fds"] - start["fds"], FD_TOL))
            if quiet1["fds"] > before["fds"] + FD_LEAK_TOL:
                failures.append("%d fds open after the load, %d before (tolerance %d)"
                                % (quiet1["fds"], before["fds"], FD_LEAK_TOL))
            if quiet_cpu > QUIET_CPU_MAX:
                failures.append("%.0f%% CPU with no load" % (100 * quiet_cpu))
        else:
            failures.append("broker exited during the soak with status %s" % crashed)
        failures += soak.failures
        counts = stats.snapshot()
        print("  traffic: " + ", ".join("%s %d" % kv for kv in sorted(counts.items())))
        if crashed is None:
            proc.send_signal(signal.SIGTERM)
            try:
                rc = proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                rc = "hung on SIGTERM"
            if rc != 0:
                failures.append("exit status on SIGTERM: %s" % rc)
        log.close()
        text = Path(d, "broker.log").read_text(errors="replace")
        lines = text.splitlines()
        print("  broker log: %d lines (errors and warnings)%s" % (
            len(lines), "; last: " + lines[-1][:160] if lines else ""))
        refused = [l for l in lines if "Reload failed" in l]
        if refused:
            # The SIGHUPs are load too: each must have reloaded.
            failures.append("%d SIGHUP reloads refused: %s"
                            % (len(refused), refused[0][:200]))
        if failures:
            print("soak: FAILED")
            for f in failures[:20]:
                print("  - " + f)
            if len(failures) > 20:
                print("  - ... %d more" % (len(failures) - 20))
            if crashed is not None:
                # The head names what failed (a sanitizer's report, an
                # assertion); a leak report after it can run to pages.
                print("--- broker log head ---\n" + text[:6000])
                print("--- broker log tail ---\n" + text[-3000:])
            return 1
        print("soak: passed")
        return 0
    finally:
        if proc and proc.poll() is None:
            proc.kill()
            proc.wait()
        shutil.rmtree(d, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
