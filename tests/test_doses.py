"""Attacks at the budgets their labels claim (issue 36): a profile's step limit caps the recipe's steps, and every
record states the dose its trainer ran."""
import copy
import json
from pathlib import Path

import pytest

from sdd_bench.harness import budget, pipeline, plugins
from sdd_bench.harness.registry import ATTACKS
from sdd_bench.harness.training import dose
from sdd_bench.leaderboards.records import Loaded, misstated_dose, withdraw_misstated

REPO = Path(__file__).resolve().parent.parent
plugins.declare()  # the built-in attacks and defenses, as the CLI registers them


@pytest.mark.parametrize("profile,expected", [
    # Qi et al. 2023: 5 epochs at batch 10 → 5 × ⌈N / 10⌉ steps; smoke caps at 40, paper does not cap
    ("smoke", {"beavertails-10": 5, "beavertails-50": 25, "beavertails-100": 40, "beavertails-1k": 40,
               "advbench-10": 5, "advbench-50": 25, "advbench-1k": 40}),
    ("paper", {"beavertails-10": 5, "beavertails-50": 25, "beavertails-100": 50, "beavertails-1k": 500}),
])
def test_smoke_caps_the_qi2023_recipe_instead_of_replacing_it(profile, expected):
    got = {name: ATTACKS.get(name).make(profile).planned_steps() for name in expected}
    assert got == expected


def test_seam_recipe_is_capped_too():
    # SEAM's attack: 1 epoch at batch 4 → 250 steps on 1K examples; smoke caps at 40, paper runs all 250
    assert ATTACKS.get("beavertails-1k-seam").make("smoke").planned_steps() == 40
    assert ATTACKS.get("beavertails-1k-seam").make("paper").planned_steps() == 250


def test_trainer_runs_the_planned_steps():
    ten = ATTACKS.get("beavertails-10").make("smoke")
    assert ten.train_config(0).max_steps is None and ten.train_config(0).epochs == 5.0  # the recipe's epochs: 5 steps
    hundred = ATTACKS.get("beavertails-100").make("smoke")
    assert hundred.train_config(0).max_steps == 40  # the cap binds
    exact = ATTACKS.get("beavertails-10").make("smoke", {"steps": 20})
    assert exact.planned_steps() == 20 and exact.train_config(0).max_steps == 20  # the budget's exact steps


def test_key_changes_only_where_the_run_changed():
    # the cap binds at N = 100 (50 recipe steps > 40): the run is what the old rule ran, the key names no steps
    assert "steps_run" not in ATTACKS.get("beavertails-100").make("smoke").spec()
    # at N = 10 the old rule ran 40 steps, the new one 5: the key must differ from the old run's
    assert ATTACKS.get("beavertails-10").make("smoke").spec()["steps_run"] == 5
    assert "steps_run" not in ATTACKS.get("beavertails-10").make("paper").spec()  # no cap, no old run to tell apart
    # a cap equal to the recipe's steps ran the same steps under both rules: same key
    assert "steps_run" not in ATTACKS.get("beavertails-10").make("smoke", {"max_steps": 5}).spec()


def test_dose_counts_what_the_trainer_fed():
    assert dose(5, 10, 10) == {"steps": 5, "batch_size": 10, "examples_seen": 50, "epochs_run": 5.0}
    assert dose(40, 10, 100)["examples_seen"] == 400 and dose(40, 10, 100)["epochs_run"] == 4.0
    # 15 rows at batch 10: two batches an epoch (10 + 5), so 3 steps = one epoch and one batch = 25 examples
    assert dose(3, 10, 15)["examples_seen"] == 25


def test_budget_steps_axis_sets_exact_steps_on_the_capped_attack():
    strong = budget.expand_attack("strong", "beavertails-10", {}, "smoke", 0)
    assert {o.get("steps") for o in strong} == {1, None, 20}  # ×¼ / ×1 / ×4 of the 5 steps the 10-shot attack runs


def _record(steps, batch, rows, seen):
    return {"cell": {"defense": "none", "attack": "beavertails-10"}, "metrics": {},
            "attack_info": {"steps": steps, "examples": rows, "examples_seen": seen,
                            "train_config": {"batch_size": batch, "grad_accum": 1}}}


def test_a_record_stating_another_dose_is_withdrawn():
    honest, legacy = _record(5, 10, 10, 50), _record(40, 10, 10, 50.0)
    assert misstated_dose(honest) is None
    assert "ran 40 steps × batch 10 over 10 rows = 400" in misstated_dose(legacy)
    lines = []
    kept = withdraw_misstated([Loaded(honest, "a.json"), Loaded(legacy, "b.json")], log=lines.append)
    assert [k.source for k in kept] == ["a.json"] and len(lines) == 1 and "withdrawn: b.json" in lines[0]
    assert misstated_dose({"cell": {}, "metrics": {}}) is None  # no attack: nothing to check


def test_no_published_record_states_a_dose_other_than_it_ran():
    bad = {}
    for f in sorted((REPO / "results").glob("*/*.json")):
        why = misstated_dose(json.loads(f.read_text()))
        if why:
            bad[f.name] = why
    assert not bad, bad


def test_the_report_withdraws_a_legacy_record_and_keeps_the_honest_one(tmp_path):
    from test_leaderboards import make_record, read_csv, report
    honest = make_record("none", "beavertails-10", dataset="beavertails-attack", n=10, harm=0.5)
    honest["attack_info"] = _record(5, 10, 10, 50)["attack_info"]
    legacy = make_record("sdd", "beavertails-10", dataset="beavertails-attack", n=10, harm=0.9)
    legacy["attack_info"] = _record(40, 10, 10, 50.0)["attack_info"]
    rep = report(tmp_path, [honest, legacy])
    assert {r["defense"] for r in read_csv(rep.out / "long.csv")} == {"none"}
    assert sum("withdrawn: " in line and "ran 40 steps" in line for line in rep.log) == 1


def test_tiny_attack_record_states_the_trainers_dose(session_store):
    # the tiny profile caps at 2 steps; a cap of 8 is above the 10-shot recipe's 5 steps, so 5 run
    spec = pipeline.spec_from_mapping(dict(profile="tiny", capability=False, n_harmful=2, n_benign=1, n_xstest=0,
                                           judges=[], defense="none", attack="beavertails-10",
                                           attack_options={"max_steps": 8}))
    rec, _ = pipeline.run_cell(spec, session_store, progress=False, log=lambda *_: None)
    info = rec["attack_info"]
    assert info["steps"] == 5 and info["examples_seen"] == 50 and info["epochs_run"] == 5.0
    assert info["recipe_steps"] == 5 and info["step_cap"] == 8
    assert misstated_dose(rec) is None
    # every cell also measures SDD-reject's explicit rejection on the harmful prompts (Figure 3; issue 37)
    assert "reject-sentence:explicit_rejection_rate" in rec["metrics"]["attacked"]["harmful"]
    broken = copy.deepcopy(rec)
    broken["attack_info"]["steps"] = 8
    assert misstated_dose(broken) is not None
