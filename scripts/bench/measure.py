#!/usr/bin/env python3
"""Time one command as a fresh process, then `sync`; print one JSON line.

    measure.py [--label NAME] [--log FILE] [--json-out FILE] [--gpu] [--interval S] [--no-sync]
               [--timeout S] -- CMD ARGS...

JSON fields
  label, cmd, rc            the command's exit status (-N: killed by signal N)
  timed_out                 (--timeout) true when CMD ran past S seconds: its process group got
                            SIGTERM, and SIGKILL 10 s later if still there (wall_s is then the
                            time until it ended, not the command's time)
  wall_s                    start of CMD to end of the following `sync` (what a user waits for)
  cmd_s, sync_s             the two parts
  peak_rss_tree_mb          max over samples of sum(VmRSS) over CMD and all its descendants
                            (polled from /proc every --interval s, default 0.05; MB = 1e6 bytes)
  peak_rss_anon_tree_mb     the same for RssAnon only (excludes mapped file pages / page cache)
  max_rss_single_mb         ru_maxrss of CMD from wait4 (kernel-exact peak of the largest
                            single process in CMD's tree of waited-for processes)
  samples                   number of /proc samples
  gpu_mem_before_mb, peak_gpu_mem_mb, peak_gpu_mem_delta_mb   (--gpu) from
                            `nvidia-smi --query-gpu=memory.used -lms 100`; peak is the max over
                            samples of the sum over GPUs; delta = peak - before (MiB as nvidia-smi reports)

CMD's stdout/stderr are inherited unless --log FILE is given (then both go to FILE).
If measure.py itself gets SIGTERM or SIGINT (say, the timeout of whatever runs it), it ends CMD
first: SIGTERM to CMD's process group (with --timeout; without it, to CMD and its descendants),
SIGKILL 5 s later to what is still there, then it exits 128+N without a JSON line; an unexpected
exit of measure.py ends CMD too (atexit). With --timeout CMD leaves measure.py's process group, so
a signal to that group no longer reaches it: this is what ends it then. CMD also gets SIGKILL from
the kernel if measure.py is killed outright (SIGKILL, which no handler sees: PR_SET_PDEATHSIG),
though what CMD started does not.
The JSON line goes to stdout (and is appended to --json-out FILE). measure.py exits with CMD's rc.
"""
import argparse
import atexit
import json
import os
import shlex
import signal
import subprocess
import sys
import threading
import time

PAGE = os.sysconf("SC_PAGE_SIZE")
PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


try:  # looked up here: the child, between fork and exec, only calls it
    import ctypes
    _prctl = ctypes.CDLL(None, use_errno=True).prctl
except (ImportError, OSError, AttributeError):
    _prctl = None


def die_with_parent():
    """In the child before exec: SIGKILL when measure.py dies, however it dies (Linux)."""
    if _prctl is not None:
        _prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)


class Child:
    """The command, ended with its process group if measure.py is ended first."""

    def __init__(self, own_group):
        self.p = None
        self.own_group = own_group
        self.reaped = False

    def signal(self, sig, pids=()):
        """sig to CMD's group (own_group), else to pids (CMD's tree, taken while CMD is unreaped)."""
        if self.p is None:
            return
        if self.own_group:
            try:
                os.killpg(self.p.pid, sig)  # the group outlives a reaped leader while members remain
            except (ProcessLookupError, PermissionError):
                pass
            return
        for q in pids:
            try:
                os.kill(q, sig)
            except (ProcessLookupError, PermissionError):
                pass

    def end(self, grace_s):
        """SIGTERM, then SIGKILL after grace_s if the command has not ended."""
        if self.p is None or self.reaped:
            if self.own_group:
                self.signal(signal.SIGKILL)  # what it left behind
            return
        pids = [] if self.own_group else tree(self.p.pid)
        self.signal(signal.SIGTERM, pids)
        t = time.monotonic()
        while time.monotonic() - t < grace_s:
            try:
                if os.waitpid(self.p.pid, os.WNOHANG)[0] == self.p.pid:
                    self.reaped = True
                    break
            except ChildProcessError:
                self.reaped = True
                break
            time.sleep(0.05)
        # CMD's own pid is free for reuse once reaped
        self.signal(signal.SIGKILL, [q for q in pids if not (self.reaped and q == self.p.pid)])


def children_map():
    """ppid -> [pid] for every process in /proc."""
    m = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat", "rb") as f:
                s = f.read()
        except OSError:
            continue
        # comm may contain spaces/parens: fields after the last ')'
        rest = s[s.rfind(b")") + 2:].split()
        ppid = int(rest[1])
        m.setdefault(ppid, []).append(int(d))
    return m


def tree(pid):
    m = children_map()
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(m.get(p, ()))
    return out


def rss_of(pid):
    """(VmRSS, RssAnon) in bytes, or (0, 0) if gone."""
    rss = anon = 0
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            for line in f:
                if line.startswith(b"VmRSS:"):
                    rss = int(line.split()[1]) * 1024
                elif line.startswith(b"RssAnon:"):
                    anon = int(line.split()[1]) * 1024
                    break
    except OSError:
        pass
    return rss, anon


class GpuPoller:
    def __init__(self):
        self.before = None
        self.peak = None
        self.proc = None
        self.err = None
        try:
            r = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"],
                               capture_output=True, text=True, timeout=30)
            self.before = sum(float(x) for x in r.stdout.split())
        except Exception as e:  # no nvidia-smi
            self.err = str(e)
            return
        self.peak = self.before
        self.proc = subprocess.Popen(
            ["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits", "-lms", "100"],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        self.ngpu = None
        self.t = threading.Thread(target=self._read, daemon=True)
        self.t.start()

    def _read(self):
        # one line per GPU per sample; sum consecutive groups of ngpu lines
        n = len(subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True).stdout.strip().splitlines()) or 1
        buf = []
        for line in self.proc.stdout:
            try:
                buf.append(float(line.strip()))
            except ValueError:
                continue
            if len(buf) == n:
                self.peak = max(self.peak, sum(buf))
                buf = []

    def stop(self):
        if self.proc:
            time.sleep(0.25)  # one more sample
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def main():
    ap = argparse.ArgumentParser(prog="measure.py", usage="%(prog)s [options] -- CMD ARGS...", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--label", default="")
    ap.add_argument("--log")
    ap.add_argument("--json-out")
    ap.add_argument("--gpu", action="store_true")
    ap.add_argument("--interval", type=float, default=0.05)
    ap.add_argument("--no-sync", action="store_true")
    ap.add_argument("--timeout", type=float, help="end CMD (its process group) after S seconds")
    argv = sys.argv[1:]
    i = argv.index("--") if "--" in argv else len(argv)
    opts, cmd = argv[:i], argv[i + 1:]
    a = ap.parse_args(opts)  # --help prints the usage and exits 0
    if not cmd:
        ap.error("no command: give it after --")

    gpu = GpuPoller() if a.gpu else None
    logf = open(a.log, "ab") if a.log else None
    child = Child(own_group=a.timeout is not None)

    def on_exit():
        if not child.reaped:
            child.end(0)
        if gpu and gpu.proc and gpu.proc.poll() is None:
            gpu.stop()

    def on_signal(signum, _frame):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        print(f"[measure] {a.label or cmd[0]}: got {signal.Signals(signum).name}, ending the command",
              file=sys.stderr, flush=True)
        if not child.reaped:
            child.end(5)
        elif child.own_group:
            child.signal(signal.SIGKILL)
        sys.exit(128 + signum)  # atexit: on_exit stops the GPU poller

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    atexit.register(on_exit)

    peak_rss = peak_anon = 0
    samples = 0
    t0 = time.monotonic()
    # with --timeout, CMD leads its own process group, so that ending it ends what it started
    p = child.p = subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT if logf else None,
                                   start_new_session=a.timeout is not None, preexec_fn=die_with_parent)
    ru = None
    status = 0
    timed_out = False
    term_at = None
    while True:
        wpid, status, ru = os.wait4(p.pid, os.WNOHANG)
        if wpid == p.pid:
            child.reaped = True
            break
        now = time.monotonic()
        if a.timeout is not None and not timed_out and now - t0 > a.timeout:
            timed_out, term_at = True, now
            print(f"[measure] {a.label or cmd[0]}: past --timeout {a.timeout:g} s, ending it", file=sys.stderr, flush=True)
            try:
                os.killpg(p.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        elif timed_out and term_at is not None and now - term_at > 10:
            term_at = None
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        tot = anon = 0
        for q in tree(p.pid):
            r, an = rss_of(q)
            tot += r
            anon += an
        samples += 1
        peak_rss = max(peak_rss, tot)
        peak_anon = max(peak_anon, anon)
        time.sleep(a.interval)
    t1 = time.monotonic()
    if timed_out:  # what CMD started and left behind
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    p.returncode = os.waitstatus_to_exitcode(status)
    if not a.no_sync:
        subprocess.run(["sync"])
    t2 = time.monotonic()
    if gpu:
        gpu.stop()
    if logf:
        logf.close()

    res = {
        "label": a.label,
        "cmd": " ".join(shlex.quote(c) for c in cmd),
        "rc": p.returncode,
        "wall_s": round(t2 - t0, 3),
        "cmd_s": round(t1 - t0, 3),
        "sync_s": round(t2 - t1, 3),
        "peak_rss_tree_mb": round(peak_rss / 1e6, 1),
        "peak_rss_anon_tree_mb": round(peak_anon / 1e6, 1),
        "max_rss_single_mb": round(ru.ru_maxrss * 1024 / 1e6, 1) if ru else None,
        "samples": samples,
    }
    if a.timeout is not None:
        res["timed_out"] = timed_out
    if gpu:
        if gpu.before is None:
            res["gpu_error"] = gpu.err
        else:
            res["gpu_mem_before_mb"] = gpu.before
            res["peak_gpu_mem_mb"] = gpu.peak
            res["peak_gpu_mem_delta_mb"] = gpu.peak - gpu.before
    line = json.dumps(res)
    print(line, flush=True)
    if a.json_out:
        with open(a.json_out, "a") as f:
            f.write(line + "\n")
    sys.exit(p.returncode if p.returncode >= 0 else 128 - p.returncode)


if __name__ == "__main__":
    main()
