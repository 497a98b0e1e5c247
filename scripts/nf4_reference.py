#!/usr/bin/env python3
"""Reference implementation of bitsandbytes' 4-bit NF4 format, and loramerge's NF4 test vectors.

Written from the format description in docs/FORMATS.md §5 and the behaviour of
bitsandbytes' CUDA kernels as described there (csrc/kernels.cu kQuantizeBlockwise, dQuantizeNF4,
dQuantize, kDequantizeBlockwise; bitsandbytes/functional.py quantize_4bit, create_dynamic_map,
QuantState.as_dict). No bitsandbytes code is imported or copied: numpy and the standard library
only (torch is used by ``selftest`` and ``tiny-llama`` only, to cross-check and to build a model).

Usage, from the repository root, with a Python that has numpy (and, for selftest, tiny-llama
and check-model, torch and transformers; the versions in scripts/requirements-fixtures.txt):

    python scripts/nf4_reference.py vectors [--out src/test/resources/nf4]
    python scripts/nf4_reference.py selftest
    python scripts/nf4_reference.py tiny-llama DIR          # a tiny transformers Llama (bf16)
    python scripts/nf4_reference.py check-model ORIG_DIR NF4_DIR
    python scripts/nf4_reference.py merge NF4_DIR ADAPTER_DIR OUT_DIR --to bf16|nf4

``vectors`` writes src/test/resources/nf4/model.safetensors, where each case is a complete NF4
tensor group ``<case>.weight``, ``.weight.absmax``, ``.weight.quant_map`` [, ``.weight.nested_absmax``,
``.weight.nested_quant_map``], ``.weight.quant_state.bitsandbytes__nf4`` beside its input
``<case>.input`` and the expected ``<case>.dequant`` (stored dtype), ``<case>.dequant_f32`` (small
cases) and ``<case>.absmax_decoded`` (double quant), plus index.json describing the cases, the
dynamic map's bits and the dQuantize answers at every midpoint of the map. It is deterministic
(fixed seeds, no timestamps): running it twice writes the same bytes. Made with Python 3.11.7 and
numpy 2.4.6; ``selftest`` also uses torch 2.13.0+cpu and ``check-model`` transformers 5.18.0.
``check-model`` quantizes every quantized weight of ORIG_DIR with this reference (settings read
from NF4_DIR's quant states) and compares bit for bit with NF4_DIR (loramerge quantize's output);
it also dequantizes NF4_DIR's tensors and compares with the reference's dequantization, and
checks config.json's quantization_config against transformers' BitsAndBytesConfig.to_dict().

``merge`` is the reference for ``loramerge merge --to`` on a QLoRA base (see "QLoRA merge" below): it
writes OUT_DIR/model.safetensors with the adapted tensors only (dense, or the requantized NF4 group)
and OUT_DIR/survival.json; scripts/make_qlora_fixtures.py uses it for the golden QLoRA cases.

The rules, each stated once here and mirrored by org.loramerge.quant (Java):

* Blocks: W flattened row-major, consecutive blocks of ``blocksize`` (a power of two,
  32..4096) elements; the last block may be partial.
* absmax_b = max |x| over the block, exact (every input value is an fp32 value).
* Scaling: x_hat = fl32(x * r) with r = fl32(1 / absmax_b), both correctly rounded (IEEE
  round-to-nearest-even, no flush-to-zero). This is what the CUDA kernel computes: it stores
  ``1.0f/absmax`` once per block and multiplies each element by it, which is not always the
  same as ``x / absmax`` (1 ulp apart for some x, enough to change a code at a threshold; the
  vectors include such elements). bitsandbytes builds with ``--use_fast_math``, so its
  ``1.0f/absmax`` is an approximate reciprocal (PTX rcp.approx, <= 1 ulp) and flushes
  subnormals: on a GPU, elements within about one ulp of a threshold can get the other code.
  When r is not a normal finite fp32 (absmax < 2^-128 gives r = inf, absmax > 2^126 gives a
  subnormal r) we compute x_hat = fl32(x / absmax) instead; no real weight is there, and the
  CUDA kernel gives NaN or zeros there.
* Code: the number of NF4 thresholds t with x_hat > t, thresholds being the exact midpoints of
  adjacent NF4 values rounded to fp32 (dQuantizeNF4's comparison tree uses strict ``>`` against
  these fp32 constants). So a value exactly equal to a threshold takes the LOWER code. That is
  "nearest NF4 value, exact ties to the lower code" except where the fp32 threshold rounded
  above the real midpoint: an x_hat equal to that threshold is nearer the upper value but takes
  the lower code, as the kernel does (THRESHOLD_ROUNDED_UP lists them).
* All-zero block (absmax 0): every code is 7 (NF4's 0.0) and absmax is stored as 0.0. The
  CUDA kernel computes 0 * (1/0) = NaN and its comparison tree sends NaN to code 0 (-1.0);
  that still decodes to -0.0 with a plain absmax, but with double quantization the decoded
  absmax of a zero block is generally NOT zero (offset + code * nested_absmax), so code 0 would
  decode to -absmax'. Code 7 decodes to exactly 0.0 under either absmax. Negative zero has
  code 7 too and dequantizes to +0.0 (NF4 has no -0).
* Packing: two codes per byte, element 2k in the high nibble, 2k+1 in the low; an odd count
  is padded with code 7 (the kernel loads 0.0 for the missing element, which scales to 0.0).
  ``P.weight`` is U8 [ceil(n/2), 1].
* Dequantize: w = fl32(NF4[code] * absmax_b), then rounded once to the stored dtype
  (bf16/f16/f32) with round-to-nearest-even.
* Double quantization (``bnb_4bit_use_double_quant``): offset = the fp32 nearest to the exact
  mean of all absmax values (bitsandbytes uses torch's fp32 mean, whose reduction order can
  move it by an ulp; we take the correctly rounded one); d_i = fl32(absmax_i - offset);
  nested blocks of 256; nested_absmax_j = max |d_i| over block j; r2 = fl32(1/nested_absmax_j)
  (same fallback as above); code_i = dQuantize(fl32(d_i * r2)): the CUDA kernel's binary search
  over the 256-entry signed dynamic map, reproduced step by step (it ends with fp32 midpoints
  ``(a+b)*0.5f``; an exact tie goes to the lower neighbour when x is above the last probed
  entry and to the upper one when x is at or below it). nested_absmax 0 (all absmax equal):
  codes 127 (the map's 0.0). Dequantize: absmax_i = fl32(fl32(map[q_i] * nested_absmax[i/256])
  + offset), two roundings (two kernels in bitsandbytes). The decoded absmax of a block can be far
  from its true absmax (the 8-bit map codes absmax - offset, not absmax): a zero block, whose d is
  -offset, decodes to a small absmax of either sign, and a block whose decoded absmax is negative
  dequantizes with flipped signs. That is the format, not this implementation.
* Signed dynamic map (bitsandbytes ``create_dynamic_map(signed=True)``, 7 exponent bits, 8
  total): for i = 0..6, k = 2^i + 1 fp32 boundaries linspace(0.1, 1, k); the 2^i means of
  adjacent boundaries m = fl32(fl32(b_j + b_j+1) / 2); scale s_i = fl32(10^(i-6)) (the
  double nearest 10^(i-6), then rounded to fp32); entries +fl32(s_i * m) and -fl32(s_i * m).
  Then 0.0 and 1.0; 127 + 127 + 2 = 256 values, sorted. linspace is torch's CPU formula as
  torch 2.13 computes it here: step = fl32(fl32(1 - fl32(0.1)) / (k-1)); element j <
  k//2 is fl32(start + step*j), the others fl32(end - step*(k-1-j)), each one rounding (an
  FMA). The map holds 0.0 (index 127) and +1.0 (index 255) but NOT -1.0: its smallest entry
  is -0.99296875 (fp32 -0.9929687380790710), the negated largest mean.
* Quant state JSON (the ``P.weight.quant_state.bitsandbytes__nf4`` U8 tensor): Python's
  json.dumps of {"quant_type", "blocksize", "dtype", "shape"} plus, when double-quantized,
  {"nested_blocksize": 256, "nested_dtype": "float32", "nested_offset": repr(float(offset))},
  in that order, with ", " and ": " separators.

QLoRA merge (``merge``; mirrored by org.loramerge.plan.TensorSource, engine.cpu.CpuMerge and
quant.Nf4Requantizer). Plain LoRA on Linear weights and on dense tensors (lm_head), scale
lora_alpha / r as a Python float (PEFT's ``scaling``):

* Base value of a 4-bit weight: its dequantized value, fl32(NF4[code] * absmax) (absmax
  double-dequantized when nested), rounded once (nearest even) to the quant state's dtype D:
  what bitsandbytes' dequantize_4bit returns and PEFT merges into. A dense tensor is its own value.
* Merged value: the exact rational W + s * (B @ A), every product and sum exact (Fractions),
  rounded once to the output dtype. An exactly zero delta keeps W's bits (the sign of a zero).
* ``--to bf16`` (f16, f32): the merged 4-bit weights are written in that dtype.
* ``--to nf4``: X = the merged value rounded once to D, quantized with the base's blocksize and
  double-quantization setting (``quantize_tensor``). The quant state JSON is bitsandbytes' exact
  text; loramerge pads it with trailing spaces to a length fixed before the data is written
  (``json.loads`` ignores them).
* Survival (``--to nf4``): ||D|| / ||dW|| with D = deq(Q(X)) - deq(Q(W)), W the base value above,
  Q the quantization with the base's settings, deq the dequantization rounded to D's dtype, and
  dW = exact merged value - W rounded to float64; aligned = <D', dW> / ||dW||^2 with D' the same
  difference before the dequantization's roundings (NF4[code] * absmax', exact in float64); the
  share of changed codes compares Q(X) with Q(W). Sums in float64 (numpy's order: equal to
  loramerge's up to rounding, ~1e-15 relative).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import struct
import sys
from fractions import Fraction
from pathlib import Path

import numpy as np

F32 = np.float32

# FORMATS.md section 5: the NF4 values, codes 0..15 (each an fp32 value, written exactly).
NF4 = np.array([
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453,
    -0.28444138169288635, -0.18477343022823334, -0.09105003625154495, 0.0,
    0.07958029955625534, 0.16093020141124725, 0.24611230194568634, 0.33791524171829224,
    0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0,
], dtype=np.float32)
NF4_ZERO_CODE = 7

# FORMATS.md section 5: the thresholds, to 7 digits (checked against ours in selftest).
FORMATS_THRESHOLDS_7 = [-0.8480964, -0.6106329, -0.4599953, -0.3396794, -0.2346074, -0.1379117,
                        -0.0455250, 0.0397901, 0.1202553, 0.2035213, 0.2920138, 0.3893125,
                        0.5016634, 0.6427869, 0.8614784]

SUPPORTED_BLOCKSIZES = [32, 64, 128, 256, 512, 1024, 2048, 4096]
NESTED_BLOCKSIZE = 256
FLT_MIN_NORMAL = np.float32(2.0 ** -126)

DTYPE_NAMES = {"BF16": "bfloat16", "F16": "float16", "F32": "float32"}


# ----------------------------------------------------------------------------- exact rounding

def round_fraction_to_f32(q: Fraction) -> np.float32:
    """The fp32 nearest to the rational q, ties to even (no double rounding through float64)."""
    if q == 0:
        return F32(0.0)
    sign = -1 if q < 0 else 1
    q = abs(q)
    num, den = q.numerator, q.denominator
    # choose s so that num * 2^s / den lies in [2^23, 2^24)
    s = 24 - (num.bit_length() - den.bit_length())
    while True:
        m, r = divmod(num << s if s >= 0 else num, den if s >= 0 else den << -s)
        if m >= 1 << 24:
            s -= 1
        elif m < 1 << 23:
            s += 1
        else:
            break
    if 23 - s < -126:  # subnormal: the quantum is 2^-149
        s = 149
        m, r = divmod(num << s, den)
    d = den if s >= 0 else den << -s
    if 2 * r > d or (2 * r == d and m % 2 == 1):
        m += 1
    value = math.ldexp(float(m), -s)
    if value > float(np.finfo(np.float32).max):
        return F32(sign * math.inf)
    return F32(sign * value)


def f32_fma(a, b, c) -> np.float32:
    """fl32(a*b + c) with one rounding."""
    return round_fraction_to_f32(Fraction(float(a)) * Fraction(float(b)) + Fraction(float(c)))


# ----------------------------------------------------------------------------- tables

def nf4_thresholds() -> np.ndarray:
    """Exact midpoints of adjacent NF4 values (exact in float64), rounded to fp32."""
    mids = (NF4[:-1].astype(np.float64) + NF4[1:].astype(np.float64)) / 2.0
    return mids.astype(np.float32)


THRESHOLDS = nf4_thresholds()


def thresholds_rounded_up() -> list[int]:
    """Indices k whose fp32 threshold lies above the real midpoint of NF4[k], NF4[k+1]."""
    out = []
    for k in range(15):
        mid = (Fraction(float(NF4[k])) + Fraction(float(NF4[k + 1]))) / 2
        if Fraction(float(THRESHOLDS[k])) > mid:
            out.append(k)
    return out


def torch_like_linspace_f32(start: float, end: float, steps: int) -> np.ndarray:
    s, e = F32(start), F32(end)
    step = F32(F32(e - s) / F32(steps - 1))
    half = steps // 2
    out = [f32_fma(step, j, s) if j < half else f32_fma(-step, steps - 1 - j, e) for j in range(steps)]
    return np.array(out, dtype=np.float32)


def create_dynamic_map_signed() -> np.ndarray:
    """bitsandbytes create_dynamic_map(signed=True, max_exponent_bits=7, total_bits=8); see the module doc."""
    data = []
    for i in range(7):
        b = torch_like_linspace_f32(0.1, 1.0, 2 ** i + 1)
        means = ((b[:-1] + b[1:]).astype(np.float32) / F32(2.0)).astype(np.float32)
        scale = F32(10.0 ** (i - 6))
        data += [float(F32(scale * m)) for m in means]
        data += [float(F32(F32(-scale) * m)) for m in means]
    data.append(0.0)
    data.append(1.0)
    assert len(data) == 256
    data.sort()
    return np.array(data, dtype=np.float32)


DYNAMIC_MAP = create_dynamic_map_signed()


# ----------------------------------------------------------------------------- dtype conversions

def bf16_bits_to_f32(bits: np.ndarray) -> np.ndarray:
    return (bits.astype(np.uint32) << 16).view(np.float32)


def f32_to_bf16_bits(x: np.ndarray) -> np.ndarray:
    """Round-to-nearest-even fp32 -> bf16 bits; NaN to the canonical quiet NaN."""
    b = np.asarray(x, dtype=np.float32).view(np.uint32).astype(np.uint64)
    rounded = ((b + 0x7FFF + ((b >> 16) & 1)) >> 16).astype(np.uint16)
    nan = np.isnan(np.asarray(x, dtype=np.float32))
    rounded[nan] = 0x7FC0
    return rounded


def to_stored(x_f32: np.ndarray, dtype: str) -> np.ndarray:
    """Round fp32 values once to the stored dtype; returns the raw array of that dtype (bf16 as uint16 bits)."""
    if dtype == "F32":
        return x_f32.astype(np.float32)
    if dtype == "F16":
        return x_f32.astype(np.float16)  # numpy: IEEE round-to-nearest-even
    if dtype == "BF16":
        return f32_to_bf16_bits(x_f32)
    raise ValueError(dtype)


def stored_to_f32(raw: np.ndarray, dtype: str) -> np.ndarray:
    if dtype == "BF16":
        return bf16_bits_to_f32(raw)
    return raw.astype(np.float32)


# ----------------------------------------------------------------------------- the codec

def scale_block(x: np.ndarray, absmax: np.float32) -> np.ndarray:
    with np.errstate(over="ignore"):
        r = F32(1.0) / absmax
    if np.isfinite(r) and r >= FLT_MIN_NORMAL:
        return (x * r).astype(np.float32)
    return (x / absmax).astype(np.float32)


def nf4_encode(x_hat: np.ndarray) -> np.ndarray:
    """Number of thresholds strictly below x_hat, i.e. dQuantizeNF4's comparison tree."""
    return np.searchsorted(THRESHOLDS, x_hat, side="left").astype(np.uint8)


def quantize_nf4(x: np.ndarray, blocksize: int) -> tuple[np.ndarray, np.ndarray]:
    """x: fp32 values in flattened order. Returns (codes one per element, absmax per block)."""
    if blocksize not in SUPPORTED_BLOCKSIZES:
        raise ValueError(f"blocksize {blocksize}")
    x = np.ascontiguousarray(x, dtype=np.float32).reshape(-1)
    if not np.all(np.isfinite(x)):
        raise ValueError("non-finite input")
    n = x.size
    nb = -(-n // blocksize)
    codes = np.empty(n, dtype=np.uint8)
    absmax = np.empty(nb, dtype=np.float32)
    for b in range(nb):
        blk = x[b * blocksize:(b + 1) * blocksize]
        a = F32(np.max(np.abs(blk)))
        absmax[b] = a
        if a == 0:
            codes[b * blocksize:b * blocksize + blk.size] = NF4_ZERO_CODE
        else:
            codes[b * blocksize:b * blocksize + blk.size] = nf4_encode(scale_block(blk, a))
    return codes, absmax


def pack(codes: np.ndarray) -> np.ndarray:
    c = codes.astype(np.uint8)
    if c.size % 2:
        c = np.concatenate([c, np.array([NF4_ZERO_CODE], dtype=np.uint8)])
    return ((c[0::2] << 4) | c[1::2]).astype(np.uint8)


def unpack(packed: np.ndarray, n: int) -> np.ndarray:
    p = packed.reshape(-1).astype(np.uint8)
    out = np.empty(p.size * 2, dtype=np.uint8)
    out[0::2] = p >> 4
    out[1::2] = p & 0xF
    return out[:n]


def dequantize_nf4_f32(codes: np.ndarray, absmax: np.ndarray, blocksize: int) -> np.ndarray:
    n = codes.size
    scale = np.repeat(absmax.astype(np.float32), blocksize)[:n]
    return (NF4[codes] * scale).astype(np.float32)


def exact_mean_f32(values: np.ndarray) -> np.float32:
    total = sum((Fraction(float(v)) for v in values), Fraction(0))
    return round_fraction_to_f32(total / len(values))


def dquantize_search(code: np.ndarray, x: float) -> int:
    """The CUDA kernel's dQuantize<0>: binary search over a sorted 256-entry map, fp32 midpoints."""
    x = F32(x)
    pivot, upper_pivot, lower_pivot = 127, 255, 0
    lower, upper = F32(-1.0), F32(1.0)
    val = code[pivot]
    i = 64
    while i > 0:
        if x > val:
            lower_pivot, lower = pivot, val
            pivot += i
        else:
            upper_pivot, upper = pivot, val
            pivot -= i
        val = code[pivot]
        i >>= 1
    if upper_pivot == 255:
        upper = code[upper_pivot]
    if lower_pivot == 0:
        lower = code[lower_pivot]
    if x > val:
        midpoint = F32(F32(upper + val) * F32(0.5))
        return upper_pivot if x > midpoint else pivot
    midpoint = F32(F32(lower + val) * F32(0.5))
    return lower_pivot if x < midpoint else pivot


def double_quantize(absmax: np.ndarray, nested_blocksize: int = NESTED_BLOCKSIZE):
    """Returns (8-bit codes, nested_absmax, offset)."""
    offset = exact_mean_f32(absmax)
    d = (absmax.astype(np.float32) - offset).astype(np.float32)
    nb = absmax.size
    nnb = -(-nb // nested_blocksize)
    q = np.empty(nb, dtype=np.uint8)
    nested = np.empty(nnb, dtype=np.float32)
    zero_code = int(np.nonzero(DYNAMIC_MAP == 0)[0][0])
    for j in range(nnb):
        blk = d[j * nested_blocksize:(j + 1) * nested_blocksize]
        na = F32(np.max(np.abs(blk)))
        nested[j] = na
        if na == 0:
            q[j * nested_blocksize:j * nested_blocksize + blk.size] = zero_code
            continue
        scaled = scale_block(blk, na)
        for t, v in enumerate(scaled):
            q[j * nested_blocksize + t] = dquantize_search(DYNAMIC_MAP, v)
    return q, nested, offset


def dequantize_absmax(q: np.ndarray, nested: np.ndarray, offset, nested_map: np.ndarray,
                      nested_blocksize: int = NESTED_BLOCKSIZE) -> np.ndarray:
    scale = np.repeat(nested.astype(np.float32), nested_blocksize)[:q.size]
    return ((nested_map[q] * scale).astype(np.float32) + F32(offset)).astype(np.float32)


def py_float_json(v: float) -> str:
    return json.dumps(float(v))


def quant_state_json(blocksize: int, dtype: str, shape, offset=None) -> bytes:
    d = {"quant_type": "nf4", "blocksize": blocksize, "dtype": DTYPE_NAMES[dtype], "shape": list(shape)}
    if offset is not None:
        d["nested_blocksize"] = NESTED_BLOCKSIZE
        d["nested_dtype"] = "float32"
        d["nested_offset"] = float(offset)
    return json.dumps(d).encode("utf-8")


def quantize_tensor(x_f32: np.ndarray, shape, dtype: str, blocksize: int, double_quant: bool) -> dict:
    """All tensors of one quantized weight, named by their suffix after 'P.weight'."""
    codes, absmax = quantize_nf4(x_f32, blocksize)
    n = codes.size
    out = {
        "": pack(codes).reshape(-1, 1),
        ".quant_map": NF4.copy(),
    }
    if double_quant:
        q, nested, offset = double_quantize(absmax)
        out[".absmax"] = q
        out[".nested_absmax"] = nested
        out[".nested_quant_map"] = DYNAMIC_MAP.copy()
        out[".quant_state.bitsandbytes__nf4"] = np.frombuffer(quant_state_json(blocksize, dtype, shape, offset), dtype=np.uint8)
        decoded_absmax = dequantize_absmax(q, nested, offset, DYNAMIC_MAP)
    else:
        out[".absmax"] = absmax
        out[".quant_state.bitsandbytes__nf4"] = np.frombuffer(quant_state_json(blocksize, dtype, shape), dtype=np.uint8)
        decoded_absmax = absmax
    assert out[""].shape[0] == -(-n // 2)
    return {"tensors": out, "codes": codes, "absmax_decoded": decoded_absmax}


def dequantize_group(group: dict[str, np.ndarray], state: dict) -> np.ndarray:
    """Dequantize from the stored tensors (suffix -> array) and the parsed quant state: fp32 values."""
    n = int(np.prod(state["shape"]))
    codes = unpack(group[""], n)
    bs = state["blocksize"]
    if "nested_offset" in state:
        absmax = dequantize_absmax(group[".absmax"], group[".nested_absmax"], F32(state["nested_offset"]),
                                   group[".nested_quant_map"].astype(np.float32), state["nested_blocksize"])
    else:
        absmax = group[".absmax"].astype(np.float32)
    return dequantize_nf4_f32(codes, absmax, bs)


# ----------------------------------------------------------------------------- QLoRA merge (exact)

FORMATS = {"BF16": (8, -126, 127), "F16": (11, -14, 15), "F32": (24, -126, 127)}


def round_fraction(q: Fraction, dtype: str) -> float:
    """The value of dtype (BF16/F16/F32) nearest to the rational q, ties to even, as an exact float64;
    beyond the largest finite value, +-inf (IEEE round-to-nearest). A zero q gives +0.0."""
    precision, emin, emax = FORMATS[dtype]
    if q == 0:
        return 0.0
    sign = -1 if q < 0 else 1
    a = abs(q)
    num, den = a.numerator, a.denominator
    e = num.bit_length() - den.bit_length()  # 2^e <= a < 2^(e+2); fix to floor(log2 a)
    if Fraction(2) ** e > a:
        e -= 1
    e = max(e, emin)
    quantum = Fraction(2) ** (e - precision + 1)
    m, r = divmod(a, quantum)  # m integer part, r remainder (a Fraction)
    m = int(m)
    if 2 * r > quantum or (2 * r == quantum and m % 2 == 1):
        m += 1
    value = m * quantum
    max_finite = (2 - Fraction(2) ** (1 - precision)) * Fraction(2) ** emax
    if value > max_finite:
        return sign * math.inf
    return sign * float(value)  # exact: value has at most `precision` significant bits


def stored_values(raw: np.ndarray, dtype: str) -> np.ndarray:
    """Raw stored array (bf16 as uint16 bits) -> float64 values, exactly."""
    return stored_to_f32(raw.reshape(-1), dtype).astype(np.float64)


def exact_delta(a: np.ndarray, b: np.ndarray, scale: float) -> np.ndarray:
    """The exact s * (B @ A) as an object array of Fractions, [out, in]."""
    # fp32 values are integers times 2^-149: exact integer products, then one Fraction per element
    def ints(x):
        return np.array([[int(Fraction(float(v)) * 2 ** 149) for v in row] for row in x.astype(np.float64)], dtype=object)
    prod = ints(b).dot(ints(a))
    s = Fraction(scale)
    unit = Fraction(1, 2 ** 298)
    return np.array([[s * (int(v) * unit) for v in row] for row in prod], dtype=object)


def merge_values(w: np.ndarray, delta: np.ndarray, dtype: str) -> tuple[np.ndarray, np.ndarray]:
    """Round W + delta (exact) once to dtype. Returns (values as float64, delta as float64)."""
    wf = w.reshape(-1)
    df = delta.reshape(-1)
    out = np.empty(wf.size, dtype=np.float64)
    d64 = np.empty(wf.size, dtype=np.float64)
    for i in range(wf.size):
        d = df[i]
        d64[i] = float(d)
        out[i] = wf[i] if d == 0 else round_fraction(Fraction(float(wf[i])) + d, dtype)
    return out, d64


def to_stored_f64(x: np.ndarray, dtype: str) -> np.ndarray:
    """float64 values already representable in dtype -> the raw stored array."""
    return to_stored(x.astype(np.float32), dtype)


def read_adapter(adapter_dir: Path):
    """adapter_config.json, {module: (lora_A, lora_B)} of a plain LoRA adapter (Linear layers only), and
    {module: (dtype, raw)} of the ``base_layer`` copies PEFT saves for targeted embedding-like layers
    (save_embedding_layers, e.g. lm_head), which replace the base tensor before the merge."""
    cfg = json.loads((adapter_dir / "adapter_config.json").read_text())
    assert cfg.get("peft_type") == "LORA" and not cfg.get("use_dora") and not cfg.get("use_rslora"), "plain LoRA only"
    assert not cfg.get("rank_pattern") and not cfg.get("alpha_pattern"), "one rank and alpha only"
    tensors, _ = st_read(adapter_dir / "adapter_model.safetensors")
    prefix = "base_model.model."
    mods = {}
    replaced = {}
    for name, (dtype, arr) in tensors.items():
        assert name.startswith(prefix), name
        if name.endswith(".base_layer.weight"):
            replaced[name[len(prefix):-len(".base_layer.weight")]] = (dtype, arr)
            continue
        assert dtype == "F32", (name, dtype)
        assert name.endswith((".lora_A.weight", ".lora_B.weight")), name
        module = name[len(prefix):-len(".lora_A.weight")]
        part = 0 if name.endswith(".lora_A.weight") else 1
        mods.setdefault(module, [None, None])[part] = arr.astype(np.float32)
    return cfg, {m: (ab[0], ab[1]) for m, ab in mods.items()}, replaced


def merge_qlora(base_dir: Path, adapter_dir: Path, to: str) -> dict:
    """The reference of ``loramerge merge --to`` (see the module doc). Returns
    {"tensors": [(name, dtype, array)] of the adapted tensors as written, "survival": {...} for nf4}."""
    base = st_read_dir(base_dir)
    cfg, mods, replaced = read_adapter(adapter_dir)
    scale = float(cfg["lora_alpha"]) / float(cfg["r"])
    states = {k[:-len(".quant_state.bitsandbytes__nf4")]: json.loads(v[1].tobytes())
              for k, v in base.items() if k.endswith(".quant_state.bitsandbytes__nf4")}
    out = []
    per_tensor = []
    for module in sorted(mods):
        a, b = mods[module]
        wname = module + ".weight"
        delta = exact_delta(a, b, scale)
        if wname in states:
            assert module not in replaced, "a 4-bit weight cannot be replaced: " + module
            state = states[wname]
            dtype = DTYPE_CODES[state["dtype"]]
            group = {s: base[wname + s][1] for s in ("", ".absmax", ".quant_map", ".nested_absmax", ".nested_quant_map")
                     if wname + s in base}
            w = stored_values(to_stored(dequantize_group(group, state), dtype), dtype)
            shape = state["shape"]
            assert list(delta.shape) == shape, (wname, delta.shape, shape)
            if to == "nf4":
                x, d64 = merge_values(w, delta, dtype)
                bs, dq = state["blocksize"], "nested_offset" in state
                qx = quantize_tensor(x.astype(np.float32), shape, dtype, bs, dq)
                qw = quantize_tensor(w.astype(np.float32), shape, dtype, bs, dq)
                deq_x = stored_values(to_stored(dequantize_nf4_f32(qx["codes"], qx["absmax_decoded"], bs), dtype), dtype)
                deq_w = stored_values(to_stored(dequantize_nf4_f32(qw["codes"], qw["absmax_decoded"], bs), dtype), dtype)
                surviving = float(np.sum((deq_x - deq_w) ** 2))
                delta_sq = float(np.sum(d64 ** 2))
                changed = int(np.count_nonzero(qx["codes"] != qw["codes"]))
                # aligned: D before its roundings (NF4[c] * absmax', exact in float64) against dW
                sx = np.repeat(qx["absmax_decoded"].astype(np.float64), bs)[:x.size]
                sw = np.repeat(qw["absmax_decoded"].astype(np.float64), bs)[:x.size]
                d_raw = NF4[qx["codes"]].astype(np.float64) * sx - NF4[qw["codes"]].astype(np.float64) * sw
                dot = float(np.sum(d_raw * d64))
                per_tensor.append({"name": wname, "codes": int(x.size), "codes_changed": changed,
                                   "delta_norm": math.sqrt(delta_sq), "surviving_norm": math.sqrt(surviving), "dot": dot,
                                   "survival": math.sqrt(surviving / delta_sq) if delta_sq > 0 else None,
                                   "aligned": dot / delta_sq if delta_sq > 0 else None})
                for suffix, arr in qx["tensors"].items():
                    dt = "F32" if arr.dtype == np.float32 else "U8"
                    out.append((wname + suffix, dt, arr))
            else:
                target = {"bf16": "BF16", "f16": "F16", "f32": "F32"}[to]
                x, _ = merge_values(w, delta, target)
                out.append((wname, target, to_stored_f64(x, target).reshape(shape)))
        else:
            dtype, raw = base[wname]
            if module in replaced:
                # the adapter's copy of the layer replaces the base tensor, in the base's dtype (values are copied, not rounded)
                rdtype, rraw = replaced[module]
                assert rdtype == dtype and rraw.shape == raw.shape, (module, rdtype, dtype)
                raw = rraw
            w = stored_values(raw, dtype)
            x, _ = merge_values(w, delta, dtype)  # a dense tensor keeps its dtype (no --dtype)
            out.append((wname, dtype, to_stored_f64(x, dtype).reshape(raw.shape)))
    result = {"tensors": out}
    if to == "nf4":
        d2 = sum(t["delta_norm"] ** 2 for t in per_tensor)
        s2 = sum(t["surviving_norm"] ** 2 for t in per_tensor)
        dot = sum(t["dot"] for t in per_tensor)
        codes = sum(t["codes"] for t in per_tensor)
        changed = sum(t["codes_changed"] for t in per_tensor)
        result["survival"] = {"survival": math.sqrt(s2 / d2) if d2 > 0 else None, "aligned": dot / d2 if d2 > 0 else None,
                              "delta_norm": math.sqrt(d2),
                              "surviving_norm": math.sqrt(s2), "codes": codes, "codes_changed": changed,
                              "tensors": per_tensor}
    return result


DTYPE_CODES = {v: k for k, v in DTYPE_NAMES.items()}


def merge_command(base_dir: Path, adapter_dir: Path, out_dir: Path, to: str) -> None:
    r = merge_qlora(base_dir, adapter_dir, to)
    out_dir.mkdir(parents=True, exist_ok=True)
    st_write(out_dir / "model.safetensors", r["tensors"], {"format": "pt", "generator": "scripts/nf4_reference.py merge"})
    if "survival" in r:
        (out_dir / "survival.json").write_text(json.dumps(r["survival"], indent=1) + "\n")
        print(f"survival {r['survival']['survival']:.4f}, codes changed {r['survival']['codes_changed']} of {r['survival']['codes']}")
    print("wrote", len(r["tensors"]), "tensors to", out_dir)


# ----------------------------------------------------------------------------- safetensors, minimal

ST_DTYPES = {"F32": (np.float32, 4), "F16": (np.float16, 2), "BF16": (np.uint16, 2), "U8": (np.uint8, 1),
             "I64": (np.int64, 8)}


def st_read(path: Path) -> tuple[dict[str, tuple[str, np.ndarray]], dict]:
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])
    meta = header.pop("__metadata__", {})
    out = {}
    for name, e in header.items():
        np_dtype, _ = ST_DTYPES[e["dtype"]]
        b, end = e["data_offsets"]
        arr = np.frombuffer(raw[8 + n + b:8 + n + end], dtype=np_dtype).reshape(e["shape"])
        out[name] = (e["dtype"], arr)
    return out, meta


def st_write(path: Path, tensors: list[tuple[str, str, np.ndarray]], metadata: dict | None = None) -> None:
    """tensors in the given order; header padded with spaces to a multiple of 8 (as safetensors does)."""
    header = {}
    if metadata:
        header["__metadata__"] = metadata
    offset = 0
    blobs = []
    for name, dtype, arr in tensors:
        np_dtype, _ = ST_DTYPES[dtype]
        data = np.ascontiguousarray(arr, dtype=np_dtype).tobytes()
        header[name] = {"dtype": dtype, "shape": list(arr.shape), "data_offsets": [offset, offset + len(data)]}
        offset += len(data)
        blobs.append(data)
    h = json.dumps(header, separators=(",", ":")).encode("utf-8")
    h += b" " * ((8 - len(h) % 8) % 8)
    path.write_bytes(struct.pack("<Q", len(h)) + h + b"".join(blobs))


def st_read_dir(model_dir: Path) -> dict[str, tuple[str, np.ndarray]]:
    idx = model_dir / "model.safetensors.index.json"
    files = sorted(set(json.loads(idx.read_text())["weight_map"].values())) if idx.exists() else ["model.safetensors"]
    out = {}
    for f in files:
        out.update(st_read(model_dir / f)[0])
    return out


# ----------------------------------------------------------------------------- vectors

def threshold_probe_values() -> np.ndarray:
    """Values that hit every decision boundary exactly with absmax 1.0 (so x_hat = x)."""
    vals = [1.0, -1.0, 0.0, -0.0]
    for t in THRESHOLDS:
        vals += [float(t), float(np.nextafter(t, F32(2))), float(np.nextafter(t, F32(-2)))]
    for k in range(15):
        mid = (float(NF4[k]) + float(NF4[k + 1])) / 2.0  # exact in float64
        m32 = F32(mid)
        if float(m32) == mid:
            vals.append(mid)  # an exact tie representable in fp32
    vals += [float(v) for v in NF4]
    return np.array(vals, dtype=np.float32)


def reciprocal_vs_divide_values(absmax_values, want: int, rng) -> list[tuple[float, np.ndarray]]:
    """Blocks (absmax, values) whose codes differ between x*fl(1/absmax) and x/absmax."""
    out = []
    for a in absmax_values:
        a = F32(a)
        r = F32(1.0) / a
        found = []
        for t in THRESHOLDS:
            x0 = F32(float(t) * float(a))
            x = x0
            for _ in range(6):
                x = np.nextafter(x, F32(-np.inf))
            for _ in range(13):
                c_mul = nf4_encode(np.array([F32(x * r)], dtype=np.float32))[0]
                c_div = nf4_encode(np.array([F32(x / a)], dtype=np.float32))[0]
                if c_mul != c_div and abs(x) < a:
                    found.append(float(x))
                x = np.nextafter(x, F32(np.inf))
        if found:
            out.append((float(a), np.array(found[:want], dtype=np.float32)))
    return out


def make_cases():
    rng = np.random.default_rng(20240601)
    cases = []

    def add(name, dtype, shape, values_f32, blocksize, double_quant, covers):
        n = int(np.prod(shape))
        v = np.asarray(values_f32, dtype=np.float32).reshape(-1)
        assert v.size == n, (name, v.size, n)
        raw = to_stored(v, dtype)
        cases.append({"name": name, "dtype": dtype, "shape": list(shape), "raw": raw.reshape(shape),
                      "blocksize": blocksize, "double_quant": double_quant, "covers": covers})

    def normal(n, std):
        return (rng.standard_normal(n) * std).astype(np.float32)

    def bf16_exact(v):
        return bf16_bits_to_f32(f32_to_bf16_bits(v))

    add("bs64_bf16_basic", "BF16", [8, 96], bf16_exact(normal(768, 0.02)), 64, False,
        "blocksize 64, blocks crossing rows, bf16 input")
    add("bs32_f32_odd_partial", "F32", [7, 9], normal(63, 1.0), 32, False,
        "blocksize 32, odd element count (padded low nibble), partial last block (31)")
    add("bs128_f16_partial", "F16", [5, 100], normal(500, 0.5).astype(np.float16).astype(np.float32), 128, False,
        "blocksize 128, f16 input, partial last block (116)")
    add("bs4096_bf16_partial", "BF16", [2, 4100], bf16_exact(normal(8200, 0.05)), 4096, False,
        "blocksize 4096, two full blocks and a partial one (8)")

    probe = threshold_probe_values()
    # absmax exactly 1.0 in every block: the first element of each block is 1.0 or -1.0
    per_block = 32
    blocks = []
    body = [v for v in probe if abs(v) < 1.0]
    i = 0
    while i < len(body):
        chunk = body[i:i + per_block - 1]
        sign = 1.0 if (len(blocks) % 2 == 0) else -1.0
        blk = [sign] + chunk
        blk += [0.0] * (per_block - len(blk))
        blocks.append(blk)
        i += per_block - 1
    ties = np.array(sum(blocks, []), dtype=np.float32)
    add("ties_thresholds_f32", "F32", [len(blocks), per_block], ties, 32, False,
        "absmax 1.0 (and -1.0 as the block max): elements exactly on every fp32 threshold and one ulp either side, "
        "exact midpoints representable in fp32, the NF4 values, +-0.0, +-absmax")

    rvd = reciprocal_vs_divide_values([3.0, 0.7, 5.5e-3, 1.9], 30, rng)
    rows = []
    for a, xs in rvd:
        blk = np.zeros(32, dtype=np.float32)
        blk[0] = -a
        m = min(31, xs.size)
        blk[1:1 + m] = xs[:m]
        rows.append(blk)
    add("reciprocal_not_division_f32", "F32", [len(rows), 32], np.concatenate(rows), 32, False,
        "elements whose code differs between x*fl32(1/absmax) and fl32(x/absmax): pins down multiply-by-reciprocal")

    z = bf16_exact(normal(6 * 64, 0.1))
    z[64:128] = 0.0                       # an all-zero block
    z[128:192] = 0.0
    z[130] = -0.0
    z[140] = -0.0
    z[150] = 0.015625                     # a block of zeros and -0.0 with one value
    z[192:256] = -0.0                     # a block of negative zeros only
    z[300] = float(np.max(np.abs(z[256:320]))) * -1.0
    add("zero_blocks_bf16", "BF16", [6, 64], z, 64, False,
        "an all-zero block (absmax 0 -> codes 7), a block of -0.0 only, a block mixing +-0.0 with one value")

    add("zero_blocks_dq_bf16", "BF16", [6, 64], z, 64, True,
        "the same with double quantization: zero blocks decode to exactly 0.0 although their decoded absmax is not 0")

    tiny = np.zeros(96, dtype=np.float32)
    tiny[0:32] = normal(32, 1.0) * F32(1e-40)        # subnormal inputs, absmax < 2^-128 -> 1/absmax = inf
    big = normal(32, 1.0)
    tiny[32:64] = (big / np.max(np.abs(big)) * F32(3e38)).astype(np.float32)  # absmax > 2^126 -> 1/absmax subnormal
    tiny[64:96] = normal(32, 1.0) * F32(2.0 ** -120)  # small but normal reciprocal
    add("extreme_absmax_f32", "F32", [3, 32], tiny, 32, False,
        "absmax whose fp32 reciprocal overflows (subnormal inputs) or is subnormal (huge inputs): division fallback")

    # double quantization with more than 256 blocks: the nested blocks are 256 + a partial one
    rows = 100
    cols = 83
    scales = np.exp(rng.uniform(-3, 0, rows)).astype(np.float32)
    v = (rng.standard_normal((rows, cols)).astype(np.float32) * scales[:, None]).reshape(-1)
    add("dq_bs32_bf16_nested_partial", "BF16", [rows, cols], bf16_exact(v), 32, True,
        "double quant, 260 blocks (nested blocks 256 + 4), absmax varying over three decades")
    v = (rng.standard_normal((64, 130)).astype(np.float32) * F32(0.3)).astype(np.float16).astype(np.float32)
    add("dq_bs32_f16_260_blocks", "F16", [64, 130], v.reshape(-1), 32, True,
        "double quant, f16 input, 260 blocks (nested 256 + 4)")
    add("dq_bs64_f32_40_blocks", "F32", [40, 64], normal(2560, 0.02), 64, True,
        "double quant, one partial nested block of 40")
    # an fp32 weight whose block absmax values have full 24-bit significands, so that a running fp32
    # sum (or numpy's pairwise one) would give another offset than the correctly rounded mean
    for seed in range(100):
        r2 = np.random.default_rng(seed)
        v = (r2.standard_normal((80, 32)) * np.exp(r2.uniform(-4, 0, (80, 1)))).astype(np.float32)
        _, am = quantize_nf4(v.reshape(-1), 32)
        running = F32(0)
        for a in am:
            running = F32(running + a)
        if F32(running / F32(am.size)) != exact_mean_f32(am) and F32(np.mean(am)) != exact_mean_f32(am):
            break
    else:
        raise AssertionError("no seed gives a naive mean that differs")
    add("dq_f32_exact_mean", "F32", [80, 32], v.reshape(-1), 32, True,
        "double quant whose offset differs between the exact mean and a running (or pairwise) fp32 sum")
    add("dq_single_block_bf16", "BF16", [4, 16], bf16_exact(normal(64, 1.0)), 64, True,
        "double quant with one block: absmax - offset = 0, nested_absmax 0 -> code 127, decodes to the absmax exactly")
    eq = bf16_exact(normal(8 * 64, 0.1))
    for b in range(8):
        blk = eq[b * 64:(b + 1) * 64]
        blk[np.argmax(np.abs(blk))] = 0.5 if b % 2 == 0 else -0.5
        blk[np.abs(blk) > 0.5] = 0.25
    add("dq_equal_absmax_bf16", "BF16", [8, 64], eq, 64, True,
        "double quant where every block has absmax 0.5: nested_absmax 0")
    add("bs64_bf16_plain_absmax_odd", "BF16", [3, 43], bf16_exact(normal(129, 0.05)), 64, False,
        "plain absmax, odd count 129 (a partial block of one element)")
    return cases


def dynamic_map_probes() -> str:
    """For every adjacent pair of the map: "x_bits:code" for x at the fp32 midpoint (a+b)*0.5f and one ulp either side."""
    m = DYNAMIC_MAP
    out = []
    for k in range(255):
        mid = F32(F32(m[k] + m[k + 1]) * F32(0.5))
        for x in (np.nextafter(mid, F32(-2)), mid, np.nextafter(mid, F32(2))):
            out.append("%08x:%d" % (int(np.float32(x).view(np.uint32)), dquantize_search(m, x)))
    for x in (F32(-1.0), F32(1.0), F32(0.0), F32(-0.0), m[0], m[255]):
        out.append("%08x:%d" % (int(np.float32(x).view(np.uint32)), dquantize_search(m, x)))
    return " ".join(out)


def build_vectors(out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    tensors: list[tuple[str, str, np.ndarray]] = [
        ("nf4.quant_map", "F32", NF4.copy()),
        ("nf4.thresholds", "F32", THRESHOLDS.copy()),
        ("dynamic_map.signed", "F32", DYNAMIC_MAP.copy()),
    ]
    index_cases = []
    for c in make_cases():
        name, dtype, shape = c["name"], c["dtype"], c["shape"]
        x = stored_to_f32(c["raw"].reshape(-1), dtype)
        q = quantize_tensor(x, shape, dtype, c["blocksize"], c["double_quant"])
        n = x.size
        deq32 = dequantize_nf4_f32(q["codes"], q["absmax_decoded"], c["blocksize"])
        # the dequantization from the stored tensors must agree with the one from the codes
        state = json.loads(q["tensors"][".quant_state.bitsandbytes__nf4"].tobytes())
        assert np.array_equal(dequantize_group(q["tensors"], state).view(np.uint32), deq32.view(np.uint32))
        names = []

        def put(suffix, dt, arr):
            tensors.append((f"{name}{suffix}", dt, arr))
            names.append(f"{name}{suffix}")

        put(".input", dtype, c["raw"])
        put(".weight", "U8", q["tensors"][""])
        put(".weight.absmax", "U8" if c["double_quant"] else "F32", q["tensors"][".absmax"])
        put(".weight.quant_map", "F32", q["tensors"][".quant_map"])
        if c["double_quant"]:
            put(".weight.nested_absmax", "F32", q["tensors"][".nested_absmax"])
            put(".weight.nested_quant_map", "F32", q["tensors"][".nested_quant_map"])
            put(".absmax_decoded", "F32", q["absmax_decoded"])
        put(".weight.quant_state.bitsandbytes__nf4", "U8", q["tensors"][".quant_state.bitsandbytes__nf4"])
        put(".dequant", dtype, to_stored(deq32, dtype).reshape(shape))
        if dtype != "F32" and n <= 4096:
            put(".dequant_f32", "F32", deq32.reshape(shape))
        entry = {
            "name": name,
            "dtype": dtype,
            "shape": shape,
            "blocksize": c["blocksize"],
            "double_quant": c["double_quant"],
            "num_elements": n,
            "num_blocks": int(q["absmax_decoded"].size),
            "covers": c["covers"],
            "tensors": names,
            "quant_state": state,
        }
        if c["double_quant"]:
            entry["nested_offset_f32_bits"] = "0x%08x" % int(np.float32(state["nested_offset"]).view(np.uint32))
        index_cases.append(entry)
    # named model.safetensors so that the folder opens as a checkpoint: each case is a complete NF4 group
    st_write(out_dir / "model.safetensors", tensors, {"format": "pt", "generator": "scripts/nf4_reference.py vectors"})
    index = {
        "generator": "python scripts/nf4_reference.py vectors --out src/test/resources/nf4",
        "versions": {"python": platform.python_version(), "numpy": np.__version__},
        "file": "model.safetensors",
        "rules": "see the docstring of scripts/nf4_reference.py",
        "thresholds_rounded_up": thresholds_rounded_up(),
        "dynamic_map_signed_f32_bits": " ".join("%08x" % int(b) for b in DYNAMIC_MAP.view(np.uint32)),
        "dynamic_map_search_probes": dynamic_map_probes(),
        "cases": index_cases,
    }
    (out_dir / "index.json").write_text(json.dumps(index, indent=1) + "\n")
    total = sum(p.stat().st_size for p in out_dir.iterdir())
    print(f"wrote {len(index_cases)} cases, {len(tensors)} tensors, {total} bytes to {out_dir}")


# ----------------------------------------------------------------------------- self test

def selftest() -> None:
    import torch  # cross-checks only
    # thresholds agree with FORMATS.md to its 7 digits
    for mine, doc in zip(THRESHOLDS, FORMATS_THRESHOLDS_7):
        assert abs(float(mine) - doc) < 6e-8, (mine, doc)
    # the comparison tree equals "count of thresholds below"; spot-check nearest-with-ties-lower elsewhere
    xs = np.concatenate([np.linspace(-1, 1, 200001, dtype=np.float32), THRESHOLDS,
                         np.nextafter(THRESHOLDS, F32(2)), np.nextafter(THRESHOLDS, F32(-2))])
    codes = nf4_encode(xs)
    up = set(thresholds_rounded_up())
    for x, c in zip(xs, codes):
        d = np.abs(NF4.astype(np.float64) - float(x))
        best = int(np.argmin(d))  # argmin: first (lower) index on an exact tie
        if c != best:
            k = c  # must be the rounded-up threshold case: x == THRESHOLDS[k], nearer NF4[k+1]
            assert k in up and float(x) == float(THRESHOLDS[k]) and best == k + 1, (x, c, best)
    # the dynamic map: structure, and equality with the generator written with torch.linspace
    m = DYNAMIC_MAP
    assert m.size == 256 and np.all(np.diff(m.astype(np.float64)) > 0)
    assert m[127] == 0.0 and m[255] == 1.0 and m.max() == 1.0 and -1.0 not in m
    assert float(m[0]) == float(F32(-0.99296875))
    data = []
    for i in range(7):
        b = torch.linspace(0.1, 1, 2 ** i + 1)
        mm = (b[:-1] + b[1:]) / 2.0
        data += ((10 ** (-6 + i)) * mm).tolist()
        data += (-(10 ** (-6 + i)) * mm).tolist()
    data += [0, 1.0]
    data.sort()
    torch_map = torch.tensor(data, dtype=torch.float32).numpy()
    same = np.array_equal(torch_map.view(np.uint32), m.view(np.uint32))
    print("dynamic map equals the torch.linspace-built table on this machine:", same)
    assert same
    # dQuantize's search equals nearest-entry except at exact fp32 midpoint ties
    rng = np.random.default_rng(1)
    probes = np.concatenate([rng.uniform(-1, 1, 20000).astype(np.float32), m,
                             np.nextafter(m, F32(2)), np.nextafter(m, F32(-2)),
                             ((m[:-1] + m[1:]) * F32(0.5)).astype(np.float32)])
    mismatches = 0
    for x in probes:
        if abs(x) > 1:
            continue
        c = dquantize_search(m, x)
        d = np.abs(m.astype(np.float64) - float(x))
        if d[c] != d.min():
            mismatches += 1
            j = int(np.argmin(d))
            mid = F32(F32(m[min(c, j)] + m[max(c, j)]) * F32(0.5))
            assert abs(c - j) == 1 and (x == mid or abs(float(x) - float(mid)) <= 2 ** -24 * abs(float(mid))), (x, c, j)
    print("dQuantize search: nearest entry except", mismatches, "values at the fp32 midpoints")
    # exact mean rounding
    a = np.array([1.0, 2.0, 2.0], dtype=np.float32)
    assert exact_mean_f32(a) == F32(5.0 / 3.0)
    assert round_fraction_to_f32(Fraction(1, 3)) == F32(1.0 / 3.0)
    assert round_fraction_to_f32(Fraction(3, 2 ** 150)) == F32(2.0 ** -148)  # 1.5 quanta: tie to even, 2 quanta
    assert round_fraction_to_f32(Fraction(5, 2 ** 150)) == F32(2.0 ** -148)  # 2.5 quanta: tie to even, 2 quanta
    assert round_fraction_to_f32(Fraction(3, 2 ** 151)) == F32(2.0 ** -149)  # 0.75 quanta: 1 quantum
    print("selftest passed; thresholds rounded above the real midpoint:", thresholds_rounded_up())


# ----------------------------------------------------------------------------- models

def tiny_llama(out: Path) -> None:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=128, hidden_size=96, intermediate_size=200, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                      tie_word_embeddings=False, dtype="bfloat16")
    model = LlamaForCausalLM(cfg).to(torch.bfloat16)
    with torch.no_grad():
        # one all-zero row block and an odd-free shape mix are already present; add a zero block
        model.model.layers[0].mlp.down_proj.weight[0, :64] = 0
    model.save_pretrained(out)
    print("wrote", out)


SKIP_PARTS = ("embed", "lm_head", "norm", "wte", "wpe", "shared", "score", "classifier")


def check_model(orig_dir: Path, nf4_dir: Path) -> None:
    orig = st_read_dir(orig_dir)
    quant = st_read_dir(nf4_dir)
    states = {k[:-len(".quant_state.bitsandbytes__nf4")]: json.loads(v[1].tobytes())
              for k, v in quant.items() if k.endswith(".quant_state.bitsandbytes__nf4")}
    assert states, "no quantized weights in " + str(nf4_dir)
    checked = 0
    for wname, state in sorted(states.items()):
        dtype, raw = orig[wname]
        x = stored_to_f32(raw.reshape(-1), dtype)
        assert list(raw.shape) == state["shape"], wname
        ref = quantize_tensor(x, raw.shape, dtype, state["blocksize"], "nested_offset" in state)
        for suffix, arr in ref["tensors"].items():
            got_dtype, got = quant[wname + suffix]
            if not (got.shape == arr.shape and got.tobytes() == np.ascontiguousarray(arr).tobytes()):
                raise SystemExit(f"MISMATCH {wname}{suffix}: {got_dtype}{list(got.shape)}")
        group = {s: quant[wname + s][1] for s in ref["tensors"]}
        deq = dequantize_group(group, state)
        want = dequantize_nf4_f32(ref["codes"], ref["absmax_decoded"], state["blocksize"])
        assert np.array_equal(deq.view(np.uint32), want.view(np.uint32))
        err = np.max(np.abs(deq.astype(np.float64) - x.astype(np.float64)))
        print(f"  {wname}: {state['shape']} bs={state['blocksize']} dq={'nested_offset' in state} "
              f"bit-identical to the reference; max |dequant - W| = {err:.3g}")
        checked += 1
    # every other tensor copied unchanged, none quantized that should not be
    for name, (dtype, arr) in orig.items():
        if name in states:
            continue
        assert name in quant, "missing " + name
        assert quant[name][0] == dtype and quant[name][1].tobytes() == arr.tobytes(), "changed " + name
        assert not (arr.ndim == 2 and name.endswith(".weight") and not any(p in name for p in SKIP_PARTS)), \
            "not quantized: " + name
    # config: what save_pretrained writes for BitsAndBytesConfig(...).to_dict() (json.dumps, sort_keys=True)
    from transformers import AutoConfig, BitsAndBytesConfig
    qc_text = (nf4_dir / "config.json").read_text()
    qc = json.loads(qc_text)["quantization_config"]
    ref_cfg = AutoConfig.from_pretrained(orig_dir)
    ref_cfg.quantization_config = BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=qc["bnb_4bit_use_double_quant"],
        bnb_4bit_compute_dtype=qc["bnb_4bit_compute_dtype"])
    expected = json.loads(ref_cfg.to_json_string())["quantization_config"]
    assert list(qc.keys()) == list(expected.keys()), (list(qc.keys()), list(expected.keys()))
    assert qc == expected, (qc, expected)
    cfg = AutoConfig.from_pretrained(nf4_dir)
    parsed = BitsAndBytesConfig.from_dict(cfg.quantization_config)
    assert parsed.load_in_4bit and parsed.bnb_4bit_quant_type == "nf4"
    # the key suffixes transformers' bnb 4-bit loader collects (quantizer_bnb_4bit.py get_weight_conversions)
    import transformers.quantizers.quantizer_bnb_4bit as qb
    src = Path(qb.__file__).read_text()
    for suffix in ("weight.nested_absmax", "weight.nested_quant_map", "weight.quant_map", "weight.absmax",
                   "weight.quant_state.bitsandbytes__nf4"):
        assert f'"{suffix}"' in src, suffix
    for k in quant:
        if ".weight." in k:
            assert any(k.endswith(s) for s in (".absmax", ".quant_map", ".nested_absmax", ".nested_quant_map",
                                                ".quant_state.bitsandbytes__nf4")), k
    print(f"check-model: {checked} quantized weights bit-identical to the reference, "
          f"{len(orig) - checked} tensors copied, quantization_config == BitsAndBytesConfig.to_dict()")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    v = sub.add_parser("vectors")
    v.add_argument("--out", default="src/test/resources/nf4")
    sub.add_parser("selftest")
    t = sub.add_parser("tiny-llama")
    t.add_argument("dir")
    c = sub.add_parser("check-model")
    c.add_argument("orig")
    c.add_argument("nf4")
    m = sub.add_parser("merge")
    m.add_argument("base")
    m.add_argument("adapter")
    m.add_argument("out")
    m.add_argument("--to", required=True, choices=["bf16", "f16", "f32", "nf4"])
    a = p.parse_args(argv)
    if a.cmd == "vectors":
        build_vectors(Path(a.out))
    elif a.cmd == "selftest":
        selftest()
    elif a.cmd == "tiny-llama":
        tiny_llama(Path(a.dir))
    elif a.cmd == "merge":
        merge_command(Path(a.base), Path(a.adapter), Path(a.out), a.to)
    else:
        check_model(Path(a.orig), Path(a.nf4))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    sys.exit(main())
