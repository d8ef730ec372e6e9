"""Bridges (`connection` blocks), with real brokers on loopback: kite
bridging to Mosquitto, Mosquitto bridging to kite, kite to kite; in, out
and both directions with prefixes; QoS 1 across a remote restart;
notifications; a TLS bridge with certificates."""

import os
import shutil
import subprocess
import tempfile
import time

import pytest

import harness
import tlsutil
from clients import Paho

MOSQUITTO = "/usr/sbin/mosquitto"

pytestmark = [
    pytest.mark.kite_only("kite is the bridging or the bridged broker"),
    pytest.mark.skipif(not os.path.exists(MOSQUITTO),
                       reason="needs Mosquitto at /usr/sbin/mosquitto"),
]


class Brokers:
    """Brokers started by one test, stopped at its end."""

    def __init__(self, tmp_path):
        self.tmp = tmp_path
        self.all = []

    def start(self, kind, conf, port=None, name=None):
        port = port or harness.free_port()
        d = self.tmp / (name or "%s-%d" % (kind, port))
        d.mkdir(exist_ok=True)
        binary = MOSQUITTO if kind == "mosquitto" else harness.broker_bin()
        text = "listener %d 127.0.0.1\nallow_anonymous true\n" % port + conf
        b = harness.Broker(binary, harness.flavour(binary), d, text, port=port)
        self.all.append(b)
        return b

    def stop_all(self):
        for b in self.all:
            if not b.stopped:
                b.stop()


@pytest.fixture
def brokers(tmp_path):
    bs = Brokers(tmp_path)
    yield bs
    bs.stop_all()


def bridge_conf(name, remote_port, topics, extra=""):
    lines = ["connection %s" % name, "address 127.0.0.1:%d" % remote_port,
             "restart_timeout 1"]
    lines += ["topic " + t for t in topics]
    return "\n".join(lines) + "\n" + extra


def wait_bridge_up(local_port, name_re=r".*", timeout=10):
    """Waits until the bridge says it is connected: its local state
    notification, retained, reads 1."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        c = Paho(local_port)
        c.subscribe("$SYS/broker/connection/#", 1)
        try:
            while True:
                m = c.get(timeout=0.5)
                if m.payload == b"1":
                    return
        except Exception:
            pass
        finally:
            c.stop()
    raise AssertionError("bridge not connected in %ss" % timeout)


def collect(client, n, timeout=10):
    return [client.get(timeout=timeout) for _ in range(n)]


def check_directions(local_port, remote_port):
    """out with prefixes, in with prefixes, both without: each message
    arrives once, on the mapped topic, and nothing loops back."""
    lsub = Paho(local_port)
    lsub.subscribe("lo/#", 1)
    lsub.subscribe("both/#", 1)
    rsub = Paho(remote_port)
    rsub.subscribe("r/#", 1)
    rsub.subscribe("both/#", 1)
    lpub, rpub = Paho(local_port), Paho(remote_port)
    lpub.publish("l/out/a", b"to-remote", qos=1)
    rpub.publish("re/in/b", b"to-local", qos=1)
    lpub.publish("both/x", b"from-local", qos=1)
    rpub.publish("both/y", b"from-remote", qos=1)
    got_r = sorted((m.topic, m.payload) for m in collect(rsub, 3))
    got_l = sorted((m.topic, m.payload) for m in collect(lsub, 3))
    assert got_r == [("both/x", b"from-local"), ("both/y", b"from-remote"),
                     ("r/out/a", b"to-remote")]
    assert got_l == [("both/x", b"from-local"), ("both/y", b"from-remote"),
                     ("lo/in/b", b"to-local")]
    time.sleep(0.5)  # a loop would deliver more copies by now
    assert lsub.messages.empty() and rsub.messages.empty()
    for c in (lsub, rsub, lpub, rpub):
        c.stop()


TOPICS = ["out/# out 1 l/ r/", "in/# in 1 lo/ re/", "both/# both 1"]


def test_kite_bridges_to_mosquitto(brokers):
    remote = brokers.start("mosquitto", "")
    local = brokers.start("kite", bridge_conf("m1", remote.port, TOPICS))
    wait_bridge_up(local.port)
    check_directions(local.port, remote.port)
    # Mosquitto saw a bridge (try_private's protocol bit), not a client.
    assert "New bridge connected" in remote.output()


def test_kite_bridges_to_mosquitto_mqtt5(brokers):
    remote = brokers.start("mosquitto", "")
    local = brokers.start("kite", bridge_conf(
        "m5", remote.port, TOPICS, "bridge_protocol_version mqttv50\n"))
    wait_bridge_up(local.port)
    check_directions(local.port, remote.port)


def test_mosquitto_bridges_to_kite(brokers):
    remote = brokers.start("kite", "")
    local = brokers.start("mosquitto", bridge_conf("k1", remote.port, TOPICS))
    wait_bridge_up(local.port)
    check_directions(local.port, remote.port)


@pytest.mark.parametrize("version", ["mqttv311", "mqttv50"])
def test_kite_bridges_to_kite(brokers, version):
    remote = brokers.start("kite", "")
    local = brokers.start("kite", bridge_conf(
        "kk", remote.port, TOPICS, "bridge_protocol_version %s\n" % version))
    wait_bridge_up(local.port)
    check_directions(local.port, remote.port)


@pytest.mark.timeout(60)
def test_qos1_across_a_remote_restart(brokers, tmp_path):
    """Messages published while the remote is down are queued and reach
    it in order when it returns; nothing acknowledged to the publisher
    is lost, and the bridge says so in its notifications."""
    rport = harness.free_port()
    remote = brokers.start("mosquitto", "", port=rport, name="remote")
    local = brokers.start("kite", bridge_conf("rs", rport, ["q/# out 1"]))
    wait_bridge_up(local.port)
    state = Paho(local.port)
    state.subscribe("$SYS/broker/connection/+/state", 1)
    assert state.get().payload == b"1"
    rsub = Paho(rport, client_id="rsub", clean=False)
    rsub.subscribe("q/#", 1)
    pub = Paho(local.port)
    for i in range(50):
        pub.publish("q/t", b"%d" % i, qos=1)
    first = [int(m.payload) for m in collect(rsub, 50)]
    assert first == list(range(50))
    rsub.stop()
    remote.stop()
    assert state.get(timeout=5).payload == b"0"
    for i in range(50, 200):  # acknowledged by kite, queued for the remote
        pub.publish("q/t", b"%d" % i, qos=1)
    remote = brokers.start("mosquitto", "", port=rport, name="remote")
    rsub = Paho(rport, client_id="rsub", clean=False)
    rsub.subscribe("q/#", 1)
    assert state.get(timeout=10).payload == b"1"
    got = [int(m.payload) for m in collect(rsub, 150, timeout=15)]
    assert got == list(range(50, 200))
    for c in (rsub, pub, state):
        c.stop()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("local_clean", [False, True], ids=["persistent", "local_cleansession"])
def test_queue_for_a_down_remote_survives_a_kill9(brokers, tmp_path, local_clean):
    """With persistence, what kite acknowledged for a remote that is down
    is on disk: kite killed with -9 and started again still delivers it,
    in order, when the remote returns (Mosquitto keeps a bridge's local
    session the same way). With local_cleansession true nothing is kept
    for a remote that is away: those messages are dropped, as Mosquitto
    drops them (06-bridge-clean-session), and only what is published
    once the bridge is up reaches the remote."""
    rport = harness.free_port()
    data = tmp_path / "state"
    data.mkdir()
    conf = ("persistence true\npersistence_location %s/\n" % data
            + bridge_conf("dq", rport, ["q/# out 1"],
                          "local_cleansession true\n" if local_clean else ""))
    # rsub's subscription must exist before the bridge can reach the
    # remote: Mosquitto drops what nobody is subscribed to, and a bridge
    # retry between the remote's start and a later SUBSCRIBE would lose
    # the queue for a reason that is not kite's. So the remote keeps
    # rsub's session on disk across a stop, as an operator's would.
    rdir = tmp_path / "remote"
    rdir.mkdir()
    rconf = "persistence true\npersistence_location %s/\n" % rdir
    remote = brokers.start("mosquitto", rconf, port=rport, name="remote")
    rsub = Paho(rport, client_id="rsub", clean=False)
    rsub.subscribe("q/#", 1)
    rsub.stop()
    remote.stop()
    lport = harness.free_port()
    local = brokers.start("kite", conf, port=lport, name="local")
    pub = Paho(lport)
    for i in range(100):  # the remote was never up: all queued
        pub.publish("q/t", b"%d" % i, qos=1)
    pub.stop()
    local.stop(sig=9)
    local = brokers.start("kite", conf, port=lport, name="local")
    pub = Paho(lport)
    for i in range(100, 120):
        pub.publish("q/t", b"%d" % i, qos=1)
    pub.stop()
    brokers.start("mosquitto", rconf, port=rport, name="remote")
    rsub = Paho(rport, client_id="rsub", clean=False)
    want = list(range(120))
    if local_clean:
        wait_bridge_up(lport)
        pub = Paho(lport)
        pub.publish("q/t", b"120", qos=1)
        pub.stop()
        want = [120]
    got = [int(m.payload) for m in collect(rsub, len(want), timeout=15)]
    assert got == want
    time.sleep(0.5)
    assert rsub.messages.empty()
    rsub.stop()
    assert "local session of bridge" not in local.output()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("local_kind", ["kite", "mosquitto"])
def test_lazy_bridge_connects_at_threshold_and_leaves_when_idle(brokers, local_kind):
    """start_type lazy (Mosquitto's meaning): no connection until
    `threshold` messages wait for the remote; then all of them go, in
    order; after idle_timeout without a message either way, the bridge
    disconnects, and comes back at the threshold again."""
    remote = brokers.start("kite" if local_kind == "mosquitto" else "mosquitto", "")
    local = brokers.start(local_kind, bridge_conf(
        "lz", remote.port, ["q/# out 1"],
        "start_type lazy\nthreshold 5\nidle_timeout 2\n"))
    rsub = Paho(remote.port, client_id="rsub")
    rsub.subscribe("q/#", 1)
    state = Paho(local.port)
    state.subscribe("$SYS/broker/connection/+/state", 1)
    assert state.get().payload == b"0"
    pub = Paho(local.port)
    for i in range(4):
        pub.publish("q/t", b"%d" % i, qos=1)
    time.sleep(1.5)  # six ticks: a bridge that was going to connect has
    assert rsub.messages.empty()
    pub.publish("q/t", b"4", qos=1)
    assert state.get(timeout=5).payload == b"1"
    assert [int(m.payload) for m in collect(rsub, 5)] == list(range(5))
    if local_kind == "mosquitto":
        # Mosquitto 2.0.11 did not disconnect within the 6 s the kite
        # case waits (not investigated further): the idle half checks
        # kite's reading of mosquitto.conf(5) alone.
        for c in (rsub, pub, state):
            c.stop()
        return
    # Idle: no PUBLISH either way for idle_timeout.
    assert state.get(timeout=6).payload == b"0"
    assert "exceeded idle timeout" in local.output()
    for i in range(5, 10):
        pub.publish("q/t", b"%d" % i, qos=1)
    assert state.get(timeout=5).payload == b"1"
    assert [int(m.payload) for m in collect(rsub, 5)] == list(range(5, 10))
    for c in (rsub, pub, state):
        c.stop()


def test_notifications_on_the_remote(brokers):
    """The remote sees the bridge's state "1" retained, and "0" from the
    bridge's will when it vanishes."""
    remote = brokers.start("mosquitto", "")
    local = brokers.start("kite", bridge_conf(
        "nt", remote.port, ["a/# out 0"],
        "remote_clientid edge1\nnotification_topic bridges/edge1\n"))
    c = Paho(remote.port)
    c.subscribe("bridges/#", 1)
    m = c.get(timeout=10)
    assert (m.topic, m.payload) == ("bridges/edge1", b"1")
    local.stop(sig=9)
    m = c.get(timeout=10)
    assert (m.topic, m.payload) == ("bridges/edge1", b"0")
    c.stop()


def test_failover_to_the_second_address(brokers):
    dead = harness.free_port()
    remote = brokers.start("mosquitto", "")
    conf = ("connection fo\naddresses 127.0.0.1:%d 127.0.0.1:%d\n"
            "restart_timeout 1\ntopic f/# out 0\n" % (dead, remote.port))
    local = brokers.start("kite", conf)
    wait_bridge_up(local.port)
    rsub = Paho(remote.port)
    rsub.subscribe("f/#")
    Paho(local.port).publish("f/1", b"via-second")
    assert rsub.get().payload == b"via-second"
    rsub.stop()


class ReadablePKI:
    """The test PKI copied where Mosquitto can read it: started as root,
    it drops to the mosquitto user before it loads certificates."""

    def __init__(self):
        src = tlsutil.pki()
        self.dir = tempfile.mkdtemp(prefix="kite-bridge-pki-")
        os.chmod(self.dir, 0o755)
        for name in os.listdir(src.dir):
            p = os.path.join(str(src.dir), name)
            if os.path.isfile(p):
                shutil.copy(p, self.dir)
                os.chmod(os.path.join(self.dir, name), 0o644)

    def __getitem__(self, name):
        return os.path.join(self.dir, name)

    def client(self, cn):
        return self[cn + ".pem"], self[cn + ".key"]

    def remove(self):
        shutil.rmtree(self.dir, True)


@pytest.fixture
def pki():
    p = ReadablePKI()
    yield p
    p.remove()


def test_tls_bridge_with_certificates(brokers, pki):
    tport = harness.free_port()
    remote = brokers.start("mosquitto", (
        "listener %d 127.0.0.1\ncafile %s\ncertfile %s\nkeyfile %s\n"
        "require_certificate true\n" % (tport, pki["ca.pem"], pki["server.pem"],
                                        pki["server.key"])))
    cert, key = pki.client("gw1")
    local = brokers.start("kite", bridge_conf(
        "tl", tport, ["t/# both 1"],
        "bridge_cafile %s\nbridge_certfile %s\nbridge_keyfile %s\n"
        % (pki["ca.pem"], cert, key)))
    wait_bridge_up(local.port)
    rsub = Paho(remote.port)
    rsub.subscribe("t/#", 1)
    Paho(local.port).publish("t/secure", b"over-tls", qos=1)
    assert rsub.get().payload == b"over-tls"
    rsub.stop()


def test_tls_bridge_refuses_a_wrong_ca(brokers, pki):
    tport = harness.free_port()
    brokers.start("mosquitto", (
        "listener %d 127.0.0.1\ncafile %s\ncertfile %s\nkeyfile %s\n"
        % (tport, pki["ca.pem"], pki["server.pem"], pki["server.key"])))
    local = brokers.start("kite", bridge_conf(
        "bad", tport, ["t/# out 1"], "bridge_cafile %s\n" % pki["foreign-ca.pem"]))
    local.wait_output(r"certificate verify failed", timeout=10)
    time.sleep(1)
    assert "Bridge bad connected" not in local.output()


PSK_KEY = "6b6974652d6272696467652d70736b2d3031"


@pytest.mark.parametrize("version", ["tlsv1.2", "tlsv1.3"])
@pytest.mark.parametrize("remote_kind", ["mosquitto", "kite"])
def test_psk_bridge(brokers, tmp_path, version, remote_kind):
    """bridge_identity / bridge_psk: TLS-PSK to a remote with psk_file,
    no certificates on either side, with TLS 1.2 PSK suites and TLS 1.3
    external PSK."""
    if remote_kind == "mosquitto" and version == "tlsv1.3":
        pytest.skip("Mosquitto 2.0.11's psk_file listener does TLS 1.2 PSK "
                    "suites only (its TLS 1.3 handshake wants a certificate)")
    pskf = tmp_path / "psk.txt"
    pskf.write_text("edge-7:%s\n" % PSK_KEY)
    os.chmod(tmp_path, 0o755)
    os.chmod(pskf, 0o644)
    tport = harness.free_port()
    remote = brokers.start(remote_kind, (
        "listener %d 127.0.0.1\npsk_hint kite-tests\npsk_file %s\n"
        % (tport, pskf)))
    local = brokers.start("kite", bridge_conf(
        "pk", tport, ["p/# both 1"],
        "bridge_identity edge-7\nbridge_psk %s\nbridge_tls_version %s\n"
        % (PSK_KEY, version)))
    wait_bridge_up(local.port)
    rsub = Paho(remote.port)
    rsub.subscribe("p/#", 1)
    Paho(local.port).publish("p/secret", b"over-psk", qos=1)
    assert rsub.get().payload == b"over-psk"
    rsub.stop()


def test_psk_bridge_with_a_wrong_key_does_not_connect(brokers, tmp_path):
    pskf = tmp_path / "psk.txt"
    pskf.write_text("edge-7:%s\n" % PSK_KEY)
    tport = harness.free_port()
    brokers.start("kite", "listener %d 127.0.0.1\npsk_hint h\npsk_file %s\n"
                  % (tport, pskf))
    local = brokers.start("kite", bridge_conf(
        "pkw", tport, ["p/# out 1"],
        "bridge_identity edge-7\nbridge_psk %s\n" % ("00" + PSK_KEY[2:])))
    local.wait_output(r"TLS handshake .*failed", timeout=10)
    time.sleep(1)
    assert "Bridge pkw connected" not in local.output()


def _ocsp_response(pki, d, status):
    """A DER OCSP response for server.pem, signed by the test CA."""
    serial = subprocess.run(["openssl", "x509", "-in", pki["server.pem"], "-noout",
                             "-serial"], capture_output=True, text=True,
                            check=True).stdout.strip().split("=", 1)[1]
    subj = subprocess.run(["openssl", "x509", "-in", pki["server.pem"], "-noout",
                           "-subject", "-nameopt", "compat"], capture_output=True,
                          text=True, check=True).stdout.strip().split("=", 1)[1]
    line = ("V\t301001010000Z\t\t%s\tunknown\t%s\n" if status == "good" else
            "R\t301001010000Z\t240101000000Z\t%s\tunknown\t%s\n") % (serial, subj)
    (d / "index.txt").write_text(line)
    out = d / ("%s.der" % status)
    subprocess.run(["openssl", "ocsp", "-index", str(d / "index.txt"),
                    "-rsigner", pki["ca.pem"], "-rkey", pki["ca.key"],
                    "-CA", pki["ca.pem"], "-issuer", pki["ca.pem"],
                    "-cert", pki["server.pem"], "-respout", str(out),
                    "-ndays", "1"], capture_output=True, check=True)
    return out


@pytest.mark.parametrize("staple", ["good", "revoked", "none"])
def test_bridge_require_ocsp(brokers, pki, tmp_path, staple):
    """bridge_require_ocsp: the remote (here openssl s_server, which can
    staple) must staple a response its CA signed saying "good"; a revoked
    one, or none, fails the handshake and no CONNECT leaves."""
    import threading
    tport = harness.free_port()
    cmd = ["openssl", "s_server", "-accept", "127.0.0.1:%d" % tport,
           "-cert", pki["server.pem"], "-key", pki["server.key"]]
    if staple != "none":
        cmd += ["-status_file", str(_ocsp_response(pki, tmp_path, staple))]
    srv = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT)
    out = bytearray()
    reader = threading.Thread(target=lambda: [out.extend(b) for b in
                                              iter(lambda: srv.stdout.read1(4096), b"")],
                              daemon=True)
    reader.start()
    try:
        harness.wait_for(lambda: b"ACCEPT" in out, 10, what="s_server")
        local = brokers.start("kite", bridge_conf(
            "oc", tport, ["o/# out 1"],
            "bridge_cafile %s\nbridge_require_ocsp true\n" % pki["ca.pem"]))
        if staple == "good":
            # The bridge's CONNECT, decrypted by s_server.
            harness.wait_for(lambda: b"MQTT" in out, 10, what="the CONNECT")
        else:
            # OpenSSL's words for a refused (or missing) stapled response.
            local.wait_output(r"TLS handshake .*failed: .*invalid status response",
                              timeout=10)
            time.sleep(0.5)
            assert b"MQTT" not in out
    finally:
        srv.kill()
        srv.wait()


def _port_open(port):
    import socket
    try:
        socket.create_connection(("127.0.0.1", port), 0.2).close()
        return True
    except OSError:
        return False


@pytest.mark.parametrize("conf,why", [
    ("connection x\ntopic a out\n", "has no address"),
    ("connection x\naddress 127.0.0.1\n", "has no topic"),
    ("topic a out\n", "only valid in a bridge"),
    ("connection x\naddress 127.0.0.1\ntopic a sideways\n", "direction"),
    ("connection x\naddress 127.0.0.1\ntopic a out 3\n", "QoS"),
    ("connection x\naddress 127.0.0.1\ntopic \"\" out 0 \"\" r/\n", "empty pattern"),
    ("connection x\naddress 127.0.0.1\ntopic a\nrestart_timeout 10 5\n", "base"),
    ("connection x\naddress 127.0.0.1\ntopic a\nbridge_protocol_version mqttv6\n",
     "mqttv50"),
    ("connection x\naddress 127.0.0.1\ntopic a\nbridge_identity me\n",
     "needs both bridge_identity and bridge_psk"),
    ("connection x\naddress 127.0.0.1\ntopic a\nbridge_identity me\nbridge_psk abc\n",
     "hexadecimal"),
    ("connection x\naddress 127.0.0.1\ntopic a\nbridge_identity me\nbridge_psk ab\n"
     "bridge_cafile /etc/ssl/certs/ca-certificates.crt\n", "only one of them"),
    ("connection x\naddress 127.0.0.1\ntopic a\nbridge_require_ocsp true\n",
     "bridge_require_ocsp without certificate TLS"),
])
def test_bad_bridge_config_is_refused(tmp_path, conf, why):
    p = tmp_path / "k.conf"
    p.write_text("listener %d 127.0.0.1\n" % harness.free_port() + conf)
    r = harness.run_cmd([harness.broker_bin(), "-c", str(p)], timeout=5)
    assert r.returncode != 0
    assert why in r.stdout + r.stderr
    assert "k.conf:" in r.stdout + r.stderr
