#!/usr/bin/env python3
"""Generate loramerge's golden fixtures and the shipped quick-start example.

Every fixture case is a tiny model built from a config in code (nothing is downloaded),
a PEFT LoRA adapter saved by PEFT itself, and PEFT's own ``merge_and_unload()`` output:

    <out>/<case>/base/      base checkpoint as ``save_pretrained`` writes it
    <out>/<case>/adapter/   adapter_config.json + adapter_model.safetensors (+ PEFT's README.md)
    <out>/<case>/peft/      PeftModel.from_pretrained(fresh base, adapter).merge_and_unload().save_pretrained()
    <out>/<case>/case.json  what the case exercises, the adapter's exact key forms, what PEFT did
    <out>/<case>/expected.safetensors      every tensor the merge changes, as loramerge must write it:
                            the exact W + s*B@A (DoRA, biases, replacements, token rows) rounded once
                            to the tensor's dtype, computed here in integer arithmetic from the stored
                            bits (no float arithmetic, nothing of loramerge's)
    <out>/<case>/expected_f32.safetensors  the same, rounded once to F32 (a merge with --dtype f32)

Usage (from the repository root):

    /opt/pyref/bin/python scripts/make_fixtures.py                       # fixtures + example
    /opt/pyref/bin/python scripts/make_fixtures.py --out DIR --examples-out DIR2
    /opt/pyref/bin/python scripts/make_fixtures.py --only linear_bf16,conv2d --no-examples

The output is deterministic: fixed per-case seeds, one CPU thread, sorted JSON, no
timestamps, and relative paths only (the script chdirs into each case folder so that
PEFT records ``base_model_name_or_path: "base"``). Running it twice gives byte-identical
trees (checked with ``cmp -r``/``diff -r``).

Exact versions: scripts/requirements-fixtures.txt.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import re
import shutil
import sys
import warnings
import zlib
from fractions import Fraction
from pathlib import Path

if os.environ.get("PYTHONHASHSEED") != "0":
    # PEFT keeps target_modules in a set (e.g. the expansion of "all-linear") and writes it in set
    # order, which depends on string hashing: fix the hash seed so adapter_config.json is byte-stable.
    os.environ["PYTHONHASHSEED"] = "0"
    os.execv(sys.executable, [sys.executable, os.path.abspath(__file__), *sys.argv[1:]])

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
import safetensors  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402
from torch import nn  # noqa: E402
from transformers import (  # noqa: E402
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
)
from transformers.utils import logging as hf_logging  # noqa: E402

import peft  # noqa: E402
from peft import LoraConfig, PeftModel, get_peft_model  # noqa: E402

hf_logging.disable_progress_bar()
hf_logging.set_verbosity_error()
torch.set_num_threads(1)
torch.use_deterministic_algorithms(True)

PREFIX = "base_model.model."
DTYPES = {"bf16": torch.bfloat16, "f16": torch.float16, "f32": torch.float32}
DTYPE_NAMES = {v: k for k, v in DTYPES.items()}
ALL_LLAMA_LINEARS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]

# Standard deviations of the values written into the trainable tensors before saving.
LORA_B_STD = 0.02  # lora_B (PEFT initialises it to zero)
LORA_EMB_A_STD = 0.002  # lora_embedding_A (PEFT initialises it to zero; lora_embedding_B ~ N(0,1) is kept)
BIAS_STD = 0.02  # lora_B.bias, bias="all" biases, base biases
MAGNITUDE_REL_STD = 0.05  # DoRA m := m * (1 + 0.05 N(0,1))
TOKEN_STD = 0.02  # trainable token rows := original rows + N(0, 0.02)
MODULES_TO_SAVE_STD = 0.01  # modules_to_save copies := copy + N(0, 0.01)


# --------------------------------------------------------------------------------------------
# small helpers
# --------------------------------------------------------------------------------------------


def seed_of(name: str) -> int:
    return zlib.crc32(name.encode("utf-8")) & 0x7FFFFFFF


def write_json(path: Path, obj) -> None:
    path.write_text(json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n", encoding="utf-8")


@contextlib.contextmanager
def chdir(path: Path):
    old = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(old)


class WarningLog:
    """Collects warning messages (deduplicated, first-seen order) while PEFT runs."""

    def __init__(self):
        self.messages: list[str] = []

    @contextlib.contextmanager
    def capture(self, stage: str):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            yield
        for w in caught:
            msg = f"[{stage}] {w.category.__name__}: {str(w.message).strip()}"
            msg = msg.replace(os.getcwd(), "<case>")
            if msg not in self.messages:
                self.messages.append(msg)


def tiny_llama_config(**overrides) -> LlamaConfig:
    kw = dict(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        max_position_embeddings=64,
        rms_norm_eps=1e-5,
        initializer_range=0.02,
        tie_word_embeddings=False,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=None,
    )
    kw.update(overrides)
    return LlamaConfig(**kw)


def tiny_gpt2_config(**overrides) -> GPT2Config:
    kw = dict(
        vocab_size=64,
        n_positions=32,
        n_embd=32,
        n_layer=2,
        n_head=4,
        initializer_range=0.02,
        bos_token_id=1,
        eos_token_id=2,
    )
    kw.update(overrides)
    return GPT2Config(**kw)


def randomize_biases_and_norms(model: nn.Module) -> None:
    """HF initialises biases to 0 and norm weights to 1; make them non-trivial so that a merge that
    replaces or adds to them is observable. Uses the global (seeded) RNG."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(".bias"):
                p.normal_(0.0, BIAS_STD)
            elif p.ndim == 1 and ("norm" in name or ".ln_" in name or name.startswith("ln_")):
                p.add_(torch.randn_like(p) * 0.05)


class TinyConvNet(nn.Module):
    """The custom (non-transformers) model of the conv cases."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, kernel_size=3, padding=1)
        self.conv2 = nn.Conv2d(8, 16, kernel_size=1)
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        x = torch.relu(self.conv1(x))
        x = torch.relu(self.conv2(x))
        return self.fc(x.mean(dim=(2, 3)))


CONV_CONFIG = {
    "model_type": "custom-conv",
    "architectures": ["TinyConvNet"],
    "note": "conv1: Conv2d(3,8,k=3,p=1); conv2: Conv2d(8,16,k=1); fc: Linear(16,10). "
    "Built by scripts/make_fixtures.py (class TinyConvNet); not a transformers model.",
}


def build_conv_net(dtype) -> TinyConvNet:
    m = TinyConvNet()
    with torch.no_grad():
        for name, p in m.named_parameters():
            p.normal_(0.0, 0.02 if not name.endswith("bias") else BIAS_STD)
    return m.to(dtype)


# --------------------------------------------------------------------------------------------
# perturbing the adapter before it is saved
# --------------------------------------------------------------------------------------------


def perturb_trainables(pm: nn.Module, gen: torch.Generator) -> list[str]:
    """Give every trainable PEFT tensor random non-zero values; returns a description of what was done."""
    done = []
    with torch.no_grad():
        for name, p in pm.named_parameters():
            if not p.requires_grad:
                continue

            def rnd(std):
                return (torch.randn(p.shape, generator=gen, dtype=torch.float32) * std).to(p.dtype)

            if ".lora_A." in name:
                what = "kept (PEFT init)"
            elif ".lora_B." in name and name.endswith(".weight"):
                p.copy_(rnd(LORA_B_STD))
                what = f"N(0,{LORA_B_STD})"
            elif ".lora_B." in name and name.endswith(".bias"):
                p.copy_(rnd(BIAS_STD))
                what = f"N(0,{BIAS_STD})"
            elif ".lora_embedding_A." in name:
                p.copy_(rnd(LORA_EMB_A_STD))
                what = f"N(0,{LORA_EMB_A_STD}) (PEFT inits zero)"
            elif ".lora_embedding_B." in name:
                what = "kept (PEFT init N(0,1))"
            elif ".lora_magnitude_vector." in name:
                p.mul_(1.0 + rnd(MAGNITUDE_REL_STD))
                what = f"m*(1+N(0,{MAGNITUDE_REL_STD}))"
            elif ".trainable_tokens_delta." in name:
                p.add_(rnd(TOKEN_STD))
                what = f"original rows + N(0,{TOKEN_STD})"
            elif ".modules_to_save." in name:
                p.add_(rnd(MODULES_TO_SAVE_STD))
                what = f"copy + N(0,{MODULES_TO_SAVE_STD})"
            elif name.endswith(".bias"):
                p.add_(rnd(BIAS_STD))
                what = f"bias + N(0,{BIAS_STD})"
            else:
                raise RuntimeError(f"unexpected trainable parameter {name}")
            done.append(f"{pattern_of(name.removeprefix(PREFIX))}: {what}")
    return sorted(set(done))


# --------------------------------------------------------------------------------------------
# reading checkpoints
# --------------------------------------------------------------------------------------------


def load_checkpoint(folder: Path) -> dict[str, torch.Tensor]:
    index = folder / "model.safetensors.index.json"
    if index.exists():
        out = {}
        weight_map = json.loads(index.read_text())["weight_map"]
        for shard in sorted(set(weight_map.values())):
            out.update(load_file(str(folder / shard)))
        return out
    return load_file(str(folder / "model.safetensors"))


def st_dtype_name(t: torch.Tensor) -> str:
    return {
        torch.bfloat16: "BF16",
        torch.float16: "F16",
        torch.float32: "F32",
        torch.float64: "F64",
        torch.int64: "I64",
    }[t.dtype]


def pattern_of(key: str) -> str:
    return re.sub(r"\.(layers|h)\.\d+\.", r".\1.{i}.", key)


# --------------------------------------------------------------------------------------------
# independent reference merge (FORMATS.md semantics) used to describe what PEFT did
# --------------------------------------------------------------------------------------------


def round_from_f64(x: np.ndarray, dtype: torch.dtype) -> torch.Tensor:
    """Correctly rounded (round-to-nearest-even) conversion of float64 values to dtype."""
    x = np.ascontiguousarray(x, dtype=np.float64)
    if dtype == torch.float32:
        return torch.from_numpy(x.astype(np.float32))
    if dtype == torch.float16:
        return torch.from_numpy(x.astype(np.float16))
    if dtype == torch.bfloat16:
        # round to odd into float32, then RNE to bfloat16: no double-rounding error
        f = x.astype(np.float32)
        back = f.astype(np.float64)
        inexact = back != x
        too_big = np.abs(back) > np.abs(x)
        t = np.where(inexact & too_big, np.nextafter(f, np.float32(0)), f).astype(np.float32)
        bits = t.view(np.uint32).copy()
        bits[inexact] |= np.uint32(1)
        return torch.from_numpy(bits.view(np.float32)).to(torch.bfloat16)
    raise ValueError(dtype)


def ulp_distance(a: torch.Tensor, b: torch.Tensor) -> np.ndarray:
    assert a.dtype == b.dtype and a.shape == b.shape
    if a.dtype in (torch.bfloat16, torch.float16):
        ia = a.contiguous().view(torch.int16).numpy().astype(np.int64)
        ib = b.contiguous().view(torch.int16).numpy().astype(np.int64)
        lo = -(1 << 15)
    else:
        ia = a.contiguous().view(torch.int32).numpy().astype(np.int64)
        ib = b.contiguous().view(torch.int32).numpy().astype(np.int64)
        lo = -(1 << 31)
    oa = np.where(ia < 0, lo - ia, ia)
    ob = np.where(ib < 0, lo - ib, ib)
    return np.abs(oa - ob)


def get_pattern_key(pattern_keys, key_to_match):
    for key in pattern_keys:
        if re.match(rf"(.*\.)?({key})$", key_to_match):
            return key
    return key_to_match


def reference_merge(base: dict, adapter: dict, cfg: dict, tied: bool, module_order: list[str]):
    """Returns (expected_exact, expected_fp32, provenance).

    expected_exact: float64 arithmetic, rounded once to the tensor's dtype.
    expected_fp32: a model of PEFT's own arithmetic as FORMATS.md describes it: fp32 delta
    ((B@A)*s), W.float()+delta rounded once; for a plain embedding LoRA the delta is rounded to
    W's dtype first (double rounding). Deltas are applied in the model's module order, as PEFT does."""
    a = {k.removeprefix(PREFIX): v for k, v in adapter.items()}
    exact = {k: v.double().numpy() for k, v in base.items()}
    fp32 = {k: v.clone() for k, v in base.items()}
    dtypes = {k: v.dtype for k, v in base.items()}
    prov: dict[str, list[str]] = {}

    def target_of(module: str, suffix: str) -> str:
        name = f"{module}.{suffix}"
        if name not in base and tied and module == "lm_head" and "model.embed_tokens.weight" in base:
            return "model.embed_tokens.weight"  # tied: PEFT merges into the shared tensor
        return name

    # 1. replacements
    for k, v in sorted(a.items()):
        if ".lora_" in k or ".token_adapter." in k:
            continue
        name = k.replace(".base_layer.", ".")
        if name not in base:
            name = target_of(name.rsplit(".", 1)[0], name.rsplit(".", 1)[1])
        dt = dtypes.get(name, v.dtype)
        exact[name] = v.to(dt).double().numpy()
        fp32[name] = v.to(dt)
        dtypes[name] = dt
        prov.setdefault(name, []).append(f"replaced by adapter key {k}")

    # 2. deltas
    rank = {n: i for i, n in enumerate(module_order)}
    modules = sorted({re.sub(r"\.(lora_A|lora_B|lora_embedding_A|lora_embedding_B|lora_magnitude_vector)(\..*)?$", "", k)
                      for k in a if ".lora_" in k}, key=lambda m: (rank.get(m, len(rank)), m))
    alpha_pattern = cfg.get("alpha_pattern") or {}
    for mod in modules:
        emb = f"{mod}.lora_embedding_A" in a
        A = a[f"{mod}.lora_embedding_A"] if emb else a[f"{mod}.lora_A.weight"]
        B = a[f"{mod}.lora_embedding_B"] if emb else a[f"{mod}.lora_B.weight"]
        r = A.shape[0]
        alpha = alpha_pattern.get(get_pattern_key(alpha_pattern.keys(), mod), cfg["lora_alpha"])
        s = alpha / math.sqrt(r) if cfg.get("use_rslora") else alpha / r
        wname = target_of(mod, "weight")
        W64 = exact[wname]
        dt = dtypes[wname]
        A64, B64 = A.double().numpy(), B.double().numpy()
        A32, B32 = A.float(), B.float()
        if emb:
            d64 = (B64 @ A64).T * s
            d32 = (B32 @ A32).T * s
            kind = "embedding"
        elif W64.ndim == 4:
            d64 = (B64.reshape(B64.shape[0], r) @ A64.reshape(r, -1)).reshape(W64.shape) * s
            d32 = (B32.reshape(B32.shape[0], r) @ A32.reshape(r, -1)).reshape(W64.shape) * s
            kind = "conv"
        elif cfg.get("fan_in_fan_out"):
            d64 = (B64 @ A64).T * s
            d32 = (B32 @ A32).T * s
            kind = "conv1d"
        else:
            d64 = (B64 @ A64) * s
            d32 = (B32 @ A32) * s
            kind = "linear"
        V64 = W64 + d64
        Wcur32 = fp32[wname]
        mag = a.get(f"{mod}.lora_magnitude_vector")
        if mag is not None:
            m64 = mag.double().numpy()
            V32 = Wcur32.float() + d32
            if kind == "embedding":
                n64 = np.linalg.norm(V64, axis=0)
                exact[wname] = V64 * (m64 / n64)[None, :]
                n32 = torch.linalg.norm(V32.T, dim=1)
                fp32[wname] = ((mag.float() / n32).view(1, -1) * V32).to(dt)
            elif kind == "conv":
                n64 = np.sqrt((V64.reshape(V64.shape[0], -1) ** 2).sum(axis=1))
                exact[wname] = V64 * (m64.reshape(-1) / n64).reshape(-1, 1, 1, 1)
                n32 = V32.norm(p=2, dim=tuple(range(1, V32.dim())), keepdim=True).transpose(1, 0)
                fp32[wname] = ((mag.float() / n32).transpose(1, 0) * V32).to(dt)
            elif kind == "conv1d":
                n64 = np.linalg.norm(V64.T, axis=1)
                exact[wname] = V64 * (m64 / n64)[None, :]
                n32 = torch.linalg.norm(V32.T, dim=1)
                fp32[wname] = ((mag.float() / n32).view(1, -1) * V32).to(dt)
            else:
                n64 = np.linalg.norm(V64, axis=1)
                exact[wname] = V64 * (m64 / n64)[:, None]
                n32 = torch.linalg.norm(V32, dim=1)
                fp32[wname] = ((mag.float() / n32).view(-1, 1) * V32).to(dt)
            prov.setdefault(wname, []).append(f"DoRA {kind} s={s:.6g} r={r} from {mod}")
        else:
            exact[wname] = V64
            if kind == "embedding":
                fp32[wname] = (Wcur32.float() + d32.to(dt).float()).to(dt)
            else:
                fp32[wname] = (Wcur32.float() + d32).to(dt)
            prov.setdefault(wname, []).append(f"LoRA {kind} s={s:.6g} r={r} from {mod}")
        bias = a.get(f"{mod}.lora_B.bias")
        if bias is not None:
            bname = f"{mod}.bias"
            exact[bname] = exact[bname] + bias.double().numpy() * s
            fp32[bname] = (fp32[bname].float() + bias.float() * s).to(dtypes[bname])
            prov.setdefault(bname, []).append(f"lora_B.bias s={s:.6g} from {mod}")

    # 3. trainable tokens (row replacement)
    for k in sorted(a):
        if k.endswith(".token_adapter.trainable_tokens_delta"):
            mod = k.removesuffix(".token_adapter.trainable_tokens_delta")
            wname = target_of(mod, "weight")
            idx = cfg["trainable_token_indices"]
            if isinstance(idx, dict):
                idx = next(v for kk, v in idx.items() if mod.endswith(kk))
            rows = a[k].to(dtypes[wname])
            e = exact[wname].copy()
            e[idx] = rows.double().numpy()
            exact[wname] = e
            f = fp32[wname].clone()
            f[idx] = rows
            fp32[wname] = f
            prov.setdefault(wname, []).append(f"rows {idx} replaced by {k}")

    exact_t = {k: round_from_f64(v, dtypes[k]) if k in prov else base[k] for k, v in exact.items()}
    return exact_t, fp32, prov


def describe_merge(base: dict, peft_out: dict, adapter: dict, cfg: dict, tied: bool, module_order) -> dict:
    exact, fp32, prov = reference_merge(base, adapter, cfg, tied, module_order)
    tensors = {}
    for name in sorted(set(base) | set(peft_out)):
        info = {}
        b = base.get(name)
        p = peft_out.get(name)
        if b is None:
            info["only_in"] = "peft"
        elif p is None:
            info["only_in"] = "base"
        else:
            if b.dtype != p.dtype:
                info["dtype"] = [st_dtype_name(b), st_dtype_name(p)]
            if b.shape != p.shape:
                info["shape"] = [list(b.shape), list(p.shape)]
        if p is not None:
            info["dtype_out"] = st_dtype_name(p)
            info["shape_out"] = list(p.shape)
        if b is not None and p is not None and b.shape == p.shape:
            info["elements_changed_vs_base"] = int((b.to(p.dtype) != p).sum())
        if name in prov:
            info["reference"] = prov[name]
        if p is not None and name in exact and exact[name].shape == p.shape and exact[name].dtype == p.dtype:
            d_exact = ulp_distance(p, exact[name])
            d_fp32 = ulp_distance(p, fp32[name].to(p.dtype))
            info["mismatch_vs_exact_f64"] = int((d_exact != 0).sum())
            info["max_ulp_vs_exact_f64"] = int(d_exact.max()) if d_exact.size else 0
            diff = (p.double() - exact[name].double()).abs()
            info["max_abs_diff_vs_exact_f64"] = float(f"{diff.max().item():.6g}") if diff.numel() else 0.0
            info["mismatch_vs_peft_fp32_model"] = int((d_fp32 != 0).sum())
        elif p is not None and name in exact:
            info["reference_unavailable"] = "shape/dtype differs from reference"
        info["numel"] = int(p.numel()) if p is not None else int(b.numel())
        # keep unchanged, unreferenced tensors terse
        if name not in prov and info.get("elements_changed_vs_base") == 0 and "only_in" not in info \
                and "dtype" not in info and "shape" not in info:
            info = "unchanged"
        tensors[name] = info
    return tensors


# --------------------------------------------------------------------------------------------
# the exact expected output: what loramerge must write for every tensor the adapter changes
# --------------------------------------------------------------------------------------------
#
# Computed from the stored bits alone, in integers (no float arithmetic): every F32/BF16/F16 value
# is an integer times 2^-149, and the scale (lora_alpha / r, or lora_alpha / sqrt(r) with rsLoRA, a
# Python float as PEFT computes it) is an integer over a power of two, so W + s*B@A is an integer
# over a power of two. DoRA's (m / ||W + dW||) * (W + dW) is decided by exact comparisons of
# squares. Each value is rounded once, to nearest with ties to even: expected.safetensors holds the
# adapted tensors in their own dtype (a plain merge), expected_f32.safetensors in F32 (--dtype f32).
# Where loramerge differs from PEFT it is loramerge's rule that is written here: a tied lm_head
# whose delta differs from the embedding's is written as lm_head.weight, an identical one is
# applied once; replaced tensors are converted to the base tensor's dtype; an exactly zero result
# is +0 unless nothing was added to a zero weight.

UNIT = 149  # every value of the three formats is an integer times 2^-UNIT
EXACT_FORMATS = {"BF16": (8, -126, 127, 16), "F16": (11, -14, 15, 16), "F32": (24, -126, 127, 32)}
EMBEDDING_NAMES = ("embed_tokens.weight", "wte.weight", "word_embeddings.weight", "embed_in.weight", "tok_embeddings.weight")


def ints_of(t: torch.Tensor) -> np.ndarray:
    """The values times 2^UNIT as Python ints, flattened (exact: float64 holds them, and the scaling is a power of two)."""
    x = np.ldexp(t.double().numpy().ravel(), UNIT)
    assert np.all(np.isfinite(x))
    return np.array([int(v) for v in x], dtype=object)


def encode_scaled(n: int, q: int, dtype: str) -> int:
    """The bits, without sign, of n * 2^q, where n < 2^precision (or == 2^precision after rounding up)."""
    precision, emin, emax, width = EXACT_FORMATS[dtype]
    if n >> precision:
        n >>= 1
        q += 1
    exp_bits = width - precision
    if n < (1 << (precision - 1)):
        return n  # subnormal, or zero
    if q + precision - 1 > emax:
        return ((1 << exp_bits) - 1) << (precision - 1)  # infinity
    biased = q + precision - 1 + (1 << (exp_bits - 1)) - 1
    return (biased << (precision - 1)) | (n - (1 << (precision - 1)))


def round_ratio_bits(num: int, exp: int, dtype: str) -> int:
    """Bits of num / 2^exp rounded to nearest, ties to even; beyond the largest finite value +-inf; 0 is +0."""
    precision, emin, _, width = EXACT_FORMATS[dtype]
    if num == 0:
        return 0
    sign = (1 << (width - 1)) if num < 0 else 0
    a = abs(num)
    q = max(a.bit_length() - 1 - exp, emin) - precision + 1  # the quantum's exponent
    shift = exp + q  # |value| / 2^q == a / 2^shift
    if shift <= 0:
        n = a << -shift
    else:
        n = a >> shift
        rem, half = a - (n << shift), 1 << (shift - 1)
        if rem > half or (rem == half and n & 1):
            n += 1
    return sign | encode_scaled(n, q, dtype)


def round_sqrt_bits(negative: bool, square: Fraction, dtype: str) -> int:
    """Bits of +-sqrt(square) rounded to nearest, ties to even (a tie needs a rational root)."""
    precision, emin, _, width = EXACT_FORMATS[dtype]
    sign = (1 << (width - 1)) if negative else 0
    if square == 0:
        return sign
    e = (square.numerator.bit_length() - square.denominator.bit_length()) // 2
    while Fraction(4) ** e > square:  # e = floor(log2 sqrt(square)): 4^e <= square < 4^(e+1)
        e -= 1
    while Fraction(4) ** (e + 1) <= square:
        e += 1
    q = max(e, emin) - precision + 1
    scaled = square / Fraction(4) ** q  # (sqrt(square) / 2^q)^2
    n = math.isqrt(scaled.numerator // scaled.denominator)
    # sqrt(scaled) against n + 1/2: compare 4 * scaled with (2n + 1)^2
    c = (4 * scaled > (2 * n + 1) ** 2) - (4 * scaled < (2 * n + 1) ** 2)
    if c > 0 or (c == 0 and n & 1):
        n += 1
    return sign | encode_scaled(n, q, dtype)


def scale_of(cfg: dict, module: str, r: int) -> float:
    alpha_pattern = cfg.get("alpha_pattern") or {}
    alpha = alpha_pattern.get(get_pattern_key(alpha_pattern.keys(), module), cfg["lora_alpha"])
    return alpha / math.sqrt(r) if cfg.get("use_rslora") else alpha / r


def exact_expected(case_dir: Path) -> dict[str, tuple[torch.dtype, tuple, list[int], list[int]]]:
    """{output tensor: (torch dtype, shape, bits in that dtype, bits in F32)} for every tensor the merge changes."""
    base = load_checkpoint(case_dir / "base")
    adapter = {k.removeprefix(PREFIX): v for k, v in load_file(str(case_dir / "adapter" / "adapter_model.safetensors")).items()}
    cfg = json.loads((case_dir / "adapter" / "adapter_config.json").read_text())
    base_cfg_path = case_dir / "base" / "config.json"
    base_cfg = json.loads(base_cfg_path.read_text()) if base_cfg_path.exists() else {}
    embed = next((n for s in EMBEDDING_NAMES for n in base if base[n].ndim == 2 and (n == s or n.endswith("." + s))), None)
    tied = bool(base_cfg.get("tie_word_embeddings", True)) and embed is not None and "lm_head.weight" not in base
    head = "lm_head.weight"

    # replacements: base_layer copies, modules_to_save (the trained copy), bias="all" biases
    replaced: dict[str, torch.Tensor] = {}
    for k in sorted(adapter):
        if ".lora_" in k or ".token_adapter." in k or ".original_module." in k:
            continue
        name = k.replace(".base_layer.", ".").replace(".modules_to_save.", ".")
        if ".modules_to_save." in k or name not in replaced:
            replaced[name] = adapter[k]
    # LoRA terms (A, B, s, transposed, magnitude) per weight, lora_B.bias terms per bias, token rows per embedding
    terms: dict[str, list] = {}
    bias_terms: dict[str, list] = {}
    tokens: dict[str, tuple] = {}
    for mod in sorted({re.sub(r"\.(lora_A|lora_B|lora_embedding_A|lora_embedding_B|lora_magnitude_vector)(\..*)?$", "", k)
                       for k in adapter if ".lora_" in k}):
        emb = f"{mod}.lora_embedding_A" in adapter
        a = adapter[f"{mod}.lora_embedding_A" if emb else f"{mod}.lora_A.weight"]
        b = adapter[f"{mod}.lora_embedding_B" if emb else f"{mod}.lora_B.weight"]
        s = scale_of(cfg, mod, a.shape[0])
        w = replaced.get(f"{mod}.weight", base.get(f"{mod}.weight", base[embed] if tied and mod == "lm_head" else None))
        assert w is not None, mod
        # (B@A)^T for embeddings and for transformers' Conv1D layers ([in, out] weights: GPT-2's, all but lm_head)
        transposed = emb or (w.ndim == 2 and base_cfg.get("model_type") == "gpt2" and mod != "lm_head")
        terms.setdefault(f"{mod}.weight", []).append((a, b, s, transposed, adapter.get(f"{mod}.lora_magnitude_vector")))
        if f"{mod}.lora_B.bias" in adapter:
            bias_terms.setdefault(f"{mod}.bias", []).append((adapter[f"{mod}.lora_B.bias"], s))
    for k in adapter:
        if k.endswith(".token_adapter.trainable_tokens_delta"):
            mod = k.removesuffix(".token_adapter.trainable_tokens_delta")
            idx = cfg["trainable_token_indices"]
            if isinstance(idx, dict):
                idx = next(v for kk, v in idx.items() if mod == kk or mod.endswith("." + kk))
            tokens[f"{mod}.weight"] = (list(idx), adapter[k])

    def delta(term, rows):
        """B@A (or its transpose) as ints times 2^(2*UNIT), [rows, cols] of the weight viewed 2-D."""
        a, b, _, transposed, _ = term
        r = a.shape[0]
        d = ints_of(b).reshape(-1, r).dot(ints_of(a).reshape(r, -1))
        return d.T if transposed else d.reshape(rows, -1)

    # what each output tensor is made of: (source, terms, dtype), in base order
    ops = {}
    for name in base:
        if name in replaced or name in terms or name in bias_terms or name in tokens:
            ops[name] = [replaced.get(name, base[name]), terms.get(name, []), bias_terms.get(name, []), tokens.get(name),
                         base[name].dtype]
    if tied and (head in terms or head in replaced):
        e = ops.get(embed)
        same = (e is not None and head not in replaced and embed not in replaced and len(e[1]) == len(terms.get(head, []))
                and embed not in tokens and all(t[4] is None for t in e[1] + terms[head])
                and all(x[2] == y[2] and np.array_equal(delta(x, base[embed].shape[0]), delta(y, base[embed].shape[0]))
                        for x, y in zip(e[1], terms[head])))
        if not same:  # untied: lm_head.weight written, from what the shared tensor was replaced with
            src = replaced.get(head, e[0] if e is not None else base[embed])
            ops[head] = [src, terms.get(head, []), [], tokens.get(head, e[3] if e is not None else None), base[embed].dtype]

    out = {}
    for name, (src, t, bt, tok, dtype) in ops.items():
        shape = tuple(src.shape)
        rows = shape[0]
        w = ints_of(src)
        w_negative = np.signbit(src.double().numpy().ravel())
        kmax = max([float(x[2]).as_integer_ratio()[1].bit_length() - 1 for x in t + [(None, None, s) for _, s in bt]] + [0])
        exp = 2 * UNIT + kmax  # every contribution is an integer over 2^exp
        num = w * (1 << (exp - UNIT))
        added = np.zeros(w.size, dtype=object)
        for term in t:
            sn, sd = float(term[2]).as_integer_ratio()
            added = added + delta(term, rows).ravel() * (sn << (exp - 2 * UNIT - (sd.bit_length() - 1)))
        for bvec, s in bt:
            sn, sd = float(s).as_integer_ratio()
            added = added + ints_of(bvec) * (sn << (exp - UNIT - (sd.bit_length() - 1)))
        num = num + added
        mags = [x[4] for x in t if x[4] is not None]
        native, f32 = [], []
        for out_dtype, bits in ((DTYPE_NAMES_ST[dtype], native), ("F32", f32)):
            if mags:
                # DoRA: rows of [out, rest] for Linear and Conv, columns for Conv1D and embeddings
                m = ints_of(mags[0])
                v = num.reshape(rows, -1)
                by_row = not t[0][3]
                sums = [sum(x * x for x in (v[i, :] if by_row else v[:, i])) for i in range(v.shape[0] if by_row else v.shape[1])]
                for i in range(v.shape[0]):
                    for j in range(v.shape[1]):
                        k = i if by_row else j
                        x, mk = v[i, j], m[k]
                        bits.append(round_sqrt_bits((x < 0) != (mk < 0), Fraction(x * x * mk * mk, sums[k] << (2 * UNIT)), out_dtype))
            else:
                for i, x in enumerate(num):
                    if x == 0 and added[i] == 0 and w_negative[i]:
                        bits.append(1 << (EXACT_FORMATS[out_dtype][3] - 1))  # nothing added to -0: it stays -0
                    else:
                        bits.append(round_ratio_bits(int(x), exp, out_dtype))
            if tok is not None:
                idx, rows_t = tok
                cols = w.size // rows
                rv = ints_of(rows_t).reshape(len(idx), cols)
                for i, row in zip(idx, rv):  # a repeated index takes the last row, as index_copy_ does
                    for j in range(cols):
                        bits[i * cols + j] = round_ratio_bits(int(row[j]), UNIT, out_dtype)
        out[name] = (dtype, shape, native, f32)
    return out


DTYPE_NAMES_ST = {torch.bfloat16: "BF16", torch.float16: "F16", torch.float32: "F32"}


def bits_tensor(bits: list[int], dtype: torch.dtype, shape) -> torch.Tensor:
    if dtype == torch.float32:
        raw = np.array(bits, dtype=np.uint32).view(np.int32)
        return torch.from_numpy(raw.copy()).view(torch.float32).reshape(shape)
    raw = np.array(bits, dtype=np.uint16).view(np.int16)
    return torch.from_numpy(raw.copy()).view(dtype).reshape(shape)


def write_expected(case_dir: Path) -> None:
    """expected.safetensors and expected_f32.safetensors: the adapted tensors as loramerge must write them."""
    exp = exact_expected(case_dir)
    save_file({n: bits_tensor(nb, d, s) for n, (d, s, nb, _) in exp.items()}, str(case_dir / "expected.safetensors"),
              metadata={"format": "pt"})
    save_file({n: bits_tensor(fb, torch.float32, s) for n, (_, s, _, fb) in exp.items()}, str(case_dir / "expected_f32.safetensors"),
              metadata={"format": "pt"})


# --------------------------------------------------------------------------------------------
# the fixture pipeline
# --------------------------------------------------------------------------------------------


def config_diff(a: Path, b: Path) -> dict:
    if not (a.exists() and b.exists()):
        return {}
    ca, cb = json.loads(a.read_text()), json.loads(b.read_text())
    out = {}
    for k in sorted(set(ca) | set(cb)):
        if ca.get(k, "<absent>") != cb.get(k, "<absent>"):
            out[k] = [ca.get(k, "<absent>"), cb.get(k, "<absent>")]
    return out


def adapter_summary(adapter_dir: Path) -> tuple[dict, list[str], dict]:
    path = adapter_dir / "adapter_model.safetensors"
    tensors = load_file(str(path))
    with safetensors.safe_open(str(path), "pt") as f:
        meta = f.metadata()
    keys = {k: f"{st_dtype_name(v)}{list(v.shape)}" for k, v in sorted(tensors.items())}
    patterns = sorted({pattern_of(k) for k in tensors})
    return keys, patterns, meta or {}


def hf_case(out_root: Path, case: str, *, base_dtype: str, features: list[str], notes: str,
            build_base, lora: dict, base_class=LlamaForCausalLM, max_shard_size=None,
            before_peft=None, before_load=None):
    torch.manual_seed(seed_of(case))
    gen = torch.Generator().manual_seed(seed_of(case) + 1)
    case_dir = out_root / case
    if case_dir.exists():
        shutil.rmtree(case_dir)
    case_dir.mkdir(parents=True)
    dtype = DTYPES[base_dtype]
    wl = WarningLog()
    save_kw = {"max_shard_size": max_shard_size} if max_shard_size else {}

    with chdir(case_dir):
        model = build_base().to(dtype)
        model.save_pretrained("base", **save_kw)
        del model

        # training side: load base, optional pre-processing (resize), wrap, perturb, save adapter
        with wl.capture("get_peft_model"):
            base = base_class.from_pretrained("base", dtype=dtype)
            if before_peft:
                before_peft(base)
            pm = get_peft_model(base, LoraConfig(**lora))
        perturbed = perturb_trainables(pm, gen)
        with wl.capture("save_adapter"):
            pm.save_pretrained("adapter")
        del pm, base

        # PEFT's merge: fresh base, load adapter, merge_and_unload, save
        with wl.capture("merge"):
            base = base_class.from_pretrained("base", dtype=dtype)
            if before_load:
                before_load(base)
            pm = PeftModel.from_pretrained(base, "adapter")
            module_order = [n for n, _ in pm.base_model.model.named_modules()]
            merged = pm.merge_and_unload()
            merged.save_pretrained("peft", **save_kw)
        del pm, merged, base

    write_case_json(case_dir, case, base_dtype, features, notes, perturbed, wl, lora, module_order)


def write_case_json(case_dir: Path, case, base_dtype, features, notes, perturbed, wl, lora_cfg_src, module_order):
    readme = case_dir / "adapter" / "README.md"
    if readme.exists():
        readme.unlink()  # PEFT's boilerplate model card (5 KB); dropped to keep the fixtures small
    base_sd = load_checkpoint(case_dir / "base")
    peft_sd = load_checkpoint(case_dir / "peft")
    adapter = load_file(str(case_dir / "adapter" / "adapter_model.safetensors"))
    cfg = json.loads((case_dir / "adapter" / "adapter_config.json").read_text())
    base_cfg_path = case_dir / "base" / "config.json"
    base_cfg = json.loads(base_cfg_path.read_text()) if base_cfg_path.exists() else {}
    tied = bool(base_cfg.get("tie_word_embeddings", False))
    keys, patterns, meta = adapter_summary(case_dir / "adapter")

    def files(d):
        return sorted(p.name for p in (case_dir / d).iterdir())

    info = {
        "case": case,
        "features": features,
        "base_dtype": base_dtype,
        "notes": notes,
        "lora_config_given": {k: v for k, v in sorted(lora_cfg_src.items())},
        "adapter_keys": keys,
        "adapter_key_patterns": patterns,
        "adapter_safetensors_metadata": meta,
        "adapter_values_set_before_save": perturbed,
        "files": {d: files(d) for d in ("base", "adapter", "peft")},
        "files_note": "PEFT also wrote adapter/README.md (a boilerplate model card); it is removed here.",
        "peft_config_json_changes": config_diff(case_dir / "base" / "config.json", case_dir / "peft" / "config.json"),
        "peft_warnings": wl.messages,
        "tensors": describe_merge(base_sd, peft_sd, adapter, cfg, tied, module_order),
    }
    write_json(case_dir / "case.json", info)
    write_expected(case_dir)


def conv_case(out_root: Path, case: str, *, base_dtype: str, features: list[str], notes: str, lora: dict):
    torch.manual_seed(seed_of(case))
    gen = torch.Generator().manual_seed(seed_of(case) + 1)
    case_dir = out_root / case
    if case_dir.exists():
        shutil.rmtree(case_dir)
    case_dir.mkdir(parents=True)
    dtype = DTYPES[base_dtype]
    wl = WarningLog()
    with chdir(case_dir):
        Path("base").mkdir()
        model = build_conv_net(dtype)
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, "base/model.safetensors",
                  metadata={"format": "pt"})
        write_json(Path("base/config.json"), CONV_CONFIG | {"torch_dtype": str(dtype).removeprefix("torch.")})
        del model

        with wl.capture("get_peft_model"):
            m = TinyConvNet().to(dtype)
            m.load_state_dict(load_file("base/model.safetensors"))
            pm = get_peft_model(m, LoraConfig(**lora))
        perturbed = perturb_trainables(pm, gen)
        with wl.capture("save_adapter"):
            pm.save_pretrained("adapter")
        del pm, m

        with wl.capture("merge"):
            m = TinyConvNet().to(dtype)
            m.load_state_dict(load_file("base/model.safetensors"))
            pm = PeftModel.from_pretrained(m, "adapter")
            module_order = [n for n, _ in pm.base_model.model.named_modules()]
            merged = pm.merge_and_unload()
            Path("peft").mkdir()
            save_file({k: v.contiguous() for k, v in merged.state_dict().items()}, "peft/model.safetensors",
                      metadata={"format": "pt"})
            shutil.copyfile("base/config.json", "peft/config.json")
        del pm, merged, m
    write_case_json(case_dir, case, base_dtype, features, notes, perturbed, wl, lora, module_order)


# --------------------------------------------------------------------------------------------
# the cases
# --------------------------------------------------------------------------------------------


def llama(**kw):
    return lambda: LlamaForCausalLM(tiny_llama_config(**kw))


def llama_with_biases(**kw):
    def build():
        m = LlamaForCausalLM(tiny_llama_config(**kw))
        randomize_biases_and_norms(m)
        return m
    return build


def gpt2(**kw):
    def build():
        m = GPT2LMHeadModel(tiny_gpt2_config(**kw))
        randomize_biases_and_norms(m)
        return m
    return build


def resize_to(n):
    def f(model):
        model.resize_token_embeddings(n)
    return f


def cases():
    L = ALL_LLAMA_LINEARS
    c = []

    def add(name, **kw):
        c.append((name, kw))

    for dt in ("bf16", "f16", "f32"):
        add(f"linear_{dt}", kind="hf", base_dtype=dt, features=["lora_linear", f"dtype_{dt}"],
            notes="Plain LoRA on all seven Llama projections, r=8, alpha=16 (s=2). Untied Llama, 2 layers, "
                  "q/o [32,32], k/v [16,32] (GQA), gate/up [48,32], down [32,48]. PEFT's result equals "
                  "(W.float() + (B.float()@A.float())*s).to(dtype) bit for bit; in bf16/f16 it also equals the "
                  "exactly rounded result except for a handful of elements (see case.json tensors).",
            build_base=llama(), lora=dict(r=8, lora_alpha=16, target_modules=L))
    add("rslora", kind="hf", base_dtype="bf16", features=["lora_linear", "use_rslora"],
        notes="use_rslora=True, r=4, alpha=8: s = 8/sqrt(4) = 4 (plain LoRA would be 2).",
        build_base=llama(), lora=dict(r=4, lora_alpha=8, use_rslora=True, target_modules=["q_proj", "v_proj", "down_proj"]))
    add("rank_alpha_pattern", kind="hf", base_dtype="bf16", features=["lora_linear", "rank_pattern", "alpha_pattern"],
        notes="r=8, alpha=16 by default; rank_pattern {'^model.layers.0.self_attn.q_proj': 3, 'k_proj': 2, 'q_proj': 5}; "
              "alpha_pattern {'^model.layers.1.self_attn.v_proj': 7, 'v_proj': 32}. First matching key wins "
              "(re.match(rf'(.*\\.)?({key})$', name)); layers.0.q_proj matches both the anchored key and 'q_proj' and "
              "gets r=3. PEFT writes adapter_config.json with sort_keys=True, so the on-disk key order is sorted "
              "(here it equals the order given). Expected: L0.q r=3 s=16/3, L1.q r=5 s=16/5, k r=2 s=8, "
              "L0.v r=8 s=4, L1.v r=8 s=7/8, o/gate/up/down r=8 s=2.",
        build_base=llama(),
        lora=dict(r=8, lora_alpha=16, target_modules=L,
                  rank_pattern={"^model.layers.0.self_attn.q_proj": 3, "k_proj": 2, "q_proj": 5},
                  alpha_pattern={"^model.layers.1.self_attn.v_proj": 7, "v_proj": 32}))
    add("target_regex", kind="hf", base_dtype="bf16", features=["lora_linear", "target_modules_regex"],
        notes="target_modules is a regex string, re.fullmatch'ed against the full module name: only "
              "model.layers.1.self_attn.q_proj and .v_proj are adapted.",
        build_base=llama(), lora=dict(r=8, lora_alpha=16, target_modules=r".*\.layers\.1\..*(q_proj|v_proj)"))
    add("exclude_modules", kind="hf", base_dtype="bf16", features=["lora_linear", "exclude_modules"],
        notes="target_modules [q,k,v,o]; exclude_modules ['o_proj', 'model.layers.1.self_attn.k_proj'] (a suffix "
              "and a full name): adapted are q (both layers), k (layer 0), v (both layers).",
        build_base=llama(),
        lora=dict(r=8, lora_alpha=16, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
                  exclude_modules=["o_proj", "model.layers.1.self_attn.k_proj"]))
    add("layers_to_transform", kind="hf", base_dtype="bf16", features=["lora_linear", "layers_to_transform"],
        notes="3-layer Llama; layers_to_transform=[1], layers_pattern='layers': only layer 1's q/v adapted.",
        build_base=llama(num_hidden_layers=3),
        lora=dict(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"], layers_to_transform=[1], layers_pattern="layers"))
    add("gpt2_conv1d", kind="hf", base_dtype="bf16", features=["lora_conv1d", "fan_in_fan_out"],
        notes="Tiny GPT-2 (transformers Conv1D, weight [in,out]); fan_in_fan_out=True; targets c_attn, c_proj "
              "(attn and mlp), c_fc. dW = s*(B@A)^T. GPT-2 ties lm_head to wte (no lm_head.weight on disk). "
              "Biases/LayerNorms randomised in the base.",
        build_base=gpt2(), base_class=GPT2LMHeadModel,
        lora=dict(r=8, lora_alpha=16, target_modules=["c_attn", "c_proj", "c_fc"], fan_in_fan_out=True))
    add("embedding", kind="hf", base_dtype="bf16", features=["lora_embedding"],
        notes="LoRA on embed_tokens (lora_embedding_A [r,vocab], lora_embedding_B [dim,r], no '.weight'), plus q_proj. "
              "PEFT also saves embed_tokens.base_layer.weight (save_embedding_layers='auto' because an embedding is "
              "targeted). PEFT inits lora_embedding_A to zero and B ~ N(0,1): A was set to N(0,0.002). PEFT rounds "
              "the embedding delta to bf16 before adding (double rounding): ~25% of embed_tokens elements differ "
              "from the exactly rounded result, by up to half an ulp of the delta (large ulp counts where W+dW "
              "nearly cancels).",
        build_base=llama(), lora=dict(r=8, lora_alpha=16, target_modules=["embed_tokens", "q_proj"]))
    add("conv2d", kind="conv", base_dtype="f32", features=["lora_conv2d"],
        notes="Custom TinyConvNet (not transformers): conv1 Conv2d 3->8 k3x3, conv2 Conv2d 8->16 k1x1, fc Linear "
              "16->10. base/ and peft/ written with safetensors save_file(state_dict) (+ a minimal config.json, "
              "copied unchanged into peft/). lora_A is a Conv2d with the layer's kernel, lora_B a 1x1 Conv2d. "
              "PEFT builds the 3x3 delta with a convolution (F.conv2d(A^T, B)), the 1x1 one with a matmul: the "
              "same math as (B.view(out,r) @ A.view(r,-1)).view(W.shape) but a different fp32 summation order, so "
              "f32 results differ from a matmul-based merge in the last bits (~4e-9 here).",
        lora=dict(r=4, lora_alpha=8, target_modules=["conv1", "conv2", "fc"]))
    add("dora_linear", kind="hf", base_dtype="bf16", features=["dora", "lora_linear"],
        notes="use_dora=True on all Llama projections; lora_magnitude_vector [out] per module.",
        build_base=llama(), lora=dict(r=8, lora_alpha=16, target_modules=L, use_dora=True))
    add("dora_conv1d", kind="hf", base_dtype="f16", features=["dora", "lora_conv1d", "fan_in_fan_out"],
        notes="use_dora=True on tiny GPT-2 Conv1D layers (fan_in_fan_out=True), base f16. m is per output "
              "feature (the [in,out] weight's columns).",
        build_base=gpt2(), base_class=GPT2LMHeadModel,
        lora=dict(r=8, lora_alpha=16, target_modules=["c_attn", "c_proj", "c_fc"], fan_in_fan_out=True, use_dora=True))
    add("dora_embedding", kind="hf", base_dtype="bf16", features=["dora", "lora_embedding"],
        notes="use_dora=True on embed_tokens (PEFT 0.21 supports it): m is [dim], norm per embedding column over "
              "the vocabulary. Unlike plain embedding LoRA, the DoRA path adds the fp32 delta and rounds once.",
        build_base=llama(), lora=dict(r=8, lora_alpha=16, target_modules=["embed_tokens"], use_dora=True))
    add("dora_conv2d", kind="conv", base_dtype="bf16", features=["dora", "lora_conv2d"],
        notes="use_dora=True on TinyConvNet (conv1 3x3, conv2 1x1, fc Linear), base bf16; conv m stored [1,out,1,1].",
        lora=dict(r=4, lora_alpha=8, target_modules=["conv1", "conv2", "fc"], use_dora=True))
    add("lora_bias", kind="hf", base_dtype="bf16", features=["lora_bias"],
        notes="lora_bias=True on q/k/v/o of a Llama with attention_bias=True: lora_B.bias [out], "
              "bias += s*lora_B.bias. PEFT 0.21 warns at save time that the 1-D lora_B.bias tensors 'have invalid "
              "shape' (a false positive of its ZeRO-3/FSDP shape check); the file is fine.",
        build_base=llama_with_biases(attention_bias=True),
        lora=dict(r=8, lora_alpha=16, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"], lora_bias=True))
    add("bias_all", kind="hf", base_dtype="bf16", features=["bias_all"],
        notes="bias='all' on a Llama with attention_bias=True, LoRA on q/v only. PEFT saves EVERY bias of the "
              "model: targeted layers as X.base_layer.bias, non-targeted ones (k_proj, o_proj) as plain X.bias. "
              "All were perturbed before saving, so every bias is replaced.",
        build_base=llama_with_biases(attention_bias=True),
        lora=dict(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"], bias="all"))
    add("modules_to_save_resized", kind="hf", base_dtype="bf16",
        features=["modules_to_save", "resized_vocab"],
        notes="base/ has vocab 64; the training side called resize_token_embeddings(72) (mean_resizing) before "
              "get_peft_model(modules_to_save=['lm_head','embed_tokens'], LoRA on q/v). Because the vocabulary "
              "changed, PEFT's save_embedding_layers='auto' turned on and the adapter holds THREE [72,32] tensors "
              "per module: M.weight and M.modules_to_save.weight (both the trained copy, identical) and "
              "M.original_module.weight (the resized, untrained original: rows 0..63 equal the base). "
              "PeftModel.from_pretrained on the fresh 64-row base fails ('size mismatch for "
              "...embed_tokens.original_module.weight: copying a param with shape [72, 32] ... current model is "
              "[64, 32]'), so the merge side also called resize_token_embeddings(72) first. peft/ holds M.weight "
              "(the trained copy) and config.json vocab_size 72.",
        build_base=llama(), before_peft=resize_to(72), before_load=resize_to(72),
        lora=dict(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"], modules_to_save=["lm_head", "embed_tokens"]))
    add("trainable_tokens", kind="hf", base_dtype="bf16", features=["trainable_tokens", "lora_linear"],
        notes="trainable_token_indices=[3,5,7] (on embed_tokens) + LoRA on q/v. The saved "
              "token_adapter.trainable_tokens_delta holds the NEW ROWS (not a difference); the merge is "
              "W[idx] = rows (index_copy).",
        build_base=llama(),
        lora=dict(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"], trainable_token_indices=[3, 5, 7]))
    add("tied_lm_head", kind="hf", base_dtype="bf16", features=["tied_embeddings", "lora_lm_head"],
        notes="tie_word_embeddings=True (no lm_head.weight on disk); LoRA on lm_head and q_proj. PEFT saves "
              "lm_head.base_layer.weight (the shared tensor) in the adapter, merges the lm_head delta into the "
              "shared tensor, and peft/ still says tied: its model.embed_tokens.weight now carries the lm_head delta.",
        build_base=llama(tie_word_embeddings=True),
        lora=dict(r=8, lora_alpha=16, target_modules=["lm_head", "q_proj"]))
    add("tied_lm_head_ensure_tying", kind="hf", base_dtype="f32",
        features=["tied_embeddings", "lora_lm_head", "lora_embedding", "ensure_weight_tying"],
        notes="As tied_lm_head but ensure_weight_tying=True, base f32: PEFT adds a LoRA on embed_tokens whose "
              "factors are tied to lm_head's (lora_embedding_A = lm_head.lora_B^T, lora_embedding_B = "
              "lm_head.lora_A^T; both pairs are written to the file, with equal values), and NO base_layer "
              "weight is saved. The merge applies the same delta twice to the one shared tensor: "
              "embed_tokens = W + 2*dW. (With a bf16/f16 base PEFT's fp32 autocast of the adapter breaks the "
              "tie: the two pairs become separate tensors that train independently.)",
        build_base=llama(tie_word_embeddings=True),
        lora=dict(r=8, lora_alpha=16, target_modules=["lm_head", "q_proj"], ensure_weight_tying=True))
    add("tied_embed_and_head", kind="hf", base_dtype="bf16", features=["tied_embeddings", "lora_embedding"],
        notes="tie_word_embeddings=True, LoRA on embed_tokens only. The merge changes the one shared tensor, so "
              "the (tied) lm_head changes too; peft/ still says tied.",
        build_base=llama(tie_word_embeddings=True),
        lora=dict(r=8, lora_alpha=16, target_modules=["embed_tokens"]))
    add("sharded_bf16", kind="hf", base_dtype="bf16", features=["sharded", "lora_linear", "all_linear"],
        notes="base saved with max_shard_size=14000 bytes -> 3 shards + model.safetensors.index.json. "
              "target_modules='all-linear': PEFT writes it expanded to the FULL module names (14 entries, in "
              "set order; lm_head excluded). peft/ was saved with the same max_shard_size, yet transformers "
              "packed it into 4 shards with a different tensor-to-shard assignment (the merged model's "
              "state_dict order differs from a freshly built one): compare tensors by name via the index. "
              "index.json metadata carries total_parameters as well as total_size (transformers v5).",
        build_base=llama(), max_shard_size=14000,
        lora=dict(r=8, lora_alpha=16, target_modules="all-linear"))
    add("alpha_float_scale", kind="hf", base_dtype="bf16", features=["lora_linear", "non_power_of_two_scale"],
        notes="r=6, alpha=7: s = 7/6 is not a power of two, so the delta's rounding depends on where s is "
              "applied. PEFT computes (B@A) in fp32, multiplies by s in fp32, adds in fp32, rounds once to bf16.",
        build_base=llama(), lora=dict(r=6, lora_alpha=7, target_modules=L))
    return c


# --------------------------------------------------------------------------------------------
# the quick-start example
# --------------------------------------------------------------------------------------------

EXAMPLE_CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "A tiny llama merges its adapter before breakfast.",
    "LoRA adds a low rank update to each projection.",
    "Merging writes one checkpoint that serves without the adapter.",
    "The adapter changes the query, key, value and output projections.",
    "Small models are fast to test and easy to read.",
    "Hello world! How are you today?",
    "Safetensors files start with a little endian header length.",
]

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>' + message['content'] + eos_token }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>' }}{% endif %}"
)


def build_tokenizer(folder: Path) -> int:
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    special = ["<unk>", "<s>", "</s>", "<pad>", "<|user|>", "<|assistant|>", "<|system|>"]
    trainer = trainers.BpeTrainer(vocab_size=128, special_tokens=special, show_progress=False)
    tok.train_from_iterator(EXAMPLE_CORPUS, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>", pad_token="<pad>",
        model_max_length=64,
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(str(folder))
    if not (folder / "special_tokens_map.json").exists():
        # transformers v5 no longer writes it; most published checkpoints still carry one
        write_json(folder / "special_tokens_map.json", {
            "bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>", "unk_token": "<unk>",
        })
    return tok.get_vocab_size()


def make_example(out_dir: Path):
    name = "tiny-llama"
    root = out_dir / name
    if root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True)
    torch.manual_seed(seed_of("example/" + name))
    gen = torch.Generator().manual_seed(seed_of("example/" + name) + 1)
    with chdir(root):
        Path("base").mkdir()
        n_tok = build_tokenizer(Path("base"))
        cfg = tiny_llama_config(vocab_size=128, hidden_size=64, intermediate_size=128, head_dim=16,
                                num_attention_heads=4, num_key_value_heads=2, bos_token_id=1, eos_token_id=2,
                                pad_token_id=3)
        model = LlamaForCausalLM(cfg).to(torch.bfloat16)
        model.generation_config.max_new_tokens = 16
        model.save_pretrained("base")
        del model
        base = LlamaForCausalLM.from_pretrained("base", dtype=torch.bfloat16)
        pm = get_peft_model(base, LoraConfig(r=8, lora_alpha=16, lora_dropout=0.05, target_modules="all-linear",
                                             task_type="CAUSAL_LM"))
        perturb_trainables(pm, gen)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            pm.save_pretrained("adapter")
    readme = f"""# tiny-llama quick-start example

A randomly initialised 2-layer Llama (hidden 64, vocab 128, bf16) in `base/` and a PEFT LoRA
adapter in `adapter/` (r=8, alpha=16, `target_modules="all-linear"`, i.e. q/k/v/o/gate/up/down;
lora_B set to random non-zero values so the merge changes the weights). `base/` also carries
the non-weight files a real checkpoint has (config.json, generation_config.json, a tiny BPE
tokenizer with {n_tok} tokens trained on eight sentences, tokenizer_config.json,
special_tokens_map.json, chat_template.jinja) so copying them is exercised.

The weights are random: the merged model produces gibberish; only the file handling and the
arithmetic are meaningful.

Regenerate (from the repository root, deterministic):

    /opt/pyref/bin/python scripts/make_fixtures.py --examples-only
"""
    (root / "README.md").write_text(readme, encoding="utf-8")


# --------------------------------------------------------------------------------------------
# main
# --------------------------------------------------------------------------------------------


def write_versions(out_root: Path):
    import tokenizers
    lines = [
        f"python {platform.python_version()}",
        f"torch {torch.__version__}",
        f"transformers {transformers.__version__}",
        f"peft {peft.__version__}",
        f"safetensors {safetensors.__version__}",
        f"numpy {np.__version__}",
        f"tokenizers {tokenizers.__version__}",
    ]
    (out_root / "VERSIONS.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")


def write_readme(out_root: Path, all_cases):
    lines = [
        "# Golden fixtures: PEFT's own merge_and_unload() output",
        "",
        "Generated by `scripts/make_fixtures.py` (versions in VERSIONS.txt); do not edit by hand. Regenerate with",
        "`/opt/pyref/bin/python scripts/make_fixtures.py` from the repository root (byte-identical on rerun).",
        "",
        "Each `<case>/` has `base/` (base checkpoint), `adapter/` (adapter_config.json and",
        "adapter_model.safetensors exactly as PEFT saved them; PEFT's boilerplate README.md model card is",
        "dropped), `peft/` (PEFT's merged model) and `case.json`: features, the adapter's exact keys with",
        "dtype and shape, the config.json changes PEFT made, the warnings PEFT printed, and per tensor the",
        "elements changed and how PEFT's result compares with",
        "",
        "- an exactly rounded merge (float64 arithmetic, one round-to-nearest-even to the tensor's dtype):",
        "  `mismatch_vs_exact_f64`, `max_ulp_vs_exact_f64`, `max_abs_diff_vs_exact_f64`;",
        "- a model of PEFT's fp32 arithmetic (fp32 `(B@A)*s`, `W.float()+dW` rounded once; plain embedding",
        "  LoRA: delta rounded to W's dtype first): `mismatch_vs_peft_fp32_model`.",
        "",
        "`expected.safetensors` holds every tensor the merge changes as loramerge must write it: the exact",
        "W + s*B@A (DoRA, lora_bias, replacements, token rows; loramerge's rules for tied embeddings) rounded",
        "once to the tensor's dtype, computed by the script in integer arithmetic from the stored bits, with",
        "the scale as PEFT computes it (a Python float). `expected_f32.safetensors` is the same rounded to",
        "F32, what `--dtype f32` must write. GoldenFixtureTest compares our output with both, byte for byte.",
        "",
        "Tensor values: base ~N(0,0.02) (HF init; biases/norms randomised where the case needs them),",
        "lora_A as PEFT initialises it, lora_B ~N(0,0.02), lora_embedding_A ~N(0,0.002) with",
        "lora_embedding_B as PEFT initialises it (N(0,1)), DoRA m scaled by 1+N(0,0.05), trainable-token",
        "rows and modules_to_save copies perturbed; see each case.json `adapter_values_set_before_save`.",
        "",
        "PEFT 0.21 behaviours worth knowing (details in the case notes):",
        "",
        "- Linear/Conv1D/Conv/DoRA merges round once from fp32: in bf16/f16 PEFT matches the exactly rounded",
        "  result except for a few elements per tensor (ties of the fp32 delta), in f32 only to ~1e-8 absolute.",
        "- Plain embedding LoRA rounds the delta to the weight dtype before adding (double rounding): about a",
        "  quarter of bf16 elements differ from the exact result, by up to half an ulp of the delta.",
        "- Tied embeddings: the lm_head delta lands in the shared tensor (`model.embed_tokens.weight` on disk)",
        "  and peft/config.json stays tied; with ensure_weight_tying the same delta is applied twice.",
        "- Resized vocab + modules_to_save: the adapter has M.weight, M.modules_to_save.weight and",
        "  M.original_module.weight, all full-size; PEFT cannot load it on the un-resized base.",
        "- trainable_tokens_delta holds the new rows, not a difference; the merge replaces rows.",
        "",
        "| case | base dtype | what it exercises |",
        "| --- | --- | --- |",
    ]
    for name, kw in all_cases:
        first = kw["notes"].split(". ")[0].rstrip(".")
        lines.append(f"| `{name}` | {kw['base_dtype']} | {', '.join(kw['features'])}: {first}. |")
    (out_root / "README.md").write_text("\n".join(lines) + "\n", encoding="utf-8")


def write_manifest(out_root: Path):
    """MANIFEST.sha256: this script's hash and every fixture file's, so a test (GeneratedFilesTest)
    proves the committed fixtures are this generator's output and were not edited by hand."""
    import hashlib
    lines = [f"{hashlib.sha256(Path(__file__).read_bytes()).hexdigest()}  generator:scripts/make_fixtures.py"]
    for p in sorted(out_root.rglob("*")):
        if p.is_file() and p.name != "MANIFEST.sha256":
            lines.append(f"{hashlib.sha256(p.read_bytes()).hexdigest()}  {p.relative_to(out_root).as_posix()}")
    (out_root / "MANIFEST.sha256").write_text("\n".join(lines) + "\n", encoding="utf-8")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="src/test/resources/fixtures", help="fixture root (default: %(default)s)")
    ap.add_argument("--examples-out", default="examples", help="example root (default: %(default)s)")
    ap.add_argument("--only", default="", help="comma-separated case names to (re)generate")
    ap.add_argument("--no-examples", action="store_true", help="skip the quick-start example")
    ap.add_argument("--examples-only", action="store_true", help="only write the quick-start example")
    args = ap.parse_args(argv)

    out_root = Path(args.out).resolve()
    all_cases = cases()
    if not args.examples_only:
        only = {s for s in args.only.split(",") if s}
        unknown = only - {n for n, _ in all_cases}
        if unknown:
            ap.error(f"unknown case(s): {sorted(unknown)}")
        out_root.mkdir(parents=True, exist_ok=True)
        for name, kw in all_cases:
            if only and name not in only:
                continue
            print(f"[make_fixtures] {name}", flush=True)
            kw = dict(kw)
            kind = kw.pop("kind")
            if kind == "hf":
                hf_case(out_root, name, **kw)
            else:
                conv_case(out_root, name, **kw)
        write_versions(out_root)
        write_readme(out_root, all_cases)
        write_manifest(out_root)
    if not args.no_examples:
        print("[make_fixtures] example tiny-llama", flush=True)
        make_example(Path(args.examples_out).resolve())
    return 0


if __name__ == "__main__":
    sys.exit(main())
