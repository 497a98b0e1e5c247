#!/usr/bin/env python3
"""PEFT's add_weighted_adapter (the baseline `loramerge combine` is measured against), with phase timings.

    peft_combine.py --base DIR --adapter DIR --adapter DIR ... --weights W1,W2,... --out DIR
                    --combination-type svd|ties_svd|cat|... [--svd-rank R] [--density D]
                    [--device cpu|cuda|auto] [--json]

The recipe, as a PEFT user runs it:
    model = AutoModelForCausalLM.from_pretrained(base, dtype=<base dtype>, device_map=device)
    model = PeftModel.from_pretrained(model, adapter_1, adapter_name="a0"); model.load_adapter(adapter_i, "a<i>") ...
    model.add_weighted_adapter(["a0", ...], weights, "combined", combination_type=..., svd_rank=..., density=...)
    model.save_pretrained(out, selected_adapters=["combined"])      # written to out/combined/
Phase timings go to stderr as `[peft_combine] phase ...` lines and, with --json, as one JSON line on stdout.
"""
import argparse
import json
import os
import sys
import time

T_START = time.time()


def log(msg):
    print(f"[peft_combine] {msg}", file=sys.stderr, flush=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--base", required=True)
    ap.add_argument("--adapter", action="append", required=True)
    ap.add_argument("--weights", required=True, help="comma-separated, one per --adapter")
    ap.add_argument("--out", required=True)
    ap.add_argument("--combination-type", required=True)
    ap.add_argument("--svd-rank", type=int)
    ap.add_argument("--density", type=float)
    ap.add_argument("--device", default="cpu", help="device_map: cpu, cuda, auto")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()

    import torch
    from transformers import AutoModelForCausalLM
    from peft import PeftModel

    t_import = time.time() - T_START
    with open(os.path.join(a.base, "config.json")) as f:
        c = json.load(f)
    dtype = getattr(torch, c.get("dtype") or c.get("torch_dtype") or "bfloat16")
    cuda = a.device.startswith("cuda") or (a.device == "auto" and torch.cuda.is_available())

    def sync():
        if cuda:
            torch.cuda.synchronize()

    phases = {"import": t_import}
    t = time.time()
    model = AutoModelForCausalLM.from_pretrained(a.base, dtype=dtype, device_map=a.device)
    sync()
    phases["load_base"] = time.time() - t

    t = time.time()
    names = [f"a{i}" for i in range(len(a.adapter))]
    model = PeftModel.from_pretrained(model, a.adapter[0], adapter_name=names[0])
    for n, p in zip(names[1:], a.adapter[1:]):
        model.load_adapter(p, adapter_name=n)
    sync()
    phases["load_adapters"] = time.time() - t

    t = time.time()
    weights = [float(w) for w in a.weights.split(",")]
    kw = {"combination_type": a.combination_type}
    if a.svd_rank is not None:
        kw["svd_rank"] = a.svd_rank
    if a.density is not None:
        kw["density"] = a.density
    model.add_weighted_adapter(names, weights, "combined", **kw)
    sync()
    phases["combine"] = time.time() - t

    t = time.time()
    model.save_pretrained(a.out, selected_adapters=["combined"])
    phases["save"] = time.time() - t
    phases["total_in_process"] = time.time() - T_START
    for k, v in phases.items():
        log(f"phase {k:<16} {v:8.2f} s")
    if cuda:
        peak = torch.cuda.max_memory_allocated() / 2**30
        phases["cuda_max_allocated_gib"] = peak
        log(f"torch.cuda.max_memory_allocated {peak:.2f} GiB")
    if a.json:
        print(json.dumps({"tool": "peft_combine", "device": a.device, **{k: round(v, 3) for k, v in phases.items()}}), flush=True)


if __name__ == "__main__":
    main()
