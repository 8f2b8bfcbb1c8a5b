"""Attack trajectories (issue 23): checkpoints saved during one attack run, each evaluated as its own cached stage."""
import json

import pytest

from sdd_bench.harness import pipeline
from sdd_bench.harness.errors import ConfigError
from sdd_bench.harness.training import checkpoint_steps


def _spec(**kw):
    base = dict(profile="tiny", capability=True, n_harmful=4, n_benign=2, n_xstest=0, judges=[], defense="none",
                attack="beavertails-10", attack_options={"max_steps": 4, "checkpoints": [0.25, 0.5, 1.0]})
    base.update(kw)
    return pipeline.spec_from_mapping(base)


def test_checkpoint_steps_round_up_and_share():
    assert checkpoint_steps([0.1, 0.25, 0.5, 1.0], 40) == {4: [0.1], 10: [0.25], 20: [0.5], 40: [1.0]}
    assert checkpoint_steps([0.1, 0.25, 1.0], 2) == {1: [0.1, 0.25], 2: [1.0]}  # two fractions, one step


def test_bad_checkpoints_are_one_clear_error():
    with pytest.raises(ConfigError, match=r"checkpoints must be fractions .* in \(0, 1\]"):
        pipeline.resolve(_spec(attack_options={"checkpoints": [0.5, 1.5]}))


def test_default_options_leave_the_attack_key_alone():
    plain = pipeline.resolve(_spec(attack_options={}))
    spelled = pipeline.resolve(_spec(attack_options={"checkpoints": [], "seed": None, "warmup_ratio": None}))
    assert plain.attack.spec() == spelled.attack.spec()
    assert "checkpoints" not in plain.attack.spec()["config"] and "seed" not in plain.attack.spec()["config"]


@pytest.fixture(scope="module")
def traj_cell(session_store):
    logs = []
    rec, art = pipeline.run_cell(_spec(), session_store, progress=False, log=logs.append)
    return rec, art, logs


def test_one_evaluation_per_checkpoint_and_the_last_is_the_final(traj_cell):
    rec, _, logs = traj_cell
    traj = rec["trajectory"]
    assert [p["step"] for p in traj] == [0, 1, 2, 4] and [p["source"] for p in traj] == \
        ["initial", "checkpoint", "checkpoint", "final"]
    assert [p["fraction"] for p in traj] == [0.0, 0.25, 0.5, 1.0]
    assert traj[-1]["metrics"] == rec["metrics"]["attacked"] and traj[0]["metrics"] == rec["metrics"]["initial"]
    assert sum("evaluate attack checkpoint" in line for line in logs) == 2  # the final model is not evaluated twice
    for p in traj:
        h = p["metrics"]["harmful"]["refusal_rate"]
        assert len(h["ci95"]) == 2 and p["metrics"]["capability"]["tasks"]
    # each checkpoint's evaluation is its own stage, keyed by the attack key + step
    gens = [v for k, v in rec["artifacts"].items() if k.startswith("trajectory/") and k.endswith("generate/harmful")]
    assert len(set(gens)) == 2 and rec["attack_info"]["trajectory_steps"]["total"] == 4
    assert [p["examples_seen"] for p in traj[1:]] == [10, 20, 40]


def test_second_run_is_a_cache_hit(traj_cell, session_store):
    rec, art, _ = traj_cell
    logs = []
    rec2, art2 = pipeline.run_cell(_spec(), session_store, progress=False, log=logs.append)
    assert art2.path == art.path
    assert not any(("done" in l and ("generate" in l or "capability" in l)) or "trained" in l for l in logs), logs
    assert rec2["trajectory"] == rec["trajectory"]
