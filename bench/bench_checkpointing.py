"""Activation checkpointing on CPU: peak memory, time per step, and whether the weights change.

    python bench/bench_checkpointing.py [--attack sharegpt-1k] [--steps 10] [--profile smoke]

Trains the attack's fine-tuning on the profile's base model twice, each in a fresh process (so
each peak RSS is its own): ``SDD_BENCH_CHECKPOINTING=off`` and ``=on``.  Prints peak RSS, seconds
per optimizer step, their ratios, and the sha256 of the trained weights of each mode: the two
must be equal, since checkpointing is not part of any cache key.  ShareGPT is the worst case of
the smoke grid (full fine-tuning, batch 10, conversations that fill the 256-token window).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

CHILD = r"""
import hashlib, json, resource, sys, tempfile, time
from pathlib import Path
from sdd_bench.harness import models, pipeline
from sdd_bench.harness.store import Store
profile, attack, steps, workdir = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
spec = pipeline.spec_from_mapping({"profile": profile, "attack": attack, "attack_options": {"max_steps": steps},
                                   "capability": False, "device": "cpu"})
r = pipeline.resolve(spec)
store = Store(Path(workdir))
ref = models.materialize(r.profile.model, store)
rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
with tempfile.TemporaryDirectory() as tmp:
    t0 = time.perf_counter()
    new, info = r.attack.attack(ref, Path(tmp), spec.template, spec.seed, device="cpu", progress=False)
    dt = time.perf_counter() - t0
    h = hashlib.sha256()
    from safetensors.torch import load_file
    for f in sorted(Path(tmp, "model").glob("*.safetensors")):
        sd = load_file(str(f))
        for k in sorted(sd):
            h.update(k.encode()); h.update(sd[k].contiguous().numpy().tobytes())
print("RESULT " + json.dumps({"seconds": dt, "steps": info["steps"], "checkpointing": info["activation_checkpointing"],
                              "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2,
                              "rss_after_load_gb": rss0 / 1024 ** 2, "weights_sha256": h.hexdigest(),
                              "losses": info["losses"]}))
"""


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--attack", default="sharegpt-1k")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--profile", default="smoke")
    ap.add_argument("--workdir", default="/tmp/bench_ckpt", help="store for the dequantized base model")
    args = ap.parse_args()
    res = {}
    for mode in ("off", "on"):
        env = dict(os.environ, SDD_BENCH_CHECKPOINTING=mode)
        out = subprocess.run([sys.executable, "-c", CHILD, args.profile, args.attack, str(args.steps), args.workdir],
                             env=env, capture_output=True, text=True)
        line = [ln for ln in out.stdout.splitlines() if ln.startswith("RESULT ")]
        if out.returncode or not line:
            sys.exit(f"checkpointing={mode} failed:\n{out.stderr[-3000:]}")
        res[mode] = json.loads(line[0][7:])
        r = res[mode]
        print(f"checkpointing {mode:3s}: {r['steps']} steps, {r['seconds'] / r['steps']:.2f} s/step, "
              f"peak RSS {r['peak_rss_gb']:.2f} GB (after loading the model {r['rss_after_load_gb']:.2f} GB), "
              f"weights sha256 {r['weights_sha256'][:16]}", flush=True)
    off, on = res["off"], res["on"]
    print(f"\n{args.profile} {args.attack}, {args.steps} steps: time per step on/off = "
          f"{(on['seconds'] / on['steps']) / (off['seconds'] / off['steps']):.2f}×, "
          f"peak RSS on/off = {on['peak_rss_gb'] / off['peak_rss_gb']:.2f}×")
    same = off["weights_sha256"] == on["weights_sha256"] and off["losses"] == on["losses"]
    print("trained weights and losses bit-identical: " + ("yes" if same else "NO"))
    sys.exit(0 if same else 1)


if __name__ == "__main__":
    main()
