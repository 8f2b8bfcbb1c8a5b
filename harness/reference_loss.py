"""Benign reference-answer loss: a capability signal that moves before multiple-choice accuracy does (issue 37).

What it measures: for held-out benign instructions with a strong model's reference answer, the mean negative
log-likelihood per answer token the evaluated model assigns to that answer, under the cell's chat template
(prompt tokens masked, as in supervised fine-tuning: ``harness.training.tokenize_pairs``).  One number per item
(the mean over its answer tokens); the cell's value is the mean over items, each answer weighing equally, with a
Student-t 95% interval over items.  The per-item losses are kept in the record, so two models evaluated on the same
items (a defended model and the undefended one, or a model before and after an attack) can be compared *paired*
(:func:`paired_difference`), which is far tighter than comparing two intervals.

Why: at 135M, lm-eval accuracy on 100 items per task sits near chance with ±10-point intervals, so a
self-degrading defense (SEAM's self-destruction, SDD's capability collapse under harmful fine-tuning) would be
invisible unless total.  The loss of fluent reference answers rises smoothly as a model degrades.

Data: ``alpaca-eval-heldout`` (harness/data.py), the half of AlpacaEval (Li et al. 2023, tatsu-lab/alpaca_eval,
``gpt4_1106_preview`` reference outputs) that no defense or attack trains on — SDD's response pool is the *other*
half, ``alpaca-eval-pool``.  Items are the first ``n`` after the evaluation shuffle (``pipeline.EVAL_SEED``), the
same order the benign generation set is drawn from.

Defaults and where they come from (our choices; the papers report no such number):
- ``n`` and the token window per profile (:data:`SIZES`): tiny 4 answers, 64 tokens (code paths only); smoke 64
  answers, 256 tokens (prompt + answer; longer answers are cut, the record says how many tokens were scored):
  measured 2026-12-07, 128 answers at 512 tokens took 557 s of one contended CPU thread per evaluation, longer than
  the lm-eval capability stage, so the smoke size was cut 8× in tokens; 64 paired answers still resolve differences
  of a few hundredths of a nat.  paper: every held-out answer (about 400), 512 tokens.
- ``batch_size`` 8: forward passes only.
"""
from __future__ import annotations

import math
import random
import time
from pathlib import Path

from .errors import ConfigError

DATASET = "alpaca-eval-heldout"
SIZES = {"tiny": (4, 64), "smoke": (64, 256), "paper": (None, 512)}  # (answers, token window); None: every answer
MAX_LENGTH = 512  # per_item_losses' default window
BATCH_SIZE = 8
STAGE = "reference-loss"
VERSION = 1


def items(n: int | None, seed: int) -> list[dict]:
    """The first ``n`` held-out AlpacaEval (prompt, reference answer) pairs in the evaluation shuffle."""
    from . import data
    rows = data.load(DATASET)
    random.Random(seed).shuffle(rows)
    rows = rows[:n] if n is not None else rows
    if not rows:
        raise ConfigError(f"reference loss: {DATASET} has no rows; check the data dir (`sdd-bench data check`).")
    return [{"prompt": r["prompt"], "response": r["response"]} for r in rows]


def per_item_losses(model, tok, template: str, pairs: list[dict], max_length: int = MAX_LENGTH,
                    batch_size: int = BATCH_SIZE) -> tuple[list[float], list[int]]:
    """Mean answer-token NLL (nats) of each pair under ``model``, and the number of answer tokens scored."""
    import torch

    from .training import PadCollator, tokenize_pairs
    rows = tokenize_pairs(tok, template, pairs, max_length)
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    collate = PadCollator(pad)
    dev = next(model.parameters()).device
    losses, counts = [], []
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for i in range(0, len(rows), batch_size):
                b = collate(rows[i:i + batch_size])
                logits = model(input_ids=b["input_ids"].to(dev), attention_mask=b["attention_mask"].to(dev)).logits
                labels = b["labels"].to(dev)[:, 1:]
                nll = torch.nn.functional.cross_entropy(logits[:, :-1].float().transpose(1, 2), labels,
                                                        ignore_index=-100, reduction="none")
                mask = labels != -100
                tokens = mask.sum(dim=1)
                per = (nll * mask).sum(dim=1) / tokens.clamp(min=1)
                losses += [float(x) for x in per]
                counts += [int(x) for x in tokens]
    finally:
        model.train(was_training)
    bad = [i for i, x in enumerate(losses) if not math.isfinite(x)]
    if bad:
        from .errors import TrainingDivergedError
        raise TrainingDivergedError(f"reference loss: the model's loss is non-finite on {len(bad)} of {len(losses)} "
                                    f"held-out answers (first: item {bad[0]}); the model's weights or logits are "
                                    f"broken, so no capability number is written.")
    return losses, counts


def summarize(losses: list[float], counts: list[int]) -> dict:
    """Mean over items with a Student-t 95% interval over items (scipy)."""
    import numpy as np
    from scipy import stats
    x = np.asarray(losses, dtype=float)
    n = len(x)
    mean = float(x.mean())
    if n > 1 and float(x.std(ddof=1)) > 0:
        lo, hi = stats.t.interval(0.95, n - 1, loc=mean, scale=float(stats.sem(x)))
    else:
        lo = hi = mean
    return {"value": mean, "ci95": [float(lo), float(hi)], "n": n, "tokens": int(sum(counts)),
            "ci_method": "Student-t over items (each item: mean NLL per answer token)"}


def paired_difference(a: list[float], b: list[float]) -> dict:
    """Mean of b − a over the same items with a Student-t 95% interval and the paired t-test's p-value; for two
    models' ``per_item`` losses on the same items (same dataset, n, seed and template)."""
    import numpy as np
    from scipy import stats
    if len(a) != len(b) or not a:
        raise ValueError(f"paired difference needs the same items on both sides, got {len(a)} and {len(b)}.")
    d = np.asarray(b, dtype=float) - np.asarray(a, dtype=float)
    mean = float(d.mean())
    if len(d) > 1 and float(d.std(ddof=1)) > 0:
        lo, hi = stats.t.interval(0.95, len(d) - 1, loc=mean, scale=float(stats.sem(d)))
        p = float(stats.ttest_rel(b, a).pvalue)
    else:
        lo = hi = mean
        p = 1.0 if mean == 0 else 0.0
    return {"mean_diff": mean, "ci95": [float(lo), float(hi)], "n": len(d), "p": p, "test": "paired t-test"}


def reference_loss_stage(store, ref, profile: str, template: str, seed: int, *, device: str = "auto",
                         loaded: tuple | None = None, n: int | None = None):
    """Cached stage: the reference-answer loss of ``ref``; returns (artifact, cache_hit).  ``result.json`` holds the
    summary, the settings and ``per_item`` (losses only: no text)."""
    from . import data, models
    from .store import write_json
    if profile not in SIZES:
        raise ConfigError(f"reference loss: no size for profile {profile!r}; known: {', '.join(SIZES)}.")
    n = SIZES[profile][0] if n is None else n
    window = SIZES[profile][1]
    spec = {"model": ref.identity(), "dataset": DATASET, "data": data.get(DATASET).fingerprints(), "n": n, "seed": seed,
            "template": template, "max_length": window, "version": VERSION}

    def fn(tmp: Path):
        t0 = time.time()
        pairs = items(n, seed)
        model, tok = loaded if loaded is not None else models.load(ref, device=models.resolve_device(device))
        losses, counts = per_item_losses(model, tok, template, pairs, max_length=window)
        out = summarize(losses, counts)
        out.update({"dataset": DATASET, "n_requested": n, "seed": seed, "template": template,
                    "max_length": window, "version": VERSION, "seconds": round(time.time() - t0, 2),
                    "per_item": [round(x, 5) for x in losses]})
        write_json(tmp / "result.json", out)

    return store.run(STAGE, spec, [ref.identity()], fn)
