#!/usr/bin/env python3
"""PEFT's add_weighted_adapter (the baseline `loramerge combine` is measured against), with phase
timings and the time of each module's combination.

    peft_combine.py --base DIR --adapter DIR --adapter DIR ... --weights W1,W2,... --out DIR
                    --combination-type svd|ties_svd|cat|... [--svd-rank R] [--density D]
                    [--layers N] [--budget-s S] [--device cpu|cuda|auto] [--json]

The recipe, as a PEFT user runs it:
    model = AutoModelForCausalLM.from_pretrained(base, dtype=<base dtype>, device_map=device)
    model = PeftModel.from_pretrained(model, adapter_1, adapter_name="a0"); model.load_adapter(adapter_i, "a<i>") ...
    model.add_weighted_adapter(["a0", ...], weights, "combined", combination_type=..., svd_rank=..., density=...)
    model.save_pretrained(out, selected_adapters=["combined"])      # written to out/combined/

--layers N   combines only the modules of the first N decoder layers (every projection the adapters
             target there): each adapter is copied, restricted to those layers (its tensors of layers
             0..N-1, `layers_to_transform` in its config), into a temporary folder first (phase
             `subset`). The whole model's add_weighted_adapter(svd) takes PEFT many minutes on a 7B
             model (one full torch.linalg.svd per module); a subset measures its rate per module in
             a fraction of that.
--budget-s S stops add_weighted_adapter before the next module once its modules have taken S
             seconds (nothing is saved then); the modules done so far are reported, and the
             script exits with status 3 (EXIT_STOPPED_BY_BUDGET): a partial run, not PEFT's
             time for the whole job.

Exit status: 0 done and saved; 3 stopped by --budget-s (partial, nothing saved); 2 bad arguments;
1 any other failure.

Each module's combination (PEFT's per-module helper, the device synchronized around it) is timed
and printed as it ends (`[peft_combine] module NAME ROWSxCOLS X s`), so a run cut short still
shows its rate. At the end: the phase timings (`[peft_combine] phase ...`), then
    [peft_combine] measured: ...      modules combined of the whole model's, and their time
    [peft_combine] per module: ...    the median per projection kind
    [peft_combine] extrapolated: ...  the whole model's combine phase and run, ESTIMATED from the
                                      measured modules (each unmeasured module at its kind's median)
and, with --json, one JSON line on stdout with all of it. The first module of a run carries the
solver's one-off start-up; it is left out of its kind's median when the kind has another module.
"""
import argparse
import json
import os
import re
import shutil
import statistics
import sys
import tempfile
import time

T_START = time.time()
LAYER_RE = re.compile(r"\.layers\.(\d+)\.")
MODULE_RE = re.compile(r"^(.*)\.(lora_A|lora_B|lora_embedding_A|lora_embedding_B)(\.weight)?$")


def log(msg):
    print(f"[peft_combine] {msg}", file=sys.stderr, flush=True)


EXIT_STOPPED_BY_BUDGET = 3


class OutOfBudget(Exception):
    pass


def adapter_modules(adapter_dir):
    """Names of the modules an adapter folder has LoRA factors for (from its safetensors keys)."""
    from safetensors import safe_open
    with safe_open(os.path.join(adapter_dir, "adapter_model.safetensors"), "pt") as f:
        names = {m.group(1) for m in map(MODULE_RE.match, f.keys()) if m}
    # as PeftModel names them: base_model.model.<the transformers module name>
    return {n[len("base_model.model."):] if n.startswith("base_model.model.") else n for n in names}


def restrict_to_layers(adapter_dir, layers, dest):
    """A copy of the adapter with only the tensors of decoder layers 0..layers-1, and its config's
    layers_to_transform saying so (PEFT then injects LoRA into those layers only)."""
    from safetensors import safe_open
    from safetensors.torch import save_file
    os.makedirs(dest)
    with open(os.path.join(adapter_dir, "adapter_config.json")) as f:
        cfg = json.load(f)
    cfg["layers_to_transform"] = list(range(layers))
    with open(os.path.join(dest, "adapter_config.json"), "w") as f:
        json.dump(cfg, f, indent=2)
    tensors = {}
    with safe_open(os.path.join(adapter_dir, "adapter_model.safetensors"), "pt") as f:
        for k in f.keys():
            m = LAYER_RE.search(k)
            if m and int(m.group(1)) < layers:
                tensors[k] = f.get_tensor(k)
    if not tensors:
        raise SystemExit(f"peft_combine: {adapter_dir} has no LoRA tensors in decoder layers 0..{layers - 1}")
    save_file(tensors, os.path.join(dest, "adapter_model.safetensors"), metadata={"format": "pt"})


def kind_of(module_name):
    return module_name.rsplit(".", 1)[-1]


def extrapolate(timed, all_modules):
    """(per-kind medians, estimated seconds for all_modules, kinds with no measurement).
    timed: [(name, seconds)] in run order."""
    by_kind = {}
    for i, (name, s) in enumerate(timed):
        by_kind.setdefault(kind_of(name), []).append((i, s))
    med = {}
    for k, xs in by_kind.items():
        rest = [s for i, s in xs if i != 0]
        med[k] = statistics.median(rest or [s for _, s in xs])
    done = {n for n, _ in timed}
    overall = statistics.median(med.values()) if med else None
    est = sum(s for _, s in timed)
    unmeasured_kinds = set()
    for n in all_modules:
        if n in done:
            continue
        k = kind_of(n)
        if k not in med:
            unmeasured_kinds.add(k)
        est += med.get(k, overall or 0.0)
    return med, est, sorted(unmeasured_kinds)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", required=True)
    ap.add_argument("--adapter", action="append", required=True)
    ap.add_argument("--weights", required=True, help="comma-separated, one per --adapter")
    ap.add_argument("--out", required=True)
    ap.add_argument("--combination-type", required=True)
    ap.add_argument("--svd-rank", type=int)
    ap.add_argument("--density", type=float)
    ap.add_argument("--layers", type=int, help="only the modules of the first N decoder layers")
    ap.add_argument("--budget-s", type=float,
                    help=f"stop before the next module after S s of modules (exit status {EXIT_STOPPED_BY_BUDGET})")
    ap.add_argument("--device", default="cpu", help="device_map: cpu, cuda, auto")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    weights = [float(w) for w in a.weights.split(",")]
    if len(weights) != len(a.adapter):
        ap.error(f"--weights has {len(weights)} values for {len(a.adapter)} --adapter folders")
    if a.layers is not None and a.layers < 1:
        ap.error("--layers must be at least 1")

    import torch
    from transformers import AutoModelForCausalLM
    from peft import PeftModel
    from peft.tuners.lora import LoraLayer

    t_import = time.time() - T_START
    with open(os.path.join(a.base, "config.json")) as f:
        c = json.load(f)
    dtype = getattr(torch, c.get("dtype") or c.get("torch_dtype") or "bfloat16")
    total_layers = c.get("num_hidden_layers")
    cuda = a.device.startswith("cuda") or (a.device == "auto" and torch.cuda.is_available())

    def sync():
        if cuda:
            torch.cuda.synchronize()

    phases = {"import": t_import}
    all_modules = set()
    for p in a.adapter:
        all_modules |= adapter_modules(p)
    adapters = a.adapter
    tmp = None
    if a.layers is not None:
        t = time.time()
        tmp = tempfile.mkdtemp(prefix="peft-combine-")
        adapters = []
        for i, p in enumerate(a.adapter):
            dest = os.path.join(tmp, f"a{i}")
            restrict_to_layers(p, a.layers, dest)
            adapters.append(dest)
        phases["subset"] = time.time() - t
    try:
        t = time.time()
        model = AutoModelForCausalLM.from_pretrained(a.base, dtype=dtype, device_map=a.device)
        sync()
        phases["load_base"] = time.time() - t

        t = time.time()
        names = [f"a{i}" for i in range(len(adapters))]
        model = PeftModel.from_pretrained(model, adapters[0], adapter_name=names[0])
        for n, p in zip(names[1:], adapters[1:]):
            model.load_adapter(p, adapter_name=n)
        sync()
        phases["load_adapters"] = time.time() - t
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)

    # time each module's combination: PEFT's per-module helpers, the device synchronized around them
    lora_model = model.base_model
    module_name = {id(m): n for n, m in lora_model.model.named_modules()}
    timed = []
    state = {"spent": 0.0}

    def timing(helper):
        def run(*args, **kwargs):
            if a.budget_s is not None and state["spent"] >= a.budget_s:
                raise OutOfBudget()
            target = next(x for x in list(args) + list(kwargs.values()) if isinstance(x, LoraLayer))
            sync()
            t0 = time.time()
            r = helper(*args, **kwargs)
            sync()
            s = time.time() - t0
            state["spent"] += s
            name = module_name.get(id(target), "?")
            timed.append((name, s))
            w = target.get_base_layer().weight
            log(f"module {name} {'x'.join(map(str, w.shape))} {s:.3f} s")
            return r
        return run

    for helper in ("_svd_generalized_task_arithmetic_weighted_adapter", "_generalized_task_arithmetic_weighted_adapter"):
        setattr(lora_model, helper, timing(getattr(lora_model, helper)))

    t = time.time()
    kw = {"combination_type": a.combination_type}
    if a.svd_rank is not None:
        kw["svd_rank"] = a.svd_rank
    if a.density is not None:
        kw["density"] = a.density
    stopped = False
    try:
        model.add_weighted_adapter(names, weights, "combined", **kw)
    except OutOfBudget:
        stopped = True
    sync()
    phases["combine"] = time.time() - t

    if stopped:
        log(f"stopped by --budget-s {a.budget_s:g} after {len(timed)} module(s); nothing saved")
    else:
        t = time.time()
        model.save_pretrained(a.out, selected_adapters=["combined"])
        phases["save"] = time.time() - t
    phases["total_in_process"] = time.time() - T_START
    for k, v in phases.items():
        log(f"phase {k:<16} {v:8.2f} s")
    result = {"tool": "peft_combine", "device": a.device, "combination_type": a.combination_type,
              **{k: round(v, 3) for k, v in phases.items()}}
    if cuda:
        peak = torch.cuda.max_memory_allocated() / 2**30
        result["cuda_max_allocated_gib"] = round(peak, 3)
        log(f"torch.cuda.max_memory_allocated {peak:.2f} GiB")

    measured = sum(s for _, s in timed)
    scope = (f"the first {a.layers} of {total_layers} layers" if a.layers is not None else "the whole model")
    result.update(layers=a.layers, total_layers=total_layers, modules_total=len(all_modules),
                  modules_measured=len(timed), modules_seconds=round(measured, 3), stopped_by_budget=stopped)
    if timed:
        med, est, unmeasured = extrapolate(timed, all_modules)
        first_name, first_s = timed[0]
        log(f"measured: add_weighted_adapter({a.combination_type}) over {scope}"
            f"{' (stopped by the budget)' if stopped else ''}: {len(timed)} of {len(all_modules)} modules "
            f"in {measured:.1f} s of module work ({phases['combine']:.1f} s combine phase, "
            f"{phases['total_in_process']:.1f} s in process)")
        log("per module: " + ", ".join(f"{k} {v:.2f} s" for k, v in med.items())
            + f" (medians; the run's first module, {first_name}, took {first_s:.2f} s)")
        if len(timed) < len(all_modules):
            run_est = phases["total_in_process"] - measured + est
            log(f"extrapolated, not measured: the whole model's {len(all_modules)} modules ~ {est:.0f} s of "
                f"module work, a whole run ~ {run_est:.0f} s (this run's other phases + {len(all_modules) - len(timed)} "
                f"more modules at their kind's median"
                + (f"; no measurement of {', '.join(unmeasured)}: the median of the kinds' medians used" if unmeasured else "")
                + ")")
            result.update(extrapolated_modules_s=round(est, 1), extrapolated_run_s=round(run_est, 1),
                          unmeasured_kinds=unmeasured)
        result["per_module_median_s"] = {k: round(v, 4) for k, v in med.items()}
    elif a.combination_type != "cat":
        log(f"measured: no module finished ({len(all_modules)} in the whole model)")
    if a.json:
        print(json.dumps(result), flush=True)
    if stopped:
        sys.exit(EXIT_STOPPED_BY_BUDGET)


if __name__ == "__main__":
    main()
