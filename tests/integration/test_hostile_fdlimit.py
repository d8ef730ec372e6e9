"""Hostile traffic, defect 3: at the file-descriptor limit the broker must
neither spin nor flood its log, and clients beyond what it can hold must be
refused promptly instead of hanging.

The broker runs with RLIMIT_NOFILE 256 (`ulimit -n 256`) and logs errors
and warnings only (per-connection notices are not the point). 300 bare TCP
connections arrive within 0.6 s (25 every 50 ms). At most 256 of them can be held, so at least 44
must see EOF or a reset within REFUSE_WITHIN_S of their TCP handshake
(watched for OBSERVE_S), and none may be left waiting in a listening
socket's accept queue (that is the hang). Over a window of CPU_WINDOW_S with all of them open, the broker uses
under MAX_CPU_SHARE of one core (utime+stime from /proc/PID/stat); during
the test it writes fewer than MAX_LOG_LINES lines. A client connected
before the attack keeps round-tripping during it, and once the attackers
close, a new client connects and works. The attack is made twice (ROUNDS):
the limit reached, left, and reached again.

On kite before the fix: no client refused, over 100% CPU, millions of
"accept failed" lines. Mosquitto 2.0.11 (Debian's, built with tcpd) accepts
until the limit and then closes the rest at once (docs/HOSTILE.md)."""

import errno
import os
import select
import socket
import time

import pytest

import harness
from hostile import GoodClient, close_all, closed_by_peer, cpu_share, good_round_trip_within

NOFILE = 256
ATTACKERS = 300
BATCH = 25
BATCH_GAP_S = 0.05
ROUNDS = 2
REFUSE_WITHIN_S = 2.0
OBSERVE_S = 4.5
CPU_WINDOW_S = 3.0
MAX_CPU_SHARE = 0.20
MAX_LOG_LINES = 50

CONF = "allow_anonymous true\nlog_dest stderr\nlog_type error\nlog_type warning\n"


def _log_lines_since(broker, offset):
    """Lines the broker wrote after byte `offset` of its output, counted
    without reading it all into memory (a spinning broker writes GBs)."""
    n = 0
    with open(broker.out_path, "rb") as f:
        f.seek(offset)
        while True:
            chunk = f.read(1 << 20)
            if not chunk:
                return n
            n += chunk.count(b"\n")


def _connect_nonblocking(port):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setblocking(False)
    rc = s.connect_ex((harness.HOST, port))
    assert rc in (0, errno.EINPROGRESS, errno.ECONNREFUSED), os.strerror(rc)
    return s


def _accept_backlog(port):
    """Connections waiting in the accept queues of the sockets listening on
    127.0.0.1:port (a LISTEN socket's rx_queue in /proc/net/tcp): clients
    neither served nor refused."""
    n = 0
    want = "0100007F:%04X" % port
    with open("/proc/net/tcp") as f:
        next(f)
        for line in f:
            fields = line.split()
            if fields[1] == want and fields[3] == "0A":
                n += int(fields[4].split(":")[1], 16)
    return n


def _attack_round(port, batch):
    """ATTACKERS bare connections, `batch` at a time every BATCH_GAP_S, watched
    for OBSERVE_S. Returns (sockets, delays): for each connection the broker
    refused (EOF or reset), the seconds from its TCP handshake completing
    to the refusal. Batches, and the clock from the handshake rather than
    from connect(): a burst beyond a broker's listen backlog (Mosquitto's is
    100) makes handshakes wait for the kernel's retransmits, which is not
    the broker hanging."""
    attackers, by_fd, established, delays = [], {}, {}, []
    poller = select.poll()
    start = time.monotonic()
    end = start + OBSERVE_S
    while (by_fd or len(attackers) < ATTACKERS) and time.monotonic() < end:
        due = min(ATTACKERS, batch * (1 + int((time.monotonic() - start) / BATCH_GAP_S)))
        while len(attackers) < due:
            s = _connect_nonblocking(port)
            attackers.append(s)
            by_fd[s.fileno()] = s
            poller.register(s.fileno(), select.POLLOUT | select.POLLIN)
        for fd, ev in poller.poll(20):
            s, now = by_fd[fd], time.monotonic()
            if fd not in established:
                err = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if err:  # refused or reset during the handshake
                    delays.append(0.0)
                    poller.unregister(fd)
                    del by_fd[fd]
                    continue
                established[fd] = now
                poller.modify(fd, select.POLLIN)
                if not ev & (select.POLLIN | select.POLLHUP | select.POLLERR):
                    continue
            if closed_by_peer(s):
                delays.append(now - established[fd])
                poller.unregister(fd)
                del by_fd[fd]
    return attackers, sorted(delays)


def _rounds(b, batch, measure_cpu):
    """ROUNDS attacks of ATTACKERS connections on broker b, each followed by
    the attackers closing and a recovery check. Returns (problems, figures,
    rounds: [(refused within REFUSE_WITHIN_S, left waiting)])."""
    good = GoodClient(b.port, "before-fdlimit")
    mark = os.path.getsize(b.out_path)
    problems, rounds, text, cpu = [], [], [], None
    try:
        for r in range(ROUNDS):
            socks, delays = _attack_round(b.port, batch)
            prompt = [d for d in delays if d <= REFUSE_WITHIN_S]
            try:
                waiting = _accept_backlog(b.port)
                if measure_cpu and cpu is None:
                    cpu = cpu_share(b.pid, CPU_WINDOW_S)
                good.round_trip()
            finally:
                close_all(socks)
            # Recovery: the attackers are gone, a new client connects and works.
            try:
                good_round_trip_within(b.port, "after-fdlimit-%d" % r, 5)
                recovered = "recovered"
            except (AssertionError, OSError) as e:
                recovered = "no recovery within 5 s (%s)" % e
                problems.append("round %d: %s" % (r + 1, recovered))
            rounds.append((len(prompt), waiting))
            text.append("round %d: %d of %d refused, %d within %.1fs of their handshake "
                        "(slowest %.2fs), %d left waiting in the accept queues, %s"
                        % (r + 1, len(delays), ATTACKERS, len(prompt), REFUSE_WITHIN_S,
                           delays[-1] if delays else -1, waiting, recovered))
            if waiting:
                problems.append("round %d: clients left hanging in the accept queue"
                                % (r + 1))
        lines = _log_lines_since(b, mark)
    finally:
        good.close()
    figures = "; ".join(text)
    if cpu is not None:
        figures += "; CPU %.1f%% of a core over %.0fs" % (100 * cpu, CPU_WINDOW_S)
        if cpu >= MAX_CPU_SHARE:
            problems.append("CPU must stay under %.0f%%" % (100 * MAX_CPU_SHARE))
    figures += "; %d log lines" % lines
    if lines >= MAX_LOG_LINES:
        problems.append("log must stay under %d lines" % MAX_LOG_LINES)
    return problems, figures, rounds


@pytest.mark.timeout(30)
def test_fd_limit_refuses_excess_without_spinning(broker_factory):
    b = broker_factory(CONF, nofile=NOFILE)
    problems, figures, rounds = _rounds(b, BATCH, measure_cpu=True)
    print("fd limit %d, %d attackers, %d every %.0f ms: %s"
          % (NOFILE, ATTACKERS, BATCH, 1000 * BATCH_GAP_S, figures))
    need = ATTACKERS - NOFILE
    for r, (prompt, _) in enumerate(rounds):
        if prompt < need:
            problems.append("round %d: at least %d excess clients must be refused"
                            % (r + 1, need))
    assert not problems, "; ".join(problems) + ": " + figures


@pytest.mark.timeout(30)
def test_fd_limit_burst_leaves_no_client_hanging(broker_factory):
    """All 300 connects at once. A burst beyond the listen backlog delays
    some handshakes in the kernel (Mosquitto's backlog is 100), so only the
    hang is asserted: after OBSERVE_S no connection may be left in the
    accept queue, neither served nor refused, and the broker recovers."""
    b = broker_factory(CONF, nofile=NOFILE)
    problems, figures, _ = _rounds(b, ATTACKERS, measure_cpu=False)
    print("fd limit %d, %d attackers at once: %s" % (NOFILE, ATTACKERS, figures))
    assert not problems, "; ".join(problems) + ": " + figures
