#!/usr/bin/env python3
"""Write a synthetic Llama-shaped bf16 checkpoint and a matching PEFT LoRA adapter.

    make_synthetic.py --out DIR [--shape tiny|1gb|3gb|llama-7b|custom]
                      [--layers N --hidden H --intermediate I --vocab V --heads A --kv-heads KV]
                      [--dtype bf16|fp16|fp32] [--shards K] [--rank R] [--alpha A]
                      [--seed S] [--target all-linear|q_proj,v_proj,...]
                      [--gen-device auto|cpu|cuda] [--jobs J] [--force]

Writes
  DIR/base/config.json                     LlamaForCausalLM config (transformers 5 style)
  DIR/base/model-0000k-of-0000K.safetensors + model.safetensors.index.json   (K > 1)
  DIR/base/model.safetensors                                                  (K = 1)
  DIR/adapter/adapter_config.json          as PEFT 0.21 saves it (r=R, lora_alpha=2R)
  DIR/adapter/adapter_model.safetensors    lora_A [r,in] / lora_B [out,r], float32

Weights: linear + embedding + lm_head ~ N(0, 0.02) (randn drawn directly in the target
dtype), norms = 1. lora_A ~ N(0, 0.02), lora_B ~ N(0, 0.02) (both non-zero), so with
r=16, alpha=32 the delta s*B@A has std ~ 2*4*4e-4 = 3.2e-3, well above a bf16 ulp of W.

Every tensor has its own generator seeded from (seed, tensor index), so the output is
deterministic for a given (seed, generation device) whatever the thread count or shard
order. CPU and CUDA generators give *different* numbers for the same seed.

Tensors are streamed to disk one at a time by a minimal safetensors writer (header first,
then each tensor's bytes straight from the tensor's memory), so memory use is about one
tensor per shard being written, never a whole shard or model. Shards are written in
parallel (one thread per shard, up to --jobs).
"""
import argparse
import json
import os
import struct
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import torch

PRESETS = {
    # name: layers, hidden, intermediate, vocab, heads, kv_heads, shards
    "tiny": dict(layers=2, hidden=64, intermediate=176, vocab=256, heads=4, kv_heads=2, shards=2),
    # 8 x 48.2M + 131M = 517M params = 1.03 GB bf16
    "1gb": dict(layers=8, hidden=2048, intermediate=5120, vocab=32000, heads=16, kv_heads=16, shards=2),
    # 17 x 79.3M + 164M = 1.51G params = 3.02 GB bf16
    "3gb": dict(layers=17, hidden=2560, intermediate=6912, vocab=32000, heads=20, kv_heads=20, shards=2),
    # Llama-2-7B: 6.74G params = 13.48 GB bf16
    "llama-7b": dict(layers=32, hidden=4096, intermediate=11008, vocab=32000, heads=32, kv_heads=32, shards=3),
}

DTYPES = {
    "bf16": (torch.bfloat16, "BF16", "bfloat16"),
    "fp16": (torch.float16, "F16", "float16"),
    "fp32": (torch.float32, "F32", "float32"),
}
ST_DTYPE = {torch.bfloat16: "BF16", torch.float16: "F16", torch.float32: "F32"}

PROJ = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def log(msg):
    print(f"[make_synthetic] {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------- tensor specs

class Spec:
    __slots__ = ("name", "shape", "dtype", "kind", "idx")

    def __init__(self, name, shape, dtype, kind, idx):
        self.name, self.shape, self.dtype, self.kind, self.idx = name, tuple(shape), dtype, kind, idx

    @property
    def nbytes(self):
        n = 1
        for d in self.shape:
            n *= d
        return n * self.dtype.itemsize


def proj_shapes(cfg):
    """out, in of each projection."""
    h, i = cfg["hidden"], cfg["intermediate"]
    hd = h // cfg["heads"]
    kv = cfg["kv_heads"] * hd
    return {
        "q_proj": (cfg["heads"] * hd, h),
        "k_proj": (kv, h),
        "v_proj": (kv, h),
        "o_proj": (h, cfg["heads"] * hd),
        "gate_proj": (i, h),
        "up_proj": (i, h),
        "down_proj": (h, i),
    }


def module_prefix(p):
    return "self_attn" if p in ("q_proj", "k_proj", "v_proj", "o_proj") else "mlp"


def base_specs(cfg, dtype):
    """Tensors in the order transformers' state_dict lists them."""
    specs = []
    ps = proj_shapes(cfg)
    h, v = cfg["hidden"], cfg["vocab"]

    def add(name, shape, kind):
        specs.append(Spec(name, shape, dtype, kind, len(specs)))

    add("model.embed_tokens.weight", (v, h), "rand")
    for L in range(cfg["layers"]):
        pre = f"model.layers.{L}"
        for p in ("q_proj", "k_proj", "v_proj", "o_proj"):
            add(f"{pre}.self_attn.{p}.weight", ps[p], "rand")
        for p in ("gate_proj", "up_proj", "down_proj"):
            add(f"{pre}.mlp.{p}.weight", ps[p], "rand")
        add(f"{pre}.input_layernorm.weight", (h,), "ones")
        add(f"{pre}.post_attention_layernorm.weight", (h,), "ones")
    add("model.norm.weight", (h,), "ones")
    add("lm_head.weight", (v, h), "rand")
    return specs


def adapter_specs(cfg, targets, rank, dora=False, embeddings=False, tokens=0):
    """The adapter's tensors as PEFT 0.21 saves them (keys and shapes): lora_A/lora_B per targeted
    projection, DoRA magnitudes ([out], one per output row), LoRA on embed_tokens (lora_embedding_A/B,
    with the embedding itself saved as base_layer.weight, save_embedding_layers) and on lm_head, and
    trainable token rows of embed_tokens."""
    specs = []
    ps = proj_shapes(cfg)
    h, v = cfg["hidden"], cfg["vocab"]

    def add(name, shape, kind="rand"):
        specs.append(Spec(name, shape, torch.float32, kind, len(specs)))

    if embeddings:
        pre = "base_model.model.model.embed_tokens"
        add(pre + ".base_layer.weight", (v, h))
        add(pre + ".lora_embedding_A", (rank, v))
        add(pre + ".lora_embedding_B", (h, rank))
    if tokens:
        add("base_model.model.model.embed_tokens.token_adapter.trainable_tokens_delta", (tokens, h))
    for L in range(cfg["layers"]):
        for p in PROJ:
            if p not in targets:
                continue
            out_f, in_f = ps[p]
            pre = f"base_model.model.model.layers.{L}.{module_prefix(p)}.{p}"
            add(pre + ".lora_A.weight", (rank, in_f))
            add(pre + ".lora_B.weight", (out_f, rank))
            if dora:
                add(pre + ".lora_magnitude_vector", (out_f,), "magnitude")
    if embeddings:
        add("base_model.model.lm_head.lora_A.weight", (rank, h))
        add("base_model.model.lm_head.lora_B.weight", (v, rank))
    return specs


# ---------------------------------------------------------------- generation

class Gen:
    """Makes tensors into a per-thread host staging buffer (pinned when generating on a GPU),
    so no memory is allocated or page-faulted per tensor."""

    def __init__(self, device, seed, stream_salt, max_bytes, bf16_values=False):
        self.bf16_values = bf16_values
        self.device = device
        self.seed = seed
        self.salt = stream_salt
        self.max_bytes = max_bytes
        self.local = threading.local()

    def _state(self):
        st = getattr(self.local, "st", None)
        if st is None:
            g = torch.Generator(device=self.device)
            pin = self.device != "cpu"
            buf = torch.empty(self.max_bytes, dtype=torch.uint8, pin_memory=pin)
            stream = torch.cuda.Stream(device=self.device) if pin else None
            st = self.local.st = (g, buf, stream)
        return st

    def make(self, spec):
        """Returns a uint8 CPU view holding spec's bytes; valid until the next call in this thread."""
        g, buf, stream = self._state()
        out = buf[:spec.nbytes].view(spec.dtype).view(spec.shape)
        if spec.kind == "ones":
            out.fill_(1)
            return buf[:spec.nbytes]
        # per-tensor seed: independent of thread / shard scheduling
        g.manual_seed((self.seed * 1_000_003 + self.salt * 7_919 + spec.idx) & 0x7FFF_FFFF_FFFF_FFFF)
        if self.device == "cpu":
            torch.randn(spec.shape, dtype=spec.dtype, generator=g, out=out)
            self._shape_values(out, spec)
        else:
            with torch.cuda.stream(stream):
                t = torch.randn(spec.shape, dtype=spec.dtype, generator=g, device=self.device)
                self._shape_values(t, spec)
                out.copy_(t, non_blocking=True)
            stream.synchronize()
            del t
        return buf[:spec.nbytes]

    def _shape_values(self, t, spec):
        if spec.kind == "magnitude":
            t.mul_(0.05).add_(1.0)  # DoRA m near the row norms' scale, positive
            return
        t.mul_(0.02)
        if self.bf16_values and spec.dtype == torch.float32:
            # F32 factors whose values are exactly bf16 numbers (what bf16 training saves)
            t.copy_(t.to(torch.bfloat16).to(torch.float32))


# ---------------------------------------------------------------- safetensors writer

def st_header(specs, metadata):
    hdr = {}
    if metadata:
        hdr["__metadata__"] = metadata
    off = 0
    for s in specs:
        hdr[s.name] = {"dtype": ST_DTYPE[s.dtype], "shape": list(s.shape), "data_offsets": [off, off + s.nbytes]}
        off += s.nbytes
    raw = json.dumps(hdr, separators=(",", ":")).encode("utf-8")
    pad = (8 - (8 + len(raw)) % 8) % 8
    raw += b" " * pad
    return struct.pack("<Q", len(raw)) + raw, off


def write_safetensors(path, specs, gen, metadata=None):
    """Stream specs to path, one tensor in memory at a time."""
    header, total = st_header(specs, metadata)
    tmp = path + ".partial"
    with open(tmp, "wb", buffering=0) as f:
        f.write(header)
        for s in specs:
            t = gen.make(s)
            assert t.numel() == s.nbytes, s.name
            mv = memoryview(t.numpy())
            n = 0
            while n < len(mv):  # raw writes may be short for huge buffers
                n += f.write(mv[n:])
            del t, mv
    os.replace(tmp, path)
    return total


def split_shards(specs, k):
    """Contiguous split of specs into k groups of about equal byte size."""
    total = sum(s.nbytes for s in specs)
    target = total / k
    groups = [[] for _ in range(k)]
    acc = 0
    for s in specs:
        gi = min(k - 1, int((acc + s.nbytes / 2) // target))
        groups[gi].append(s)
        acc += s.nbytes
    groups = [g for g in groups if g]
    return groups


# ---------------------------------------------------------------- config files

def llama_config(cfg, dtype_name):
    hd = cfg["hidden"] // cfg["heads"]
    return {
        "architectures": ["LlamaForCausalLM"],
        "attention_bias": False,
        "attention_dropout": 0.0,
        "bos_token_id": 1,
        "dtype": dtype_name,
        "eos_token_id": 2,
        "head_dim": hd,
        "hidden_act": "silu",
        "hidden_size": cfg["hidden"],
        "initializer_range": 0.02,
        "intermediate_size": cfg["intermediate"],
        "max_position_embeddings": 4096,
        "mlp_bias": False,
        "model_type": "llama",
        "num_attention_heads": cfg["heads"],
        "num_hidden_layers": cfg["layers"],
        "num_key_value_heads": cfg["kv_heads"],
        "pad_token_id": None,
        "pretraining_tp": 1,
        "rms_norm_eps": 1e-05,
        "rope_parameters": {"rope_theta": 10000.0, "rope_type": "default"},
        "tie_word_embeddings": False,
        "transformers_version": "5.18.0",
        "use_cache": True,
        "vocab_size": cfg["vocab"],
    }


def peft_adapter_config(targets, rank, alpha, base_path, rslora=False, dora=False, tokens=0):
    # Exactly the key set PEFT 0.21.0 writes for a LoraConfig (checked with
    # LoraConfig(...).save_pretrained), as PeftModel.save_pretrained leaves it:
    # inference_mode true. PEFT stores target_modules as a set, so its list
    # order is arbitrary; we write it sorted.
    return {
        "alora_invocation_tokens": None,
        "alpha_pattern": {},
        "arrow_config": None,
        "auto_mapping": None,
        "base_model_name_or_path": base_path,
        "bias": "none",
        "corda_config": None,
        "ensure_weight_tying": False,
        "eva_config": None,
        "exclude_modules": None,
        "fan_in_fan_out": False,
        "inference_mode": True,
        "init_lora_weights": True,
        "kasa_config": None,
        "layer_replication": None,
        "layers_pattern": None,
        "layers_to_transform": None,
        "loftq_config": {},
        "lora_alpha": alpha,
        "lora_bias": False,
        "lora_dropout": 0.0,
        "lora_ga_config": None,
        "megatron_config": None,
        "megatron_core": "megatron.core",
        "modules_to_save": None,
        "monteclora_config": None,
        "peft_type": "LORA",
        "peft_version": "0.21.0",
        "qalora_group_size": 16,
        "r": rank,
        "rank_pattern": {},
        "revision": None,
        "target_modules": sorted(targets),
        "target_parameters": None,
        "task_type": "CAUSAL_LM",
        "trainable_token_indices": list(range(100, 100 + tokens)) if tokens else None,
        "use_bdlora": None,
        "use_dora": dora,
        "use_qalora": False,
        "use_rslora": rslora,
        "velora_config": None,
    }


def write_json(path, obj):
    with open(path, "w") as f:
        json.dump(obj, f, indent=2)
        f.write("\n")


# ---------------------------------------------------------------- main

def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--shape", default="tiny", choices=list(PRESETS) + ["custom"])
    ap.add_argument("--layers", type=int)
    ap.add_argument("--hidden", type=int)
    ap.add_argument("--intermediate", type=int)
    ap.add_argument("--vocab", type=int)
    ap.add_argument("--heads", type=int)
    ap.add_argument("--kv-heads", type=int)
    ap.add_argument("--dtype", default="bf16", choices=list(DTYPES))
    ap.add_argument("--shards", type=int)
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--alpha", type=int, help="lora_alpha (default 2*rank)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--target", default="all-linear",
                    help="all-linear (the 7 projections; expanded in the saved config, as PEFT does) "
                         "or a comma-separated subset, e.g. q_proj,v_proj")
    ap.add_argument("--gen-device", default="auto", help="auto|cpu|cuda[:N] (auto: cuda if available)")
    ap.add_argument("--jobs", type=int, default=0, help="shards written in parallel (default: all)")
    ap.add_argument("--base-only", action="store_true")
    ap.add_argument("--adapter-only", action="store_true")
    ap.add_argument("--force", action="store_true", help="overwrite an existing DIR/base or DIR/adapter")
    ap.add_argument("--adapter-dir", help="where the adapter goes (default DIR/adapter)")
    ap.add_argument("--factors", default="f32", choices=["f32", "bf16-values"],
                    help="f32: random F32 factors; bf16-values: F32 factors whose values are bf16 numbers (as bf16 training saves)")
    ap.add_argument("--rslora", action="store_true", help="use_rslora: scale alpha/sqrt(r)")
    ap.add_argument("--dora", action="store_true", help="use_dora: a magnitude vector per targeted projection")
    ap.add_argument("--embeddings", action="store_true", help="also LoRA on embed_tokens (saved with its base layer) and lm_head")
    ap.add_argument("--trainable-tokens", type=int, default=0, metavar="K", help="K trainable token rows of embed_tokens (ids 100..)")
    a = ap.parse_args()

    if a.shape == "custom":
        cfg = dict(layers=2, hidden=256, intermediate=688, vocab=1024, heads=None, kv_heads=None, shards=1)
    else:
        cfg = dict(PRESETS[a.shape])
    for k in ("layers", "hidden", "intermediate", "vocab", "heads", "kv_heads", "shards"):
        v = getattr(a, k)
        if v is not None:
            cfg[k] = v
    if a.shape == "custom" or a.hidden is not None:
        if a.heads is None:
            cfg["heads"] = max(1, cfg["hidden"] // 128) if cfg["hidden"] >= 128 else max(1, cfg["hidden"] // 16)
        if a.kv_heads is None:
            cfg["kv_heads"] = cfg["heads"]
    if cfg["hidden"] % cfg["heads"] or cfg["heads"] % cfg["kv_heads"]:
        ap.error(f"hidden {cfg['hidden']} / heads {cfg['heads']} / kv_heads {cfg['kv_heads']} do not divide")

    if a.target in ("all-linear", "all"):
        targets = list(PROJ)
    else:
        targets = [t.strip() for t in a.target.split(",") if t.strip()]
        bad = [t for t in targets if t not in PROJ]
        if bad:
            ap.error(f"unknown target module(s) {bad}; choose from {PROJ}")

    dev = a.gen_device
    if dev == "auto":
        dev = "cuda" if torch.cuda.is_available() else "cpu"
    dtype, _, dtype_name = DTYPES[a.dtype]
    alpha = a.alpha if a.alpha is not None else 2 * a.rank

    base_dir = os.path.join(a.out, "base")
    ad_dir = a.adapter_dir or os.path.join(a.out, "adapter")
    for d, skip in ((base_dir, a.adapter_only), (ad_dir, a.base_only)):
        if skip:
            continue
        if os.path.exists(d) and os.listdir(d):
            if not a.force:
                sys.exit(f"{d} exists and is not empty (use --force)")
            import shutil
            shutil.rmtree(d)
        os.makedirs(d, exist_ok=True)

    t0 = time.time()
    specs = base_specs(cfg, dtype)
    total_bytes = sum(s.nbytes for s in specs)
    total_params = sum(s.nbytes // s.dtype.itemsize for s in specs)
    log(f"shape {a.shape}: layers={cfg['layers']} hidden={cfg['hidden']} intermediate={cfg['intermediate']} "
        f"vocab={cfg['vocab']} heads={cfg['heads']} kv_heads={cfg['kv_heads']} dtype={a.dtype} "
        f"params={total_params / 1e9:.3f}G bytes={total_bytes / 1e9:.3f}GB shards={cfg['shards']} gen={dev}")

    if not a.adapter_only:
        gen = Gen(dev, a.seed, stream_salt=1, max_bytes=max(s.nbytes for s in specs))
        groups = split_shards(specs, cfg["shards"])
        k = len(groups)
        names = ["model.safetensors"] if k == 1 else [f"model-{i + 1:05d}-of-{k:05d}.safetensors" for i in range(k)]
        jobs = a.jobs if a.jobs > 0 else k
        with ThreadPoolExecutor(max_workers=jobs) as ex:
            futs = [ex.submit(write_safetensors, os.path.join(base_dir, n), g, gen, {"format": "pt"})
                    for n, g in zip(names, groups)]
            written = sum(f.result() for f in futs)
        assert written == total_bytes
        if k > 1:
            weight_map = {s.name: n for n, g in zip(names, groups) for s in g}
            write_json(os.path.join(base_dir, "model.safetensors.index.json"),
                       {"metadata": {"total_parameters": total_params, "total_size": total_bytes},
                        "weight_map": weight_map})
        write_json(os.path.join(base_dir, "config.json"), llama_config(cfg, dtype_name))
        write_json(os.path.join(base_dir, "generation_config.json"),
                   {"bos_token_id": 1, "eos_token_id": 2, "transformers_version": "5.18.0"})
        log(f"base: {k} file(s), {total_bytes / 1e9:.3f} GB in {time.time() - t0:.1f} s "
            f"({total_bytes / 1e9 / max(1e-9, time.time() - t0):.2f} GB/s)")

    if not a.base_only:
        t1 = time.time()
        aspecs = adapter_specs(cfg, targets, a.rank, dora=a.dora, embeddings=a.embeddings, tokens=a.trainable_tokens)
        agen = Gen(dev, a.seed, stream_salt=2, max_bytes=max(s.nbytes for s in aspecs), bf16_values=a.factors == "bf16-values")
        nb = write_safetensors(os.path.join(ad_dir, "adapter_model.safetensors"), aspecs, agen, {"format": "pt"})
        write_json(os.path.join(ad_dir, "adapter_config.json"),
                   peft_adapter_config(targets + (["embed_tokens", "lm_head"] if a.embeddings else []), a.rank, alpha,
                                       os.path.abspath(base_dir), rslora=a.rslora, dora=a.dora, tokens=a.trainable_tokens))
        log(f"adapter: r={a.rank} alpha={alpha} targets={','.join(targets)} "
            f"{len(aspecs)} tensors, {nb / 1e6:.1f} MB in {time.time() - t1:.1f} s")
    log(f"done in {time.time() - t0:.1f} s -> {a.out}")


if __name__ == "__main__":
    main()
