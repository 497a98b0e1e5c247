#!/usr/bin/env python3
"""Turns JMH's JSON (ms/op) into GB/s of W and the ratios the issue asks for; prints a markdown table."""
import json, sys

SIZES = {"BF16": 2, "F16": 2, "F32": 4}

def main(path):
    res = json.load(open(path))
    rows, copies = [], {}
    for r in res:
        name = r["benchmark"].rsplit(".", 2)
        bench = ".".join(name[-2:])
        p = r.get("params", {})
        ms = r["primaryMetric"]["score"]
        err = float(r["primaryMetric"].get("scoreError", "nan"))
        if "Copy" in bench:
            gbs = int(p["bytes"]) / (ms / 1e3) / 1e9
            copies[(bench.split(".")[-1], int(p["bytes"]))] = gbs
            rows.append((bench, f"{int(p['bytes'])/1e6:.0f} MB", ms, err, gbs))
        elif "Nf4Benchmark" in bench:
            weights = 4 if "fused" in bench else 1
            gbs = weights * 4096 * 11008 * 2 / (ms / 1e3) / 1e9
            rows.append((bench, "4096x11008 (as BF16)" + (" x4" if weights > 1 else ""), ms, err, gbs))
        elif "Pipeline" in bench:
            gbs = 16 * 4096 * 11008 * 2 / (ms / 1e3) / 1e9
            rows.append((bench, p.get("device", ""), ms, err, gbs))
        else:
            a, b = map(int, p["shape"].split("x"))
            gbs = a * b * SIZES[p["dtype"]] / (ms / 1e3) / 1e9
            rows.append((bench, f"{p['shape']} r{p['rank']} {p['dtype']}", ms, err, gbs))
    h2d = max([v for (k, _), v in copies.items() if k == "pinnedHostToDevice"] or [float("nan")])
    d2d = max([v for (k, _), v in copies.items() if k == "deviceToDevice"] or [float("nan")])
    print("| benchmark | case | ms/op | ± | GB/s of W | x pinned H2D | x D2D copy |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for bench, case, ms, err, gbs in rows:
        print(f"| {bench} | {case} | {ms:.3f} | {err:.3f} | {gbs:.1f} | {gbs / h2d:.2f} | {gbs / d2d:.2f} |")
    print(f"\npinned H2D {h2d:.1f} GB/s, device-to-device copy {d2d:.1f} GB/s (bytes copied per second; D2D moves 2x that through memory)")

if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "jmh.json")
