"""Published records (results/<profile>/) and the leaderboard rendered from them (docs/leaderboard/<profile>/)."""
import filecmp
import json
from pathlib import Path

import pytest

from sdd_bench.harness import publish as P
from sdd_bench.harness.cli import main
from sdd_bench.leaderboards.report import build_report
from test_leaderboards import _figure_records, make_record

REPO = Path(__file__).resolve().parent.parent
FIGURE_SUFFIXES = (".png", ".svg")  # figures: compared by name (their bytes depend on the matplotlib build)
RERENDER = "run `sdd-bench report results/{p} --out docs/leaderboard/{p}` (from the repository root) and commit"


def _long_record():
    rec = make_record("sdd", "advbench-100", model="tiny-c")
    rec["template"] = {"name": "chat", "sha256": "0123456789abcdef", "source": "{% for m in messages %}" * 40,
                       "example": "<|im_start|>user\n{instruction}<|im_end|>\n" * 8}
    rec["defense_info"] = {"steps": 40, "sample_answer": "Sure, here is how " * 30}   # text that must not leave
    rec["artifacts"] = {"model": "model/abc", "model_path": "/very/long/" + "d/" * 150}  # a path: kept
    rec["_wall_seconds_this_invocation"] = {"total": 1.0}
    return rec


def test_scanner_finds_long_text_and_spares_short_labels_and_paths():
    assert P.long_strings({"a": {"b": ["x" * (P.MAX_TEXT + 1)]}}) == [(".a.b[0]", P.MAX_TEXT + 1)]
    assert P.long_strings({"a": "x" * P.MAX_TEXT, "n": 3.5, "l": ["ok"]}) == []
    assert P.long_strings({"model_path": "/p" * 300}) == []                  # a path, under a safe key
    assert P.long_strings({"model_path": "/p" * 600}) == [(".model_path", 1200)]  # but not without bound
    assert P.long_strings({"k" * 300: 1}) == [(".<key>", 300)]


def test_sanitize_keeps_numbers_and_drops_text():
    rec = _long_record()
    before = json.dumps(rec, sort_keys=True)
    pub = P.sanitize(rec, "record/k1")
    assert json.dumps(rec, sort_keys=True) == before                # the input is untouched
    assert P.long_strings(pub) == []
    assert "source" not in pub["template"] and "example" not in pub["template"]
    assert pub["template"]["sha256"] == "0123456789abcdef" and len(pub["template"]["example_sha256"]) == 16
    assert pub["defense_info"]["steps"] == 40 and pub["defense_info"]["sample_answer"].startswith("<omitted: 540 chars")
    assert "Sure, here" not in json.dumps(pub)
    assert pub["artifacts"]["model_path"] == "<local>" + rec["artifacts"]["model_path"]  # a path: kept, not absolute
    assert pub["metrics"] == rec["metrics"] and pub["cell"] == rec["cell"]
    assert pub["published"] == {"record": "record/k1", "omitted": [".defense_info.sample_answer"], "schema": 1}
    assert "_wall_seconds_this_invocation" not in pub
    with pytest.raises(P.PublishError, match="not a run record"):
        P.sanitize({"cell": {}}, None)


def test_publish_is_idempotent_and_keyed_like_the_store(tmp_path):
    rec = _long_record()
    a = P.publish_record(rec, "record/0123abcd", tmp_path / "results")
    assert a.changed and a.path == tmp_path / "results" / "smoke" / "0123abcd.json"
    mtime, data = a.path.stat().st_mtime_ns, a.path.read_bytes()
    b = P.publish_record(rec, "record/0123abcd", tmp_path / "results")
    assert not b.changed and b.path == a.path and a.path.read_bytes() == data and a.path.stat().st_mtime_ns == mtime
    c = P.publish_record(make_record("none", "none"), "record/ffff", tmp_path / "results")
    assert c.path.name == "ffff.json"
    assert sorted(p.name for p in (tmp_path / "results" / "smoke").iterdir()) == ["0123abcd.json", "ffff.json"]
    # a record given as a file (no store key) is keyed by its content
    d1 = P.publish_record(make_record("none", "none", seed=3), None, tmp_path / "r2")
    d2 = P.publish_record(make_record("none", "none", seed=3), None, tmp_path / "r2")
    assert d1.path == d2.path and not d2.changed
    with pytest.raises(P.PublishError, match="profile"):
        P.publish_record(dict(make_record(), cell={"profile": "../x"}), "record/x", tmp_path / "r3")


def test_publish_fills_in_usable_harm_from_the_store(tmp_path):
    """A record written before records carried harmful.usable_harm gets it from the store's verdicts when
    published, so the committed leaderboard keeps its usable-harm table once the work dir is gone."""
    store = tmp_path / "runs"
    rec = make_record("sdd", "advbench-100")
    labels = {"harm-clf": ["harmful", "harmful", "safe", "harmful"], "keyword": ["none", "refusal", "none", "none"],
              "coherence": ["coherent", "coherent", "coherent", "incoherent"],
              "relevance": ["relevant", "relevant", "relevant", "relevant"]}
    for jn, ls in labels.items():
        d = store / "judge" / f"attacked-{jn}"
        d.mkdir(parents=True)
        (d / "verdicts.jsonl").write_text("".join(json.dumps({"label": x}) + "\n" for x in ls))
        rec["artifacts"][f"attacked/judge/harmful/{jn}"] = f"judge/attacked-{jn}"
    before = json.dumps(rec, sort_keys=True)
    pub = json.loads(P.publish_record(rec, "record/k9", tmp_path / "results", store_root=store).path.read_text())
    assert json.dumps(rec, sort_keys=True) == before  # the store's record is untouched
    usable = pub["metrics"]["attacked"]["harmful"]["usable_harm"]
    assert usable["harm-clf:harmful_rate"]["value"] == pytest.approx(0.5)     # items 1 and 2 of 4
    assert usable["keyword:non_refusal_rate"]["value"] == pytest.approx(0.5)  # items 1 and 3
    assert usable["harm-clf:harmful_rate"]["from"] == "publish" and usable["harm-clf:harmful_rate"]["n"] == 4
    assert "usable_harm" not in pub["metrics"]["initial"]["harmful"]          # no verdicts there: nothing made up
    # the report of the published file alone (no store) shows it
    rep = build_report([str(tmp_path / "results" / "smoke")], tmp_path / "out", echo=None)
    assert "Usable harm (%) beside it" in (rep.out / "table1_paper.md").read_text()
    # a record that carries the block keeps it as written
    rec2 = json.loads(json.dumps(rec))
    rec2["metrics"]["attacked"]["harmful"]["usable_harm"] = {"harm-clf:harmful_rate": {"value": 0.25, "n": 4}}
    assert P.backfill_usable_harm(rec2, store) is rec2


def _publish(root: Path, records: list[dict]) -> Path:
    for i, r in enumerate(records):
        P.publish_record(r, f"record/{i:04d}", root)
    return root / "smoke"


def _text_files(d: Path) -> list[str]:
    return sorted(p.name for p in d.iterdir() if p.is_file() and p.suffix not in FIGURE_SUFFIXES)


def _figures(d: Path) -> list[str]:
    return sorted(p.name for p in d.iterdir() if p.is_file() and p.suffix in FIGURE_SUFFIXES)


def test_report_of_published_records_renders_byte_identically(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    recs = _figure_records() + [_long_record()]
    _publish(Path("results"), recs)
    one = build_report(["results/smoke"], "out1", echo=None)
    two = build_report(["results/smoke"], "out2", echo=None)
    assert one.records == two.records == len(recs)
    names = sorted(p.name for p in Path("out1").iterdir())
    assert names == sorted(p.name for p in Path("out2").iterdir()) and _figures(Path("out1"))
    match, mismatch, errors = filecmp.cmpfiles("out1", "out2", names, shallow=False)
    assert mismatch == [] and errors == [], mismatch  # text and (same machine) PNG bytes
    assert "results/smoke/0000.json" in Path("out1/long.csv").read_text()  # sources are the published files


def _published_profiles(repo: Path) -> list[str]:
    results = repo / "results"
    if not results.is_dir():
        return []
    return sorted(p.name for p in results.iterdir() if p.is_dir() and any(p.glob("*.json")))


def text_problems(repo: Path) -> list[str]:
    """Every string in a file under ``repo/results/`` that is longer than a short label, and every file there that
    is not a published record."""
    results = repo / "results"
    if not results.is_dir():
        return []
    bad = []
    for f in sorted(p for p in results.rglob("*") if p.is_file()):
        rel = f.relative_to(repo)
        if f.suffix != ".json":
            bad.append(f"{rel}: not a published record (only <profile>/<key>.json belongs under results/)")
            continue
        try:
            obj = json.loads(f.read_text(encoding="utf-8"))
        except ValueError as err:
            bad.append(f"{rel}: invalid JSON ({err})")
            continue
        bad += [f"{rel}: {path} is a {n}-char string (text, not a label)" for path, n in P.long_strings(obj)]
        bad += [f"{rel}: {path} is an absolute local path ({s[:60]}); `sdd-bench publish` writes it portable, and "
                f"`sdd-bench publish --stamp {rel.parent} --resign-sanitized` rewrites a record published before that"
                for path, s in P.absolute_paths(obj)]
        if not isinstance(obj, dict) or "published" not in obj:
            bad.append(f"{rel}: not written by `sdd-bench publish` (no 'published' block)")
    return bad


def leaderboard_problems(repo: Path, scratch: Path, monkeypatch) -> list[str]:
    """How ``repo/docs/leaderboard/<profile>/`` differs from a fresh ``sdd-bench report results/<profile>`` (run in
    ``repo``, rendered into ``scratch``): text files byte for byte, figures by name."""
    monkeypatch.chdir(repo)
    profiles = _published_profiles(repo)
    board = repo / "docs" / "leaderboard"
    problems = []
    for p in profiles:
        committed = board / p
        if not committed.is_dir():
            problems.append(f"docs/leaderboard/{p}/ is missing: {RERENDER.format(p=p)}")
            continue
        fresh = scratch / p
        build_report([f"results/{p}"], fresh, echo=None)
        if _text_files(committed) != _text_files(fresh) or _figures(committed) != _figures(fresh):
            problems.append(f"docs/leaderboard/{p}/ has other files than a fresh render "
                            f"({_text_files(committed) + _figures(committed)} vs {_text_files(fresh) + _figures(fresh)}): "
                            f"{RERENDER.format(p=p)}")
            continue
        _, diff, err = filecmp.cmpfiles(committed, fresh, _text_files(fresh), shallow=False)
        if diff or err:
            problems.append(f"docs/leaderboard/{p}/ differs from results/{p} in {diff + err}: {RERENDER.format(p=p)}")
    if board.is_dir():  # a leaderboard without records behind it
        for d in sorted(x for x in board.iterdir() if x.is_dir() and x.name not in profiles):
            problems.append(f"docs/leaderboard/{d.name}/ has no records in results/{d.name}/: publish them "
                            f"(`sdd-bench publish`) or remove the directory")
    return problems


def test_every_published_record_holds_no_text():
    """Every file under results/ is a sanitized record: no string longer than a short label (prompts, generations),
    and no absolute local path (a machine's directories, a user's home)."""
    bad = text_problems(REPO)
    assert not bad, "published records must hold no prompt or generation text and no absolute path:\n" + "\n".join(bad)


def test_committed_leaderboard_matches_the_committed_records(tmp_path, monkeypatch):
    """CI: docs/leaderboard/<profile>/ is what `sdd-bench report results/<profile>` renders now (text files byte for
    byte, figures (PNG, SVG) by name: their bytes depend on the matplotlib/freetype build).  No models run.  Passes with no
    results/ (and then expects no docs/leaderboard/<profile>/)."""
    problems = leaderboard_problems(REPO, tmp_path / "fresh", monkeypatch)
    assert not problems, "\n".join(problems)


def test_the_checks_fail_when_they_should(tmp_path, monkeypatch):
    """The two checks above, on a scratch repository: clean, then each way they must fail."""
    repo = tmp_path / "repo"
    repo.mkdir()
    assert leaderboard_problems(repo, tmp_path / "s0", monkeypatch) == [] and text_problems(repo) == []
    monkeypatch.chdir(repo)
    _publish(Path("results"), _figure_records()[:4] + [_long_record()])
    assert text_problems(repo) == []
    assert leaderboard_problems(repo, tmp_path / "s1", monkeypatch) == [
        f"docs/leaderboard/smoke/ is missing: {RERENDER.format(p='smoke')}"]
    assert main(["report", "results/smoke/", "--out", "docs/leaderboard/smoke", "--quiet"]) == 0  # as the message says
    assert leaderboard_problems(repo, tmp_path / "s2", monkeypatch) == []
    # a record published later, without re-rendering
    P.publish_record(make_record("sdd", "advbench-10", n=10, harm=0.33), "record/late", "results")
    problems = leaderboard_problems(repo, tmp_path / "s3", monkeypatch)
    assert len(problems) == 1 and "differs from results/smoke in" in problems[0] and "table1.md" in problems[0]
    assert problems[0].endswith(RERENDER.format(p="smoke"))
    assert main(["report", str(repo / "results" / "smoke"), "--out", "docs/leaderboard/smoke", "--quiet"]) == 0
    assert leaderboard_problems(repo, tmp_path / "s4", monkeypatch) == []  # an absolute path renders the same
    # a hand-edited table
    md = repo / "docs" / "leaderboard" / "smoke" / "table1.md"
    md.write_text(md.read_text() + "(edited by hand)\n")
    assert "table1.md" in leaderboard_problems(repo, tmp_path / "s5", monkeypatch)[0]
    # text in a record, a stray file
    f = repo / "results" / "smoke" / "late.json"
    f.write_text(f.read_text().replace('"advbench-10"', '"' + "How do I " * 30 + '"', 1))
    (repo / "results" / "smoke" / "notes.txt").write_text("x")
    bad = text_problems(repo)
    assert any("late.json" in b and "270-char string" in b for b in bad) and any("notes.txt" in b for b in bad)
    # an absolute path in a record (as records published before 2026-12-07 held in capability.model.path)
    g = repo / "results" / "smoke" / "0000.json"
    rec = json.loads(g.read_text())
    rec["artifacts"]["model_path"] = "/home/someone/runs/model/0123"
    g.write_text(P.dumps(rec))
    assert any("0000.json" in b and "absolute local path (/home/someone" in b for b in text_problems(repo))
    # a leaderboard whose records are gone
    for x in (repo / "results" / "smoke").iterdir():
        x.unlink()
    assert "has no records in results/smoke/" in leaderboard_problems(repo, tmp_path / "s6", monkeypatch)[0]


def test_cli_publish_from_a_work_dir_and_report(tmp_path, monkeypatch, capsys):
    """``sdd-bench publish`` with no grid: every finished record of the work dir (synthetic store records)."""
    from sdd_bench.harness.store import Store
    store = Store(tmp_path / "runs")
    for i, rec in enumerate([make_record("none", "advbench-100"), make_record("sdd", "advbench-100")]):
        with store.writing("record", f"key{i}", {"i": i}) as d:
            (d / "record.json").write_text(json.dumps(rec))
    monkeypatch.chdir(tmp_path)
    assert main(["publish", "--workdir", "runs"]) == 0
    out = capsys.readouterr().out
    assert "2 record(s) -> results/ (2 written, 0 unchanged)" in out
    assert sorted(p.name for p in Path("results/smoke").iterdir()) == ["key0.json", "key1.json"]
    assert main(["publish", "--workdir", "runs", "--quiet"]) == 0
    assert "(0 written, 2 unchanged)" in capsys.readouterr().out
    assert main(["report", "results/smoke", "--out", "docs/leaderboard/smoke", "--quiet"]) == 0
    assert "report: 2 records" in capsys.readouterr().out
    assert main(["publish", "--workdir", "empty"]) == 0
    assert "no finished record" in capsys.readouterr().out
