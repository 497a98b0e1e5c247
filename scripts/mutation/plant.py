#!/usr/bin/env python3
"""Hand-planted mutants (mutants.json): apply one bug at a time and see whether the tests notice.

  plant.py check                     every mutant's `find` occurs exactly once in its file
  plant.py diff ID                   the edit a mutant makes, as a unified diff
  plant.py cpu [--ids A,B] [--label L] [--timeout S] [--skip-baseline]
                                     runs the whole Maven test suite once per CPU mutant and
                                     writes scripts/mutation/results-L.md and .json
  plant.py gpu-pack OUT_DIR [--ids A,B] [--jre FILE]
                                     builds the GPU mutants into a bundle for the GPU machine
                                     (run there by scripts/mutation/run-gpu.sh OUT_DIR)
  plant.py gpu-record --label L gpu-mutants.md
                                     puts the table run-gpu.sh printed into results-L.md
  plant.py pit-report [MUTATIONS_XML ...] [--label L]
                                     mutation score per package of a PIT run (-Pmutation)

Every edit is undone in a finally block (git checkout -- FILE), Ctrl-C and SIGTERM included.
The files a mutant touches must have no uncommitted changes, or the run refuses to start.
Python 3 standard library only; run from anywhere inside the repository.
"""

import argparse
import datetime
import difflib
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ET

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", ".."))
MUTANTS = os.path.join(HERE, "mutants.json")
MVN_TEST = ["mvn", "-q", "-B", "-ntp", "-o", "test", "-Dsurefire.skipAfterFailureCount=1"]
# generated outputs that scripts/native/build-native.sh rewrites when a kernel changes
NATIVE_OUTPUTS = ["src/main/resources/org/loramerge/kernels", "src/main/resources/org/loramerge/native", "native"]
JUNIT_CONSOLE = "1.14.4"  # the platform version of the project's JUnit (junit-jupiter 5.14.4)


class Interrupted(Exception):
    pass


def on_sigterm(signum, frame):
    raise Interrupted("signal %d" % signum)


def load(ids=None, kind=None):
    with open(MUTANTS, encoding="utf-8") as f:
        mutants = json.load(f)["mutants"]
    seen = set()
    for m in mutants:
        for k in ("id", "package", "file", "find", "replace", "description", "tests"):
            if k not in m:
                sys.exit("mutant %s has no %r" % (m.get("id"), k))
        if m["id"] in seen:
            sys.exit("mutant id %s appears twice" % m["id"])
        seen.add(m["id"])
        if m["tests"] not in ("cpu", "gpu"):
            sys.exit("mutant %s: tests must be cpu or gpu" % m["id"])
    if ids:
        wanted = ids.split(",")
        unknown = [i for i in wanted if i not in seen]
        if unknown:
            sys.exit("unknown mutant id(s): " + ", ".join(unknown))
        mutants = [m for m in mutants if m["id"] in wanted]
    if kind:
        mutants = [m for m in mutants if m["tests"] == kind]
    return mutants


def git(*args, check=True):
    return subprocess.run(["git", *args], cwd=ROOT, check=check, capture_output=True, text=True).stdout


def read(path):
    with open(os.path.join(ROOT, path), encoding="utf-8", newline="") as f:
        return f.read()


def occurrences(m):
    path = os.path.join(ROOT, m["file"])
    if not os.path.exists(path):
        return -1
    return read(m["file"]).count(m["find"])


def require_clean(paths):
    dirty = git("status", "--porcelain", "--untracked-files=no", "--", *paths).strip()
    if dirty:
        sys.exit("uncommitted changes in files the mutants edit (a restore would lose them):\n" + dirty)


def apply(m):
    text = read(m["file"])
    n = text.count(m["find"])
    if n != 1:
        raise RuntimeError("%s: `find` occurs %d times in %s (must be once); update mutants.json" % (m["id"], n, m["file"]))
    with open(os.path.join(ROOT, m["file"]), "w", encoding="utf-8", newline="") as f:
        f.write(text.replace(m["find"], m["replace"], 1))


def restore(paths):
    git("checkout", "--", *paths)


# ---------------------------------------------------------------- check, diff


def cmd_check(args):
    bad = 0
    for m in load(args.ids):
        n = occurrences(m)
        status = "ok" if n == 1 else ("FILE MISSING" if n < 0 else "found %d times" % n)
        if n != 1:
            bad += 1
        print("%-34s %-4s %-11s %-58s %s" % (m["id"], m["tests"], m["package"], m["file"], status))
    print("%d mutant(s) need their `find` updated" % bad if bad else "all snippets found exactly once")
    return 1 if bad else 0


def cmd_diff(args):
    for m in load(args.id):
        text = read(m["file"])
        new = text.replace(m["find"], m["replace"], 1)
        sys.stdout.writelines(difflib.unified_diff(text.splitlines(True), new.splitlines(True), "a/" + m["file"], "b/" + m["file"], n=2))
    return 0


# ---------------------------------------------------------------- CPU mutants


def run_tests(timeout):
    """Runs the Maven suite; returns (rc, seconds, output, timed_out)."""
    reports = os.path.join(ROOT, "target", "surefire-reports")
    shutil.rmtree(reports, ignore_errors=True)
    start = time.time()
    proc = subprocess.Popen(MVN_TEST, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=timeout)
        return proc.returncode, time.time() - start, out, False
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        return -9, time.time() - start, out, True
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def failing_tests():
    """(Class.method, message) of every failed or errored test case in the surefire reports."""
    reports = os.path.join(ROOT, "target", "surefire-reports")
    found = []
    if not os.path.isdir(reports):
        return found
    # in the order the test classes finished (a report is written when its class ends)
    names = [n for n in os.listdir(reports) if n.startswith("TEST-") and n.endswith(".xml")]
    for name in sorted(names, key=lambda n: (os.path.getmtime(os.path.join(reports, n)), n)):
        try:
            tree = ET.parse(os.path.join(reports, name))
        except ET.ParseError:
            continue
        for case in tree.iter("testcase"):
            for tag in ("failure", "error"):
                el = case.find(tag)
                if el is not None:
                    cls = case.get("classname", "").rsplit(".", 1)[-1]
                    msg = (el.get("message") or el.get("type") or "").strip().splitlines()
                    found.append((cls + "." + case.get("name", "?").split("(")[0], msg[0][:120] if msg else ""))
                    break
    return found


def verdict_of(rc, out, timed_out):
    if timed_out:
        return "killed", "(timeout: the suite did not finish)", ""
    if rc == 0:
        return "survived", "", ""
    if "COMPILATION ERROR" in out or "Compilation failure" in out:
        first = next((l for l in out.splitlines() if "ERROR" in l and ".java" in l), "")
        return "compile-error", "", first.strip()[:160]
    failed = failing_tests()
    if failed:
        more = " (+%d more failing)" % (len(failed) - 1) if len(failed) > 1 else ""
        return "killed", failed[0][0], failed[0][1] + more
    tail = [l for l in out.splitlines() if l.strip()][-3:]
    return "killed", "(build failed without a test report)", " / ".join(tail)[:160]


def cmd_cpu(args):
    mutants = load(args.ids, "cpu")
    files = sorted({m["file"] for m in mutants})
    bad = [m["id"] for m in mutants if occurrences(m) != 1]
    if bad:
        sys.exit("the `find` of these mutants does not occur exactly once (plant.py check): " + ", ".join(bad))
    require_clean(files)
    signal.signal(signal.SIGTERM, on_sigterm)
    label = args.label or git("rev-parse", "--short", "HEAD").strip()
    results = []
    baseline = None
    if not args.skip_baseline:
        print("baseline: %s" % " ".join(MVN_TEST), flush=True)
        rc, secs, out, timed_out = run_tests(args.timeout)
        if rc != 0:
            print(out[-4000:])
            sys.exit("the unmutated suite fails (exit %d): verdicts would mean nothing; fix the baseline first" % rc)
        baseline = round(secs, 1)
        print("baseline: green in %.0f s" % secs, flush=True)
    try:
        for i, m in enumerate(mutants, 1):
            print("[%d/%d] %s ..." % (i, len(mutants), m["id"]), end=" ", flush=True)
            try:
                apply(m)
                rc, secs, out, timed_out = run_tests(args.timeout)
            finally:
                restore([m["file"]])
            verdict, killer, detail = verdict_of(rc, out, timed_out)
            results.append(dict(m, verdict=verdict, killer=killer, detail=detail, seconds=round(secs, 1)))
            print("%s %s (%.0f s)" % (verdict, killer, secs), flush=True)
            write_cpu_results(label, results, baseline, partial=i < len(mutants))
    except (KeyboardInterrupt, Interrupted) as e:
        restore(files)
        print("\ninterrupted (%s); files restored; partial results kept" % (e or "Ctrl-C"))
        return 130
    path = write_cpu_results(label, results, baseline, partial=False)
    counted = [r for r in results if r["verdict"] != "compile-error"]
    killed = sum(r["verdict"] == "killed" for r in counted)
    print("kill ratio %d/%d; results in %s" % (killed, len(counted), os.path.relpath(path, ROOT)))
    return 0


def md_escape(s):
    return str(s).replace("|", "\\|").replace("\n", " ")


def update_section(label, name, text):
    """Replaces (or appends) the section NAME of scripts/mutation/results-LABEL.md, between markers."""
    path = os.path.join(HERE, "results-%s.md" % label)
    start, end = "<!-- %s -->" % name, "<!-- /%s -->" % name
    block = start + "\n" + text.rstrip("\n") + "\n" + end + "\n"
    old = ""
    if os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            old = f.read()
    if start in old and end in old:
        new = old[:old.index(start)] + block + old[old.index(end) + len(end) + 1:]
    else:
        if not old:
            old = "# Mutation results: %s\n\nMade by scripts/mutation/plant.py (see scripts/mutation/README.md).\n" % label
        new = old.rstrip("\n") + "\n\n" + block
    with open(path, "w", encoding="utf-8") as f:
        f.write(new)
    return path


def write_cpu_results(label, results, baseline, partial):
    head = git("rev-parse", "HEAD").strip()
    with open(os.path.join(HERE, "results-%s.json" % label), "w", encoding="utf-8") as f:
        json.dump({"label": label, "head": head, "command": " ".join(MVN_TEST), "baseline_seconds": baseline,
                   "partial": partial, "results": results}, f, indent=2, ensure_ascii=False)
        f.write("\n")
    counted = [r for r in results if r["verdict"] != "compile-error"]
    killed = sum(r["verdict"] == "killed" for r in counted)
    compile_errors = len(results) - len(counted)
    lines = ["## Hand-planted CPU mutants" + (" (partial)" if partial else ""), "",
             "Measured %s on %s with `%s` per mutant (the whole suite, stopping at the first failure); "
             "the unmutated suite was green in %s s." % (datetime.date.today().isoformat(), head[:7], " ".join(MVN_TEST),
                                                         baseline if baseline is not None else "?"),
             "", "**Kill ratio: %d/%d**%s" % (killed, len(counted), " (%d compile errors not counted)" % compile_errors if compile_errors else ""),
             "", "| id | package | description | verdict | killing test |", "| --- | --- | --- | --- | --- |"]
    for r in results:
        lines.append("| %s | %s | %s | %s | %s |" % (r["id"], r["package"], md_escape(r["description"]), r["verdict"],
                                                     md_escape(r["killer"] or "-")))
    return update_section(label, "cpu", "\n".join(lines))


# ---------------------------------------------------------------- GPU bundle


def run(cmd, **kw):
    print("+ " + " ".join(cmd), flush=True)
    subprocess.run(cmd, cwd=ROOT, check=True, **kw)


def class_hashes():
    out = {}
    top = os.path.join(ROOT, "target", "classes")
    for dirpath, _, names in os.walk(top):
        for n in names:
            p = os.path.join(dirpath, n)
            with open(p, "rb") as f:
                out[os.path.relpath(p, top)] = hashlib.sha256(f.read()).hexdigest()
    return out


def build_jre(dest):
    """A small Java runtime for the GPU machine (which has no Java), made with jlink from this JDK."""
    javac = shutil.which("javac")
    if not javac:
        sys.exit("no javac on PATH: cannot jlink a runtime (or pass --jre FILE.tgz)")
    jdk = os.path.dirname(os.path.dirname(os.path.realpath(javac)))
    version = subprocess.run([os.path.join(jdk, "bin", "java"), "-version"], capture_output=True, text=True).stderr
    if 'version "17' not in version:
        sys.exit("jlink needs a Java 17 JDK; found: " + version.splitlines()[0])
    tmp = os.path.join(ROOT, "target", "mutation-jre")
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    modules = "java.base,java.logging,java.management,jdk.management,jdk.unsupported,java.sql,java.xml,java.naming,jdk.zipfs,jdk.crypto.ec"
    run([os.path.join(jdk, "bin", "jlink"), "--add-modules", modules, "--strip-debug", "--no-header-files", "--no-man-pages",
         "--compress=2", "--output", os.path.join(tmp, "jre")])
    run(["tar", "czf", dest, "-C", tmp, "jre"])
    shutil.rmtree(tmp, ignore_errors=True)


def cmd_gpu_pack(args):
    mutants = load(args.ids, "gpu")
    out = os.path.abspath(args.out_dir)
    if not out.startswith(ROOT + os.sep):
        sys.exit("OUT_DIR must lie inside the repository (it travels with the working tree): " + args.out_dir)
    rel = os.path.relpath(out, ROOT)
    if subprocess.run(["git", "check-ignore", "-q", "--no-index", os.path.join(rel, "mutants.json")], cwd=ROOT).returncode != 0:
        sys.exit("%s is not git-ignored: add it to .gitignore or .git/info/exclude first, then name it in the device call's carry" % rel)
    bad = [m["id"] for m in mutants if occurrences(m) != 1]
    if bad:
        sys.exit("the `find` of these mutants does not occur exactly once (plant.py check): " + ", ".join(bad))
    touched = sorted({m["file"] for m in mutants}) + NATIVE_OUTPUTS
    require_clean(touched)
    signal.signal(signal.SIGTERM, on_sigterm)
    shutil.rmtree(out, ignore_errors=True)
    os.makedirs(os.path.join(out, "mutants"))
    # the unmutated jars, once: each mutant ships only the files of target/classes that it changes
    run(["mvn", "-q", "-B", "-ntp", "-o", "-DskipTests", "package"])
    # the runnable jar, which carries JCuda and its natives (the plain one does not: every GPU test would skip)
    shutil.copy(os.path.join(ROOT, "target", "loramerge-cli.jar"), os.path.join(out, "loramerge.jar"))
    shutil.copy(os.path.join(ROOT, "target", "loramerge-tests.jar"), out)
    console = "junit-platform-console-standalone-%s.jar" % JUNIT_CONSOLE
    local = os.path.join(ROOT, ".device", console)
    if os.path.exists(local):
        shutil.copy(local, out)
    else:
        run(["mvn", "-q", "-B", "-ntp", "dependency:copy",
             "-Dartifact=org.junit.platform:junit-platform-console-standalone:%s" % JUNIT_CONSOLE, "-DoutputDirectory=" + out])
    jre = args.jre or os.path.join(ROOT, ".device", "jre.tgz")
    if os.path.exists(jre):
        shutil.copy(jre, os.path.join(out, "jre.tgz"))
    else:
        build_jre(os.path.join(out, "jre.tgz"))
    before = class_hashes()
    manifest = []
    try:
        for m in mutants:
            print("== %s" % m["id"], flush=True)
            try:
                apply(m)
                if m["file"].endswith((".cu", ".cuh")):
                    run(["bash", "scripts/native/build-native.sh"], stdout=subprocess.DEVNULL)
                run(["mvn", "-q", "-B", "-ntp", "-o", "compile"])  # also copies a rebuilt PTX into target/classes
                after = class_hashes()
                changed = sorted(p for p, h in after.items() if before.get(p) != h)
                if not changed:
                    raise RuntimeError("%s changed nothing in target/classes" % m["id"])
                for p in changed:
                    dst = os.path.join(out, "mutants", m["id"], "classes", p)
                    os.makedirs(os.path.dirname(dst), exist_ok=True)
                    shutil.copy(os.path.join(ROOT, "target", "classes", p), dst)
                manifest.append(dict(id=m["id"], package=m["package"], file=m["file"], description=m["description"], changed=changed))
                print("   %d file(s): %s" % (len(changed), ", ".join(changed)), flush=True)
            finally:
                restore([m["file"]] + NATIVE_OUTPUTS)
    except (KeyboardInterrupt, Interrupted) as e:
        restore(sorted({m["file"] for m in mutants}) + NATIVE_OUTPUTS)
        print("\ninterrupted (%s); files restored" % (e or "Ctrl-C"))
        return 130
    finally:
        # put target/classes back to the unmutated build
        subprocess.run(["mvn", "-q", "-B", "-ntp", "-o", "compile"], cwd=ROOT)
    with open(os.path.join(out, "mutants.json"), "w", encoding="utf-8") as f:
        json.dump({"head": git("rev-parse", "HEAD").strip(), "junit_console": console, "mutants": manifest}, f, indent=2, ensure_ascii=False)
    with open(os.path.join(out, "ids.txt"), "w", encoding="utf-8") as f:
        f.write("".join(m["id"] + "\n" for m in manifest))
    size = sum(os.path.getsize(os.path.join(d, n)) for d, _, ns in os.walk(out) for n in ns)
    print("bundle %s: %d mutants, %.1f MiB" % (rel, len(manifest), size / 2**20))
    print("on the GPU machine (carry [\"%s\"]):  bash scripts/mutation/run-gpu.sh %s [ID ...]" % (rel, rel))
    return 0


# ---------------------------------------------------------------- PIT


def cmd_pit_report(args):
    paths = args.xml
    if not paths:
        top = os.path.join(ROOT, "target", "pit-reports")
        paths = sorted(os.path.join(d, "mutations.xml") for d, _, ns in os.walk(top) if "mutations.xml" in ns)
    if not paths:
        sys.exit("no mutations.xml under target/pit-reports: run mvn -Pmutation test first (see scripts/mutation/README.md)")
    per = {}
    seen = set()
    mutations = []
    for path in list(paths):
        try:
            root = ET.parse(path).getroot()
        except ET.ParseError:
            print("skipping %s: not a finished PIT report" % os.path.relpath(path, ROOT), file=sys.stderr)
            paths.remove(path)
            continue
        for mu in root.iter("mutation"):
            key = (mu.findtext("mutatedClass"), mu.findtext("mutatedMethod"), mu.findtext("methodDescription"), mu.findtext("lineNumber"),
                   mu.findtext("mutator"), tuple(i.text for i in mu.iter("index")), mu.findtext("description"))
            if key not in seen:  # parts run apart may overlap
                seen.add(key)
                mutations.append(mu)
    for mu in mutations:
        cls = mu.findtext("mutatedClass") or ""
        pkg = cls.rsplit(".", 1)[0]
        status = mu.get("status")
        d = per.setdefault(pkg, {"total": 0, "killed": 0, "survived": 0, "no_coverage": 0, "timed_out": 0, "other": 0})
        d["total"] += 1
        if mu.get("detected") == "true":
            d["killed"] += 1
            if status == "TIMED_OUT":
                d["timed_out"] += 1
        elif status == "NO_COVERAGE":
            d["no_coverage"] += 1
        elif status == "SURVIVED":
            d["survived"] += 1
        else:
            d["other"] += 1
    rows = ["| package | mutants | killed | survived | no coverage | mutation score | test strength |",
            "| --- | --- | --- | --- | --- | --- | --- |"]
    tot = {"total": 0, "killed": 0, "survived": 0, "no_coverage": 0}
    for pkg in sorted(per):
        d = per[pkg]
        for k in tot:
            tot[k] += d[k]
        rows.append("| %s | %d | %d | %d | %d | %.0f%% | %.0f%% |" % (
            pkg.replace("org.loramerge.", ""), d["total"], d["killed"], d["survived"], d["no_coverage"],
            100.0 * d["killed"] / max(1, d["total"]), 100.0 * d["killed"] / max(1, d["total"] - d["no_coverage"])))
    rows.append("| **all** | %d | %d | %d | %d | **%.0f%%** | %.0f%% |" % (
        tot["total"], tot["killed"], tot["survived"], tot["no_coverage"], 100.0 * tot["killed"] / max(1, tot["total"]),
        100.0 * tot["killed"] / max(1, tot["total"] - tot["no_coverage"])))
    text = "\n".join(rows)
    print(text)
    if args.label:
        head = ["## PIT (-Pmutation)", "",
                "Mutation score = killed / all mutants (no coverage counts as not killed); test strength = killed / mutants some test reaches; from %s." % ", ".join(os.path.relpath(p, ROOT) for p in paths)]
        if args.note:
            head += ["", args.note]
        print("written to " + os.path.relpath(update_section(args.label, "pit", "\n".join(head + ["", text])), ROOT))
    return 0


def cmd_gpu_record(args):
    """Puts the table run-gpu.sh wrote (gpu-mutants.md, fetched from the GPU machine) into results-LABEL.md."""
    with open(args.table, encoding="utf-8") as f:
        text = f.read()
    print("written to " + os.path.relpath(update_section(args.label, "gpu", text), ROOT))
    return 0


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("check")
    c.add_argument("--ids")
    c = sub.add_parser("diff")
    c.add_argument("id")
    c = sub.add_parser("cpu")
    c.add_argument("--ids", help="comma-separated mutant ids (default: every cpu mutant)")
    c.add_argument("--label", help="names the results file (default: git rev-parse --short HEAD)")
    c.add_argument("--timeout", type=int, default=900, help="seconds per suite run; a mutant past it counts as killed")
    c.add_argument("--skip-baseline", action="store_true", help="do not run the unmutated suite first")
    c = sub.add_parser("gpu-pack")
    c.add_argument("out_dir")
    c.add_argument("--ids")
    c.add_argument("--jre", help="a jre.tgz to ship (default: .device/jre.tgz, else one made with jlink)")
    c = sub.add_parser("pit-report")
    c.add_argument("xml", nargs="*", help="PIT mutations.xml files (default: every one under target/pit-reports)")
    c.add_argument("--label", help="also write the table into scripts/mutation/results-LABEL.md")
    c.add_argument("--note", help="a line put above the table (e.g. the scope and the time it took)")
    c = sub.add_parser("gpu-record")
    c.add_argument("table", help="gpu-mutants.md as run-gpu.sh wrote it")
    c.add_argument("--label", required=True)
    args = p.parse_args()
    return {"check": cmd_check, "diff": cmd_diff, "cpu": cmd_cpu, "gpu-pack": cmd_gpu_pack, "pit-report": cmd_pit_report,
            "gpu-record": cmd_gpu_record}[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())
