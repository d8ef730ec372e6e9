#!/usr/bin/python3
"""Mosquitto 2.0.11's own broker test suite (test/broker/*.py) against a
broker: kite by default, or Mosquitto to check the suite itself.

    run.py [--broker PATH] [--timeout S] [--port N] [TEST ...]

Prepares once (again when the tarball or this script changes), under
BUILD/mosquitto-suite/prepared/: unpacks ../shared/anchors/mosquitto-2.0.11-
test.tar.gz, regenerates the expired test certificates with its own
test/ssl/gen.sh, links lib/libmosquitto.so.1 to Debian's library and
plugins/dynamic-security/ to Debian's plugin, builds test/broker/c (plugins
against the tarball's include/, PSK clients against that library).

Each run copies that tree to BUILD/mosquitto-suite/NAME/jN/ (NAME: the
broker's file name; one copy per job, --jobs), links src/mosquitto (the path
the tests start) to the broker and runs every test/broker/NN-*.py, in
test/broker, with ports given as arguments (as upstream's test.py does:
PORT.. for job 0, PORT+10.. for job 1, ...), in a process group of its own
that is killed afterwards, with a timeout. A job runs one test at a time;
the jobs share nothing (own copy, own ports), and the longest tests start
first. Output per test: PASS|FAIL|SKIP name (...), then a count. The test's
output is kept in NAME/logs/TEST.log.

Mosquitto started as root drops to user "mosquitto": for it (when run as
root) the copy is owned by that user and the tests run as that user, so it
stays the user that wrote the files and can read and write them.

skip.txt lists tests that cannot pass here, or need what kite lacks on
purpose, with the reason and the brokers it applies to: SKIP, not run
(--no-skip runs them anyway). The exit status is 1 if a test fails that must
pass: for kite, one listed in expected-pass.txt (the floor, which only goes
up); for Mosquitto, any test not skipped.
"""

import argparse
import fcntl
import fnmatch
import hashlib
import os
import pwd
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
TOP = "mosquitto-2.0.11"
LIBMOSQ = "/usr/lib/x86_64-linux-gnu/libmosquitto.so.1"
DYNSEC = "/usr/lib/x86_64-linux-gnu/mosquitto_dynamic_security.so"
PYTHON = "/usr/bin/python3"
# Bump when preparation changes in a way the stamp would not see.
PREP_VERSION = "1"
# Tests that take longer than --timeout on a good day (Mosquitto: 130 s, six
# bridge reconnections of 20 s each).
TIMEOUTS = {"06-bridge-clean-session.py": 240.0}
# Ports of job N start at PORT + N * PORT_STRIDE (a test uses up to 3).
PORT_STRIDE = 10
# RLIMIT_MEMLOCK of the tests run as a user, and so of their brokers.
SUITE_MEMLOCK = 64 << 20
# How much of a failed test's log is printed (the rest stays in logs/).
LOG_TAIL_LINES = 60
# Run alone, after the parallel part: tests that lose kite's cross-shard
# race (docs/MOSQUITTO-SUITE.md) when other tests load the CPUs: a client
# publishes (or closes) and at once another connects, on the other shard,
# which gets there first. Seen with --jobs 3 on 2 cores: 2 runs of 3
# (04-...-diff-port), 1 of 3 (11-subscription-id).
ALONE = {"04-retain-check-source-persist-diff-port.py", "11-subscription-id.py",
         "03-publish-qos1-max-inflight-expire.py"}


def log(msg):
    print(msg, flush=True)


def test_log(logdir, name):
    """Where test `name`'s output is kept."""
    return os.path.join(logdir, name.replace(".py", ".log"))


def log_tail(path, lines):
    """The last lines of a test's log, indented as a quote."""
    try:
        with open(path, errors="replace") as f:
            tail = f.read().splitlines()[-lines:]
    except OSError as e:
        return "    (no log: %s)" % e
    return "\n".join("    | " + line for line in tail)


def sh(cmd, cwd, logf, env=None):
    with open(logf, "a") as f:
        f.write("$ %s  (in %s)\n" % (" ".join(cmd), cwd))
        f.flush()
        return subprocess.call(cmd, cwd=cwd, stdout=f, stderr=subprocess.STDOUT,
                               env=env)


def file_hash(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def prepare(tarball, out):
    """The pristine tree with certificates and test programs, built once."""
    prep = os.path.join(out, "prepared")
    stamp = os.path.join(prep, "stamp")
    want = "%s %s %s\n" % (file_hash(tarball), file_hash(os.path.abspath(__file__)),
                           PREP_VERSION)
    try:
        with open(stamp) as f:
            if f.read() == want:
                return os.path.join(prep, TOP)
    except OSError:
        pass
    log("mosquitto-suite: preparing %s (unpack, certificates, test plugins)" % prep)
    shutil.rmtree(prep, ignore_errors=True)
    os.makedirs(prep)
    plog = os.path.join(prep, "prepare.log")
    if sh(["tar", "-xzf", tarball], prep, plog) != 0:
        sys.exit("mosquitto-suite: cannot unpack %s (see %s)" % (tarball, plog))
    top = os.path.join(prep, TOP)
    # The 2021 certificates have expired: the suite's own script, unchanged,
    # in its own directory (it writes there; our copy is writable).
    if sh(["sh", "./gen.sh"], os.path.join(top, "test", "ssl"), plog) != 0:
        sys.exit("mosquitto-suite: test/ssl/gen.sh failed (see %s)" % plog)
    # What the tests expect next to the broker's source: the client library
    # (test/broker/c links ../../../lib/libmosquitto.so.1 and runs with
    # LD_LIBRARY_PATH=../../lib) and the dynamic security plugin
    # (../../plugins/dynamic-security/mosquitto_dynamic_security.so):
    # Debian's, same version 2.0.11.
    os.makedirs(os.path.join(top, "lib"))
    if os.path.exists(LIBMOSQ):
        os.symlink(LIBMOSQ, os.path.join(top, "lib", "libmosquitto.so.1"))
    os.makedirs(os.path.join(top, "plugins", "dynamic-security"))
    if os.path.exists(DYNSEC):
        os.symlink(DYNSEC, os.path.join(top, "plugins", "dynamic-security",
                                        "mosquitto_dynamic_security.so"))
    os.makedirs(os.path.join(top, "src"))
    # Plugins and PSK clients, upstream's Makefile; -k: one that does not
    # build skips only the tests that need it.
    sh(["nice", "-n", "10", "make", "-k", "-C", "test/broker/c"], top, plog)
    with open(stamp, "w") as f:
        f.write(want)
    return top


def read_list(path):
    """Lines without comments; each split into words."""
    rows = []
    if not path:
        return rows
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line and not line.startswith("#"):
                rows.append(line.split(None, 2))
    return rows


def ports_needed(text):
    ns = [int(n) for n in re.findall(r"get_port\((\d)\)", text)]
    return max(ns) if ns else 1


def missing_deps(text, broker_dir):
    """Files the test runs that preparation could not provide."""
    miss = []
    for m in sorted(set(re.findall(r"['\"](c/[\w.-]+\.(?:so|test))['\"]", text))):
        if not os.path.exists(os.path.join(broker_dir, m)):
            miss.append(m)
    for m in sorted(set(re.findall(r"(\.\./\.\./plugins/[\w./-]+\.so)", text))):
        if not os.path.exists(os.path.join(broker_dir, m)):
            miss.append(m)
    return miss


def port_free(port):
    for fam, addr in ((socket.AF_INET, "0.0.0.0"), (socket.AF_INET6, "::")):
        s = socket.socket(fam, socket.SOCK_STREAM)
        try:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind((addr, port))
        except OSError as e:
            if e.errno != 97:  # EAFNOSUPPORT: no IPv6 here
                return False
        finally:
            s.close()
    return True


def procs_under(root):
    """Pids of processes whose working directory is in root (ours: tests,
    brokers and clients they started, even if they left the group)."""
    pids = []
    for d in os.listdir("/proc"):
        if not d.isdigit() or int(d) == os.getpid():
            continue
        try:
            cwd = os.readlink("/proc/%s/cwd" % d)
        except OSError:
            continue
        if cwd == root or cwd.startswith(root + "/"):
            pids.append(int(d))
    return pids


def kill_leftovers(proc, root):
    """The test's process group, then anything still working in our copy."""
    pgid = proc.pid

    def alive():
        proc.poll()  # reap the test itself: a zombie still holds its group
        left = set(procs_under(root))
        try:
            os.killpg(pgid, 0)
            left.add(-pgid)
        except ProcessLookupError:
            pass
        return left

    killed = []
    for sig, wait in ((signal.SIGTERM, 3.0), (signal.SIGKILL, 3.0)):
        left = alive()
        if not left:
            break
        for p in left:
            try:
                if p < 0:
                    os.killpg(-p, sig)
                else:
                    os.kill(p, sig)
                    if sig == signal.SIGTERM:
                        killed.append(p)
            except ProcessLookupError:
                pass
        end = time.time() + wait
        while time.time() < end and alive():
            time.sleep(0.05)
    return killed


def raise_memlock():
    """The jobs' brokers are all one user's, and kernels that charge
    io_uring rings to locked memory (about 0.5 MiB a shard) count them
    against one budget, 8 MiB by default, which a deployment's one broker
    does not share. Raised where root may (CAP_SYS_RESOURCE); where it may
    not, a broker short of it runs fewer shards (kite logs why)."""
    try:
        resource.setrlimit(resource.RLIMIT_MEMLOCK, (SUITE_MEMLOCK, SUITE_MEMLOCK))
    except (ValueError, OSError):
        pass


def has_user(name):
    try:
        pwd.getpwnam(name)
        return True
    except KeyError:
        return False


def run_test(name, ports, broker_dir, root, logdir, timeout, user):
    cmd = [PYTHON, "./" + name] + [str(p) for p in ports]
    env = dict(os.environ)
    env.pop("MOSQ_USE_VALGRIND", None)
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    env["PYTHONUNBUFFERED"] = "1"
    if user:
        pw = pwd.getpwnam(user)
        cmd = ["setpriv", "--reuid=%d" % pw.pw_uid, "--regid=%d" % pw.pw_gid,
               "--init-groups", "--"] + cmd
        env["HOME"] = broker_dir
    logf = test_log(logdir, name)
    start = time.time()
    with open(logf, "w") as f:
        f.write("$ %s  (in %s)\n" % (" ".join(cmd), broker_dir))
        f.flush()
        p = subprocess.Popen(cmd, cwd=broker_dir, env=env, stdin=subprocess.DEVNULL,
                             stdout=f, stderr=subprocess.STDOUT, start_new_session=True,
                             preexec_fn=raise_memlock if user else None)
        timed_out = False
        try:
            rc = p.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
            rc = None
        killed = kill_leftovers(p, root)
        if rc is None:
            rc = p.wait()
        took = time.time() - start
        f.write("\n--- exit %s%s after %.1fs\n" % (rc, " (timeout)" if timed_out else "", took))
        if killed:
            f.write("--- killed leftover processes: %s\n" % killed)
    # The next test needs these ports: wait for them (a broker killed late).
    end = time.time() + 10
    while time.time() < end and not all(port_free(q) for q in ports):
        time.sleep(0.1)
    return rc, timed_out, took, logf


def tarball_candidates():
    name = TOP + "-test.tar.gz"
    c = []
    if os.environ.get("MOSQ_SUITE_TARBALL"):
        c.append(os.environ["MOSQ_SUITE_TARBALL"])
    d = REPO
    for _ in range(3):  # ../shared, ../../shared, ../../../shared
        d = os.path.dirname(d)
        p = os.path.join(d, "shared", "anchors", name)
        if p not in c:
            c.append(p)
    return c


def find_tarball():
    for c in tarball_candidates():
        if os.path.isfile(c):
            return c
    return None


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--broker", default=os.path.join(REPO, "build", "kite"))
    ap.add_argument("--name", help="run directory name (default: broker file name)")
    ap.add_argument("--tarball", default=None,
                    help="the suite's tarball (default: $MOSQ_SUITE_TARBALL, "
                         "else ../shared/anchors/ beside the repository or "
                         "above it)")
    ap.add_argument("--out", default=os.path.join(REPO, "build", "mosquitto-suite"))
    ap.add_argument("--timeout", type=float, default=60.0, help="seconds per test")
    ap.add_argument("--port", type=int, default=1888, help="first port (tests use up to 3)")
    ap.add_argument("--jobs", type=int, default=1,
                    help="tests run at once, each job with its own copy and "
                         "ports (most of a test's time is waiting)")
    ap.add_argument("--floor", default=os.path.join(HERE, "expected-pass.txt"))
    ap.add_argument("--skip", default=os.path.join(HERE, "skip.txt"))
    ap.add_argument("--run-as", default="auto",
                    help="user for the tests: auto (mosquitto when run as root), "
                         "none, or a name")
    ap.add_argument("--no-skip", action="store_true", help="run the tests skip.txt lists too")
    ap.add_argument("--results", help="also write 'STATUS name' lines to this file")
    ap.add_argument("tests", nargs="*", help="test names or globs (default: all)")
    a = ap.parse_args()

    broker = os.path.realpath(a.broker)
    if not os.access(broker, os.X_OK):
        sys.exit("mosquitto-suite: no broker at %s (make all?)" % a.broker)
    name = a.name or os.path.basename(broker)
    flavour = "mosquitto" if os.path.basename(broker) == "mosquitto" else "kite"
    user = a.run_as
    if user == "auto":
        # kite, like Mosquitto, drops to user mosquitto when started as
        # root: both run the tests as that user so it owns their files.
        user = "mosquitto" if os.geteuid() == 0 and has_user("mosquitto") else None
    elif user == "none":
        user = None
    out = os.path.abspath(a.out)
    os.makedirs(out, exist_ok=True)

    # One run at a time on these ports (another worktree, another broker);
    # in ascending order, so two runs cannot each hold what the other waits
    # for.
    jobs = max(1, a.jobs)
    bases = [a.port + j * PORT_STRIDE for j in range(jobs)]
    locks = []
    for base in bases:
        lockpath = "/tmp/kite-mosquitto-suite-%d.lock" % base
        lockf = os.fdopen(os.open(lockpath, os.O_RDWR | os.O_CREAT, 0o666), "w")
        if os.fstat(lockf.fileno()).st_uid == os.geteuid():
            os.fchmod(lockf.fileno(), 0o666)  # whoever runs next may lock it too
        try:
            fcntl.flock(lockf, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log("mosquitto-suite: waiting for another run on ports %d.. to finish" % base)
            fcntl.flock(lockf, fcntl.LOCK_EX)
        locks.append(lockf)

    tarball = a.tarball or find_tarball()
    if not tarball:
        # Not part of this repository (EPL/EDL, kept beside it): without
        # it the suite cannot run, which is a skip, never a pass.
        log("mosquitto-suite: SKIP all: %s-test.tar.gz not found (set "
            "MOSQ_SUITE_TARBALL or --tarball; looked in %s)"
            % (TOP, ", ".join(tarball_candidates())))
        return 0
    prepared = prepare(os.path.abspath(tarball), out)

    root = os.path.join(out, name)
    shutil.rmtree(root, ignore_errors=True)
    os.makedirs(root)
    logdir = os.path.join(root, "logs")
    os.makedirs(logdir)
    # Job j's copy: only its own tests' processes work in it, so the kill
    # after a test (every process in the copy) never reaches another job's.
    jobdirs = [os.path.join(root, "j%d" % j) for j in range(jobs)]
    for jd in jobdirs:
        top = os.path.join(jd, TOP)
        shutil.copytree(prepared, top, symlinks=True)
        os.symlink(broker, os.path.join(top, "src", "mosquitto"))
    broker_dirs = [os.path.join(jd, TOP, "test", "broker") for jd in jobdirs]
    broker_dir = broker_dirs[0]
    if user:
        pw = pwd.getpwnam(user)
        for d, dirs, files in os.walk(root):
            for x in [d] + [os.path.join(d, y) for y in dirs + files]:
                os.lchown(x, pw.pw_uid, pw.pw_gid)
        for d in (out, root):
            os.chmod(d, os.stat(d).st_mode | 0o055)
        probe = ["setpriv", "--reuid=%d" % pw.pw_uid, "--regid=%d" % pw.pw_gid,
                 "--init-groups", "--", "test", "-w", broker_dir, "-a", "-x", broker]
        if subprocess.call(probe) != 0:
            sys.exit("mosquitto-suite: user %s cannot write %s or run %s (a parent "
                     "directory closed to it?)" % (user, broker_dir, broker))

    floor = {r[0] for r in read_list(a.floor)}
    skips = []
    for r in read_list(a.skip):
        if len(r) < 3:
            sys.exit("mosquitto-suite: %s: want 'TEST WHO REASON': %s" % (a.skip, r))
        skips.append(r)

    tests = sorted(t for t in os.listdir(broker_dir)
                   if re.match(r"\d\d-.*\.py$", t) and not t.endswith("-helper.py"))
    if a.tests:
        tests = [t for t in tests if any(fnmatch.fnmatch(t, g) or t == g + ".py"
                                         for g in a.tests)]
    for f in sorted(floor - set(os.listdir(broker_dir))):
        log("mosquitto-suite: %s lists %s, which the suite does not have" % (a.floor, f))

    log("mosquitto-suite: %s (%s) in %s, %d tests, ports %s, timeout %gs%s"
        % (broker, flavour, root, len(tests), ", ".join("%d.." % b for b in bases),
           a.timeout, ", as user " + user if user else ""))
    counts = {"PASS": 0, "FAIL": 0, "SKIP": 0}
    regressions = []
    results = []
    t0 = time.time()

    def judge(t, j):
        """Runs test t as job j: its status and what to say about it."""
        with open(os.path.join(broker_dirs[j], t)) as f:
            text = f.read()
        reason = None
        for pat, who, why in ([] if a.no_skip else skips):
            if fnmatch.fnmatch(t, pat) and who in ("all", flavour):
                reason = why
                break
        if reason is None:
            miss = missing_deps(text, broker_dirs[j])
            if miss:
                reason = "not built here: %s (see %s)" % (
                    ", ".join(miss), os.path.join(out, "prepared", "prepare.log"))
        must_pass = t in floor if flavour == "kite" else True
        if reason is not None:
            if flavour == "kite" and t in floor:
                return "SKIP", reason + "; but expected-pass.txt lists it", True
            return "SKIP", reason, False
        ports = list(range(bases[j], bases[j] + ports_needed(text)))
        timeout = max(a.timeout, TIMEOUTS.get(t, 0))
        rc, timed_out, took, logf = run_test(t, ports, broker_dirs[j], jobdirs[j],
                                             logdir, timeout, user)
        rel = os.path.relpath(logf, REPO) if logf.startswith(REPO) else logf
        if rc == 0:
            note = "%.1fs" % took
            if floor and t not in floor and flavour == "kite":
                note += "; new: add it to expected-pass.txt"
            return "PASS", note, False
        note = ("timeout after %gs" % timeout if timed_out
                else "exit %d, %.1fs" % (rc, took)) + "; " + rel
        if must_pass and flavour == "kite":
            note = "REGRESSION, in expected-pass.txt: " + note
        return "FAIL", note, must_pass

    # The longest first (those with a timeout of their own), so that none
    # of them is what the other jobs wait for at the end.
    queue = sorted((t for t in tests if jobs == 1 or t not in ALONE),
                   key=lambda t: (-TIMEOUTS.get(t, 0), t))
    alone = [t for t in tests if jobs > 1 and t in ALONE]
    mutex = threading.Lock()

    def job(j):
        while True:
            with mutex:
                if not queue:
                    return
                t = queue.pop(0)
            status, note, regression = judge(t, j)
            with mutex:
                counts[status] += 1
                results.append("%s %s" % (status, t))
                if regression:
                    regressions.append(t)
                log("%s %s (%s)" % (status, t, note))
                if regression:
                    # CI keeps only what is printed: the log's end says what
                    # the test received instead, and what the brokers logged.
                    log(log_tail(test_log(logdir, t), LOG_TAIL_LINES))

    threads = [threading.Thread(target=job, args=(j,)) for j in range(jobs)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    if alone:
        log("mosquitto-suite: alone: %s" % " ".join(alone))
        queue = alone
        job(0)
    results.sort(key=lambda r: r.split()[1])
    regressions.sort()

    total = sum(counts.values())
    log("mosquitto-suite: %d passed, %d failed, %d skipped of %d (%.0fs, %s)"
        % (counts["PASS"], counts["FAIL"], counts["SKIP"], total, time.time() - t0, name))
    if a.results:
        with open(a.results, "w") as f:
            f.write("\n".join(results) + "\n")
    with open(os.path.join(root, "results.txt"), "w") as f:
        f.write("\n".join(results) + "\n")
    if regressions:
        log("mosquitto-suite: expected to pass but did not: %s" % " ".join(regressions))
        return 1
    new = [r.split()[1] for r in results
           if r.startswith("PASS") and r.split()[1] not in floor]
    if flavour == "kite" and new:
        log("mosquitto-suite: passing now, not yet in %s: %s"
            % (os.path.relpath(a.floor, REPO), " ".join(new)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
