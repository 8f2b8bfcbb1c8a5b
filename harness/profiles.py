"""Profiles set sizes (evaluation prompts, generation length, step caps), never semantics.

Each plugin also carries a ``PROFILE`` table of its own size overrides (e.g. SDD's steps);
this module holds what the pipeline itself sizes.
"""
from __future__ import annotations

from dataclasses import dataclass

from .errors import ConfigError


@dataclass(frozen=True)
class Profile:
    name: str
    model: str
    n_harmful: int          # BeaverTails test prompts (deduplicated) for harmfulness/refusal
    n_benign: int           # AlpacaEval held-out prompts for helpfulness/relevance
    n_xstest: int           # XSTest safe prompts for over-refusal
    max_new_tokens: int
    gen_batch_size: int
    capability_tasks: tuple[str, ...]
    capability_limit: int | None
    fa_limit: int | None    # evaluation items for benign fine-tuning accuracy (fa_sst2, fa_agnews, fa_gsm8k)
    note: str


PROFILES = {
    "tiny": Profile("tiny", "tiny", 6, 4, 4, 8, 8, ("arc_easy",), 4, 4,
                    "random-init 2-layer Llama: exercises every code path in seconds; numbers are meaningless"),
    # smoke: one sdd × advbench-1k cell ≈ 18 min on 2 CPU cores with activation checkpointing (15 min without;
    # bench/bench_run.py, docs/performance.md); 64/32/32 prompts give CIs of about ±12 points
    # smoke starts from the *aligned* SmolLM2 (harness/models.py ALIGNED): the role Llama-2-7b-chat plays in the
    # papers; the raw chat model is `--model smollm2-135m`
    "smoke": Profile("smoke", "smollm2-135m-aligned", 64, 32, 32, 64, 32, ("arc_easy", "piqa", "openbookqa"), 100, 64,
                     "SmolLM2-135M-Instruct on CPU; CIs are wide, effects must be large to show"),
    "paper": Profile("paper", "meta-llama/Llama-2-7b-chat-hf", 845, 402, 250, 512, 64,
                     ("mmlu", "openbookqa", "arc_easy", "arc_challenge", "hellaswag", "piqa"), None, None,
                     "Llama-2-7b(-chat) on GPU at the papers' scale"),
}


def get(name: str) -> Profile:
    if name not in PROFILES:
        raise ConfigError(f"Unknown profile {name!r}; choose one of {', '.join(PROFILES)}.")
    return PROFILES[name]
