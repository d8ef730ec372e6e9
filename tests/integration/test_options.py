"""Mosquitto's general and listener options, each seen from a client: the
client id options, QoS and queueing options, mount_point, TLS-PSK, socket
options, `user`, and the options kite refuses or warns about. Shared
expectations run against Mosquitto 2.0.11 too."""

import ctypes
import os
import pwd
import re
import signal
import socket
import subprocess
import time

import pytest

import harness
from clients import mosquitto_pub, mosquitto_sub_start
from mqttraw import RawClient

BIN = harness.broker_bin()
FLAVOUR = harness.flavour(BIN) if BIN else None
ANON = "allow_anonymous true\nlog_dest stderr\nlog_type all\n"


# ---- client ids -------------------------------------------------------------

@pytest.mark.parametrize("allow,rc", [("true", 0), ("false", 2)])
def test_allow_zero_length_clientid_decides_on_empty_ids(broker_factory, allow, rc):
    b = broker_factory(ANON + "allow_zero_length_clientid %s\n" % allow)
    with RawClient(b.port) as c:
        assert c.connect("").rc == rc


def test_auto_id_prefix_names_generated_client_ids(broker_factory):
    b = broker_factory(ANON + "auto_id_prefix pfx-\n")
    with RawClient(b.port) as c:
        assert c.connect("").rc == 0
        c.ping()
    b.wait_output(r"as pfx-[0-9a-fA-F]{8}-")  # Mosquitto: upper case


def test_clientid_prefixes_refuses_other_client_ids(broker_factory):
    b = broker_factory(ANON + "clientid_prefixes secure-\n")
    with RawClient(b.port) as c:
        assert c.connect("secure-1").rc == 0
    with RawClient(b.port) as c:
        assert c.connect("mqtt").rc == 5


def test_use_username_as_clientid_replaces_the_client_id(broker_factory):
    b = broker_factory(ANON + "use_username_as_clientid true\n")
    with RawClient(b.port) as c:
        assert c.connect("").rc == 5  # no username: not authorised
    with RawClient(b.port) as first, RawClient(b.port) as second:
        assert first.connect("a", username="dev1").rc == 0
        # Another client id, the same username: the same session, so the
        # first connection is taken over.
        assert second.connect("b", username="dev1").rc == 0
        first.expect_closed(3)
        second.ping()


# ---- QoS and queues ---------------------------------------------------------

def test_upgrade_outgoing_qos_delivers_at_the_subscription_qos(broker_factory):
    b = broker_factory(ANON + "upgrade_outgoing_qos true\n")
    with RawClient(b.port) as sub, RawClient(b.port) as pub:
        sub.connect("sub")
        assert sub.subscribe([("up/t", 1)]) == [1]
        pub.connect("pub")
        pub.publish("up/t", b"x", qos=0)
        assert sub.expect_publish(3).qos == 1


@pytest.mark.kite_only("Mosquitto 2.0.11 ignores max_inflight_bytes unless "
                       "max_queued_bytes is set too (db__ready_for_flight); kite "
                       "does what its man page says")
def test_max_inflight_bytes_holds_messages_until_acknowledged(broker_factory):
    b = broker_factory(ANON + "max_inflight_bytes 10\n")
    with RawClient(b.port) as sub, RawClient(b.port) as pub:
        sub.connect("sub")
        sub.subscribe([("ib/t", 1)])
        pub.connect("pub")
        for i in range(3):
            pub.publish("ib/t", b"%020d" % i, qos=1, pid=i + 1)
        first = sub.expect_publish(3, ack=False)
        sub.expect_silence(0.5)  # 20 bytes in flight >= 10: the rest wait
        sub.ack(first)
        assert sub.expect_publish(3, ack=False).payload == b"%020d" % 1


@pytest.mark.parametrize("queue", [True, False])
def test_queue_qos0_messages_keeps_qos0_for_offline_sessions(broker_factory, queue):
    b = broker_factory(ANON + "queue_qos0_messages %s\n" % ("true" if queue else "false"))
    with RawClient(b.port) as sub:
        sub.connect("q0", clean=False)
        sub.subscribe([("q0/t", 0)])
    with RawClient(b.port) as pub:
        pub.connect("pub")
        pub.publish("q0/t", b"while away", qos=0)
        pub.ping()
    with RawClient(b.port) as sub:
        assert sub.connect("q0", clean=False).rc == 0
        if queue:
            assert sub.expect_publish(3).payload == b"while away"
        else:
            sub.expect_silence(0.5, ping=True)


def test_allow_duplicate_messages_false_sends_one_copy(broker_factory):
    b = broker_factory(ANON + "allow_duplicate_messages false\n")
    with RawClient(b.port) as sub:
        sub.connect("dup")
        sub.subscribe([("d/#", 0), ("d/t", 0)])
        mosquitto_pub(b.port, "d/t", "once")
        assert sub.expect_publish(3).payload == b"once"
        sub.expect_silence(0.5, ping=True)


def test_check_retain_source_hides_retained_messages_of_a_revoked_writer(broker_factory, tmp_path):
    acl = tmp_path / "acl"
    acl.write_text("topic readwrite rs/t\n")
    b = broker_factory(ANON + "check_retain_source true\nacl_file %s\n" % acl)
    with RawClient(b.port) as c:
        c.connect("writer")
        c.publish("rs/t", b"kept", qos=1, retain=True)
    with RawClient(b.port) as c:
        c.connect("writer")
        c.subscribe([("rs/t", 0)])
        assert c.expect_publish(3).payload == b"kept"
    acl.write_text("topic read rs/t\n")
    b.reload()
    with RawClient(b.port) as c:
        c.connect("writer")
        c.subscribe([("rs/t", 0)])
        c.expect_silence(0.5, ping=True)


def test_subscribe_sent_right_after_sighup_is_served_under_the_new_acl(broker_factory, tmp_path):
    """The client sends SIGHUP and at once connects and subscribes, in one
    write: the retained message must follow the ACL being loaded, never
    the one it replaces (Mosquitto reloads before it reads any socket)."""
    import mqttraw
    acl = tmp_path / "acl"
    acl.write_text("topic readwrite rs/t\n")
    b = broker_factory(ANON + "check_retain_source true\nacl_file %s\n" % acl)
    with RawClient(b.port) as c:
        c.connect("writer")
        c.publish("rs/t", b"kept", qos=1, retain=True)
    burst = (mqttraw.connect("writer") + mqttraw.subscribe(1, [("rs/t", 0)])
             + mqttraw.pingreq())
    for i in range(40):
        writable = i % 2 == 1
        acl.write_text("topic %s rs/t\n" % ("readwrite" if writable else "read"))
        b.send_signal(signal.SIGHUP)
        with RawClient(b.port) as c:
            if i % 4 < 2:
                c.send(burst)
            else:  # the SUBSCRIBE split across two receives
                cut = len(mqttraw.connect("writer")) + 4
                c.send(burst[:cut])
                time.sleep(0.002)
                c.send(burst[cut:])
            seen = []
            while True:
                pkt = c.recv(5)
                seen.append(pkt.name)
                if pkt.type == mqttraw.PINGRESP:
                    break
            want = ["CONNACK", "SUBACK"] + (["PUBLISH"] if writable else []) + ["PINGRESP"]
            assert seen == want, "iteration %d (%s): %s" % (
                i, "readwrite" if writable else "read", seen)


# ---- mount_point ------------------------------------------------------------

def test_mount_point_puts_a_listener_below_a_prefix(broker_factory, flavour):
    mport = harness.free_port()
    b = broker_factory(ANON + "listener %d 127.0.0.1\nmount_point mnt/\n" % mport)
    with RawClient(b.port) as outside, RawClient(mport) as inside:
        outside.connect("outside")
        outside.subscribe([("#", 0)])
        inside.connect("inside")
        inside.subscribe([("#", 0)])
        inside.publish("t", b"from inside")
        got = outside.expect_publish(3)
        assert (got.topic, got.payload) == ("mnt/t", b"from inside")
        # The man page: "This prefix is removed when any messages are sent
        # to the client". Mosquitto 2.0.11 sends it anyway (README,
        # differences); kite removes it.
        seen = "" if flavour == "kite" else "mnt/"
        got = inside.expect_publish(3)  # its own message
        assert (got.topic, got.payload) == (seen + "t", b"from inside")
        outside.publish("other/t", b"not below mnt")
        outside.publish("mnt/x", b"below mnt")
        got = inside.expect_publish(3)
        assert (got.topic, got.payload) == (seen + "x", b"below mnt")


# ---- TLS-PSK ------------------------------------------------------------------

@pytest.mark.parametrize("version", ["tlsv1.2", "tlsv1.3"])
def test_psk_listener_accepts_the_right_key_only(broker_factory, tmp_path, version):
    pport = harness.free_port()
    psk = tmp_path / "psk"
    psk.write_text("dev:deadbeef\n")
    b = broker_factory(ANON + "psk_file %s\nlistener %d 127.0.0.1\npsk_hint hint\n"
                       % (psk, pport))
    sub = mosquitto_sub_start(b.port, "psk/t", 1)
    time.sleep(0.3)

    def pub(key):
        return harness.run_cmd(["mosquitto_pub", "-h", "127.0.0.1", "-p", str(pport),
                                "--psk", key, "--psk-identity", "dev",
                                "--tls-version", version, "-t", "psk/t", "-m", "psk"])
    assert pub("deadbeef").returncode == 0
    out, _ = sub.communicate(timeout=10)
    assert out.strip() == "psk/t psk"
    assert pub("cafe").returncode != 0


def test_psk_identity_is_the_username_with_use_identity_as_username(broker_factory, tmp_path):
    pport = harness.free_port()
    psk = tmp_path / "psk"
    psk.write_text("dev:deadbeef\n")
    acl = tmp_path / "acl"
    acl.write_text("topic read #\nuser dev\ntopic write only/dev\n")
    b = broker_factory(ANON + "acl_file %s\npsk_file %s\nlistener %d 127.0.0.1\n"
                       "psk_hint hint\nuse_identity_as_username true\n" % (acl, psk, pport))
    sub = mosquitto_sub_start(b.port, "#", 1)
    time.sleep(0.3)
    for topic in ("other", "only/dev"):
        r = harness.run_cmd(["mosquitto_pub", "-h", "127.0.0.1", "-p", str(pport),
                             "--psk", "deadbeef", "--psk-identity", "dev",
                             "-u", "someone-else", "-t", topic, "-m", topic])
        assert r.returncode == 0, r.stderr
    out, _ = sub.communicate(timeout=10)
    assert out.strip() == "only/dev only/dev"


# ---- sockets ------------------------------------------------------------------

def _server_socket_option(pid, client, level, opt):
    """The broker's end of `client`'s connection, read with pidfd_getfd."""
    libc = ctypes.CDLL(None, use_errno=True)
    pidfd = libc.syscall(434, pid, 0)  # pidfd_open
    if pidfd < 0:
        pytest.skip("pidfd_open unavailable")
    try:
        want = client.getsockname()
        for name in os.listdir("/proc/%d/fd" % pid):
            if not os.readlink("/proc/%d/fd/%s" % (pid, name)).startswith("socket:"):
                continue
            fd = libc.syscall(438, pidfd, int(name), 0)  # pidfd_getfd
            if fd < 0:
                pytest.skip("pidfd_getfd refused: %s" % os.strerror(ctypes.get_errno()))
            s = socket.socket(fileno=fd)
            try:
                if s.type == socket.SOCK_STREAM and s.getpeername() == want:
                    return s.getsockopt(level, opt)
            except OSError:
                pass
            finally:
                s.close()
    finally:
        os.close(pidfd)
    raise AssertionError("connection not found in the broker")


@pytest.mark.parametrize("on", [True, False])
def test_set_tcp_nodelay_sets_it_on_client_sockets(broker_factory, on):
    b = broker_factory(ANON + "set_tcp_nodelay %s\n" % ("true" if on else "false"))
    with RawClient(b.port) as c:
        c.connect("nd")
        c.ping()
        val = _server_socket_option(b.pid, c.sock, socket.IPPROTO_TCP, socket.TCP_NODELAY)
        assert bool(val) == on


def _connects(host, port, family):
    try:
        with socket.socket(family, socket.SOCK_STREAM) as s:
            s.settimeout(2)
            s.connect((host, port))
            return True
    except OSError:
        return False


def _has_ipv6_loopback():
    return _connects_possible_v6()


def _connects_possible_v6():
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.mark.parametrize("domain", ["ipv4", "ipv6"])
def test_socket_domain_limits_a_listener_to_one_family(broker_factory, domain):
    if not _connects_possible_v6():
        pytest.skip("no IPv6 loopback on this machine")
    port = harness.free_port()
    broker_factory("listener %d\nsocket_domain %s\n" % (port, domain) + ANON,
                   listener=False, port=port, wait=False)
    harness.wait_for(lambda: _connects("127.0.0.1", port, socket.AF_INET)
                     or _connects("::1", port, socket.AF_INET6), what="listening")
    assert _connects("127.0.0.1", port, socket.AF_INET) == (domain == "ipv4")
    assert _connects("::1", port, socket.AF_INET6) == (domain == "ipv6")


def _other_ipv4():
    """An IPv4 address of this machine that is not on lo, or None."""
    out = subprocess.run(["ip", "-4", "-o", "addr"], capture_output=True, text=True).stdout
    for line in out.splitlines():
        f = line.split()
        if f[1] != "lo":
            return f[1], f[3].split("/")[0]
    return None


def test_bind_interface_listens_on_that_interface_only(broker_factory):
    other = _other_ipv4()
    if not other:
        pytest.skip("no network interface besides lo")
    iface, addr = other
    port = harness.free_port()
    broker_factory("listener %d\nbind_interface %s\n" % (port, iface) + ANON,
                   listener=False, port=port, wait=False)
    harness.wait_for(lambda: _connects(addr, port, socket.AF_INET), what="listening")
    assert not _connects("127.0.0.1", port, socket.AF_INET)


# ---- user ---------------------------------------------------------------------

def _uid_of(pid):
    with open("/proc/%d/status" % pid) as f:
        return int(re.search(r"^Uid:\s+(\d+)", f.read(), re.M).group(1))


def _root_only():
    if os.geteuid() != 0:
        pytest.skip("`user` acts only when started as root")


@pytest.mark.parametrize("line,user", [("", "mosquitto"), ("user nobody\n", "nobody"),
                                       ("user root\n", "root")])
def test_user_drops_root_after_start(tmp_path, line, user):
    _root_only()
    try:
        uid = pwd.getpwnam(user).pw_uid
    except KeyError:
        pytest.skip("no user %s on this machine" % user)
    port = harness.free_port()
    b = harness.Broker(BIN, FLAVOUR, tmp_path, ANON + "listener %d 127.0.0.1\n%s" % (port, line),
                       port=port, keep_root=False)
    try:
        mosquitto_pub(port, "u/t", "x")  # serving as that user
        assert _uid_of(b.pid) == uid
    finally:
        assert b.stop() == 0, b.output()


def test_user_that_does_not_exist_stops_startup(tmp_path):
    _root_only()
    port = harness.free_port()
    b = harness.Broker(BIN, FLAVOUR, tmp_path, ANON + "listener %d 127.0.0.1\nuser no-such-user-kite\n" % port,
                       port=port, wait_port=False, keep_root=False)
    assert b.proc.wait(5) != 0
    assert "no-such-user-kite" in b.output()


# ---- refused, obsolete and warned-about options (kite's messages) ---------------

def _run_config(tmp_path, text):
    conf = tmp_path / "k.conf"
    conf.write_text(text)
    return harness.run_cmd([BIN, "-t", "-c", str(conf)])


@pytest.mark.kite_only("kite's messages")
@pytest.mark.parametrize("line", ["auth_plugin /usr/lib/x/auth.so", "plugin /usr/lib/x/dynsec.so"])
def test_plugin_lines_stop_startup_naming_plugin_and_alternative(tmp_path, line):
    r = _run_config(tmp_path, "listener 1883\n%s\n" % line)
    assert r.returncode != 0
    assert line.split()[1] in r.stderr and "acl_file" in r.stderr and ":2:" in r.stderr


@pytest.mark.kite_only("kite's messages")
@pytest.mark.parametrize("line", ["address 10.0.0.1", "round_robin true",
                                  "idle_timeout 5", "topic # both 0"])
def test_bridge_options_outside_a_connection_block_are_refused(tmp_path, line):
    r = _run_config(tmp_path, "%s\n" % line)
    assert r.returncode != 0
    assert "only valid in a bridge ('connection') block" in r.stderr and ":1:" in r.stderr


@pytest.mark.kite_only("kite's messages")
@pytest.mark.parametrize("line,says", [("tls_engine pkcs11", "keyfile"),
                                       ("tls_engine_kpass_sha1 aa", "keyfile"),
                                       ("retry_interval 20", "no longer available")])
def test_obsolete_options_start_with_a_warning(tmp_path, line, says):
    r = _run_config(tmp_path, "listener 1883\n%s\n" % line)
    assert r.returncode == 0, r.stderr
    assert "Warning:" in r.stderr and says in r.stderr


@pytest.mark.kite_only("kite's messages")
def test_tls_keyform_engine_is_refused_pem_accepted(tmp_path):
    assert _run_config(tmp_path, "tls_keyform pem\n").returncode == 0
    r = _run_config(tmp_path, "tls_keyform engine\n")
    assert r.returncode != 0 and "PEM keyfile" in r.stderr


@pytest.mark.kite_only("kite's memory accounting")
def test_memory_limit_drops_a_publish_and_disconnects_its_publisher(broker_factory):
    b = broker_factory(ANON + "memory_limit 33554432\n")
    with RawClient(b.port) as sub, RawClient(b.port) as pub:
        sub.connect("sub")
        sub.subscribe([("m/#", 0)])
        pub.connect("pub")
        time.sleep(0.6)  # a tick measured the heap
        pub.publish("m/small", b"ok")
        assert sub.expect_publish(3).payload == b"ok"
        pub.send(__import__("mqttraw").publish("m/big", b"x" * (40 << 20)))
        pub.expect_closed(10)
        sub.expect_silence(0.5, ping=True)


def test_memory_limit_counts_what_the_broker_holds(broker_factory):
    # Retained messages fill the heap; once what kite holds passes the
    # limit, the next PUBLISH is dropped and its publisher disconnected,
    # however small the PUBLISH itself.
    from mqttraw import Closed
    b = broker_factory(ANON + "memory_limit 16777216\n")
    sent = 0
    with RawClient(b.port) as pub:
        pub.connect("filler")
        try:
            for i in range(64):
                pub.publish("fill/%d" % i, b"r" * (1 << 20), qos=1, retain=True,
                            pid=i + 1)
                sent += 1
                time.sleep(0.3)  # a tick measures the heap
        except (Closed, AssertionError):
            pass
    assert 8 <= sent < 40, sent
    assert "memory_limit reached" in b.output()
    with RawClient(b.port) as r:
        r.connect("reader")
        r.subscribe([("fill/0", 0)])
        assert len(r.expect_publish(3).payload) == 1 << 20


# ---- every option of the man page ---------------------------------------------

def _every_option_config(d):
    """A config using every non-bridge option of mosquitto.conf(5) that kite
    implements (the WebSockets, logging and persistence options are other
    issues' and not listed here unless already supported)."""
    (d / "psk").write_text("id:deadbeef\n")
    (d / "acl").write_text("topic readwrite #\n")
    (d / "pw").write_text("")
    (d / "conf.d").mkdir()
    return """
acl_file {d}/acl
allow_anonymous false
allow_duplicate_messages false
allow_zero_length_clientid true
auto_id_prefix auto-
autosave_interval 1800
autosave_on_changes false
check_retain_source true
clientid_prefixes kite
connection_messages true
include_dir {d}/conf.d
log_dest stderr
log_type all
max_inflight_bytes 0
max_inflight_messages 20
max_keepalive 65535
max_packet_size 1000000
max_queued_bytes 0
max_queued_messages 1000
memory_limit 0
message_size_limit 0
password_file {d}/pw
per_listener_settings false
persistence false
persistence_file mosquitto.db
persistence_location {d}/
persistent_client_expiration 14d
pid_file {d}/pid
psk_file {d}/psk
queue_qos0_messages false
retain_available true
retry_interval 20
set_tcp_nodelay true
sys_interval 10
upgrade_outgoing_qos false
user root
bind_address 127.0.0.1
bind_interface lo
port 1883
listener 8883
max_connections -1
maximum_qos 2
max_qos 2
max_topic_alias 10
mount_point site/
socket_domain ipv4
use_username_as_clientid false
listener 8884
psk_hint hint
ciphers PSK
ciphers_tls1.3 TLS_AES_128_GCM_SHA256
tls_version tlsv1.2
use_identity_as_username true
tls_engine pkcs11
tls_engine_kpass_sha1 00
tls_keyform pem
""".format(d=d)


@pytest.mark.kite_only("kite -t")
def test_config_test_accepts_every_non_bridge_option_of_the_man_page(tmp_path):
    text = _every_option_config(tmp_path)
    r = _run_config(tmp_path, text)
    assert r.returncode == 0, r.stderr
    assert "configuration OK" in r.stdout
