#!/usr/bin/env python3
"""The PEFT merge recipe (the baseline loramerge is measured against), with phase timings.

    peft_merge.py --base DIR --adapter DIR --out DIR [--device cpu|cuda|auto] [--dtype auto|bf16|fp16|fp32]
                  [--json]

Exactly the baseline recipe of docs/GPU.md §4:
    model = AutoModelForCausalLM.from_pretrained(base, dtype=<base dtype>, device_map=device)
    model = PeftModel.from_pretrained(model, adapter)
    merged = model.merge_and_unload()
    merged.save_pretrained(out)
Nothing else (no tokenizer, no safe_merge). Phase timings go to stderr as
`[peft_merge] phase load_base 2.01 s` lines and, with --json, as one JSON line on stdout.
"""
import argparse
import json
import os
import sys
import time

T_START = time.time()


def log(msg):
    print(f"[peft_merge] {msg}", file=sys.stderr, flush=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--base", required=True)
    ap.add_argument("--adapter", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--device", default="cpu", help="device_map: cpu, cuda, auto")
    ap.add_argument("--dtype", default="auto", help="auto (the base config's dtype), bf16, fp16, fp32")
    ap.add_argument("--json", action="store_true", help="print the timings as one JSON line on stdout")
    a = ap.parse_args()

    import torch
    from transformers import AutoModelForCausalLM
    from peft import PeftModel

    t_import = time.time() - T_START

    names = {"bf16": torch.bfloat16, "bfloat16": torch.bfloat16, "fp16": torch.float16, "float16": torch.float16,
             "fp32": torch.float32, "float32": torch.float32}
    if a.dtype == "auto":
        with open(os.path.join(a.base, "config.json")) as f:
            c = json.load(f)
        dn = c.get("dtype") or c.get("torch_dtype") or "bfloat16"
        dtype = names[dn]
    else:
        dtype = names[a.dtype]

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
    model = PeftModel.from_pretrained(model, a.adapter)
    sync()
    phases["load_adapter"] = time.time() - t

    t = time.time()
    merged = model.merge_and_unload()
    sync()
    phases["merge"] = time.time() - t

    t = time.time()
    merged.save_pretrained(a.out)
    phases["save"] = time.time() - t
    phases["total_in_process"] = time.time() - T_START

    for k, v in phases.items():
        log(f"phase {k:<16} {v:8.2f} s")
    if cuda:
        peak = torch.cuda.max_memory_allocated() / 2**30
        phases["cuda_max_allocated_gib"] = peak
        log(f"torch.cuda.max_memory_allocated {peak:.2f} GiB")
    log(f"dtype={dtype} device_map={a.device} torch={torch.__version__} threads={torch.get_num_threads()}")
    if a.json:
        print(json.dumps({"tool": "peft", "device": a.device, **{k: round(v, 3) for k, v in phases.items()}}),
              flush=True)


if __name__ == "__main__":
    main()
