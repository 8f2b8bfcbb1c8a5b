"""RepNoise step time: per-layer read-outs at the scored positions only (v3) vs over the whole sequence (loss.py).

    python bench/bench_repnoise.py [--profile smoke] [--reps 3] [--workdir /work/smoke/runs]

RepNoise's harmful term reads every hidden state out through the final norm and the LM head (L + 1
vocabulary projections per step: 31 × 49K-wide on SmolLM2).  The CE only counts the answer tokens
where the harmful and refusal twins differ, so ``repnoise_loss`` projects only those positions; this
bench takes one batch of the profile's RepNoise data (its batch size, max length and template), runs
``repnoise_loss`` forward + backward both ways on the profile's base model, and prints the share of
positions scored, the median seconds of each and their ratio, and the two losses (they must agree).
Gradients reach every weight (the paper's full fine-tuning; the smoke profile trains LoRA, whose
steps carry fewer weight gradients but the same read-outs).  Measured 2026-11-30, smoke, one thread
beside two other torch processes: 8 × 189 tokens, 696 of 1,512 positions scored, 397 s → 186 s
(2.14×), losses identical.
The machine's load is printed alongside: timings on a shared CPU are noisy.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import time


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--profile", default="smoke")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--workdir", default="/work/smoke/runs")
    args = ap.parse_args()

    import torch

    from sdd_bench.defenses import _common as C
    from sdd_bench.defenses.repnoise import pair_batches, repnoise_loss
    from sdd_bench.harness import models, pipeline
    from sdd_bench.harness.store import Store
    from sdd_bench.harness.training import PadCollator

    store = Store(args.workdir)
    spec = pipeline.spec_from_mapping({"profile": args.profile})
    ref = models.materialize(pipeline.resolve(spec).model, store)
    model, tok = models.load(ref, device="cpu")
    model.train()
    d = pipeline.resolve(pipeline.spec_from_mapping({"profile": args.profile, "defense": "repnoise"})).defense
    cfg = d.cfg
    rows = d.build_data(0)[: cfg.batch_size]
    bad = PadCollator(tok.pad_token_id)(C.tokenize(tok, spec.template, rows, cfg.max_length))
    twins = C.tokenize(tok, spec.template, [{"prompt": r["prompt"], "response": r["refusal"]} for r in rows],
                       cfg.max_length)
    b, o, differ = pair_batches(bad, [t["input_ids"] for t in twins], [t["labels"] for t in twins], tok.pad_token_id)

    def step(scored_only: bool) -> tuple[float, float]:
        model.zero_grad(set_to_none=True)
        torch.manual_seed(0)
        t0 = time.perf_counter()
        loss, _ = repnoise_loss(model, b, o, differ, cfg.beta, cfg.alpha, cfg.mmd_kernel_mul, cfg.mmd_kernel_num,
                                scored_only=scored_only)
        loss.backward()
        return time.perf_counter() - t0, float(loss.detach())

    step(True)  # warm-up
    times: dict[bool, list[float]] = {True: [], False: []}
    losses: dict[bool, float] = {}
    for _ in range(args.reps):
        for mode in (False, True):
            dt, losses[mode] = step(mode)
            times[mode].append(dt)
    whole, scored = statistics.median(times[False]), statistics.median(times[True])
    positions = int(b["input_ids"].numel())
    print(json.dumps({
        "profile": args.profile, "batch": list(b["input_ids"].shape), "hidden_states": model.config.num_hidden_layers + 1,
        "scored_positions": int((differ[:, 1:]).sum()), "positions": positions,
        "whole_sequence_s": round(whole, 2), "scored_only_s": round(scored, 2), "speedup": round(whole / scored, 2),
        "loss_whole": losses[False], "loss_scored": losses[True], "threads": torch.get_num_threads(),
        "load_avg": os.getloadavg(),
    }, indent=1))


if __name__ == "__main__":
    main()
