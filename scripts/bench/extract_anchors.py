#!/usr/bin/env python3
"""The extract benchmark's anchors and quality check: per module, the SVD that mergekit runs and torch's
randomized one, each timed, and every method's error against the optimum.

    extract_anchors.py --base DIR --tuned DIR --rank R [--adapter DIR] [--layers 0,15,31 | all]
                       [--device auto|cpu|cuda[:N]] [--niter 2] [--json-out FILE]

For each module whose weight differs between --base and --tuned (in the layers chosen), ΔW = tuned − base
is formed in float32 on the device and
  - torch.linalg.svd(ΔW, full_matrices=False), truncated to R   (mergekit's LoRA extraction: a full SVD per module)
  - torch.svd_lowrank(ΔW, q=R+10, niter=--niter)                 (torch's randomized SVD)
are timed (CUDA synchronized around each call, the first module's calls repeated once to leave out warm-up);
the optimal rank-R error is sqrt(Σ_{i>R} σ_i²) from torch.linalg.svdvals of ΔW in float64 (not timed), and
each method's error ‖ΔW − approximation‖_F (in float64) is divided by it. With --adapter (loramerge extract's
output), the same ratio for B·A·(lora_alpha / r) of each of its modules (r and alpha from adapter_config.json,
rank_pattern and alpha_pattern applied as PEFT applies them).

Prints one line per module and a summary: per method the summed time over the modules measured, that sum
scaled to every changed module of the model when --layers is a subset (labelled "extrapolated"), and the
median and worst error ratio. Python: torch and safetensors.
"""
from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
import time
from pathlib import Path

import torch
from safetensors import safe_open


def device_of(arg: str) -> torch.device:
    if arg == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(arg)


def sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def tensor_files(model: Path) -> dict:
    index = model / "model.safetensors.index.json"
    if index.exists():
        return {k: model / v for k, v in json.loads(index.read_text())["weight_map"].items()}
    with safe_open(str(model / "model.safetensors"), framework="pt") as f:
        return {k: model / "model.safetensors" for k in f.keys()}


def load(files: dict, name: str) -> torch.Tensor:
    with safe_open(str(files[name]), framework="pt") as f:
        return f.get_tensor(name)


def pattern_value(patterns: dict, module: str, default):
    """peft utils/other.py get_pattern_key: the first key with re.match(rf"(.*\\.)?({key})$", module)."""
    for key, value in patterns.items():
        if re.match(rf"(.*\.)?({key})$", module):
            return value
    return default


def layer_of(name: str):
    m = re.search(r"\.layers\.(\d+)\.", name)
    return int(m.group(1)) if m else None


def timed(fn, dev):
    sync(dev)
    t0 = time.perf_counter()
    out = fn()
    sync(dev)
    return out, time.perf_counter() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--base", required=True)
    ap.add_argument("--tuned", required=True)
    ap.add_argument("--rank", type=int, required=True)
    ap.add_argument("--adapter")
    ap.add_argument("--layers", default="0,15,31")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--niter", type=int, default=2)
    ap.add_argument("--json-out")
    a = ap.parse_args()
    dev = device_of(a.device)
    base_files = tensor_files(Path(a.base))
    tuned_files = tensor_files(Path(a.tuned))
    adapter = None
    if a.adapter:
        ad = Path(a.adapter)
        with safe_open(str(ad / "adapter_model.safetensors"), framework="pt") as f:
            adapter = {k: f.get_tensor(k) for k in f.keys()}
        adapter_config = json.loads((ad / "adapter_config.json").read_text())
    candidates = [n for n in base_files if n.endswith(".weight") and n in tuned_files]
    changed = []
    for n in sorted(candidates):
        b, t = load(base_files, n), load(tuned_files, n)
        if b.dim() == 2 and not torch.equal(b, t):
            changed.append(n)
    layers = None if a.layers == "all" else {int(x) for x in a.layers.split(",")}
    chosen = [n for n in changed if layers is None or layer_of(n) in layers]
    rows = []
    for i, n in enumerate(chosen):
        d = (load(tuned_files, n).to(dev, torch.float64) - load(base_files, n).to(dev, torch.float64))
        d32 = d.float()
        r = a.rank
        sv = torch.linalg.svdvals(d)
        optimal = torch.sqrt(torch.clamp((sv[r:] ** 2).sum(), min=0)).item()
        full_fn = lambda: torch.linalg.svd(d32, full_matrices=False)  # noqa: E731
        low_fn = lambda: torch.svd_lowrank(d32, q=min(r + 10, *d32.shape), niter=a.niter)  # noqa: E731
        if i == 0:  # warm-up: kernels, workspace allocation
            timed(full_fn, dev)
            timed(low_fn, dev)
        (u, s, vh), t_full = timed(full_fn, dev)
        err_full = torch.linalg.norm(d - (u[:, :r].double() * s[:r].double()) @ vh[:r].double()).item()
        (u2, s2, v2), t_low = timed(low_fn, dev)
        err_low = torch.linalg.norm(d - (u2[:, :r].double() * s2[:r].double()) @ v2[:, :r].double().T).item()
        row = {"tensor": n, "shape": list(d.shape), "optimal": optimal, "svd_s": t_full, "svd_ratio": err_full / optimal if optimal else None,
               "svd_lowrank_s": t_low, "svd_lowrank_ratio": err_low / optimal if optimal else None}
        if adapter is not None:
            module = n[: -len(".weight")]
            key = "base_model.model." + module
            if key + ".lora_A.weight" in adapter:
                rank = pattern_value(adapter_config.get("rank_pattern") or {}, module, adapter_config["r"])
                alpha = pattern_value(adapter_config.get("alpha_pattern") or {}, module, adapter_config["lora_alpha"])
                ba = adapter[key + ".lora_B.weight"].to(dev, torch.float64) @ adapter[key + ".lora_A.weight"].to(dev, torch.float64)
                if adapter_config.get("fan_in_fan_out"):
                    ba = ba.T
                err = torch.linalg.norm(d - ba * (alpha / rank)).item()
                row["loramerge_rank"] = rank
                row["loramerge_ratio"] = err / optimal if optimal else None
        rows.append(row)
        def ratio(v):
            return "-" if v is None else f"{v:.5f}"  # None: the optimum is 0 (ΔW's rank is at most the asked one)
        print(f"{n} {tuple(d.shape)}: optimal {optimal:.4g}; svd {t_full * 1e3:.1f} ms ratio {ratio(row['svd_ratio'])}; "
              f"svd_lowrank {t_low * 1e3:.1f} ms ratio {ratio(row['svd_lowrank_ratio'])}"
              + (f"; loramerge ratio {ratio(row['loramerge_ratio'])}" if "loramerge_ratio" in row else ""), flush=True)
        del d, d32, u, s, vh, u2, s2, v2
    scale = len(changed) / len(chosen) if chosen else 0
    summary = {"device": str(dev), "rank": a.rank, "modules_changed": len(changed), "modules_measured": len(chosen), "layers": a.layers}
    for method in ("svd", "svd_lowrank", "loramerge"):
        ratios = [x[method + "_ratio"] for x in rows if x.get(method + "_ratio") is not None]
        entry = {"median_ratio": statistics.median(ratios) if ratios else None, "worst_ratio": max(ratios) if ratios else None}
        if method != "loramerge":
            total = sum(x[method + "_s"] for x in rows)
            entry.update({"seconds_measured": total, "seconds_all_modules": total * scale,
                          "extrapolated": len(chosen) < len(changed)})
        summary[method] = entry
    print(json.dumps(summary, indent=1), flush=True)
    if a.json_out:
        Path(a.json_out).write_text(json.dumps({"summary": summary, "modules": rows}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
