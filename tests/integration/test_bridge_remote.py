"""Bridges as Mosquitto 2.0.11's own bridge tests see them: the broker
under test bridges to a remote played by the test (a listening socket
that reads the bridge's packets byte for byte), or to a real broker.
Each test is the user-visible side of one of Mosquitto's 06-bridge-*
tests: the packet id of a message queued before the remote answers, a
remote that pings the bridge, retained messages at start, and
local_cleansession while the remote is away. They pass on Mosquitto
too (KITE_BIN=/usr/sbin/mosquitto), but for the one marked kite_only."""

import os
import socket
import time

import pytest

import harness
import mqttraw
from clients import Paho

MOSQUITTO = "/usr/sbin/mosquitto"


class Remote:
    """The remote broker's side of a bridge: listens, accepts the
    bridge, reads its packets and answers by hand."""

    def __init__(self):
        self.lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.lsock.bind(("127.0.0.1", 0))
        self.lsock.listen(4)
        self.port = self.lsock.getsockname()[1]
        self.conn = None

    def accept(self, timeout=10):
        self.lsock.settimeout(timeout)
        sock, _ = self.lsock.accept()
        # mqttraw's reader, on the accepted socket.
        c = mqttraw.RawClient.__new__(mqttraw.RawClient)
        c.sock, c.buf, c.pending, c.timeout, c.eof = sock, bytearray(), [], 5.0, False
        self.conn = c
        return c

    def close(self):
        if self.conn:
            self.conn.close()
        self.lsock.close()


@pytest.fixture
def remote():
    r = Remote()
    yield r
    r.close()


def connack(version):
    return bytes([0x20, 3, 0, 0, 0]) if version == 5 else bytes([0x20, 2, 0, 0])


def start_local(tmp_path, conf, port=None, name="local"):
    port = port or harness.free_port()
    d = tmp_path / name
    d.mkdir(exist_ok=True)
    binary = harness.broker_bin()
    text = "listener %d 127.0.0.1\nallow_anonymous true\n" % port + conf
    return harness.Broker(binary, harness.flavour(binary), d, text, port=port)


def bridge_conf(remote_port, topics, version, extra=""):
    return ("connection b1\naddress 127.0.0.1:%d\n" % remote_port
            + "".join("topic %s\n" % t for t in topics)
            + "notifications false\nbridge_attempt_unsubscribe false\n"
            + "bridge_protocol_version %s\n" % ("mqttv50" if version == 5 else "mqttv311")
            + extra)


VERSIONS = pytest.mark.parametrize("version", [4, 5], ids=["mqtt311", "mqtt5"])


@VERSIONS
def test_message_queued_before_the_remote_answers_goes_with_packet_id_1(
        tmp_path, remote, version):
    """06-bridge-b2br-late-connection: a QoS 1 message published while the
    remote has not yet sent CONNACK reaches it as the bridge's first
    packet id, 1 (kite used to spend an id on an out topic it sent no
    packet for, and sent 2)."""
    local = start_local(tmp_path, bridge_conf(remote.port, ["bridge/# out 1"], version))
    try:
        r = remote.accept()
        pub = Paho(local.port)
        pub.publish("bridge/test", b"message", qos=1)  # acknowledged: queued
        pub.stop()
        assert r.expect(mqttraw.CONNECT)
        r.send(connack(version))
        p = r.expect(mqttraw.PUBLISH)
        assert (p.topic, p.qos, p.pid) == ("bridge/test", 1, 1)
        assert p.payload.endswith(b"message")
    finally:
        local.stop()


@VERSIONS
def test_a_remote_that_pings_the_bridge_gets_an_answer(tmp_path, remote, version):
    """06-bridge-br2b-remapping pings the bridge from the remote: Mosquitto
    answers PINGRESP and the bridge keeps forwarding; kite used to close
    the link (a server sends no PINGREQ) and lose what followed."""
    local = start_local(tmp_path, bridge_conf(
        remote.port, ["# out 0 local/topic/ remote/topic/"], version))
    try:
        r = remote.accept()
        r.expect(mqttraw.CONNECT)
        r.send(connack(version))
        r.send(mqttraw.pingreq())
        assert r.expect(mqttraw.PINGRESP)
        pub = Paho(local.port)
        pub.publish("local/topic/x", b"after the ping", qos=0)
        p = r.expect(mqttraw.PUBLISH)
        assert p.topic == "remote/topic/x"
        pub.publish("elsewhere/x", b"no out pattern matches", qos=0)
        pub.stop()
        r.send(mqttraw.pingreq())
        assert r.expect(mqttraw.PINGRESP)  # and nothing before it
    finally:
        local.stop()


@pytest.mark.kite_only("Debian's Mosquitto 2.0.11 sends the restored retained "
                       "message twice (mid 2, then 1); see skip.txt")
@VERSIONS
def test_retained_message_at_start_goes_to_the_remote(tmp_path, remote, version):
    """06-bridge-b2br-late-connection-retain: a retained message restored
    from persistence matches an out pattern, so the bridge's local
    subscription at start queues it for the remote, which gets it once,
    retained, with packet id 1 (kite queued nothing: the local session
    had no connection yet)."""
    port = harness.free_port()
    persist = "persistence true\npersistence_file kept.db\n"
    local = start_local(tmp_path, persist, port=port)
    pub = Paho(port)
    pub.publish("bridge/test", b"message", qos=1, retain=True)
    pub.stop()
    local.stop()
    local = start_local(tmp_path, persist + bridge_conf(
        remote.port, ["bridge/# out 1"], version), port=port)
    try:
        r = remote.accept()
        r.expect(mqttraw.CONNECT)
        r.send(connack(version))
        p = r.expect(mqttraw.PUBLISH)
        assert (p.topic, p.qos, p.pid, p.retain) == ("bridge/test", 1, 1, True)
        r.send(mqttraw.puback(1))
        r.send(mqttraw.pingreq())
        assert r.expect(mqttraw.PINGRESP)  # no second copy before it
    finally:
        local.stop()


def _wait_state(state, want, timeout):
    """The bridge's notification says `want` (earlier states skipped)."""
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        assert left > 0, "bridge state never became %r" % want
        try:
            if state.get(timeout=left).payload == want:
                return
        except Exception:
            pass


def _collect(client, timeout):
    got = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            got.append(client.get(timeout=0.2).payload)
        except Exception:
            pass
    return got


@pytest.mark.timeout(60)
@pytest.mark.skipif(not os.path.exists(MOSQUITTO),
                    reason="needs Mosquitto at /usr/sbin/mosquitto as the remote")
@pytest.mark.parametrize("local_clean", [True, False], ids=["local_clean", "local_persistent"])
def test_local_cleansession_keeps_nothing_while_the_remote_is_away(tmp_path, local_clean):
    """06-bridge-clean-session (A to B): with local_cleansession true, a
    message published while the remote is down is dropped, not queued,
    and only what is published after the bridge is back reaches the
    remote; with false it is queued and delivered, in order."""
    rport = harness.free_port()
    rdir = tmp_path / "remote"
    rdir.mkdir()
    # The remote keeps rsub's session across its restart: what the bridge
    # sends before rsub is back waits for it there.
    rconf = ("listener %d 127.0.0.1\nallow_anonymous true\npersistence true\n"
             "persistence_location %s/\n" % (rport, rdir))

    def start_remote():
        return harness.Broker(MOSQUITTO, "mosquitto", rdir, rconf, port=rport)

    rem = start_remote()
    local = start_local(tmp_path, (
        "connection b1\naddress 127.0.0.1:%d\ntopic q/# out 1\n"
        "restart_timeout 1\nkeepalive_interval 5\ncleansession true\n"
        "local_cleansession %s\n" % (rport, "true" if local_clean else "false")))
    try:
        state = Paho(local.port)
        state.subscribe("$SYS/broker/connection/#", 1)
        _wait_state(state, b"1", 10)
        rsub = Paho(rport, client_id="rsub", clean=False)
        rsub.subscribe("q/#", 1)
        pub = Paho(local.port)
        pub.publish("q/t", b"before", qos=1)
        assert rsub.get(timeout=5).payload == b"before"
        rsub.stop()
        rem.stop()
        _wait_state(state, b"0", 10)
        pub.publish("q/t", b"while-away", qos=1)  # acknowledged either way
        rem = start_remote()
        _wait_state(state, b"1", 15)
        pub.publish("q/t", b"after", qos=1)
        rsub = Paho(rport, client_id="rsub", clean=False)
        want = [b"after"] if local_clean else [b"while-away", b"after"]
        assert _collect(rsub, 2.0) == want
        for c in (rsub, pub, state):
            c.stop()
    finally:
        local.stop()
        rem.stop()
