"""The ``judge`` stage: verdicts of one judge on one generation artifact, cached.

Judge outputs are their own artifacts (``runs/judge/<key>/verdicts.jsonl``), so re-judging
with another judge never regenerates, and changing a judge's config re-judges only.

Verdicts that failed for a request error (server down, timeout, spent budget: the judge never
assessed the item) are not final: a later call retries those items only and re-publishes the
artifact under the same key.  Unparseable replies are judgements of the reply format; they stay
invalid and are never imputed.
"""
from __future__ import annotations

import json
from pathlib import Path

from .store import read_jsonl, write_json, write_jsonl

RETRYABLE = ("request", "budget")  # invalid_reason of verdicts a re-run retries


def pending(verdicts: list[dict]) -> list[int]:
    """Indices of verdicts that failed for a request error (retried by a re-run)."""
    return [i for i, v in enumerate(verdicts)
            if not v.get("valid", True) and (v.get("meta") or {}).get("invalid_reason") in RETRYABLE]


def _summary(spec, verdicts: list[dict], accounting, history=None) -> dict:
    out = {"judge": spec, "n": len(verdicts), "invalid": sum(1 for v in verdicts if not v.get("valid", True)),
           "request_errors": len(pending(verdicts)),
           **({"accounting": accounting} if accounting is not None else {})}
    if history:
        out["earlier_runs"] = history  # accounting of the runs before the latest retry
    return out


def judge_stage(store, gen_artifact, judge_name: str, overrides: dict | None = None, device: str = "cpu",
                judge=None):
    """Return (artifact, cache_hit); the artifact holds verdicts.jsonl and summary.json.
    ``cache_hit`` is False when items that had failed for request errors were retried and re-published."""
    from .judging import make_judge
    j = judge if judge is not None else make_judge(judge_name, overrides, store=store, device=device)
    spec = j.spec()
    extra = getattr(j, "run_summary", None)

    def inputs():
        gens = read_jsonl(gen_artifact.path / "generations.jsonl")
        return gens, [g.get("instruction", g["prompt"]) for g in gens], [g["text"] for g in gens]

    def fn(tmp: Path):
        gens, prompts, texts = inputs()
        verdicts = j.judge(prompts, texts)
        if len(verdicts) != len(gens):
            raise RuntimeError(f"judge {judge_name} returned {len(verdicts)} verdicts for {len(gens)} generations")
        rows = [dict(v.to_dict(), id=g["id"]) for v, g in zip(verdicts, gens)]
        write_jsonl(tmp / "verdicts.jsonl", rows)
        write_json(tmp / "summary.json", _summary(spec, rows, extra() if callable(extra) else None))

    art, hit = store.run("judge", spec, [gen_artifact.ref()], fn)
    if not hit or not pending(load_verdicts(art)):
        return art, hit
    with store.lock("judge", art.key):
        art = store.get("judge", art.key)
        if art is None:  # moved aside as corrupt meanwhile: build it afresh
            return store.run("judge", spec, [gen_artifact.ref()], fn)
        rows = load_verdicts(art)
        todo = pending(rows)
        if not todo:  # another process retried them while this one waited
            return art, True
        gens, prompts, texts = inputs()
        fresh = j.judge([prompts[i] for i in todo], [texts[i] for i in todo])
        if len(fresh) != len(todo):
            raise RuntimeError(f"judge {judge_name} returned {len(fresh)} verdicts for {len(todo)} retried items")
        for i, v in zip(todo, fresh):
            rows[i] = dict(v.to_dict(), id=gens[i]["id"], retried=rows[i].get("retried", 0) + 1)
        old = load_summary(art)
        history = old.get("earlier_runs", []) + ([old["accounting"]] if "accounting" in old else [])
        with store.writing("judge", art.key, art.spec, replace=True) as tmp:
            write_jsonl(tmp / "verdicts.jsonl", rows)
            write_json(tmp / "summary.json", dict(_summary(spec, rows, extra() if callable(extra) else None, history),
                                                  retried=len(todo)))
        return store.get("judge", art.key), False


def load_verdicts(artifact) -> list[dict]:
    return read_jsonl(artifact.path / "verdicts.jsonl")


def load_summary(artifact) -> dict:
    return json.loads((artifact.path / "summary.json").read_text())
