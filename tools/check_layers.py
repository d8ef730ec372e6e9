#!/usr/bin/env python3
"""make check-layers: the include graph of the engine follows its layers.

docs/ENGINE.md ("Layers") gives the order of io/'s units, bottom first;
LAYERS below is the same order as data, and this script checks that the
document still says so. A file may include:
  - headers of its own unit and of any unit below it;
  - any types header (io/*-t.h), which holds no functions and includes
    nothing but other types headers and the lower modules;
  - the lower modules (core/, acl/, tls/, ws/, tools/, bpf/), which never
    include io/ (core/ includes only core/).
It fails on an include that goes up, on a file of io/ that belongs to no
unit (a new unit is placed in the order first), on any cycle in the
graph of files or of units, on a function that a unit's header
declares but another unit defines (each header is its own unit's whole
interface, so an include names whom a file calls), and on a function
of io/STEM.c not named STEM_* (handle_Y.c: handle_* or Y_*). Exit 0 when clean, 1
with one line per fault.
"""
import os
import re
import sys

# Bottom first. A unit is a name and the file stems (io/STEM.c, io/STEM.h)
# that make it up; a unit calls down, and up only through what the unit
# above registered with it.
LAYERS = [
    ("version", ["version"]),
    ("msg", ["msg"]),
    ("shard", ["shard"]),
    ("security", ["security"]),
    ("conn", ["conn", "ktls", "wsconn", "proxyconn"]),
    ("persist", ["persist"]),
    ("share", ["share"]),
    ("session", ["session"]),
    ("route", ["route"]),
    ("recover", ["recover"]),
    ("cluster", ["cluster"]),
    ("bridge", ["bridge"]),
    ("handle", ["handle", "handle_*"]),
    ("sys", ["sys"]),
    ("metrics", ["metrics"]),
    ("loop", ["loop"]),
    ("broker", ["broker"]),
    ("main", ["main"]),
]

# Modules below io/, and which of them each may include.
LOWER = {
    "core": {"core"},
    "acl": {"core", "acl"},
    "tls": {"core", "tls"},
    "ws": {"core", "ws"},
    "bpf": {"core", "bpf"},
    "tools": {"core", "acl", "tls", "ws", "tools"},
}

DOC = "docs/ENGINE.md"
INCLUDE = re.compile(r'^\s*#\s*include\s+"([^"]+)"', re.M)
# A prototype or a definition starts in column 0 (kernel style); struct
# members and statements are indented.
FUNC = re.compile(r'^(?!static\b|typedef\b|extern\b|struct \w+ \{|enum\b|union\b)'
                  r'[a-z][\w \*]*?\b([a-z_][a-z0-9_]*)\(([^;{]*?)\)\s*(;|\{|$)',
                  re.M | re.S)
COMMENT = re.compile(r'/\*.*?\*/', re.S)


def functions(text, want):
    """Names of the functions text declares (want ';') or defines
    (want '{': the body follows on the next line)."""
    text = COMMENT.sub("", text)
    out = set()
    for m in FUNC.finditer(text):
        end = m.group(3)
        if want == ";" and end == ";":
            out.add(m.group(1))
        elif want == "{" and end != ";":
            out.add(m.group(1))
    return out


def unit_of(stem):
    for rank, (name, stems) in enumerate(LAYERS):
        for s in stems:
            if s == stem or (s.endswith("*") and stem.startswith(s[:-1])):
                return rank, name
    return None, None


def resolve(root, src, inc):
    """The repository path an include names, or None (system, missing)."""
    for base in (os.path.dirname(src), ""):
        p = os.path.normpath(os.path.join(base, inc))
        if os.path.exists(os.path.join(root, p)):
            return p
    return None


def doc_order(root):
    """The order docs/ENGINE.md states: the line `Layers, bottom first:`
    followed by names separated by `<`."""
    try:
        text = open(os.path.join(root, DOC), encoding="utf-8").read()
    except OSError:
        return None
    m = re.search(r"Layers, bottom first:\s*`([^`]+)`", text)
    if not m:
        return None
    return [w.strip() for w in m.group(1).split("<")]


def find_cycle(graph):
    """One cycle of graph (node -> set of nodes) as a list, or None."""
    WHITE, GREY, BLACK = 0, 1, 2
    colour = {n: WHITE for n in graph}
    stack = []

    def visit(n):
        colour[n] = GREY
        stack.append(n)
        for m in sorted(graph.get(n, ())):
            if colour.get(m, WHITE) == GREY:
                return stack[stack.index(m):] + [m]
            if colour.get(m, WHITE) == WHITE:
                c = visit(m)
                if c:
                    return c
        stack.pop()
        colour[n] = BLACK
        return None

    for n in sorted(graph):
        if colour[n] == WHITE:
            c = visit(n)
            if c:
                return c
    return None


def check(root):
    faults = []
    files = []
    for d in ["io"] + sorted(LOWER):
        full = os.path.join(root, d)
        if not os.path.isdir(full):
            continue
        for f in sorted(os.listdir(full)):
            if f.endswith((".c", ".h")):
                files.append(f"{d}/{f}")

    names = [n for n, _ in LAYERS]
    stated = doc_order(root)
    if stated is None:
        faults.append(f"{DOC}: no line `Layers, bottom first: ...` "
                      "to check the order against")
    elif stated != names:
        faults.append(f"{DOC} says the layers are {' < '.join(stated)}; "
                      f"tools/check_layers.py says {' < '.join(names)}")

    file_graph = {f: set() for f in files}
    unit_graph = {n: set() for n in names}
    for src in files:
        d, base = src.split("/", 1)
        stem = base.rsplit(".", 1)[0]
        is_types = stem.endswith("-t")
        text = open(os.path.join(root, src), encoding="utf-8",
                    errors="replace").read()
        if d == "io" and not is_types:
            rank, unit = unit_of(stem)
            if rank is None:
                faults.append(f"{src}: in no unit of tools/check_layers.py "
                              "LAYERS (place it in the order)")
                continue
        for m in INCLUDE.finditer(text):
            inc = m.group(1)
            line = text.count("\n", 0, m.start()) + 1
            dst = resolve(root, src, inc)
            if dst is None:
                continue
            file_graph.setdefault(src, set()).add(dst)
            dd, dbase = dst.split("/", 1)
            dstem = dbase.rsplit(".", 1)[0]
            where = f"{src}:{line}: includes {dst}"
            if d in LOWER:
                if dd not in LOWER[d]:
                    faults.append(f"{where}: {d}/ may include only "
                                  f"{', '.join(sorted(LOWER[d]))}")
                continue
            if dd != "io":
                continue  # io/ may use every lower module
            if dstem.endswith("-t"):
                continue  # types: anyone, checked for cycles below
            if is_types:
                faults.append(f"{where}: a types header includes only "
                              "types headers and lower modules")
                continue
            drank, dunit = unit_of(dstem)
            if drank is None:
                continue  # reported as a file in no unit
            if dunit != unit:
                unit_graph[unit].add(dunit)
            if drank > rank:
                faults.append(f"{where}: {unit} (layer {rank}) may not "
                              f"include {dunit} (layer {drank}), which "
                              "is above it")

    # Who defines what: each unit's header declares only its own.
    defined = {}
    for src in files:
        if src.startswith("io/") and src.endswith(".c"):
            text = open(os.path.join(root, src), encoding="utf-8",
                        errors="replace").read()
            for name in functions(text, "{"):
                defined.setdefault(name, src)
    for src in files:
        if not (src.startswith("io/") and src.endswith(".h")):
            continue
        stem = src[3:-2]
        if stem.endswith("-t"):
            continue
        _, unit = unit_of(stem)
        text = open(os.path.join(root, src), encoding="utf-8",
                    errors="replace").read()
        for name in sorted(functions(text, ";")):
            where = defined.get(name)
            if where is None:
                continue  # defined outside io/, or nowhere (the linker says)
            _, wunit = unit_of(where[3:-2])
            if wunit != unit:
                faults.append(f"{src}: declares {name}, which {where} "
                              f"defines: a unit's header declares only "
                              f"its own functions")

    # A function lives in the file its prefix names: io/STEM.c defines
    # only STEM_* (io/handle_Y.c: handle_* or Y_*), so a name says which
    # file to open.
    for name, src in sorted(defined.items()):
        stem = src[3:-2]
        prefixes = [stem + "_"]
        if stem.startswith("handle_"):
            prefixes += ["handle_", stem[len("handle_"):] + "_"]
        if stem == "main" or name.startswith(tuple(prefixes)):
            continue
        faults.append(f"{src}: defines {name}: a function of io/{stem}.c "
                      f"is named {' or '.join(p + '*' for p in prefixes)}")

    c = find_cycle(file_graph)
    if c:
        faults.append("include cycle: " + " -> ".join(c))
    c = find_cycle(unit_graph)
    if c:
        faults.append("cycle between units: " + " -> ".join(c))
    return faults


def self_test(root):
    """The check itself: on a copy of the tree with one fault planted at a
    time, each must be reported (and the clean copy must pass)."""
    import shutil
    import tempfile

    def plant(tmp, path, old, new):
        full = os.path.join(tmp, path)
        text = open(full, encoding="utf-8").read()
        assert old in text, (path, old)
        open(full, "w", encoding="utf-8").write(text.replace(old, new, 1))

    cases = [
        ("an include that goes up", "io/shard.c", '#include "io/shard.h"\n',
         '#include "io/shard.h"\n#include "io/session.h"\n', "which is above it"),
        ("a prototype in another unit's header", "io/session.h", "#endif",
         "void connect_adopt(struct shard *s, struct conn *c);\n#endif",
         "declares connect_adopt"),
        ("a types header that includes functions", "io/conn-t.h",
         "#include <stdint.h>\n", '#include <stdint.h>\n#include "io/shard.h"\n',
         "a types header includes only"),
        ("core/ including io/", "core/log.c", "#include",
         '#include "io/msg.h"\n#include', "core/ may include only"),
        ("an order the document does not state", DOC, "`version < msg <",
         "`msg < version <", "says the layers are"),
        ("a function outside the file its prefix names", "io/shard.c",
         "uint64_t shard_clock_ms(void)", "uint64_t clock_ms_now(void)",
         "defines clock_ms_now"),
    ]
    failed = 0
    with tempfile.TemporaryDirectory() as tmp:
        for d in ["io", "docs"] + sorted(LOWER):
            if os.path.isdir(os.path.join(root, d)):
                shutil.copytree(os.path.join(root, d), os.path.join(tmp, d))
        if check(tmp):
            print("check-layers self-test: the clean tree does not pass")
            return 1
        for what, path, old, new, expect in cases:
            case = os.path.join(tmp, "case")
            shutil.rmtree(case, ignore_errors=True)
            os.mkdir(case)
            for d in os.listdir(tmp):
                if d != "case":
                    shutil.copytree(os.path.join(tmp, d), os.path.join(case, d))
            plant(case, path, old, new)
            faults = check(case)
            if not any(expect in f for f in faults):
                print(f"check-layers self-test: {what} was not reported")
                failed += 1
        # A file in no unit, and a cycle between units.
        case = os.path.join(tmp, "case")
        shutil.rmtree(case, ignore_errors=True)
        shutil.copytree(tmp, case, ignore=shutil.ignore_patterns("case"))
        open(os.path.join(case, "io/stray.c"), "w").write("int x;\n")
        if not any("in no unit" in f for f in check(case)):
            print("check-layers self-test: a file in no unit was not reported")
            failed += 1
        graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}
        if find_cycle(graph) != ["a", "b", "c", "a"]:
            print("check-layers self-test: a cycle was not found")
            failed += 1
    if not failed:
        print("check-layers self-test: every planted fault was reported")
    return 1 if failed else 0


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "--self-test":
        return self_test(sys.argv[2] if len(sys.argv) > 2 else ".")
    root = sys.argv[1] if len(sys.argv) > 1 else "."
    faults = check(root)
    for f in faults:
        print(f"check-layers: {f}")
    if faults:
        print(f"check-layers: {len(faults)} fault(s); the layers are in "
              f"{DOC}, section Layers")
        return 1
    print(f"check-layers: io/ follows its {len(LAYERS)} layers, no cycle")
    return 0


if __name__ == "__main__":
    sys.exit(main())
