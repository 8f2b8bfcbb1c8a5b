"""harm-clf: training data construction (labels, disjointness, grouped split), a small training run
cached as its own ``judge-model`` artifact, and judging of harmless stand-in pairs."""
from __future__ import annotations

import numpy as np
import pytest

from sdd_bench.harness import data
from sdd_bench.harness.config import build
from sdd_bench.judges.harm_clf import HarmClfConfig, binary_metrics, build_training_rows, split_by_prompt

SMALL = {"max_unsafe": 20, "n_refusals": 600, "n_irrelevant": 600, "n_restated": 600}


def test_training_rows_labels_and_disjointness():
    rows = build_training_rows(build(HarmClfConfig, SMALL))
    srcs = {r["source"] for r in rows}
    assert srcs == {"beavertails-unsafe", "beavertails-safe", "refusals", "irrelevant-benign", "restated-refusal"}
    assert all(r["unsafe"] == (r["source"] == "beavertails-unsafe") for r in rows)
    n_unsafe = sum(r["unsafe"] for r in rows)
    assert n_unsafe == 20 and 0.3 < n_unsafe / len(rows) < 0.7  # scaled-down sources stay roughly balanced
    eval_keys = {data.normalize(r["prompt"]) for n in ("beavertails-test", "xstest") for r in data.load(n)}
    assert not eval_keys & {data.normalize(r["prompt"]) for r in rows}
    # the irrelevant-benign rows pair judge-partition (harmful) prompts with benign answers
    judge_prompts = {r["prompt"] for r in data.load("beavertails-judge")}
    assert all(r["prompt"] in judge_prompts for r in rows if r["source"] == "irrelevant-benign")


def test_restated_refusals_and_the_refusal_feature():
    import random
    from sdd_bench.judges.harm_clf import features, opens_with_refusal, restated_refusal
    r = restated_refusal("How do I pick a lock?", random.Random(0))
    assert "how do I pick a lock" in r and opens_with_refusal(r, 160) == 1.0
    assert opens_with_refusal("Sure. Step one: take a pin. " * 10 + "I'm sorry", 160) == 0.0  # only the opening counts
    assert opens_with_refusal("I'm sorry, no.", 0) == 0.0
    X = features(["q", "q"], ["I cannot assist with that.", "Here is a recipe for bread."], opening_chars=160)
    assert X.shape[1] == 384 * 2 + 2 and list(X[:, -1]) == [1.0, 0.0]


def test_split_is_grouped_by_prompt():
    rows = [{"prompt": f"p{i % 10}", "response": str(i)} for i in range(50)]
    tr, he = split_by_prompt(rows, 0.2, 0)
    assert sorted(tr + he) == list(range(50))
    assert not {rows[i]["prompt"] for i in tr} & {rows[i]["prompt"] for i in he}
    assert len({rows[i]["prompt"] for i in he}) == 2


def test_binary_metrics():
    m = binary_metrics(np.array([1, 1, 0, 0]), np.array([0.9, 0.2, 0.6, 0.1]), 0.5)
    assert m["accuracy"] == 0.5 and m["confusion"] == {"tp": 1, "fp": 1, "fn": 1, "tn": 1}
    assert m["f1"] == pytest.approx(0.5)


def test_train_cache_and_judge(store):
    from sdd_bench.judges.base import make_judge
    j = make_judge("harm-clf", SMALL, store=store)
    vs = j.judge(["how do I bake bread", "what is a good name for a cat"],
                 ["Sure, here is how: mix flour, water and yeast, then bake.", "Whiskers is a nice name."])
    assert len(vs) == 2 and all(v.valid and 0.0 <= v.score <= 1.0 for v in vs)
    assert all(v.label in ("harmful", "harmless") for v in vs)
    summ = j.run_summary()
    h = summ["heldout"]
    print(f"\nharm-clf (small test config) held-out accuracy={h['accuracy']:.3f} f1={h['f1']:.3f} n={h['n']}")
    assert h["n"] > 0 and 0.0 <= h["accuracy"] <= 1.0 and summ["threshold"] == 0.5
    assert summ["head_artifact"].startswith("judge-model/")
    assert store.get(*summ["head_artifact"].split("/")) is not None
    # a second judge with the same config reuses the cached head
    j2 = make_judge("harm-clf", SMALL, store=store)
    j2.head()
    assert j2.head_info["cache_hit"]
    # the threshold is a judge-time knob recorded in the verdicts
    j3 = make_judge("harm-clf", dict(SMALL, threshold=0.0), store=store)
    assert all(v.label == "harmful" and v.meta["threshold"] == 0.0 for v in j3.judge(["q"], ["a"]))


def test_needs_a_store():
    from sdd_bench.harness.errors import SddBenchError
    from sdd_bench.judges.base import make_judge
    with pytest.raises(SddBenchError, match="store"):
        make_judge("harm-clf").judge(["q"], ["a"])
