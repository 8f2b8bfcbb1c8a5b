"""A grid's plan: what is cached, what is missing, how long the missing part should take (harness/grid.py runs it).
"""
from __future__ import annotations

import json
import statistics
from dataclasses import dataclass, field
from typing import Any

from .grid_spec import GridSpec, expand, label


# ------------------------------------------------------------------------------------------
# plan: what is cached, what is missing, how long the missing part should take
DEFAULT_ESTIMATE_S = {  # per stage, used when the store has no finished stage of the same kind to learn from
    "tiny": {"model": 2, "defend": 5, "attack": 5, "evaluate": 10},
    # smoke (2 CPU cores): SDD LoRA defense 40 steps × batch 8 × 192 tokens = 510 s (docs/performance.md, with
    # activation checkpointing), full-FT attack 40 steps ≈ 4 min, generation of 128 answers × 64 tokens + judges +
    # lm-eval 3 × 100 items ≈ 3 min (measured, see bench/bench_run.py)
    "smoke": {"model": 30, "defend": 510, "attack": 240, "evaluate": 180},
    "paper": {"model": None, "defend": None, "attack": None, "evaluate": None},  # unknown until measured here
}
# The workload the "defend" default above was measured on: (optimizer steps, batch size, max length).  A defense
# with no timing in the store is estimated as default × (its steps × batch × max_length × passes per step) /
# (the reference's steps × batch × max_length): one forward/backward pass over a padded token costs about the same
# in every plain-SFT defense (smoke: SDD 40 × 8 × 192 in 510 s; deepalign 60 × 8 × 256 measured 17.4 min, which
# this rule prices at 17.0 min).
DEFEND_REFERENCE = {"tiny": (2, 4, 64), "smoke": (40, 8, 192), "paper": None}
# Forward/backward passes over a batch per optimizer step, for defenses that do more than one (default 1).
# A number or a function of the defense's config.
PASSES_PER_STEP = {
    "seam": 13,         # measured: one SEAM step = 12.9 plain SFT steps (defenses/seam.py: six passes of ∇̂L_sd + L_ul + L_up)
    "booster": 3,       # alignment loss, harmful gradient at θ, harmful loss at the shifted point
    "vaccine": 2,       # pass 1: gradients w.r.t. attention outputs; pass 2: perturbed forward/backward
    "t-vaccine": 2,     # as vaccine (on a subset of layers)
    "repnoise": 2,      # harmless and harmful batches
    "simpo": 2,         # chosen and rejected responses
    "tar": lambda c: 2 * c.inner_steps + 1,  # K adversary steps, each with an L_TR evaluation, + retain
}


def defend_estimate(profile: str, defense) -> float | None:
    """Planned seconds of a defense with no timing in the store: the profile's default scaled by the defense's
    configured work (steps × batch × max_length × passes per step, see DEFEND_REFERENCE; ``Defense.workload``); the
    flat default where the config has no step count or the profile no reference workload."""
    base = DEFAULT_ESTIMATE_S[profile]["defend"]
    ref = DEFEND_REFERENCE.get(profile)
    steps, batch, length = defense.workload()
    if base is None or ref is None or not isinstance(steps, int):
        return base
    batch = batch or ref[1]
    length = length or ref[2]
    passes = PASSES_PER_STEP.get(defense.registry_name, 1)
    passes = passes(defense.cfg) if callable(passes) else passes
    return float(base) * steps * batch * length * passes / (ref[0] * ref[1] * ref[2])


# The attack step count the "attack" default above was measured at (smoke: full fine-tuning, 40 steps ≈ 4 min).  An
# attack with no timing in the store is estimated as default × its max_steps / these steps (an attacker budget's
# ×¼ and ×4 step counts); LoRA and SGD are priced like full AdamW fine-tuning (an upper bound: LoRA skips most
# weight gradients).
ATTACK_REFERENCE_STEPS = {"tiny": 2, "smoke": 40, "paper": None}


def attack_estimate(profile: str, attack) -> float | None:
    """Planned seconds of an attack with no timing in the store: the profile's default scaled by the steps it will
    run (a fine-tuning attack's ``planned_steps``: min(cap, recipe steps), so a 10-shot attack is priced at its 5
    steps; attacks without one step count — two-phase restore, refusal ablation — get the flat default)."""
    base = DEFAULT_ESTIMATE_S[profile]["attack"]
    ref = ATTACK_REFERENCE_STEPS.get(profile)
    steps = attack.planned_steps()  # None: no single count (restore, ablation)
    if base is None or ref is None or not isinstance(steps, int):
        return base
    return float(base) * steps / ref


def model_estimate(profile: str, name: str) -> float | None:
    """Planned seconds to build a built-in model: the profile's default (unpacking the embedded weights), plus for an
    aligned base (harness/models.py ALIGNED) its refusal SFT priced like a defense of the same workload (smoke:
    120 steps × 8 × 128 tokens ≈ 17 min; measured 20-30 min on 2 busy cores)."""
    from . import models
    base = DEFAULT_ESTIMATE_S[profile]["model"]
    if base is None or name not in models.ALIGNED:
        return base
    align = defend_estimate(profile, models._aligned_spec(name)[2])
    return None if align is None else float(base) + align


STAGE_KINDS = ("model", "defend", "evaluate", "attack")


@dataclass
class CellPlan:
    spec: Any
    state: str                    # done | published | partial | todo
    stages: dict                  # stage → cached / missing
    estimate_s: float | None      # remaining compute, None if unknown
    record: Any = None            # record artifact when done
    by_stage: dict = field(default_factory=dict)  # stage kind (STAGE_KINDS) → remaining seconds (None: unknown)
    missing: list = field(default_factory=list)   # (stage, key) of the model/defend/attack artifacts still to build
    published: str | None = None  # the published record file of a cell found there (state "published")


FINISHED = ("done", "published")


@dataclass
class Plan:
    grid: GridSpec
    cells: list[CellPlan] = field(default_factory=list)

    @property
    def estimate_s(self) -> float | None:
        vals = [c.estimate_s for c in self.cells if c.state not in FINISHED]
        return None if any(v is None for v in vals) else float(sum(vals))

    def by_stage(self) -> dict:
        """Remaining compute per stage kind over the unfinished cells (None where any part is unknown)."""
        out: dict = {}
        for c in self.cells:
            for k, v in c.by_stage.items():
                out[k] = None if v is None or (k in out and out[k] is None) else out.get(k, 0.0) + v
        return {k: out[k] for k in STAGE_KINDS if k in out}

    def stage_line(self) -> str:
        parts = [f"{k} {'unknown' if v is None else _fmt_s(v)}" for k, v in self.by_stage().items()]
        return "estimate by stage kind: " + (", ".join(parts) if parts else "nothing to run")

    def summary(self) -> str:
        n = len(self.cells)
        done = sum(c.state in FINISHED for c in self.cells)
        pub = sum(c.state == "published" for c in self.cells)
        part = sum(c.state == "partial" for c in self.cells)
        est = self.estimate_s
        est_s = "unknown (no timing for this profile yet)" if est is None else _fmt_s(est)
        pub_s = f" ({pub} of them published, not in this work dir)" if pub else ""
        return (f"grid {self.grid.name!r} (profile {self.grid.profile}): {n} cells, {done} finished{pub_s}, {part} partly "
                f"cached, {n - done - part} to run; estimated remaining compute {est_s}")

    def table(self, max_rows: int | None = None) -> str:
        """One row per cell; with ``max_rows``, the first ``max_rows`` and a line counting the rest."""
        shown = self.cells if max_rows is None else self.cells[:max_rows]
        w = max([60] + [len(label(c.spec)) for c in shown])  # never cut: the name is the cell's identity
        lines = [f"{'cell':{w}s} {'state':9s} {'defend':8s} {'attack':8s} {'estimate':>10s}"]
        for c in shown:
            est = "-" if c.state in FINISHED else ("?" if c.estimate_s is None else _fmt_s(c.estimate_s))
            lines.append(f"{label(c.spec):{w}s} {c.state:9s} {c.stages.get('defend', '-'):8s} "
                         f"{c.stages.get('attack', '-'):8s} {est:>10s}")
        if len(shown) < len(self.cells):
            lines.append(f"... {len(self.cells) - len(shown):,} more cells not shown (--all-rows prints every row)")
        return "\n".join(lines)


def _fmt_s(s: float) -> str:
    return f"{s:.0f}s" if s < 120 else (f"{s / 60:.1f}min" if s < 7200 else f"{s / 3600:.1f}h")


def _hist_key(stage: str, name, spec: dict, info) -> tuple:
    """A timing's history key: a defense by its configured ``max_steps``; an attack by the optimizer steps it ran
    (its info's ``steps``), so a capped and an uncapped run of one preset are not priced alike."""
    if stage == "attack":
        return (stage, name, info.get("steps") if isinstance(info, dict) else None)
    cfg = spec.get("config") if isinstance(spec.get("config"), dict) else {}
    return (stage, name, cfg.get("max_steps"))


def _history(store, published: dict | None = None) -> dict:
    """Median compute seconds of finished defend/attack stages, by (stage, name, steps): this store's, and with
    ``published`` (harness.publish.published_cells) those the published records measured (each defended or
    attacked model once, however many records name it), so a plan on a new machine is priced by the runs the
    repository already holds."""
    hist: dict[tuple, list[float]] = {}
    seen: set[str] = set()
    for stage, namekey in (("defend", "defense"), ("attack", "attack")):
        sdir = store.root / stage
        if not sdir.is_dir():
            continue
        for a in sdir.iterdir():
            try:
                spec = json.loads((a / "spec.json").read_text())["spec"]
                info = json.loads((a / "info.json").read_text())
                sec = info.get("seconds")
            except (OSError, ValueError, KeyError, AttributeError):
                continue
            if sec is not None and (a / "COMPLETE").is_file():
                seen.add(f"{stage}/{a.name}")
                hist.setdefault(_hist_key(stage, spec.get(namekey), spec, info), []).append(sec)
    for rec, _ in (published or {}).values():
        for stage, namekey, info in (("defend", "defense", "defense_info"), ("attack", "attack", "attack_info")):
            ref, spec = rec.get("artifacts", {}).get(namekey), (rec.get("config") or {}).get(namekey)
            sec = (rec.get(info) or {}).get("seconds")
            if not (isinstance(ref, str) and isinstance(spec, dict) and isinstance(sec, (int, float))) or ref in seen:
                continue
            seen.add(ref)
            hist.setdefault(_hist_key(stage, spec.get(namekey), spec, rec.get(info)), []).append(float(sec))
    return {k: statistics.median(v) for k, v in hist.items()}


def plan(g: GridSpec, store, cells: list | None = None, published: dict | None = None, progress=None) -> Plan:
    """Probe the store for every cell without loading a model: finished cell (pointer), defended model,
    attacked model; estimate the remaining compute from this store's history or the profile's defaults.
    ``published`` (harness.publish.published_cells) adds the cells whose record is already published (a cell
    neither finished in the store nor published is planned) and the stage timings those records measured."""
    from . import models
    from .pipeline import cell_key, finished_record, resolve
    from .store import stage_key
    cells = cells if cells is not None else expand(g)
    hist = _history(store, published)
    default = DEFAULT_ESTIMATE_S[g.profile]
    out = Plan(g)
    counted: set[str] = set()  # stages (defended models, their initial evaluation) already counted by another cell

    def est(stage, name, steps):
        v = hist.get((stage, name, steps))
        return v if v is not None else default[stage]

    def est_defend(d):
        v = hist.get(("defend", d.registry_name, d.workload()[0]))
        return v if v is not None else defend_estimate(g.profile, d)

    for i, spec in enumerate(cells, 1):
        if progress is not None:
            progress(i)
        r = resolve(spec)
        done = finished_record(store, r)  # corrupt pointers/records are moved aside (reported): the cell is planned
        if done is not None:
            out.cells.append(CellPlan(spec, "done", {"defend": "cached", "attack": "cached"}, 0.0, done[1]))
            continue
        hit = published.get(cell_key(r)) if published else None
        if hit is not None:
            out.cells.append(CellPlan(spec, "published", {"defend": "-", "attack": "-"}, 0.0, published=str(hit[1])))
            continue
        stages: dict[str, str] = {}
        remaining: list[tuple[str, float | None]] = []
        missing: list[tuple[str, str]] = []
        mkey = models.model_key(r.model, seed=0)
        if mkey is None:  # a path or hub id: nothing to build, its identity is its location
            ident = models.materialize(r.model, store).identity()
        else:
            ident = f"model/{mkey}"
            if store.get("model", mkey) is None:
                missing.append(("model", mkey))
                if ident not in counted:  # built once, whatever cells share it
                    counted.add(ident)
                    remaining.append(("model", model_estimate(g.profile, r.model)))
        for which, d in (("base_defend", r.base_defense), ("defend", r.defense)):
            if d is None or d.identity:
                continue
            dkey = stage_key("defend", dict(d.spec(), template=spec.template, seed=spec.seed), [ident])
            cached = store.get("defend", dkey) is not None
            stages[which] = "cached" if cached else "missing"
            if not cached:
                missing.append(("defend", dkey))
            ident = f"defend/{dkey}"
            if not cached and ident not in counted:
                counted.add(ident)
                remaining.append(("defend", est_defend(d)))
        stages.setdefault("defend", "none")
        if "eval:" + ident not in counted:
            counted.add("eval:" + ident)
            remaining.append(("evaluate", default["evaluate"]))  # initial evaluation (cheap when its stages are cached)
        if r.attack is not None:
            akey = stage_key("attack", dict(r.attack.spec(), template=spec.template, seed=spec.seed), [ident])
            cached = store.get("attack", akey) is not None
            stages["attack"] = "cached" if cached else "missing"
            if not cached:
                missing.append(("attack", akey))
                v = hist.get(("attack", r.attack.name, r.attack.planned_steps()))  # None: no single count
                remaining.append(("attack", v if v is not None else attack_estimate(g.profile, r.attack)))
            remaining.append(("evaluate", default["evaluate"]))
        else:
            stages["attack"] = "none"
        state = "partial" if "cached" in stages.values() else "todo"
        total = None if any(v is None for _, v in remaining) else float(sum(v for _, v in remaining))
        by: dict = {}
        for k, v in remaining:
            by[k] = None if v is None or (k in by and by[k] is None) else by.get(k, 0.0) + v
        out.cells.append(CellPlan(spec, state, stages, total, by_stage=by, missing=missing))
    return out
