#!/usr/bin/env python3
"""Compare the tensors of two safetensors checkpoints (e.g. loramerge's output vs PEFT's).

    compare_checkpoints.py DIR_A DIR_B [--max-ulp 1] [--device cpu|cuda] [--json]

Reads every *.safetensors file under each directory (any sharding; the index is not
needed) and checks: same tensor names, same shapes, same dtypes, and the largest
difference in units in the last place of the tensor's dtype (bf16/fp16/fp32: distance
between the two values in the ordered set of representable numbers; +0 and -0 are equal)
is <= --max-ulp. Also reports max |a-b|, how many elements differ, and how many tensors
are bit-identical. Integer tensors must be equal. Exit status 0 = pass, 1 = fail.
"""
import argparse
import glob
import json
import os
import sys
import time

import torch
from safetensors import safe_open

ORDER_INT = {torch.bfloat16: (torch.int16, 0x7FFF), torch.float16: (torch.int16, 0x7FFF),
             torch.float32: (torch.int32, 0x7FFFFFFF), torch.float64: (torch.int64, 0x7FFFFFFFFFFFFFFF)}


def index(d):
    files = sorted(glob.glob(os.path.join(d, "**", "*.safetensors"), recursive=True))
    if not files:
        raise SystemExit(f"no .safetensors files under {d}")
    m = {}
    for f in files:
        with safe_open(f, framework="pt") as h:
            for k in h.keys():
                if k in m:
                    raise SystemExit(f"{d}: tensor {k} appears in two files ({m[k]}, {f})")
                m[k] = f
    return m


def ordered(t):
    """Map float bits to integers whose difference counts representable steps."""
    it, mag = ORDER_INT[t.dtype]
    x = t.view(it).to(torch.int64)
    return torch.where(x < 0, -(x & mag), x)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("a")
    ap.add_argument("b")
    ap.add_argument("--max-ulp", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--quiet", action="store_true")
    a = ap.parse_args()
    t0 = time.time()

    ia, ib = index(a.a), index(a.b)
    problems = []
    only_a, only_b = sorted(set(ia) - set(ib)), sorted(set(ib) - set(ia))
    if only_a:
        problems.append(f"{len(only_a)} tensor(s) only in A, e.g. {only_a[:3]}")
    if only_b:
        problems.append(f"{len(only_b)} tensor(s) only in B, e.g. {only_b[:3]}")

    handles = {}

    def get(path, key):
        h = handles.get(path)
        if h is None:
            h = safe_open(path, framework="pt")
            h.__enter__()
            handles[path] = h
        return h.get_tensor(key)

    max_ulp = 0
    max_ulp_name = None
    max_abs = 0.0
    n_diff_elems = 0
    n_elems = 0
    n_identical = 0
    common = sorted(set(ia) & set(ib))
    for k in common:
        ta, tb = get(ia[k], k), get(ib[k], k)
        if ta.dtype != tb.dtype:
            problems.append(f"{k}: dtype {ta.dtype} vs {tb.dtype}")
            continue
        if ta.shape != tb.shape:
            problems.append(f"{k}: shape {tuple(ta.shape)} vs {tuple(tb.shape)}")
            continue
        n_elems += ta.numel()
        if a.device != "cpu":
            ta, tb = ta.to(a.device), tb.to(a.device)
        if torch.equal(ta.view(torch.uint8) if ta.dim() else ta, tb.view(torch.uint8) if tb.dim() else tb):
            n_identical += 1
            continue
        if ta.dtype in ORDER_INT:
            d = (ordered(ta) - ordered(tb)).abs()
            u = int(d.max().item())
            n_diff_elems += int((d != 0).sum().item())
            ad = float((ta.float() - tb.float()).abs().max().item())
            max_abs = max(max_abs, ad)
            if u > max_ulp:
                max_ulp, max_ulp_name = u, k
        else:
            n_diff_elems += int((ta != tb).sum().item())
            problems.append(f"{k}: {ta.dtype} tensor differs")
    for h in handles.values():
        h.__exit__(None, None, None)
    if max_ulp > a.max_ulp:
        problems.append(f"max ulp diff {max_ulp} > {a.max_ulp} (in {max_ulp_name})")

    res = {
        "pass": not problems,
        "tensors_a": len(ia), "tensors_b": len(ib), "common": len(common),
        "bit_identical_tensors": n_identical,
        "max_ulp": max_ulp, "max_ulp_tensor": max_ulp_name, "max_abs_diff": max_abs,
        "elements": n_elems, "differing_elements": n_diff_elems,
        "problems": problems[:20], "seconds": round(time.time() - t0, 2),
    }
    if a.json:
        print(json.dumps(res))
    elif not a.quiet:
        v = "PASS" if res["pass"] else "FAIL"
        print(f"{v}: {len(common)} common tensors ({len(ia)} in A, {len(ib)} in B), "
              f"{n_identical} bit-identical, max diff {max_ulp} ulp (limit {a.max_ulp}), "
              f"max |a-b| {max_abs:.3g}, {n_diff_elems}/{n_elems} elements differ, {res['seconds']} s")
        for p in problems[:20]:
            print("  - " + p)
    sys.exit(0 if res["pass"] else 1)


if __name__ == "__main__":
    main()
