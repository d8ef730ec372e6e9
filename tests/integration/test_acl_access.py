"""Issue 5: access control with Mosquitto's acl_file and password_file, as
the seed setups use them (seed 003's `pattern` lines keyed on the client
certificate's CN, seed 004's `user`/`topic` block), and the behaviours
around them: `#` subscribers, denied subscriptions, QoS 1 publishes to a
denied topic, retained messages, wills, password files, SIGHUP reload,
broken files and per-listener settings.

Every test passes against Mosquitto 2.0.11 except those marked kite_only
(kite's documented behaviour where Mosquitto differs); where both differ in
one test, the assertion is chosen by `flavour`."""

import re
import signal
import subprocess

import pytest

import harness
import mqttraw
import tlsutil
from mqttraw import RawClient
from tlsutil import LOG, pki, tls_listener

ACL = """\
user alice
topic readwrite alice/#
topic read public/#
topic deny public/secret
topic write inbox/#

user bob
topic readwrite bob/#
topic readwrite public/#
topic read inbox/#
"""


@pytest.fixture(scope="module")
def P():
    return pki()


def make_passwd(path, users):
    """A password file written by Debian's mosquitto_passwd -b (-c first)."""
    first = True
    for u, pw in users:
        cmd = ["mosquitto_passwd"] + (["-c"] if first else []) + ["-b", str(path), u, pw]
        r = harness.run_cmd(cmd)
        assert r.returncode == 0, r.stderr
        first = False
    return path


@pytest.fixture
def acl_broker(broker_factory, tmp_path):
    """Plain listener, allow_anonymous false, password_file + acl_file.
    Returns (broker, port, acl_path)."""
    pw = make_passwd(tmp_path / "passwd", [("alice", "apw"), ("bob", "bpw"), ("carol", "cpw")])
    acl = tmp_path / "acl"
    acl.write_text(ACL)
    b = broker_factory("allow_anonymous false\npassword_file %s\nacl_file %s\n%s"
                       % (pw, acl, LOG))
    return b, b.port, acl


def login(port, user, client_id=None, **kw):
    c = RawClient(port)
    ack = c.connect(client_id or user, username=user, password=user[0] + "pw", **kw)
    assert ack.rc == 0, "CONNACK %d for %s" % (ack.rc, user)
    return c


# --- seed 004: user Device123 / topic readwrite /device/%u/# --------------------

def test_seed004_user_topic_with_percent_u(broker_factory, tmp_path, P, flavour):
    acl = tmp_path / "acl.acl"
    acl.write_text("user Device123\ntopic readwrite /device/%u/#\n\nuser client1\ntopic readwrite #\n")
    b, (port,) = tlsutil.start(broker_factory, tls_listener(
        extra="require_certificate true\nuse_identity_as_username true\nacl_file %s\n" % acl) + LOG)
    dev = tlsutil.tls_connect(port, cn="Device123", client_id="dev")
    dev.subscribe([("/device/Device123/#", 1)])
    ops = tlsutil.tls_connect(port, cn="client1", client_id="ops")
    ops.subscribe([("#", 1)])
    ops.publish("/device/Device123/cmd", b"on", qos=1)
    assert ops.expect_publish().topic == "/device/Device123/cmd"   # ops' own copy
    dev.publish("/device/Device123/temp", b"22.5", qos=1)
    ops.publish("ops/sentinel", b"s", qos=1)
    first = ops.expect_publish()
    if flavour == "mosquitto":
        # `topic` lines are literal in Mosquitto 2.0.11: no %u substitution.
        dev.expect_silence(0.5)
        assert (first.topic, first.payload) == ("ops/sentinel", b"s")
        dev.publish("/device/%u/x", b"literal", qos=1)
        assert ops.expect_publish().topic == "/device/%u/x"
    else:
        # kite substitutes %u in `topic` lines too: Device123 owns its subtree.
        m = dev.expect_publish()
        assert (m.topic, m.payload) == ("/device/Device123/cmd", b"on")
        assert (first.topic, first.payload) == ("/device/Device123/temp", b"22.5")


# --- seed 003 patterns: what a `#` subscriber gets --------------------------------

def seed003(broker_factory, tmp_path, P, acl_text="pattern readwrite +/gateway/%u/#\n"
            "pattern readwrite application/%u/#\n"):
    acl = tmp_path / "acl"
    acl.write_text(acl_text)
    conf = ("per_listener_settings true\n\n"
            "listener {port} 127.0.0.1\nallow_anonymous true\n\n"
            "listener {port2} 127.0.0.1\n"
            "cafile %s\ncertfile %s\nkeyfile %s\n"
            "allow_anonymous false\nrequire_certificate true\n"
            "use_identity_as_username true\nacl_file %s\n"
            % (P["ca.pem"], P["server.pem"], P["server.key"], acl)) + LOG
    b, (plain, tls) = tlsutil.start(broker_factory, conf, nports=2)
    return b, plain, tls, acl


def test_hash_subscriber_gets_only_readable_topics(broker_factory, tmp_path, P):
    b, plain, tls, _ = seed003(broker_factory, tmp_path, P)
    gw1 = tlsutil.tls_connect(tls, cn="gw1", client_id="gw1")
    gw1.send(mqttraw.subscribe(1, [("#", 1)]))
    gw1.await_packet(mqttraw.SUBACK, 1)
    gw1.subscribe([("eu/gateway/gw1/#", 1)], pid=2)
    with RawClient(plain) as anon:
        anon.connect("anon")
        for t in ("eu/gateway/gw2/x", "application/gw2/y", "other/z", "gateway/gw1/x",
                  "application/gw1/y", "eu/gateway/gw1/x"):
            anon.publish(t, t.encode(), qos=1)
    got = [m.topic for m in gw1.recv_all(0.5) if m.type == mqttraw.PUBLISH]
    # The explicit eu/gateway/gw1/# subscription guarantees at least one copy.
    assert set(got) <= {"application/gw1/y", "eu/gateway/gw1/x"}, got
    assert "eu/gateway/gw1/x" in got


# --- subscriptions no rule can match ------------------------------------------------

def test_subscribe_filter_no_read_rule_matches(acl_broker, flavour):
    b, port, _ = acl_broker
    alice = login(port, "alice")
    codes = alice.subscribe([("bob/#", 1), ("alice/#", 1)])
    if flavour == "mosquitto":
        # Mosquitto 2.0.11 grants it and then delivers nothing.
        assert codes == [1, 1]
    else:
        assert codes == [0x80, 1]
    bob = login(port, "bob")
    bob.publish("bob/x", b"private", qos=1)
    alice.expect_silence(0.5)


@pytest.mark.kite_only("kite refuses a filter no read rule can match with SUBACK 0x80")
def test_subscribe_filter_no_read_rule_refused_0x80(acl_broker):
    b, port, _ = acl_broker
    alice = login(port, "alice")
    assert alice.subscribe([("bob/#", 0), ("+/x", 0), ("alice/+", 2)]) == [0x80, 0, 2]


# --- publishes to denied topics -------------------------------------------------------

def test_qos1_publish_to_denied_topic_puback_not_delivered(acl_broker):
    b, port, _ = acl_broker
    bob = login(port, "bob")
    assert bob.subscribe([("bob/#", 1)]) == [1]
    alice = login(port, "alice")
    alice.send(mqttraw.publish("bob/x", b"denied", qos=1, pid=7))
    ack = alice.expect(mqttraw.PUBACK)
    assert ack.pid == 7
    # QoS 2 too: the handshake completes, nothing is delivered.
    alice.publish("bob/y", b"denied2", qos=2, pid=8)
    bob.publish("bob/sentinel", b"s", qos=1)
    m = bob.expect_publish()
    assert (m.topic, m.payload) == ("bob/sentinel", b"s")
    bob.expect_silence(0.3)
    alice.ping()  # alice is still connected


def test_allowed_write_only_topic_delivered(acl_broker):
    b, port, _ = acl_broker
    bob = login(port, "bob")
    bob.subscribe([("inbox/#", 1)])
    alice = login(port, "alice")
    alice.publish("inbox/bob", b"hello", qos=1)
    m = bob.expect_publish()
    assert (m.topic, m.payload) == ("inbox/bob", b"hello")
    # ...but alice cannot read inbox/#, so her own subscription gets nothing.
    alice.send(mqttraw.subscribe(3, [("inbox/#", 1)]))
    alice.await_packet(mqttraw.SUBACK, 3)
    alice.publish("inbox/bob", b"again", qos=1)
    assert bob.expect_publish().payload == b"again"
    alice.expect_silence(0.3)


def test_retained_on_unreadable_topic_not_delivered(acl_broker):
    b, port, _ = acl_broker
    bob = login(port, "bob")
    bob.publish("public/news", b"news", qos=1, retain=True)
    bob.publish("public/secret", b"secret", qos=1, retain=True)
    bob.publish("bob/private", b"mine", qos=1, retain=True)
    alice = login(port, "alice")
    alice.send(mqttraw.subscribe(1, [("public/#", 1), ("#", 1)]))
    alice.await_packet(mqttraw.SUBACK, 1)
    got = [(m.topic, m.payload) for m in alice.recv_all(0.5) if m.type == mqttraw.PUBLISH]
    assert set(got) == {("public/news", b"news")}, got


def test_will_on_denied_topic(acl_broker, flavour):
    b, port, _ = acl_broker
    bob = login(port, "bob")
    bob.subscribe([("bob/#", 1)])
    c = RawClient(port)
    ack = c.connect("alice-will", username="alice", password="apw",
                    will=("bob/will", b"gone", 1, False))
    # Both brokers accept the CONNECT (CONNACK 0) and never publish a will
    # its owner may not write; kite also logs that it dropped it.
    assert ack.rc == 0
    c.close()   # no DISCONNECT: the will would go out now
    assert b.wait_output(r"(?i)alice-will.*(closed|disconnect)|(closed|disconnect).*alice-will", 5)
    if flavour != "mosquitto":
        assert b.wait_output(r"will .*bob/will.* not allowed", 5)
    bob.publish("bob/sentinel", b"s", qos=1)
    m = bob.expect_publish()
    assert (m.topic, m.payload) == ("bob/sentinel", b"s")
    bob.expect_silence(0.3)


def test_will_on_allowed_topic_delivered(acl_broker):
    b, port, _ = acl_broker
    bob = login(port, "bob")
    bob.subscribe([("inbox/#", 1)])
    c = RawClient(port)
    assert c.connect("alice-will", username="alice", password="apw",
                     will=("inbox/will", b"gone", 1, False)).rc == 0
    c.close()   # no DISCONNECT: the will goes out
    m = bob.expect_publish()
    assert (m.topic, m.payload) == ("inbox/will", b"gone")


# --- password_file ---------------------------------------------------------------------

def test_password_file_right_password(acl_broker):
    b, port, _ = acl_broker
    login(port, "alice").close()
    r = subprocess.run(["mosquitto_pub", "-h", harness.HOST, "-p", str(port), "-u", "bob",
                        "-P", "bpw", "-t", "bob/x", "-m", "m"], capture_output=True,
                       text=True, timeout=10)
    assert r.returncode == 0, r.stderr


@pytest.mark.parametrize("user,password", [("alice", "wrong"), ("mallory", "apw"),
                                           (None, None), ("alice", None)],
                         ids=["wrong_password", "unknown_user", "anonymous", "no_password"])
def test_password_file_refused(acl_broker, user, password):
    b, port, _ = acl_broker
    with RawClient(port) as c:
        ack = c.connect("x", username=user, password=password)
        # Mosquitto 2.0.11 (3.1.1): CONNACK 5 "not authorized" in every case.
        assert ack.rc == 5
        c.expect_closed(5)
    login(port, "alice").close()


@pytest.mark.kite_only("`kite passwd` is kite's mosquitto_passwd")
def test_kite_passwd_file_accepted_by_both(broker_factory, tmp_path):
    pw = tmp_path / "kite-passwd"
    r = harness.run_cmd([harness.broker_bin(), "passwd", "-c", "-b", str(pw), "dora", "dpw"])
    assert r.returncode == 0, r.stderr
    assert re.match(r"^dora:\$[67]\$", pw.read_text()), pw.read_text()
    for binary in (harness.broker_bin(), "/usr/sbin/mosquitto"):
        port = harness.free_port()
        conf = ("listener %d 127.0.0.1\nallow_anonymous false\npassword_file %s\n"
                % (port, pw))
        if binary.endswith("mosquitto"):
            conf += "user root\n"
        d = tmp_path / ("b-%d" % port)
        d.mkdir()
        br = harness.Broker(binary, harness.flavour(binary), d, conf, port=port)
        try:
            with RawClient(port) as c:
                assert c.connect("d", username="dora", password="dpw").rc == 0, binary
            with RawClient(port) as c:
                assert c.connect("d", username="dora", password="nope").rc == 5, binary
        finally:
            assert br.stop() == 0


# --- reload ------------------------------------------------------------------------------

def test_sighup_acl_grant_then_revoke(acl_broker):
    b, port, acl = acl_broker
    bob = login(port, "bob")
    bob.subscribe([("bob/#", 1)])
    alice = login(port, "alice")
    alice.publish("bob/x", b"before", qos=1)
    bob.publish("bob/s", b"s1", qos=1)
    assert bob.expect_publish().payload == b"s1"
    # Grant alice write on bob/#.
    acl.write_text(ACL.replace("topic write inbox/#", "topic write inbox/#\ntopic write bob/#"))
    b.reload()
    alice.publish("bob/x", b"granted", qos=1)
    m = bob.expect_publish()
    assert (m.topic, m.payload) == ("bob/x", b"granted")
    # Revoke it again.
    acl.write_text(ACL)
    b.reload()
    alice.publish("bob/x", b"revoked", qos=1)
    bob.publish("bob/s", b"s2", qos=1)
    assert bob.expect_publish().payload == b"s2"
    bob.expect_silence(0.3)


def test_sighup_deny_reaches_an_existing_wildcard_subscription(acl_broker):
    # bob's public/# was fully readable when he subscribed; a reload
    # that denies part of it applies to that subscription at once.
    b, port, acl = acl_broker
    bob = login(port, "bob")
    assert bob.subscribe([("public/#", 1)]) == [1]
    bob.publish("public/a", b"a1", qos=1)
    assert bob.expect_publish().payload == b"a1"
    acl.write_text("user alice\ntopic write public/#\n\n"
                   "user bob\ntopic readwrite bob/#\n"
                   "topic deny public/secret\ntopic readwrite public/#\n")
    b.reload()
    alice = login(port, "alice")
    alice.publish("public/secret", b"hidden", qos=1)
    alice.publish("public/open", b"shown", qos=1)
    m = bob.expect_publish()
    assert (m.topic, m.payload) == ("public/open", b"shown")
    bob.expect_silence(0.3)


def test_session_taken_over_by_another_user_reads_with_its_rights(acl_broker):
    # The subscription stays with the session; what it may read is the
    # new identity's (carol has no rules: nothing).
    b, port, acl = acl_broker
    c = login(port, "bob", client_id="shared-id", clean=False)
    assert c.subscribe([("public/#", 1)]) == [1]
    c.close()
    c = RawClient(port)
    ack = c.connect("shared-id", clean=False, username="carol", password="cpw")
    assert ack.rc == 0 and ack.session_present
    bob = login(port, "bob")
    bob.publish("public/x", b"not for carol", qos=1)
    c.expect_silence(0.3)


def test_sighup_password_file_reload(acl_broker, tmp_path):
    b, port, _ = acl_broker
    pw = tmp_path / "passwd"
    make_passwd(pw, [("alice", "new"), ("bob", "bpw")])
    b.reload()
    with RawClient(port) as c:
        assert c.connect("a1", username="alice", password="apw").rc == 5
    with RawClient(port) as c:
        assert c.connect("a2", username="alice", password="new").rc == 0


def test_broken_acl_file_at_startup_exits_nonzero(tmp_path, flavour):
    acl = tmp_path / "acl"
    acl.write_text("user alice\ntopic readwrite alice/#\ntopic sometimes alice/x\n")
    port = harness.free_port()
    conf = ("listener %d 127.0.0.1\nallow_anonymous true\nacl_file %s\n%s"
            % (port, acl, LOG))
    if flavour == "mosquitto":
        conf += "user root\n"
    rc, out = tlsutil.run_broker_to_exit(harness.broker_bin(), tmp_path, conf)
    assert isinstance(rc, int) and rc != 0, (rc, out)
    assert not harness.listening(port)
    if flavour == "kite":
        assert re.search(re.escape(str(acl)) + r":3: \S", out), out


@pytest.mark.kite_only("kite keeps the old rules when the new ACL file is broken")
def test_sighup_broken_acl_keeps_old_rules(acl_broker):
    b, port, acl = acl_broker
    bob = login(port, "bob")
    bob.subscribe([("bob/#", 1)])
    alice = login(port, "alice")
    acl.write_text(ACL.replace("topic write inbox/#", "topic write bob/#\ntopic frobnicate x"))
    b.send_signal(signal.SIGHUP)
    b.wait_output(re.escape(str(acl)) + r":\d+: ", 5)
    assert b.alive()
    alice.publish("bob/x", b"still denied", qos=1)
    alice.publish("inbox/x", b"still allowed", qos=1)
    bob.publish("bob/s", b"s", qos=1)
    assert bob.expect_publish().payload == b"s"
    bob.expect_silence(0.3)


# --- per_listener_settings: two listeners, two files ------------------------------------

def test_per_listener_acl_and_password_files(broker_factory, tmp_path):
    pw1 = make_passwd(tmp_path / "pw1", [("alice", "apw")])
    pw2 = make_passwd(tmp_path / "pw2", [("bob", "bpw")])
    acl1 = tmp_path / "acl1"
    acl1.write_text("user alice\ntopic readwrite shared/#\n")
    acl2 = tmp_path / "acl2"
    acl2.write_text("user bob\ntopic read shared/#\n")
    conf = ("per_listener_settings true\n"
            "listener {port} 127.0.0.1\nallow_anonymous false\npassword_file %s\nacl_file %s\n"
            "listener {port2} 127.0.0.1\nallow_anonymous false\npassword_file %s\nacl_file %s\n"
            % (pw1, acl1, pw2, acl2)) + LOG
    b, (p1, p2) = tlsutil.start(broker_factory, conf, nports=2)
    # Each listener knows only its own users.
    with RawClient(p1) as c:
        assert c.connect("b", username="bob", password="bpw").rc == 5
    with RawClient(p2) as c:
        assert c.connect("a", username="alice", password="apw").rc == 5
    alice = login(p1, "alice")
    bob = login(p2, "bob")
    assert bob.subscribe([("shared/#", 1)]) == [1]
    alice.publish("shared/x", b"from alice", qos=1)
    m = bob.expect_publish()
    assert (m.topic, m.payload) == ("shared/x", b"from alice")
    # bob may only read: his publish is dropped; alice (subscribed) sees none.
    alice.subscribe([("shared/#", 1)])
    bob.publish("shared/y", b"from bob", qos=1)
    alice.publish("shared/z", b"sentinel", qos=1)
    m = alice.expect_publish()
    assert (m.topic, m.payload) == ("shared/z", b"sentinel")


# --- issue 14: Mosquitto's suite (09-acl-change, 09-pwfile-parse-invalid) -------------

def test_sighup_revoked_read_drops_queued_messages(acl_broker):
    # Messages queued for an offline client are checked again, as they go
    # out, against the ACL SIGHUP reloaded: read access gone, not delivered.
    b, port, acl = acl_broker
    bob = login(port, "bob", clean=False)
    assert bob.subscribe([("public/a", 1), ("public/b", 1)]) == [1, 1]
    bob.send(mqttraw.disconnect())
    bob.close()
    pub = login(port, "alice", client_id="pub")
    # alice may publish there.
    granted = ACL.replace("topic write inbox/#", "topic write inbox/#\ntopic write public/#")
    acl.write_text(granted)
    b.reload()
    pub.publish("public/a", b"a1", qos=1)
    pub.publish("public/b", b"b1", qos=1)
    # bob keeps public/a, loses public/b.
    acl.write_text(granted.replace("topic readwrite public/#", "topic readwrite public/a"))
    b.reload()
    bob = login(port, "bob", clean=False)
    m = bob.expect_publish()
    assert (m.topic, m.payload, m.pid) == ("public/a", b"a1", 1)
    bob.send(mqttraw.puback(m.pid))
    pub.publish("public/a", b"a2", qos=1)
    m = bob.expect_publish()
    # Mosquitto numbered the dropped message when it queued it: id 3.
    assert (m.topic, m.payload, m.pid) == ("public/a", b"a2", 3)
    bob.send(mqttraw.puback(m.pid))
    bob.expect_silence(0.5)


def test_client_reconnecting_right_after_sighup_gets_the_new_acl(acl_broker):
    # A client that reconnects the moment SIGHUP is sent (Mosquitto's
    # 09-acl-change does) must not get a queued message the reloaded ACL
    # revokes: kite's reload runs beside the shards, so the queue waits
    # for it. Ten rounds, without waiting for the reload.
    b, port, acl = acl_broker
    granted = ACL.replace("topic write inbox/#", "topic write inbox/#\ntopic write public/#")
    revoked = granted.replace("topic readwrite public/#", "topic readwrite public/a")
    pub = login(port, "alice", client_id="pub")
    for i in range(10):
        acl.write_text(granted)
        b.reload()
        bob = login(port, "bob", clean=False)
        assert bob.subscribe([("public/a", 1), ("public/b", 1)]) == [1, 1]
        gone = b.mark()
        bob.send(mqttraw.disconnect())
        bob.close()
        # Offline first: what is published now waits in the queue (a
        # message that went out before is resent as sent, unchecked).
        b.wait_client_gone("bob", since=gone)
        pub.publish("public/b", b"b%d" % i, qos=1)
        pub.publish("public/a", b"a%d" % i, qos=1)
        acl.write_text(revoked)
        since = b.mark()
        b.send_signal(signal.SIGHUP)
        bob = login(port, "bob", clean=False)
        m = bob.expect_publish()
        assert (m.topic, m.payload) == ("public/a", b"a%d" % i), (i, m.topic)
        bob.send(mqttraw.puback(m.pid))
        bob.expect_silence(0.2)
        bob.close()
        b.wait_output(b.RELOADED, 5, since=since)


# The suite's hash of the empty password (salt o+53eGXtmlfHeYrg).
EMPTY_HASH = ("$6$o+53eGXtmlfHeYrg$FY7X9DNQ4uU1j0NiPmGOOSU05ZSzhqNmNhXIof/0nLpVb1zD"
              "hcRHdaC72E3YryH7dtTiG/r6jH6C8J+30cZBgA==")


@pytest.mark.parametrize("password", ["", None, "test"])
def test_hash_of_empty_password_lets_nobody_in(broker_factory, tmp_path, password):
    pw = make_passwd(tmp_path / "passwd", [("alice", "apw")])
    with open(pw, "a") as f:
        f.write("empty:%s\n" % EMPTY_HASH)
    b = broker_factory("allow_anonymous false\npassword_file %s\n%s" % (pw, LOG))
    with RawClient(b.port) as c:
        assert c.connect("e", username="empty", password=password).rc == 5
    with RawClient(b.port) as c:
        assert c.connect("a", username="alice", password="").rc == 5
    login(b.port, "alice").close()


@pytest.mark.kite_only("kite refuses a filter a deny rule wholly covers with SUBACK 0x80")
def test_subscribe_filter_wholly_denied_refused_0x80(acl_broker):
    # alice reads public/# but not public/secret: a subscription to just
    # that topic can never deliver anything.
    b, port, _ = acl_broker
    alice = login(port, "alice")
    assert alice.subscribe([("public/secret", 1), ("public/+", 1),
                            ("public/secret/x", 1)]) == [0x80, 1, 1]
