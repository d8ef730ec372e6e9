"""kite started as a user other than root (systemd's User=, a container,
`setpriv`) on a kernel that charges io_uring's rings to RLIMIT_MEMLOCK,
as this machine's Linux 6.18 does. Each shard's ring costs about 0.5 MiB
of that budget, which every process of the user shares: 8 MiB by
default, about 15 shards, so a kite with a shard per CPU did not start on
a 16-CPU host, nor the eighth kite of one user on any host.

Now kite takes the whole hard limit, runs with the shards it could get
when the shard count was left to it (and says how to get the rest), and
refuses a `shards` count it cannot have with the limit, the user and what
to change. Each test runs its broker as a user id of its own: the budget
is per user, and a parallel test's broker must not spend it."""

import os
import re
import shutil
import tempfile

import pytest

import harness
from clients import Paho

pytestmark = [
    pytest.mark.kite_only("io_uring's locked-memory charge is kite's"),
    pytest.mark.skipif(os.geteuid() != 0, reason="runs kite as another user: needs root"),
]

KIB = 1024
# Room for the broker's small control ring and one shard's, not two.
ONE_SHARD = 800 * KIB
# Budget ids: a user id no other process (nor another test here) uses.
UIDS = {"auto": 54301, "explicit": 54302, "soft": 54303}


@pytest.fixture
def open_dir():
    """A directory the broker's user can read (pytest's tmp_path is
    root's alone)."""
    d = tempfile.mkdtemp(prefix="kite-memlock-")
    os.chmod(d, 0o755)
    yield d
    shutil.rmtree(d, ignore_errors=True)


def start(open_dir, conf, uid, memlock, wait=True):
    port = harness.free_port()
    text = "listener %d 127.0.0.1\nallow_anonymous true\n%s" % (port, conf)
    b = harness.Broker(harness.broker_bin(), "kite", open_dir, text, port=port,
                       wait_port=wait, memlock=memlock, uid=uid, keep_root=False)
    os.chmod(b.conf_path, 0o644)
    return b


def round_trip(port):
    sub = Paho(port, client_id="memlock-sub")
    sub.subscribe("memlock/t", 1)
    pub = Paho(port, client_id="memlock-pub")
    pub.publish("memlock/t", b"served", qos=1)
    try:
        assert sub.get(timeout=5).payload == b"served"
    finally:
        pub.stop()
        sub.stop()


def stop_cleanly(b):
    rc = b.stop()
    out = b.output()
    harness.assert_no_sanitizer_report(out)
    assert rc == 0, out
    return out


def test_shards_left_to_kite_run_with_what_the_limit_allows(open_dir):
    cpus = len(os.sched_getaffinity(0))
    if cpus < 2:
        pytest.skip("one CPU: kite wants one shard, which the limit allows")
    b = start(open_dir, "", UIDS["auto"], (ONE_SHARD, ONE_SHARD))
    try:
        round_trip(b.port)
        out = b.output()
        assert re.search(r"Running 1 of %d shards \(one per CPU\): shard 1 got no "
                         r"io_uring \(Cannot allocate memory\)" % cpus, out), out
        assert "locked memory of user %d" % UIDS["auto"] in out, out
        assert "RLIMIT_MEMLOCK 800 KiB" in out, out
        assert "LimitMEMLOCK=" in out, out
        assert "(plain TCP, 1 shard)." in out, out
        # The config still leaves the count to kite: a reload does not
        # take the shards the kernel withheld for a change of config.
        since = b.mark()
        b.reload()
        round_trip(b.port)
        assert "shard count" not in b.output()[since:], b.output()[since:]
    finally:
        stop_cleanly(b)


def test_a_shard_count_the_limit_cannot_hold_is_refused_with_the_reason(open_dir):
    b = start(open_dir, "shards 4\n", UIDS["explicit"], (ONE_SHARD, ONE_SHARD),
              wait=False)
    try:
        b.proc.wait(timeout=10)
    finally:
        b.stop()
    out = b.output()
    harness.assert_no_sanitizer_report(out)
    assert b.returncode == 1, out
    assert re.search(r"Error: shard 1: io_uring setup failed: Cannot allocate memory: "
                     r"the kernel charges each shard's io_uring .* to the locked memory "
                     r"of user %d.*\(RLIMIT_MEMLOCK 800 KiB\)\. Raise that limit .*or set "
                     r"`shards` lower\." % UIDS["explicit"], out), out
    assert "Error: broker failed to start" in out, out
    assert "Opening listen socket" not in out, out


def test_kite_raises_its_soft_limit_to_the_hard_one(open_dir):
    b = start(open_dir, "shards 2\n", UIDS["soft"], (ONE_SHARD, 4096 * KIB))
    try:
        round_trip(b.port)
        out = b.output()
        assert "(plain TCP, 2 shards)." in out, out
        assert "io_uring" not in out, out
        with open("/proc/%d/limits" % b.pid) as f:
            line = next(l for l in f if l.startswith("Max locked memory"))
        assert line.split()[3:5] == [str(4096 * KIB)] * 2, line
    finally:
        stop_cleanly(b)
