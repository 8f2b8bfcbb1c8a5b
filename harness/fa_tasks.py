"""Benign fine-tuning accuracy (Vaccine / Booster): the tasks that grade a BFT attack's own task on a held-out split,
their scoring and the cached stage (harness/capability.py re-exports every name).
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from .errors import ConfigError, DataError


# ------------------------------------------------------------------------------------------
# benign fine-tuning accuracy (Vaccine / Booster)
@dataclass(frozen=True)
class FATask:
    name: str  # fa_sst2 …
    dataset: str  # data.load name of the evaluation split
    max_new_tokens: int
    description: str


FA_TASKS: dict[str, FATask] = {t.name: t for t in [
    FATask("fa_sst2", "sst2", 16, "SST-2 validation: correct iff the gold label word (positive/negative) is in the output"),
    FATask("fa_agnews", "agnews-eval", 16, "AG News held-out 20% (agnews-eval; the other 80% is BFT data): correct iff the gold class name (World/Sports/Business/Sci/Tech) "
                                      "is in the output"),
    FATask("fa_gsm8k", "gsm8k", 256, "GSM8K test: final number of the output equals the gold final answer"),
]}
# BFT training data -> the task whose held-out split grades it.  Open-ended data (ShareGPT, Alpaca, Dolly)
# has no gold answer, so no fine-tuning accuracy is defined for it.
FA_FOR_DATASET = {"sst2-train": "fa_sst2", "agnews-train": "fa_agnews", "gsm8k-train": "fa_gsm8k"}
_LABEL_WORDS = {"fa_sst2": ("negative", "positive"), "fa_agnews": ("World", "Sports", "Business", "Sci/Tech")}
_NUM = re.compile(r"-?\d+(?:\.\d+)?")
_FINAL_MARKERS = re.compile(r"(?:the final answer is|####)", re.IGNORECASE)


def _fa_name(task: str) -> str:
    name = task if task.startswith("fa_") else f"fa_{task}"
    if name not in FA_TASKS:
        raise ConfigError(f"Unknown fine-tuning accuracy task {task!r}; known: {', '.join(FA_TASKS)}.")
    return name


def gsm8k_final_number(text: str) -> float | None:
    """Number after the last "The final answer is"/"####" marker, else the last number; None if none."""
    t = text.replace(",", "").replace("$", "")
    parts = _FINAL_MARKERS.split(t)
    if len(parts) > 1:
        m = _NUM.search(parts[-1])
        if m:
            return float(m.group())
    nums = _NUM.findall(t)
    return float(nums[-1]) if nums else None


def _gold(g: dict, key: str):
    meta = g.get("meta") or {}
    return meta.get(key, g.get(key))


def finetune_accuracy(task: str, generations: list[dict]) -> dict:
    """``fa_*`` accuracy of ``generations`` (rows with ``text`` and gold ``label``/``final``, top level or in ``meta``).

    Returns {"task", "value", "ci95", "n", "correct", "definition", "per_item"}.
    """
    from .metrics import bootstrap_ci

    name = _fa_name(task)
    per_item = []
    for i, g in enumerate(generations):
        text = g.get("text")
        if text is None:
            raise DataError(f"{name}: generation {i} has no 'text'.")
        if name == "fa_gsm8k":
            gold = _gold(g, "final")
            if gold is None:
                raise DataError(f"{name}: generation {i} has no gold 'final' (pass row_meta=[{{'final': …}}] "
                                f"to generate_stage).")
            pred = gsm8k_final_number(text)
            ok = pred is not None and abs(pred - float(str(gold).replace(",", ""))) < 1e-6
        else:
            label = _gold(g, "label")
            if label is None:
                raise DataError(f"{name}: generation {i} has no gold 'label' (pass row_meta=[{{'label': …}}] "
                                f"to generate_stage).")
            word = _LABEL_WORDS[name][int(label)]
            ok = word.lower() in text.lower()
        per_item.append(1.0 if ok else 0.0)
    n = len(per_item)
    lo, hi = bootstrap_ci(per_item)
    return {"task": name, "value": (sum(per_item) / n) if n else float("nan"), "ci95": [lo, hi], "n": n,
            "correct": int(sum(per_item)), "definition": FA_TASKS[name].description, "per_item": per_item}


def finetune_accuracy_stage(store, ref, task: str, limit: int | None = None, template: str = "chat",
                            gen_cfg=None, device: str = "auto", loaded: tuple | None = None,
                            progress: bool = False) -> dict:
    """Generate on the task's evaluation split (cached generate stage) and score it: returns the fa_* dict."""
    from . import data
    from .config import replace
    from .generation import GenConfig, generate_stage
    from .store import read_jsonl

    name = _fa_name(task)
    ft = FA_TASKS[name]
    rows = data.load(ft.dataset)
    if limit is not None:
        rows = rows[:limit]
    cfg = gen_cfg or replace(GenConfig(), max_new_tokens=ft.max_new_tokens)
    meta = [{"label": r.get("label"), "final": r.get("final"), "row": r.get("row")} for r in rows]
    art, hit = generate_stage(store, ref, [r["prompt"] for r in rows], dataset=ft.dataset, template=template, cfg=cfg,
                              device=device, loaded=loaded, progress=progress, row_meta=meta,
                              extra_spec={"limit": limit, "data": data.get(ft.dataset).fingerprints()})
    out = finetune_accuracy(name, read_jsonl(art.path / "generations.jsonl"))
    out["generations"] = art.ref()
    return out
