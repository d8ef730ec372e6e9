"""Kernel TLS hand-off failures, on a machine whose kernel has no TLS.

kite moves a TLS connection to kernel TLS once its CONNECT is in (before
the CONNACK leaves). A real kernel can refuse that move: TCP_ULP wants an
ESTABLISHED socket, so a client that already sent its FIN (connect, publish
and close at once) makes it fail; a key can be refused too. The broker used
to abort on the first of these (tls_conn_feed: Assertion !c->exported).

tests/fault/ktls_fault.c is preloaded into kite: it answers kite's startup
probe as a kernel with TLS and makes each hand-off fail as the mode file
says (ulp, rx: userspace TLS goes on; tx: that client is closed), with an
optional delay inside TCP_ULP so that the client's next bytes, close_notify
or FIN arrive while the hand-off is under way. Real short-lived clients
(mosquitto_pub, paho, openssl s_client, raw Python ssl) then must be served
exactly as without kernel TLS, and a client that stays connected must not
notice the others. The same clients against a real kernel's TLS run in the
VM (tests/vm/test_ktls_shortlived_vm.sh)."""

import os
import socket
import ssl
import subprocess
import time
from pathlib import Path

import pytest

import harness
import mqttraw
import tlsutil
from tlsutil import LOG, pki, tls_listener

pytestmark = pytest.mark.kite_only("kite's kernel TLS hand-off (fault seam preloaded into kite)")


def _shim():
    so = os.environ.get("KTLS_FAULT_SO")
    if not so:
        bin_ = harness.broker_bin()
        so = str(Path(bin_).parent / "ktls-fault.so") if bin_ else ""
    if not so or not os.path.exists(so):
        pytest.skip("kernel TLS fault seam not built (make %s)" %
                    "build/ktls-fault.so")
    return so


MTLS = tls_listener(extra="require_certificate true\nuse_identity_as_username true\n") + LOG


class Faulty:
    """kite with the fault seam, an mTLS listener, and a mode file."""

    def __init__(self, broker_factory, tmp_path, mode, conf=MTLS):
        self.mode_file = tmp_path / "ktls-fault-mode"
        self.set(mode)
        env = {"LD_PRELOAD": _shim(), "KITE_KTLS_FAULT_FILE": str(self.mode_file)}
        port = harness.free_port()
        self.b = broker_factory(conf, listener=False, port=port, env=env)
        self.port = port
        # The seam answered the probe: kite believes the kernel has TLS.
        self.b.wait_output(r"records in the kernel \(kTLS\)", timeout=5)

    def set(self, mode):
        self.mode_file.write_text(mode)

    def holds(self):
        """How many times the seam has held kite inside TCP_ULP (delay=)."""
        held = Path(str(self.mode_file) + ".held")
        return len(held.read_text().splitlines()) if held.exists() else 0

    def args(self, cn, version):
        return tlsutil.tls_args(self.port, cn=cn, extra=["--tls-version", version])

    def handoffs_refused(self, why):
        return self.b.output().count("kernel TLS not used") if why is None else \
            len([l for l in self.b.output().splitlines()
                 if "kernel TLS not used" in l and why in l])


def _sub(f, version, count, topic="device/+/x"):
    """A subscriber that stays connected (paho-like mosquitto_sub), once
    its SUBACK is in: with -d it says so on stdout, line-buffered by
    stdbuf (a pipe would hold it back until exit). Debug lines start with
    "Client " or "Subscribed", messages with their topic."""
    cmd = (["stdbuf", "-oL", "mosquitto_sub"] + f.args("app1", version) +
           ["-d", "-C", str(count), "-v", "-W", "20", "-t", topic])
    sub = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           stdin=subprocess.DEVNULL, text=True)
    seen = []
    while True:  # bounded: mosquitto_sub -W 20, and the test's timeout
        line = sub.stdout.readline()
        seen.append(line)
        if "received SUBACK" in line:
            return sub
        if not line:
            pytest.fail("mosquitto_sub exited before its SUBACK: %s %s"
                        % ("".join(seen), sub.stderr.read()))


@pytest.mark.timeout(60)
@pytest.mark.parametrize("mode,why", [("ulp", "TCP_ULP"), ("rx", "TLS_RX")])
@pytest.mark.parametrize("version", ["tlsv1.2", "tlsv1.3"])
def test_short_lived_publishers_survive_a_refused_handoff(broker_factory, tmp_path,
                                                         mode, why, version):
    """The issue's reproduction: mosquitto_pub with a client certificate,
    20 times in a row, on an mTLS listener with use_identity_as_username.
    Every hand-off is refused; every message must arrive."""
    f = Faulty(broker_factory, tmp_path, mode)
    n = 20
    sub = _sub(f, version, n)
    # The subscriber's own hand-off was refused first: it goes on in userspace.
    harness.wait_for(lambda: f.handoffs_refused(why) >= 1, 5,
                     what="the subscriber's refused hand-off")
    for i in range(n):
        r = tlsutil.mosquitto_pub(f.args("Device123", version),
                                  "device/Device123/x", "hi %d" % i)
        assert r.returncode == 0, "mosquitto_pub #%d: %s" % (i, r.stderr)
    out, err = sub.communicate(timeout=20)
    assert sub.returncode == 0, err
    got = [l for l in out.splitlines() if l.startswith("device/")]
    assert got == ["device/Device123/x hi %d" % i for i in range(n)]
    assert f.b.alive()
    assert f.handoffs_refused(why) >= n + 1
    assert "Assertion" not in f.b.output()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("version", ["tlsv1.2", "tlsv1.3"])
def test_refused_send_key_closes_that_client_only(broker_factory, tmp_path, version):
    """The receive key was taken, the send key refused: the client can no
    longer be spoken to and is closed with the reason in the log. A client
    connected before keeps working, and the next client is served."""
    f = Faulty(broker_factory, tmp_path, "ulp")
    sub = tlsutil.paho_tls(f.port, cn="app1")
    assert sub.rc == 0
    tlsutil.paho_subscribe(sub, "device/#", qos=1)
    f.set("tx")
    r = tlsutil.mosquitto_pub(f.args("Device123", version), "device/Device123/x", "lost")
    assert r.returncode != 0, "a client whose send key was refused got through"
    f.b.wait_output(r"kernel TLS: TLS_TX: Cannot allocate memory", timeout=5)
    f.set("ulp")
    r = tlsutil.mosquitto_pub(f.args("Device123", version), "device/Device123/x", "kept",
                              qos=1)
    assert r.returncode == 0, r.stderr
    m = sub.msgs.get(timeout=5)
    assert (m.topic, m.payload) == ("device/Device123/x", b"kept")
    sub.disconnect()
    sub.loop_stop()
    assert "Assertion" not in f.b.output()


def _raw_tls(port, version, cn="Device123"):
    cert, key = pki().client(cn)
    ctx = tlsutil.client_context(cert=cert, key=key)
    if version == "tlsv1.2":
        ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    else:
        ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    raw = socket.create_connection((harness.HOST, port), timeout=5)
    return ctx.wrap_socket(raw, server_hostname="localhost")


@pytest.mark.timeout(60)
@pytest.mark.parametrize("mode", ["ulp delay=300", "rx delay=300"])
@pytest.mark.parametrize("version", ["tlsv1.2", "tlsv1.3"])
@pytest.mark.parametrize("ending", ["close_notify", "fin", "reset"])
def test_bytes_and_close_arriving_during_the_handoff(broker_factory, tmp_path,
                                                     mode, version, ending):
    """A client pipelines CONNECT and a QoS 1 PUBLISH behind its handshake,
    sends a second PUBLISH while kite is inside the (delayed) hand-off,
    then ends with close_notify, a bare FIN, or a reset. The hand-off is
    refused; both messages must still be routed (the second one only if
    the connection ended cleanly enough for it to be read)."""
    f = Faulty(broker_factory, tmp_path, mode)
    sub = tlsutil.paho_tls(f.port, cn="app1")
    assert sub.rc == 0
    tlsutil.paho_subscribe(sub, "device/#", qos=1)
    holds = f.holds()
    s = _raw_tls(f.port, version)
    s.sendall(mqttraw.connect("shortlived-%s" % ending) +
              mqttraw.publish("device/Device123/x", b"first", qos=1, pid=1))
    # kite is inside TCP_ULP (for 300 ms) with this client's hand-off.
    harness.wait_for(lambda: f.holds() > holds, 3, what="kite inside the delayed TCP_ULP")
    s.sendall(mqttraw.publish("device/Device123/x", b"second", qos=1, pid=2))
    if ending == "close_notify":
        s.settimeout(3)
        try:
            s.unwrap()  # our close_notify; kite answers in kind
        except (ssl.SSLError, OSError):
            pass
        s.close()
    elif ending == "fin":
        s.shutdown(socket.SHUT_WR)
        s.close()
    else:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        s.close()
    got = []
    want = 1 if ending == "reset" else 2
    deadline = time.monotonic() + 5
    while len(got) < want and time.monotonic() < deadline:
        try:
            got.append(sub.msgs.get(timeout=max(0.05, deadline - time.monotonic())).payload)
        except Exception:
            break
    if ending == "reset":
        # A reset may discard what the kernel had not handed to kite yet.
        assert got[:1] in ([b"first"], []), got
    else:
        assert got == [b"first", b"second"]
    # The broker is unharmed: the subscriber still gets the next message.
    r = tlsutil.mosquitto_pub(f.args("Device123", version), "device/Device123/x", "after",
                              qos=1)
    assert r.returncode == 0, r.stderr
    deadline = time.monotonic() + 5
    while True:
        m = sub.msgs.get(timeout=max(0.05, deadline - time.monotonic()))
        if m.payload == b"after":
            break
    sub.disconnect()
    sub.loop_stop()
    assert "Assertion" not in f.b.output()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("version", ["-tls1_2", "-tls1_3"])
def test_s_client_closing_at_once(broker_factory, tmp_path, version):
    """openssl s_client sends a CONNECT and a PUBLISH from stdin and closes
    as soon as stdin ends, without waiting for anything."""
    f = Faulty(broker_factory, tmp_path, "ulp")
    sub = tlsutil.paho_tls(f.port, cn="app1")
    assert sub.rc == 0
    tlsutil.paho_subscribe(sub, "device/#", qos=0)
    cert, key = pki().client("Device123")
    data = mqttraw.connect("sclient") + mqttraw.publish("device/Device123/x", b"from s_client")
    for _ in range(5):
        tlsutil.s_client(f.port, ["-CAfile", pki()["ca.pem"], "-cert", cert, "-key", key,
                                  version, "-quiet", "-no_ign_eof"], send=data)
    m = sub.msgs.get(timeout=5)
    assert m.payload == b"from s_client"
    sub.disconnect()
    sub.loop_stop()
    assert f.b.alive()
    assert "Assertion" not in f.b.output()
