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


# ------------------------------------------------------------------------------------------
# the report: a trajectory figure and CSV from synthetic records
def _traj_record(defense, harms, caps, seed=0):
    from test_leaderboards import _condition, make_record
    rec = make_record(defense, "beavertails-100", dataset="beavertails-attack", harm0=harms[0], harm=harms[-1],
                      cap0=caps[0], cap=caps[-1], seed=seed, attack_options={"checkpoints": [0.25, 0.5, 1.0]})
    steps = [0, 10, 20, 40]
    rec["trajectory"] = [{"step": st, "fraction": st / 40, "examples_seen": st * 10,
                          "source": "initial" if st == 0 else "final" if st == 40 else "checkpoint",
                          "metrics": _condition(h, 0.1, c, None, None)} for st, h, c in zip(steps, harms, caps)]
    return rec


def test_trajectory_figure_and_csv_from_synthetic_records(tmp_path):
    from test_leaderboards import make_record, read_csv, report
    recs = [_traj_record("none", [0.1, 0.5, 0.8, 0.9], [0.6, 0.6, 0.55, 0.5]),
            _traj_record("sdd", [0.05, 0.1, 0.3, 0.2], [0.6, 0.4, 0.3, 0.26]),
            make_record("sdd", "beavertails-100", dataset="beavertails-attack", harm=0.2, cap=0.26)]  # plain twin
    rep = report(tmp_path, recs)
    png = (rep.out / "attack_trajectory.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000 and "attack_trajectory.png" in rep.files
    colours = json.loads((rep.out / "figures.json").read_text())
    assert set(colours["figures"]["attack_trajectory.png"]) == {"none", "sdd"}  # one colour per defense, shared
    rows = read_csv(rep.out / "trajectory.csv")
    sdd = [r for r in rows if r["defense"] == "sdd" and r["quantity"] == "harm-clf:harmful_rate"]
    assert [int(r["step"]) for r in sdd] == [0, 10, 20, 40] and float(sdd[2]["mean"]) == pytest.approx(0.3)
    assert all(float(r["ci_lo"]) <= float(r["mean"]) <= float(r["ci_hi"]) for r in sdd)  # harness.metrics.interval
    assert "checkpoints" not in sdd[0]["attack"]  # the checkpoints add evaluations, not another attack
    # the record with a trajectory is kept over its plain twin (same cell and seed)
    assert any("duplicate record" in line and "r001" in line.split("kept")[1].split(",")[0] for line in rep.log)


# ------------------------------------------------------------------------------------------
# the checkpoints themselves (harness/training.py: train_sft(save_at_steps=...))
PAIRS = [{"prompt": "Name a fruit.", "response": "Apple, a sweet fruit that grows on trees."},
         {"prompt": "Say hello.", "response": "Hello! How can I help you today?"}] * 4


def _weights(path):
    from safetensors.torch import load_file
    out = {}
    for f in sorted(path.glob("*.safetensors")):
        out.update(load_file(str(f)))
    assert out, f"no weights under {path}"
    return out


def test_a_checkpoint_is_the_run_at_that_step(tiny_ref, tmp_path):
    """Constant lr: the step-1 checkpoint of a 3-step run has the weights of a 1-step run (a prefix), and saving it
    does not change the run (its final weights equal a run without checkpoints)."""
    from sdd_bench.harness.training import TrainConfig, train_sft
    cfg = TrainConfig(lr=1e-2, max_steps=3, batch_size=4, seed=3)
    _, info = train_sft(tiny_ref, PAIRS, cfg, tmp_path / "traj", "chat", device="cpu", progress=False,
                        save_at_steps=[1])
    (ck,) = info["checkpoints"]
    assert ck["step"] == 1 and ck["ref"].adapter is None and "checkpoints/step-000001" in ck["ref"].path
    train_sft(tiny_ref, PAIRS, TrainConfig(lr=1e-2, max_steps=1, batch_size=4, seed=3), tmp_path / "one", "chat",
              device="cpu", progress=False)
    train_sft(tiny_ref, PAIRS, cfg, tmp_path / "plain", "chat", device="cpu", progress=False)
    a, b = _weights(tmp_path / "traj" / "checkpoints" / "step-000001"), _weights(tmp_path / "one" / "model")
    assert all((a[k] == b[k]).all() for k in b)
    a, b = _weights(tmp_path / "traj" / "model"), _weights(tmp_path / "plain" / "model")
    assert all((a[k] == b[k]).all() for k in b)


def test_lora_checkpoints_are_adapters_or_merged_like_the_final_model(tiny_ref, tmp_path):
    """A LoRA attack's checkpoints have the final model's form: an adapter over a plain model; over a model that is
    itself an adapter, merged like the final model, so every trajectory point loads the same way."""
    from sdd_bench.harness import models
    from sdd_bench.harness.training import TrainConfig, train_sft
    cfg = TrainConfig(lr=1e-2, max_steps=2, batch_size=4, lora=True, lora_r=4, seed=1)
    final, info = train_sft(tiny_ref, PAIRS, cfg, tmp_path / "a", "chat", device="cpu", progress=False,
                            save_at_steps=[1])
    assert final.adapter and info["checkpoints"][0]["ref"].adapter  # over a plain model: an adapter, like the final
    final2, info2 = train_sft(final, PAIRS, cfg, tmp_path / "b", "chat", device="cpu", progress=False,
                              save_at_steps=[1])
    ck = info2["checkpoints"][0]["ref"]
    assert final2.adapter is None and ck.adapter is None  # over an adapter: merged (in a copy), like the final
    n_params = [sum(p.numel() for p in models.load(r, device="cpu")[0].parameters()) for r in (ck, final2)]
    assert n_params[0] == n_params[1]


def _record_of(r):
    """What a finished cell's record holds of its identity (harness/pipeline.py: run_cell), through JSON."""
    from sdd_bench.harness import config as C
    from sdd_bench.harness import models
    return json.loads(json.dumps({"spec": C.to_dict(r.spec), "config": pipeline.run_config(r),
                                  "cell": {"model": r.model}, "artifacts": {"model": f"model/{models.model_key(r.model)}"}}))


def test_a_published_trajectory_answers_the_same_cell_without_one(tmp_path):
    """The trajectory run trains the same attacked model and evaluates it the same way (it only also saves it on
    the way): a grid resumed with --publish does not train that attack again for the plain cell; the reverse does
    not hold (a plain record has no trajectory), and a record of the plain cell itself is preferred."""
    from sdd_bench.harness import publish as P
    traj = pipeline.resolve(_spec())
    plain = pipeline.resolve(_spec(attack_options={"max_steps": 4}))
    other = pipeline.resolve(_spec(attack_options={"max_steps": 8, "checkpoints": [0.5, 1.0]}))
    keys = pipeline.record_cell_keys(_record_of(traj))
    assert keys == [pipeline.cell_key(traj), pipeline.cell_key(plain)]
    assert pipeline.record_cell_keys(_record_of(plain)) == [pipeline.cell_key(plain)]
    assert pipeline.cell_key(plain) not in pipeline.record_cell_keys(_record_of(other))  # other steps: another model
    d = tmp_path / "results" / "tiny"
    d.mkdir(parents=True)
    (d / "a.json").write_text(json.dumps(_record_of(traj)))
    found = P.published_cells(tmp_path / "results", "tiny")
    assert {k: f.name for k, (_, f) in found.items()} == {pipeline.cell_key(traj): "a.json",
                                                          pipeline.cell_key(plain): "a.json"}
    (d / "z.json").write_text(json.dumps(_record_of(plain)))  # sorted after a.json: still the plain cell's own record
    found = P.published_cells(tmp_path / "results", "tiny")
    assert found[pipeline.cell_key(plain)][1].name == "z.json" and found[pipeline.cell_key(traj)][1].name == "a.json"
