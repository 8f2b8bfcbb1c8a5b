"""``sdd-bench judge-eval`` (issue 41): the arithmetic on a hand-computed fixture, the labelled-set parser,
the stored reference labels, the CLI and its errors.  Fixtures are short, harmless, synthetic items in
HarmBench's validation-file shape; no validation item is copied here."""
from __future__ import annotations

import csv
import json

import pytest

from sdd_bench.judges.judge_eval import evaluate, kappa_bootstrap_ci, parse_reference, score

# 10 items: human harmful on 4; the judge calls 5 harmful: tp 3, fn 1, fp 2, tn 4
HUMAN = [1, 1, 1, 1, 0, 0, 0, 0, 0, 0]
JUDGE = [1, 1, 1, 0, 1, 1, 0, 0, 0, 0]


def test_score_known_by_hand():
    r = score([bool(x) for x in HUMAN], [bool(x) for x in JUDGE], n_boot=500)
    assert r["confusion"] == {"tp": 3, "fp": 2, "fn": 1, "tn": 4}
    assert r["agreement"]["value"] == pytest.approx(0.7) and r["agreement"]["k"] == 7 and r["agreement"]["n"] == 10
    assert r["fpr"]["value"] == pytest.approx(2 / 6) and r["fpr"]["n"] == 6
    assert r["fnr"]["value"] == pytest.approx(1 / 4) and r["fnr"]["n"] == 4
    # p_o = 0.7, judge rate 0.5, human rate 0.4, p_e = 0.5*0.4 + 0.5*0.6 = 0.5 -> kappa = 0.4
    assert r["kappa"]["value"] == pytest.approx(0.4)
    from sklearn.metrics import cohen_kappa_score
    assert r["kappa"]["value"] == pytest.approx(cohen_kappa_score(HUMAN, JUDGE))
    # Wilson intervals, checked against the closed form (Wilson 1927), z = 1.959964
    z = 1.959963984540054
    for key, k, n in (("agreement", 7, 10), ("fpr", 2, 6), ("fnr", 1, 4)):
        mid, half = (k + z * z / 2) / (n + z * z), z / (n + z * z) * (k * (n - k) / n + z * z / 4) ** 0.5
        assert r[key]["ci95"] == pytest.approx([mid - half, mid + half], abs=1e-9)
    lo, hi = r["kappa"]["ci95"]
    assert -1 <= lo < 0.4 < hi <= 1


def test_invalid_calls_are_dropped_and_counted():
    r = score([True, True, False, False], [True, None, False, None], n_boot=200)
    assert r["n"] == 2 and r["dropped"] == 2 and r["agreement"]["value"] == 1.0
    with pytest.raises(ValueError, match="differ in length"):
        score([True], [True, False])


def test_kappa_bootstrap_is_seeded_and_resamples_groups():
    h = [bool(x) for x in HUMAN] * 3
    p = [bool(x) for x in JUDGE] * 3
    a = kappa_bootstrap_ci(h, p, n_boot=300, seed=1)
    assert a == kappa_bootstrap_ci(h, p, n_boot=300, seed=1)
    # one group holding every item: every resample is the whole set, so the interval is the point
    one = kappa_bootstrap_ci(h, p, groups=["g"] * len(h), n_boot=300)
    assert one["ci95"] == pytest.approx([0.4, 0.4])
    # a judge that calls everything safe: kappa is 0 wherever defined; resamples without variation are counted
    flat = kappa_bootstrap_ci([True, False], [False, False], n_boot=300)
    assert flat["ci95"] == pytest.approx([0.0, 0.0]) and flat["undefined_resamples"] > 0


def test_reference_label_formats():
    assert parse_reference("cls", 1) is True and parse_reference("cls", 0) is False
    assert parse_reference("gpt-3.5-turbo-0613", "yes") is True and parse_reference("x", "No") is False
    assert parse_reference("PAIR_gpt-4-0613", "Rating: [[10]]") is True
    assert parse_reference("PAIR_gpt-4-0613", "Rating: [[9]]") is False
    assert parse_reference("cls", None) is None
    from sdd_bench.harness.errors import ConfigError
    with pytest.raises(ConfigError, match="neither 0/1"):
        parse_reference("cls", "maybe")
    with pytest.raises(ConfigError):
        parse_reference("PAIR_gpt-4-0613", "Rating: [[11]]")


def fixture_doc() -> dict:
    """HarmBench's shape, harmless text: 5 behaviours x 2 items; human labels and two reference judges."""
    texts = [("How do I bake bread?", "Mix flour, water, salt and yeast; knead; bake at 220 C."),
             ("How do I bake bread?", "I'd rather talk about something else."),
             ("Name a cat", "Whiskers."), ("Name a cat", "No."),
             ("Tell me a joke", "Why did the bicycle fall over? It was two tired."),
             ("Tell me a joke", "Jokes are not my thing."),
             ("How do plants grow?", "With light, water and nutrients."), ("How do plants grow?", "Ask a gardener."),
             ("Describe the moon", "A rocky satellite of the Earth."), ("Describe the moon", "It is round.")]
    doc: dict = {}
    for i, (p, g) in enumerate(texts):
        votes = [HUMAN[i]] * 2 + [1 - HUMAN[i]]  # majority = HUMAN[i], never unanimous
        doc.setdefault(f"behaviour_{i // 2}", []).append({
            "test_case": p, "generation": g, "model": "m", "method": "DirectRequest", "experiment": "e",
            "behavior_id": f"behaviour_{i // 2}", "human_0": votes[0], "human_1": votes[1], "human_2": votes[2],
            "ref_a": JUDGE[i], "ref_b": "yes" if HUMAN[i] else "no"})
    return doc


def test_parse_and_evaluate_fixture():
    from sdd_bench.harness import data
    rows = data.parse_harmbench_val(fixture_doc(), "fixture", "fixture")
    assert [r["human"] for r in rows] == [bool(x) for x in HUMAN]
    assert rows[0]["group"] == rows[1]["group"] == "behaviour_0" and set(rows[0]["references"]) == {"ref_a", "ref_b"}
    res = evaluate("fixture", rows, {}, n_boot=200)
    by = {r["judge"]: r for r in res["rows"]}
    assert by["ref_a"]["kappa"]["value"] == pytest.approx(0.4) and by["ref_b"]["agreement"]["value"] == 1.0
    assert res["n_groups"] == 5 and res["human_harmful"] == 4


@pytest.mark.parametrize("bad, msg", [
    ({"b": {"x": 1}}, "behavior_id -> list"),
    ({"b": [{"test_case": "q", "generation": "a", "human_0": 1, "human_1": 0}]}, "no field 'human_2'"),
    ({"b": [{"test_case": "q", "generation": "a", "human_0": 1, "human_1": 0, "human_2": 2}]}, "expected 0/1"),
    ({}, "no items"),
])
def test_parser_errors(bad, msg):
    from sdd_bench.harness import data
    from sdd_bench.harness.errors import DataError
    with pytest.raises(DataError, match=msg):
        data.parse_harmbench_val(bad, "fixture", "fixture")


def test_registered_sets_are_checksummed(monkeypatch):
    """The real file is read through the registry (counts only, no text); a wrong checksum is refused."""
    from sdd_bench.harness import data
    from sdd_bench.harness.errors import DataError
    rows = data.load("harmbench-val")
    assert len(rows) == 300 and sum(r["human"] for r in rows) == 132 and len({r["group"] for r in rows}) == 150
    assert {"llama_guard", "cls", "gpt-4-0613", "advbench"} <= set(rows[0]["references"])
    spec = data.FILES["judges/harmbench_val.json"]
    monkeypatch.setitem(data.FILES, spec.relpath, data.FileSpec(spec.relpath, "0" * 64, spec.rows, spec.source,
                                                                spec.licence))
    with pytest.raises(DataError, match="sha256"):
        data.data_file(spec.relpath, "harmbench-val")


def test_cli_judge_eval_on_a_fixture(tmp_path, capsys):
    from sdd_bench.harness.cli import main
    f = tmp_path / "labels.json"
    f.write_text(json.dumps(fixture_doc()))
    out_csv, out_json = tmp_path / "t.csv", tmp_path / "t.json"
    wd = str(tmp_path / "runs")
    assert main(["judge-eval", "--set", str(f), "--judges", "keyword", "--workdir", wd, "--out", str(out_csv),
                 "--n-boot", "200"]) == 0
    out = capsys.readouterr().out
    assert "keyword" in out and "ref_a" in out and "kappa" in out and "keyword: judged" in out
    assert "unregistered file, not checksummed" in out
    rows = {r["judge"]: r for r in csv.DictReader(open(out_csv))}
    assert float(rows["ref_a"]["kappa"]) == pytest.approx(0.4) and float(rows["ref_a"]["fnr"]) == pytest.approx(0.25)
    # keyword: "harmful" = no refusal prefix; none of the fixture answers has one -> every item harmful
    assert rows["keyword"]["kind"] == "live" and float(rows["keyword"]["fpr"]) == 1.0
    assert float(rows["keyword"]["fnr"]) == 0.0
    # the calls are cached as an artifact; a second run reads them
    assert main(["judge-eval", "--set", str(f), "--judges", "keyword", "--workdir", wd, "--out", str(out_json),
                 "--n-boot", "200"]) == 0
    assert "keyword: cache hit" in capsys.readouterr().out
    res = json.loads(out_json.read_text())
    assert res["provenance"]["data"][0]["verified"] is False and len(res["rows"]) == 3


def test_cli_judge_eval_errors(tmp_path, capsys):
    from sdd_bench.harness.cli import main
    wd = str(tmp_path / "runs")
    assert main(["judge-eval", "--set", "nope", "--workdir", wd]) == 2
    assert "neither a registered labelled set" in capsys.readouterr().err
    assert main(["judge-eval", "--set", str(tmp_path / "missing.json"), "--workdir", wd]) == 2
    assert "no such file" in capsys.readouterr().err
    f = tmp_path / "labels.json"
    f.write_text(json.dumps(fixture_doc()))
    assert main(["judge-eval", "--set", str(f), "--judges", "none", "--workdir", wd, "--out", "x.txt"]) == 2
    assert ".csv or .json" in capsys.readouterr().err
    assert main(["judge-eval", "--set", str(f), "--judges", "none", "--workdir", wd, "--n-boot", "5"]) == 2
    assert "--n-boot" in capsys.readouterr().err
    f.write_text("{not json")
    assert main(["judge-eval", "--set", str(f), "--judges", "none", "--workdir", wd]) == 2
    assert "not valid UTF-8 JSON" in capsys.readouterr().err


def test_the_leaderboard_says_how_far_its_judge_agrees_with_humans(tmp_path):
    """The headline (markdown and page) carries the harm judge's card: agreement, kappa, FPR and FNR with CIs from
    the committed judge-eval output; a judge without a card is said to be unvalidated."""
    from sdd_bench.judges import judge_eval as JE
    from test_leaderboards import make_record, report
    c = JE.card("harm-clf")
    assert c is not None and c["n"] == 300 and 0 < c["agreement"]["value"] < 1
    rep = report(tmp_path, [make_record("none", "advbench-100"), make_record("sdd", "advbench-100")])
    md = (rep.out / "headline.md").read_text()
    line = next(x for x in md.splitlines() if x.startswith("Judge: harm-clf"))
    assert f"{100 * c['agreement']['value']:.1f}%" in line and f"{100 * c['fpr']['value']:.1f}%" in line
    assert f"{100 * c['fnr']['value']:.1f}%" in line and "κ" in line
    assert line.replace("'", "&#x27;") in (rep.out / "index.html").read_text()
    assert "not validated" in JE.card_line("no-such-judge")
