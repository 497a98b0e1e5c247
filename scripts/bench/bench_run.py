#!/usr/bin/env python3
"""Timing loop shared by bench-cpu.sh and bench-e2e-gpu.sh.

    bench_run.py --base DIR --adapter DIR --work DIR --logs DIR [--reps N] [--gpu]
                 [--budget-s S] [--baseline NAME] [--floor NAME]
                 [--verify-numeric A,B] [--verify-bytes A,B] [--python PY]
                 [--partial RC:NOTE] [--label NAME=TEXT ...]
                 --tool 'NAME=COMMAND TEMPLATE' [--tool ...]

Each tool's template is split with shlex after substituting {base}, {adapter}, {out}
(out = WORK/out-NAME). Every run is a fresh process timed by measure.py (wall includes
`sync`), the order of tools rotates from one repetition to the next, and each output is
deleted after its run. In repetition 1:
  --verify-numeric A,B  keeps A's and B's outputs until both exist, then runs
                        compare_checkpoints.py A B (names/shapes/dtypes equal, <= 1 ulp);
  --verify-bytes A,B    takes a sha256 manifest of every file of A's and B's outputs and
                        checks they are byte-identical (needs no extra disk space).
--budget-s S  the whole loop's time: seconds since $BENCH_T0 (or since this script started).
              No repetition starts when it would likely end past S; within one, each run may
              take what is left of S (measure.py --timeout ends it there, the row says
              "timed out"), and a tool is not started with less than --min-start-s (default
              10) left (the row says "skipped"). Both count as failures (exit 1). A run that
              timed out is never counted as ok, even when the tool traps SIGTERM and exits 0:
              it is left out of the medians, the ratios and the "runs ok" count.
--partial RC:NOTE  a tool that exits with RC stopped early on purpose (its own budget): such a
              run is not ok (left out of the medians, ratios and "runs ok"), nor a failure; its
              row says "partial (NOTE)" and the verify lines list it.
--label NAME=TEXT  shows TEXT instead of NAME in the table's tool column (logs keep NAME),
              e.g. to say that a tool did only part of the job.
Results: LOGS/results.jsonl (one line per run), LOGS/<tool>-<rep>.log (each run's output),
LOGS/verify-*.txt; a markdown table on stdout (and in LOGS/table.md).
"""
import argparse
import hashlib
import json
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

HERE = os.path.dirname(os.path.abspath(__file__))
T0 = float(os.environ.get("BENCH_T0") or time.time())


PROGRESS = None  # LOGS/progress.log


def log(msg):
    line = f"[bench {time.time() - T0:5.0f}s] {msg}"
    print(line, file=sys.stderr, flush=True)
    if PROGRESS:
        with open(PROGRESS, "a") as f:
            f.write(line + "\n")


def dir_size(d):
    n = 0
    for root, _, files in os.walk(d):
        for f in files:
            n += os.path.getsize(os.path.join(root, f))
    return n


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb", buffering=0) as f:
        while True:
            b = f.read(16 << 20)
            if not b:
                break
            h.update(b)
    return h.hexdigest()


def manifest(d):
    files = sorted(os.path.relpath(os.path.join(r, f), d) for r, _, fs in os.walk(d) for f in fs)
    with ThreadPoolExecutor(max_workers=min(16, os.cpu_count() or 2)) as ex:
        hashes = list(ex.map(lambda f: sha256_file(os.path.join(d, f)), files))
    return {f: (os.path.getsize(os.path.join(d, f)), h) for f, h in zip(files, hashes)}


def verify_lines_has(lines, prefix):
    return any(l.startswith(prefix) for l in lines)


def run_ok(r):
    """A run that ended by itself with exit status 0 (a run stopped at the budget is never ok,
    whatever its status)."""
    return r.get("rc") == 0 and not r.get("timed_out") and not r.get("skipped")


def fmt(x, nd=1):
    return "-" if x is None else f"{x:.{nd}f}"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--base", required=True)
    ap.add_argument("--adapter", required=True)
    ap.add_argument("--work", required=True)
    ap.add_argument("--logs", required=True)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--gpu", action="store_true")
    ap.add_argument("--budget-s", type=float, default=0)
    ap.add_argument("--min-start-s", type=float, default=10)
    ap.add_argument("--baseline", default="")
    ap.add_argument("--floor", default="")
    ap.add_argument("--verify-numeric", default="")
    ap.add_argument("--verify-bytes", default="")
    ap.add_argument("--python", default=sys.executable)
    ap.add_argument("--tool", action="append", default=[])
    ap.add_argument("--partial", default="", metavar="RC:NOTE")
    ap.add_argument("--label", action="append", default=[], metavar="NAME=TEXT")
    a = ap.parse_args()
    partial_rc, partial_note = None, ""
    if a.partial:
        rc_, _, partial_note = a.partial.partition(":")
        try:
            partial_rc = int(rc_)
        except ValueError:
            ap.error(f"--partial {a.partial!r}: give RC:NOTE, RC an exit status such as 3")
    labels = dict(x.split("=", 1) for x in a.label if "=" in x)

    def is_partial(r):
        return partial_rc is not None and r.get("rc") == partial_rc and not r.get("timed_out")

    global PROGRESS
    t_start = T0
    os.makedirs(a.logs, exist_ok=True)
    PROGRESS = os.path.join(a.logs, "progress.log")
    os.makedirs(a.work, exist_ok=True)
    tools = []
    for spec in a.tool:
        name, _, tmpl = spec.partition("=")
        tools.append((name.strip(), tmpl.strip()))
    names = [t[0] for t in tools]
    vnum = [x for x in a.verify_numeric.split(",") if x]
    vbytes = [x for x in a.verify_bytes.split(",") if x]
    vnum = vnum if len(vnum) == 2 and all(x in names for x in vnum) else []
    vbytes = vbytes if len(vbytes) == 2 and all(x in names for x in vbytes) else []
    base_bytes = dir_size(a.base)

    results_path = os.path.join(a.logs, "results.jsonl")
    results = []
    kept = {}            # tool -> output dir kept for numeric verification
    manifests = {}
    verify_lines = []
    failed_tools = set()
    rep_times = []
    verify_failed = False

    for rep in range(1, a.reps + 1):
        elapsed = time.time() - t_start
        if a.budget_s and rep > 1:
            est = max(rep_times)
            if elapsed + est > a.budget_s:
                log(f"budget: {elapsed:.0f} s used, a repetition takes ~{est:.0f} s, budget {a.budget_s:.0f} s: "
                    f"stopping after {rep - 1} repetition(s)")
                break
        t_rep = time.time()
        k = (rep - 1) % len(tools)
        order = tools[k:] + tools[:k]
        log(f"repetition {rep}/{a.reps}: order {', '.join(n for n, _ in order)}")
        for name, tmpl in order:
            out = os.path.join(a.work, f"out-{name}")
            if os.path.exists(out):
                shutil.rmtree(out)
            cmd = shlex.split(tmpl.format(base=a.base, adapter=a.adapter, out=out))
            mcmd = [a.python, os.path.join(HERE, "measure.py"), "--label", name,
                    "--log", os.path.join(a.logs, f"{name}-{rep}.log")]
            if a.gpu:
                mcmd.append("--gpu")
            if a.budget_s:
                left = a.budget_s - (time.time() - t_start)
                if left < a.min_start_s:
                    r = {"label": name, "rc": None, "wall_s": None, "rep": rep, "skipped": "budget"}
                    results.append(r)
                    with open(results_path, "a") as f:
                        f.write(json.dumps(r) + "\n")
                    failed_tools.add(name)
                    log(f"  {name:<12} SKIPPED: {max(0.0, left):.0f} s of the {a.budget_s:.0f} s budget left")
                    continue
                mcmd += ["--timeout", f"{left:.0f}"]
            mcmd += ["--"] + cmd
            p = subprocess.run(mcmd, stdout=subprocess.PIPE, text=True)
            try:
                r = json.loads(p.stdout.strip().splitlines()[-1])
            except Exception:
                r = {"label": name, "rc": p.returncode, "wall_s": None}
            r["rep"] = rep
            r["out_bytes"] = dir_size(out) if os.path.isdir(out) else 0
            results.append(r)
            with open(results_path, "a") as f:
                f.write(json.dumps(r) + "\n")
            ok = run_ok(r)
            partial = is_partial(r)
            if not ok and not partial:
                failed_tools.add(name)
            if r.get("timed_out"):
                log(f"  {name:<12} TIMED OUT at the budget ({a.budget_s:.0f} s since the start), see {a.logs}/{name}-{rep}.log")
            log(f"  {name:<12} rc={r.get('rc')} wall {fmt(r.get('wall_s'), 2)} s "
                f"(sync {fmt(r.get('sync_s'), 2)}) rss {fmt((r.get('peak_rss_tree_mb') or 0) / 1e3, 2)} GB"
                + (f" gpu {fmt((r.get('peak_gpu_mem_delta_mb') or 0) / 1024, 2)} GiB" if a.gpu else "")
                + ("" if ok else f"  PARTIAL ({partial_note}), see {a.logs}/{name}-{rep}.log" if partial
                   else f"  FAILED, see {a.logs}/{name}-{rep}.log"))

            if rep == 1 and ok and name in vbytes:
                t = time.time()
                manifests[name] = manifest(out)
                with open(os.path.join(a.logs, f"manifest-{name}.json"), "w") as f:
                    json.dump(manifests[name], f, indent=1)
                log(f"  sha256 manifest of {name} output: {len(manifests[name])} files, {time.time() - t:.1f} s")
            if rep == 1 and ok and name in vnum and not verify_lines_has(verify_lines, "numeric"):
                # keep it if the other output still fits on the disk beside it
                other = [x for x in vnum if x != name][0]
                free = shutil.disk_usage(a.work).free
                if other in kept or free > 1.15 * base_bytes + (2 << 30):
                    kept[name] = out
                else:
                    verify_lines.append(f"numeric {vnum[0]} vs {vnum[1]}: SKIPPED (only {free / 1e9:.1f} GB free)")
            if out not in kept.values() and os.path.exists(out):
                shutil.rmtree(out)
            if len(kept) == 2:
                outs = [kept[vnum[0]], kept[vnum[1]]]
                t = time.time()
                # PEFT rounds the delta to bf16 before adding it on some paths, so it can be many ulps
                # off where W + dW cancels; COMPARE_MAX_ULP sets the limit (loramerge verify checks exactness)
                cp = subprocess.run([a.python, os.path.join(HERE, "compare_checkpoints.py")] + outs
                                    + ["--max-ulp", os.environ.get("COMPARE_MAX_ULP", "1")]
                                    + (["--device", "cuda"] if a.gpu else []),
                                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
                txt = cp.stdout.strip()
                lines_ = txt.splitlines()
                head = [i for i, l in enumerate(lines_) if l.startswith(("PASS", "FAIL"))]
                txt = "\n".join(lines_[head[0]:]) if head else f"ERROR (rc {cp.returncode}): " + "\n".join(lines_[-5:])
                verify_lines.append(f"numeric {vnum[0]} vs {vnum[1]}: {txt}")
                if cp.returncode != 0:
                    verify_failed = True
                log(f"  verify {vnum[0]} vs {vnum[1]} ({time.time() - t:.1f} s): {txt.splitlines()[0]}")
                for o in outs:
                    shutil.rmtree(o, ignore_errors=True)
                kept = {}
            subprocess.run(["sync"])
        # outputs kept in repetition 1 whose partner failed
        for o in kept.values():
            shutil.rmtree(o, ignore_errors=True)
        kept = {}
        rep_times.append(time.time() - t_rep)
    if vnum and not any(l.startswith("numeric") for l in verify_lines):
        verify_lines.append(f"numeric {vnum[0]} vs {vnum[1]}: NOT RUN (a tool failed)")
    if vbytes:
        if all(x in manifests for x in vbytes):
            ma, mb = manifests[vbytes[0]], manifests[vbytes[1]]
            diff = sorted(f for f in set(ma) | set(mb) if ma.get(f) != mb.get(f))
            if diff:
                verify_failed = True
                verify_lines.append(f"bytes {vbytes[0]} vs {vbytes[1]}: DIFFER in {len(diff)} of "
                                    f"{len(set(ma) | set(mb))} files: {', '.join(diff[:8])}")
            else:
                verify_lines.append(f"bytes {vbytes[0]} vs {vbytes[1]}: IDENTICAL ({len(ma)} files, "
                                    f"{sum(s for s, _ in ma.values()) / 1e9:.2f} GB, sha256)")
        else:
            verify_lines.append(f"bytes {vbytes[0]} vs {vbytes[1]}: NOT RUN (a tool failed)")
    for name in names:
        for r in results:
            if r["label"] == name and (r.get("timed_out") or r.get("skipped")):
                verify_lines.append(f"{name} (repetition {r['rep']}): "
                                    + ("timed out at the budget" if r.get("timed_out") else "skipped, no budget left")
                                    + f" ({a.budget_s:.0f} s)"
                                    + (f", exit status {r['rc']} not counted as ok" if r.get("rc") == 0 else ""))
            elif r["label"] == name and is_partial(r):
                verify_lines.append(f"{labels.get(name, name)} (repetition {r['rep']}): partial ({partial_note}), "
                                    f"exit status {r['rc']}: not the whole job, left out of the medians")
    with open(os.path.join(a.logs, "verify.txt"), "w") as f:
        f.write("\n".join(verify_lines) + "\n")

    # ---------------------------------------------------------------- table
    def med(name):
        w = [r["wall_s"] for r in results if r["label"] == name and run_ok(r) and r.get("wall_s")]
        return statistics.median(w) if w else None

    base_med = med(a.baseline) if a.baseline else None
    floor_med = med(a.floor) if a.floor else None
    hdr = ["tool", "runs ok", "median wall s", "min", "max", "peak RSS tree GB", "peak anon GB", "max 1-proc RSS GB"]
    if a.gpu:
        hdr.append("peak GPU GiB")
    if a.baseline:
        hdr.append(f"x {a.baseline}")
    if a.floor:
        hdr.append(f"x {a.floor}")
    lines = ["| " + " | ".join(hdr) + " |", "|" + "---|" * len(hdr)]
    for name in names:
        rs = [r for r in results if r["label"] == name]
        okr = [r for r in rs if run_ok(r) and r.get("wall_s")]
        npart = sum(1 for r in rs if is_partial(r))
        w = [r["wall_s"] for r in okr]
        m = med(name)

        def mx(key, scale):
            v = [r.get(key) for r in okr if r.get(key) is not None]
            return max(v) / scale if v else None

        runs = f"{len(okr)}/{len(rs)}" + (f" ({npart} partial)" if npart else "")
        m_txt = f"partial ({partial_note})" if npart and not okr else fmt(m, 2)
        row = [labels.get(name, name), runs, m_txt, fmt(min(w) if w else None, 2), fmt(max(w) if w else None, 2),
               fmt(mx("peak_rss_tree_mb", 1e3), 2), fmt(mx("peak_rss_anon_tree_mb", 1e3), 2),
               fmt(mx("max_rss_single_mb", 1e3), 2)]
        if a.gpu:
            row.append(fmt(mx("peak_gpu_mem_delta_mb", 1024), 2))
        if a.baseline:
            row.append(fmt(m / base_med, 2) if m and base_med else "-")
        if a.floor:
            row.append(fmt(m / floor_med, 2) if m and floor_med else "-")
        lines.append("| " + " | ".join(row) + " |")
    # phase timings printed by peft_merge.py ("[peft_merge] phase NAME  X s"), medians over runs
    import re
    phase_re = re.compile(r"\[peft_merge\] phase (\S+)\s+([\d.]+) s")
    for name in names:
        ph = {}
        for r in results:
            if r["label"] != name or not run_ok(r):
                continue
            try:
                with open(os.path.join(a.logs, f"{name}-{r['rep']}.log"), errors="replace") as f:
                    for m in phase_re.finditer(f.read()):
                        ph.setdefault(m.group(1), []).append(float(m.group(2)))
            except OSError:
                pass
        if ph:
            verify_lines.append(f"phases {name} (median s): "
                                + ", ".join(f"{k} {statistics.median(v):.2f}" for k, v in ph.items()))
    table = "\n".join(lines)
    with open(os.path.join(a.logs, "table.md"), "w") as f:
        f.write(table + "\n\n" + "\n".join(verify_lines) + "\n")
    print(table)
    print()
    for l in verify_lines:
        print(l)
    sys.exit(1 if failed_tools or verify_failed else 0)


if __name__ == "__main__":
    main()
