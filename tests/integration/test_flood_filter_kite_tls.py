"""kite with an mTLS listener behind its XDP flood filter (issue 7), on the
veth pair of test_flood_filter.py:

    server ns  veth  10.77.0.1/24  kite, listener 8883 (require_certificate,
                                   use_identity_as_username), filter here
    client ns  veth  10.77.0.2/24  SYN flooder (raw socket) / other source
                     10.77.0.3/24  mTLS client (Python ssl, client cert)

- a SYN flood beyond syn_rate/syn_burst is dropped at XDP (kite's "dropped by
  rate" counter) while a client with a good certificate connects, subscribes,
  publishes and receives;
- failed TLS handshakes (no client certificate / one from a foreign CA) are
  strikes: at `strikes` the source's SYNs get no answer until block_seconds
  have passed, then it connects again;
- a source that completed an mTLS CONNECT is allowed: its quick reconnects
  are not throttled by a 2/s, burst 2 SYN bucket.

The PKI is made with `kite cert`. Counters come from kite's log line
"flood filter: passed N, dropped by rate N, ..." (sys_interval 1). kite's
readiness is probed from inside the server namespace (over lo, so the
probe never goes through XDP and never touches the counters).
Needs root; skipped with the reason when not root or when XDP cannot attach.
"""

import os
import pathlib
import re
import socket
import ssl
import subprocess
import threading
import time

import pytest

import harness
import mqttraw
import tlsutil
from test_flood_filter import (CLIENT_IP, FLOODER_IP, SERVER_IP,  # noqa: F401
                               driver_bin, kite_blocked, netns, syn_flood, topology)

pytestmark = pytest.mark.kite_only("XDP flood filter in kite, mTLS listener")

REPO = pathlib.Path(__file__).resolve().parents[2]
PORT = 8883
LINE = "flood filter: passed"


def _kite_bin():
    path = os.environ.get("KITE_BIN") or str(REPO / "build" / "kite")
    if not os.path.exists(path) and path == str(REPO / "build" / "kite"):
        r = subprocess.run(["make", "-s"], cwd=REPO, capture_output=True, text=True,
                           timeout=600)
        assert r.returncode == 0, "make -s failed: " + (r.stderr or r.stdout)[-1000:]
    assert os.path.exists(path), "no kite binary at " + path
    return path


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    """`kite cert`: our CA, a server cert for 10.77.0.1, clients dev1/dev2;
    a foreign CA with a client `dev1` (good-looking name, wrong issuer)."""
    if os.geteuid() != 0:
        pytest.skip("XDP filter tests need root")
    kite = _kite_bin()
    d = tmp_path_factory.mktemp("kite-pki")
    foreign = tmp_path_factory.mktemp("foreign-pki")

    def cert(*args):
        r = subprocess.run([kite, "cert"] + list(args), capture_output=True, text=True,
                           timeout=30, stdin=subprocess.DEVNULL)
        assert r.returncode == 0, "kite cert %s: %s" % (" ".join(args), r.stderr)
    cert("ca", "--dir", str(d))
    cert("server", SERVER_IP, "--dir", str(d))
    for name in ("dev1", "dev2"):
        cert("client", name, "--dir", str(d))
    cert("ca", "--cn", "foreign CA", "--dir", str(foreign))
    cert("client", "dev1", "--dir", str(foreign))
    return {"ca": str(d / "ca.pem"), "cert": str(d / "server.pem"),
            "key": str(d / "server.key"),
            "dev1": (str(d / "clients/dev1.pem"), str(d / "clients/dev1.key")),
            "dev2": (str(d / "clients/dev2.pem"), str(d / "clients/dev2.key")),
            "foreign": (str(foreign / "clients/dev1.pem"),
                        str(foreign / "clients/dev1.key"))}


class Kite:
    def __init__(self, proc, logpath):
        self.proc, self.logpath = proc, logpath

    def log(self):
        return self.logpath.read_text(errors="replace")

    def counter_lines(self):
        return [l for l in self.log().splitlines() if LINE in l]

    @staticmethod
    def parse(line):
        return dict((k.strip(), int(v)) for k, v in
                    (part.rsplit(" ", 1) for part in
                     line.split("flood filter: ", 1)[1].split(", ")))

    def counts_after_now(self, timeout=4.0):
        """Counters from a log line whose snapshot is surely later than the
        call: the second line logged after it (sys_interval is 1 s)."""
        n = len(self.counter_lines())
        deadline = time.monotonic() + timeout
        while True:
            lines = self.counter_lines()
            if len(lines) >= n + 2:
                return self.parse(lines[-1])
            assert self.proc.poll() is None, "kite exited:\n" + self.log()[-3000:]
            assert time.monotonic() < deadline, "no flood filter line logged:\n" + \
                self.log()[-2000:]
            time.sleep(0.1)

    def wait_counts(self, pred, timeout=4.0):
        """The first logged counters (from now on) that satisfy pred."""
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            lines = self.counter_lines()
            if lines:
                last = self.parse(lines[-1])
                if pred(last):
                    return last
            time.sleep(0.1)
        pytest.fail("counters never satisfied the condition; last: %r\n%s"
                    % (last, self.log()[-2000:]))


@pytest.fixture
def kite_tls(topology, pki, tmp_path):
    """start(syn_rate, syn_burst, strikes=3, block=2) -> Kite, in the server
    namespace, with the filter on the server veth; stopped at teardown
    (SIGTERM, must exit 0)."""
    binary = _kite_bin()
    started = []

    def start(syn_rate, syn_burst, strikes=3, block=2):
        conf = tmp_path / "kite.conf"
        conf.write_text(
            "listener %d %s\ncafile %s\ncertfile %s\nkeyfile %s\n"
            "require_certificate true\nuse_identity_as_username true\n"
            "log_dest stderr\nlog_type all\nsys_interval 1\n"
            "flood_filter_interface %s\nflood_filter_syn_rate %d\n"
            "flood_filter_syn_burst %d\nflood_filter_strikes %d\n"
            "flood_filter_block_seconds %d\nflood_filter_required true\n"
            % (PORT, SERVER_IP, pki["ca"], pki["cert"], pki["key"],
               topology["iface"], syn_rate, syn_burst, strikes, block))
        logpath = tmp_path / "kite.log"
        log = open(logpath, "w")
        proc = subprocess.Popen(["ip", "netns", "exec", topology["srv"], binary,
                                 "-c", str(conf)], stdout=log, stderr=log,
                                stdin=subprocess.DEVNULL)
        k = Kite(proc, logpath)
        k.logfile = log
        started.append(k)
        deadline = time.monotonic() + 10
        while True:
            text = k.log()
            if proc.poll() is not None:
                m = re.search(r"Flood filter not loaded: .*", text)
                if m:
                    pytest.skip("kite could not attach the XDP filter: " + m.group(0))
                pytest.fail("kite exited (%s) at start:\n%s" % (proc.returncode, text))
            # Over lo inside the server namespace: not through XDP.
            with netns(topology["srv"]):
                s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            with s:
                s.settimeout(0.5)
                try:
                    s.connect((SERVER_IP, PORT))
                    up = True
                except OSError:
                    up = False
            if up and "Flood filter attached" in text:
                return k
            assert time.monotonic() < deadline, "kite did not listen:\n" + text
            time.sleep(0.1)

    yield start

    for k in started:
        if k.proc.poll() is None:
            k.proc.terminate()
        try:
            rc = k.proc.wait(15)
        except subprocess.TimeoutExpired:
            k.proc.kill()
            k.proc.wait()
            rc = "killed after SIGTERM timeout"
        k.logfile.close()
        assert rc == 0, "kite exit status %s on SIGTERM:\n%s" % (rc, k.log()[-3000:])


class NsTLSClient(tlsutil.TLSRawClient):
    """Raw MQTT over TLS from `src` in namespace `ns` to SERVER_IP:PORT. The
    TCP connect is bounded by connect_timeout: a SYN dropped by XDP is only
    retransmitted after 1 s, so connect_timeout < 1 s means "answered at the
    first SYN"."""

    def __init__(self, ns, src, ca, cert=None, key=None, connect_timeout=0.9,
                 timeout=5.0):
        with netns(ns):
            raw = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            raw.bind((src, 0))
            raw.settimeout(connect_timeout)
            t0 = time.monotonic()
            raw.connect((SERVER_IP, PORT))
            self.connect_s = time.monotonic() - t0
            raw.settimeout(timeout)
            raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            ctx.load_verify_locations(ca)  # and the name: IP SAN 10.77.0.1
            if cert:
                ctx.load_cert_chain(cert, key)
            self.sock = ctx.wrap_socket(raw, server_hostname=SERVER_IP)
        except BaseException:
            raw.close()
            raise
        self.buf = bytearray()
        self.pending = []
        self.timeout = timeout
        self.eof = False


def _mtls_connect(ns, src, pki, name, client_id, **kw):
    cert, key = pki[name]
    c = NsTLSClient(ns, src, pki["ca"], cert, key, **kw)
    try:
        ack = c.connect(client_id)
        assert ack.rc == 0, "CONNACK %d for %s from %s" % (ack.rc, name, src)
    except BaseException:
        c.close()
        raise
    return c


def _failed_handshake(ns, src, pki, bad):
    """One connection that kite must refuse at the TLS layer; returns how it
    ended (never a CONNACK)."""
    cert, key = pki["foreign"] if bad == "foreign-ca" else (None, None)
    try:
        c = NsTLSClient(ns, src, pki["ca"], cert, key, connect_timeout=2, timeout=3)
    except ssl.SSLError as e:  # TLS 1.2: the handshake itself fails
        return "handshake: %s" % e
    try:
        # TLS 1.3: the server checks the client's certificate after the
        # client considers the handshake done; the refusal comes as an alert.
        try:
            c.send(mqttraw.connect("bad-" + bad))
            pkt = c.recv(3)
        except (mqttraw.Closed, OSError) as e:
            return "closed: %s" % (getattr(c, "close_reason", None) or e)
        except mqttraw.Timeout:
            pytest.fail("kite neither answered nor closed a %s client" % bad)
        pytest.fail("kite answered a %s client with %r" % (bad, pkt))
    finally:
        c.close()


def test_syn_flood_dropped_while_mtls_client_pubsubs(kite_tls, pki, topology):
    k = kite_tls(syn_rate=5, syn_burst=5)
    ns = topology["cli"]
    base = k.counts_after_now()
    assert base["dropped by rate"] == 0 and base["dropped blocked"] == 0, base

    flood_n = 300
    flood_err = []

    def flood():
        try:
            for _ in range(6):  # 6 x 50 SYNs over ~0.6 s, while the client works
                syn_flood(ns, FLOODER_IP, SERVER_IP, PORT, 50)
                time.sleep(0.1)
        except Exception as e:  # pragma: no cover - reported below
            flood_err.append(e)
    t = threading.Thread(target=flood, daemon=True)
    t.start()
    try:
        sub = _mtls_connect(ns, CLIENT_IP, pki, "dev1", "flood-sub")
        pub = _mtls_connect(ns, CLIENT_IP, pki, "dev2", "flood-pub")
        assert sub.subscribe([("kite/flood/t", 1)]) == [1]
        pub.publish("kite/flood/t", b"through the flood", qos=1)
        msg = sub.expect_publish(timeout=5)
        assert (msg.topic, msg.payload) == ("kite/flood/t", b"through the flood")
        connect_s = (sub.connect_s, pub.connect_s)
        pub.send(mqttraw.disconnect())
        sub.send(mqttraw.disconnect())
        pub.close()
        sub.close()
    finally:
        t.join(10)
    assert not flood_err, flood_err
    # Each TCP connect of the client was answered at its first SYN.
    assert max(connect_s) < 0.9, connect_s

    # At most burst + rate * ~0.7 s of the flood's SYNs pass.
    st = k.wait_counts(lambda c: c["dropped by rate"] >= flood_n - 20)
    assert st["dropped by rate"] <= flood_n, st
    assert st["passed"] > base["passed"], st
    assert st["dropped blocked"] == 0 and st["blocks added"] == 0, st
    assert st["sources allowed"] >= 1, st  # the client's successful CONNECT
    # Nothing of the client was dropped after the flood either.
    after = k.counts_after_now()
    assert after["dropped by rate"] == st["dropped by rate"], (st, after)
    assert k.proc.poll() is None


@pytest.mark.parametrize("bad", ["no-cert", "foreign-ca"])
def test_failed_tls_handshakes_block_the_source_until_expiry(kite_tls, pki, topology, bad):
    k = kite_tls(syn_rate=100, syn_burst=100, strikes=3, block=2)
    ns = topology["cli"]
    outcomes = []
    for i in range(3):
        outcomes.append(_failed_handshake(ns, CLIENT_IP, pki, bad))
        if i < 2:  # not blocked before the third strike: SYN answered
            with netns(ns):
                s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            with s:
                s.bind((CLIENT_IP, 0))
                s.settimeout(0.9)
                s.connect((SERVER_IP, PORT))
    # The third strike blocked the source in the filter's map.
    harness.wait_for(lambda: CLIENT_IP in kite_blocked(_kite_bin(), k.proc.pid), 3,
                     what="%s in `kite filter list`" % CLIENT_IP)
    blocked_at = time.monotonic()
    with pytest.raises(socket.timeout):  # SYN dropped: no answer, not a RST
        NsTLSClient(ns, CLIENT_IP, pki["ca"], *pki["dev1"], connect_timeout=1.0)
    # Other sources are unaffected.
    _mtls_connect(ns, FLOODER_IP, pki, "dev2", "other-source").close()

    # The point: block_seconds (2) pass.
    time.sleep(max(0.0, blocked_at + 2.3 - time.monotonic()))
    assert CLIENT_IP not in kite_blocked(_kite_bin(), k.proc.pid)
    c = _mtls_connect(ns, CLIENT_IP, pki, "dev1", "after-expiry")
    assert c.subscribe([("kite/back", 0)]) == [0]
    c.publish("kite/back", b"x")
    assert c.expect_publish(timeout=3).payload == b"x"
    c.close()

    text = k.log()
    failed = re.findall(r"TLS (?:handshake|session) with %s:\d+ failed: .*"
                        % re.escape(CLIENT_IP), text)
    assert len(failed) >= 3, (outcomes, text[-3000:])
    st = k.counts_after_now()
    assert st["blocks added"] == 1, st
    # The dropped probe SYN(s), and the blocked source's last packets of the
    # third (refused) connection: everything to the port is dropped.
    assert st["dropped blocked"] >= 1, st
    assert st["dropped by rate"] == 0, st
    assert st["sources allowed"] == 2, st  # other source, and after expiry


def test_authenticated_source_is_not_throttled_by_its_reconnects(kite_tls, pki, topology):
    k = kite_tls(syn_rate=2, syn_burst=2)
    ns = topology["cli"]
    # The first mTLS CONNECT puts 10.77.0.3 in the allow map.
    _mtls_connect(ns, CLIENT_IP, pki, "dev1", "reconnect-0").close()
    times = []
    t0 = time.monotonic()
    for i in range(1, 16):
        # Each: TCP (answered at the first SYN), mTLS handshake, CONNECT.
        c = _mtls_connect(ns, CLIENT_IP, pki, "dev1", "reconnect-%d" % i)
        times.append(c.connect_s)
        c.ping(timeout=3)
        c.send(mqttraw.disconnect())
        c.close()
    elapsed = time.monotonic() - t0
    assert max(times) < 0.9, times
    # 16 SYNs in `elapsed` s: a bucket of 2 + 2/s would have dropped some.
    assert 16 > 2 + 2 * elapsed, "reconnects too slow to show anything: %.2fs" % elapsed
    st = k.counts_after_now()
    assert st["dropped by rate"] == 0, st
    assert st["dropped blocked"] == 0 and st["blocks added"] == 0, st
    assert st["sources allowed"] >= 1, st
    # The limit is live for a source that never authenticated.
    syn_flood(ns, FLOODER_IP, SERVER_IP, PORT, 20)
    st2 = k.wait_counts(lambda c: c["dropped by rate"] >= 15)
    assert st2["dropped by rate"] <= 20, st2
