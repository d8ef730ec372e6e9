"""A bridge's move to kernel TLS, on a machine whose kernel has no TLS.

A bridge over TLS hands its records to the kernel as a listener's
connection does, once the remote's CONNACK is in. tests/fault/ktls_fault.c
is preloaded into the bridging kite: it answers kite's startup probe as a
kernel with TLS, then refuses each hand-off as the mode file says (ulp,
rx: the bridge goes on in userspace TLS; tx: that connection is closed and
the bridge connects again). The bridge must carry messages both ways,
large ones too, exactly as without kernel TLS. A remote Mosquitto over TLS
1.3 sends session tickets right after the handshake, read in userspace
before the hand-off. That the keys are right is shown against a real
kernel in the VM (tests/vm/test_bridge_ktls_vm.sh) and by the unit test
tls_bridge_client_ktls_keys_are_the_servers_mirrored."""

import os

import pytest

import harness
import tlsutil
from clients import Paho
from test_ktls_handoff import _shim

MOSQUITTO = "/usr/sbin/mosquitto"
LOG = "log_dest stderr\nlog_type all\n"

pytestmark = [
    pytest.mark.kite_only("kite's kernel TLS hand-off (fault seam preloaded into kite)"),
    pytest.mark.skipif(not os.path.exists(MOSQUITTO),
                       reason="needs Mosquitto at /usr/sbin/mosquitto"),
]


class Setup:
    """A remote (kite or Mosquitto) with a plain and a TLS listener, and a
    local kite with the fault seam bridging to it over TLS."""

    def __init__(self, broker_factory, tmp_path, remote_kind, version, mode):
        pki = tlsutil.pki()
        self.tport = harness.free_port()
        self.rport = harness.free_port()
        d = tmp_path / "remote"
        d.mkdir()
        binary = MOSQUITTO if remote_kind == "mosquitto" else harness.broker_bin()
        text = (LOG + "allow_anonymous true\nlistener %d 127.0.0.1\n"
                "listener %d 127.0.0.1\ncafile %s\ncertfile %s\nkeyfile %s\n"
                % (self.rport, self.tport, pki["ca.pem"], pki["server.pem"],
                   pki["server.key"]))
        if remote_kind == "mosquitto" and os.geteuid() == 0:
            text += "user root\n"  # it could not read the test's PKI
        self.remote = harness.Broker(binary, harness.flavour(binary), d, text,
                                     port=self.rport)
        self.mode_file = tmp_path / "ktls-fault-mode"
        self.set(mode)
        env = {"LD_PRELOAD": _shim(), "KITE_KTLS_FAULT_FILE": str(self.mode_file)}
        self.local = broker_factory(
            LOG + "allow_anonymous true\nconnection rb\naddress 127.0.0.1:%d\n"
            "restart_timeout 1\ncleansession true\ntopic out/# out 1\n"
            "topic in/# in 1\nbridge_cafile %s\nbridge_tls_version %s\n"
            % (self.tport, pki["ca.pem"], version), env=env)
        # The seam answered the probe: kite means to use kernel TLS.
        self.local.wait_output(r"Bridge rb: TLS: handshake in userspace \(OpenSSL\), "
                               r"records in the kernel \(kTLS\)", timeout=5)

    def set(self, mode):
        self.mode_file.write_text(mode)

    def refused(self):
        """The bridge's hand-offs refused so far (the local kite has no
        TLS listener: every one is the bridge's)."""
        return self.local.output().count(
            "kernel TLS not used for 127.0.0.1:%d" % self.tport)

    def connected(self):
        return self.local.output().count("Bridge rb connected to")

    def stop(self):
        if not self.remote.stopped:
            self.remote.stop()


@pytest.fixture
def setups():
    made = []
    yield made
    for s in made:
        s.stop()


def check_both_ways(s):
    """Small and large (several TLS records) messages, each way, in order."""
    rsub, lsub = Paho(s.rport), Paho(s.local.port)
    rsub.subscribe("out/#", 1)
    lsub.subscribe("in/#", 1)
    big = bytes(range(256)) * 400  # 102400 bytes
    sent_out = [b"small out", big, b"after big out"]
    sent_in = [b"small in", big[::-1], b"after big in"]
    lpub, rpub = Paho(s.local.port), Paho(s.rport)
    for m in sent_out:
        lpub.publish("out/x", m, qos=1)
    for m in sent_in:
        rpub.publish("in/x", m, qos=1)
    assert [rsub.get(timeout=10).payload for _ in sent_out] == sent_out
    assert [lsub.get(timeout=10).payload for _ in sent_in] == sent_in
    for c in (rsub, lsub, lpub, rpub):
        c.stop()


def wait_up(s, n=1):
    harness.wait_for(lambda: s.connected() >= n, 10, what="the bridge's CONNACK")


@pytest.mark.timeout(60)
@pytest.mark.parametrize("mode,why", [("ulp", "TCP_ULP"), ("rx", "TLS_RX")])
@pytest.mark.parametrize("remote_kind,version", [
    ("kite", "tlsv1.2"), ("kite", "tlsv1.3"), ("mosquitto", "tlsv1.2"),
    ("mosquitto", "tlsv1.3")])
def test_refused_handoff_the_bridge_goes_on_in_userspace(broker_factory, tmp_path,
                                                         setups, remote_kind,
                                                         version, mode, why):
    """The bridge tries the move once it is up; the kernel refuses it before
    taking anything, and the bridge works on in userspace TLS, its
    subscriptions and messages held for the kernel sent by OpenSSL."""
    s = Setup(broker_factory, tmp_path, remote_kind, version, mode)
    setups.append(s)
    wait_up(s)
    harness.wait_for(lambda: s.refused() >= 1, 5, what="the bridge's hand-off")
    assert why in [l for l in s.local.output().splitlines()
                   if "kernel TLS not used" in l][0]
    check_both_ways(s)
    assert s.connected() == 1 and s.refused() == 1
    assert "Assertion" not in s.local.output()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("version", ["tlsv1.2", "tlsv1.3"])
def test_refused_send_key_the_bridge_connects_again(broker_factory, tmp_path,
                                                    setups, version):
    """The receive key was taken, the send key refused: nothing more can be
    said to the remote on that connection, so it is closed with the reason
    and the bridge connects again after its back-off; with the next
    hand-off refused early it goes on in userspace."""
    s = Setup(broker_factory, tmp_path, "mosquitto", version, "tx")
    setups.append(s)
    s.local.wait_output(r"kernel TLS: TLS_TX: Cannot allocate memory", timeout=10)
    s.set("ulp")
    wait_up(s, 2)
    harness.wait_for(lambda: s.refused() >= 1, 5, what="the second hand-off")
    check_both_ways(s)
    assert s.local.alive()
    assert "Assertion" not in s.local.output()
