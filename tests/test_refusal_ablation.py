"""Refusal-direction ablation (attacks/refusal_ablation.py) on the tiny profile: the mechanism, the record, the cache."""
import pytest
import torch

from sdd_bench.harness import models, pipeline
from sdd_bench.harness.errors import ConfigError
from sdd_bench.harness.store import stage_key


def _spec(**kw):
    base = dict(profile="tiny", capability=False, n_harmful=4, n_benign=2, n_xstest=2, judges=[])
    base.update(kw)
    return pipeline.spec_from_mapping(base)


def _writers(model):
    from sdd_bench.attacks.refusal_ablation import residual_writers
    out = [("embed", model.get_input_embeddings().weight, 1)]
    for i, b in enumerate(residual_writers(model)):
        out += [(f"o_proj.{i}", b.self_attn.o_proj.weight, 0), (f"down_proj.{i}", b.mlp.down_proj.weight, 0)]
    return out  # (name, weight, axis of the residual dimension)


def _component(w, unit, axis):
    w = w.detach().double()
    return (w @ unit if axis == 1 else unit @ w).abs().max().item() / w.abs().max().item()


@pytest.fixture(scope="module")
def ablated(store_mod, tiny_mod):
    r = pipeline.resolve(_spec(attack="refusal-ablation"))
    logs = []
    ref, info, art = pipeline.attack_stage(store_mod, tiny_mod, r.attack, "chat", 0, "cpu", False, logs.append)
    return r, ref, info, art, logs


@pytest.fixture(scope="module")
def store_mod(tmp_path_factory):
    from sdd_bench.harness.store import Store
    return Store(tmp_path_factory.mktemp("ablation"))


@pytest.fixture(scope="module")
def tiny_mod(store_mod):
    return models.materialize("tiny", store_mod, seed=0)


def test_weights_have_no_component_along_the_direction(ablated, tiny_mod):
    _, ref, info, art, _ = ablated
    direction = torch.load(art.path / "direction.pt").double()
    assert direction.norm().item() == pytest.approx(info["direction_norm"], rel=1e-5) and info["direction_norm"] > 0
    unit = direction / direction.norm()
    before, _ = models.load(tiny_mod, device="cpu")
    after, _ = models.load(ref, device="cpu")
    assert max(_component(w, unit, ax) for _, w, ax in _writers(before)) > 1e-3  # there was something to remove
    for name, w, ax in _writers(after):
        assert _component(w, unit, ax) < 1e-6, name
    assert info["max_residual_component_after"] < 1e-6
    # nothing else changed: q/k/v/gate/up and the norms are the input model's
    b, a = dict(before.named_parameters()), dict(after.named_parameters())
    for k in b:
        if not any(x in k for x in ("embed_tokens", "o_proj", "down_proj", "lm_head")):
            assert torch.equal(b[k], a[k]), k


def test_the_ablated_model_still_generates(ablated):
    _, ref, _, _, _ = ablated
    model, tok = models.load(ref, device="cpu")
    ids = tok("Hello", return_tensors="pt")
    out = model.generate(**ids, max_new_tokens=4, do_sample=False, pad_token_id=tok.pad_token_id)
    assert out.shape[1] == ids["input_ids"].shape[1] + 4


def test_info_has_layer_candidates_and_norm(ablated):
    r, _, info, _, _ = ablated
    assert r.attack.kind == "ablation"
    assert 0 <= info["layer"] < info["n_layers"] == 2
    assert info["position"] < 0 and info["eoi_tokens"] and info["positions_considered"] == len(info["eoi_tokens"])
    cands = info["candidates"]
    assert len(cands) == info["selection"]["n_candidates"] == 2 * info["positions_considered"]
    chosen = [c for c in cands if c["layer"] == info["layer"] and c["position"] == info["position"]]
    assert len(chosen) == 1 and chosen[0]["refusal_score"] == info["selection"]["refusal_score"]
    # layer 0's input at a template token is the same embedding for every prompt: a zero candidate, never chosen
    assert all(c["filtered_by"] == ["zero direction"] for c in cands if c["layer"] == 0)
    # tiny: the random model has no refusal, so nothing passes the filters and the fallback is recorded
    assert info["selection"]["fallback"] is True and info["selection"]["n_passed"] == 0
    assert info["steps"] == 0 and info["examples_seen"] == 0
    assert info["prompts"] == {"harmful_train": 8, "harmful_val": 4, "harmless_train": 8, "harmless_val": 4}


def test_second_run_is_a_cache_hit(ablated, store_mod, tiny_mod):
    r, ref, info, art, logs = ablated
    assert "trained" in logs[-1]
    logs2 = []
    ref2, info2, art2 = pipeline.attack_stage(store_mod, tiny_mod, r.attack, "chat", 0, "cpu", False, logs2.append)
    assert "cache hit" in logs2[-1] and art2.ref() == art.ref() and info2 == info


def test_same_config_same_direction(ablated, tmp_path, tiny_mod):
    from sdd_bench.harness.store import Store
    r, _, info, art, _ = ablated
    _, info2, art2 = pipeline.attack_stage(Store(tmp_path / "s"), tiny_mod, r.attack, "chat", 0, "cpu", False,
                                           lambda *_: None)
    assert torch.equal(torch.load(art.path / "direction.pt"), torch.load(art2.path / "direction.pt"))
    assert info2["candidates"] == info["candidates"]


def test_key_follows_options_and_prompts_are_attack_side():
    a = pipeline.resolve(_spec(attack="refusal-ablation")).attack
    b = pipeline.resolve(_spec(attack="refusal-ablation", attack_options={"n_val": 3})).attack
    c = pipeline.resolve(_spec(attack="refusal-ablation-advbench")).attack
    keys = {stage_key("attack", dict(x.spec(), template="chat", seed=0), ["m"]) for x in (a, b, c)}
    assert len(keys) == 3
    rows, info = a.build_data(0)
    assert {x["kind"] for x in rows} == {"harmful", "benign"}
    assert len({x["prompt"] for x in rows}) == len(rows)  # train and val prompts are disjoint
    assert a.cfg.dataset == "beavertails-attack"
    # it needs the store only for its cached search: the pipeline's preflight builds its prompts up front, so the
    # overlap check with the eval sets sees them before any scoring
    assert a.needs_store and not a.data_needs_store
    _, built, _ = pipeline.preflight(pipeline.resolve(_spec(attack="refusal-ablation")))
    assert {x["prompt"] for x in built["attack"][0]} == {x["prompt"] for x in rows}


def test_bad_inputs_are_one_clear_error():
    with pytest.raises(ConfigError, match="harmful_dataset"):  # evaluation prompts may never be used
        pipeline.resolve(_spec(attack="refusal-ablation", attack_options={"harmful_dataset": "beavertails-test"}))
    with pytest.raises(ConfigError, match="refusal_words"):
        pipeline.resolve(_spec(attack="refusal-ablation", attack_options={"refusal_words": []}))
    with pytest.raises(ConfigError, match="Unknown option 'lr'"):
        pipeline.resolve(_spec(attack="refusal-ablation", attack_options={"lr": 1e-5}))
    with pytest.raises(ConfigError, match="lower n_train"):
        pipeline.resolve(_spec(attack="refusal-ablation", attack_options={"n_train": 100000})).attack.build_data(0)


def test_strict_selection_names_the_option(store_mod, tiny_mod, tmp_path):
    from sdd_bench.harness.errors import SddBenchError
    a = pipeline.resolve(_spec(attack="refusal-ablation", attack_options={"require_filtered": True})).attack
    with pytest.raises(SddBenchError, match="require_filtered=false"):
        a.attack(tiny_mod, tmp_path, "chat", 0, device="cpu", progress=False)


def test_a_strict_run_that_stops_keeps_the_search_for_the_fallback(tiny_mod, tmp_path):
    """require_filtered=true stops (tiny's random model has no refusal direction), but the direction search is its own
    cached stage: the require_filtered=false rerun starts from it and selects what an uncached search selects."""
    from sdd_bench.harness.errors import SddBenchError
    from sdd_bench.harness.store import Store
    store = Store(tmp_path / "s")
    strict, loose = (pipeline.resolve(_spec(attack="refusal-ablation", attack_options={"require_filtered": v})).attack
                     for v in (True, False))
    logs = []
    with pytest.raises(SddBenchError, match="scores are kept"):
        pipeline.attack_stage(store, tiny_mod, strict, "chat", 0, "cpu", False, logs.append)
    assert any("direction search: scored" in m for m in logs)
    assert not (store.root / "attack").exists() or not list((store.root / "attack").glob("*/COMPLETE"))
    logs = []
    _, info, _ = pipeline.attack_stage(store, tiny_mod, loose, "chat", 0, "cpu", False, logs.append)
    assert any("direction search: cache hit" in m for m in logs) and "trained" in logs[-1]
    assert info["selection"]["fallback"] and info["search_artifact"].startswith("ablation-search/")
    fresh = pipeline.resolve(_spec(attack="refusal-ablation", attack_options={"require_filtered": False})).attack
    _, info2 = fresh.attack(tiny_mod, tmp_path / "uncached", "chat", 0, device="cpu", progress=False)
    assert info2["candidates"] == info["candidates"] and info2["layer"] == info["layer"]
    assert strict.search_spec("chat", 0) == loose.search_spec("chat", 0) != loose.search_spec("chat", 1)
    # other filters re-filter the cached scores: no candidate is scored again, and the filters decide what passes
    relaxed = pipeline.resolve(_spec(attack="refusal-ablation", attack_options={
        "require_filtered": True, "kl_threshold": 1e9, "induce_refusal_threshold": -1e9, "prune_layer_percentage": 0.0})).attack
    logs = []
    _, info3, _ = pipeline.attack_stage(store, tiny_mod, relaxed, "chat", 0, "cpu", False, logs.append)
    assert any("direction search: cache hit" in m for m in logs)
    assert not info3["selection"]["fallback"] and info3["selection"]["n_passed"] > 0
    assert [(c["refusal_score"], c["kl_div_score"]) for c in info3["candidates"]] == \
        [(c["refusal_score"], c["kl_div_score"]) for c in info["candidates"]]
    assert all(c["passed"] == (c["layer"] < info3["selection"]["filters"]["layers_kept_below"]
                               and c["refusal_score"] is not None) for c in info3["candidates"])


def test_lora_adapted_model_is_merged_first(store_mod, tiny_mod, tmp_path):
    from peft import LoraConfig, get_peft_model
    model, tok = models.load(tiny_mod, device="cpu")
    torch.manual_seed(0)
    peft_model = get_peft_model(model, LoraConfig(r=4, target_modules=["o_proj", "down_proj"], init_lora_weights=False))
    peft_model.save_pretrained(tmp_path / "adapter")
    tok.save_pretrained(tmp_path / "adapter")
    lora_ref = models.ModelRef(name="tiny+lora", path=tiny_mod.path, adapter=str(tmp_path / "adapter"),
                               key="test-lora", lineage=("tiny", "lora"))
    a = pipeline.resolve(_spec(attack="refusal-ablation")).attack
    new, info = a.attack(lora_ref, tmp_path / "out", "chat", 0, device="cpu", progress=False)
    assert new.adapter is None and info["edited"]["merged_adapter"] is True
    merged, _ = models.load(lora_ref, device="cpu", merge_adapter=True)
    unit = torch.load(tmp_path / "out" / "direction.pt").double()
    unit = unit / unit.norm()
    after, _ = models.load(new, device="cpu")
    for (name, w, ax), (_, w0, _) in zip(_writers(after), _writers(merged)):
        assert _component(w, unit, ax) < 1e-6, name
        w0 = w0.detach().double()
        proj = w0 - (torch.outer(w0 @ unit, unit) if ax == 1 else torch.outer(unit, unit @ w0))
        assert torch.allclose(w.double(), proj, atol=1e-6), name  # the edit is W - r r^T W of the merged weights


def test_cell_record_carries_the_layer(session_store):
    rec, _ = pipeline.run_cell(_spec(attack="refusal-ablation"), session_store, progress=False, log=lambda *_: None)
    ai = rec["attack_info"]
    assert rec["cell"]["attack"] == "refusal-ablation" and rec["cell"]["attack_kind"] == "ablation"
    assert isinstance(ai["layer"], int) and ai["direction_norm"] > 0 and ai["candidates"]
    assert "attacked" in rec["metrics"] and rec["data"]["overlap"]["sizes"]["attack:refusal-ablation"] > 0
