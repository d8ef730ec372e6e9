"""TLS session resumption (issue 15): a client that comes back with the
session ticket of its last connection skips the certificate exchange, and
the broker still knows who it is. The resumed connection keeps the client
certificate's identity (use_identity_as_username, and the ACL that hangs
on it); a reload that revokes the certificate (crlfile) or changes the CA
makes every older ticket worthless, so the client must show its
certificate again in a full handshake and is refused.

Clients: openssl s_client (-sess_out / -sess_in, as an operator would
check it) and Python's ssl with SSLSocket.session. Mosquitto 2.0.11 also
resumes (OpenSSL's default tickets) and passes the others; the reload
tests are kite's documented policy."""

import socket
import ssl

import pytest

import harness
import mqttraw
import tlsutil
from tlsutil import LOG, pki, tls_listener


@pytest.fixture(scope="module")
def P():
    return pki()


CONNECT_DISCONNECT = mqttraw.connect("sclient") + b"\xe0\x00"


def _s_client_session(port, sess, args, sess_in=None):
    """One s_client connection that CONNECTs, DISCONNECTs (so the broker
    closes and s_client reads everything, the ticket included) and writes
    its session to sess; returns the output."""
    a = list(args) + ["-sess_out", str(sess), "-ign_eof"]
    if sess_in:
        a += ["-sess_in", str(sess_in)]
    r = tlsutil.s_client(port, a, send=CONNECT_DISCONNECT)
    assert tlsutil.s_client_handshake_ok(r), r.out
    return r.out


@pytest.mark.parametrize("version", ["-tls1_3", "-tls1_2"])
def test_s_client_resumes_with_its_saved_session(broker_factory, tmp_path, P, version):
    b, (port,) = tlsutil.start(broker_factory, tls_listener(
        extra="allow_anonymous true\n") + LOG)
    args = ["-CAfile", P["ca.pem"], version]
    first = _s_client_session(port, tmp_path / "s1", args)
    assert "\nNew, TLSv1." in first, first
    again = _s_client_session(port, tmp_path / "s2", args, sess_in=tmp_path / "s1")
    assert "\nReused, TLSv1." in again, again
    # The ticket opens again (within its epoch no new one is issued).
    third = _s_client_session(port, tmp_path / "s3", args, sess_in=tmp_path / "s1")
    assert "\nReused, TLSv1." in third, third
    b.wait_output(r"New client connected from .* as sclient")


class _Fleet:
    """A device's TLS context and its last session, reconnecting."""

    def __init__(self, port, cn, tls_max=None):
        cert, key = pki().client(cn)
        self.port = port
        self.ctx = tlsutil.client_context(cert=cert, key=key, tls_max=tls_max)
        self.session = None

    def connect(self, client_id, expect_reused):
        raw = socket.create_connection((harness.HOST, self.port), timeout=5)
        s = self.ctx.wrap_socket(raw, server_hostname="localhost",
                                 session=self.session)
        c = tlsutil.TLSRawClient.__new__(tlsutil.TLSRawClient)
        c.sock, c.buf, c.pending, c.timeout, c.eof = s, bytearray(), [], 5.0, False
        ack = c.connect(client_id)
        assert ack.rc == 0, "CONNACK %d" % ack.rc
        assert s.session_reused == expect_reused, \
            "session_reused %s, wanted %s" % (s.session_reused, expect_reused)
        # TLS 1.3: the ticket came before the CONNACK.
        self.session = s.session
        return c

    def attempt(self, client_id):
        """A reconnection that may be refused: ("connack", rc, reused) or
        ("refused", why, None)."""
        raw = socket.create_connection((harness.HOST, self.port), timeout=5)
        try:
            s = self.ctx.wrap_socket(raw, server_hostname="localhost",
                                     session=self.session)
        except (ssl.SSLError, OSError) as e:
            raw.close()
            return ("refused", str(e), None)
        c = tlsutil.TLSRawClient.__new__(tlsutil.TLSRawClient)
        c.sock, c.buf, c.pending, c.timeout, c.eof = s, bytearray(), [], 5.0, False
        try:
            c.send(mqttraw.connect(client_id))
            pkt = c.recv(5)
        except (mqttraw.Closed, ssl.SSLError, OSError) as e:
            return ("refused", str(e), s.session_reused)
        finally:
            c.close()
        return ("connack", pkt.rc, s.session_reused)


def _close(c):
    c.send(b"\xe0\x00")
    c.close()


ACL = "pattern readwrite +/gateway/%u/#\n"


def _acl_broker(broker_factory, tmp_path, P):
    acl = tmp_path / "acl"
    acl.write_text(ACL)
    conf = ("per_listener_settings true\n"
            "listener {port} 127.0.0.1\nallow_anonymous true\n\n"
            + tls_listener(port="{port2}", extra=(
                "require_certificate true\nuse_identity_as_username true\n"
                "allow_anonymous false\nacl_file %s\n" % acl)) + LOG)
    return tlsutil.start(broker_factory, conf, nports=2)


@pytest.mark.parametrize("tls_max", [None, ssl.TLSVersion.TLSv1_2])
def test_resumed_session_keeps_identity_and_acl(broker_factory, tmp_path, P, tls_max):
    """gw1 resumes: its username is still its certificate's CN, so the ACL
    pattern %u lets it publish under its own gateway and nowhere else."""
    b, (plain, port) = _acl_broker(broker_factory, tmp_path, P)
    spy = mqttraw.RawClient(plain)
    spy.connect("spy")
    spy.subscribe([("#", 1)])
    gw1 = _Fleet(port, "gw1", tls_max=tls_max)
    _close(gw1.connect("gw1", expect_reused=False))
    for i in range(2):
        c = gw1.connect("gw1", expect_reused=True)
        c.publish("eu/gateway/gw2/x", b"denied", qos=1)  # PUBACK, dropped
        c.publish("eu/gateway/gw1/x", b"own %d" % i, qos=1)
        m = spy.expect_publish()
        assert (m.topic, m.payload) == ("eu/gateway/gw1/x", b"own %d" % i)
        # Reading another gateway's topics is refused too (kite says so
        # in the SUBACK, Mosquitto grants and filters; neither delivers).
        c.send(mqttraw.subscribe(7, [("eu/gateway/gw2/#", 1), ("eu/gateway/gw1/#", 1)]))
        c.await_packet(mqttraw.SUBACK, 7)
        spy.publish("eu/gateway/gw2/y", b"not for gw1", qos=1)
        spy.publish("eu/gateway/gw1/y", b"for gw1 %d" % i, qos=1)
        m = c.expect_publish()
        assert (m.topic, m.payload) == ("eu/gateway/gw1/y", b"for gw1 %d" % i)
        for _ in range(2):  # the spy's own copies
            spy.expect_publish()
        _close(c)
    spy.expect_silence(0.3)


def _reload_with(b, old, new):
    text = b.conf_path.read_text()
    assert old in text
    b.conf_path.write_text(text.replace(old, new))
    b.reload()


@pytest.mark.kite_only("kite's reload policy: a reload retires every ticket")
def test_ticket_of_certificate_revoked_by_reload_is_refused(broker_factory, P):
    """gw1-revoked's certificate is fine until the reload adds the CRL
    that lists it; its ticket from before must not let it back in."""
    b, (port,) = tlsutil.start(broker_factory, tls_listener(extra=(
        "require_certificate true\nuse_identity_as_username true\n"
        "allow_anonymous false\n#crl\n")) + LOG)
    dev = _Fleet(port, "revoked")
    _close(dev.connect("dev", expect_reused=False))
    _close(dev.connect("dev", expect_reused=True))
    _reload_with(b, "#crl\n", "crlfile %s\n" % P["crl.pem"])
    got = dev.attempt("dev")
    assert got[0] == "refused" and not got[2], got
    # A good certificate still gets in after the reload.
    _close(_Fleet(port, "gw1").connect("gw1", expect_reused=False))


@pytest.mark.kite_only("kite's reload policy: a reload retires every ticket")
def test_ticket_from_before_a_ca_change_is_refused(broker_factory, P):
    b, (port,) = tlsutil.start(broker_factory, tls_listener(extra=(
        "require_certificate true\nuse_identity_as_username true\n"
        "allow_anonymous false\n")) + LOG)
    dev = _Fleet(port, "gw1")
    _close(dev.connect("gw1", expect_reused=False))
    _close(dev.connect("gw1", expect_reused=True))
    _reload_with(b, "cafile %s\n" % P["ca.pem"], "cafile %s\n" % P["foreign-ca.pem"])
    got = dev.attempt("gw1")
    assert got[0] == "refused" and not got[2], got
