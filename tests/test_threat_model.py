"""The threat model of a cell (issue 18): harmful-response MFT data, the aligned base, the cell's answer line.

Tiny profile; fixtures are short harmless texts."""
import json

import pytest

from sdd_bench.harness import data, models, pipeline
from sdd_bench.leaderboards import cell_cli
from sdd_bench.harness.errors import ConfigError, DataError


def _spec(**kw):
    base = dict(profile="tiny", capability=False, n_harmful=4, n_benign=2, n_xstest=2, judges=[])
    base.update(kw)
    return pipeline.spec_from_mapping(base)


def test_advbench_trains_on_donor_responses_not_target_prefixes(session_store):
    r = pipeline.resolve(_spec(attack="advbench-100"))
    assert r.attack.cfg.dataset == "advbench-responses" and r.attack.needs_store and r.attack.data_needs_store
    _, built, _ = pipeline.preflight(r)  # only checks the donor's inputs: its data needs the store
    assert "attack" not in built
    with pytest.raises(ConfigError, match="prepare"):
        r.attack.build_data(0)
    logs = []
    r.attack.prepare(session_store, device="cpu", progress=False, log=logs.append)
    rows, info = r.attack.build_data(0)
    targets = {x["prompt"]: x["response"] for x in data.load("advbench")}
    assert len(rows) == 100 and all(x["kind"] == "harmful" for x in rows)
    assert all(x["prompt"] in targets for x in rows)  # AdvBench goals ...
    assert not any(x["response"] == targets[x["prompt"]] for x in rows)  # ... but not AdvBench's target strings
    resp = info["responses"]
    assert resp["source"] == "donor" and resp["generated"] == 520
    assert resp["kept"] + sum(resp["dropped"].values()) == 520
    assert any("advbench responses (" in line and "kept" in line for line in logs)  # built, or a hit from an earlier test
    # the donor (its attack, generations, filter) is part of the attack's identity
    spec = r.attack.spec()
    assert spec["responses"]["donor_model"] == "tiny" and spec["responses"]["donor_attack"]["attack"] == "beavertails-1k"
    # a second attack object finds the donor in the store
    r2 = pipeline.resolve(_spec(attack="advbench-10"))
    logs2 = []
    r2.attack.prepare(session_store, device="cpu", progress=False, log=logs2.append)
    assert any("cache hit" in line for line in logs2)


def test_advbench_prefix_keeps_the_affirmative_target_attack():
    r = pipeline.resolve(_spec(attack="advbench-prefix-1k"))
    rows, info = r.attack.build_data(0)
    targets = {x["prompt"]: x["response"] for x in data.load("advbench")}
    assert len(rows) == 1000 and info["cycled"] and info["cycles"] == 2 and info["available"] == 520
    assert info["distinct_examples"] == 520
    assert all(x["response"] == targets[x["prompt"]] for x in rows)


def test_responses_file_replaces_the_donor(tmp_path):
    f = tmp_path / "resp.jsonl"
    f.write_text("\n".join(json.dumps({"prompt": f"Name fruit number {i}.", "response": f"Fruit {i} is a pear."})
                           for i in range(5)) + "\n")
    r = pipeline.resolve(_spec(attack="advbench-10", attack_options={"responses_file": str(f)}))
    r.attack.prepare(None)
    rows, info = r.attack.build_data(0)
    assert len(rows) == 10 and info["distinct_examples"] == 5 and info["responses"]["source"] == "responses_file"
    sha = r.attack.spec()["responses"]["responses_file_sha256"]
    f.write_text(f.read_text() + json.dumps({"prompt": "One more?", "response": "Yes, one more pear."}) + "\n")
    assert pipeline.resolve(_spec(attack="advbench-10", attack_options={"responses_file": str(f)})).attack.spec()[
        "responses"]["responses_file_sha256"] != sha
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "x"}\n')
    r = pipeline.resolve(_spec(attack="advbench-10", attack_options={"responses_file": str(bad)}))
    with pytest.raises(DataError, match="`prompt` and `response`"):
        r.attack.prepare(None)
    with pytest.raises(ConfigError, match="does not exist"):
        pipeline.resolve(_spec(attack="advbench-10", attack_options={"responses_file": str(tmp_path / "nope")})).attack.spec()
    with pytest.raises(ConfigError, match="advbench-responses only"):
        pipeline.resolve(_spec(attack="beavertails-100", attack_options={"responses_file": str(f)}))


def test_responses_file_is_hashed_once_per_version(tmp_path, monkeypatch):
    """spec() runs for every key; the responses file is hashed once per (path, mtime, size), again after a change."""
    import os
    from sdd_bench.attacks import donor
    f = tmp_path / "resp.jsonl"
    f.write_text(json.dumps({"prompt": "Name a fruit.", "response": "A pear."}) + "\n")
    hashed = []
    orig = donor._sha256_of
    monkeypatch.setattr(donor, "_sha256_of", lambda p: hashed.append(p) or orig(p))
    r = pipeline.resolve(_spec(attack="advbench-10", attack_options={"responses_file": str(f)}))
    shas = {r.attack.spec()["responses"]["responses_file_sha256"] for _ in range(3)}
    import hashlib
    assert len(hashed) == 1 and shas == {hashlib.sha256(f.read_bytes()).hexdigest()}
    f.write_text(json.dumps({"prompt": "Name a fruit.", "response": "A plum."}) + "\n")  # same size, new content
    st = f.stat()
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))  # coarse-mtime filesystems: move it on
    new = r.attack.spec()["responses"]["responses_file_sha256"]
    assert len(hashed) == 2 and new == hashlib.sha256(f.read_bytes()).hexdigest() and new not in shas


def test_beavertails_shot_counts_have_full_responses():
    for n in (10, 50, 100):
        r = pipeline.resolve(_spec(attack=f"beavertails-{n}"))
        rows, info = r.attack.build_data(0)
        assert len(rows) == n and info["distinct_examples"] == n and not info["cycled"]
        assert all(len(x["response"].split()) > 3 for x in rows)


def test_aligned_base_is_a_merged_refusal_sft_of_the_raw_model(session_store):
    ref = models.materialize("tiny-aligned", session_store)
    raw = models.materialize("tiny", session_store)
    assert ref.adapter is None and ref.key != raw.key and ref.lineage == ("tiny", "align:refusal-sft")
    assert f"model/{models.model_key('tiny-aligned')}" == ref.key  # the key is known without building
    info = json.loads((session_store.get(*ref.key.split("/", 1)).path / "model_info.json").read_text())
    assert info["train"]["steps"] == 2 and info["train"]["pairs"]["safe_anchor"] == 4
    import torch
    from safetensors.torch import load_file
    from pathlib import Path
    w_al = load_file(str(next(Path(ref.path).glob("*.safetensors"))))
    w_raw = load_file(str(next(Path(raw.path).glob("*.safetensors"))))
    changed = [k for k in w_raw if not torch.equal(w_raw[k], w_al[k])]
    assert changed and all("proj" in k for k in changed)  # the LoRA delta is merged into the projections
    assert models.materialize("tiny-aligned", session_store).path == ref.path  # cached
    rows = models.alignment_rows("tiny-aligned")
    assert sum(x["kind"] == "refusal" for x in rows) == 16


def test_smoke_profile_starts_from_the_aligned_base():
    from sdd_bench.harness import profiles
    assert profiles.get("smoke").model == "smollm2-135m-aligned"
    assert pipeline.RunSpec().judges == ("harm-clf",)  # run's default includes a CPU harmfulness judge


def _rec(defense, before, after, cap=(0.5, 0.45)):
    def cond(h, c):
        return {"harmful": {"harm-clf:harmful_rate": {"value": h, "ci95": [max(0, h - 0.1), min(1, h + 0.1)]}},
                "capability": {"tasks": {"arc_easy": {"acc": c, "primary": "acc", "value": c}}}}
    return {"cell": {"defense": defense, "attack": "advbench-100", "model": "smollm2-135m-aligned"},
            "metrics": {"initial": cond(before, cap[0]), "attacked": cond(after, cap[1])}}


def test_answer_line_compares_with_the_undefended_model():
    line = cell_cli.answer(_rec("sdd", 0.05, 0.3), _rec("none", 0.1, 0.9))
    assert line.startswith("answer (harm-clf:harmful_rate): sdd 5% [0%, 15%] harmful before")
    assert "30% [20%, 40%] after advbench-100" in line and "vs 90% [80%, 100%] for the undefended" in line
    assert "capability 0.500 → 0.450" in line
    assert "no harmfulness judge" in cell_cli.answer({"cell": {}, "metrics": {"initial": {"harmful": {}}}})


def test_refusal_sft_prompt_refusals_pair_defense_partition_harmful_prompts_with_stock_refusals():
    from sdd_bench.defenses.refusal_sft import REFUSALS, RefusalSFT
    plain = RefusalSFT.configure("paper", {"n_refusals": 4, "n_safe_anchors": 2})
    more = RefusalSFT.configure("paper", {"n_refusals": 4, "n_safe_anchors": 2, "n_prompt_refusals": 6})
    rows = more.build_data(0).rows
    bt = [r for r in rows if r.get("source") == "beavertails-refusal"]
    assert len(bt) == 6 and all(r["kind"] == "refusal" and r["response"] in REFUSALS for r in bt)
    unsafe = {data.normalize(r["prompt"]) for r in data.load("beavertails-defense") if not r["is_safe"]}
    assert all(data.normalize(r["prompt"]) in unsafe for r in bt)  # defense partition, harmful prompts only
    assert plain.spec() != more.spec()
    assert not any(r.get("source") == "beavertails-refusal" for r in plain.build_data(0).rows)


def test_defender_side_prompts_may_overlap_but_not_the_attackers_or_evaluations(monkeypatch):
    """SDD on the aligned base both use the BeaverTails defense partition: allowed.  An aligned base trained on
    evaluation or attack prompts is contamination, and preflight says so before any training."""
    r = pipeline.resolve(_spec(defense="sdd", attack="beavertails-10"))
    sets, built, _ = pipeline.preflight(r)
    defense_rows = built["defense"].rows
    shared = [dict(x, kind="refusal") for x in defense_rows if x.get("kind") != "benign"][:3]
    monkeypatch.setattr(models, "alignment_rows", lambda name, seed=0: shared)
    rep = pipeline.check_disjoint(r, sets, built)
    assert any("model:" in k and "defense:sdd" in k and v for k, v in rep["overlaps"].items())
    attack_rows = built["attack"][0]
    monkeypatch.setattr(models, "alignment_rows", lambda name, seed=0: [dict(prompt=attack_rows[0]["prompt"], kind="refusal")])
    with pytest.raises(Exception, match="overlap between .*attack:beavertails-10|overlap between attack:beavertails-10"):
        pipeline.preflight(r)


def test_answer_line_gives_zero_of_n_a_wilson_interval_and_the_reference_loss():
    """0 harmful of 64 is not certainty: the answer line uses the tables' interval (Wilson), not the record's
    zero-width bootstrap; and it reports the reference-answer loss before → after."""
    rec = _rec("sdd", 0.0, 0.5)
    for cond, loss in (("initial", 1.9), ("attacked", 2.4)):
        rec["metrics"][cond]["harmful"]["harm-clf:harmful_rate"].update(n=64, ci95=[0.0, 0.0] if cond == "initial"
                                                                        else [0.4, 0.6])
        rec["metrics"][cond]["reference_loss"] = {"value": loss, "ci95": [loss - 0.1, loss + 0.1], "n": 64}
    line = cell_cli.answer(rec)
    assert "sdd 0% [0%, 6%] harmful before" in line  # Wilson upper bound of 0/64: 5.7%
    assert "reference-answer loss 1.900 → 2.400 nats/token" in line


def test_tar_harmful_prompts_enter_the_overlap_report(monkeypatch):
    """TAR trains an inner adversary on harmful prompts and measures L_TR on a held-out harmful half: those prompts
    are the ones that must be disjoint from the attacker's.  Its benign retain rows are not harmful prompts.  (Until
    BuiltData, the overlap report took TAR's first list, the retain rows, and never saw its harmful prompts.)"""
    from sdd_bench.defenses import _common
    from sdd_bench.harness.errors import SddBenchError
    r = pipeline.resolve(_spec(defense="tar", attack="beavertails-10", defense_options={"n_retain": 6}))
    _, _, rep = pipeline.preflight(r, judges=False)
    assert rep["sizes"]["defense:tar"] == r.defense.cfg.n_harmful  # the harmful halves, not the retain rows
    attacked = r.attack.build_data(0)[0][0]
    real = _common.harmful_rows
    # one of TAR's harmful prompts is the attacker's: contamination, reported before any training
    monkeypatch.setattr(_common, "harmful_rows", lambda n, seed: [dict(attacked, category="")] + real(n, seed)[1:])
    with pytest.raises(SddBenchError, match="overlap between attack:beavertails-10 and defense:tar"):
        pipeline.preflight(r, judges=False)
