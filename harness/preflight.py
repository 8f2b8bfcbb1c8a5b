"""The preflight of a cell: every input checked before any work (data checksums, prompt overlaps between the
defender's, the attacker's and the evaluation's data, judges' data and credentials, capability tasks), as
``validate`` and ``grid`` run it and as ``run_cell`` runs it first.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .capability import FA_FOR_DATASET, FA_TASKS
from .errors import SddBenchError
from .stages import EVAL_SEED, attack_seed, cell_judges, judge_options

if TYPE_CHECKING:  # annotations only
    from .pipeline import Resolved, RunSpec


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
