"""Startup, command line and the config options of the broker core."""

import re
import signal
import time

import pytest

import harness
import mqttraw
from clients import Bystander
from mqttraw import RawClient

BIN = harness.broker_bin()
FLAVOUR = harness.flavour(BIN) if BIN else None


def test_no_config_listens_on_loopback_1883_and_allows_anonymous(tmp_path):
    if not harness.port_is_free(1883):
        pytest.skip("127.0.0.1:1883 is in use on this machine")
    b = harness.Broker(BIN, FLAVOUR, tmp_path, conf_text=None, port=1883)
    try:
        with RawClient(1883) as c:
            assert c.connect("anon").rc == 0
            c.ping()
    finally:
        rc = b.stop()
    assert rc == 0, b.output()


def test_listener_without_allow_anonymous_refuses_anonymous(broker_factory):
    # A configured listener makes allow_anonymous default to false (2.0).
    b = broker_factory("log_dest stderr\n")
    with RawClient(b.port) as c:
        ack = c.connect("anon")
        assert ack.rc == 5  # not authorised
        c.expect_closed(2)


def test_allow_anonymous_true_accepts_anonymous(broker_factory):
    b = broker_factory("allow_anonymous true\n")
    with RawClient(b.port) as c:
        assert c.connect("anon").rc == 0
        c.ping()


CONFIG_ERRORS = [
    # (name, text, line of the error)
    ("unknown_option", "allow_anonymous true\nno_such_option 1\n", 3),
    # Mosquitto 2.0.11 accepts max_keepalive 10..65535 only (2.0.12 later
    # allowed 0).
    ("max_keepalive_below_10", "max_keepalive 9\n", 2),
    ("max_keepalive_zero", "max_keepalive 0\n", 2),
    ("max_keepalive_above_65535", "max_keepalive 65536\n", 2),
]


@pytest.mark.parametrize("name,text,line", CONFIG_ERRORS, ids=[c[0] for c in CONFIG_ERRORS])
def test_config_error_exits_nonzero_naming_file_and_line(tmp_path, adapt_config, name, text, line):
    port = harness.free_port()
    path = tmp_path / "bad.conf"
    # Line 1 is the listener, so `line` counts from there.
    path.write_text(adapt_config("listener %d 127.0.0.1\n" % port + text))
    try:
        r = harness.run_cmd([BIN, "-c", str(path)], timeout=5)
    except Exception as e:  # TimeoutExpired: it started instead of failing
        pytest.fail("broker did not refuse the config: %r" % e)
    out = r.stdout + r.stderr
    assert r.returncode != 0, out
    # Mosquitto: "Error found at PATH:LINE."; kite: "PATH:LINE: message".
    assert "%s:%d" % (path, line) in out, out
    if FLAVOUR == "kite":
        assert re.search(r"^%s:%d: \S" % (re.escape(str(path)), line), out, re.M), out


@pytest.mark.kite_only("kite's -t (check the config and exit)")
def test_check_flag_validates_config_without_starting(tmp_path):
    port = harness.free_port()
    good = tmp_path / "good.conf"
    good.write_text("listener %d 127.0.0.1\nallow_anonymous true\nshards 2\n" % port)
    bad = tmp_path / "bad.conf"
    bad.write_text("listener %d 127.0.0.1\nno_such_option 1\n" % port)
    r = harness.run_cmd([BIN, "-t", "-c", str(good)], timeout=5)
    assert r.returncode == 0, r.stdout + r.stderr
    assert not harness.listening(port)
    r = harness.run_cmd([BIN, "-t", "-c", str(bad)], timeout=5)
    assert r.returncode != 0
    assert re.search(r"^%s:2: \S" % re.escape(str(bad)), r.stderr, re.M), r.stderr


def test_max_connections_refuses_connections_over_the_limit(broker_factory):
    b = broker_factory("allow_anonymous true\nmax_connections 2\nlog_dest stderr\nlog_type all\n")
    first = [RawClient(b.port) for _ in range(2)]
    for i, c in enumerate(first):
        assert c.connect("mc%d" % i).rc == 0
    extra = RawClient(b.port)
    # Mosquitto accepts the TCP connection and closes it at once: no CONNACK.
    try:
        extra.send(mqttraw.connect("mc-extra"))
    except OSError:
        pass
    extra.expect_closed(3)
    for c in first:
        c.ping()
    first[0].close()

    def can_connect():
        c = RawClient(b.port)
        try:
            return c.connect("mc-after").rc == 0
        except (mqttraw.Closed, OSError):
            return False
        finally:
            c.close()
    harness.wait_for(can_connect, 5, what="a free connection slot")


def test_max_keepalive_does_not_refuse_v311_clients(broker_factory):
    # Mosquitto 2.0.11 ignores max_keepalive for MQTT 3.1/3.1.1 clients: a
    # larger keepalive (or 0) is accepted with CONNACK 0. (2.0.12 changed this
    # to CONNACK 2, "identifier rejected".) Whether the larger value is then
    # enforced as-is cannot be seen in under 15 s, so it is not tested.
    b = broker_factory("allow_anonymous true\nmax_keepalive 10\n")
    for ka in (60, 0, 10):
        with RawClient(b.port) as c:
            assert c.connect("ka%d" % ka, keepalive=ka).rc == 0
            c.ping()


def test_max_packet_size_closes_connection_on_oversize_packet(broker_factory):
    # Mosquitto compares remaining length + 1 with max_packet_size (the
    # remaining-length bytes are not counted): with a 1-byte length field a
    # packet of max+1 bytes on the wire passes, max+2 does not.
    limit = 100
    b = broker_factory("allow_anonymous true\nmax_packet_size %d\n" % limit)
    by = Bystander(b.port)

    def pub_of_size(total):
        pk = mqttraw.publish("t", b"x" * (total - 7), qos=1, pid=1)
        assert len(pk) == total
        return pk

    for total in (limit - 1, limit, limit + 1):
        with RawClient(b.port) as c:
            c.connect("fits")
            c.send(pub_of_size(total))
            assert c.expect(mqttraw.PUBACK).pid == 1, total
    with RawClient(b.port) as c:
        c.connect("too-big")
        c.send(pub_of_size(limit + 2))
        c.expect_closed(3)  # no PUBACK
    # A CONNECT over the limit is refused the same way.
    with RawClient(b.port) as c:
        c.send(mqttraw.connect("x" * (2 * limit)))
        c.expect_closed(3)  # no CONNACK
    by.round_trip()


@pytest.mark.parametrize("qos", [0, 1, 2])
def test_message_size_limit_drops_oversize_publish_and_keeps_connection(broker_factory, qos):
    # Mosquitto (3.1.1): the PUBLISH is acknowledged as usual (PUBACK, or
    # PUBREC then PUBCOMP) but not delivered; the connection stays open.
    b = broker_factory("allow_anonymous true\nmessage_size_limit 10\n")
    sub = RawClient(b.port)
    sub.connect("sub")
    sub.subscribe([("t", 2)])
    with RawClient(b.port) as c:
        c.connect("pub")
        c.publish("t", b"x" * 11, qos=qos, pid=7)
        c.publish("t", b"y" * 10, qos=qos, pid=8)
        m = sub.expect_publish()
        assert m.payload == b"y" * 10
        sub.expect_silence(0.3)
        c.ping()


@pytest.mark.parametrize("qos", [0, 1])
def test_retain_available_false_disconnects_retained_publish(broker_factory, qos):
    # Mosquitto 2.0.11 closes a 3.1.1 connection that publishes with the
    # retain flag ("disconnected due to QoS too high or retain not
    # supported"; it logs "Bad socket read/write"): no PUBACK, no delivery.
    b = broker_factory("allow_anonymous true\nretain_available false\n")
    sub = RawClient(b.port)
    sub.connect("sub")
    sub.subscribe([("r/#", 1)])
    with RawClient(b.port) as c:
        c.connect("pub")
        c.send(mqttraw.publish("r/1", b"x", qos=qos, retain=True, pid=1))
        c.expect_closed(3)  # no PUBACK
    sub.expect_silence(0.3)
    with RawClient(b.port) as c:
        c.connect("pub2")
        c.publish("r/2", b"plain", qos=1)
    assert sub.expect_publish().payload == b"plain"
    # Nothing was stored.
    with RawClient(b.port) as late:
        late.connect("late")
        late.subscribe([("r/#", 1)])
        late.expect_silence(0.3)


def test_max_inflight_messages_1_allows_one_unacked_qos1(broker_factory):
    b = broker_factory("allow_anonymous true\nmax_inflight_messages 1\n")
    sub = RawClient(b.port)
    sub.connect("sub")
    sub.subscribe([("t", 1)])
    with RawClient(b.port) as pub:
        pub.connect("pub")
        for i in range(3):
            pub.publish("t", b"m%d" % i, qos=1, pid=i + 1)
        for i in range(3):
            m = sub.expect(mqttraw.PUBLISH)
            assert m.payload == b"m%d" % i and m.qos == 1
            sub.expect_silence(0.3)  # the next one waits for our PUBACK
            sub.send(mqttraw.puback(m.pid))
        # The last PUBACK is handled (else "held" may still meet a full
        # window, and the QoS 0 message, never held, passes it).
        sub.ping()
        # QoS 0 is not held back by a full window (Mosquitto).
        pub.publish("t", b"held", qos=1, pid=10)
        pub.publish("t", b"qos0", qos=0)
        got = [sub.expect(mqttraw.PUBLISH) for _ in range(2)]
        assert [(g.payload, g.qos) for g in got] == [(b"held", 1), (b"qos0", 0)]


def test_max_queued_messages_limits_offline_session_queue(broker_factory):
    # Mosquitto keeps the oldest messages and drops the newer ones.
    b = broker_factory("allow_anonymous true\nmax_queued_messages 2\n")
    with RawClient(b.port) as s:
        s.connect("offline", clean=False)
        s.subscribe([("t", 1)])
        s.send(mqttraw.disconnect())
        s.expect_closed(2)
    with RawClient(b.port) as pub:
        pub.connect("pub")
        for i in range(5):
            pub.publish("t", b"m%d" % i, qos=1, pid=i + 1)
    with RawClient(b.port) as s:
        assert s.connect("offline", clean=False).session_present
        got = s.recv_exactly(2)
        assert [g.payload for g in got] == [b"m0", b"m1"]


def test_pid_file_written_and_removed_on_exit(broker_factory):
    b = broker_factory("allow_anonymous true\npid_file {dir}/broker.pid\n")
    pid_path = b.dir / "broker.pid"
    text = harness.wait_for(lambda: pid_path.exists() and pid_path.read_text(), 3,
                            what="pid file")
    assert int(text.strip()) == b.proc.pid
    assert b.stop() == 0
    assert not pid_path.exists()


def test_log_dest_file_writes_timestamped_lines(broker_factory):
    b = broker_factory("allow_anonymous true\nlog_dest file {dir}/broker.log\nlog_type all\n")
    path = b.dir / "broker.log"
    with RawClient(b.port) as c:
        c.connect("logged")
        c.ping()
    harness.wait_for(lambda: path.exists() and "logged" in path.read_text(), 5,
                     what="log file mentioning the client")
    lines = [l for l in path.read_text().splitlines() if l]
    assert lines and all(re.match(r"^\d+: ", l) for l in lines), lines[:5]


@pytest.mark.kite_only("kite's reload log line")
def test_a_broken_config_on_sighup_is_logged_with_file_line_and_reason(broker_factory):
    # An operator who logs to a file (or syslog) must read there why a
    # reload was refused, not only on a stderr nobody keeps.
    b = broker_factory("allow_anonymous true\nlog_dest file {dir}/broker.log\n"
                       "log_type error\nlog_type notice\n")
    path = b.dir / "broker.log"
    good = b.conf_path.read_text()
    b.conf_path.write_text(good + "no_such_option 1\n")
    line = good.count("\n") + 1
    b.send_signal(signal.SIGHUP)
    want = re.compile(r"Reload failed: %s:%d: .*no_such_option.*keeping the running"
                      % (re.escape(str(b.conf_path)), line))
    harness.wait_for(lambda: path.exists() and want.search(path.read_text()), 5,
                     what="the refused reload in the log file, with its reason")
    with RawClient(b.port) as c:
        assert c.connect("after-refused-reload").rc == 0
        c.ping()
    # Fixed, the next SIGHUP goes through.
    b.conf_path.write_text(good)
    b.send_signal(signal.SIGHUP)
    harness.wait_for(lambda: "Reloaded configuration from" in path.read_text(), 5,
                     what="the reload after the fix")


@pytest.mark.parametrize("enabled", [True, False])
def test_connection_messages_log_new_clients(broker_factory, enabled):
    b = broker_factory("allow_anonymous true\nlog_dest stderr\nlog_type all\n"
                       "connection_messages %s\n" % ("true" if enabled else "false"))
    with RawClient(b.port) as c:
        c.connect("conn-msg")
        c.ping()
        port = c.local_port
        # Mosquitto: "New client connected from 127.0.0.1:PORT as conn-msg
        # (p2, c1, k60)." The part before the parenthesis is asserted.
        line = r"New client connected from 127\.0\.0\.1:%d as conn-msg\b" % port
        if enabled:
            b.wait_output(line, 3)
            return
        c.send(mqttraw.disconnect())
        c.expect_closed(2)
    # Not now, and not later either: the whole log, once the broker is done.
    assert b.stop() == 0
    out = b.output()
    assert not re.search(line, out), out
    assert not re.search(r"New client connected|New connection from|Client conn-msg ",
                         out), out


def test_include_dir_reads_conf_files(tmp_path, broker_factory):
    inc = tmp_path / "conf.d"
    inc.mkdir()
    (inc / "10-anon.conf").write_text("allow_anonymous true\n")
    # Only files ending in .conf are read.
    (inc / "README").write_text("this is not a config line\n")
    b = broker_factory("include_dir %s\n" % inc)
    with RawClient(b.port) as c:
        assert c.connect("included").rc == 0


SYS_TOPICS = [
    "version", "uptime", "clients/connected", "clients/total",
    "messages/received", "messages/sent", "bytes/received", "bytes/sent",
    "subscriptions/count", "retained messages/count",
]


@pytest.mark.timeout(20)
def test_sys_topics_published_retained_with_plausible_values(broker_factory):
    b = broker_factory("allow_anonymous true\nsys_interval 1\n")
    c = RawClient(b.port)
    c.connect("sys-watcher")
    c.publish("sys/probe", b"r", qos=1, retain=True)
    c.subscribe([("$SYS/broker/#", 0)])
    latest, retained = {}, set()

    def ints(name):
        v = latest.get(name)
        return int(v) if v is not None and v.isdigit() else None

    def plausible():
        conn, total = ints("clients/connected"), ints("clients/total")
        return (set(SYS_TOPICS) <= retained
                and conn is not None and conn >= 1  # counts the watcher
                and total is not None and total >= conn
                and (ints("messages/received") or 0) >= 1
                and (ints("messages/sent") or 0) >= 1
                and (ints("bytes/received") or 0) > 0
                and (ints("bytes/sent") or 0) > 0
                and (ints("subscriptions/count") or 0) >= 1
                and (ints("retained messages/count") or 0) >= 1)

    deadline = time.monotonic() + 10
    while not plausible():
        assert time.monotonic() < deadline, "implausible $SYS: %r (retained: %s)" % (
            latest, sorted(retained))
        try:
            m = c.recv(deadline - time.monotonic())
        except mqttraw.Timeout:
            continue
        if m.type != mqttraw.PUBLISH:
            continue
        name = m.topic[len("$SYS/broker/"):]
        latest[name] = m.payload.decode()
        if m.retain:
            retained.add(name)
    assert "version" in latest["version"]
    assert re.match(r"^\d+ seconds$", latest["uptime"]), latest["uptime"]
