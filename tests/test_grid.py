"""Grids: expansion and validation, the plan, local and Ray executors, resuming after SIGKILL."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sdd_bench.harness import grid as G
from sdd_bench.harness.errors import SddBenchError
from sdd_bench.harness.pipeline import comparable
from sdd_bench.harness.store import Store

TINY_GRID = """
name: tiny-test
profile: tiny
defenses: [none, sdd]
attacks: [none, advbench-10]
seeds: [0]
capability: true
"""


def _write(tmp_path, text, name="grid.yaml"):
    p = tmp_path / name
    p.write_text(text)
    return p


def test_expand_sweeps_and_dedup(tmp_path):
    g = G.load_grid(_write(tmp_path, """
profile: tiny
defenses: [none, {name: sdd, base_defense: refusal-sft}]
attacks:
  - none
  - {name: beavertails-100-seam, sweep: {lr: [2e-5, 1.0e-4], epochs: [1, 2]}}
  - none
seeds: [0, 1]
"""))
    cells = G.expand(g)
    # 2 defenses × 2 seeds × (1 + 2×2 sweep points); the repeated `none` attack is one cell
    assert len(cells) == 2 * 2 * 5
    lrs = sorted({c.attack_options.get("lr") for c in cells if c.attack_options.get("lr")})
    assert lrs == [1e-4] and all(isinstance(x, float) for x in lrs)  # "1.0e-4" read as a float
    # lr 2e-5 and epochs 1 are the seam recipe's defaults: they drop out of the cell's identity
    assert sum(c.attack == "beavertails-100-seam" and not c.attack_options for c in cells) == 2 * 2
    assert {c.base_defense for c in cells if c.defense == "sdd"} == {"refusal-sft"}


def test_default_valued_options_are_one_cell(tmp_path):
    """advbench-100 and advbench-100 {lr: 5e-5} (qi2023's lr) resolve to one configuration: one cell, one key."""
    from sdd_bench.harness.pipeline import cell_key, normalize, resolve, spec_from_mapping
    g = G.load_grid(_write(tmp_path, """
profile: tiny
defenses: [none, {name: sdd, options: {lr: 1.0e-4}}]
attacks: [advbench-100, {name: advbench-100, options: {lr: 5.0e-5}}, {name: advbench-100, options: {lr: 1.0e-4}}]
seeds: [0]
"""))
    cells = G.expand(g)
    assert len(cells) == 2 * 2  # per defense: the default-lr cell (written twice) and lr 1e-4
    assert sorted(str(c.attack_options) for c in cells) == ["{'lr': 0.0001}", "{'lr': 0.0001}", "{}", "{}"]
    assert all(c.defense_options == {"lr": 1e-4} for c in cells if c.defense == "sdd")  # not a default: kept
    plain = spec_from_mapping({"profile": "tiny", "attack": "advbench-100"})
    spelled = spec_from_mapping({"profile": "tiny", "attack": "advbench-100", "attack_options": {"lr": 5e-5}})
    assert normalize(plain) is plain  # a cell without options is untouched: its key (and stores, baselines) hold
    assert cell_key(resolve(spelled)) == cell_key(resolve(plain))
    assert resolve(spelled).attack.spec()["config"] == resolve(plain).attack.spec()["config"]  # attack trained once
    other = spec_from_mapping({"profile": "tiny", "attack": "advbench-100", "attack_options": {"lr": 1e-4}})
    assert cell_key(resolve(other)) != cell_key(resolve(plain))
    names = {G.label(c) for c in cells}  # names carry defense options, and the default-lr spelling is gone
    assert "sdd[lr=0.0001] × advbench-100[lr=0.0001] seed 0" in names and len(names) == 4
    assert not any("5e-05" in n for n in names)


def test_option_free_cell_key_is_unchanged():
    """Normalization is the identity on an option-free cell, so its key is what it would be without normalization;
    pinned (store compatibility): the key of an option-free cell as of the threat-model change (issue 18)."""
    from sdd_bench.harness.pipeline import cell_spec, normalize, resolve, spec_from_mapping
    import hashlib
    s0 = spec_from_mapping({"profile": "tiny", "defense": "sdd", "attack": "advbench-10"})
    assert normalize(s0) == s0
    r = resolve(s0)
    spec = cell_spec(r)
    spec["defense"].pop("data", None), (spec["attack"] or {}).pop("data", None)  # data fingerprints: local files
    spec["attack"]["responses"].pop("goals"), spec["attack"]["responses"]["donor_attack"].pop("data")
    assert r.spec.attack_options == {} and r.spec.defense_options == {}
    assert hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16] == PINNED_OPTION_FREE


# computed when the cell spec gained the built-in model's store key (a rebuilt aligned base must not match
# records of the old one); 4e0d9f9 had 7cea6d225ed1b60a, e8ee029 had ed34157ba83a0aa1
PINNED_OPTION_FREE = "9ff6b263909bfd27"


def test_cell_key_follows_the_built_in_models_recipe(monkeypatch):
    """Records made on an aligned base built with other alignment options are not this cell's records."""
    from sdd_bench.harness import models
    from sdd_bench.harness.pipeline import cell_key, resolve, spec_from_mapping
    r = resolve(spec_from_mapping({"profile": "tiny", "model": "tiny-aligned", "defense": "none", "attack": "none"}))
    before = cell_key(r)
    base, opts = models.ALIGNED["tiny-aligned"]
    monkeypatch.setitem(models.ALIGNED, "tiny-aligned", (base, dict(opts, max_steps=opts["max_steps"] + 1)))
    assert cell_key(r) != before


@pytest.mark.parametrize("text,match", [
    ("defenses: [nonee]\nattacks: [none]\n", "nonee"),
    ("defenses: [none]\nattacks: [advbench-7]\n", "advbench-7"),
    ("defenses: []\nattacks: [none]\n", "empty"),
    ("defenses: [none]\nattacks: [{name: advbench-10, sweep: {lr: 1e-5}}]\n", "sweep"),
    ("defenses: [none]\nattacks: [{name: advbench-10, options: {lr: -1.0}}]\n", "lr"),
    ("defenses: [none]\nattacks: [none]\nexecutor: slurm\n", "executor"),
    ("defenses: [none]\nattacks: [none]\nseedz: [1]\n", "seedz"),
    ("defenses: [none\nattacks: [none]\n", "malformed YAML"),
    ("profile: tiny\n", "not a grid"),
])
def test_bad_grid_specs(tmp_path, text, match):
    with pytest.raises(SddBenchError, match=match):
        G.load_grid(_write(tmp_path, text))


def test_local_grid_plan_run_and_cached_rerun(tmp_path):
    spec = _write(tmp_path, TINY_GRID)
    store = Store(tmp_path / "runs")
    g = G.load_grid(spec)
    before = G.plan(g, store)
    assert [c.state for c in before.cells] == ["todo"] * 4 and before.estimate_s > 0
    res = G.run_grid(g, store, progress=False, log=lambda *a: None)
    assert all(r.error is None and not r.cached for r in res)
    after = G.plan(g, store)
    assert [c.state for c in after.cells] == ["done"] * 4 and after.estimate_s == 0
    t0 = time.time()
    again = G.run_grid(g, store, progress=False, log=lambda *a: None)
    per_cell = (time.time() - t0) / len(again)
    print(f"fully cached tiny grid: {per_cell:.3f}s per cell")
    assert all(r.cached for r in again)
    assert [r.record for r in again] == [r.record for r in res]
    # the report hook sees the same records
    assert len(G.records_of_grid(spec, tmp_path / "runs")) == 4


def _same_code(rec):
    """The git hash may move between the two runs when commits land meanwhile (a shared dev checkout)."""
    rec = dict(rec, environment=dict(rec["environment"]))
    rec["environment"].pop("git", None)
    return rec


def _diff(a, b, path=""):
    """Paths where two JSON-like values differ (first 10)."""
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b), key=str):
            out += _diff(a.get(k), b.get(k), f"{path}.{k}")
        return out[:10]
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in _diff(x, y, f"{path}[{i}]")][:10]
    return [] if a == b else [f"{path}: {a!r} != {b!r}"]


def _grid_cmd(spec, workdir):
    return [sys.executable, "-m", "sdd_bench.harness.cli", "grid", str(spec), "--workdir", str(workdir), "--quiet"]



def test_a_crashing_cell_does_not_stop_the_local_grid(tmp_path, monkeypatch):
    g = G.load_grid(_write(tmp_path, TINY_GRID))
    cells = G.expand(g)
    ran = []

    def fake_run_one(spec, store, progress, log):
        ran.append(G.label(spec))
        if len(ran) == 2:
            raise TypeError("'int' object is not callable")  # a bug inside one cell
        return G.CellResult(spec, {}, f"record/{len(ran)}", False)

    monkeypatch.setattr(G, "_run_one", fake_run_one)
    lines = []
    res = G.run_local(cells, Store(tmp_path / "runs"), progress=False, log=lines.append)
    assert len(ran) == len(cells) == len(res) == 4  # the cells after the broken one still ran
    assert [r.error is None for r in res] == [True, False, True, True]
    assert res[1].error == "TypeError: 'int' object is not callable"
    assert any("Traceback" in line and "fake_run_one" in line for line in lines)  # where the bug is
    with pytest.raises(TypeError):
        ran.clear()
        G.run_local(cells, Store(tmp_path / "runs"), progress=False, log=lines.append, fail_fast=True)

def test_sigkill_mid_cell_then_resume_equals_uninterrupted(tmp_path):
    spec = _write(tmp_path, TINY_GRID)
    env = dict(os.environ)
    # uninterrupted reference run
    ref = subprocess.run(_grid_cmd(spec, tmp_path / "ref"), env=env, capture_output=True, text=True, timeout=900)
    assert ref.returncode == 0, ref.stderr[-2000:]
    # interrupted run: SIGKILL while an attack (the middle of the second defense's cells) is being written
    work = tmp_path / "killed"
    proc = subprocess.Popen(_grid_cmd(spec, work), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    killed_in = None
    deadline = time.time() + 600
    while time.time() < deadline and proc.poll() is None:
        for stage in ("attack", "generate", "judge", "capability"):
            d = work / stage
            if d.is_dir() and any(p.name.startswith(".tmp-") for p in d.iterdir()) and (work / "cell").is_dir():
                killed_in = stage
                break
        if killed_in:
            os.killpg(proc.pid, signal.SIGKILL)
            break
        time.sleep(0.02)
    proc.wait(timeout=60)
    assert killed_in, "the grid finished before it could be killed mid-stage"
    store = Store(work)
    finished = len(list((work / "cell").iterdir()))
    assert finished < 4, "kill came after the last cell"
    print(f"SIGKILL during a {killed_in} stage with {finished}/4 cells finished")
    # the store holds no half-written artifact under a final key: every non-temp dir is complete
    assert all(r["complete"] or r["tmp"] for r in store.list())
    res = subprocess.run(_grid_cmd(spec, work), env=env, capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stderr[-2000:]
    g = G.load_grid(spec)
    a = G.records_of_grid(spec, work)
    b = G.records_of_grid(spec, tmp_path / "ref")
    assert len(a) == len(b) == 4
    # two work dirs: only their own paths (e.g. the model path lm-eval reports) may differ
    for ra, rb in zip(a, b):
        ra = json.loads(json.dumps(ra).replace(str(work), "<workdir>"))
        rb = json.loads(json.dumps(rb).replace(str(tmp_path / "ref"), "<workdir>"))
        assert _diff(comparable(_same_code(ra)), comparable(_same_code(rb))) == []
    assert [c.state for c in G.plan(g, store).cells] == ["done"] * 4


def test_ray_executor_matches_local(tmp_path):
    pytest.importorskip("ray")
    import ray
    spec = _write(tmp_path, TINY_GRID + "executor: ray\nray: {num_cpus: 2, cpus_per_cell: 1}\n")
    g = G.load_grid(spec)
    local = G.run_grid(g, Store(tmp_path / "local"), executor="local", progress=False, log=lambda *a: None)
    try:
        remote = G.run_grid(g, Store(tmp_path / "ray"), progress=False, log=print)
    finally:
        ray.shutdown()
    assert all(r.error is None for r in remote), [r.error for r in remote]
    for a, b in zip(local, remote):
        ra = json.loads(json.dumps(a.record).replace(str(tmp_path / "local"), "<workdir>"))
        rb = json.loads(json.dumps(b.record).replace(str(tmp_path / "ray"), "<workdir>"))
        assert _diff(comparable(_same_code(ra)), comparable(_same_code(rb))) == []
    # the defended model of `sdd` was trained once: one defend artifact
    assert len([p for p in (tmp_path / "ray" / "defend").iterdir() if not p.name.startswith(".")]) == 1


# ------------------------------------------------------------------------------------------
# plan estimates, deadlines, publishing as cells finish
def test_defense_estimate_scales_with_configured_work(tmp_path):
    """No timing in the store: a defense is priced by steps × batch × max_length × passes per step."""
    g = G.load_grid(_write(tmp_path, "profile: smoke\ndefenses: [sdd, deepalign, refusal-sft, seam]\n"
                                     "attacks: [none]\ncapability: false\n"))
    pl = G.plan(g, Store(tmp_path / "runs"))
    est = {c.spec.defense: c.by_stage["defend"] for c in pl.cells}
    assert est["sdd"] == G.DEFAULT_ESTIMATE_S["smoke"]["defend"]  # the reference workload: 40 × 8 × 192
    assert est["deepalign"] == pytest.approx(2 * est["sdd"])       # 60 × 8 × 256: measured 17.4 min
    assert 15 * 60 < est["deepalign"] < 20 * 60
    assert est["refusal-sft"] == est["deepalign"]                  # same work per step, same steps
    assert est["seam"] == pytest.approx(est["sdd"] * 20 * 4 * 128 * 13 / (40 * 8 * 192))  # 13 passes per step
    assert pl.by_stage()["defend"] == pytest.approx(sum(est.values()))
    # the aligned smoke base is built once (its refusal SFT, 120 steps × 8 × 128, priced like a defense)
    assert pl.by_stage()["model"] == pytest.approx(30 + 510 * 120 * 8 * 128 / (40 * 8 * 192))
    assert pl.stage_line().startswith("estimate by stage kind: model ") and "defend " in pl.stage_line()


def test_plan_learns_stage_times_from_published_records(tmp_path):
    """On an empty work dir a grid with --publish is priced by the stage times the published records measured
    (each defended/attacked model once), not by the profile's defaults."""
    from sdd_bench.harness.pipeline import resolve
    g = G.load_grid(_write(tmp_path, "profile: smoke\ndefenses: [sdd]\nattacks: [beavertails-100]\ncapability: false\n"))
    (cell,) = G.expand(g)
    r = resolve(cell)
    rec = {"artifacts": {"defense": "defend/d1", "attack": "attack/a1"},
           "config": {"defense": r.defense.spec(), "attack": r.attack.spec()},
           "defense_info": {"seconds": 1000.0}, "attack_info": {"seconds": 700.0, "steps": 40}}
    twin = dict(rec, defense_info={"seconds": 5000.0})  # the same defended model named by another record: counted once
    other = dict(rec, artifacts={"defense": "defend/d2", "attack": "attack/a1"}, defense_info={"seconds": 2000.0})
    store = Store(tmp_path / "runs")
    assert G.plan(g, store).cells[0].by_stage["defend"] == G.defend_estimate("smoke", r.defense)
    pl = G.plan(g, store, published={"k1": (rec, None), "k2": (twin, None), "k3": (other, None)})
    assert pl.cells[0].state == "todo"
    assert pl.cells[0].by_stage["defend"] == 1500.0 and pl.cells[0].by_stage["attack"] == 700.0  # medians
    # an attack's timing is keyed by the steps it ran: a legacy 40-step 10-shot record does not price the 5-step one
    g10 = G.load_grid(_write(tmp_path, "profile: smoke\ndefenses: [sdd]\nattacks: [beavertails-10]\ncapability: false\n"))
    r10 = resolve(G.expand(g10)[0])
    legacy = dict(rec, config={"defense": r10.defense.spec(), "attack": dict(r10.attack.spec())})
    pl = G.plan(g10, store, published={"k1": (legacy, None)})
    assert pl.cells[0].by_stage["attack"] == G.attack_estimate("smoke", r10.attack) != 700.0


def test_plan_prints_estimate_per_stage_kind(tmp_path, capsys):
    from sdd_bench.harness.cli import main
    spec = _write(tmp_path, TINY_GRID)
    assert main(["grid", str(spec), "--workdir", str(tmp_path / "runs"), "--plan"]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("estimate by stage kind:"))
    assert [p.split()[0] for p in line.split(":", 1)[1].split(",")] == ["model", "defend", "evaluate", "attack"]


def test_parse_deadline():
    now = time.mktime((2026, 11, 29, 10, 0, 0, 0, 0, -1))  # 10:00 local time
    assert G.parse_deadline("10:30", None, now=now) == now + 1800
    assert G.parse_deadline(None, 2.5, now=now) == now + 150
    assert G.parse_deadline(None, None, now=now) is None
    with pytest.raises(SddBenchError, match="already passed"):
        G.parse_deadline("09:59", None, now=now)
    for bad in ("25:00", "10h30", "10:61"):
        with pytest.raises(SddBenchError, match="HH:MM"):
            G.parse_deadline(bad, None, now=now)
    with pytest.raises(SddBenchError, match="positive"):
        G.parse_deadline(None, 0, now=now)


def test_deadline_skips_cells_that_cannot_finish_and_publish_keeps_the_finished(tmp_path, monkeypatch, capsys):
    """A real tiny grid of two cells; the attack is priced (monkeypatched) far beyond the deadline."""
    from sdd_bench.harness import publish as P
    from sdd_bench.harness.cli import main
    spec = _write(tmp_path, "name: dl\nprofile: tiny\ndefenses: [none]\nattacks: [none, advbench-10]\n"
                            "capability: false\n")
    monkeypatch.setitem(G.DEFAULT_ESTIMATE_S, "tiny", {"model": 0, "defend": 0, "attack": 10_000, "evaluate": 0})
    work, root = tmp_path / "runs", tmp_path / "results"
    # --allow-dirty: the records name this checkout's commit, which has uncommitted changes while one develops
    cmd = ["grid", str(spec), "--workdir", str(work), "--quiet", "--publish", str(root), "--allow-dirty"]
    assert main(cmd + ["--max-minutes", "60"]) == 0                 # exits cleanly
    out = capsys.readouterr().out
    assert "1/2 cells finished" in out and "deadline: 1 cell(s) not started" in out
    assert "not started: none × advbench-10 seed 0 (planned 2.8h" in out
    assert not (work / "attack").exists()                          # the skipped cell did not start
    first = sorted((root / "tiny").iterdir())
    assert len(first) == 1 and f"published -> {first[0]}" in out
    data = first[0].read_bytes()
    # without a deadline the rest runs; the published record of the first cell is left as it was
    assert main(cmd) == 0
    out = capsys.readouterr().out
    assert "2/2 cells finished, 1 were already finished" in out and "already published" in out
    files = sorted((root / "tiny").iterdir())
    assert len(files) == 2 and first[0] in files and first[0].read_bytes() == data
    for f in files:
        rec = json.loads(f.read_text())
        assert P.long_strings(rec) == [] and rec["metrics"]["initial"]
        # a real record: only the template's text had to go; nothing else was long enough to be hashed away
        assert rec["published"]["omitted"] == [] and set(rec["template"]) == {"name", "sha256", "example_sha256"}
    # `sdd-bench publish GRID` writes the same files, byte for byte
    assert main(["publish", str(spec), "--workdir", str(work), "--to", str(tmp_path / "again"), "--quiet",
                 "--allow-dirty"]) == 0
    again = sorted((tmp_path / "again" / "tiny").iterdir())
    assert [f.name for f in again] == [f.name for f in files]
    assert all(a.read_bytes() == b.read_bytes() for a, b in zip(again, files))


def test_a_grid_on_an_empty_work_dir_skips_the_cells_already_published(tmp_path, capsys):
    """The work dir is a cache, results/ is the record: a grid re-run with --publish on a new machine (empty work
    dir) runs only the cells whose record is not published yet; a record made with other configs or on another
    build of the base model does not count."""
    from sdd_bench.harness import publish as P
    from sdd_bench.harness.cli import main
    from sdd_bench.harness.pipeline import cell_key, record_cell_key, resolve
    spec = _write(tmp_path, "name: pub\nprofile: tiny\ndefenses: [none]\nattacks: [none]\ncapability: false\n")
    root = tmp_path / "results"
    cmd = ["grid", str(spec), "--quiet", "--publish", str(root), "--allow-dirty"]  # a checkout being edited
    assert main(cmd + ["--workdir", str(tmp_path / "a")]) == 0
    capsys.readouterr()
    (f,) = (root / "tiny").iterdir()
    rec = json.loads(f.read_text())
    (cell,) = G.expand(G.load_grid(spec))
    assert record_cell_key(rec) == cell_key(resolve(cell))  # the sanitized record still names its cell
    # a fresh work dir: planned as published, not run, not re-published
    new = tmp_path / "b"
    assert main(cmd + ["--workdir", str(new), "--plan"]) == 0
    out = capsys.readouterr().out
    assert "1 finished (1 of them published, not in this work dir)" in out and " published " in out
    before = f.read_bytes()
    assert main(cmd + ["--workdir", str(new), "--records", str(tmp_path / "recs.jsonl")]) == 0
    out = capsys.readouterr().out
    assert f"already published -> {f}" in out and "1/1 cells finished, 1 were already finished (1 of them published" in out
    assert not (new / "model").exists() and not (new / "record").exists()  # nothing was built
    assert f.read_bytes() == before
    assert json.loads((tmp_path / "recs.jsonl").read_text())["metrics"] == rec["metrics"]
    # without --publish the grid does not look at results/
    g = G.load_grid(spec)
    assert G.plan(g, Store(new)).cells[0].state == "todo"
    assert G.plan(g, Store(new), published=P.published_cells(root, "tiny")).cells[0].state == "published"
    # a record on another build of the base model, or with other configs, is not this cell's
    for change in ({"artifacts": dict(rec["artifacts"], model="model/" + "0" * 20)},
                   {"config": dict(rec["config"], eval_seed=rec["config"]["eval_seed"] + 1)}):
        f.write_text(json.dumps(dict(rec, **change)))
        assert G.plan(g, Store(new), published=P.published_cells(root, "tiny")).cells[0].state == "todo"
    assert P.published_cells(tmp_path / "nowhere", "tiny") == {}


def test_a_cell_whose_stage_another_process_computes_is_put_back_once(tmp_path, monkeypatch):
    """Two grids on one work dir (one per core): a cell whose defense the other process is training right now
    goes behind the remaining cells instead of idling on the lock, and runs when it comes round again."""
    import fcntl
    g = G.load_grid(_write(tmp_path, TINY_GRID))
    cells = G.expand(g)[::-1]  # sdd × advbench-10, sdd × none, none × advbench-10, none × none
    store = Store(tmp_path / "runs")
    sdd_plan = G.plan(g, store, [cells[0]]).cells[0]
    held = [k for st, k in sdd_plan.missing if st == "defend"]
    assert len(held) == 1 and [st for st, _ in sdd_plan.missing] == ["model", "defend", "attack"]
    lock = store._lock_path("defend", held[0], create=True)
    fd = os.open(lock, os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)  # "another process" trains sdd
    ran = []

    def fake_run_one(spec, store, progress, log):
        ran.append(G.label(spec))
        return G.CellResult(spec, {}, f"record/{len(ran)}", False)

    monkeypatch.setattr(G, "_run_one", fake_run_one)
    lines = []
    try:
        res = G.run_local(cells, store, progress=False, log=lines.append, g=g)
    finally:
        os.close(fd)
    labels = [G.label(c) for c in cells]
    assert ran == [labels[2], labels[3], labels[0], labels[1]]  # the sdd cells once, after the others
    assert [G.label(r.spec) for r in res] == labels  # results in the cells' order
    put_back = [line for line in lines if "put back" in line]
    assert len(put_back) == 2 and all(f"defend/{held[0]}" in line for line in put_back)
    # nothing held: the order is the cells' order; without a plan (no g) too
    ran.clear()
    G.run_local(cells, store, progress=False, log=lines.append, g=g)
    assert ran == labels
