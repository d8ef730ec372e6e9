"""Starting and stopping the broker under test (kite, or Mosquitto to
validate the tests), free loopback ports, and small polling helpers.

The broker binary is $KITE_BIN; its flavour is "mosquitto" when the binary's
basename is "mosquitto", else "kite"."""

import os
import re
import resource
import signal
import socket
import subprocess
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
HOST = "127.0.0.1"
# A bound, not a measure (a broker listens within 0.1 s alone): the suite
# runs four at a time, under ASan too, beside other jobs on two cores.
START_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 5.0


def broker_bin():
    """The binary to test, or None when there is none to test."""
    path = os.environ.get("KITE_BIN")
    if path:
        return path
    default = REPO / "build" / "kite"
    return str(default) if default.exists() else None


def sanitized(path=None):
    """True when the broker under test is built with AddressSanitizer: its
    RSS then holds ASan's quarantine and shadow memory, so bounds on the
    broker's memory are checked by the release run only."""
    path = path or broker_bin()
    if not path or not os.path.exists(path):
        return False
    with open(path, "rb") as f:
        return b"__asan_init" in f.read()


def skip_rss_bound_if_sanitized():
    import pytest
    if sanitized():
        pytest.skip("RSS under AddressSanitizer counts its quarantine and "
                    "shadow memory: this memory bound is checked by the "
                    "release build's run")


def flavour(path):
    return "mosquitto" if os.path.basename(path) == "mosquitto" else "kite"


def _port_band():
    """Ports this test process hands out: below the kernel's ephemeral
    range, which every outgoing connection (of any test process) draws its
    local port from, and a band of its own per pytest-xdist worker, so two
    workers never pick the same port between a check and the broker's
    bind."""
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            low = int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
    n = int(worker[2:]) if worker[2:].isdigit() else 0
    width = 1500
    start = 10000 + (n % 12) * width
    if start + width > low:
        return None
    return start, width


_BAND = _port_band()
_next_port = 0


def free_port():
    """A loopback port nobody listens on right now, and no other test
    process will hand out (see _port_band)."""
    global _next_port
    if _BAND is not None:
        start, width = _BAND
        for _ in range(width):
            port = start + _next_port
            _next_port = (_next_port + 1) % width
            if port_is_free(port):
                return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def port_is_free(port):
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((HOST, port))
        except OSError:
            return False
        return True


def listening(port):
    """True if some socket listens on 127.0.0.1:port or *:port (IPv4).
    Read from /proc so that waiting opens no connection the broker would
    count or log."""
    want = {"0100007F:%04X" % port, "00000000:%04X" % port}
    try:
        with open("/proc/net/tcp") as f:
            next(f)
            for line in f:
                fields = line.split()
                if fields[3] != "0A":  # TCP_LISTEN
                    # The kernel lists listening sockets first; what follows
                    # (thousands after a connection storm, four test
                    # processes polling) is not read, nor generated.
                    break
                if fields[1] in want:
                    return True
    except OSError:
        pass
    return False


TCP_STATES = {
    "01": "ESTABLISHED", "02": "SYN_SENT", "03": "SYN_RECV", "04": "FIN_WAIT1",
    "05": "FIN_WAIT2", "06": "TIME_WAIT", "07": "CLOSE", "08": "CLOSE_WAIT",
    "09": "LAST_ACK", "0A": "LISTEN", "0B": "CLOSING",
}


def tcp_socket(local_port, remote_port):
    """The IPv4 TCP socket local_port <-> remote_port on this host, as
    /proc/net/tcp shows it: {"state", "tx_queue", "rx_queue"} (bytes not
    yet acknowledged by the peer / not yet read by the owner), or None.
    For the broker's end of a client's connection: (broker port, the
    client's local port)."""
    try:
        with open("/proc/net/tcp") as f:
            next(f)
            for line in f:
                fields = line.split()
                lport = int(fields[1].split(":")[1], 16)
                rport = int(fields[2].split(":")[1], 16)
                if (lport, rport) == (local_port, remote_port):
                    tx, rx = fields[4].split(":")
                    return {"state": TCP_STATES.get(fields[3], fields[3]),
                            "tx_queue": int(tx, 16), "rx_queue": int(rx, 16)}
    except OSError:
        pass
    return None


def wait_for(cond, timeout=5.0, interval=0.02, what="condition"):
    """Polls cond() until it returns a truthy value, which is returned.
    Raises AssertionError naming `what` on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        v = cond()
        if v:
            return v
        if time.monotonic() >= deadline:
            raise AssertionError("timed out after %.1fs waiting for %s" % (timeout, what))
        time.sleep(interval)


def strip_kite_only(text):
    """Removes the options Mosquitto does not know (kite's `shards`)."""
    return "".join(l for l in text.splitlines(keepends=True)
                   if not re.match(r"\s*shards\b", l))


def root_kept(text):
    """Started as root, kite and Mosquitto drop to user `mosquitto`, which
    cannot read the tests' private work directories: tests keep root
    unless their config names a `user` (test_options.py checks the drop)."""
    if os.geteuid() != 0 or re.search(r"^\s*user\s", text, re.M):
        return text
    return text + ("" if text.endswith("\n") or not text else "\n") + "user root\n"


SANITIZER_REPORT = re.compile(r"ERROR: (?:Address|Leak)Sanitizer|runtime error:")


def assert_no_sanitizer_report(out):
    """A broker built with ASan/UBSan that exits may print a report and
    still give the exit status the test expects (a refused start exits 1
    with or without a leak report): the report is the failure."""
    m = SANITIZER_REPORT.search(out)
    assert not m, "sanitizer report in the broker's output:\n" + out[max(0, m.start() - 200):][:3000]


class Broker:
    """One broker process. `log` is its stdout+stderr, captured to a file.
    `nofile` (optional) is the broker's RLIMIT_NOFILE, soft and hard, as
    `ulimit -n` would set it; `memlock` its RLIMIT_MEMLOCK, (soft, hard) in
    bytes; `uid` a user (and group) id to run it as, from root, as a
    service manager's User= does (workdir must be open to it). `pid` is
    the broker's process id."""

    def __init__(self, binary, flav, workdir, conf_text=None, port=None,
                 args=None, wait_port=True, env=None, nofile=None, keep_root=True,
                 memlock=None, uid=None):
        self.binary = binary
        self.flavour = flav
        self.dir = Path(workdir)
        self.port = port
        self.conf_path = None
        self.out_path = self.dir / ("broker-%d.out" % id(self))
        self.stopped = False
        self.returncode = None
        if conf_text is not None:
            if keep_root:
                conf_text = root_kept(conf_text)
            self.conf_path = self.dir / "broker.conf"
            self.conf_path.write_text(conf_text)
            cmd = [binary, "-c", str(self.conf_path)]
        else:
            cmd = [binary]
        cmd += list(args or [])
        self.cmd = cmd
        self._out = open(self.out_path, "wb")
        full_env = None
        if env:
            full_env = dict(os.environ)
            full_env.update(env)
        preexec = None
        if nofile is not None or memlock is not None or uid is not None:
            def preexec():
                if nofile is not None:
                    resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))
                if memlock is not None:
                    resource.setrlimit(resource.RLIMIT_MEMLOCK, memlock)
                if uid is not None:
                    os.setgroups([])
                    os.setgid(uid)
                    os.setuid(uid)
        self.proc = subprocess.Popen(cmd, stdout=self._out, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, cwd=str(self.dir),
                                     env=full_env, preexec_fn=preexec)
        self.pid = self.proc.pid
        if wait_port and port is not None:
            try:
                self.wait_listening()
            except BaseException:
                self.stop()
                raise

    def wait_listening(self):
        deadline = time.monotonic() + START_TIMEOUT_S
        while not listening(self.port):
            if self.proc.poll() is not None:
                raise AssertionError("broker exited with %s before listening:\n%s"
                                     % (self.proc.returncode, self.output()))
            if time.monotonic() > deadline:
                raise AssertionError("broker not listening on %d after %.0fs:\n%s"
                                     % (self.port, START_TIMEOUT_S, self.output()))
            time.sleep(0.01)

    def output(self):
        """Everything the broker printed so far."""
        try:
            return self.out_path.read_text(errors="replace")
        except OSError:
            return ""

    def wait_output(self, pattern, timeout=5.0, text=None, since=0):
        """Waits until the output (from offset `since`, see mark()) matches
        regex `pattern`; returns the match."""
        def check():
            return re.search(pattern, (text() if text else self.output())[since:], re.M)
        return wait_for(check, timeout, what="broker output /%s/" % pattern)

    def mark(self):
        """The current end of the output: `since` for a later wait."""
        return len(self.output())

    # The line each broker logs once a SIGHUP reload is in force: kite's
    # "Reloaded configuration from FILE." comes after every shard switched;
    # Mosquitto 2.0.11 logs "Reloading config." and then reloads in the
    # same turn of its single-threaded loop, before reading any socket.
    RELOADED = r"Reloaded configuration from |Reloading config\."

    def reload(self, timeout=5.0):
        """Sends SIGHUP and waits until the new configuration is in force."""
        since = self.mark()
        self.send_signal(signal.SIGHUP)
        return self.wait_output(self.RELOADED, timeout, since=since)

    def wait_client_gone(self, client_id, since=0, timeout=5.0):
        """Waits for the log line saying the broker has closed client_id's
        connection, or seen it closed (connection_messages, on by
        default): kite's "Client ID PEER disconnected: REASON", Mosquitto's
        "Client ID disconnected." / "Client ID closed its connection." /
        "Client ID has exceeded timeout, disconnecting."."""
        return self.wait_output(
            r"Client %s (\S+ )?(disconnected|closed its connection|has exceeded timeout)"
            % re.escape(client_id), timeout, since=since)

    def alive(self):
        return self.proc.poll() is None

    def send_signal(self, sig):
        self.proc.send_signal(sig)

    def stop(self, sig=signal.SIGTERM, timeout=STOP_TIMEOUT_S):
        """Sends sig, waits, SIGKILLs after the bound. Returns the exit
        status (negative: killed by that signal)."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                self.returncode = "hung after %s, SIGKILLed" % signal.Signals(sig).name
                self.stopped = True
                self._out.close()
                return self.returncode
        self.stopped = True
        self.returncode = self.proc.returncode
        self._out.close()
        self.wait_port_released()
        return self.returncode

    def wait_port_released(self, timeout=2.0):
        """A killed io_uring process's listening sockets outlive it for a
        few milliseconds (the kernel tears its rings down afterwards): a
        client connecting then is reset. A restart test waits them out,
        as a supervisor restarting a crashed broker effectively does."""
        if self.port is None:
            return
        deadline = time.monotonic() + timeout
        while listening(self.port) and time.monotonic() < deadline:
            time.sleep(0.005)


def run_cmd(cmd, timeout=10, **kw):
    """Runs a short-lived command; returns CompletedProcess (text). The
    broker's own runs (config checks, refused starts, its subcommands)
    must end without a sanitizer report."""
    r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       stdin=subprocess.DEVNULL, timeout=timeout, text=True, **kw)
    if cmd and str(cmd[0]) == str(broker_bin()):
        assert_no_sanitizer_report((r.stdout or "") + (r.stderr or ""))
    return r


def keepalive_close_window(flav, keepalive_s):
    """(earliest, latest) seconds after the client's last packet at which
    the broker may close it for keepalive. The spec says 1.5 x keepalive.
    Mosquitto 2.0.11 is late: with keepalive 1..3 it closes after 5-6 s
    (its keepalive check is coarse), so its bound is wider."""
    earliest = 1.0 * keepalive_s
    if flav == "mosquitto":
        return earliest, 1.5 * keepalive_s + 8.0
    return earliest, 1.5 * keepalive_s + 2.0
