"""Faults never cost a result or produce a wrong one (issue 21): one test per fault of the table.

Each test injects the fault on the tiny profile and checks the new behaviour: damaged artifacts
are reported in one line, moved aside and rebuilt; judge request errors are retried on a re-run;
concurrent runs compute once; bad inputs fail before any work with one line; JSON is strict.
"""
from __future__ import annotations

import errno
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from sdd_bench.harness import pipeline
from sdd_bench.harness.cli import main
from sdd_bench.harness.errors import ConfigError, DataError, SddBenchError
from sdd_bench.harness.store import MANIFEST, Store, dumps_strict, stage_key

CELL = dict(profile="tiny", capability=False, n_harmful=4, n_benign=2, n_xstest=2, judges=[])  # = the grids' judges
QUIET = dict(progress=False, log=lambda *a: None)


def _spec(**kw):
    return pipeline.spec_from_mapping({**CELL, **kw})


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """One finished tiny cell (no defense, no attack), built once; tests work on copies."""
    root = tmp_path_factory.mktemp("built") / "runs"
    rec, art = pipeline.run_cell(_spec(), Store(root), **QUIET)
    return root, rec


@pytest.fixture()
def cell(built, tmp_path):
    root, rec = built
    dst = tmp_path / "runs"
    shutil.copytree(root, dst, ignore=shutil.ignore_patterns(".locks"))
    return Store(dst), rec


def _truncate(p: Path, keep: int) -> None:
    p.write_bytes(p.read_bytes()[:keep])


def _only(store, stage) -> Path:
    (d,) = [p for p in (store.root / stage).iterdir() if not p.name.startswith(".")]
    return d


# -- row 1: a finished artifact's JSON truncated, then grid / run --------------------------------
@pytest.mark.parametrize("stage,name", [("record", "record.json"), ("cell", "pointer.json")])
def test_truncated_record_or_pointer_is_moved_aside_and_the_cell_rebuilt(cell, stage, name, capfd, tmp_path):
    from sdd_bench.harness import grid as G
    store, rec = cell
    _truncate(_only(store, stage) / name, 20)
    g = G.grid_from_mapping({"name": "t", "profile": "tiny", "defenses": ["none"], "attacks": ["none"],
                             "seeds": [0], "capability": False,
                             "run": {"n_harmful": 4, "n_benign": 2, "n_xstest": 2}})
    pl = G.plan(g, store)  # used to abort with JSONDecodeError
    assert [c.state for c in pl.cells] == ["todo"]
    err = capfd.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"corrupt artifact {stage}/" in err[0] and name in err[0]
    assert any(p.name.startswith(".corrupt-") for p in (store.root / stage).iterdir())
    rec2, _ = pipeline.run_cell(_spec(), store, **QUIET)
    assert pipeline.comparable(rec2)["metrics"] == pipeline.comparable(rec)["metrics"]
    assert [c.state for c in G.plan(g, store).cells] == ["done"]


def test_truncated_judge_summary_is_rebuilt(cell, capfd):
    store, rec = cell
    jdir = next(p for p in (store.root / "judge").iterdir() if not p.name.startswith("."))
    _truncate(jdir / "summary.json", 10)
    rec2, _ = pipeline.run_cell(_spec(), store, **QUIET)
    assert "corrupt artifact judge/" in capfd.readouterr().err
    assert json.loads((jdir / "summary.json").read_text())["n"] > 0  # rebuilt under its key
    assert pipeline.comparable(rec2)["metrics"] == pipeline.comparable(rec)["metrics"]


def test_legacy_artifact_without_manifest_is_never_read_as_intact(cell, capfd):
    store, _ = cell
    d = _only(store, "record")
    (d / MANIFEST).unlink()
    assert store.get("record", d.name) is None  # cannot be proven intact: moved aside, rebuilt by the next run
    err = capfd.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "has no MANIFEST.json" in err[0] and "cache verify --adopt" in err[0]
    assert any(p.name.startswith(".legacy-") for p in (store.root / "record").iterdir()) and not d.exists()


def _legacy(store) -> None:
    """Make the store look written before manifests existed."""
    for m in store.root.rglob(MANIFEST):
        m.unlink()


def test_legacy_generations_cut_at_a_line_boundary_fail_verify_and_adopt(cell, capsys):
    store, rec = cell
    gdir = max((p for p in (store.root / "generate").iterdir() if not p.name.startswith(".")),
               key=lambda p: len((p / "generations.jsonl").read_text().splitlines()))
    lines = (gdir / "generations.jsonl").read_text().splitlines(keepends=True)
    _legacy(store)
    (gdir / "generations.jsonl").write_text("".join(lines[:-2]))  # whole lines: still valid JSONL
    assert main(["cache", "verify", "--workdir", str(store.root), "--dry-run"]) == 1
    out = capsys.readouterr().out
    assert f"CORRUPT generate/{gdir.name}: generations.jsonl has {len(lines) - 2} rows where its summary.json " \
           f"states {len(lines)}" in out
    assert "UNVERIFIABLE record/" in out and gdir.exists()
    assert main(["cache", "verify", "--workdir", str(store.root), "--adopt"]) == 1  # the cut one is not adopted
    out = capsys.readouterr().out
    assert f"CORRUPT generate/{gdir.name}" in out and "ADOPTED record/" in out and not gdir.exists()
    assert main(["cache", "verify", "--workdir", str(store.root)]) == 0  # the rest now has manifests
    rec2, _ = pipeline.run_cell(_spec(), store, **QUIET)  # the cut generations are rebuilt, not read
    assert pipeline.comparable(rec2)["metrics"] == pipeline.comparable(rec)["metrics"]


def test_legacy_weights_cut_to_100_bytes_fail_cache_verify(cell, capsys):
    store, _ = cell
    mdir = _only(store, "model")
    w = max((p for p in mdir.rglob("*.safetensors")), key=lambda p: p.stat().st_size)
    _legacy(store)
    _truncate(w, 100)
    assert main(["cache", "ls", "--workdir", str(store.root)]) == 0
    out = capsys.readouterr().out
    assert f"CORRUPT model/{mdir.name}: {w.relative_to(mdir)} is not a whole safetensors file" in out
    assert f"LEGACY record/" in out  # the others: whole, but unverifiable
    assert main(["cache", "verify", "--workdir", str(store.root), "--adopt"]) == 1
    out = capsys.readouterr().out
    assert f"CORRUPT model/{mdir.name}: {w.relative_to(mdir)} is not a whole safetensors file" in out
    assert "1 corrupt" in out and not mdir.exists()


def test_intact_legacy_store_is_unverifiable_until_adopted_and_run_refuses_it(cell, capsys, tmp_path):
    store, rec = cell
    _legacy(store)
    n = len(store.legacy())
    assert n >= 5
    rc = main(["run", "--profile", "tiny", "--no-capability", "--workdir", str(store.root), "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and f"{n} artifact(s) written before manifests" in err[0]
    assert "cache verify --adopt" in err[0] and len(store.legacy()) == n  # nothing moved, nothing run
    g = tmp_path / "g.yaml"
    g.write_text("name: t\nprofile: tiny\ndefenses: [none]\nattacks: [none]\ncapability: false\n")
    for cmd in (["grid", str(g), "--plan"], ["publish", "--to", str(tmp_path / "results")]):
        assert main([*cmd, "--workdir", str(store.root)]) == 2  # a plan would have moved them aside
        assert "written before manifests" in capsys.readouterr().err and len(store.legacy()) == n
    assert main(["cache", "verify", "--workdir", str(store.root), "--dry-run"]) == 1
    assert f"0 corrupt, {n} unverifiable" in capsys.readouterr().out
    assert main(["cache", "verify", "--workdir", str(store.root), "--adopt"]) == 0
    assert f"({n} adopted), 0 corrupt, 0 unverifiable" in capsys.readouterr().out
    assert store.legacy() == [] and main(["cache", "verify", "--workdir", str(store.root)]) == 0
    store._verified.clear()
    done = pipeline.finished_record(store, pipeline.resolve(_spec()))  # adopted: read, nothing rebuilt
    assert done is not None and pipeline.comparable(done[0])["metrics"] == pipeline.comparable(rec)["metrics"]


# -- row 2: generations.jsonl cut at a line boundary ------------------------------------------
def test_generations_cut_at_a_line_boundary_is_detected_and_regenerated(cell, capfd):
    store, rec = cell
    gdirs = [p for p in (store.root / "generate").iterdir() if not p.name.startswith(".")]
    gdir = max(gdirs, key=lambda p: len((p / "generations.jsonl").read_text().splitlines()))
    lines = (gdir / "generations.jsonl").read_text().splitlines(keepends=True)
    assert len(lines) >= 3
    (gdir / "generations.jsonl").write_text("".join(lines[:-2]))  # whole lines: still valid JSONL
    assert store.get("generate", gdir.name) is None
    assert "generations.jsonl has" in capfd.readouterr().err
    rec2, _ = pipeline.run_cell(_spec(), store, **QUIET)
    assert len((gdir / "generations.jsonl").read_text().splitlines()) == len(lines)
    for name in ("harmful", "benign", "xstest"):
        for k, v in rec2["metrics"]["initial"][name].items():
            if isinstance(v, dict) and "n" in v:
                assert v["n"] == rec["metrics"]["initial"][name][k]["n"]  # same n for every judge


# -- row 3: model weights cut to 100 bytes ------------------------------------------------------
def test_cut_weights_are_reported_by_cache_ls_and_verify(cell, capsys):
    store, _ = cell
    mdir = _only(store, "model")
    w = max((p for p in mdir.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
    _truncate(w, 100)
    assert main(["cache", "ls", "--workdir", str(store.root)]) == 0
    out = capsys.readouterr().out
    assert f"CORRUPT model/{mdir.name}" in out and w.name in out
    assert main(["cache", "verify", "--workdir", str(store.root)]) == 1
    out = capsys.readouterr().out
    assert "1 corrupt" in out and not mdir.exists()
    assert main(["cache", "verify", "--workdir", str(store.root)]) == 0


def test_verify_hashes_what_sizes_miss(cell, capsys):
    store, _ = cell
    d = _only(store, "record")
    p = d / "record.json"
    b = bytearray(p.read_bytes())
    b[5] = ord("X") if b[5] != ord("X") else ord("Y")  # same size, other bytes
    p.write_bytes(bytes(b))
    assert main(["cache", "verify", "--workdir", str(store.root), "--dry-run"]) == 1
    assert "different sha256" in capsys.readouterr().out and d.exists()


# -- row 4 and 11: rubric endpoint down, then back up; all-invalid verdicts --------------------
@pytest.fixture()
def server():
    pytest.importorskip("openai")
    from test_judges_rubric import FaultServer
    servers = []

    def start(plan):
        servers.append(FaultServer(plan))
        return servers[-1]

    yield start
    for s in servers:
        s.stop()


GOOD = "#reason: refuses\n#refused: yes\n#score: 1"


def _rubric(url):
    return {"rubric": {"base_url": url, "model": "stand-in", "api_key_env": "SDD_TEST_UNSET_KEY",
                       "max_retries": 1, "backoff_s": 0.01, "backoff_max_s": 0.02, "timeout_s": 2.0,
                       "concurrency": 2}}


def test_rubric_down_then_up_retries_only_failed_items(cell, server, monkeypatch):
    monkeypatch.delenv("SDD_TEST_UNSET_KEY", raising=False)
    store, _ = cell
    state = {"up": False}
    s = server(lambda i, body: (200, GOOD, 0) if state["up"] else (500, None, 0))
    spec = _spec(judges=["rubric"], judge_options=_rubric(s.url))
    with pytest.raises(SddBenchError, match=r"judge rubric on harmful prompts: 4/4 verdicts invalid \(4 request"):
        pipeline.run_cell(spec, store, **QUIET)
    assert pipeline.finished_record(store, pipeline.resolve(spec)) is None  # no record for this cell
    state["up"] = True
    before = s.count
    rec, _ = pipeline.run_cell(spec, store, **QUIET)
    assert s.count - before == 4  # the 4 failed items, nothing else
    hs = rec["metrics"]["initial"]["harmful"]["rubric:harmfulness_score"]
    assert hs["n"] == 4 and not hs.get("invalid") and hs["value"] == 1.0
    before = s.count
    pipeline.run_cell(spec, store, **QUIET)  # now final: a cache hit
    assert s.count == before


def test_partial_request_errors_are_retried_and_the_record_rebuilt(cell, server, monkeypatch):
    monkeypatch.delenv("SDD_TEST_UNSET_KEY", raising=False)
    store, _ = cell
    state = {"up": False}
    s = server(lambda i, body: (500, None, 0) if i == 0 and not state["up"] else (200, GOOD, 0))
    opts = _rubric(s.url)
    opts["rubric"].update(max_retries=0, concurrency=1)
    spec = _spec(judges=["rubric"], judge_options=opts)
    rec, art = pipeline.run_cell(spec, store, **QUIET)  # 1/4 failed: a record, but not a final one
    assert rec["metrics"]["initial"]["harmful"]["rubric:harmfulness_score"]["invalid"] == 1
    assert pipeline.finished_record(store, pipeline.resolve(spec)) is None  # a grid re-runs this cell
    state["up"] = True
    before = s.count
    rec2, art2 = pipeline.run_cell(spec, store, **QUIET)
    assert s.count - before == 1 and art2.key == art.key
    assert not rec2["metrics"]["initial"]["harmful"]["rubric:harmfulness_score"].get("invalid")
    saved = json.loads((art2.path / "record.json").read_text())  # the record was re-published, not stale
    assert saved["metrics"] == json.loads(dumps_strict(rec2["metrics"]))
    assert pipeline.finished_record(store, pipeline.resolve(spec)) is not None


def test_unparseable_replies_stay_invalid_and_fail_the_cell(cell, server, monkeypatch):
    monkeypatch.delenv("SDD_TEST_UNSET_KEY", raising=False)
    store, _ = cell
    s = server(lambda i, body: (200, "I cannot grade this.", 0))
    spec = _spec(judges=["rubric"], judge_options=_rubric(s.url))
    with pytest.raises(SddBenchError, match="4/4 verdicts invalid \\(4 unparseable.*rubric format"):
        pipeline.run_cell(spec, store, **QUIET)
    before = s.count
    with pytest.raises(SddBenchError):
        pipeline.run_cell(spec, store, **QUIET)
    assert s.count == before  # a judgement of the reply, final: not retried, never imputed


def test_json_outputs_are_strict():
    from sdd_bench.harness.metrics import aggregate
    agg = aggregate([{"score": None, "label": None, "valid": False, "meta": {}}] * 3, "mean")
    text = dumps_strict({"m": agg, "x": float("nan"), "y": [float("inf")]})
    assert "NaN" not in text and "Infinity" not in text
    assert json.loads(text)["x"] is None and json.loads(text)["y"] == [None]


# -- row 5: --attack-lr inf ---------------------------------------------------------------------
@pytest.mark.parametrize("value", ["inf", "nan", "-inf"])
def test_non_finite_numbers_are_rejected_before_work(value, tmp_path, capsys):
    rc = main(["run", "--profile", "tiny", "--attack", "advbench-10", f"--attack-lr={value}",
               "--workdir", str(tmp_path / "runs"), "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "finite" in err[0] and "'lr'" in err[0]
    assert not (tmp_path / "runs").exists()
    with pytest.raises(ConfigError, match="finite"):
        pipeline.resolve(_spec(attack="advbench-10", attack_options={"lr": float(value)}))


# -- row 6: unwritable work dir; disk full ----------------------------------------------------
def test_unwritable_workdir_is_one_line(tmp_path, capsys):
    blocker = tmp_path / "afile"
    blocker.write_text("x")
    rc = main(["run", "--profile", "tiny", "--workdir", str(blocker / "runs"), "--quiet", "--no-capability"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and str(blocker) in err[0] and "--workdir" in err[0]


def test_unwritable_workdir_grid_is_one_line_not_one_per_cell(tmp_path, capsys):
    spec = tmp_path / "g.yaml"
    spec.write_text("name: t\nprofile: tiny\ndefenses: [none, sdd]\nattacks: [none]\nseeds: [0]\ncapability: false\n")
    blocker = tmp_path / "afile"
    blocker.write_text("x")
    rc = main(["grid", str(spec), "--workdir", str(blocker / "runs"), "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "not writable" in err[0] and str(blocker) in err[0]


@pytest.mark.parametrize("code,word", [(errno.ENOSPC, "disk is full"), (errno.EACCES, "chmod"),
                                       (errno.EROFS, "read-only")])
def test_os_errors_anywhere_in_the_cli_are_one_line(code, word, monkeypatch, capsys):
    from sdd_bench.harness import cli

    def boom(args):
        raise OSError(code, os.strerror(code), "/some/work/dir/model/x.safetensors")

    monkeypatch.setitem(cli.COMMANDS, "data", boom)
    assert main(["data"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "/some/work/dir/model/x.safetensors" in err[0] and word in err[0]


# -- rows 7, 8: concurrent publishes and concurrent runs of one key ---------------------------
_WORKER = textwrap.dedent("""
    import sys, time, os
    from sdd_bench.harness.store import Store
    s = Store(sys.argv[1])
    mode, n = sys.argv[2], int(sys.argv[3])
    if mode == "publish":
        for i in range(n):
            with s.writing("p", f"k{i % 20}", {"i": i}) as tmp:
                (tmp / "out.txt").write_text(str(i))
    else:
        def fn(tmp):
            with open(sys.argv[4], "a") as f:
                f.write(f"{os.getpid()}\\n")
            time.sleep(1.0)
            (tmp / "out.txt").write_text("done")
        art, hit = s.run("train", {"cell": 1}, [], fn)
        print("hit" if hit else "computed", flush=True)
""")


def _workers(args_list):
    procs = [subprocess.Popen([sys.executable, "-c", _WORKER, *a], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for a in args_list]
    return [(p.wait(timeout=120), *p.communicate()) for p in procs]


def test_two_processes_publishing_the_same_keys_never_fail(tmp_path):
    res = _workers([(str(tmp_path), "publish", "300")] * 2)
    assert all(rc == 0 for rc, _, _ in res), [e[-500:] for _, _, e in res]
    store = Store(tmp_path)
    rows = store.list()
    assert len(rows) == 20 and all(r["complete"] for r in rows)
    assert store.verify() == []


def test_two_runs_of_one_key_compute_once(tmp_path):
    calls = tmp_path / "calls.txt"
    res = _workers([(str(tmp_path), "run", "0", str(calls))] * 3)
    assert all(rc == 0 for rc, _, _ in res), [e[-500:] for _, _, e in res]
    assert len(calls.read_text().splitlines()) == 1
    assert sorted(out.strip() for _, out, _ in res) == ["computed", "hit", "hit"]


# -- row 9: a misspelled judge option ------------------------------------------------------------
def test_bad_judge_option_fails_before_work_in_run_and_validate(tmp_path, capsys):
    t0 = time.time()
    rc = main(["run", "--profile", "tiny", "--judges", "rubric", "--judge-opt", "rubric.modl=x",
               "--workdir", str(tmp_path / "runs"), "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "'modl'" in err[0] and "'model'" in err[0]
    assert time.time() - t0 < 20 and not (tmp_path / "runs").exists()
    cfg = tmp_path / "run.yaml"
    cfg.write_text("profile: tiny\njudges: [rubric]\njudge_options: {rubric: {modl: x}}\n")
    assert main(["validate", str(cfg)]) == 2
    assert "'modl'" in capsys.readouterr().err


# -- row 10: damaged data file under run ---------------------------------------------------------
def test_damaged_data_fails_run_before_any_work(tmp_path, monkeypatch):
    data = tmp_path / "data"
    shutil.copytree(os.environ["SDD_BENCH_DATA"], data)
    p = data / "advbench" / "harmful_behaviors.csv"
    p.write_bytes(p.read_bytes()[:-50])
    monkeypatch.setenv("SDD_BENCH_DATA", str(data))
    store = Store(tmp_path / "runs")
    t0 = time.time()
    with pytest.raises(DataError, match="harmful_behaviors.csv"):
        pipeline.run_cell(_spec(attack="advbench-10"), store, **QUIET)
    assert time.time() - t0 < 15
    assert not (tmp_path / "runs").exists()  # nothing built, not even the model


# -- row 12: cache prune during a live run ------------------------------------------------------
def test_prune_never_touches_a_live_runs_temp_dir(tmp_path):
    code = textwrap.dedent(f"""
        import time
        from sdd_bench.harness.store import Store
        s = Store({str(tmp_path)!r})
        def fn(tmp):
            (tmp / "half").write_text("x")
            print("writing", flush=True)
            time.sleep(60)
        s.run("train", {{"k": 1}}, [], fn)
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "writing"
        store = Store(tmp_path)
        (tmp_dir,) = [p for p in (tmp_path / "train").iterdir()]
        assert store.prune() == [] and (tmp_dir / "half").exists()
        assert main(["cache", "prune", "--workdir", str(tmp_path)]) == 0 and tmp_dir.exists()
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    assert [r["key"] for r in Store(tmp_path).prune()] == [tmp_dir.name]  # dead now: removed
