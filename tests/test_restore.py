"""Restore attacks (attacks/restore.py) on the tiny profile: harmful then benign, and the mixed fine-tune."""
import pytest

from sdd_bench.harness import models, pipeline
from sdd_bench.harness.errors import ConfigError
from sdd_bench.harness.store import stage_key


def _spec(**kw):
    base = dict(profile="tiny", capability=False, n_harmful=4, n_benign=2, n_xstest=2, judges=[])
    base.update(kw)
    return pipeline.spec_from_mapping(base)


@pytest.fixture(scope="module")
def store_mod(tmp_path_factory):
    from sdd_bench.harness.store import Store
    return Store(tmp_path_factory.mktemp("restore"))


@pytest.fixture(scope="module")
def tiny_mod(store_mod):
    return models.materialize("tiny", store_mod, seed=0)


@pytest.fixture(scope="module")
def restored(store_mod, tiny_mod):
    r = pipeline.resolve(_spec(attack="restore-beavertails-100"))
    logs = []
    ref, info, art = pipeline.attack_stage(store_mod, tiny_mod, r.attack, "chat", 0, "cpu", False, logs.append)
    return r, ref, info, art, logs


def test_record_holds_both_phases_and_phase_two_starts_from_phase_one(restored, store_mod, tiny_mod):
    r, ref, info, art, logs = restored
    h, b = info["phases"]["harmful"], info["phases"]["benign"]
    assert h["attack"] == "beavertails-100" and b["attack"] == "alpaca-1k"
    assert h["steps"] == 2 and b["steps"] == 2 and info["steps"] == 4  # tiny: 2 steps per fine-tune
    assert h["examples_seen"] == 20 and b["examples_seen"] == 20 and info["examples_seen"] == 40  # batch 10 each
    assert h["data_info"]["dataset"] == "beavertails-attack" and b["data_info"]["dataset"] == "alpaca-gpt4-1k"
    assert h["start_model"] == tiny_mod.identity()
    assert b["start_model"] == h["artifact"]  # phase 2 trained on phase 1's output
    assert any("phase 1: attack beavertails-100: trained" in m for m in logs)
    # phase 1 is the plain beavertails-100 attack stage: running that attack now is a cache hit on the same artifact
    plain = pipeline.resolve(_spec(attack="beavertails-100")).attack
    seen = []
    _, _, art1 = pipeline.attack_stage(store_mod, tiny_mod, plain, "chat", 0, "cpu", False, seen.append)
    assert "cache hit" in seen[-1] and art1.ref() == h["artifact"]
    assert r.attack.kind == "mft"
    assert ref.lineage[-2:] == ("attack:beavertails-100", "attack:alpaca-1k")


def test_restore_rerun_is_a_cache_hit(restored, store_mod, tiny_mod):
    r, _, info, art, _ = restored
    seen = []
    _, info2, art2 = pipeline.attack_stage(store_mod, tiny_mod, r.attack, "chat", 0, "cpu", False, seen.append)
    assert "cache hit" in seen[-1] and art2.ref() == art.ref() and info2 == info


def test_restore_key_follows_either_phase():
    def key(**opts):
        a = pipeline.resolve(_spec(attack="restore-beavertails-100", attack_options=opts)).attack
        return stage_key("attack", dict(a.spec(), template="chat", seed=0), ["m"])
    keys = {key(), key(harmful_options={"lr": 2e-5}), key(benign_options={"n": 500}), key(benign="dolly-1k")}
    assert len(keys) == 4
    a = pipeline.resolve(_spec(attack="restore-beavertails-100", attack_options={"benign": "sst2-1k"})).attack
    assert a.cfg.dataset == "sst2-train"  # the pipeline then measures SST-2 fine-tune accuracy
    rows, info = a.build_data(0)
    assert {x["phase"] for x in rows} == {"harmful", "benign"} and set(info) == {"harmful", "benign"}


def test_restore_bad_inputs():
    with pytest.raises(ConfigError, match="harmful_options"):  # --attack-lr is ambiguous with two phases
        pipeline.resolve(_spec(attack="restore-beavertails-100", attack_options={"lr": 1e-5}))
    with pytest.raises(ConfigError, match="must be a malicious"):
        pipeline.resolve(_spec(attack="restore-beavertails-100", attack_options={"harmful": "alpaca-1k"}))
    with pytest.raises(ConfigError, match="must be a benign"):
        pipeline.resolve(_spec(attack="restore-beavertails-100", attack_options={"benign": "beavertails-10"}))
    with pytest.raises(ConfigError, match="not a fine-tuning preset"):
        pipeline.resolve(_spec(attack="restore-beavertails-100", attack_options={"benign": "refusal-ablation"}))
    with pytest.raises(ConfigError, match="Unknown option 'nn'"):
        pipeline.resolve(_spec(attack="restore-beavertails-100", attack_options={"benign_options": {"nn": 3}}))


def test_attack_without_the_store_says_how():
    a = pipeline.resolve(_spec(attack="restore-beavertails-100")).attack
    with pytest.raises(ConfigError, match="prepare"):
        a.attack(None, None, "chat", 0)


def test_mixed_rows_hold_the_stated_ratio():
    r = pipeline.resolve(_spec(attack="mixed-beavertails-100"))
    rows, info = r.attack.build_data(0)
    harmful = [x for x in rows if x["kind"] == "harmful"]
    benign = [x for x in rows if x["kind"] == "benign"]
    assert len(harmful) == 100 and len(benign) == 100 and info["poison_ratio_actual"] == pytest.approx(0.5)
    assert {x["source"] for x in harmful} == {"beavertails"} and {x["source"] for x in benign} == {"alpaca-gpt4"}
    assert sorted(x["kind"] for x in rows[:20]) != ["benign"] * 20  # shuffled together, not concatenated
    assert r.attack.cfg.resolved()["lr"] == 5e-5 and r.attack.kind == "poison"  # the malicious recipe
    r3 = pipeline.resolve(_spec(attack="mixed-beavertails-100", attack_options={"poison_ratio": 0.25, "n": 400}))
    rows3, _ = r3.attack.build_data(0)
    assert sum(x["kind"] == "harmful" for x in rows3) == 100 and sum(x["kind"] == "benign" for x in rows3) == 300


def test_mixed_trains_on_tiny(store_mod, tiny_mod):
    r = pipeline.resolve(_spec(attack="mixed-beavertails-100"))
    ref, info, _ = pipeline.attack_stage(store_mod, tiny_mod, r.attack, "chat", 0, "cpu", False, lambda *_: None)
    assert info["steps"] == 2 and info["data_info"]["poison"] == 100 and ref.path
