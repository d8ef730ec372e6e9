"""`kite cert`: a mutual-TLS PKI from nothing, checked with the openssl
command line and used by a real TLS broker.

The tool under test is `$KITE_BIN cert ...`. Until io/main.c dispatches
`cert`, `$KITE_BIN cert --help` fails and the tests fall back to
build/kite-cert-dev, which this module builds from tools/cert.c with a
three-line driver (main(c, v) -> cert_main(c - 1, v + 1)); if that cannot be
built either, every test is skipped with the reason.

The TLS broker is $KITE_TLS_BROKER (default: the broker under test,
$KITE_BIN, which may be kite or Mosquitto); it runs with the block `kite cert config`
prints, the port replaced by a free one bound to 127.0.0.1. Every broker
started here is stopped at teardown, and every test is bounded by the
SIGALRM timeouts of conftest.py.
"""

import os
import random
import re
import stat
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

import harness

REPO = harness.REPO
DEV_BIN = REPO / "build" / "kite-cert-dev"
TLS_BROKER = os.environ.get("KITE_TLS_BROKER") or os.environ.get(
    "KITE_BIN") or str(REPO / "build" / "kite")
DRIVER = '#include "tools/cert.h"\nint main(int c, char **v) { return cert_main(c - 1, v + 1); }\n'


def _answers_help(binary):
    try:
        r = harness.run_cmd([str(binary), "cert", "--help"], timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return r.returncode == 0 and "kite cert" in r.stdout


def _build_dev_bin():
    """build/kite-cert-dev from tools/cert.c; None (and why) on failure."""
    src = REPO / "tools" / "cert.c"
    if DEV_BIN.exists() and DEV_BIN.stat().st_mtime >= src.stat().st_mtime:
        return None
    DEV_BIN.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as d:
        drv = Path(d) / "driver.c"
        drv.write_text(DRIVER)
        r = harness.run_cmd(["cc", "-std=c17", "-D_GNU_SOURCE", "-I", str(REPO), "-O2",
                             "-o", str(DEV_BIN), str(drv), str(src), "-lssl", "-lcrypto"],
                            timeout=60)
    return None if r.returncode == 0 else r.stderr[-500:]


@pytest.fixture(scope="module")
def cert_bin():
    kite = os.environ.get("KITE_BIN") or str(REPO / "build" / "kite")
    if os.path.basename(kite) != "mosquitto" and _answers_help(kite):
        return kite
    why = _build_dev_bin()
    if _answers_help(DEV_BIN):
        return str(DEV_BIN)
    pytest.skip("`%s cert --help` fails and build/kite-cert-dev could not be built: %s"
                % (kite, why))


@pytest.fixture
def kcert(cert_bin):
    """kcert(*args, env=None, timeout=60) -> CompletedProcess of `kite cert ...`."""
    def run(*args, env=None, timeout=60, cwd=None):
        full_env = dict(os.environ, **(env or {}))
        return harness.run_cmd([cert_bin, "cert"] + [str(a) for a in args],
                               timeout=timeout, env=full_env, cwd=cwd)
    return run


def ok(r):
    assert r.returncode == 0, "exit %s\nstdout: %s\nstderr: %s" % (r.returncode, r.stdout, r.stderr)
    return r


def one_line_error(r, pattern):
    """A non-zero exit and exactly one error line, `kite cert: ...`,
    matching pattern (warnings aside)."""
    assert r.returncode != 0, r.stdout + r.stderr
    errors = [l for l in r.stderr.splitlines() if not l.startswith("kite cert: warning:")]
    assert len(errors) == 1, r.stderr
    assert errors[0].startswith("kite cert: "), r.stderr
    assert re.search(pattern, errors[0], re.I), errors[0]
    return errors[0]


def openssl(*args, timeout=20):
    return harness.run_cmd(["openssl"] + [str(a) for a in args], timeout=timeout)


def x509_text(path):
    return ok(openssl("x509", "-in", path, "-noout", "-text")).stdout


@pytest.fixture
def pki(kcert, tmp_path):
    """A deployment built from nothing: CA, server (localhost, 127.0.0.1),
    clients device-1 and device-2."""
    d = tmp_path / "pki"
    ok(kcert("ca", "--dir", d))
    ok(kcert("server", "localhost", "127.0.0.1", "--dir", d))
    ok(kcert("client", "device-1", "--dir", d))
    ok(kcert("client", "device-2", "--dir", d))
    return d


# ---- files ------------------------------------------------------------------

def test_full_deployment_verifies_with_openssl(pki):
    leaves = [pki / "server.pem", pki / "clients/device-1.pem", pki / "clients/device-2.pem"]
    r = ok(openssl("verify", "-CAfile", pki / "ca.pem", *leaves))
    assert r.stdout.count(": OK") == 3

    ca = x509_text(pki / "ca.pem")
    assert re.search(r"Basic Constraints: critical\s+CA:TRUE", ca)
    assert re.search(r"Key Usage: critical\s+Certificate Sign, CRL Sign", ca)
    assert "Subject Key Identifier" in ca
    assert "ASN1 OID: prime256v1" in ca

    srv = x509_text(pki / "server.pem")
    assert re.search(r"Subject: CN ?= ?localhost", srv)
    assert re.search(r"Subject Alternative Name: \s+DNS:localhost, IP Address:127.0.0.1", srv)
    assert re.search(r"Extended Key Usage: \s+TLS Web Server Authentication", srv)
    assert re.search(r"CA:FALSE", srv)

    cli = x509_text(pki / "clients/device-1.pem")
    assert re.search(r"Subject: CN ?= ?device-1", cli)
    assert re.search(r"Extended Key Usage: \s+TLS Web Client Authentication", cli)
    assert "Authority Key Identifier" in cli


def test_key_files_are_mode_0600(pki):
    keys = [pki / "ca.key", pki / "server.key", pki / "clients/device-1.key",
            pki / "clients/device-2.key"]
    for k in keys:
        assert stat.S_IMODE(k.stat().st_mode) == 0o600, k


def test_index_tracks_every_serial(pki):
    lines = (pki / "index.txt").read_text().splitlines()
    assert len(lines) == 3
    for line, name in zip(lines, ["server.pem", "clients/device-1.pem", "clients/device-2.pem"]):
        status, _expiry, _revoked, serial, path, _subj = line.split("\t")
        assert status == "V" and path == name
        sn = ok(openssl("x509", "-in", pki / name, "-noout", "-serial")).stdout
        assert sn.strip().split("=")[1].lstrip("0") == serial.lstrip("0")


@pytest.mark.timeout(60)
def test_rsa_ca_on_request(kcert, tmp_path):
    ok(kcert("ca", "--key", "rsa:3072", "--cn", "Fleet CA", "--dir", tmp_path))
    ok(kcert("client", "d1", "--key", "rsa:2048", "--dir", tmp_path))
    ca = x509_text(tmp_path / "ca.pem")
    assert "Public-Key: (3072 bit)" in ca and re.search(r"Subject: CN ?= ?Fleet CA", ca)
    assert "Public-Key: (2048 bit)" in x509_text(tmp_path / "clients/d1.pem")
    ok(openssl("verify", "-CAfile", tmp_path / "ca.pem", tmp_path / "clients/d1.pem"))


def test_existing_files_never_overwritten_without_force(kcert, pki):
    before = (pki / "ca.pem").read_bytes()
    one_line_error(kcert("ca", "--dir", pki), r"ca.pem exists .*--force")
    one_line_error(kcert("client", "device-1", "--dir", pki), r"device-1.pem exists")
    one_line_error(kcert("server", "localhost", "--dir", pki), r"server.pem exists")
    assert (pki / "ca.pem").read_bytes() == before
    old_key = (pki / "clients/device-1.key").read_bytes()
    ok(kcert("client", "device-1", "--dir", pki, "--force"))
    assert (pki / "clients/device-1.key").read_bytes() != old_key
    assert stat.S_IMODE((pki / "clients/device-1.key").stat().st_mode) == 0o600
    ok(kcert("ca", "--dir", pki, "--force"))
    assert (pki / "ca.pem").read_bytes() != before


def test_batch_refused_whole_when_one_file_exists(kcert, pki):
    names = pki / "names.txt"
    names.write_text("# fleet\nsensor-a\n\ndevice-2\nsensor-b\n")
    one_line_error(kcert("clients", "--from", names, "--dir", pki), r"device-2.pem exists")
    assert not (pki / "clients/sensor-a.pem").exists()
    names.write_text("sensor-a\nsensor-b\n")
    ok(kcert("clients", "--from", names, "--dir", pki))
    ok(openssl("verify", "-CAfile", pki / "ca.pem", pki / "clients/sensor-b.pem"))


@pytest.mark.parametrize("hosts,warnings", [
    (["localhost", "127.0.0.1"], []),
    (["mqtt.example.com", "10.0.0.5"], []),
    (["127.0.0.1"], ["only IP addresses", "'localhost' is not among"]),
    (["broker"], ["'broker' has no dot"]),
], ids=["local", "fqdn", "ip-only", "no-dot"])
def test_server_warns_when_names_will_not_match(kcert, tmp_path, hosts, warnings):
    ok(kcert("ca", "--dir", tmp_path))
    r = ok(kcert("server", *hosts, "--dir", tmp_path))
    got = [l for l in r.stderr.splitlines() if l.startswith("kite cert: warning:")]
    assert len(got) == len(warnings), r.stderr
    for w in warnings:
        assert w in r.stderr
    san = x509_text(tmp_path / "server.pem")
    for h in hosts:
        assert ("IP Address:" + h if h[0].isdigit() else "DNS:" + h) in san


def test_bad_names_refused(kcert, tmp_path):
    ok(kcert("ca", "--dir", tmp_path))
    one_line_error(kcert("client", "../evil", "--dir", tmp_path), r"invalid client name")
    one_line_error(kcert("client", "a+b", "--dir", tmp_path), r"invalid client name")
    one_line_error(kcert("server", "bad name!", "--dir", tmp_path), r"neither a host name")


def test_encrypted_ca_key_and_wrong_passphrase(kcert, tmp_path):
    ok(kcert("ca", "--passout", "env:CA_PW", "--dir", tmp_path, env={"CA_PW": "s3cret-pass"}))
    assert "ENCRYPTED PRIVATE KEY" in (tmp_path / "ca.key").read_text()
    ok(kcert("client", "d1", "--passin", "env:CA_PW", "--dir", tmp_path, env={"CA_PW": "s3cret-pass"}))
    one_line_error(kcert("client", "d2", "--passin", "env:CA_PW", "--dir", tmp_path,
                         env={"CA_PW": "wrong"}), r"ca.key: wrong passphrase")
    one_line_error(kcert("client", "d2", "--dir", tmp_path), r"encrypted.*--passin")
    one_line_error(kcert("client", "d2", "--passin", "env:NOPE_UNSET", "--dir", tmp_path),
                   r"NOPE_UNSET is not set")
    assert not (tmp_path / "clients/d2.pem").exists()


def test_unreadable_files_and_missing_ca_one_line_error(kcert, tmp_path):
    one_line_error(kcert("show", tmp_path / "nope.pem"), r"cannot open .*nope.pem")
    (tmp_path / "junk.pem").write_text("not a certificate\n")
    one_line_error(kcert("show", tmp_path / "junk.pem"), r"no certificate")
    one_line_error(kcert("client", "d1", "--dir", tmp_path / "empty"), r"no CA in")
    one_line_error(kcert("check", "--config", tmp_path / "none.conf"), r"cannot open")


def test_help_for_every_subcommand(kcert):
    r = ok(kcert("--help"))
    subs = ["ca", "server", "client", "clients", "revoke", "crl", "show", "check", "config"]
    for s in subs:
        assert re.search(r"^  %s\b" % s, r.stdout, re.M), s
        h = ok(kcert(s, "--help"))
        assert h.stdout.startswith("Usage: kite cert " + s), h.stdout
    assert kcert("frobnicate").returncode == 2
    assert kcert("ca", "--bogus").returncode == 2


# ---- CRL --------------------------------------------------------------------

def test_revoke_lists_serial_in_signed_crl(kcert, pki):
    ok(kcert("revoke", "device-2", "--dir", pki))
    r = ok(openssl("crl", "-in", pki / "crl.pem", "-CAfile", pki / "ca.pem", "-noout", "-text"))
    assert "verify OK" in r.stderr + r.stdout
    serial = ok(openssl("x509", "-in", pki / "clients/device-2.pem", "-noout", "-serial")).stdout
    assert "Serial Number: " + serial.strip().split("=")[1] in r.stdout
    assert "Next Update:" in r.stdout
    other = ok(openssl("x509", "-in", pki / "clients/device-1.pem", "-noout", "-serial")).stdout
    assert other.strip().split("=")[1] not in r.stdout
    # openssl verify with the CRL: device-2 revoked, device-1 fine.
    bad = openssl("verify", "-crl_check", "-CAfile", pki / "ca.pem", "-CRLfile", pki / "crl.pem",
                  pki / "clients/device-2.pem")
    assert bad.returncode != 0 and "revoked" in bad.stdout + bad.stderr
    ok(openssl("verify", "-crl_check", "-CAfile", pki / "ca.pem", "-CRLfile", pki / "crl.pem",
               pki / "clients/device-1.pem"))
    again = ok(kcert("revoke", "device-2", "--dir", pki))
    assert "already revoked" in again.stdout
    one_line_error(kcert("revoke", "never-issued", "--dir", pki), r"no certificate was issued")
    n1 = ok(openssl("crl", "-in", pki / "crl.pem", "-noout", "-crlnumber")).stdout
    ok(kcert("crl", "--dir", pki))
    n2 = ok(openssl("crl", "-in", pki / "crl.pem", "-noout", "-crlnumber")).stdout
    assert int(n2.split("=")[1], 16) == int(n1.split("=")[1], 16) + 1


# ---- a TLS broker with the printed config -----------------------------------

@pytest.fixture
def tls_brokers(tmp_path):
    """start(config_block) -> harness.Broker running $KITE_TLS_BROKER; every
    one is stopped at teardown."""
    if not os.access(TLS_BROKER, os.X_OK):
        pytest.skip("no TLS broker at %s (set KITE_TLS_BROKER)" % TLS_BROKER)
    for tool in ("/usr/bin/mosquitto_pub", "/usr/bin/mosquitto_sub"):
        if not os.access(tool, os.X_OK):
            pytest.skip("%s is missing (apt-get install mosquitto-clients)" % tool)
    flav = harness.flavour(TLS_BROKER)
    started = []

    def start(block):
        port = harness.free_port()
        text, n = re.subn(r"(?m)^listener 8883$", "listener %d 127.0.0.1" % port, block)
        assert n == 1, block
        text += "log_dest stderr\nlog_type all\n"
        if flav == "mosquitto" and os.geteuid() == 0:
            text += "user root\n"   # else it drops privileges and cannot read the keys
        workdir = tmp_path / ("tlsbroker%d" % len(started))
        workdir.mkdir()
        b = harness.Broker(TLS_BROKER, flav, workdir, text, port=port)
        started.append(b)
        return b

    yield start
    for b in started:
        b.stop()


def client_args(pki, port, name):
    return ["-h", "localhost", "-p", str(port), "--cafile", str(pki / "ca.pem"),
            "--cert", str(pki / "clients" / (name + ".pem")),
            "--key", str(pki / "clients" / (name + ".key"))]


def publish(pki, port, name, topic, msg):
    return harness.run_cmd(["mosquitto_pub"] + client_args(pki, port, name) +
                           ["-q", "1", "-t", topic, "-m", msg], timeout=10)


def pub_and_receive(pki, port, sender, receiver, topic="fleet/t"):
    """receiver subscribes; sender publishes until it arrives."""
    sub = subprocess.Popen(["mosquitto_sub"] + client_args(pki, port, receiver) +
                           ["-q", "1", "-t", topic, "-C", "1", "-W", "10"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 10
        while sub.poll() is None and time.monotonic() < deadline:
            ok(publish(pki, port, sender, topic, "hello from " + sender))
            time.sleep(0.2)
        out, err = sub.communicate(timeout=10)
    finally:
        if sub.poll() is None:
            sub.kill()
            sub.wait()
    assert sub.returncode == 0, err
    assert out.strip() == "hello from " + sender


def test_printed_config_runs_mtls_broker_pub_and_receive(kcert, pki, tls_brokers):
    block = ok(kcert("config", "--dir", pki)).stdout
    assert re.search(r"(?m)^cafile %s$" % re.escape(str((pki / "ca.pem").resolve())), block)
    assert "require_certificate true" in block and "use_identity_as_username true" in block
    assert "crlfile" not in block     # no crl.pem yet
    b = tls_brokers(block)
    pub_and_receive(pki, b.port, "device-2", "device-1")
    if b.flavour == "mosquitto":      # the CN is the username
        b.wait_output(r"u'device-2'")
    # Without a client certificate the TLS handshake is refused.
    r = harness.run_cmd(["mosquitto_pub", "-h", "localhost", "-p", str(b.port), "--cafile",
                         str(pki / "ca.pem"), "-t", "x", "-m", "x"], timeout=10)
    assert r.returncode != 0


def test_revoked_client_refused_after_sighup_others_accepted(kcert, pki, tls_brokers):
    ok(kcert("crl", "--dir", pki))    # crlfile must exist when the broker starts
    block = ok(kcert("config", "--dir", pki)).stdout
    assert "crlfile %s" % (pki / "crl.pem").resolve() in block
    b = tls_brokers(block)
    pub_and_receive(pki, b.port, "device-2", "device-1")

    ok(kcert("revoke", "device-2", "--dir", pki))
    # Mosquitto 2.0.11 re-reads crlfile on SIGHUP (checked empirically):
    # kite must do the same.
    b.reload()

    def refused():
        return publish(pki, b.port, "device-2", "fleet/t", "x").returncode != 0
    harness.wait_for(refused, timeout=5, interval=0.2, what="device-2 to be refused")
    pub_and_receive(pki, b.port, "device-1", "device-1")
    assert b.alive()


# ---- show and check ---------------------------------------------------------

def make_certbot_like(tmp_path):
    """A Let's Encrypt-shaped tree: root -> intermediate 'R3' -> leaf, with
    live/DOMAIN/fullchain.pem (leaf + intermediate) and privkey.pem. Made
    with the openssl command line, independent of kite."""
    d = tmp_path / "certbot"
    live = d / "live" / "mqtt.example.com"
    live.mkdir(parents=True)
    ext = d / "ext.cnf"
    ext.write_text("[ica]\nbasicConstraints=critical,CA:TRUE,pathlen:0\n"
                   "keyUsage=critical,keyCertSign,cRLSign\nsubjectKeyIdentifier=hash\n"
                   "authorityKeyIdentifier=keyid\n"
                   "[leaf]\nbasicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\n"
                   "extendedKeyUsage=serverAuth,clientAuth\n"
                   "subjectAltName=DNS:mqtt.example.com,DNS:pki.example.com\n"
                   "authorityKeyIdentifier=keyid\n")
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"]
    ok(openssl("req", "-x509", *ec, "-subj", "/O=Internet Security Research Group/CN=ISRG Root X1",
               "-keyout", d / "root.key", "-out", d / "root.pem", "-days", "60",
               "-addext", "basicConstraints=critical,CA:TRUE",
               "-addext", "keyUsage=critical,keyCertSign,cRLSign"))
    ok(openssl("req", "-new", *ec, "-subj", "/C=US/O=Let's Encrypt/CN=R3",
               "-keyout", d / "int.key", "-out", d / "int.csr"))
    ok(openssl("x509", "-req", "-in", d / "int.csr", "-CA", d / "root.pem", "-CAkey", d / "root.key",
               "-set_serial", "7", "-days", "50", "-extfile", ext, "-extensions", "ica",
               "-out", d / "int.pem"))
    ok(openssl("req", "-new", *ec, "-subj", "/CN=mqtt.example.com",
               "-keyout", live / "privkey.pem", "-out", d / "leaf.csr"))
    ok(openssl("x509", "-req", "-in", d / "leaf.csr", "-CA", d / "int.pem", "-CAkey", d / "int.key",
               "-set_serial", "9", "-days", "20", "-extfile", ext, "-extensions", "leaf",
               "-out", live / "cert.pem"))
    (live / "chain.pem").write_text((d / "int.pem").read_text())
    (live / "fullchain.pem").write_text((live / "cert.pem").read_text() + (d / "int.pem").read_text())
    return d, live


def test_show_explains_certbot_chain(kcert, tmp_path):
    d, live = make_certbot_like(tmp_path)
    r = ok(kcert("show", live / "fullchain.pem", live / "privkey.pem", "--ca", d / "root.pem"))
    out = r.stdout
    assert "certificate 1 of 2" in out and "certificate 2 of 2" in out
    assert "subject:  CN=mqtt.example.com" in out
    assert "names:    DNS:mqtt.example.com, DNS:pki.example.com" in out
    assert "issuer:   CN=R3,O=Let's Encrypt,C=US" in out
    assert re.search(r"expires in (19|20) days", out)
    assert "ECDSA P-256 (256 bits)" in out
    assert "certificate authority" in out          # the intermediate
    assert re.search(r"chain: certificate 1 chains to .*root.pem", out)
    assert "private key: ECDSA P-256" in out
    # Against a CA it does not come from, it says so in plain words.
    other = tmp_path / "other"
    ok(kcert("ca", "--dir", other))
    r = ok(kcert("show", live / "fullchain.pem", "--dir", other))
    assert "does NOT chain to" in r.stdout


def test_show_says_expired_and_not_yet_valid(kcert, pki):
    ok(kcert("client", "old", "--not-before", "-10", "--days", "5", "--dir", pki))
    ok(kcert("client", "future", "--not-before", "3", "--dir", pki))
    r = ok(kcert("show", pki / "clients/old.pem", pki / "clients/future.pem", "--dir", pki))
    assert "EXPIRED 5 days ago" in r.stdout
    assert "NOT YET VALID" in r.stdout
    assert r.stdout.count("chains to %s/ca.pem" % pki) == 2


def test_check_passes_on_printed_config_and_certbot_config(kcert, pki, tmp_path):
    ok(kcert("crl", "--dir", pki))
    conf = tmp_path / "kite.conf"
    conf.write_text("per_listener_settings false\n" + ok(kcert("config", "--dir", pki)).stdout)
    r = ok(kcert("check", "--config", conf))
    assert "0 error(s), 0 warning(s)" in r.stdout
    assert "keyfile %s/server.key matches" % pki.resolve() in r.stdout
    d, live = make_certbot_like(tmp_path)
    conf.write_text("listener 1883 127.0.0.1\n\nlistener 8883\n# certbot\n"
                    "cafile %s\ncertfile %s/fullchain.pem\nkeyfile %s/privkey.pem\n"
                    % (d / "root.pem", live, live))
    r = ok(kcert("check", "--config", conf))
    # The leaf expires in 20 days: a warning, not an error.
    assert re.search(r"warning: listener 8883 .*mqtt.example.com: expires in (19|20) days", r.stderr)
    assert "1 listener(s), 0 error(s), 1 warning(s)" in r.stdout


CHECK_CASES = {
    "expired": (["server", "localhost", "--not-before", "-10", "--days", "5"],
                "certfile {pki}/server.pem\nkeyfile {pki}/server.key\n",
                r"certfile .*server.pem: CN=localhost: EXPIRED 5 days ago"),
    "not-yet-valid": (["server", "localhost", "--not-before", "2"],
                      "certfile {pki}/server.pem\nkeyfile {pki}/server.key\n",
                      r"NOT YET VALID"),
    "mismatched-key": (None, "certfile {pki}/server.pem\nkeyfile {pki}/clients/device-1.key\n",
                       r"keyfile .*device-1.key does not match certfile .*server.pem"),
    "missing-file": (None, "certfile {pki}/nothere.pem\nkeyfile {pki}/server.key\n",
                     r"certfile .*nothere.pem: No such file"),
    "foreign-ca": (None, "certfile {pki}/server.pem\nkeyfile {pki}/server.key\n",
                   r"does not chain to .*other/ca.pem"),
    "expired-crl": (["crl", "--days", "0"],
                    "certfile {pki}/server.pem\nkeyfile {pki}/server.key\ncrlfile {pki}/crl.pem\n",
                    r"crlfile .* expired .*refuses every client"),
}


@pytest.mark.parametrize("case", list(CHECK_CASES))
def test_check_fails_with_one_line_error(kcert, pki, tmp_path, case):
    issue, files, pattern = CHECK_CASES[case]
    if issue:
        ok(kcert(*issue, "--dir", pki, "--force"))
    cafile = pki / "ca.pem"
    if case == "foreign-ca":
        ok(kcert("ca", "--dir", tmp_path / "other"))
        cafile = tmp_path / "other" / "ca.pem"
    conf = tmp_path / "kite.conf"
    conf.write_text("listener 8883\ncafile %s\n%srequire_certificate true\n"
                    % (cafile, files.format(pki=pki)))
    r = kcert("check", "--config", conf)
    line = one_line_error(r, pattern)
    assert "listener 8883 (%s:1)" % conf in line
    assert "1 error(s)" in r.stdout


# ---- many clients -----------------------------------------------------------

@pytest.mark.timeout(300)
def test_10000_clients_in_one_command(kcert, tmp_path, capsys):
    ok(kcert("ca", "--dir", tmp_path))
    t0 = time.monotonic()
    r = ok(kcert("clients", "--count", "10000", "--prefix", "device-", "--dir", tmp_path,
                 timeout=280))
    took = time.monotonic() - t0
    with capsys.disabled():
        print("\n[kite cert] 10000 client certificates: %.2f s wall (%s)"
              % (took, r.stdout.strip()))
    files = os.listdir(tmp_path / "clients")
    assert len(files) == 20000
    assert len((tmp_path / "index.txt").read_text().splitlines()) == 10000
    for n in random.sample(range(1, 10001), 3):
        pem = tmp_path / "clients" / ("device-%d.pem" % n)
        ok(openssl("verify", "-CAfile", tmp_path / "ca.pem", pem))
        assert re.search(r"subject=CN ?= ?device-%d$" % n,
                         ok(openssl("x509", "-in", pem, "-noout", "-subject")).stdout.strip())
        assert stat.S_IMODE((tmp_path / "clients" / ("device-%d.key" % n)).stat().st_mode) == 0o600
