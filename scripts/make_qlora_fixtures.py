#!/usr/bin/env python3
"""Generate loramerge's golden QLoRA cases (src/test/resources/qlora).

Each case is what a QLoRA user has, plus what ``loramerge merge --to`` must write from it:

    <out>/<case>/base/                 the 4-bit base: a tiny bf16 Llama quantized by scripts/nf4_reference.py
                                       (bitsandbytes' NF4 written from its source; nothing of loramerge's),
                                       config.json with transformers' BitsAndBytesConfig, as save_pretrained writes it
    <out>/<case>/adapter/              a PEFT LoRA adapter made on the DEQUANTIZED base: the base dequantized
                                       (reference) and loaded as a plain bf16 Llama, get_peft_model, lora_B
                                       set to random non-zero values, save_pretrained (PEFT's README.md removed)
    <out>/<case>/expected_bf16.safetensors   the adapted tensors of ``merge --to bf16`` (nf4_reference.py merge)
    <out>/<case>/expected_nf4.safetensors    the adapted tensors of ``merge --to nf4``: the requantized NF4
                                       groups (quant state JSON unpadded) and the dense tensors (lm_head)
    <out>/<case>/case.json             settings, the survival figures of ``--to nf4`` (reference), versions

The tiny Llama: hidden 64, 2 layers, vocab 128, intermediate 128, 4 heads (2 key/value heads),
bf16, untied lm_head; made from a config in code, nothing is downloaded. Cases:

    dq_bs64     double quantization, blocksize 64; a weak adapter (lora_B std 0.002) on
                q_proj, v_proj, down_proj: most of its change is rounded away by requantization
    plain_bs32  blocksize 32; a stronger adapter (lora_B std 0.01) on q_proj,
                gate_proj and lm_head (a dense tensor of the 4-bit model, merged as usual)

Usage, from the repository root, with a Python that has torch, transformers, peft and numpy
(versions in scripts/requirements-fixtures.txt):

    python3 scripts/make_qlora_fixtures.py [--out src/test/resources/qlora]

Deterministic: fixed seeds, one CPU thread, PYTHONHASHSEED=0 (PEFT writes target_modules in set
order), relative paths only, no timestamps; running it twice gives the same bytes. It writes
MANIFEST.sha256 (the hashes of this script, of nf4_reference.py and of every file), which
GeneratedFilesTest checks. Versions: python 3.11.7, torch 2.13.0+cpu, transformers 5.18.0,
peft 0.21.0, numpy 2.4.6 (recorded in case.json).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import platform
import shutil
import sys
import tempfile
from pathlib import Path

if os.environ.get("PYTHONHASHSEED") != "0":
    os.environ["PYTHONHASHSEED"] = "0"
    os.execv(sys.executable, [sys.executable, os.path.abspath(__file__), *sys.argv[1:]])

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
from transformers import LlamaConfig, LlamaForCausalLM  # noqa: E402
from transformers.utils import logging as hf_logging  # noqa: E402

import peft  # noqa: E402
from peft import LoraConfig, get_peft_model  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import nf4_reference as ref  # noqa: E402

hf_logging.set_verbosity_error()
torch.set_num_threads(1)
torch.use_deterministic_algorithms(True)

ROOT = Path(__file__).resolve().parent.parent
RANK = 6
ALPHA = 16  # scale 16/6 = 2.666..., not a power of two

CASES = [
    {"name": "dq_bs64", "blocksize": 64, "double_quant": True, "targets": ["q_proj", "v_proj", "down_proj"],
     "lora_b_std": 0.002, "seed": 11},
    {"name": "plain_bs32", "blocksize": 32, "double_quant": False, "targets": ["q_proj", "gate_proj", "lm_head"],
     "lora_b_std": 0.01, "seed": 12},
]


@contextlib.contextmanager
def chdir(path: Path):
    old = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(old)


def tiny_llama(out: Path) -> None:
    torch.manual_seed(20240617)
    cfg = LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, max_position_embeddings=64, tie_word_embeddings=False, dtype="bfloat16")
    model = LlamaForCausalLM(cfg).to(torch.bfloat16)
    model.save_pretrained(out)


def dequantized_copy(nf4_dir: Path, out: Path) -> None:
    """The 4-bit model dequantized with the reference, as a plain bf16 checkpoint (no quantization_config)."""
    tensors = ref.st_read_dir(nf4_dir)
    states = {k[:-len(".quant_state.bitsandbytes__nf4")]: json.loads(v[1].tobytes())
              for k, v in tensors.items() if k.endswith(".quant_state.bitsandbytes__nf4")}
    members = {w + s for w in states for s in ("", ".absmax", ".quant_map", ".nested_absmax", ".nested_quant_map",
                                                ".quant_state.bitsandbytes__nf4")}
    written = []
    for name, (dtype, arr) in tensors.items():
        if name in states:
            state = states[name]
            group = {s: tensors[name + s][1] for s in ("", ".absmax", ".quant_map", ".nested_absmax", ".nested_quant_map")
                     if name + s in tensors}
            d = ref.DTYPE_CODES[state["dtype"]]
            written.append((name, d, ref.to_stored(ref.dequantize_group(group, state), d).reshape(state["shape"])))
        elif name not in members:
            written.append((name, dtype, arr))
    out.mkdir(parents=True)
    ref.st_write(out / "model.safetensors", sorted(written), {"format": "pt"})
    cfg = json.loads((nf4_dir / "config.json").read_text())
    del cfg["quantization_config"]
    (out / "config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")


def make_adapter(work: Path, case: dict, out: Path) -> None:
    with chdir(work):
        model = LlamaForCausalLM.from_pretrained("base", dtype=torch.bfloat16)
        torch.manual_seed(case["seed"])
        pm = get_peft_model(model, LoraConfig(r=RANK, lora_alpha=ALPHA, lora_dropout=0.0, target_modules=case["targets"]))
        gen = torch.Generator().manual_seed(case["seed"] + 1000)
        with torch.no_grad():
            for name, p in sorted(pm.named_parameters()):
                if ".lora_B." in name:
                    p.copy_(torch.randn(p.shape, generator=gen, dtype=torch.float32).to(p.dtype) * case["lora_b_std"])
        pm.save_pretrained("adapter")
    shutil.move(str(work / "adapter"), str(out))
    (out / "README.md").unlink(missing_ok=True)


GROUP_ORDER = ("", ".absmax", ".quant_map", ".nested_absmax", ".nested_quant_map", ".quant_state.bitsandbytes__nf4")


def quantize(orig: Path, out: Path, case: dict) -> None:
    """The 4-bit model of ``orig`` as transformers saves a bitsandbytes NF4 model: every Linear weight
    (not embeddings, lm_head or norms) replaced by its NF4 group, quantized by the reference."""
    from transformers import AutoConfig, BitsAndBytesConfig
    tensors = ref.st_read_dir(orig)
    written = []
    for name in sorted(tensors):
        dtype, arr = tensors[name]
        if arr.ndim == 2 and name.endswith(".weight") and not any(p in name for p in ref.SKIP_PARTS):
            q = ref.quantize_tensor(ref.stored_to_f32(arr.reshape(-1), dtype), arr.shape, dtype, case["blocksize"], case["double_quant"])
            for suffix in GROUP_ORDER:
                if suffix in q["tensors"]:
                    part = q["tensors"][suffix]
                    written.append((name + suffix, "F32" if part.dtype == np.float32 else "U8", part))
        else:
            written.append((name, dtype, arr))
    out.mkdir(parents=True)
    ref.st_write(out / "model.safetensors", written, {"format": "pt"})
    cfg = AutoConfig.from_pretrained(orig)
    cfg.quantization_config = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                                 bnb_4bit_use_double_quant=case["double_quant"], bnb_4bit_compute_dtype="bfloat16")
    cfg.save_pretrained(out)
    shutil.copyfile(orig / "generation_config.json", out / "generation_config.json")


def sha256(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=str(ROOT / "src/test/resources/qlora"))
    a = ap.parse_args()
    out = Path(a.out).resolve()
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    versions = {"python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
                "peft": peft.__version__, "numpy": np.__version__}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        orig = tmp / "orig"
        tiny_llama(orig)
        for case in CASES:
            case_dir = out / case["name"]
            case_dir.mkdir()
            quantize(orig, case_dir / "base", case)
            ref.check_model(orig, case_dir / "base")  # groups, copies and quantization_config as bitsandbytes and transformers have them
            work = tmp / case["name"]
            work.mkdir()
            dequantized_copy(case_dir / "base", work / "base")
            make_adapter(work, case, case_dir / "adapter")
            dense = ref.merge_qlora(case_dir / "base", case_dir / "adapter", "bf16")
            ref.st_write(case_dir / "expected_bf16.safetensors", dense["tensors"], {"format": "pt"})
            nf4 = ref.merge_qlora(case_dir / "base", case_dir / "adapter", "nf4")
            ref.st_write(case_dir / "expected_nf4.safetensors", nf4["tensors"], {"format": "pt"})
            info = {
                "case": case["name"],
                "quantize": {"blocksize": case["blocksize"], "double_quant": case["double_quant"]},
                "adapter": {"r": RANK, "lora_alpha": ALPHA, "target_modules": case["targets"], "lora_b_std": case["lora_b_std"],
                            "seed": case["seed"]},
                "commands": {"bf16": "loramerge merge --base base --adapter adapter --out OUT --to bf16",
                             "nf4": "loramerge merge --base base --adapter adapter --out OUT --to nf4"},
                "expected_bf16": "adapted tensors of --to bf16; every other tensor: dequantized (4-bit weights) or copied",
                "expected_nf4": "adapted tensors of --to nf4 (quant state JSON unpadded; loramerge pads it with spaces); "
                                "every other tensor copied from base",
                "survival": nf4["survival"],
                "generator": "/opt/pyref/bin/python scripts/make_qlora_fixtures.py",
                "versions": versions,
            }
            (case_dir / "case.json").write_text(json.dumps(info, indent=1, sort_keys=True) + "\n")
            s = nf4["survival"]
            print(f"{case['name']}: survival {s['survival']:.4f}, aligned {s['aligned']:.4f}, "
                  f"codes changed {s['codes_changed']}/{s['codes']}")
    files = sorted(p for p in out.rglob("*") if p.is_file())
    lines = [f"{sha256(Path(__file__).resolve())}  generator:scripts/make_qlora_fixtures.py",
             f"{sha256(ROOT / 'scripts/nf4_reference.py')}  reference:scripts/nf4_reference.py"]
    lines += [f"{sha256(p)}  {p.relative_to(out).as_posix()}" for p in files]
    (out / "MANIFEST.sha256").write_text("\n".join(lines) + "\n")
    total = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    print(f"wrote {len(files) + 1} files, {total} bytes to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
