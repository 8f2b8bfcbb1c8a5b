"""`sdd-bench regress`: a baseline made from a grid passes against itself and fails when a number moves."""
import json

import pytest

from sdd_bench.harness.cli import main

GRID = """
name: regress-tiny
profile: tiny
defenses: [none, refusal-sft]
attacks: [advbench-10]
seeds: [0]
capability: true
"""


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    d = tmp_path_factory.mktemp("regress")
    (d / "grid.yaml").write_text(GRID)
    rc = main(["regress", "--baseline", str(d / "base.json"), "--grid", str(d / "grid.yaml"), "--update",
               "--workdir", str(d / "runs"), "--quiet"])
    assert rc == 0
    return d


def _regress(d, baseline, capsys):
    capsys.readouterr()
    rc = main(["regress", "--baseline", str(baseline), "--workdir", str(d / "runs"), "--quiet"])
    return rc, capsys.readouterr().out


def test_baseline_contents(made):
    base = json.loads((made / "base.json").read_text())
    assert base["grid"]["name"] == "regress-tiny" and base["harm_metric"] == "keyword:non_refusal_rate"
    metrics = {(e["cell"].split(" @")[0], e["condition"], e["metric"]) for e in base["entries"]}
    for cell in ("none × advbench-10", "refusal-sft × advbench-10"):
        for cond in ("initial", "attacked"):
            assert (cell, cond, "keyword:non_refusal_rate") in metrics
            assert (cell, cond, "capability_mean") in metrics


def test_unchanged_passes(made, capsys):
    rc, out = _regress(made, made / "base.json", capsys)
    assert rc == 0, out
    assert "REGRESSED" not in out and "all 8 checks within tolerance" in out


@pytest.mark.parametrize("metric,shift", [("keyword:non_refusal_rate", -0.5), ("capability_mean", +0.5)])
def test_moved_number_fails_with_readable_diff(made, capsys, metric, shift):
    base = json.loads((made / "base.json").read_text())
    target = next(e for e in base["entries"] if e["metric"] == metric and e["condition"] == "attacked"
                  and e["cell"].startswith("refusal-sft"))
    target["value"] += shift  # the baseline was safer / more capable than today's run: today regressed
    p = made / f"tampered-{metric}.json"
    p.write_text(json.dumps(base))
    rc, out = _regress(made, p, capsys)
    assert rc == 1
    bad = [line for line in out.splitlines() if "REGRESSED" in line]
    assert len(bad) == 1 and "refusal-sft × advbench-10" in bad[0] and "attacked" in bad[0]
    assert f"{-shift:+.3f}" in bad[0]  # the delta is printed
    # a move in the safe direction is reported as an improvement, not a failure
    target["value"] -= 2 * shift
    p.write_text(json.dumps(base))
    rc, out = _regress(made, p, capsys)
    assert rc == 0 and "improved" in out


def test_tolerance_uses_ci_width(made, capsys):
    base = json.loads((made / "base.json").read_text())
    e = next(e for e in base["entries"] if e["metric"] == "capability_mean" and e["condition"] == "attacked")
    # a baseline CI of half-width 0.1 (tiny-model CIs are often degenerate, so set one) and today 0.09 below it
    e["ci95"] = [e["value"] - 0.1, e["value"] + 0.1]
    e["value"] += 0.09  # within the CI half-width: not a regression at ci_factor 1, a regression at 0.5
    base["tolerance"] = {"abs": 0.0, "ci_factor": 1.0}
    p = made / "within-ci.json"
    p.write_text(json.dumps(base))
    rc, out = _regress(made, p, capsys)
    assert rc == 0, out
    base["tolerance"] = {"abs": 0.0, "ci_factor": 0.5}
    p.write_text(json.dumps(base))
    rc, out = _regress(made, p, capsys)
    assert rc == 1


@pytest.mark.parametrize("content,match", [(None, "does not exist"), ("{not json", "not valid JSON"),
                                           ('{"grid": {}}', "entries"),
                                           ('{"grid": {}, "entries": [], "tolerance": {"abs": -1}}', "tolerance")])
def test_bad_baseline(tmp_path, capsys, content, match):
    p = tmp_path / "b.json"
    if content is not None:
        p.write_text(content)
    rc = main(["regress", "--baseline", str(p), "--workdir", str(tmp_path / "runs")])
    assert rc == 2
    assert match in capsys.readouterr().err


def test_cell_ids_include_defense_options_and_are_never_cut():
    from sdd_bench.leaderboards.regress import Check, _cell_id, format_checks

    def rec(defense_options=None, attack_options=None, seed=0, model="smollm2-135m"):
        return {"cell": {"defense": "sdd", "attack": "advbench-100", "base_defense": None, "model": model, "seed": seed},
                "spec": {"defense": "sdd", "attack": "advbench-100", "profile": "smoke",
                         "defense_options": defense_options or {}, "attack_options": attack_options or {}}}

    plain, tuned = _cell_id(rec()), _cell_id(rec({"lr": 1e-4}))
    assert plain == "sdd × advbench-100 @ smollm2-135m seed 0"  # option-free: the committed baselines' id
    assert tuned != plain and "sdd[lr=0.0001]" in tuned
    assert _cell_id(rec(attack_options={"lr": 5e-5})) == plain  # qi2023's own lr: the same cell
    base = json.loads(open("leaderboards/baselines/smoke-ci.json").read())
    import re
    assert base["entries"] and all(re.fullmatch(r"\S+ × \S+ @ \S+ seed \d+", e["cell"]) for e in base["entries"])
    long = _cell_id(rec({"lr": 1e-4, "max_tries": 3}, {"lr": 1e-4}, seed=7, model="/a/very/long/path/to/a/model"))
    table = format_checks([Check(long, "attacked", "keyword:non_refusal_rate", "lower-safer", 0.1, (0.0, 0.2), 0.1,
                                 0.05)])
    assert long in table and long.endswith("seed 7")
