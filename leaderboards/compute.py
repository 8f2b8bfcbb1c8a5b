"""What the records cost to compute: the measured stage times behind a leaderboard (``compute.{md,csv}``).

A grid's plan (``sdd-bench grid --plan``) *estimates* its compute; this is the *actual*, read back from
the records.  Every trained or evaluated artifact is counted once, by its store key, however many
records name it (a defended model serves its initial cell and every attack on it):

* ``defend``: a defense's training (``defense_info``: seconds, optimizer steps, seconds per step, device);
* ``attack``: a fine-tuning attack's training or a refusal ablation's search (``attack_info``);
* ``capability``: one lm-eval run of a model (``metrics.<condition>.capability.seconds``).

An artifact built more than once (the same store key trained again on a fresh work dir by a later session)
has several measurements: its row gives their median and ``builds`` says how many distinct ones there were,
so totals are what the leaderboard costs computed once.

Generation and judging are not timed in records, and neither is building the base model (the aligned
smoke base is its refusal SFT); they are named as missing, never estimated here.  Times are wall-clock
seconds on the machine and under the load the stage ran with (records made beside another grid process
are slower than idle), so they add up to what the published leaderboard cost, not to an idle benchmark.
"""
from __future__ import annotations

from statistics import median
from typing import Iterable

from .aggregate import options_label

COMPUTE_COLUMNS = ["stage", "model", "defense", "attack", "artifact", "steps", "seconds", "seconds_per_step",
                   "device", "records", "builds"]
STAGES = ("defend", "attack", "capability")
NOT_TIMED = "generation, judging and building the base model are not timed in records"


def _attack_label(rec: dict) -> str:
    extra = options_label((rec.get("spec") or {}).get("attack_options"), "")
    return rec["cell"]["attack"] + (f" [{extra}]" if extra else "")


def _row(stage: str, rec: dict, key: str, info: dict, attack: str) -> dict:
    return {"stage": stage, "model": rec["cell"]["model"], "defense": rec["cell"]["defense"], "attack": attack,
            "artifact": key, "steps": info.get("steps") or "", "seconds": [float(info["seconds"])],
            "device": info.get("device", ""), "records": 1}


def _finish(row: dict) -> dict:
    builds = sorted(set(row["seconds"]))
    secs = median(builds)
    return dict(row, seconds=round(secs, 1), builds=len(builds),
                seconds_per_step=round(secs / row["steps"], 2) if row["steps"] else "")


def compute_rows(records: Iterable[dict]) -> list[dict]:
    """One row per timed artifact the records name: its median measured time over distinct builds, how many
    records name it (``records``) and how many distinct measurements there were (``builds``).  Artifacts
    without a time (a cached stage of an older record) are skipped."""
    rows: dict[str, dict] = {}
    for rec in records:
        arts = rec.get("artifacts") or {}
        found = []
        if arts.get("defense") and (rec.get("defense_info") or {}).get("seconds") is not None:
            found.append(("defend", arts["defense"], rec["defense_info"], ""))
        if arts.get("attack") and (rec.get("attack_info") or {}).get("seconds") is not None:
            found.append(("attack", arts["attack"], rec["attack_info"], _attack_label(rec)))
        for cond in ("initial", "attacked"):
            cap = ((rec.get("metrics") or {}).get(cond) or {}).get("capability") or {}
            key = arts.get(f"{cond}/capability")
            if key and cap.get("seconds") is not None:
                found.append(("capability", key, {"seconds": cap["seconds"], "device": cap.get("device", "")},
                              "initial" if cond == "initial" else _attack_label(rec)))
        for stage, key, info, attack in found:
            if key in rows:
                rows[key]["records"] += 1
                rows[key]["seconds"].append(float(info["seconds"]))
            else:
                rows[key] = _row(stage, rec, key, info, attack)
    return sorted((_finish(r) for r in rows.values()),
                  key=lambda r: (STAGES.index(r["stage"]), r["model"], r["defense"], r["attack"], r["artifact"]))


def compute_md(rows: list[dict]) -> str:
    lines = ["# Compute: what these records cost", "",
             "Measured stage times read back from the records, each trained or evaluated artifact once (by its store "
             f"key) however many records use it. Not included: {NOT_TIMED}. Wall-clock times on the machine and "
             "under the load each stage ran with (two grid processes on two cores are slower per process than one "
             "alone). An artifact built more than once (on a fresh work dir) shows the median of its builds.", ""]
    if not rows:
        return "\n".join(lines + ["No record carries stage times.", ""]) + "\n"
    lines += ["| stage | artifacts | total (h) | median per artifact (min) |", "|---|---|---|---|"]
    total = 0.0
    for stage in STAGES:
        secs = [r["seconds"] for r in rows if r["stage"] == stage]
        if secs:
            total += sum(secs)
            lines.append(f"| {stage} | {len(secs)} | {sum(secs) / 3600:.2f} | {median(secs) / 60:.1f} |")
    lines += [f"| **timed total** | {len(rows)} | **{total / 3600:.2f}** | — |", ""]
    for stage, title in (("defend", "Defenses (one row per defended model)"),
                         ("attack", "Attacks (one row per attacked model)")):
        part = [r for r in rows if r["stage"] == stage]
        if not part:
            continue
        lines += [f"## {title}", "",
                  "| model | defense | attack | steps | s / step | minutes | device | records | builds |",
                  "|---|---|---|---|---|---|---|---|---|"]
        lines += [f"| {r['model']} | {r['defense']} | {r['attack'] or '—'} | {r['steps'] or '—'} | "
                  f"{r['seconds_per_step'] if r['seconds_per_step'] != '' else '—'} | {r['seconds'] / 60:.1f} | "
                  f"{r['device'] or '—'} | {r['records']} | {r['builds']} |" for r in part]
        lines.append("")
    return "\n".join(lines) + "\n"
