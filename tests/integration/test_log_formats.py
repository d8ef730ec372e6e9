"""Log formats: Mosquitto's timestamp options, kite's JSON lines, journald
lines on a stderr that is the journal, and syslog(3) with log_facility."""

import json
import os
import re
import socket
import subprocess
import time

import pytest

import harness
from conftest import BIN, FLAVOUR


def test_log_timestamp_false_prints_the_message_alone(broker_factory):
    b = broker_factory("allow_anonymous true\nlog_timestamp false\n")
    m = b.wait_output(r"^(.*)version \S+ (starting|running)", timeout=5)
    assert m.group(1) in ("kite ", "mosquitto "), m.group(0)


def test_log_timestamp_format_is_strftime(broker_factory):
    b = broker_factory("allow_anonymous true\n"
                       "log_timestamp_format %Y-%m-%dT%H:%M:%S\n")
    year = time.localtime().tm_year
    b.wait_output(r"^%d-\d\d-\d\dT\d\d:\d\d:\d\d: \S+ version \S+ (starting|running)"
                  % year, timeout=5)


@pytest.mark.kite_only("log_format is kite's")
def test_log_format_json_gives_one_object_per_line(broker_factory):
    b = broker_factory("allow_anonymous true\nlog_format json\n"
                       "log_type all\n")
    b.wait_output(r"Opening listen socket", timeout=5)
    lines = [l for l in b.output().splitlines() if l]
    assert len(lines) >= 3
    objs = [json.loads(l) for l in lines]
    for o in objs:
        assert set(o) == {"time", "unix", "type", "priority", "message"}
        assert re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$", o["time"])
        assert abs(o["unix"] - time.time()) < 60
    start = objs[0]
    assert start["type"] == "notice" and start["priority"] == 5
    assert start["message"].startswith("kite version ")


@pytest.mark.kite_only("journald detection is kite's")
def test_stderr_under_journald_has_priorities_and_no_timestamp(tmp_path):
    port = harness.free_port()
    conf = tmp_path / "k.conf"
    conf.write_text("listener %d 127.0.0.1\nallow_anonymous true\n" % port)
    out = open(tmp_path / "stderr", "wb")
    st = os.fstat(out.fileno())
    env = dict(os.environ, JOURNAL_STREAM="%d:%d" % (st.st_dev, st.st_ino))
    p = subprocess.Popen([BIN, "-c", str(conf)], stdout=subprocess.DEVNULL,
                         stderr=out, env=env)
    try:
        harness.wait_for(lambda: harness.listening(port), what="listening")
        time.sleep(0.2)
    finally:
        p.terminate()
        p.wait(5)
        out.close()
    lines = (tmp_path / "stderr").read_text().splitlines()
    assert lines[0].startswith("<5>kite version "), lines[0]
    assert all(re.match(r"^<[0-7]>\D", l) for l in lines), lines
    # Not the journal (another file): Mosquitto's lines.
    env["JOURNAL_STREAM"] = "1:1"
    r = subprocess.Popen([BIN, "-c", str(conf)], stdout=subprocess.DEVNULL,
                         stderr=subprocess.PIPE, env=env)
    harness.wait_for(lambda: harness.listening(port), what="listening")
    r.terminate()
    assert re.match(rb"^\d+: kite version ", r.communicate(timeout=5)[1])


def unshare_works():
    try:
        return subprocess.run(["unshare", "-Urm", "true"], timeout=5).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


@pytest.mark.kite_only("Mosquitto's syslog is not checked here")
def test_log_dest_syslog_uses_log_facility_and_no_timestamp(tmp_path):
    """syslog(3) writes to /dev/log, which a test cannot own: the broker
    runs in a user and mount namespace where /dev/log is our socket."""
    if not unshare_works():
        pytest.skip("unshare -Urm (user namespaces) not available: cannot give "
                    "the broker a /dev/log of ours")
    sock_path = str(tmp_path / "log.sock")
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(sock_path)
    s.settimeout(5)
    port = harness.free_port()
    conf = tmp_path / "k.conf"
    conf.write_text("listener %d 127.0.0.1\nallow_anonymous true\n"
                    "log_dest syslog\nlog_facility 3\n" % port)
    save = tmp_path / "devsave"
    save.mkdir()
    script = """set -e
mount --rbind /dev {save}
mount -t tmpfs tmpfs /dev
for d in null zero urandom random; do touch /dev/$d; mount --bind {save}/$d /dev/$d; done
ln -s {sock} /dev/log
exec {bin} -c {conf}
""".format(save=save, sock=sock_path, bin=BIN, conf=conf)
    p = subprocess.Popen(["unshare", "-Urm", "sh", "-c", script],
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        got = []
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and not any(b"Opening listen" in g for g in got):
            got.append(s.recv(4096))
    finally:
        p.terminate()
        out = p.communicate(timeout=5)[0]
        s.close()
    assert got, out
    # local3 = 19; notice = 5: <157>; "kite[PID]: message", no second stamp.
    first = got[0].decode()
    assert re.match(r"^<157>\w{3} [ \d]\d \d\d:\d\d:\d\d kite\[\d+\]: kite version \S+ starting$",
                    first), first
    assert b"" == out or b"kite version" not in out  # nothing on stderr
