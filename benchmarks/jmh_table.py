#!/usr/bin/env python3
"""Turns JMH's JSON (ms/op) into GB/s of W and the ratios the issue asks for; prints a markdown table."""
import json, sys

SIZES = {"BF16": 2, "F16": 2, "F32": 4}

def nf4_traffic(method, n, blocks):
    """Bytes a CudaNf4Benchmark method must move through device memory (BF16, blocksize 64)."""
    dequant = n / 2 + 4 * blocks + 2 * n                      # codes + absmax in, BF16 out
    requant = 12 * n + n + 32 * blocks                        # X, W (BF16) and P (fp64) in; two code sets, absmax, sums out
    merge = 8 * n + 12 * n                                    # DGEMM writes P; merge-and-round reads W, P, writes X
    finish = 4 * blocks + 9 * blocks + 9 * blocks + n + 40 * blocks  # offset sums, double quant, decode, measure
    return {"dequantize": dequant, "requantize": requant, "fusedMergeToNf4": dequant + merge + requant,
            "doubleQuantAndMeasure": finish}[method]

def main(path):
    res = json.load(open(path))
    rows, copies, nf4_rows = [], {}, []
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
        elif "CudaNf4Benchmark" in bench:
            a, b = map(int, p["shape"].split("x"))
            n = a * b
            traffic = nf4_traffic(bench.split(".")[-1], n, n // 64)
            gbs = n * 2 / (ms / 1e3) / 1e9
            nf4_rows.append((bench, f"{p['shape']} r{p.get('rank', '')} BF16 bs64", ms, err, gbs, traffic / (ms / 1e3) / 1e9))
            continue
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
    if nf4_rows:
        print("\n| NF4 kernel | case | ms/op | ± | GB/s of W (BF16) | device memory traffic GB/s | x D2D traffic |")
        print("| --- | --- | --- | --- | --- | --- | --- |")
        for bench, case, ms, err, gbs, traffic in nf4_rows:
            print(f"| {bench} | {case} | {ms:.3f} | {err:.3f} | {gbs:.1f} | {traffic:.1f} | {traffic / (2 * d2d):.2f} |")
        print(f"\nD2D traffic: {2 * d2d:.1f} GB/s (read + write of a device-to-device copy); traffic counts the bytes each kernel must read and write")

if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "jmh.json")
