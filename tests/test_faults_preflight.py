"""Everything checkable is checked before work, and the rest fails in one line (issue 38, items 4 and 5).

Each test injects a bad input on the tiny profile, as a careless or hostile user would, and checks that
``run``, ``grid`` and ``validate`` say so in one line (rc 2, no traceback) before any artifact is built.
"""
from __future__ import annotations

import errno
import json
import os
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sdd_bench.harness import grid as G
from sdd_bench.harness import pipeline
from sdd_bench.leaderboards import cell_cli
from sdd_bench.harness.cli import main
from sdd_bench.harness.errors import ConfigError, DataError, SddBenchError
from sdd_bench.harness.store import Store

CELL = dict(profile="tiny", capability=False, n_harmful=4, n_benign=2, n_xstest=2, judges=[])
QUIET = dict(progress=False, log=lambda *a: None)
TINY_RUN = ["run", "--profile", "tiny", "--no-capability", "--n-harmful", "4", "--n-benign", "2", "--n-xstest", "2",
            "--quiet"]


def _spec(**kw):
    return pipeline.spec_from_mapping({**CELL, **kw})


def _one_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("sdd-bench: error:"), err
    return err[0]


def _grid(tmp_path, body: str, name: str = "g.yaml") -> Path:
    p = tmp_path / name
    p.write_text("name: t\nprofile: tiny\ncapability: false\nrun: {n_harmful: 4, n_benign: 2, n_xstest: 2}\n" + body)
    return p


def _nothing_built(root: Path) -> bool:
    return not root.exists() or not any(p.is_dir() and not p.name.startswith(".") for p in root.iterdir())


# -- item 4: judge options and credentials ---------------------------------------------------------
def test_options_for_a_judge_not_in_the_run_are_an_error(tmp_path, capsys):
    rc = main([*TINY_RUN, "--judges", "harm-clf", "--judge-opt", "rubric.model=x", "--workdir", str(tmp_path / "r")])
    line = _one_line(capsys)
    assert rc == 2 and "'rubric'" in line and "does not use" in line and "--judges harm-clf,rubric" in line
    assert not (tmp_path / "r").exists()
    cfg = tmp_path / "run.yaml"
    cfg.write_text("profile: tiny\njudges: [harm-clf]\njudge_options: {rubric: {model: x}}\n")
    assert main(["validate", str(cfg)]) == 2 and "does not use" in _one_line(capsys)
    g = _grid(tmp_path, "defenses: [none]\nattacks: [none]\njudges: [harm-clf]\n")
    g.write_text(g.read_text().replace("run: {", "run: {judge_options: {rubric: {model: x}}, "))
    assert main(["grid", str(g), "--workdir", str(tmp_path / "r")]) == 2 and "does not use" in _one_line(capsys)
    # options of a judge every cell runs (the base judges) stay valid; an alias of a judge that runs too
    pipeline.resolve(_spec(judge_options={"keyword": {"prefixes": "jbb-refusal-prefixes"}}))
    pipeline.resolve(_spec(judges=["rubric"], judge_options={"gpt4": {"model": "m"}}))
    assert pipeline.judge_options(_spec(judges=["rubric"], judge_options={"gpt4": {"model": "m"}}),
                                  "rubric") == {"model": "m"}


@pytest.mark.parametrize("opts,env,word", [
    ([], {}, "OPENAI_API_KEY"),                                          # the default key variable, unset
    (["--judge-opt", "rubric.api_key_env=SDD_TEST_NO_SUCH_KEY"], {}, "SDD_TEST_NO_SUCH_KEY"),
    (["--judge-opt", "rubric.base_url=not-a-url"], {}, "not an http(s) URL"),
    ([], {"OPENAI_API_KEY": "k", "OPENAI_BASE_URL": "ftp//x"}, "$OPENAI_BASE_URL"),
])
def test_rubric_credentials_and_url_fail_before_any_work(opts, env, word, tmp_path, capsys, monkeypatch):
    for k in ("OPENAI_API_KEY", "OPENAI_BASE_URL", "SDD_TEST_NO_SUCH_KEY"):
        monkeypatch.delenv(k, raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    root = tmp_path / "r"
    t0 = time.time()
    rc = main([*TINY_RUN, "--judges", "rubric", *opts, "--workdir", str(root)])
    line = _one_line(capsys)
    assert rc == 2 and word in line and time.time() - t0 < 60
    assert _nothing_built(root)  # no model, no generation: the key was missing from the start
    cfg = tmp_path / "run.yaml"
    jo = dict(o.split("=", 1) for o in opts[1::2])
    cfg.write_text("profile: tiny\ncapability: false\njudges: [rubric]\n"
                   + (f"judge_options: {{rubric: {{{', '.join(f'{k[7:]}: {v}' for k, v in jo.items())}}}}}\n"
                      if jo else ""))
    assert main(["validate", str(cfg)]) == 2 and word in _one_line(capsys)
    g = _grid(tmp_path, "defenses: [none]\nattacks: [none]\njudges: [rubric]\n")
    if jo:
        g.write_text(g.read_text().replace("run: {", "run: {judge_options: {rubric: {"
                                           + ", ".join(f"{k[7:]}: {v}" for k, v in jo.items()) + "}}, "))
    assert main(["grid", str(g), "--workdir", str(root)]) == 2 and word in _one_line(capsys)
    assert _nothing_built(root)


# -- item 4: every data file a cell reads, capability tasks included ---------------------------------
@pytest.fixture()
def damaged_data(tmp_path, monkeypatch):
    def damage(rel: str, keep_lines: int | None = None):
        data = tmp_path / "data"
        shutil.copytree(os.environ["SDD_BENCH_DATA"], data)
        p = data / rel
        lines = p.read_text(encoding="utf-8").splitlines(keepends=True)
        p.write_text("".join(lines[:keep_lines if keep_lines is not None else len(lines) // 2]), encoding="utf-8")
        monkeypatch.setenv("SDD_BENCH_DATA", str(data))
        return p
    return damage


def test_truncated_capability_file_fails_validate_run_and_grid_before_work(damaged_data, tmp_path, capsys):
    damaged_data("capability/arc_easy_test.jsonl")  # cut at a line boundary: still valid JSONL
    cfg = tmp_path / "run.yaml"
    cfg.write_text("profile: tiny\njudges: []\n")
    assert main(["validate", str(cfg)]) == 2 and "arc_easy_test.jsonl" in _one_line(capsys)
    root = tmp_path / "r"
    with pytest.raises(DataError, match="arc_easy_test.jsonl"):
        pipeline.run_cell(_spec(capability=True), Store(root), **QUIET)
    assert not root.exists()
    g = _grid(tmp_path, "defenses: [none]\nattacks: [none]\n").read_text().replace("capability: false", "capability: true")
    (tmp_path / "g.yaml").write_text(g)
    assert main(["grid", str(tmp_path / "g.yaml"), "--workdir", str(root)]) == 2
    line = _one_line(capsys)
    assert "arc_easy_test.jsonl" in line and "cell none × none" in line and _nothing_built(root)
    assert main(["validate", str(tmp_path / "g.yaml")]) == 2 and "arc_easy_test.jsonl" in _one_line(capsys)


def test_responses_file_overlapping_the_evaluation_prompts_fails_before_the_attack(tmp_path):
    spec = _spec(attack="advbench-10")
    sets = pipeline.eval_sets(pipeline.resolve(spec).profile, spec)
    rf = tmp_path / "responses.jsonl"
    rf.write_text("".join(json.dumps({"prompt": x["prompt"], "response": "Sure, here is how."}) + "\n"
                          for x in sets["harmful"][1]))
    root = tmp_path / "r"
    t0 = time.time()
    with pytest.raises(SddBenchError, match=r"data overlap between attack:advbench-10 and eval:harmful \(4 prompts\)"):
        pipeline.run_cell(_spec(attack="advbench-10", attack_options={"responses_file": str(rf)}), Store(root), **QUIET)
    assert not root.exists() and time.time() - t0 < 30  # nothing trained, not even the model built
    cfg = tmp_path / "run.yaml"
    cfg.write_text(f"profile: tiny\ncapability: false\njudges: []\nattack: advbench-10\n"
                   f"attack_options: {{responses_file: {rf}}}\n")
    assert main(["validate", str(cfg)]) == 2


# -- item 4: output paths ----------------------------------------------------------------------------
def test_unwritable_out_fails_run_before_work(tmp_path, capsys):
    blocker = tmp_path / "afile"
    blocker.write_text("x")
    root = tmp_path / "r"
    rc = main([*TINY_RUN, "--workdir", str(root), "--out", str(blocker / "rec.json")])
    line = _one_line(capsys)
    assert rc == 2 and "--out" in line and str(blocker) in line and _nothing_built(root)
    rc = main([*TINY_RUN, "--workdir", str(root), "--out", str(tmp_path)])  # a directory, not a file
    assert rc == 2 and "--out" in _one_line(capsys) and _nothing_built(root)


def test_unwritable_publish_and_records_fail_grid_before_work(tmp_path, capsys):
    blocker = tmp_path / "afile"
    blocker.write_text("x")
    g = _grid(tmp_path, "defenses: [none]\nattacks: [none]\n")
    root = tmp_path / "r"
    assert main(["grid", str(g), "--workdir", str(root), "--publish", str(blocker / "results")]) == 2
    line = _one_line(capsys)
    assert "--publish" in line and str(blocker) in line and _nothing_built(root)
    assert main(["grid", str(g), "--workdir", str(root), "--records", str(blocker / "r.jsonl")]) == 2
    assert "--records" in _one_line(capsys) and _nothing_built(root)


# -- item 5: config files ------------------------------------------------------------------------------
def test_invalid_utf8_in_run_and_grid_yaml_is_one_line(tmp_path, capsys):
    run = tmp_path / "run.yaml"
    run.write_bytes(b"profile: tiny\ndefense: n\xe9ne\n")
    assert main(["run", "--config", str(run), "--workdir", str(tmp_path / "r")]) == 2
    line = _one_line(capsys)
    assert "not UTF-8" in line and "line 2" in line
    g = tmp_path / "g.yaml"
    g.write_bytes(b"name: t\nprofile: tiny\ndefenses: [none]\nattacks: [n\xff]\n")
    assert main(["grid", str(g), "--workdir", str(tmp_path / "r")]) == 2 and "not UTF-8" in _one_line(capsys)
    assert main(["validate", str(g)]) == 2 and "line 4" in _one_line(capsys)
    assert not (tmp_path / "r").exists()


def test_oversized_and_non_regular_config_files_are_one_line(tmp_path, capsys):
    big = tmp_path / "big.yaml"
    big.write_text("profile: tiny\n" + "# padding\n" * 120_000)  # > 1 MiB of valid YAML
    assert main(["validate", str(big)]) == 2 and "more than the 1,048,576" in _one_line(capsys)
    t0 = time.time()
    assert main(["validate", "/dev/zero"]) == 2 and "not a regular file" in _one_line(capsys)
    assert main(["run", "--config", "/dev/zero", "--workdir", str(tmp_path / "r")]) == 2
    assert "not a regular file" in _one_line(capsys)
    assert main(["grid", str(tmp_path), "--workdir", str(tmp_path / "r")]) == 2 and "a directory" in _one_line(capsys)
    assert time.time() - t0 < 30


def test_a_fifo_config_does_not_hang(tmp_path):
    fifo = tmp_path / "cfg.fifo"
    os.mkfifo(fifo)  # opening it for reading would block forever
    r = subprocess.run([sys.executable, "-m", "sdd_bench.harness.cli", "validate", str(fifo)], capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 2 and "not a regular file" in r.stderr and "Traceback" not in r.stderr


def test_duplicate_yaml_keys_are_an_error_not_last_wins(tmp_path, capsys):
    g = tmp_path / "g.yaml"
    g.write_text("name: t\nprofile: tiny\ndefenses: [none]\nattacks: [none]\nseeds: [0]\nseeds: [1]\n")
    assert main(["validate", str(g)]) == 2
    line = _one_line(capsys)
    assert "duplicate key 'seeds'" in line and "line 6" in line and "first given at line 5" in line
    run = tmp_path / "run.yaml"
    run.write_text("profile: tiny\nattack_options:\n  lr: 1.0e-5\n  lr: 1.0e-3\n")
    assert main(["run", "--config", str(run), "--workdir", str(tmp_path / "r")]) == 2
    assert "duplicate key 'lr'" in _one_line(capsys) and not (tmp_path / "r").exists()
    with pytest.raises(ConfigError, match="duplicate key"):
        cell_cli.spec_from_args(pipeline_args(["--attack-opt", "x={a: 1, a: 2}"]))
    from sdd_bench.harness.config import yaml_load
    assert yaml_load("b: &b {lr: 1, n: 2}\nx:\n  <<: *b\n  lr: 3\n")["x"] == {"lr": 3, "n": 2}  # a merge may be overridden


def pipeline_args(extra: list[str]):
    from sdd_bench.harness.cli import build_parser
    return build_parser().parse_args(["run", *extra])


# -- item 5: numbers and paths -------------------------------------------------------------------------
@pytest.mark.parametrize("value", ["nan", "inf", "-5", "0"])
def test_grid_max_minutes_must_be_a_positive_number(value, tmp_path, capsys):
    g = _grid(tmp_path, "defenses: [none]\nattacks: [none]\n")
    assert main(["grid", str(g), f"--max-minutes={value}", "--workdir", str(tmp_path / "r")]) == 2
    assert "--max-minutes must be a positive number" in _one_line(capsys) and not (tmp_path / "r").exists()


@pytest.mark.parametrize("value", ["-1", "nan", "0", "inf"])
def test_cache_prune_older_than_must_be_a_positive_number(value, tmp_path, capsys):
    s = Store(tmp_path / "r")
    s.run("x", {}, [], lambda t: None)
    assert main(["cache", "prune", "--workdir", str(s.root), f"--older-than={value}"]) == 2
    assert "--older-than must be a positive number of days" in _one_line(capsys)
    assert [r["complete"] for r in s.list()] == [True]  # nothing removed


def test_empty_paths_are_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["cache", "ls", "--workdir", ""]) == 2 and "--workdir is empty" in _one_line(capsys)
    assert main([*TINY_RUN, "--workdir", ""]) == 2 and "--workdir is empty" in _one_line(capsys)
    assert main([*TINY_RUN, "--workdir", str(tmp_path / "r"), "--out", ""]) == 2 and "--out is empty" in \
        _one_line(capsys)
    assert main(["validate", ""]) == 2 and "config is empty" in _one_line(capsys)
    monkeypatch.setenv("SDD_BENCH_WORKDIR", "")
    assert main(["cache", "ls"]) == 2 and "SDD_BENCH_WORKDIR" in _one_line(capsys)
    with pytest.raises(SddBenchError, match="empty"):
        Store("")
    assert list(tmp_path.iterdir()) == []  # nothing written into the current directory


# -- item 5: disk full at a write -------------------------------------------------------------------------
def test_disk_full_while_saving_weights_is_one_line_and_the_store_stays_clean(tmp_path, capsys, monkeypatch):
    import transformers.modeling_utils as mu
    from safetensors import SafetensorError

    def full(*a, **k):
        raise SafetensorError('Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: '
                              '"No space left on device" })')

    monkeypatch.setattr(mu, "safe_save_file", full)
    root = tmp_path / "r"
    assert main([*TINY_RUN, "--workdir", str(root)]) == 2
    line = _one_line(capsys)
    assert "disk is full" in line and "model/" in line and "cache prune" in line
    assert [p for p in root.rglob("*") if p.is_dir() and p.parent.name == "model"] == []  # no .tmp-, no artifact


def test_disk_full_while_writing_json_is_one_line_and_the_store_stays_clean(tmp_path, capsys, monkeypatch):
    from sdd_bench.harness import store as S
    s = Store(tmp_path / "r")

    def fn(tmp):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(tmp / "generations.jsonl"))

    with pytest.raises(OSError):
        s.run("generate", {"a": 1}, [], fn)
    assert s.list() == []
    assert "disk is full" in S.os_error_line(OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "/x"))


# -- item 5: large grids ----------------------------------------------------------------------------------
def _big_grid(tmp_path, n: int) -> Path:
    return _grid(tmp_path, f"defenses: [none]\nattacks: [none]\nseeds: [{', '.join(map(str, range(n)))}]\n",
                 name=f"big{n}.yaml")


def test_a_grid_above_the_stated_size_needs_yes_and_plan_is_guarded(tmp_path, capsys):
    n = G.CONFIRM_CELLS + 1
    g = _big_grid(tmp_path, n)
    root = tmp_path / "r"
    assert main(["grid", str(g), "--workdir", str(root), "--max-minutes", "0.01"]) == 2
    line = _one_line(capsys)
    assert f"{n:,} cells, more than {G.CONFIRM_CELLS}" in line and "--yes" in line and not root.exists()
    assert main(["grid", str(g), "--workdir", str(root), "--plan"]) == 0
    out = capsys.readouterr().out.splitlines()
    rows = [x for x in out if " seed " in x]
    assert len(rows) == G.PLAN_ROWS and f"... {n - G.PLAN_ROWS:,} more cells not shown (--all-rows" in out[-1]
    assert main(["grid", str(g), "--workdir", str(root), "--plan", "--all-rows"]) == 0
    assert len([x for x in capsys.readouterr().out.splitlines() if " seed " in x]) == n


def test_validate_reports_progress_on_a_large_grid(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(G, "PROGRESS_EVERY_S", 0.0)  # every cell: the grid here is small, the code path the same
    g = _big_grid(tmp_path, 3)
    assert main(["validate", str(g)]) == 0
    err = capsys.readouterr().err
    assert f"validate {g}: expanded: 3 cells" in err and f"validate {g}: checked: 3/3 cells" in err
    monkeypatch.setattr(G, "PROGRESS_EVERY_S", 3600.0)
    assert main(["validate", str(g)]) == 0 and capsys.readouterr().err == ""  # a quick grid prints nothing extra
