#!/usr/bin/env python3
"""Make a "fine-tuned" copy of a checkpoint whose difference to it is known: the extract benchmark's input.

    make_tuned.py --base DIR --out DIR [--rank 64] [--sigma0 0.8] [--decay 0.97] [--noise 1e-4]
                  [--pattern _proj.weight] [--seed 0] [--device auto|cpu|cuda[:N]] [--force]

Every tensor whose name ends with --pattern (the seven projections of a Llama) becomes
W + U·diag(σ)·Vᵀ + E, rounded once to W's dtype: U, V orthonormal (QR of Gaussians), σ_i =
sigma0·decay^i for i < rank, E ~ N(0, noise²) full rank. Every other tensor is copied. The shards,
their tensor order, the index and the non-weight files are those of the base, so extract sees the
same layout on both sides. With the defaults on a 4096x4096 bf16 weight of std 0.02, the delta's
elements are about 2.5e-3 (some 20 bf16 ulps of W) and the noise about one ulp: the optimal rank-64
error is the noise's, about 3% of ‖ΔW‖.

Each tensor has its own generator, seeded from (seed, tensor name), so the output depends only on the
seed and on the kind of generation device. Writes DIR/delta.json (the settings). Python: torch and
safetensors (scripts/fixtures/requirements-fixtures.txt's versions, or the GPU machine's python3).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file


def device_of(arg: str) -> torch.device:
    if arg == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(arg)


def delta(shape, args, name: str, dev: torch.device) -> torch.Tensor:
    seed = args.seed * 1_000_003 + int.from_bytes(hashlib.sha256(name.encode()).digest()[:4], "little")
    gen = torch.Generator(device=dev).manual_seed(seed)
    m, n = shape
    r = min(args.rank, m, n)
    u, _ = torch.linalg.qr(torch.randn(m, r, generator=gen, device=dev, dtype=torch.float32))
    v, _ = torch.linalg.qr(torch.randn(n, r, generator=gen, device=dev, dtype=torch.float32))
    sigma = args.sigma0 * args.decay ** torch.arange(r, device=dev, dtype=torch.float32)
    d = (u * sigma) @ v.T
    return d + args.noise * torch.randn(m, n, generator=gen, device=dev, dtype=torch.float32)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--base", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--rank", type=int, default=64)
    ap.add_argument("--sigma0", type=float, default=0.8)
    ap.add_argument("--decay", type=float, default=0.97)
    ap.add_argument("--noise", type=float, default=1e-4)
    ap.add_argument("--pattern", default="_proj.weight")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--force", action="store_true")
    args = ap.parse_args()
    base, out = Path(args.base), Path(args.out)
    if out.exists():
        if not args.force:
            print(f"{out} exists; pass --force to replace it", file=sys.stderr)
            return 2
        shutil.rmtree(out)
    out.mkdir(parents=True)
    dev = device_of(args.device)
    shards = sorted(p for p in base.iterdir() if p.suffix == ".safetensors")
    changed = 0
    for shard in shards:
        tensors = {}
        with safe_open(str(shard), framework="pt", device="cpu") as f:
            metadata = f.metadata()
            for name in f.keys():
                t = f.get_tensor(name)
                if name.endswith(args.pattern) and t.dim() == 2:
                    w = t.to(dev).to(torch.float32)  # copied as stored (half the bytes of f32), widened on the device
                    t = (w + delta(t.shape, args, name, dev)).to(t.dtype).cpu()
                    changed += 1
                tensors[name] = t
        save_file(tensors, str(out / shard.name), metadata=metadata)
        print(f"{shard.name}: {len(tensors)} tensors", flush=True)
    for p in base.iterdir():
        if p.is_file() and p.suffix != ".safetensors":
            shutil.copy2(p, out / p.name)
    settings = {k: getattr(args, k) for k in ("rank", "sigma0", "decay", "noise", "pattern", "seed")}
    settings.update({"changed_tensors": changed, "device": dev.type})
    (out / "delta.json").write_text(json.dumps(settings, indent=1, sort_keys=True) + "\n")
    print(f"tuned: {changed} tensors changed by a rank-{args.rank} delta plus noise {args.noise}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
