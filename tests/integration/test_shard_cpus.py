"""Where kite's shards run. By default the scheduler places each shard
thread anywhere in kite's affinity mask, so a shard whose CPU another
process keeps busy moves to an idle one; bound to one CPU it would wait
there, and its clients fall behind those of the other shards (Mosquitto's
own 04-retain-check-source-persist-diff-port lost its retained message
in 3 of 5 runs that way beside one busy process, and in none of 8 with
the shards free). `pin_shards true` binds shard i to the i-th CPU of the
mask, for hosts whose CPUs are kite's alone. Shard threads are named
"kite shard N" (top -H, /proc/PID/task/TID/comm)."""

import os
import time

import pytest

from clients import Paho

pytestmark = pytest.mark.kite_only("shards and pin_shards are kite's own")

CONF = "allow_anonymous true\nshards 2\n"


def cpu_list(text):
    """The CPUs of a Cpus_allowed_list value such as "0-3,6"."""
    cpus = set()
    for part in text.strip().split(","):
        lo, _, hi = part.partition("-")
        cpus.update(range(int(lo), int(hi or lo) + 1))
    return cpus


def shard_cpus(pid):
    """{shard index: allowed CPUs} for the threads named "kite shard N"."""
    deadline = time.monotonic() + 5
    while True:
        out = {}
        for tid in os.listdir("/proc/%d/task" % pid):
            base = "/proc/%d/task/%s/" % (pid, tid)
            try:
                with open(base + "comm") as f:
                    comm = f.read().strip()
                with open(base + "status") as f:
                    allowed = next(l for l in f if l.startswith("Cpus_allowed_list:"))
            except (OSError, StopIteration):
                continue
            if comm.startswith("kite shard "):
                out[int(comm.split()[2])] = cpu_list(allowed.split(":", 1)[1])
        if len(out) == 2 or time.monotonic() > deadline:
            return out
        time.sleep(0.05)


def test_shards_are_free_to_move_by_default(broker_factory):
    b = broker_factory(CONF)
    mask = os.sched_getaffinity(b.pid)
    cpus = shard_cpus(b.pid)
    assert sorted(cpus) == [0, 1], cpus
    for idx, allowed in cpus.items():
        assert allowed == mask, "shard %d bound to %s of %s" % (idx, allowed, mask)


def test_pin_shards_binds_each_shard_to_one_cpu(broker_factory):
    b = broker_factory(CONF + "pin_shards true\n")
    mask = sorted(os.sched_getaffinity(b.pid))
    cpus = shard_cpus(b.pid)
    assert sorted(cpus) == [0, 1], cpus
    for idx, allowed in cpus.items():
        assert allowed == {mask[idx % len(mask)]}, (idx, allowed, mask)
    # Bound or not, the shards serve: a round trip through each of them
    # is what the rest of the suite checks; here one is enough.
    sub = Paho(b.port, client_id="s")
    sub.subscribe("t", 1)
    pub = Paho(b.port, client_id="p")
    pub.publish("t", b"x", qos=1)
    assert sub.get(timeout=5).payload == b"x"
    pub.stop()
    sub.stop()
