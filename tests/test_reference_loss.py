"""Benign reference-answer loss (issue 37 item 2): the per-item numbers, the stage, records and Table 2."""
import math

import pytest

from sdd_bench.harness import reference_loss as RL

PAIRS = [{"prompt": "Name a colour of the sky.", "response": "Blue, on a clear day."},
         {"prompt": "What is two plus two?", "response": "Four."},
         {"prompt": "Say hello in French.", "response": "Bonjour! It is the usual greeting in French."}]


def test_per_item_loss_equals_the_models_own_loss_on_each_answer(tiny_loaded):
    """Batched and padded, each item's number is what transformers computes for that item alone (labels = answer
    tokens, prompt masked): padding and batching must not leak between items."""
    import torch

    from sdd_bench.harness.training import tokenize_pairs
    model, tok = tiny_loaded
    losses, counts = RL.per_item_losses(model, tok, "chat", PAIRS, batch_size=2)
    for pair, loss, count in zip(PAIRS, losses, counts):
        row = tokenize_pairs(tok, "chat", [pair], RL.MAX_LENGTH)[0]
        with torch.no_grad():
            ref = model(input_ids=torch.tensor([row["input_ids"]]), labels=torch.tensor([row["labels"]])).loss
        assert loss == pytest.approx(float(ref), rel=1e-4)
        assert count == sum(1 for x in row["labels"][1:] if x != -100)
    assert len(set(round(x, 4) for x in losses)) == 3  # distinct answers, distinct losses


def test_non_finite_loss_is_an_error_not_a_number(tiny_loaded):
    import copy

    import torch

    from sdd_bench.harness.errors import TrainingDivergedError
    model, tok = tiny_loaded
    broken = copy.deepcopy(model)
    with torch.no_grad():
        next(broken.parameters()).fill_(float("nan"))
    with pytest.raises(TrainingDivergedError, match="non-finite"):
        RL.per_item_losses(broken, tok, "chat", PAIRS)


def test_summary_interval_and_paired_difference():
    s = RL.summarize([1.0, 2.0, 3.0, 4.0], [5, 5, 5, 5])
    assert s["value"] == 2.5 and s["n"] == 4 and s["tokens"] == 20
    # t(0.975, 3) = 3.182, sem = 1.291/2 → half-width 2.054
    assert s["ci95"] == pytest.approx([2.5 - 2.0540, 2.5 + 2.0540], abs=1e-3)
    a = [1.0, 2.0, 3.0, 4.0, 5.0]
    shifted = RL.paired_difference(a, [x + 0.5 + 0.01 * i for i, x in enumerate(a)])
    assert shifted["ci95"][0] > 0 and shifted["p"] < 0.001  # paired: a small shift is seen despite the spread
    same = RL.paired_difference(a, [x + (0.01 if i % 2 else -0.01) for i, x in enumerate(a)])
    assert same["ci95"][0] < 0 < same["ci95"][1]
    with pytest.raises(ValueError, match="same items"):
        RL.paired_difference(a, a[:3])


def test_stage_is_cached_and_keyed_on_the_model(store, tiny_ref, tiny_loaded):
    art, hit = RL.reference_loss_stage(store, tiny_ref, "tiny", "chat", 1234, loaded=tiny_loaded)
    import json
    out = json.loads((art.path / "result.json").read_text())
    assert not hit and out["n"] == RL.SIZES["tiny"][0] == len(out["per_item"]) and out["max_length"] == RL.SIZES["tiny"][1] and out["dataset"] == RL.DATASET
    assert all(math.isfinite(x) for x in out["per_item"]) and out["ci95"][0] <= out["value"] <= out["ci95"][1]
    again, hit = RL.reference_loss_stage(store, tiny_ref, "tiny", "chat", 1234, loaded=tiny_loaded)
    assert hit and again.path == art.path


def _with_loss(rec, cond, losses):
    s = RL.summarize(losses, [10] * len(losses))
    rec["metrics"][cond]["reference_loss"] = dict(s, dataset=RL.DATASET, seed=1234, template="chat",
                                                   max_length=RL.MAX_LENGTH, per_item=losses)
    return rec


def test_table2_shows_the_loss_and_a_paired_difference_only_where_there_is_one(tmp_path):
    """A defense whose answers are uniformly 0.3 nats/token worse than none's is marked; one that equals none up to
    noise is not; records without the measurement still render (—)."""
    from test_leaderboards import make_record, read_csv, report
    base = [2.0 + 0.1 * (i % 7) for i in range(40)]
    recs = [_with_loss(make_record("none", "none"), "initial", base),
            _with_loss(make_record("worse", "none"), "initial", [x + 0.3 for x in base]),
            _with_loss(make_record("same", "none"), "initial", [x + (0.01 if i % 2 else -0.01)
                                                                  for i, x in enumerate(base)]),
            make_record("old", "none")]
    rep = report(tmp_path, recs)
    md = (rep.out / "table2_paper.md").read_text()
    worse = md.split("## worse")[1].split("##")[0]
    same = md.split("## same")[1].split("##")[0]
    assert "ref. loss" in worse and "(Δ +0.30 [+0.30, +0.30]*)" in worse
    row = next(line for line in same.splitlines() if "ref. loss" in line)
    assert "Δ +0.00" in row and "*" not in row
    old = next(line for line in md.split("## old")[1].split("##")[0].splitlines() if "ref. loss" in line)
    assert old.split("|")[3].strip() == "—"  # none's value beside it; the record without the measurement: —
    rows = [r for r in read_csv(rep.out / "table2_paper.csv") if r["task"] == "ref. loss ↓"]
    w = next(r for r in rows if r["defense"] == "worse" and r["column"] == "+worse")
    assert float(w["paired_diff_vs_vanilla"]) == pytest.approx(0.3) and float(w["paired_diff_ci_lo"]) > 0
    long = read_csv(rep.out / "long.csv")
    assert sum(r["eval_set"] == "reference_loss" for r in long) == 3
