#!/usr/bin/env python3
"""Quantize a 16-bit Llama-shaped checkpoint (make_synthetic.py's) into another format's layout, for
the benchmarks: round to nearest on the device, no calibration (what a merge costs does not depend on
how the codes were chosen), streamed shard by shard.

    make_quantized.py --base DIR --out DIR --format FORMAT [--device cuda|cpu] [--group-size 128]

FORMAT, each of the 7 projections' weights of every layer (q/k/v/o_proj, gate/up/down_proj; the
embedding, the norms and lm_head keep their bytes), with the quantization_config a loader reads:

  int8         bitsandbytes LLM.int8 (load_in_8bit): P.weight I8 [out, in], P.SCB F32 [out],
               P.weight_format U8 0. bitsandbytes' int8_vectorwise_quant as Int8Params runs it: the
               weight cast to f16, SCB = max|x| of each row, code = round-half-even(x * (127 / SCB)),
               a zero row codes 0 (0 * inf = NaN converts to 0) [docs/FORMATS.md section 5]
  fp8          transformers' fine-grained FP8, weight_block_size [128, 128]: P.weight F8_E4M3 and
               P.weight_scale_inv F32 [out/128, in/128], as transformers' Fp8Quantize
               (integrations/finegrained_fp8.py, the op save_pretrained runs; restated from
               scripts/fixtures/make_fp8_fixtures.py's source): per block amax = max|x| in fp32,
               s = 448 / amax (1 for an all-zero block), weight_scale_inv = 1 / s,
               code = e4m3(clamp(x * s, -448, 448))
  fp8-tensor   the same with weight_block_size null: one scale per weight ([1, 1])
  fp8-channel  compressed-tensors' float-quantized layout, strategy "channel": P.weight F8_E4M3,
               P.weight_scale BF16 [out, 1] = (amax of the row in bf16) / 448 in bf16, code =
               e4m3(clamp(x / scale, -448, 448)) (make_fp8_fixtures.py ct_quantize)
  gptq         GPTQ 4-bit, group 128, symmetric, checkpoint_format "gptq" (v1), no act-order:
               P.qweight I32 [in/8, out], P.qzeros I32 [groups, out/8] (zero 8 stored as 7: v1's
               one subtraction of 0x11111111 a word), P.scales F16 [groups, out], P.g_idx I32 [in]
  awq          AWQ 4-bit GEMM, group 128, zero points: P.qweight I32 [in, out/8] and P.qzeros I32
               [groups, out/8] with 8 columns a word in the order [0, 2, 4, 6, 1, 3, 5, 7],
               P.scales F16 [groups, out]

gptq and awq are torch ports of scripts/fixtures/make_gptq_awq_fixtures.py's rtn, pack_rows and
pack_cols (which cite GPTQModel's pack_block and AWQ_ORDER), vectorised over groups: in must be a
multiple of the group size and out of 8; fp8's blocks need both dimensions a multiple of 128.

Every shard is written in parallel (one thread a shard) by a streaming safetensors writer: the
header first (every output shape is known from the input's), then each tensor as it is made, so
memory holds about one weight per shard. config.json gets the quantization_config; the index and
generation_config.json follow the base.
"""
import argparse
import json
import os
import shutil
import struct
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import torch
from safetensors import safe_open

PROJ = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
FP8_MAX = 448.0
AWQ_ORDER = (0, 2, 4, 6, 1, 3, 5, 7)
GPTQ_V1_OFFSET = 0x11111111  # 4-bit: v1 stores zero - 1 per nibble, one int32 subtraction a word
ST_DTYPE = {torch.bfloat16: "BF16", torch.float16: "F16", torch.float32: "F32", torch.int8: "I8", torch.uint8: "U8",
            torch.int32: "I32", torch.float8_e4m3fn: "F8_E4M3"}
TORCH_DTYPE = {v: k for k, v in ST_DTYPE.items()}

CONFIGS = {
    "int8": {"_load_in_4bit": False, "_load_in_8bit": True, "bnb_4bit_compute_dtype": "float32", "bnb_4bit_quant_storage": "uint8",
             "bnb_4bit_quant_type": "fp4", "bnb_4bit_use_double_quant": False, "llm_int8_enable_fp32_cpu_offload": False,
             "llm_int8_has_fp16_weight": False, "llm_int8_skip_modules": None, "llm_int8_threshold": 6.0, "load_in_4bit": False,
             "load_in_8bit": True, "quant_method": "bitsandbytes"},
    "fp8": {"activation_scheme": "dynamic", "dequantize": False, "modules_to_convert": None, "modules_to_not_convert": None,
            "quant_method": "fp8", "scale_fmt": "float", "weight_block_size": [128, 128]},
    "fp8-tensor": {"activation_scheme": "dynamic", "dequantize": False, "modules_to_convert": None, "modules_to_not_convert": None,
                   "quant_method": "fp8", "scale_fmt": "float", "weight_block_size": None},
    "fp8-channel": {"config_groups": {"group_0": {"input_activations": None, "targets": ["Linear"],
                                                  "weights": {"actorder": None, "block_structure": None, "dynamic": False, "group_size": None,
                                                              "num_bits": 8, "observer": "minmax", "strategy": "channel", "symmetric": True,
                                                              "type": "float"}}},
                    "format": "float-quantized", "ignore": ["lm_head"], "quant_method": "compressed-tensors",
                    "quantization_status": "compressed"},
    "gptq": {"quant_method": "gptq", "bits": 4, "group_size": 128, "desc_act": False, "sym": True, "checkpoint_format": "gptq",
             "true_sequential": True, "damp_percent": 0.1},
    "awq": {"quant_method": "awq", "bits": 4, "group_size": 128, "zero_point": True, "version": "gemm", "modules_to_not_convert": None},
}


def log(msg):
    print(f"[make_quantized] {msg}", file=sys.stderr, flush=True)


def is_projection(name, shape):
    parts = name.split(".")
    return len(shape) == 2 and name.endswith(".weight") and len(parts) >= 2 and parts[-2] in PROJ


# ---------------------------------------------------------------- the formats: (stem, shape) -> [(name, dtype, shape)], w -> tensors

def layout(fmt, stem, out_f, in_f, group):
    if fmt == "int8":
        return [(stem + ".weight", torch.int8, [out_f, in_f]), (stem + ".SCB", torch.float32, [out_f]),
                (stem + ".weight_format", torch.uint8, [])]
    if fmt in ("fp8", "fp8-tensor"):
        scale = [out_f // 128, in_f // 128] if fmt == "fp8" else [1, 1]
        return [(stem + ".weight", torch.float8_e4m3fn, [out_f, in_f]), (stem + ".weight_scale_inv", torch.float32, scale)]
    if fmt == "fp8-channel":
        return [(stem + ".weight", torch.float8_e4m3fn, [out_f, in_f]), (stem + ".weight_scale", torch.bfloat16, [out_f, 1])]
    groups = in_f // group
    if fmt == "gptq":
        return [(stem + ".qweight", torch.int32, [in_f // 8, out_f]), (stem + ".qzeros", torch.int32, [groups, out_f // 8]),
                (stem + ".scales", torch.float16, [groups, out_f]), (stem + ".g_idx", torch.int32, [in_f])]
    return [(stem + ".qweight", torch.int32, [in_f, out_f // 8]), (stem + ".qzeros", torch.int32, [groups, out_f // 8]),
            (stem + ".scales", torch.float16, [groups, out_f])]


def check_shape(fmt, name, out_f, in_f, group):
    if fmt == "fp8" and (out_f % 128 or in_f % 128):
        sys.exit(f"{name} is [{out_f}, {in_f}]: fp8's 128x128 blocks need both a multiple of 128 (use another --shape)")
    if fmt in ("gptq", "awq") and (in_f % group or out_f % 8):
        sys.exit(f"{name} is [{out_f}, {in_f}]: {fmt} needs in a multiple of the group size {group} and out of 8 (use another --shape)")


def to_int32(words):
    """int64 words holding 32 bits -> int32 with the same bits."""
    words = words & 0xFFFFFFFF
    return torch.where(words >= 2 ** 31, words - 2 ** 32, words).to(torch.int32)


def pack_rows(codes, bits=4):
    """GPTQ qweight: [in, out] codes -> [in / (32/bits), out], row i at bit (i % per) * bits (make_gptq_awq_fixtures.pack_rows)."""
    per = 32 // bits
    c = codes.to(torch.int64).reshape(codes.shape[0] // per, per, codes.shape[1])
    words = torch.zeros(c.shape[0], c.shape[2], dtype=torch.int64, device=codes.device)
    for j in range(per):
        words |= c[:, j, :] << (bits * j)
    return to_int32(words)


def pack_cols(values, bits=4, order=None):
    """[rows, out] -> [rows, out / per], column k of a word at bit k * bits or at AWQ's slot (make_gptq_awq_fixtures.pack_cols)."""
    per = 32 // bits
    v = values.to(torch.int64).reshape(values.shape[0], values.shape[1] // per, per)
    words = torch.zeros(v.shape[0], v.shape[1], dtype=torch.int64, device=values.device)
    for slot in range(per):
        words |= v[:, :, order[slot] if order else slot] << (bits * slot)
    return to_int32(words)


def rtn_groups(w, group, sym):
    """Round-to-nearest 4-bit codes of w [out, in] per (group of inputs, output): codes [in, out], zeros [G, out], scales [G, out] f16
    (make_gptq_awq_fixtures.rtn with g_idx = i // group)."""
    maxq = 15
    wt = w.t().float()
    in_f, out_f = wt.shape
    g = wt.reshape(in_f // group, group, out_f)
    zero = torch.zeros((), device=w.device)
    lo = torch.minimum(g.amin(dim=1), zero)
    hi = torch.maximum(g.amax(dim=1), zero)
    if sym:
        amax = torch.maximum(lo.abs(), hi)
        s = torch.where(amax > 0, 2 * amax / maxq, torch.ones_like(amax))
        z = torch.full_like(s, (maxq + 1) // 2, dtype=torch.int32)
    else:
        s = torch.where(hi > lo, (hi - lo) / maxq, torch.ones_like(hi))
        z = torch.clamp(torch.round(-lo / s), 0, maxq).to(torch.int32)
    scales = s.to(torch.float16)
    codes = torch.clamp(torch.round(g / scales.float()[:, None, :]) + z[:, None, :], 0, maxq).to(torch.int32)
    return codes.reshape(in_f, out_f), z, scales


def quantize(fmt, w, group):
    """The weight w [out, in] (on the device) in fmt: its tensors, in layout()'s order."""
    if fmt == "int8":
        x = w.to(torch.float16).float()
        scb = x.abs().amax(dim=1)
        scale = 127.0 / scb  # a zero row: inf, and 0 * inf = NaN, which the kernel converts to code 0
        q = torch.nan_to_num(torch.round(x * scale[:, None]), nan=0.0).to(torch.int8)
        return [q, scb, torch.zeros((), dtype=torch.uint8, device=w.device)]
    if fmt in ("fp8", "fp8-tensor"):
        x = w.float()
        out_f, in_f = x.shape
        bm, bn = (128, 128) if fmt == "fp8" else (out_f, in_f)
        tiles = x.reshape(out_f // bm, bm, in_f // bn, bn)
        amax = tiles.abs().amax(dim=(1, 3))
        scales = torch.where(amax > 0, FP8_MAX / torch.where(amax > 0, amax, torch.ones_like(amax)), torch.ones_like(amax))
        inv = (1.0 / scales).to(torch.float32)
        q = torch.clamp(tiles * scales[:, None, :, None], -FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn).reshape(out_f, in_f)
        return [q, inv.reshape(out_f // bm, in_f // bn)]
    if fmt == "fp8-channel":
        scale = (w.abs().amax(dim=1, keepdim=True).to(torch.bfloat16) / FP8_MAX).to(torch.bfloat16)
        safe = torch.where(scale > 0, scale, torch.ones_like(scale))
        q = torch.clamp(w.to(torch.bfloat16) / safe, -FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn)
        return [q, scale]
    codes, zeros, scales = rtn_groups(w, group, sym=(fmt == "gptq"))
    if fmt == "gptq":
        qzeros = to_int32(pack_cols(zeros).to(torch.int64) - GPTQ_V1_OFFSET)
        g_idx = torch.arange(w.shape[1], dtype=torch.int32, device=w.device) // group
        return [pack_rows(codes), qzeros, scales.contiguous(), g_idx]
    return [pack_cols(codes, order=AWQ_ORDER), pack_cols(zeros, order=AWQ_ORDER), scales.contiguous()]


# ---------------------------------------------------------------- streaming safetensors

def read_header(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        return json.loads(f.read(n))


def nbytes(dtype, shape):
    n = 1
    for d in shape:
        n *= d
    return n * torch.empty((), dtype=dtype).element_size()


def convert_shard(src, dst, fmt, device, group):
    hdr = read_header(src)
    meta = hdr.pop("__metadata__", None)
    names = sorted(hdr, key=lambda k: hdr[k]["data_offsets"][0])
    plan = []  # (input name, [(out name, dtype, shape)], quantized)
    for k in names:
        shape = hdr[k]["shape"]
        if is_projection(k, shape):
            check_shape(fmt, k, shape[0], shape[1], group)
            plan.append((k, layout(fmt, k[:-len(".weight")], shape[0], shape[1], group), True))
        else:
            plan.append((k, [(k, TORCH_DTYPE[hdr[k]["dtype"]], shape)], False))
    out_hdr, off = ({"__metadata__": meta} if meta else {}), 0
    for _, outs, _ in plan:
        for name, dtype, shape in outs:
            size = nbytes(dtype, shape)
            out_hdr[name] = {"dtype": ST_DTYPE[dtype], "shape": shape, "data_offsets": [off, off + size]}
            off += size
    raw = json.dumps(out_hdr, separators=(",", ":")).encode()
    raw += b" " * ((8 - (8 + len(raw)) % 8) % 8)
    weight_map = {}
    tmp = dst + ".partial"
    with safe_open(src, framework="pt", device="cpu") as f, open(tmp, "wb", buffering=0) as out:
        out.write(struct.pack("<Q", len(raw)) + raw)
        for k, outs, quantized in plan:
            t = f.get_tensor(k)
            tensors = quantize(fmt, t.to(device), group) if quantized else [t]
            for (name, dtype, shape), v in zip(outs, tensors):
                assert v.dtype == dtype and list(v.shape) == list(shape), (name, v.dtype, v.shape, dtype, shape)
                mv = memoryview(v.contiguous().cpu().reshape(-1).view(torch.uint8).numpy())
                n = 0
                while n < len(mv):
                    n += out.write(mv[n:])
                weight_map[name] = os.path.basename(dst)
    os.replace(tmp, dst)
    return off, weight_map


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", required=True, help="the 16-bit model folder (make_synthetic.py's DIR/base)")
    ap.add_argument("--out", required=True, help="the quantized model folder (replaced)")
    ap.add_argument("--format", required=True, choices=list(CONFIGS))
    ap.add_argument("--device", default="cuda", help="cuda|cpu (default cuda)")
    ap.add_argument("--group-size", type=int, default=128, help="gptq and awq (default 128)")
    a = ap.parse_args()
    t0 = time.time()
    shards = sorted(n for n in os.listdir(a.base) if n.endswith(".safetensors"))
    if not shards:
        sys.exit(f"{a.base}: no .safetensors files")
    if os.path.exists(a.out):
        shutil.rmtree(a.out)
    os.makedirs(a.out)
    with ThreadPoolExecutor(max_workers=len(shards)) as ex:
        futs = [ex.submit(convert_shard, os.path.join(a.base, s), os.path.join(a.out, s), a.format, a.device, a.group_size) for s in shards]
        results = [fu.result() for fu in futs]
    total = sum(r[0] for r in results)
    if os.path.exists(os.path.join(a.base, "model.safetensors.index.json")):
        weight_map = {}
        for _, m in results:
            weight_map.update(m)
        with open(os.path.join(a.out, "model.safetensors.index.json"), "w") as f:
            json.dump({"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}, f, indent=2)
            f.write("\n")
    with open(os.path.join(a.base, "config.json")) as f:
        cfg = json.load(f)
    qc = dict(CONFIGS[a.format])
    if "group_size" in qc:
        qc["group_size"] = a.group_size
    cfg["quantization_config"] = qc
    with open(os.path.join(a.out, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2)
        f.write("\n")
    for extra in os.listdir(a.base):
        if not extra.endswith(".safetensors") and extra not in ("config.json", "model.safetensors.index.json"):
            shutil.copy(os.path.join(a.base, extra), os.path.join(a.out, extra))
    log(f"{a.format}: {len(shards)} shard(s), {total / 1e9:.3f} GB in {time.time() - t0:.1f} s on {a.device}")


if __name__ == "__main__":
    main()
