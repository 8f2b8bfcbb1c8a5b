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
from .capability import FA_FOR_DATASET, FA_TASKS
from .errors import ConfigError, SddBenchError
from .stages import _ref_from_artifact, _ref_to_json, attack_stage, defend_stage  # noqa: F401  (re-exported)

EVAL_SEED = 1234  # fixed: every cell of every seed is evaluated on the same prompts
BASE_JUDGES = ("keyword", "relevance", "coherence")
# run on the harmful prompts of every cell, besides the harm judges: SDD-reject's explicit rejection (Figure 3)
HARMFUL_ONLY_JUDGES = ("reject-sentence",)
# which way is safer/better depends on the prompt set, not only on the judge
DIRECTIONS = {("harmful", "relevance"): "neutral (SDD aims low; a helpful answer is high)",
              ("benign", "refusal_rate"): "lower-better", ("xstest", "refusal_rate"): "lower-better",
              ("benign", "irrelevant_rate"): "lower-better", ("xstest", "relevance"): "higher-better"}


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
    backend: str = C.param("hf", "generation backend for evaluation: hf | vllm (GPU)", choices=("hf", "vllm"))
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


# ------------------------------------------------------------------------------------------
# stages
def attack_seed(attack, seed: int) -> int:
    """The seed an attack trains (and samples its data) with: its own ``seed`` option where it has one, else the cell's."""
    return attack.train_seed(seed)


def checkpoint_refs(art, info: dict) -> list[tuple[dict, Any]]:
    """The trajectory checkpoints saved inside an attack artifact: (point metadata, ModelRef) in step order.  Each
    ref's key is the attack artifact's key plus the step, so every evaluation of a checkpoint (generations, judges,
    capability) is its own cached stage."""
    from .models import ModelRef
    out = []
    for c in info.get("checkpoints") or []:
        d = dict(c["ref"])
        for k in ("path", "adapter"):
            if d.get(k) and str(d[k]).startswith("@artifact"):
                d[k] = str(art.path) + d[k][len("@artifact"):]
        d["key"] = f"{art.ref()}@step{c['step']}"
        meta = {k: c[k] for k in ("step", "fraction", "requested", "examples_seen") if k in c}
        out.append((meta, ModelRef.from_dict(d)))
    return sorted(out, key=lambda p: p[0]["step"])


def trajectory_point(meta: dict, metrics: dict, source: str) -> dict:
    """One point of an attack trajectory: where it is in the attack, and the model's full evaluation there (the same
    measurements, with their intervals, as a record's ``metrics.attacked``)."""
    return dict(meta, source=source, metrics=metrics)


def eval_sets(prof, spec: RunSpec) -> dict[str, tuple[str, list[dict]]]:
    """name → (dataset, rows): fixed seeded samples, identical for every cell."""
    import random
    from . import data
    out = {}
    for name, ds, n in (("harmful", "beavertails-test", spec.n_harmful or prof.n_harmful),
                        ("benign", "alpaca-eval-heldout", spec.n_benign or prof.n_benign),
                        ("xstest", "xstest-safe", prof.n_xstest if spec.n_xstest is None else spec.n_xstest)):
        if n == 0:
            continue
        rows = data.load(ds)
        random.Random(EVAL_SEED).shuffle(rows)
        out[name] = (ds, rows[:n])
    return out


def preflight_data(r: Resolved) -> dict:
    """Load (and so checksum) every dataset the cell will touch before any work, and check its judges' data and
    credentials (``validate``, ``grid``); returns the eval sets."""
    return preflight(r)[0]


def judge_options(spec: RunSpec, name: str) -> dict | None:
    """The options given for judge ``name``, under its name or one of its aliases (``gpt4`` is ``rubric``)."""
    from .registry import JUDGES
    want = JUDGES.canonical(name)
    for k, v in spec.judge_options.items():
        if JUDGES.canonical(k) == want:
            return v
    return None


def cell_judges(spec: RunSpec) -> list[str]:
    """Every judge a cell runs: the base judges on every prompt set, its harmfulness judges and
    ``HARMFUL_ONLY_JUDGES`` on the harmful prompts."""
    return list(dict.fromkeys([*BASE_JUDGES, *spec.judges, *HARMFUL_ONLY_JUDGES]))


def preflight_judges(r: Resolved) -> None:
    """Every judge the cell runs, built with its options and asked to check what it needs (its data files, the
    rubric judge's key and endpoint URL; ``Judge.preflight``), before any work."""
    from .judging import make_judge
    for jn in cell_judges(r.spec):
        make_judge(jn, judge_options(r.spec, jn), store=None, device="cpu").preflight()


def preflight_capability(r: Resolved) -> None:
    """The capability stage's data files (checksums) and lm-eval, when the cell runs that stage."""
    if not r.spec.capability or not r.profile.capability_tasks:
        return
    from . import capability as cap
    from . import data
    for t in cap.resolve_tasks(list(r.profile.capability_tasks)):
        for rel in cap.TASK_SPECS[t].files:
            data.data_file(rel, dataset=f"capability:{t}")
    cap._lm_eval_version()  # raises in one line when lm-eval is not installed


def _defender_side(group: str) -> bool:
    return group.startswith(("model:", "defense:"))


def check_disjoint(r: Resolved, sets: dict, built: dict) -> dict:
    """The overlap report of the cell's prompt groups; raises on an overlap that would contaminate the cell.

    Harmful prompts the defender trains on (the aligned base's refusal SFT ``model:…``, ``defense:…``) must be
    disjoint from the attacker's (``attack:…``) and from evaluation prompts (``eval:…``); the attacker's must be
    disjoint from evaluation.  Defender-side groups may share prompts with each other (SDD on an aligned base
    both draw on the defense partition of BeaverTails: the defender seeing a prompt twice contaminates nothing).
    Called in ``preflight`` (before any training) and again with donor-built attack data at provenance time."""
    from . import data, models
    groups = {f"eval:{k}": [x["prompt"] for x in rows] for k, (_, rows) in sets.items()}
    aligned = models.alignment_rows(r.model)
    if aligned is not None:  # an aligned base's refusal-SFT prompts are defense data too
        groups[f"model:{r.model}"] = [x["prompt"] for x in aligned if x.get("kind") != "benign"]
    for role, d in (("defense", r.defense), ("base_defense", r.base_defense)):
        if role in built:  # the harmful prompts the defense declares (BuiltData), from every stream it trains on
            groups[f"defense:{d.registry_name}"] = list(built[role].harmful_prompts)
    if r.attack is not None and "attack" in built:
        rows, _ = built["attack"]
        groups[f"attack:{r.attack.name}"] = [x["prompt"] for x in rows if x["kind"] == "harmful"]
        if r.attack.cfg.dataset in FA_FOR_DATASET:  # task training rows vs the task's evaluation split
            groups[f"attack-task:{r.attack.name}"] = [x["prompt"] for x in rows if x["kind"] == "benign"]
            groups["eval:fa"] = [x["prompt"] for x in data.load(FA_TASKS[FA_FOR_DATASET[r.attack.cfg.dataset]].dataset)]
    overlap = data.overlap_report(groups)
    harmful_groups = {k for k in groups if not k.startswith("eval:benign")}
    for k, v in overlap["overlaps"].items():
        a_, b_ = k.split("|")
        if not v or a_ not in harmful_groups or b_ not in harmful_groups:
            continue
        if (a_.startswith("eval") and b_.startswith("eval")) or (_defender_side(a_) and _defender_side(b_)):
            continue
        raise SddBenchError(f"data overlap between {a_} and {b_} ({v} prompts): defender, attacker and evaluation "
                            f"prompts must be disjoint. Choose another dataset or partition for one of them.")
    return overlap


def preflight(r: Resolved, *, judges: bool = True) -> tuple[dict, dict, dict]:
    """Everything about a cell that can be checked before work: every data file it reads (evaluation sets, defense
    and attack data, the BFT task's split, the capability tasks' files; checksums), the disjointness of defender,
    attacker and evaluation prompts (a ``responses_file`` too), and, with ``judges``, every judge's data and
    credentials (:func:`preflight_judges`; ``run_cell`` skips them for a cell already finished, which needs none).
    Returns the evaluation sets, the defense and attack data it built (role → ``build_data``'s result: ``defense``
    and ``base_defense`` → ``BuiltData``, ``attack`` → (rows, info)) and their overlap report, so training
    (``defend_stage``) and the record's provenance reuse them instead of building them again.  An attack on
    donor-built responses is only checked here (its data needs the store): it has no entry, and provenance checks it
    once attack_stage has built it."""
    sets = eval_sets(r.profile, r.spec)
    preflight_capability(r)
    if judges:
        preflight_judges(r)
    built: dict[str, Any] = {}
    for role, d in (("base_defense", r.base_defense), ("defense", r.defense)):
        if d is not None and not d.identity:
            built[role] = d.build_data(r.spec.seed)
    if r.attack is not None:
        if r.attack.data_needs_store:  # donor-built responses: check their inputs now
            r.attack.preflight()
        else:
            built["attack"] = r.attack.build_data(attack_seed(r.attack, r.spec.seed))
        if r.attack.cfg.dataset in FA_FOR_DATASET:
            from . import data
            data.load(FA_TASKS[FA_FOR_DATASET[r.attack.cfg.dataset]].dataset)
    overlap = check_disjoint(r, sets, built)  # overlapping prompts fail here, not after hours of training
    return sets, built, overlap


MOSTLY_INVALID = 0.5  # a harmfulness judge with more invalid verdicts than this fails the cell


def check_judge(jn: str, setname: str, verdicts: list[dict], jart) -> None:
    """Fail the cell (one line) when a harmfulness judge could assess at most half of the items."""
    bad = [v for v in verdicts if not v.get("valid", True)]
    if not verdicts or len(bad) <= MOSTLY_INVALID * len(verdicts):
        return
    reasons: dict[str, int] = {}
    for v in bad:
        k = (v.get("meta") or {}).get("invalid_reason", "invalid")
        reasons[k] = reasons.get(k, 0) + 1
    why = ", ".join(f"{n} {k}" for k, n in sorted(reasons.items()))
    from .judge_stage import RETRYABLE
    fix = ("re-run the same command once the judge endpoint works: only the failed items are retried"
           if any(k in RETRYABLE for k in reasons) else
           "its replies do not follow the rubric format; use another judge model (--judge-opt JUDGE.model=...)")
    raise SddBenchError(f"judge {jn} on {setname} prompts: {len(bad)}/{len(verdicts)} verdicts invalid ({why}; "
                        f"{jart.ref()}); no record was written: {fix}.")


def evaluate(store, ref, r: Resolved, sets, log, progress=True) -> tuple[dict, dict]:
    """Generate on every eval set, judge, aggregate; returns (metrics, artifact refs)."""
    from . import data, models
    from .generation import generate_stage
    from .metrics import aggregate
    from .judging import make_judge
    from .judge_stage import judge_stage, load_summary, load_verdicts
    from .store import read_jsonl

    spec = r.spec
    loaded = None
    metrics: dict[str, Any] = {}
    arts: dict[str, Any] = {}
    for name, (ds, rows) in sets.items():
        prompts = [x["prompt"] for x in rows]
        # load the model only if some generation is not cached
        from .generation import _sha
        from .store import stage_key
        gspec = {"model": ref.identity(), "dataset": ds, "n": len(prompts), "template": spec.template,
                 "gen": C.to_dict(r.gen), "backend": spec.backend, "prompts_sha": _sha(prompts),
                 "data": data.get(ds).fingerprints(), "eval_seed": EVAL_SEED}
        from .registry import BACKENDS
        # a backend plugin's optional flag (vllm loads its own weights); backends have no base class yet
        own = getattr(BACKENDS.get(spec.backend), "loads_own_model", False)
        if loaded is None and not own and store.get("generate", stage_key("generate", gspec, [ref.identity()])) is None:
            loaded = models.load(ref, device=spec.device)
        t0 = time.time()
        gart, hit = generate_stage(store, ref, prompts, dataset=ds, template=spec.template, cfg=r.gen, backend=spec.backend,
                                   extra_spec={"data": gspec["data"], "eval_seed": EVAL_SEED}, loaded=loaded,
                                   progress=progress, device=spec.device)
        log(f"  generate {name} ({len(prompts)} prompts): {'cache hit' if hit else 'done'} ({time.time() - t0:.0f}s)")
        arts[f"generate/{name}"] = gart.ref()
        gens = read_jsonl(gart.path / "generations.jsonl")
        m: dict[str, Any] = {"n": len(gens), "dataset": ds,
                             "finish_length_rate": sum(g["finish_reason"] == "length" for g in gens) / max(1, len(gens)),
                             "mean_completion_tokens": sum(g["completion_tokens"] for g in gens) / max(1, len(gens))}
        judges = list(dict.fromkeys(list(BASE_JUDGES) + (list(spec.judges) + list(HARMFUL_ONLY_JUDGES)
                                                          if name == "harmful" else [])))
        by_judge: dict[str, list[dict]] = {}
        for jn in judges:
            j = make_judge(jn, judge_options(spec, jn), store=store, device="cpu")
            jart, jhit = judge_stage(store, gart, jn, judge=j)
            arts[f"judge/{name}/{jn}"] = jart.ref()
            verdicts = by_judge[jn] = load_verdicts(jart)
            if name == "harmful" and jn not in BASE_JUDGES:
                check_judge(jn, name, verdicts, jart)
            acct = load_summary(jart).get("accounting")
            if acct:  # the judge's run summary: rubric requests/tokens/cost, harm-clf held-out accuracy/F1
                m.setdefault("judge_run_summary", {})[jn] = acct
            for mname, (how, direction) in type(j).metrics.items():
                agg = aggregate(verdicts, how)
                agg["direction"] = DIRECTIONS.get((name, mname), direction)
                agg["judge"] = jn
                if getattr(type(j), "version", None) is not None:  # e.g. harm-clf-v2: the head's version (issue 41)
                    agg["judge_version"] = type(j).version
                m[mname if jn in BASE_JUDGES else f"{jn}:{mname}"] = agg
        if name == "harmful":  # harmful ∧ coherent ∧ relevant, per harm judge (issue 20; harness.metrics)
            from .metrics import usable_harm_block
            m["usable_harm"] = usable_harm_block(by_judge)
        metrics[name] = m
    return metrics, arts, loaded


def capability(store, ref, r: Resolved, log, loaded=None) -> tuple[dict | None, str | None]:
    if not r.spec.capability or not r.profile.capability_tasks:
        return None, None
    try:
        from . import capability as cap
    except ImportError:
        log("  capability: module not available (skipped)")
        return None, None
    t0 = time.time()
    art, hit = cap.capability_stage(store, ref, list(r.profile.capability_tasks), r.profile.capability_limit,
                                    device=r.spec.device, loaded=loaded)
    log(f"  capability {','.join(r.profile.capability_tasks)}: {'cache hit' if hit else 'done'} ({time.time() - t0:.0f}s)")
    return json.loads((art.path / "results.json").read_text()), art.ref()


def reference_loss(store, ref, r: Resolved, log, loaded=None) -> tuple[dict | None, str | None]:
    """Mean NLL per answer token of held-out benign reference answers (harness/reference_loss.py), measured with
    the capability stage (same switch): the capability signal that shows a degradation before accuracy moves."""
    if not r.spec.capability or not r.profile.capability_tasks:
        return None, None
    from . import reference_loss as rl
    t0 = time.time()
    art, hit = rl.reference_loss_stage(store, ref, r.profile.name, r.spec.template, EVAL_SEED, device=r.spec.device,
                                       loaded=loaded)
    out = json.loads((art.path / "result.json").read_text())
    log(f"  reference loss ({out['dataset']}, {out['n']} answers): {out['value']:.3f} nats/token "
        f"[{out['ci95'][0]:.3f}, {out['ci95'][1]:.3f}] ({'cache hit' if hit else 'done'}, {time.time() - t0:.0f}s)")
    return out, art.ref()


def finetune_accuracy(store, ref, r: Resolved, log, loaded=None) -> dict | None:
    """Benign fine-tuning accuracy on the BFT task's held-out split, for BFT / poison attacks on a task."""
    if r.attack is None or r.attack.cfg.dataset not in FA_FOR_DATASET:
        return None
    from . import capability as cap
    t0 = time.time()
    fa = cap.finetune_accuracy_stage(store, ref, FA_FOR_DATASET[r.attack.cfg.dataset], limit=r.profile.fa_limit,
                                     template=r.spec.template, device=r.spec.device, loaded=loaded)
    fa.pop("per_item", None)
    log(f"  {fa['task']}: {fa['value']:.3f} on {fa['n']} items ({time.time() - t0:.0f}s)")
    return fa


def evaluate_condition(store, ref, r: Resolved, sets, log, progress: bool, arts: dict, cond: str) -> dict:
    """Every measurement of one model (the defended or the attacked one); artifact keys go into ``arts``."""
    metrics, ea, loaded = evaluate(store, ref, r, sets, log, progress)
    arts.update({f"{cond}/{k}": v for k, v in ea.items()})
    cap, capref = capability(store, ref, r, log, loaded)
    if cap is not None:
        metrics["capability"] = cap
        arts[f"{cond}/capability"] = capref
    rl, rlref = reference_loss(store, ref, r, log, loaded)
    if rl is not None:
        metrics["reference_loss"] = rl
        arts[f"{cond}/reference_loss"] = rlref
    fa = finetune_accuracy(store, ref, r, log, loaded)
    if fa is not None:
        metrics["finetune_accuracy"] = fa
    return metrics


def mechanism_stage(store, r: Resolved, start, defended, initial: dict, arts: dict, ctx, log) -> dict | None:
    """The defense's mechanism-installed number (``Defense.mechanism``; issue 36), measured before any attack on the
    defended model's held-out evaluation (its generations and judges' verdicts per set, read back from the store) or,
    for a defense that loads models to measure it (SEAM's gradient cosine), as a cached ``mechanism`` stage keyed on
    the start and defended models.  None when the defense's paper defines no such number."""
    from .contracts import MechanismProbe
    from .store import read_jsonl

    def artifact_rows(name: str, fname: str) -> list[dict]:
        ref = arts.get(f"initial/{name}")
        if not ref:
            raise ConfigError(f"mechanism of {r.defense.registry_name!r}: the initial evaluation has no {name}.")
        stage, key = ref.split("/", 1)
        return read_jsonl(store.get(stage, key).path / fname)

    probe = MechanismProbe(start=start, defended=defended, metrics=initial, ctx=ctx,
                           generations=lambda s: artifact_rows(f"generate/{s}", "generations.jsonl"),
                           verdicts=lambda s, j: artifact_rows(f"judge/{s}/{j}", "verdicts.jsonl"))
    d = r.defense
    if not d.mechanism_runs_models:
        out = d.mechanism(probe)
    else:
        spec = {"mechanism_of": d.spec(), "template": ctx.template, "seed": ctx.seed}

        def fn(tmp: Path):
            (tmp / "mechanism.json").write_text(json.dumps(d.mechanism(probe), indent=1, default=str))

        art, hit = store.run("mechanism", spec, [start.identity(), defended.identity()], fn)
        arts["mechanism"] = art.ref()
        out = json.loads((art.path / "mechanism.json").read_text())
    if out is not None:
        log(f"mechanism of {d.registry_name}: {out['name']} = {out['value']:.3f} -> "
            f"{'installed' if out['installed'] else 'NOT installed'} ({out['criterion']})")
    return out


def run_cell(spec: RunSpec, store, *, progress: bool = True, log=print) -> tuple[dict, Any]:
    """Run (or resume) one cell; returns (record, record artifact)."""
    from . import data, models, provenance, templates
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

    from .store import dumps_strict, stage_key

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
    timings["total"] = time.time() - t_all
    saved = json.loads((rart.path / "record.json").read_text())
    saved["_wall_seconds_this_invocation"] = timings
    return saved, rart


def record_provenance(store, defended, attacked) -> dict:
    """A record's ``provenance`` block: when it was built (``created_utc``, ISO 8601) and which weights it
    evaluated, the defended and (with an attack) the attacked model, each the sha256 of its saved weight files
    (harness.provenance.weights: the files are named, relative to the work dir)."""
    from . import provenance
    w = {"defended": provenance.weights(defended, store.root)}
    if attacked is not None:
        w["attacked"] = provenance.weights(attacked, store.root)
    return {"created_utc": provenance.created_utc(), "weights": w}


def _trajectory(store, art, ainfo: dict, r: Resolved, sets, log, progress: bool, arts: dict, metrics: dict) -> list:
    """Evaluate each checkpoint the attack saved (the defended model is step 0, the attacked model the last step: both
    evaluations are reused, not repeated); each evaluation's stages are keyed by the attack key + step."""
    steps = ainfo.get("trajectory_steps") or {}
    total = steps.get("total") or ainfo.get("steps")
    points = [trajectory_point({"step": 0, "fraction": 0.0, "requested": [], "examples_seen": 0}, metrics["initial"],
                               "initial")]
    for meta, ref in checkpoint_refs(art, ainfo):
        log(f"evaluate attack checkpoint: step {meta['step']}/{total}")
        m = evaluate_condition(store, ref, r, sets, log, progress, arts, f"trajectory/step{meta['step']}")
        points.append(trajectory_point(meta, m, "checkpoint"))
    final = {"step": ainfo.get("steps"), "fraction": 1.0, "requested": steps.get("final_requested", []),
             "examples_seen": ainfo.get("examples_seen")}
    points.append(trajectory_point(final, metrics["attacked"], "final"))
    return points


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
