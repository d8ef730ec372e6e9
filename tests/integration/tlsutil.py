"""Helpers for the TLS (issue 4) and access-control (issue 5) integration
tests: a test PKI made with the openssl command line exactly as the seed
setups do it, TLS clients (raw MQTT over Python's ssl, paho, mosquitto_pub/
mosquitto_sub, openssl s_client), and starting a broker from a full config
text on one or two free 127.0.0.1 ports (through conftest's broker_factory,
which stops it at teardown and checks it exits 0).

The PKI is made once per test process (`pki()`), in a temporary directory
removed at exit:
  ca.pem/ca.key            root CA (seed 004: genrsa + req -x509 -days 1024)
  server.pem/server.key    RSA server, CN=localhost, SAN localhost+127.0.0.1
  server2.pem/server2.key  a second RSA server cert (CN=kite-reloaded) for reload
  server-ec.pem/.key       ECDSA P-256 server, CN=localhost-ec, same SANs
  int.pem/int.key          intermediate CA signed by the root
  fullchain.pem/privkey.pem  Let's Encrypt layout: leaf (CN=localhost-le)
                           signed by the intermediate, then the intermediate
  <CN>.pem/<CN>.key        client certs CN=gw1, gw2, Device123, client1, app1
  expired.pem/.key         CN=gw1-expired, validity 2020-2021 (openssl ca)
  revoked.pem/.key         CN=gw1-revoked, listed in crl.pem (openssl ca)
  crl.pem                  the root CA's CRL
  foreign-ca.pem, foreign.pem/.key  CN=gw1 signed by an unrelated CA
"""

import atexit
import re
import shutil
import socket
import ssl
import subprocess
import tempfile
import time
from pathlib import Path

import harness
import mqttraw

HOST = harness.HOST
CLIENTS = ("gw1", "gw2", "Device123", "client1", "app1")
LOG = "log_dest stderr\nlog_type all\n"


def _run(cmd, cwd):
    r = subprocess.run(cmd, cwd=str(cwd), stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                       timeout=30, text=True)
    if r.returncode != 0:
        raise RuntimeError("%s failed: %s" % (" ".join(cmd), r.stderr[-1000:]))
    return r


CA_CNF = """\
[ ca ]
default_ca = testca

[ testca ]
dir = {dir}
database = $dir/index.txt
serial = $dir/serial
new_certs_dir = $dir/newcerts
certificate = $dir/ca.pem
private_key = $dir/ca.key
default_md = sha256
default_days = 365
default_crl_days = 30
policy = policy_any
unique_subject = no
x509_extensions = usr_cert

[ policy_any ]
commonName = supplied

[ usr_cert ]
basicConstraints = CA:FALSE
"""

SAN_EXT = "subjectAltName=DNS:localhost,IP:127.0.0.1\n"
INT_EXT = ("basicConstraints=critical,CA:TRUE\n"
           "keyUsage=critical,keyCertSign,cRLSign,digitalSignature\n"
           "subjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid:always\n")


class PKI:
    def __init__(self, d):
        self.dir = Path(d)

    def __getitem__(self, name):
        return str(self.dir / name)

    def client(self, cn):
        """(cert, key) paths of a client certificate."""
        return self[cn + ".pem"], self[cn + ".key"]

    def subject(self, pem):
        return _run(["openssl", "x509", "-in", self[pem], "-noout", "-subject",
                     "-nameopt", "RFC2253"], self.dir).stdout.strip()

    def serial(self, pem):
        return _run(["openssl", "x509", "-in", self[pem], "-noout", "-serial"],
                    self.dir).stdout.strip().split("=", 1)[1]


def _make(d):
    d = Path(d)
    run = lambda *cmd: _run(list(cmd), d)
    (d / "san.ext").write_text(SAN_EXT)
    (d / "int.ext").write_text(INT_EXT)
    # Root CA, seed 004.
    run("openssl", "genrsa", "-out", "ca.key", "2048")
    run("openssl", "req", "-x509", "-new", "-nodes", "-key", "ca.key", "-sha256",
        "-days", "1024", "-out", "ca.pem", "-subj", "/CN=kite test CA/O=kite tests")

    def leaf(name, cn, ca="ca", ext=None, ec=False):
        if ec:
            run("openssl", "ecparam", "-name", "prime256v1", "-genkey", "-noout",
                "-out", name + ".key")
        else:
            run("openssl", "genrsa", "-out", name + ".key", "2048")
        run("openssl", "req", "-new", "-key", name + ".key", "-out", name + ".csr",
            "-subj", "/CN=" + cn)
        cmd = ["openssl", "x509", "-req", "-in", name + ".csr", "-CA", ca + ".pem",
               "-CAkey", ca + ".key", "-CAcreateserial", "-out", name + ".pem",
               "-days", "500", "-sha256"]
        if ext:
            cmd += ["-extfile", ext]
        run(*cmd)

    leaf("server", "localhost", ext="san.ext")
    leaf("server2", "kite-reloaded", ext="san.ext")
    leaf("server-ec", "localhost-ec", ext="san.ext", ec=True)
    for cn in CLIENTS:
        leaf(cn, cn)
    # Let's Encrypt layout (seed 000): leaf + intermediate in fullchain.pem.
    leaf("int", "kite test intermediate", ext="int.ext")
    leaf("le", "localhost-le", ca="int", ext="san.ext")
    (d / "fullchain.pem").write_text((d / "le.pem").read_text() + (d / "int.pem").read_text())
    shutil.copy(d / "le.key", d / "privkey.pem")
    # A foreign CA and a client cert with a good-looking CN from it.
    run("openssl", "genrsa", "-out", "foreign-ca.key", "2048")
    run("openssl", "req", "-x509", "-new", "-nodes", "-key", "foreign-ca.key",
        "-sha256", "-days", "1024", "-out", "foreign-ca.pem", "-subj", "/CN=foreign CA")
    leaf("foreign", "gw1", ca="foreign-ca")
    # openssl ca: an expired cert and a revoked one, and the CRL.
    (d / "ca.cnf").write_text(CA_CNF.format(dir=d))
    (d / "index.txt").write_text("")
    (d / "serial").write_text("1000\n")
    (d / "newcerts").mkdir()
    for name, cn in (("expired", "gw1-expired"), ("revoked", "gw1-revoked")):
        run("openssl", "genrsa", "-out", name + ".key", "2048")
        run("openssl", "req", "-new", "-key", name + ".key", "-out", name + ".csr",
            "-subj", "/CN=" + cn)
    run("openssl", "ca", "-batch", "-config", "ca.cnf", "-notext", "-in", "expired.csr",
        "-out", "expired.pem", "-startdate", "20200101000000Z", "-enddate",
        "20210101000000Z")
    run("openssl", "ca", "-batch", "-config", "ca.cnf", "-notext", "-in", "revoked.csr",
        "-out", "revoked.pem", "-days", "365")
    run("openssl", "ca", "-batch", "-config", "ca.cnf", "-revoke", "revoked.pem")
    run("openssl", "ca", "-batch", "-config", "ca.cnf", "-gencrl", "-out", "crl.pem")


_PKI = None


def pki():
    """The test PKI (made on first use, once per process)."""
    global _PKI
    if _PKI is None:
        d = tempfile.mkdtemp(prefix="kite-tls-pki-")
        atexit.register(shutil.rmtree, d, True)
        _make(d)
        _PKI = PKI(d)
    return _PKI


# --- brokers ----------------------------------------------------------------

def start(broker_factory, conf, nports=1):
    """Starts a broker on a full config text (no listener is added).
    `{port}` is the first free port, `{port2}`... the next ones; `{dir}` the
    broker's work dir. Waits for every port to listen. Returns (broker,
    [ports])."""
    ports = [harness.free_port()]
    while len(ports) < nports:
        p = harness.free_port()
        if p not in ports:
            ports.append(p)
    for i, p in enumerate(ports[1:], 2):
        conf = conf.replace("{port%d}" % i, str(p))
    b = broker_factory(conf, listener=False, port=ports[0])
    for p in ports[1:]:
        harness.wait_for(lambda: harness.listening(p) or not b.alive(), 5,
                         what="port %d" % p)
        assert b.alive(), b.output()
    return b, ports


def run_broker_to_exit(binary, workdir, conf, timeout=5):
    """Runs the broker on a config that should make it exit; returns
    (exit status, output). Kills it if it is still running at the bound."""
    workdir = Path(workdir)
    path = workdir / "bad.conf"
    path.write_text(harness.root_kept(conf))
    p = subprocess.Popen([binary, "-c", str(path)], stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                         cwd=str(workdir))
    try:
        out, _ = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        p.kill()
        out, _ = p.communicate()
        return "still running after %ss" % timeout, out.decode(errors="replace")
    out = out.decode(errors="replace")
    harness.assert_no_sanitizer_report(out)
    return p.returncode, out


def tls_listener(port="{port}", cafile=None, certfile=None, keyfile=None,
                 extra=""):
    """A TLS listener block on 127.0.0.1 with the test PKI's files."""
    p = pki()
    lines = ["listener %s 127.0.0.1" % port]
    if cafile is not False:
        lines.append("cafile %s" % (cafile or p["ca.pem"]))
    lines.append("certfile %s" % (certfile or p["server.pem"]))
    lines.append("keyfile %s" % (keyfile or p["server.key"]))
    return "\n".join(lines) + "\n" + extra


# --- raw MQTT over TLS ---------------------------------------------------------

def client_context(ca=None, cert=None, key=None, verify=True, tls_max=None,
                   tls_min=None):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if verify:
        ctx.load_verify_locations(ca or pki()["ca.pem"])
    else:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    if cert:
        ctx.load_cert_chain(cert, key)
    if tls_max:
        ctx.maximum_version = tls_max
    if tls_min:
        ctx.minimum_version = tls_min
    return ctx


class TLSRawClient(mqttraw.RawClient):
    """mqttraw.RawClient over TLS (handshake done in the constructor)."""

    def __init__(self, port, ca=None, cert=None, key=None, timeout=5.0,
                 server_hostname="localhost", ctx=None):
        ctx = ctx or client_context(ca, cert, key)
        raw = socket.create_connection((HOST, port), timeout=timeout)
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            self.sock = ctx.wrap_socket(raw, server_hostname=server_hostname)
        except BaseException:
            raw.close()
            raise
        self.buf = bytearray()
        self.pending = []
        self.timeout = timeout
        self.eof = False

    def _fill(self, deadline):
        import select
        if self.eof:
            raise mqttraw.Closed(self.eof)
        while True:
            if not self.sock.pending():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise mqttraw.Timeout()
                r, _, _ = select.select([self.sock], [], [], remaining)
                if not r:
                    raise mqttraw.Timeout()
            try:
                data = self.sock.recv(65536)
            except (ssl.SSLWantReadError, socket.timeout):
                continue
            except (ssl.SSLError, OSError) as e:
                self.eof = "%s: %s" % (type(e).__name__, e)
                self.close_reason = e
                raise mqttraw.Closed(self.eof)
            if not data:
                self.eof = "EOF"
                raise mqttraw.Closed(self.eof)
            self.buf += data
            return

    def is_open(self):
        try:
            self.ping(timeout=2)
            return True
        except (mqttraw.Closed, mqttraw.Timeout, OSError):
            return False


def not_mqtt_answer(data):
    """What a TLS listener may send to a client that does not speak TLS
    before closing: nothing, or TLS records (an alert, 0x15, say), never
    an MQTT packet (a CONNACK would start with 0x20). Returns data."""
    assert not data or data[0] in (0x15, 0x16), \
        "TLS port answered plain bytes with %r" % data[:32]
    return data


def tls_connect(port, cn=None, client_id=None, ca=None, cert=None, key=None,
                **kw):
    """A TLS raw client with client cert CN=cn (if given), CONNECTed;
    asserts CONNACK 0."""
    p = pki()
    if cn and not cert:
        cert, key = p.client(cn)
    c = TLSRawClient(port, ca=ca, cert=cert, key=key)
    ack = c.connect(client_id or ("c-%s-%d" % (cn or "anon", id(c) % 100000)), **kw)
    assert ack.rc == 0, "CONNACK %d for %s" % (ack.rc, cn)
    return c


def tls_attempt(port, ca=None, cert=None, key=None, ctx=None, client_id="probe"):
    """Tries a TLS handshake then an MQTT CONNECT. Returns ("connack", rc)
    if the broker answered with a CONNACK, else ("refused", reason text)
    when the TLS layer or the broker closed the connection first."""
    try:
        c = TLSRawClient(port, ca=ca, cert=cert, key=key, ctx=ctx)
    except (ssl.SSLError, OSError) as e:
        return ("refused", "handshake: %s" % e)
    try:
        try:
            c.send(mqttraw.connect(client_id))
        except (ssl.SSLError, OSError) as e:
            return ("refused", "send: %s" % e)
        try:
            pkt = c.recv(5)
        except mqttraw.Closed:
            return ("refused", "closed: %s" % getattr(c, "close_reason", "EOF"))
        except mqttraw.Timeout:
            return ("timeout", "")
        assert pkt.type == mqttraw.CONNACK, pkt
        return ("connack", pkt.rc)
    finally:
        c.close()


# --- command-line clients -----------------------------------------------------

def tls_args(port, ca=True, cn=None, cert=None, key=None, host="localhost",
             extra=()):
    p = pki()
    a = ["-h", host, "-p", str(port), "-V", "mqttv311"]
    if ca is True:
        a += ["--cafile", p["ca.pem"]]
    elif ca:
        a += ["--cafile", ca]
    if cn:
        cert, key = p.client(cn)
    if cert:
        a += ["--cert", cert, "--key", key]
    return a + list(extra)


def mosquitto_pub(args, topic, message, qos=0, retain=False, timeout=10):
    cmd = ["mosquitto_pub"] + list(args) + ["-t", topic, "-m", message, "-q", str(qos)]
    if retain:
        cmd.append("-r")
    return subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          stdin=subprocess.DEVNULL, timeout=timeout, text=True)


def mosquitto_sub_start(args, topics, count, wait_s=10):
    cmd = ["mosquitto_sub"] + list(args) + ["-C", str(count), "-v", "-W", str(wait_s)]
    for t in ([topics] if isinstance(topics, str) else topics):
        cmd += ["-t", t]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            stdin=subprocess.DEVNULL, text=True)


def s_client(port, args=(), send=b"", timeout=10):
    """openssl s_client -connect 127.0.0.1:port; returns CompletedProcess
    (bytes stdout+stderr merged in .out)."""
    cmd = ["openssl", "s_client", "-connect", "%s:%d" % (HOST, port),
           "-servername", "localhost"] + list(args)
    r = subprocess.run(cmd, input=send, stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT, timeout=timeout)
    r.out = r.stdout.decode(errors="replace")
    return r


def s_client_handshake_ok(r):
    """True if s_client's output shows a completed handshake."""
    return bool(re.search(r"^\s*Verify return code: 0 \(ok\)", r.out, re.M)) and \
        bool(re.search(r"^(New|Reused), TLSv1\.[23]", r.out, re.M))


def paho_subscribe(c, topic, qos=0, timeout=5.0):
    """Subscribes the paho client `c` (from paho_tls) and waits for its
    SUBACK: the subscription is in force when this returns."""
    import threading
    done = threading.Event()
    c.on_subscribe = lambda cl, u, mid, granted: done.set()
    c.subscribe(topic, qos)
    assert done.wait(timeout), "no SUBACK for %s" % topic


def paho_tls(port, cn=None, client_id="", ca=None, timeout=5.0):
    """A connected paho client over TLS; returns clients.Paho-like object."""
    import queue
    import paho.mqtt.client as mqtt
    p = pki()
    c = mqtt.Client(client_id=client_id, clean_session=True, protocol=mqtt.MQTTv311)
    cert = key = None
    if cn:
        cert, key = p.client(cn)
    c.tls_set(ca_certs=ca or p["ca.pem"], certfile=cert, keyfile=key)
    msgs = queue.Queue()
    connack = queue.Queue()
    c.on_connect = lambda cl, u, flags, rc: connack.put(rc)
    c.on_message = lambda cl, u, m: msgs.put(m)
    c.connect("localhost", port, 60)
    c.loop_start()
    rc = connack.get(timeout=timeout)
    c.rc = rc
    c.msgs = msgs
    return c
