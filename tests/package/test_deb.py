"""The Debian package (`make deb`): what it holds, its unit and maintainer
scripts, lintian, and install / start / reload / log rotation / restart /
remove / purge under a real systemd (PID 1 of a throwaway container over
an overlay of this machine's root, container.py).

Run by `make deb-test` (part of `make test`). Skipped, with the reason,
where dpkg-deb or lintian are missing (`sh tools/deps.sh deb`), and the
systemd part where namespaces cannot be made (not root). What it cannot
cover: a real boot (ordering after network-online.target), upgrades from
an older kite package (there is none yet), and kernels other than this
machine's.
"""
import glob
import os
import re
import shutil
import subprocess
import time

import pytest

from container import Container, unavailable

TOP = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
BUILD = os.environ.get("BUILD", os.path.join(TOP, "build"))
VERSION = os.environ.get("VERSION") or re.search(
    r'#define KITE_VERSION "([^"]+)"',
    open(os.path.join(TOP, "io/version.h")).read()).group(1)

for tool in ("dpkg-deb", "dpkg-buildpackage", "lintian"):
    if not shutil.which(tool):
        pytest.skip(f"{tool} missing (sh tools/deps.sh deb)",
                    allow_module_level=True)


def sh(cmd, **kw):
    return subprocess.run(cmd, shell=True, capture_output=True, text=True,
                          **kw)


@pytest.fixture(scope="module")
def deb():
    """Builds the package once for the module."""
    r = sh(f"make --no-print-directory deb BUILD={BUILD}", cwd=TOP)
    assert r.returncode == 0, r.stdout + r.stderr
    arch = sh("dpkg --print-architecture").stdout.strip()
    path = os.path.join(BUILD, f"kite_{VERSION}_{arch}.deb")
    assert os.path.exists(path), r.stdout
    return path


@pytest.fixture(scope="module")
def tree(deb, tmp_path_factory):
    """The package's files, unpacked."""
    d = tmp_path_factory.mktemp("deb")
    subprocess.run(["dpkg-deb", "-x", deb, str(d)], check=True)
    subprocess.run(["dpkg-deb", "-e", deb, str(d / "DEBIAN")], check=True)
    return d


# ---- static checks ---------------------------------------------------------

def test_contents(deb):
    out = sh(f"dpkg-deb -c {deb}").stdout
    files = {line.split()[-1].lstrip(".") for line in out.splitlines()}
    for f in ("/usr/sbin/kite", "/lib/systemd/system/kite.service",
              "/etc/kite/kite.conf", "/etc/kite/conf.d/README",
              "/etc/logrotate.d/kite",
              "/usr/share/man/man8/kite.8.gz",
              "/usr/share/man/man5/kite.conf.5.gz",
              "/usr/share/man/man1/kite-cert.1.gz",
              "/usr/share/man/man1/kite-passwd.1.gz",
              "/usr/share/doc/kite/copyright",
              "/usr/share/doc/kite/changelog.gz",
              "/usr/share/doc/kite/examples/mosquitto.conf.override"):
        assert f in files, f
    # Nothing outside the expected places (no /usr/local, no /var, no /run).
    for f in files:
        assert re.match(r"^/(etc/(kite|logrotate\.d)|lib/systemd/system|"
                        r"usr/(sbin|share/(man|doc))|$|etc/$|lib/|usr/|"
                        r"usr/share/$)", f), f
    assert re.search(r"-rwxr-xr-x root/root .* \./usr/sbin/kite$", out, re.M)


def test_control(deb):
    info = sh(f"dpkg-deb -I {deb}").stdout
    assert f"Version: {VERSION}" in info
    assert "Package: kite" in info
    depends = re.search(r"^ Depends: (.*)$", info, re.M).group(1)
    for lib in ("adduser", "libsystemd0", "liburing2", "libssl3", "libbpf1"):
        assert lib in depends, depends
    conffiles = sh(f"dpkg-deb -I {deb} conffiles").stdout.split()
    assert sorted(conffiles) == ["/etc/kite/conf.d/README",
                                 "/etc/kite/kite.conf",
                                 "/etc/logrotate.d/kite"]
    for script in ("postinst", "prerm", "postrm"):
        assert re.search(rf"\b{script}\b", info), script


def test_binary_matches_version(tree):
    r = subprocess.run([str(tree / "usr/sbin/kite"), "--version"],
                       capture_output=True, text=True)
    assert r.stdout.strip() == f"kite version {VERSION}"


def test_hardened_binary(tree):
    # dpkg-buildflags' hardening=+all: PIE, full relro, fortified calls.
    r = sh(f"readelf -h -d -W {tree}/usr/sbin/kite")
    assert "DYN (Position-Independent Executable" in r.stdout
    assert "BIND_NOW" in r.stdout or "(FLAGS)" in r.stdout
    syms = sh(f"readelf --dyn-syms -W {tree}/usr/sbin/kite").stdout
    assert "_chk@" in syms


def test_maintainer_scripts(tree):
    d = tree / "DEBIAN"
    postinst = (d / "postinst").read_text()
    postrm = (d / "postrm").read_text()
    prerm = (d / "prerm").read_text()
    assert "adduser --system" in postinst
    assert "deb-systemd-helper enable 'kite.service'" in postinst
    assert "deb-systemd-invoke $_dh_action 'kite.service'" in postinst
    assert "deb-systemd-invoke stop 'kite.service'" in prerm
    purge = postrm[postrm.index('if [ "$1" = purge ]'):]
    for path in ("/etc/kite", "/var/lib/kite", "/var/log/kite"):
        assert path in purge
    assert "deluser --system" in purge
    for s in ("postinst", "prerm", "postrm"):
        r = sh(f"sh -n {d / s}")
        assert r.returncode == 0, (s, r.stderr)


def test_unit(tree):
    unit = (tree / "lib/systemd/system/kite.service").read_text()
    keys = {}
    for line in unit.splitlines():
        if "=" in line and not line.startswith("#"):
            k, v = line.split("=", 1)
            keys.setdefault(k, []).append(v)
    assert keys["Type"] == ["notify"]
    assert keys["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    assert keys["User"] == ["kite"]
    caps = "CAP_NET_BIND_SERVICE CAP_BPF CAP_NET_ADMIN CAP_PERFMON"
    assert keys["CapabilityBoundingSet"] == [caps]
    assert keys["AmbientCapabilities"] == [caps]
    assert keys["ProtectSystem"] == ["strict"]
    assert keys["RestrictAddressFamilies"] == [
        "AF_INET AF_INET6 AF_UNIX AF_NETLINK"]
    # io_uring: the filter's groups must include @aio's three calls.
    groups = keys["SystemCallFilter"][0].split()
    listed = sh("systemd-analyze syscall-filter --no-pager "
                + " ".join(g for g in groups if g.startswith("@"))).stdout
    for call in ("io_uring_setup", "io_uring_enter", "io_uring_register"):
        assert re.search(rf"^\s+{call}$", listed, re.M) or "@aio" in listed, call
    aio = sh("systemd-analyze syscall-filter @aio --no-pager").stdout
    for call in ("io_uring_setup", "io_uring_enter", "io_uring_register"):
        assert call in aio
    assert "@aio" in sh("systemd-analyze syscall-filter @system-service "
                        "--no-pager").stdout


def test_man_pages(tree):
    for page in glob.glob(str(tree / "usr/share/man/man*/*.gz")):
        r = sh(f"LC_ALL=C.UTF-8 MANROFFSEQ='' man --warnings -E UTF-8 -l "
               f"-Tutf8 -Z {page} >/dev/null")
        assert r.returncode == 0 and not r.stderr.strip(), (page, r.stderr)


def test_man_page_lists_every_option(tree):
    """kite.conf(5) names every option core/config.c accepts or refuses."""
    src = open(os.path.join(TOP, "core/config.c")).read()
    # The option tables: handlers, typed options, bridge options.
    accepted = set(re.findall(r'\{"([a-z0-9_.]+)", b?opt_', src))
    accepted |= set(re.findall(r'\bOPT_[A-Z]+\("([a-z0-9_.]+)"', src))
    only = src[src.index("mosquitto_only_options[] = {"):]
    refused = re.findall(r'"([a-z0-9_.]+)"', only[:only.index("};")])
    man = sh(f"zcat {tree}/usr/share/man/man5/kite.conf.5.gz").stdout
    man = man.replace("\\-", "-")
    assert len(accepted) > 100, sorted(accepted)
    for name in sorted(accepted):
        assert re.search(rf"\b{re.escape(name)}\b", man), name
    for name in refused:
        assert re.search(rf"\b{re.escape(name)}\b", man), name


def test_lintian(deb):
    r = sh(f"lintian --fail-on error,warning --tag-display-limit 0 {deb}")
    tags = [l for l in r.stdout.splitlines() if re.match(r"^[EW]: ", l)]
    assert r.returncode == 0 and not tags, r.stdout + r.stderr


def test_help_of_every_command(tree):
    kite = str(tree / "usr/sbin/kite")
    top = subprocess.run([kite, "--help"], capture_output=True, text=True)
    assert top.returncode == 0
    for cmd in ("cert", "passwd", "filter", "db"):
        assert re.search(rf"^ {cmd}\s+: ", top.stdout, re.M), cmd
        r = subprocess.run([kite, cmd, "--help"], capture_output=True,
                           text=True)
        assert r.returncode == 0 and "Usage" in r.stdout, (cmd, r)


def test_logrotate_config(tree):
    if not shutil.which("logrotate"):
        pytest.skip("logrotate missing")
    conf = (tree / "etc/logrotate.d/kite").read_text()
    assert "systemctl reload kite.service" in conf
    # -d: parse and plan only; this machine has no kite user (the
    # container test below rotates for real).
    copy = tree / "logrotate-root"
    copy.write_text(conf.replace(" kite kite", " root root"))
    r = sh(f"logrotate -d -s {tree}/logrotate.state {copy}")
    assert "error" not in (r.stdout + r.stderr).lower(), r.stdout + r.stderr


# ---- under systemd ---------------------------------------------------------

@pytest.fixture(scope="module")
def box(deb):
    why = unavailable()
    if why:
        pytest.skip("no systemd container: " + why)
    c = Container()
    try:
        c.start()
    except (RuntimeError, OSError) as e:
        pytest.skip(f"no systemd container: {e}")
    # This image refuses service starts (docker's policy-rc.d): a real
    # Debian machine has none.
    c.run("rm -f /usr/sbin/policy-rc.d")
    c.put(open(deb, "rb").read(), "/var/tmp/kite.deb")
    yield c
    c.stop()


def mainpid(c):
    return c.run("systemctl show -p MainPID --value kite").stdout.strip()


def wait_for(c, cmd, timeout=10):
    deadline = time.monotonic() + timeout
    while True:
        r = c.run(cmd, check=False)
        if r.returncode == 0:
            return r
        assert time.monotonic() < deadline, (cmd, r.stdout, r.stderr)
        time.sleep(0.1)


def test_system_install_and_serve(box):
    r = box.run("dpkg -i /var/tmp/kite.deb")
    assert "Setting up kite" in r.stdout
    assert box.run("id -u kite").stdout.strip()
    st = box.run("stat -c '%U:%G %a' /var/lib/kite /var/log/kite").stdout
    assert st.split("\n")[:2] == ["kite:kite 750", "kite:kite 750"]
    assert box.run("systemctl is-enabled kite").stdout.strip() == "enabled"
    # Type=notify: active means kite said READY=1 after opening its ports.
    assert box.run("systemctl is-active kite").stdout.strip() == "active"
    assert "(READY=1)" in box.journal("-u kite")
    pid = mainpid(box)
    assert box.run(f"stat -c %U /proc/{pid}").stdout.strip() == "kite"
    status = box.run(f"cat /proc/{pid}/status").stdout
    # CAP_NET_BIND_SERVICE(10) CAP_NET_ADMIN(12) CAP_PERFMON(38) CAP_BPF(39)
    want = (1 << 10) | (1 << 12) | (1 << 38) | (1 << 39)
    for field in ("CapEff", "CapBnd", "CapAmb"):
        got = int(re.search(rf"^{field}:\s+(\w+)", status, re.M).group(1), 16)
        assert got == want, (field, hex(got))
    assert re.search(r"^NoNewPrivs:\s+1", status, re.M)
    assert re.search(r"^Seccomp:\s+2", status, re.M)
    # io_uring under the syscall filter: a message through the broker.
    box.run("mosquitto_pub -h 127.0.0.1 -t pkg/test -m kept -r -q 1")
    r = box.run("mosquitto_sub -h 127.0.0.1 -t pkg/test -C 1 -W 5")
    assert r.stdout.strip() == "kept"
    log = box.run("cat /var/log/kite/kite.log").stdout
    assert "Opening listen socket on 127.0.0.1:1883" in log
    # ProtectSystem=strict: in kite's mount namespace /etc is read-only,
    # its state directory is not.
    r = box.run(f"nsenter -t {pid} -m -r touch /etc/kite-probe", check=False)
    assert r.returncode != 0 and "Read-only" in r.stderr, r.stderr
    box.run(f"nsenter -t {pid} -m -r sh -c 'touch /var/lib/kite/probe && "
            "rm /var/lib/kite/probe'")


def test_systemd_analyze(box):
    r = box.run("systemd-analyze verify kite.service", check=False)
    assert r.returncode == 0 and not r.stderr.strip(), r.stderr
    r = box.run("systemd-analyze security --no-pager kite.service",
                check=False)
    m = re.search(r"Overall exposure level for kite.service: ([\d.]+)",
                  r.stdout)
    assert m, r.stdout + r.stderr
    assert float(m.group(1)) <= 3.0, r.stdout
    print(r.stdout)


def test_reload(box):
    pid = mainpid(box)
    box.put(b"log_type all\n", "/etc/kite/conf.d/debug.conf")
    box.run("systemctl reload kite")
    wait_for(box, "grep -q 'Reloaded configuration from /etc/kite/kite.conf' "
             "/var/log/kite/kite.log")
    assert mainpid(box) == pid
    wait_for(box, "journalctl -u kite --no-pager | grep -q 'RELOADING=1'")
    j = box.journal("-u kite")
    after = j[j.index("RELOADING=1"):]
    assert "(READY=1)" in after, after[-2000:]
    # A broken file: the reload is refused, kite keeps serving.
    box.put(b"no_such_option 1\n", "/etc/kite/conf.d/broken.conf")
    box.run("systemctl reload kite")
    # With its file, line and reason, in the broker's own log.
    wait_for(box, "grep -q \"Reload failed: /etc/kite/conf.d/broken.conf:1: "
             "unknown option 'no_such_option'\" /var/log/kite/kite.log")
    assert box.run("systemctl is-active kite").stdout.strip() == "active"
    assert mainpid(box) == pid
    box.run("rm /etc/kite/conf.d/broken.conf /etc/kite/conf.d/debug.conf")


def test_logrotate_reopens(box):
    box.run("logrotate -f -s /var/tmp/logrotate.state /etc/logrotate.d/kite")
    assert box.run("test -s /var/log/kite/kite.log.1", check=False).returncode == 0
    # postrotate reloaded kite, which reopened kite.log and wrote there.
    wait_for(box, "grep -q 'Reloaded configuration' /var/log/kite/kite.log")
    st = box.run("stat -c '%U:%G %a' /var/log/kite/kite.log").stdout.strip()
    assert st == "kite:kite 640"


def test_restart_keeps_retained(box):
    pid = mainpid(box)
    box.run("systemctl restart kite")
    assert mainpid(box) != pid
    assert "STOPPING=1" in box.journal("-u kite")
    r = box.run("mosquitto_sub -h 127.0.0.1 -t pkg/test -C 1 -W 5")
    assert r.stdout.strip() == "kept"


def test_flood_filter_loads(box):
    """The unit's capabilities are enough to load and attach the XDP filter
    (pins are not possible for the kite user: a warning)."""
    if not os.path.exists("/sys/kernel/btf/vmlinux"):
        pytest.skip("no kernel BTF")
    box.put(b"listener 1883 127.0.0.1\nallow_anonymous true\n"
            b"flood_filter_interface lo\nflood_filter_required true\n",
            "/etc/kite/conf.d/flood.conf")
    try:
        box.run("systemctl restart kite")
        assert box.run("systemctl is-active kite").stdout.strip() == "active"
        log = box.run("cat /var/log/kite/kite.log").stdout
        assert "Flood filter attached (XDP) on 1 interface(s)" in log
        assert "maps not pinned" in log
        r = box.run("mosquitto_sub -h 127.0.0.1 -t pkg/test -C 1 -W 5")
        assert r.stdout.strip() == "kept"
    finally:
        box.run("rm -f /etc/kite/conf.d/flood.conf; systemctl restart kite")


def test_remove_then_purge(box):
    box.run("dpkg -r kite")
    assert box.run("systemctl is-active kite", check=False).stdout.strip() \
        in ("inactive", "unknown")
    # remove keeps configuration, data, logs and the user.
    box.run("test -f /etc/kite/kite.conf && test -d /var/lib/kite/mosquitto.db.kite "
            "&& test -f /var/log/kite/kite.log && id kite")
    assert box.run("test -e /usr/sbin/kite", check=False).returncode != 0
    box.run("dpkg -P kite")
    for path in ("/etc/kite", "/var/lib/kite", "/var/log/kite",
                 "/etc/systemd/system/multi-user.target.wants/kite.service"):
        assert box.run(f"test -e {path}", check=False).returncode != 0, path
    assert box.run("id kite", check=False).returncode != 0
    assert box.run("getent group kite", check=False).returncode != 0
