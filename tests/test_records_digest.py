"""Published records that cannot be silently wrong (issue 38): each carries a digest of its content
(``published.digest``), and report, publish and ``grid --publish`` notice a record edited after publishing; strict
JSON on read; the one-time stamp for records published before digests.  No model runs."""
import json
from pathlib import Path

import pytest

from sdd_bench.harness import grid as G
from sdd_bench.harness import publish as P
from sdd_bench.harness.cli import main
from sdd_bench.harness.store import Store
from sdd_bench.leaderboards.records import ReportError, load
from sdd_bench.leaderboards.report import build_report
from test_leaderboards import make_record

GRID = "name: pub\nprofile: tiny\ndefenses: [none]\nattacks: [none]\ncapability: false\n"


def _edit(path: Path, value: float = 0.777) -> None:
    """A hand edit: the benign refusal rate of the initial model (0.0) becomes another number, nothing else."""
    rec = json.loads(path.read_text())
    assert rec["metrics"]["initial"]["benign"]["refusal_rate"]["value"] == 0.0
    rec["metrics"]["initial"]["benign"]["refusal_rate"]["value"] = value
    path.write_text(P.dumps(rec))


def _unsign(path: Path) -> None:
    """The file as an sdd-bench from before digests published it."""
    rec = json.loads(path.read_text())
    del rec["published"]["digest"]
    path.write_text(P.dumps(rec))


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err, err
    return err


def test_publish_signs_the_content_and_report_refuses_a_hand_edited_number(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    f = P.publish_record(make_record("sdd", "advbench-100"), "record/k1", "results").path
    rec = json.loads(f.read_text())
    assert rec["published"]["digest"] == P.content_digest(rec) and rec["published"]["digest"].startswith("sha256:")
    assert P.verify(rec) == "signed"
    _edit(f)
    assert P.verify(json.loads(f.read_text())) == "tampered"
    assert main(["report", "results/smoke", "--out", "out", "--quiet"]) == 2
    err = _one_error_line(capsys)
    assert "results/smoke/k1.json: edited after it was published" in err and "git checkout -- results/smoke/k1.json" in err
    assert not Path("out").exists()  # nothing rendered
    with pytest.raises(ReportError, match="k1.json"):
        build_report(["results/smoke"], "out", echo=None)


def test_publish_refuses_to_overwrite_a_hand_edited_file(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    store = Store(tmp_path / "runs")
    for i, rec in enumerate([make_record("none", "advbench-100"), make_record("sdd", "advbench-100")]):
        with store.writing("record", f"key{i}", {"i": i}) as d:
            (d / "record.json").write_text(json.dumps(rec))
    assert main(["publish", "--workdir", "runs", "--quiet"]) == 0
    capsys.readouterr()
    f = Path("results/smoke/key0.json")
    _edit(f)
    Path("results/smoke/key1.json").unlink()
    edited = f.read_bytes()
    assert main(["publish", "--workdir", "runs", "--quiet"]) == 1
    captured = capsys.readouterr()
    refused = [x for x in captured.err.splitlines() if "REFUSED" in x]
    assert len(refused) == 1 and "results/smoke/key0.json: edited after it was published" in refused[0]
    assert "does not overwrite it" in refused[0] and "git checkout -- results/smoke/key0.json" in refused[0]
    assert "(1 written, 0 unchanged, 1 refused)" in captured.out  # the other record is still published
    assert f.read_bytes() == edited and Path("results/smoke/key1.json").is_file()
    with pytest.raises(P.PublishError, match="does not overwrite"):
        P.publish_record(make_record("none", "advbench-100"), "record/key0", "results")
    # a file published before digests is replaced (and signed) as before
    _unsign(Path("results/smoke/key1.json"))
    assert P.publish_record(make_record("sdd", "advbench-100"), "record/key1", "results").changed
    assert P.verify(json.loads(Path("results/smoke/key1.json").read_text())) == "signed"


def test_grid_publish_plan_does_not_count_a_hand_edited_record_as_done(tmp_path, monkeypatch, capsys):
    from sdd_bench.harness import config as C
    from sdd_bench.harness import models, pipeline
    monkeypatch.chdir(tmp_path)
    Path("g.yaml").write_text(GRID)
    (cell,) = G.expand(G.load_grid("g.yaml"))
    r = pipeline.resolve(cell)
    rec = make_record("none", "none", profile="tiny")  # the cell's identity, made-up numbers
    rec.update(spec=C.to_dict(r.spec), config=pipeline.run_config(r),
               artifacts={"model": f"model/{models.model_key(r.model)}"})
    rec["cell"]["model"] = r.model
    f = P.publish_record(json.loads(json.dumps(rec)), "record/k1", "results").path
    cmd = ["grid", "g.yaml", "--plan", "--publish", "results", "--workdir", "w", "--quiet"]
    assert main(cmd) == 0
    assert "1 finished (1 of them published" in capsys.readouterr().out
    _edit(f)
    assert main(cmd) == 0
    out = capsys.readouterr().out
    assert "0 finished" in out and "1 to run" in out
    lines = [x for x in out.splitlines() if "edited after it was published" in x]
    assert len(lines) == 1 and "results/tiny/k1.json" in lines[0] and "git checkout -- results/tiny/k1.json" in lines[0]
    # an unsigned record (published before digests) still counts, with one line
    P.publish_record(json.loads(json.dumps(rec)), "record/k2", "results")  # k1 stays edited
    _unsign(Path("results/tiny/k2.json"))
    assert main(cmd) == 0
    out = capsys.readouterr().out
    assert "1 finished (1 of them published" in out
    assert "1 published record(s) carry no digest" in out and "sdd-bench publish --stamp results/tiny" in out


def test_a_nan_literal_is_one_error_naming_the_file(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    P.publish_record(make_record("none", "advbench-100"), "record/k0", "results")
    f = P.publish_record(make_record("sdd", "advbench-100"), "record/k1", "results").path
    text = f.read_text()
    f.write_text(text.replace('"value": 0.0', '"value": NaN', 1))
    assert main(["report", "results/smoke", "--out", "out", "--quiet"]) == 2
    err = _one_error_line(capsys)
    assert "results/smoke/k1.json: holds NaN, which is not a JSON number" in err and "git checkout --" in err
    assert not Path("out").exists()
    f.write_text(text.replace('"value": 0.0', '"value": -Infinity', 1))
    with pytest.raises(ReportError, match="k1.json: holds -Infinity"):
        load(["results/smoke/k1.json"], log=lambda *_: None)
    with pytest.raises(ValueError):
        P.loads_strict('{"a": Infinity}')
    # publish writes strict JSON: a NaN in a record becomes null, as in the store
    pub = P.publish_record(make_record("none", "none", harm0=float("nan")), "record/k2", "results").path
    assert "NaN" not in pub.read_text() and P.verify(P.loads_strict(pub.read_text())) == "signed"


def test_an_unsigned_record_is_read_with_one_note(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for i, d in enumerate(("none", "sdd", "booster")):
        P.publish_record(make_record(d, "advbench-100"), f"record/k{i}", "results")
    _unsign(Path("results/smoke/k0.json"))
    _unsign(Path("results/smoke/k2.json"))
    lines: list[str] = []
    loaded = load(["results/smoke"], log=lines.append)
    assert len(loaded) == 3  # read, not dropped
    assert lines == ["2 published record(s) carry no digest (published before digests, or by an older sdd-bench) "
                     "and are read as they are: k0.json, k2.json; sign them once, after checking them: "
                     "`sdd-bench publish --stamp results/smoke`"]
    assert P.verify(make_record()) == "unpublished"  # a store record is not a published one: no note
    lines.clear()
    load(["results/smoke/k1.json"], log=lines.append)
    assert lines == []


def test_stamp_signs_unsigned_records_once_and_never_an_edited_one(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    files = [P.publish_record(make_record(d, "advbench-100"), f"record/k{i}", "results").path
             for i, d in enumerate(("none", "sdd", "booster"))]
    signed = [f.read_bytes() for f in files]
    _unsign(files[0])
    _unsign(files[1])
    assert main(["publish", "--stamp", "results/smoke", "--quiet"]) == 0
    assert "3 file(s) in results/smoke: 2 stamped, 1 already signed, 0 not stamped" in capsys.readouterr().out
    assert [f.read_bytes() for f in files] == signed  # exactly what publish would have written
    mtimes = [f.stat().st_mtime_ns for f in files]
    assert main(["publish", "--stamp", "results", "--quiet"]) == 0  # idempotent, from the results root too
    assert "0 stamped, 3 already signed, 0 not stamped" in capsys.readouterr().out
    assert [f.stat().st_mtime_ns for f in files] == mtimes and [f.read_bytes() for f in files] == signed
    # an edited signed record is reported, not re-signed (that would bless the edit)
    _edit(files[2])
    edited = files[2].read_bytes()
    assert main(["publish", "--stamp", "results/smoke", "--quiet"]) == 1
    captured = capsys.readouterr()
    assert "1 not stamped" in captured.out and "k2.json: edited after it was published" in captured.err
    assert len(captured.err.strip().splitlines()) == 1 and files[2].read_bytes() == edited
    assert main(["publish", "g.yaml", "--stamp", "results"]) == 2  # --stamp takes no grid
    assert "takes no GRID" in _one_error_line(capsys)
