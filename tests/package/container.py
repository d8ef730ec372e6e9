"""A throwaway Debian 12 with systemd as PID 1, for the package tests.

The host's root file system is the lower layer of an overlay whose upper
layer is a temporary directory, so `dpkg -i`, users, /etc and /var changes
land there and vanish with it. systemd runs in new PID, mount, UTS, IPC,
network (only `lo`) and cgroup namespaces, under a cgroup of its own, and
boots `kite-test.target`, a target that only wants journald: none of the
host's enabled services start. systemd logs at debug level to the journal
(`journalctl` inside, `Container.journal()`).

What this cannot show: boot ordering (network-online.target and the rest
of a real boot), and anything that needs a kernel other than the host's.
"""
import os
import shutil
import signal
import subprocess
import tempfile
import time

INNER = r"""#!/bin/sh
set -e
W="$1"
R="$W/root"
mount -t overlay overlay -o "lowerdir=/,upperdir=$W/upper,workdir=$W/work" "$R"
mount -t proc proc "$R/proc"
mount --rbind /sys "$R/sys"
mount -t tmpfs -o mode=755 tmpfs "$R/sys/fs/cgroup"
mkdir "$R/sys/fs/cgroup/unified" "$R/sys/fs/cgroup/systemd"
mount -t cgroup2 cgroup2 "$R/sys/fs/cgroup/unified"
mount -t cgroup -o none,name=systemd cgroup "$R/sys/fs/cgroup/systemd"
mount -t tmpfs -o mode=755,nosuid tmpfs "$R/dev"
for d in null zero full random urandom tty; do
	touch "$R/dev/$d"
	mount --bind "/dev/$d" "$R/dev/$d"
done
mkdir "$R/dev/pts" "$R/dev/shm"
mount -t devpts -o newinstance,ptmxmode=0666 devpts "$R/dev/pts"
ln -s pts/ptmx "$R/dev/ptmx"
mount -t tmpfs tmpfs "$R/dev/shm"
touch "$R/dev/console"
mount --bind "$W/console.log" "$R/dev/console"
mount -t tmpfs -o mode=755 tmpfs "$R/run"
mount -t tmpfs -o mode=1777 tmpfs "$R/tmp"
ip link set lo up
exec chroot "$R" env container=kite-test /lib/systemd/systemd --system \
	--unit=kite-test.target --log-level=debug --log-target=journal-or-kmsg
"""

TARGET = """[Unit]
Description=kite package test target
Wants=systemd-journald.service
After=systemd-journald.service
"""


def unavailable():
    """Why the container cannot run here, or None."""
    if os.geteuid() != 0:
        return "needs root (namespaces, overlay mounts)"
    for tool in ("unshare", "nsenter", "chroot"):
        if not shutil.which(tool):
            return f"{tool} missing"
    if not os.path.exists("/lib/systemd/systemd"):
        return "systemd is not installed (apt-get install systemd)"
    if not os.path.isdir("/sys/fs/cgroup/systemd") and \
            not os.path.exists("/sys/fs/cgroup/cgroup.controllers"):
        return "no cgroup file system"
    return None


class Container:
    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="kite-pkgtest-")
        self.cg = []
        self.proc = None
        self.pid = None

    # -- lifetime ---------------------------------------------------------
    def start(self, timeout=30):
        for d in ("upper", "work", "root"):
            os.mkdir(os.path.join(self.dir, d))
        open(os.path.join(self.dir, "console.log"), "w").close()
        tdir = os.path.join(self.dir, "upper/etc/systemd/system")
        os.makedirs(tdir)
        with open(os.path.join(tdir, "kite-test.target"), "w") as f:
            f.write(TARGET)
        inner = os.path.join(self.dir, "inner.sh")
        with open(inner, "w") as f:
            f.write(INNER)
        os.chmod(inner, 0o755)
        # A cgroup of our own in each hierarchy systemd uses: the cgroup
        # namespace's root, removed at stop.
        name = os.path.basename(self.dir)
        for h in ("/sys/fs/cgroup/systemd", "/sys/fs/cgroup/unified",
                  "/sys/fs/cgroup"):
            if os.path.exists(os.path.join(h, "cgroup.procs")) and \
                    (h != "/sys/fs/cgroup" or not self.cg):
                p = os.path.join(h, name)
                os.mkdir(p)
                self.cg.append(p)
        procs = " ".join(f"echo $$ > {p}/cgroup.procs;" for p in self.cg)
        self.proc = subprocess.Popen(
            ["sh", "-c", procs + " exec unshare --pid --fork --mount --uts "
             "--ipc --net --cgroup --propagation private " + inner + " " +
             self.dir],
            stdout=open(os.path.join(self.dir, "inner.err"), "w"),
            stderr=subprocess.STDOUT,
            start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.pid = self._systemd_pid()
            if self.pid:
                r = self.run("systemctl is-system-running", check=False)
                if r.stdout.strip() in ("running", "degraded"):
                    return
            if self.proc.poll() is not None:
                break
            time.sleep(0.2)
        err = open(os.path.join(self.dir, "inner.err")).read()
        self.stop()
        raise RuntimeError("systemd did not boot in the container: " + err
                           + self.console()[-2000:])

    def _systemd_pid(self):
        # The unshare child (our inner.sh, exec'ed into systemd).
        try:
            out = subprocess.run(["pgrep", "-P", str(self.proc.pid)],
                                 capture_output=True, text=True).stdout
        except FileNotFoundError:
            return None
        for pid in out.split():
            try:
                if os.readlink(f"/proc/{pid}/exe").endswith("/systemd"):
                    return int(pid)
            except OSError:
                pass
        return None

    def stop(self):
        # SIGKILL to the namespace's PID 1 (systemd made its own session,
        # so not in our process group) kills everything inside; then
        # unshare and the shell.
        pid = self.pid or (self.proc and self._systemd_pid())
        if pid:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if self.proc and self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if self.proc:
            self.proc.wait()
        self.pid = None
        # Cgroups are empty once the namespace is gone; remove them deepest
        # first.
        for top in self.cg:
            for _ in range(50):
                try:
                    for root, dirs, _files in os.walk(top, topdown=False):
                        for d in dirs:
                            os.rmdir(os.path.join(root, d))
                    os.rmdir(top)
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    time.sleep(0.1)
        self.cg = []
        shutil.rmtree(self.dir, ignore_errors=True)

    # -- inside -----------------------------------------------------------
    def run(self, cmd, check=True, input=None, timeout=60):
        """Runs a shell command inside, as root; returns CompletedProcess."""
        r = subprocess.run(
            ["nsenter", "-t", str(self.pid), "-a", "-r", "-w",
             "/bin/sh", "-c", cmd],
            capture_output=True, text=input is None or isinstance(input, str),
            input=input, timeout=timeout)
        if check and r.returncode != 0:
            raise AssertionError(f"in container: {cmd!r} exited "
                                 f"{r.returncode}\n{r.stdout}\n{r.stderr}")
        return r

    def put(self, data, path):
        """Writes bytes to path inside."""
        r = subprocess.run(
            ["nsenter", "-t", str(self.pid), "-a", "-r", "-w",
             "/bin/sh", "-c", f"cat > '{path}'"], input=data,
            capture_output=True)
        assert r.returncode == 0, r.stderr

    def journal(self, args=""):
        return self.run("journalctl --no-pager -o short-monotonic " + args,
                        check=False).stdout

    def console(self):
        """systemd's log: /dev/console, or stderr where it chose that."""
        text = ""
        for name in ("console.log", "inner.err"):
            try:
                with open(os.path.join(self.dir, name), errors="replace") as f:
                    text += f.read()
            except OSError:
                pass
        return text
