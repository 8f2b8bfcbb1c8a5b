"""Grids (DESIGN §1): models × defenses × attacks (with sweeps) × seeds, planned and run cell by cell.

A grid spec is YAML (``configs/*.yaml``)::

    name: sdd-smoke
    profile: smoke
    defenses: [none, refusal-sft, sdd, {name: sdd, base_defense: refusal-sft}]
    attacks:
      - none
      - advbench-100
      - {name: beavertails-1k-seam, sweep: {lr: [2.0e-5, 1.0e-4]}}
    seeds: [0]
    judges: [harm-clf]
    run: {template: chat}          # any other RunSpec field, for every cell

Every cell is one ``run_cell`` (harness/pipeline.py).  Resumability is the artifact store's: every
stage is published atomically under a content key, so a grid killed at any point (even SIGKILL)
resumes at the first unfinished stage of the first unfinished cell, and finished cells are found
through their ``cell`` pointer without touching a model.  Executors: ``local`` (sequential, in
this process) and ``ray`` (one Ray task per cell stage group — base model, defended model,
attacked cell — with CPU/GPU resource requests; the store must be a filesystem every Ray node
sees).  A local run may be bounded by a deadline (``--until``/``--max-minutes``: a cell starts only if
its re-planned estimate fits, see :func:`fits`) and publish each record as its cell finishes
(``--publish``, harness/publish.py; a cell already published there is not run).  Estimates: this store's
timings and, with ``--publish``, those the published records measured, else the profile's defaults, a defense's
scaled by its configured work (:func:`defend_estimate`).
"""
from __future__ import annotations

import json
import math
import os
import statistics
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import config as C
from .errors import ConfigError, SddBenchError


@dataclass(frozen=True)
class GridSpec:
    name: str = C.param("grid", "grid name (shown in plans and reports)")
    profile: str = C.param("smoke", "tiny | smoke | paper", choices=("tiny", "smoke", "paper"))
    models: list = C.param(default_factory=list, doc="model names/paths (default: the profile's model)")
    defenses: list = C.param(default_factory=lambda: ["none"], doc="defense names or {name, base_defense, options}")
    attacks: list = C.param(default_factory=lambda: ["none"],
                            doc="attack presets or {name, options, sweep: {option: [values]}}")
    seeds: list = C.param(default_factory=lambda: [0], doc="training seeds of defense and attack")
    judges: list = C.param(default_factory=list, doc="extra harmfulness judges on harmful prompts (e.g. harm-clf)")
    capability: bool = C.param(True, "run the capability stage (lm-eval)")
    run: dict = C.param(default_factory=dict, doc="other RunSpec fields applied to every cell (template, n_harmful…)")
    attacker_budget: str | None = C.param(None, "expand each fine-tuning attack into an attacker budget's sweep: small | "
                                          "paper | strong (harness/budget.py, docs/attacker_budget.md)")
    executor: str = C.param("local", "local | ray", choices=("local", "ray"))
    ray: dict = C.param(default_factory=dict, doc="ray options: address, num_cpus, cpus_per_cell, gpus_per_cell")
    description: str = C.param("", "free text")


GRID_KEYS = {"defenses", "attacks"}


def is_grid(data: dict) -> bool:
    return bool(GRID_KEYS & set(data))


# A grid with more cells than this is run only with ``--yes`` (our choice: the largest shipped grid has 44 cells and a
# smoke cell takes minutes, so 500 cells is days of compute; a typo in a sweep multiplies cells silently).
CONFIRM_CELLS = 500
# ``grid`` / ``grid --plan`` print at most this many rows of the plan table unless ``--all-rows`` (our choice: a
# screenful or two; the summary line always counts every cell).
PLAN_ROWS = 200
# ``validate`` and ``grid`` report their progress through a grid's cells at most this often (seconds; our choice):
# a grid that checks in less time prints nothing extra.
PROGRESS_EVERY_S = 5.0


class Progress:
    """``what: i/total cells (elapsed)`` on stderr at most every ``PROGRESS_EVERY_S`` seconds, and once at the end
    if anything was printed before."""

    def __init__(self, what: str, total: int | None = None, stream=None):
        self.what, self.total, self.stream = what, total, stream
        self.t0 = self.last = time.time()
        self.printed = False

    def _line(self, i: int) -> None:
        tot = f"/{self.total:,}" if self.total is not None else ""
        print(f"{self.what}: {i:,}{tot} cells ({time.time() - self.t0:.0f}s)", file=self.stream or sys.stderr,
              flush=True)
        self.printed = True

    def __call__(self, i: int) -> None:
        now = time.time()
        if now - self.last >= PROGRESS_EVERY_S:
            self.last = now
            self._line(i)

    def done(self, i: int) -> None:
        if self.printed:
            self._line(i)


def load_grid(path: str | Path, cells_out: list | None = None, progress=None) -> GridSpec:
    """The grid spec of a YAML file, validated down to every cell (``cells_out`` receives the expanded cells)."""
    data = C.load_yaml(path)
    if not is_grid(data):
        raise ConfigError(f"{path}: not a grid spec (a grid has `defenses:` and `attacks:` lists; a single run "
                          f"spec is run with `sdd-bench run --config`).")
    return grid_from_mapping(data, where=str(path), cells_out=cells_out, progress=progress)


def grid_from_mapping(data: dict, where: str = "grid", cells_out: list | None = None, progress=None) -> GridSpec:
    g = C.build(GridSpec, data, where=where)
    for k, v in (("defenses", g.defenses), ("attacks", g.attacks), ("seeds", g.seeds)):
        if not v:
            raise ConfigError(f"{where}: `{k}` is empty; list at least one.")
    for s in g.seeds:
        if not isinstance(s, int) or isinstance(s, bool):
            raise ConfigError(f"{where}: seeds must be integers, got {s!r}.")
    if g.attacker_budget is not None:
        from . import budget
        try:
            budget.get(g.attacker_budget)
        except ConfigError as err:
            raise ConfigError(f"{where}: {err}") from None
    cells = expand(g, where=where, progress=progress)  # validates every cell (names, options, sweeps)
    if cells_out is not None:
        cells_out.extend(cells)
    return g


def _entry(x: Any, kind: str, where: str) -> dict:
    if isinstance(x, str):
        return {"name": x}
    if isinstance(x, dict) and isinstance(x.get("name"), str):
        return dict(x)
    raise ConfigError(f"{where}: each of `{kind}` must be a name or a mapping with a `name`, got {x!r}.")


def _num(v: Any) -> Any:
    """YAML 1.1 reads ``2e-5`` as a string: accept numeric-looking strings in sweeps and options."""
    if isinstance(v, str):
        try:
            return float(v) if any(c in v for c in "eE.") else int(v)
        except ValueError:
            return v
    return v


def _attack_variants(entry: dict, where: str) -> list[tuple[str, dict]]:
    e = dict(entry)
    name = e.pop("name")
    base = {k: _num(v) for k, v in dict(e.pop("options", {}) or {}).items()}
    sweep = e.pop("sweep", None) or {}
    if e:
        raise ConfigError(f"{where}: attack {name!r} has unknown keys {sorted(e)}; use `options:` and `sweep:`.")
    if not isinstance(sweep, dict) or any(not isinstance(v, list) or not v for v in sweep.values()):
        raise ConfigError(f"{where}: `sweep` of attack {name!r} must map an option to a non-empty list, "
                          f"e.g. sweep: {{lr: [2.0e-5, 1.0e-4]}}.")
    out = [(name, base)]
    for opt, values in sweep.items():
        out = [(n, {**o, opt: _num(v)}) for n, o in out for v in values]
    return out


def _budget_variants(g: GridSpec, variants: list[tuple[str, dict]], seed: int, where: str) -> list[tuple[str, dict]]:
    """Each attack variant expanded into the grid's attacker budget (harness/budget.py); unchanged without one."""
    if g.attacker_budget is None:
        return variants
    from . import budget
    return [(name, o) for name, opts in variants
            for o in budget.expand_attack(g.attacker_budget, name, opts, g.profile, seed, where=where)]


def expand(g: GridSpec, where: str = "grid", progress=None) -> list:
    """Cells as RunSpecs, in a cache-friendly order (defense-major, so each defended model is built once).
    Each spec is normalized (options equal to their defaults dropped), so two spellings of one resolved
    configuration (``advbench-100`` and ``advbench-100 {lr: 5e-5}``) are one cell, trained once."""
    from .pipeline import resolve, spec_from_mapping
    models = g.models or [None]
    cells, seen = [], set()
    for d in g.defenses:
        de = _entry(d, "defenses", where)
        dname = de.pop("name")
        base = de.pop("base_defense", None)
        dopts = de.pop("options", {}) or {}
        bopts = de.pop("base_defense_options", {}) or {}
        if de:
            raise ConfigError(f"{where}: defense {dname!r} has unknown keys {sorted(de)}; "
                              f"use `base_defense`, `options`, `base_defense_options`.")
        for m in models:
            for seed in g.seeds:
                for a in g.attacks:
                    for aname, aopts in _budget_variants(g, _attack_variants(_entry(a, "attacks", where), where),
                                                         seed, where):
                        d_ = dict(g.run)
                        d_.update(defense=dname, base_defense=base, defense_options=dopts, base_defense_options=bopts,
                                  attack=aname, attack_options=aopts, model=m, profile=g.profile, seed=seed,
                                  judges=list(g.judges), capability=g.capability)
                        spec = spec_from_mapping(d_, where=f"{where} (cell {dname} × {aname})")
                        spec = resolve(spec).spec  # identity: options at their defaults drop out
                        k = json.dumps(C.to_dict(spec), sort_keys=True)
                        if k not in seen:
                            seen.add(k)
                            cells.append(spec)
                            if progress is not None:
                                progress(len(cells))
    return cells


def _opts(d: dict) -> str:
    return "[" + ",".join(f"{k}={v}" for k, v in sorted(d.items())) + "]" if d else ""


def label(spec) -> str:
    """The cell's name: defense (and base defense) with their options, attack with its options, model, seed."""
    s = f"{spec.defense}{_opts(spec.defense_options)}"
    if spec.base_defense:
        s += f"(on {spec.base_defense}{_opts(spec.base_defense_options)})"
    s += f" × {spec.attack}{_opts(spec.attack_options)}"
    if spec.model:
        s += f" @ {spec.model}"
    return s + f" seed {spec.seed}"


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


# ------------------------------------------------------------------------------------------
# executors
@dataclass
class CellResult:
    spec: Any
    record: dict | None
    record_ref: str | None
    cached: bool
    error: str | None = None
    seconds: float = 0.0
    skipped: str | None = None    # why the cell was not started (the deadline), None if it ran
    published: str | None = None  # the published record file it was taken from, not run (``--publish``)


def _run_one(spec, store, progress: bool, log) -> CellResult:
    from .pipeline import finished_record, resolve, run_cell
    t0 = time.time()
    done = finished_record(store, resolve(spec))
    if done is not None:
        return CellResult(spec, done[0], done[1].ref(), True, seconds=time.time() - t0)
    record, art = run_cell(spec, store, progress=progress, log=log)
    record.pop("_wall_seconds_this_invocation", None)
    return CellResult(spec, record, art.ref(), False, seconds=time.time() - t0)


def fits(g: GridSpec, spec, store, deadline: float, cp: CellPlan | None = None) -> str | None:
    """None if the cell's planned remaining compute (re-planned now against the current store, unless ``cp`` is
    that plan) ends before ``deadline`` (epoch seconds); else why it does not."""
    cp = cp if cp is not None else plan(g, store, [spec]).cells[0]
    if cp.state in FINISHED:
        return None
    left = deadline - time.time()
    if cp.estimate_s is None:
        return (f"no time estimate (profile {g.profile} has no default timing and this store no finished stage of "
                f"its kind); run it without a deadline once")
    if cp.estimate_s > left:
        return f"planned {_fmt_s(cp.estimate_s)}, {_fmt_s(max(0.0, left))} left before the deadline"
    return None


def busy(cp: CellPlan, store) -> str | None:
    """The first artifact (``stage/key``) this cell still has to build that another process is computing right now
    (its store lock is held), or None.  Only the model, defense and attack stages are probed: they are the long ones
    (a defense or an attack is minutes to hours); an evaluation stage held elsewhere is waited for."""
    for stage, key in cp.missing:
        if store.is_locked(stage, key):
            return f"{stage}/{key}"
    return None


def run_local(cells: list, store, *, progress: bool = True, log=print, fail_fast: bool = False,
              g: GridSpec | None = None, deadline: float | None = None, on_result=None) -> list[CellResult]:
    """Run the cells one after another, in order, with one exception: a cell one of whose long stages another
    process is computing at that moment (two grids on one work dir, e.g. one per core) is put back once behind
    the remaining cells instead of idling on that stage's lock; when it comes round again it runs, waiting for the
    lock if it is still held (by then the stage is usually finished and cached).  Needs ``g`` (the plan).

    With ``deadline`` (epoch seconds; needs ``g``) a cell is started only if the plan says it finishes in time
    (:func:`fits`), else it is returned with ``skipped`` set.  ``on_result`` is called with each finished cell's
    result as soon as it finishes (``--publish``).  The results come back in the cells' order."""
    n = len(cells)
    queue = list(enumerate(cells, 1))
    put_back: set[int] = set()
    out: dict[int, CellResult] = {}
    while queue:
        i, spec = queue.pop(0)
        cp = None
        if g is not None:
            try:
                cp = plan(g, store, [spec]).cells[0]
            except SddBenchError:  # not planned: fits() re-plans and raises under a deadline, else the cell fails below
                pass
        if cp is not None and queue and i not in put_back:
            held = busy(cp, store)
            if held is not None:
                log(f"[{i}/{n}] {label(spec)}: put back behind the other cells ({held} is being computed by another "
                    f"process)")
                put_back.add(i)
                queue.append((i, spec))
                continue
        if deadline is not None:
            why = fits(g, spec, store, deadline, cp)
            if why is not None:
                log(f"[{i}/{n}] {label(spec)}: not started ({why})")
                out[i] = CellResult(spec, None, None, False, skipped=why)
                continue
        log(f"[{i}/{n}] {label(spec)}")
        try:
            res = _run_one(spec, store, progress, log)
        except Exception as err:  # one broken cell must not cost the rest of an unattended grid
            if fail_fast:
                raise
            log(f"  FAILED: {type(err).__name__}: {err}")
            if not isinstance(err, SddBenchError):  # a bug, not a bad input: keep where it happened
                log("".join(traceback.format_exception(err)).rstrip())
            out[i] = CellResult(spec, None, None, False, error=f"{type(err).__name__}: {err}")
            continue
        log(f"  {'finished earlier' if res.cached else 'done'} ({res.seconds:.1f}s) -> {res.record_ref}")
        out[i] = res
        if on_result is not None:
            on_result(res)
    return [out[i] for i in sorted(out)]


def _ray_cell(spec_dict: dict, workdir: str, threads: int, *deps) -> tuple[str, bool]:
    """Body of one Ray task: run (or find) one cell in the shared store; returns (record ref, was finished)."""
    import torch
    torch.set_num_threads(max(1, threads))
    from .pipeline import spec_from_mapping
    from .store import Store
    res = _run_one(spec_from_mapping(spec_dict, where="ray task"), Store(workdir), False, lambda *_: None)
    return res.record_ref, res.cached


def _ray_model(name: str, workdir: str) -> str:
    from . import models
    from .store import Store
    return models.materialize(name, Store(workdir), seed=0).key


def run_ray(cells: list, store, g: GridSpec, *, log=print, on_result=None) -> list[CellResult]:
    """One Ray task per stage group: each base model once, then each defended model (its no-attack cell:
    defense + initial evaluation), then every attacked cell depending on its defended model.  Tasks request
    ``cpus_per_cell`` CPUs and, on the paper profile or with ``gpus_per_cell``, GPUs; the scheduler is Ray's."""
    try:
        import ray
    except ImportError as err:
        raise SddBenchError("executor 'ray' needs Ray: `pip install 'sdd-bench[ray]'`.") from err
    from . import config as C_
    from .pipeline import resolve
    opts = dict(g.ray)
    unknown = set(opts) - {"address", "num_cpus", "cpus_per_cell", "gpus_per_cell"}
    if unknown:
        raise ConfigError(f"grid {g.name!r}: unknown ray options {sorted(unknown)}; "
                          f"valid: address, num_cpus, cpus_per_cell, gpus_per_cell.")
    gpus = float(opts.get("gpus_per_cell", 1 if g.profile == "paper" else 0))
    cpus = float(opts.get("cpus_per_cell", 1))
    env = {k: v for k, v in os.environ.items()
           if k.startswith(("SDD_BENCH_", "HF_", "TRANSFORMERS_", "TOKENIZERS_", "OPENAI_"))}
    if not ray.is_initialized():
        init = {"address": opts["address"]} if opts.get("address") else {"num_cpus": opts.get("num_cpus")}
        ray.init(**init, include_dashboard=False, log_to_driver=False, runtime_env={"env_vars": env})
    workdir = str(store.root)
    cell_task = ray.remote(_ray_cell).options(num_cpus=cpus, num_gpus=gpus, max_retries=0)
    model_task = ray.remote(_ray_model).options(num_cpus=cpus, max_retries=0)
    threads = int(max(1, cpus))

    model_refs: dict[str, Any] = {}
    defended: dict[str, Any] = {}
    futures = []
    for spec in cells:
        r = resolve(spec)
        if r.model not in model_refs:
            model_refs[r.model] = model_task.remote(r.model, workdir)
        base = C_.replace(spec, attack="none", attack_options={})
        bkey = json.dumps(C_.to_dict(base), sort_keys=True)
        if bkey not in defended:
            defended[bkey] = cell_task.remote(C_.to_dict(base), workdir, threads, model_refs[r.model])
        if spec.attack == "none" and not spec.attack_options:
            futures.append(defended[bkey])
        else:
            futures.append(cell_task.remote(C_.to_dict(spec), workdir, threads, defended[bkey]))
    log(f"ray: {len(model_refs)} model task(s), {len(defended)} defended-model task(s), {len(futures)} cells "
        f"({cpus:g} CPU, {gpus:g} GPU per task)")
    out = []
    for spec, fut in zip(cells, futures):
        t0 = time.time()
        try:
            ref, cached = ray.get(fut)
        except Exception as err:  # a RayTaskError wraps the cell's own exception
            cause = getattr(err, "cause", None) or err  # Ray's RayTaskError carries the cell's exception (others: none)
            log(f"  FAILED {label(spec)}: {type(cause).__name__}: {str(cause).splitlines()[0] if str(cause) else ''}")
            out.append(CellResult(spec, None, None, False, error=f"{type(cause).__name__}: {cause}"))
            continue
        rec = store.resolve(ref)
        out.append(CellResult(spec, json.loads((rec.path / "record.json").read_text()), ref, cached,
                              seconds=time.time() - t0))
        log(f"  {label(spec)}: {'finished earlier' if cached else 'done'} -> {ref}")
        if on_result is not None:
            on_result(out[-1])
    return out


def run_grid(g: GridSpec, store, *, executor: str | None = None, progress: bool = True, log=print,
             fail_fast: bool = False, deadline: float | None = None, on_result=None,
             published: dict | None = None) -> list[CellResult]:
    """Run the grid's cells that are not finished.  ``published`` (harness.publish.published_cells): a cell whose
    record is already published is not run (nor re-published); its published record is its result."""
    from .pipeline import cell_key, finished_record, resolve
    cells = expand(g)
    ex = executor or g.executor
    if ex not in ("local", "ray"):
        raise ConfigError(f"Unknown executor {ex!r}; choose local or ray.")
    if ex == "ray" and deadline is not None:
        raise ConfigError("--until/--max-minutes need the local executor (Ray schedules every cell at once).")
    found: dict[int, CellResult] = {}
    for i, spec in enumerate(cells):
        r = resolve(spec) if published else None
        hit = published.get(cell_key(r)) if published else None
        if hit is not None and finished_record(store, r) is None:  # finished here: the store's full record
            rec, path = hit
            found[i] = CellResult(spec, rec, (rec.get("published") or {}).get("record"), True, published=str(path))
            log(f"{label(spec)}: already published -> {path}")
    rest = [spec for i, spec in enumerate(cells) if i not in found]
    if ex == "local":
        ran = run_local(rest, store, progress=progress, log=log, fail_fast=fail_fast, g=g, deadline=deadline,
                        on_result=on_result)
    else:
        ran = run_ray(rest, store, g, log=log, on_result=on_result)
    it = iter(ran)
    return [found[i] if i in found else next(it) for i in range(len(cells))]


def records_of_grid(path: str | Path, workdir: str | Path) -> list[dict]:
    """Records of the grid's finished cells in ``workdir`` (for ``sdd-bench report``); unfinished cells are skipped."""
    from .pipeline import finished_record, resolve
    from .store import Store
    store = Store(workdir)
    store.check_no_legacy()
    out = []
    for spec in expand(load_grid(path), where=str(path)):
        done = finished_record(store, resolve(spec))
        if done is not None:
            out.append(done[0])
    return out


# ------------------------------------------------------------------------------------------
# CLI
def register_cli(sub, add_common) -> dict:
    p = sub.add_parser("grid", help="run a grid spec (models × defenses × attacks × seeds): plan, run missing cells, resume",
                       description="Expand a grid YAML into cells, show the plan (finished, cached, estimated time), run the "
                                   "missing cells. Kill it at any point and re-run: finished stages are not redone.")
    p.add_argument("spec", help="grid YAML (e.g. configs/sdd_grid_smoke.yaml)")
    p.add_argument("--plan", action="store_true", help="show the plan and exit")
    p.add_argument("--all-rows", action="store_true",
                   help=f"print every row of the plan table (default: the first {PLAN_ROWS})")
    p.add_argument("--yes", action="store_true",
                   help=f"run a grid of more than {CONFIRM_CELLS} cells (refused without it)")
    p.add_argument("--attacker-budget", metavar="NAME", help="expand each fine-tuning attack into an attacker budget's "
                   "sweep: small | paper | strong (overrides the spec's attacker_budget; docs/attacker_budget.md)")
    p.add_argument("--executor", choices=("local", "ray"), help="override the spec's executor")
    p.add_argument("--ray-address", help="connect to this Ray cluster (default: start a local Ray instance)")
    p.add_argument("--fail-fast", action="store_true", help="stop at the first failing cell (default: run the others)")
    p.add_argument("--records", help="write the grid's records here as JSON lines")
    dl = p.add_mutually_exclusive_group()
    dl.add_argument("--until", metavar="HH:MM",
                    help="deadline, local time today: start no cell the plan says cannot finish by then; exit 0")
    dl.add_argument("--max-minutes", type=float, metavar="N",
                    help="deadline N minutes from now (as --until)")
    p.add_argument("--publish", nargs="?", const="results", metavar="ROOT",
                   help="publish each cell's record as it finishes into ROOT/<profile>/ (default ROOT: results, "
                        "relative to the current directory; see `sdd-bench publish`); a cell whose record is already "
                        "published there (same configs, same base model build) counts as finished and is not run")
    p.add_argument("--allow-dirty", action="store_true",
                   help="with --publish: publish records made from uncommitted code too (environment.git ending in "
                        "-dirty, or missing), marked published.forced_dirty (default: refused; see `sdd-bench publish`)")
    add_common(p)
    return {"grid": cli_grid}


def budget_line(g: GridSpec, pl: Plan) -> str:
    """What the grid's attacker budget adds: its configurations per attack and the planned cost of the budget's cells."""
    from . import budget
    b = budget.get(g.attacker_budget)
    swept = [c for c in pl.cells if c.spec.attack != "none"]
    est = [c.estimate_s for c in swept if c.state != "done"]
    cost = "unknown (no timing for this profile yet)" if any(v is None for v in est) else _fmt_s(float(sum(est)))
    return (f"attacker budget {g.attacker_budget!r}: {b.size} configurations per fine-tuning attack ({b.shape()}); "
            f"{len(swept)} attacked cells, estimated remaining compute of those cells (with their defenses) {cost}")


def parse_deadline(until: str | None, max_minutes: float | None, now: float | None = None) -> float | None:
    """``--until HH:MM`` (local time today) or ``--max-minutes N`` → epoch seconds; None without either."""
    now = time.time() if now is None else now
    if max_minutes is not None:
        if not math.isfinite(max_minutes) or max_minutes <= 0:
            raise ConfigError(f"--max-minutes must be a positive number of minutes, got {max_minutes:g}.")
        return now + 60.0 * max_minutes
    if until is None:
        return None
    try:
        hh, mm = until.split(":")
        h, m = int(hh), int(mm)
        if not (0 <= h < 24 and 0 <= m < 60):
            raise ValueError
    except ValueError:
        raise ConfigError(f"--until {until!r}: give a local time today as HH:MM (e.g. 17:30).") from None
    lt = time.localtime(now)
    t = time.mktime((lt.tm_year, lt.tm_mon, lt.tm_mday, h, m, 0, 0, 0, -1))
    if t <= now:
        raise ConfigError(f"--until {until}: that time has already passed today (now {time.strftime('%H:%M', lt)} "
                          f"local time); give a later time or --max-minutes.")
    return t


def preflight_cells(cells: list, what: str = "grid: checked") -> None:
    """:func:`pipeline.preflight` of every cell (data files and checksums, prompt overlaps, judges' data and
    credentials), reporting progress on a large grid; the first problem is raised in one line naming the cell."""
    from .pipeline import preflight, resolve
    prog = Progress(what, len(cells))
    for i, spec in enumerate(cells, 1):
        try:
            preflight(resolve(spec))
        except SddBenchError as err:
            raise type(err)(f"cell {label(spec)}: {err}") from None
        prog(i)
    prog.done(len(cells))


def cli_grid(args) -> int:
    from .store import Store, check_output_dir, check_output_file, dumps_strict
    t0 = time.time()
    deadline = parse_deadline(args.until, args.max_minutes, now=t0)  # a bad deadline before minutes of expansion
    cells: list = []
    g = load_grid(args.spec, cells_out=cells, progress=Progress(f"{args.spec}: expanded"))
    if args.attacker_budget:  # --attacker-budget (register_cli)
        from . import budget
        budget.get(args.attacker_budget)
        g = C.replace(g, attacker_budget=args.attacker_budget)
        cells = expand(g, where=str(args.spec), progress=Progress(f"{args.spec}: expanded"))
    if args.ray_address:
        g = C.replace(g, ray={**g.ray, "address": args.ray_address}, executor="ray")
    if len(cells) > CONFIRM_CELLS and not args.plan and not args.yes:
        raise ConfigError(f"{args.spec}: the grid has {len(cells):,} cells, more than {CONFIRM_CELLS}; look at "
                          f"`sdd-bench grid {args.spec} --plan` first, then run it with --yes.")
    store = Store(args.workdir)
    store.check_no_legacy()  # even for --plan: planning reads artifacts, and a legacy one would be moved aside
    if not args.plan:  # outputs first: one line now rather than a failure after the first cell
        store.check_writable()
        if args.publish:
            check_output_dir(Path(args.publish) / g.profile, "--publish")
        if args.records:
            check_output_file(args.records, "--records")
    published = None
    if args.publish:
        from .publish import published_cells
        published = published_cells(args.publish, g.profile)
    prog = Progress(f"{args.spec}: planned", len(cells))
    pl = plan(g, store, cells=cells, published=published, progress=prog)
    prog.done(len(cells))
    if g.attacker_budget:
        print(budget_line(g, pl))
    print(pl.summary())
    print(pl.stage_line())
    print(pl.table(max_rows=None if args.all_rows else PLAN_ROWS))
    if args.plan:
        return 0
    preflight_cells([c.spec for c in pl.cells if c.state not in FINISHED])  # every cell's inputs before any work
    if args.publish and not args.allow_dirty:
        from .provenance import from_commit, git_hash
        git = git_hash()
        if not from_commit(git):  # every record this run builds would be refused: say so before hours of training
            print(f"grid: the code has uncommitted changes ({git or 'no git checkout'}): the records of the cells run "
                  f"now will not be published (`--publish` refuses them); commit first, or pass --allow-dirty",
                  file=sys.stderr)
    publish_failed: list[str] = []

    def publish(res: CellResult) -> None:
        from .publish import publish_record
        try:
            p = publish_record(res.record, res.record_ref, args.publish, store_root=store.root,
                               allow_dirty=args.allow_dirty)
        except (SddBenchError, OSError) as err:
            publish_failed.append(f"{label(res.spec)}: {err}")
            print(f"  publish FAILED: {err}", file=sys.stderr)
            return
        print(f"  {'published' if p.changed else 'already published'} -> {p.path}")

    if deadline is not None:
        print(f"deadline {time.strftime('%H:%M', time.localtime(deadline))} local time: a cell starts only if its "
              f"planned time fits")
    results = run_grid(g, store, executor=args.executor, progress=not args.quiet, fail_fast=args.fail_fast,
                       deadline=deadline, on_result=publish if args.publish else None, published=published)
    failed = [r for r in results if r.error]
    skipped = [r for r in results if r.skipped]
    dt = time.time() - t0
    n = len(results)
    npub = sum(r.published is not None for r in results)
    pub_s = f" ({npub} of them published under {args.publish})" if npub else ""
    print(f"\ngrid {g.name!r}: {n - len(failed) - len(skipped)}/{n} cells finished, {sum(r.cached for r in results)} "
          f"were already finished{pub_s}; {dt:.1f}s wall ({dt / max(1, n):.2f}s per cell)")
    if skipped:
        print(f"deadline: {len(skipped)} cell(s) not started because the plan says they cannot finish by "
              f"{time.strftime('%H:%M', time.localtime(deadline))}; re-run the same command later to continue:")
        for r in skipped:
            print(f"  not started: {label(r.spec)} ({r.skipped})")
    if args.records:
        with open(args.records, "w") as f:
            for r in results:
                if r.record is not None:
                    f.write(dumps_strict(r.record, sort_keys=True) + "\n")
    for r in failed:
        print(f"FAILED {label(r.spec)}: {r.error}", file=sys.stderr)
    for line in publish_failed:
        print(f"PUBLISH FAILED {line}", file=sys.stderr)
    return 1 if failed or publish_failed else 0
