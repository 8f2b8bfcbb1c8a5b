"""Attacker budgets (issue 23): one attack expanded into lr × steps × warm-up × optimizer × LoRA/full × seeds."""
import json

import pytest

from sdd_bench.harness import budget, grid as G, pipeline
from sdd_bench.leaderboards import cell_cli
from sdd_bench.harness.cli import main
from sdd_bench.harness.errors import ConfigError
from sdd_bench.harness.store import stage_key


def _grid(tmp_path, extra=""):
    p = tmp_path / "g.yaml"
    p.write_text("profile: tiny\ndefenses: [none, sdd]\nattacks: [none, beavertails-10]\nseeds: [0]\n"
                 "capability: false\n" + extra)
    return p


def _keys(specs):
    cells, attacks = set(), set()
    for s in specs:
        r = pipeline.resolve(s)
        cells.add(pipeline.cell_key(r))
        if r.attack is not None:
            attacks.add(stage_key("attack", dict(r.attack.spec(), template=s.template, seed=s.seed), ["m"]))
    return cells, attacks


def test_small_budget_expands_each_attack_into_the_tables_configs(tmp_path):
    g = G.load_grid(_grid(tmp_path, "attacker_budget: small\n"))
    cells = G.expand(g)
    b = budget.BUDGETS["small"]
    assert b.size == 8
    attacked = [c for c in cells if c.attack != "none"]
    assert len(attacked) == 2 * b.size and len(cells) == 2 * (b.size + 1)  # `none` is not swept
    cell_keys, attack_keys = _keys(attacked)
    assert len(cell_keys) == 2 * b.size and len(attack_keys) == b.size  # one attack per config (shared by defenses)
    opts = [c.attack_options for c in attacked if c.defense == "none"]
    # options at their defaults drop out (pipeline.normalize): the recipe's own configuration is the plain cell
    assert {(o.get("lr"), o.get("warmup_ratio", 0.0), o.get("lora", False)) for o in opts} == {
        (lr, w, lo) for lr in (None, 2e-4) for w in (0.0, 0.1) for lo in (False, True)}
    assert {} in opts and len(opts) == 8
    assert all(o.get("optimizer", "adamw_torch") == "adamw_torch" and "steps" not in o and "seed" not in o
               for o in opts)
    # the options reach the training config: warm-up on the constant qi2023 recipe is constant_with_warmup
    r = pipeline.resolve(next(c for c in attacked if c.attack_options.get("warmup_ratio") == 0.1))
    tc = r.attack.train_config(0)
    assert tc.warmup_ratio == 0.1 and tc.scheduler == "constant_with_warmup"


def test_paper_and_strong_budgets_give_distinct_keys():
    spec = pipeline.spec_from_mapping({"profile": "tiny", "attack": "beavertails-10", "seed": 3})
    paper = cell_cli.budget_specs(spec, "paper")
    assert len(paper) == budget.BUDGETS["paper"].size == 40
    assert len(_keys(paper)[1]) == 40
    assert {s.attack_options.get("optimizer", "adamw_torch") for s in paper} == {"adamw_torch", "sgd"}
    strong = budget.expand_attack("strong", "beavertails-10", {}, "tiny", 3)
    assert len(strong) == budget.BUDGETS["strong"].size == 288
    assert len({json.dumps(o, sort_keys=True) for o in strong}) == 288
    assert {o.get("steps") for o in strong} == {1, None, 8}  # tiny's 2 steps ×¼ (at least 1) / ×1 / ×4
    assert {o.get("seed") for o in strong} == {None, 4, 5}  # attack seeds: the cell's (3) + 0, 1, 2
    r = pipeline.resolve(pipeline.C.replace(spec, attack_options=strong[-1]))
    assert r.attack.train_config(spec.seed).seed == 5 and r.attack.train_config(spec.seed).optimizer == "sgd"


def test_bad_budget_is_one_clear_error(tmp_path, capsys):
    with pytest.raises(ConfigError, match="unknown attacker budget 'huge'; choose one of small, paper, strong"):
        G.load_grid(_grid(tmp_path, "attacker_budget: huge\n"))
    assert main(["grid", str(_grid(tmp_path)), "--attacker-budget", "huge", "--plan",
                 "--workdir", str(tmp_path / "w")]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "small, paper, strong" in err[0]
    assert main(["run", "--profile", "tiny", "--attack", "beavertails-10", "--attacker-budget", "big",
                 "--workdir", str(tmp_path / "w")]) != 0
    assert "choose one of small, paper, strong" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="sets lr, which the attacker budget 'small' sweeps"):
        clash = tmp_path / "clash.yaml"
        clash.write_text("profile: tiny\ndefenses: [none]\nattacks: [{name: beavertails-10, sweep: {lr: [1.0e-4]}}]\n"
                         "attacker_budget: small\n")
        G.load_grid(clash)


def test_plan_prints_the_budgets_cost(tmp_path, capsys):
    assert main(["grid", str(_grid(tmp_path)), "--attacker-budget", "small", "--plan",
                 "--workdir", str(tmp_path / "w")]) == 0
    out = capsys.readouterr().out
    assert "attacker budget 'small': 8 configurations per fine-tuning attack" in out
    assert "16 attacked cells, estimated remaining compute" in out and "18 cells" in out


# ------------------------------------------------------------------------------------------
# the report: capability-bounded worst case over the budget's cells
def test_worst_case_over_the_budget_respects_the_capability_bound(tmp_path):
    from test_leaderboards import make_record, read_csv, report
    configs = [({"warmup_ratio": 0.0, "lora": False}, 0.40, 0.8),   # usable
               ({"warmup_ratio": 0.1, "lora": False}, 0.70, 0.8),   # usable: the bounded worst
               ({"lr": 2e-4, "warmup_ratio": 0.0, "lora": True}, 0.95, 0.3),  # harm 0.95 but collapsed (below bound)
               ({"lr": 2e-4, "warmup_ratio": 0.1, "lora": True}, 0.20, 0.8)]
    recs = [make_record("sdd", "advbench-100", attack_options=o, lr=o.get("lr", 5e-5), harm=h, cap=c)
            for o, h, c in configs]
    rep = report(tmp_path, recs, capability_bound=0.3)
    rows = [r for r in read_csv(rep.out / "worst_case.csv") if r["group"] == "attacker sweep: advbench-100"]
    assert len(rows) == 1
    r = rows[0]
    assert r["n_cells"] == "4" and float(r["worst"]) == pytest.approx(0.95) and "lora=True" in r["worst_cell"]
    assert float(r["ub_worst"]) == pytest.approx(0.70) and r["ub_excluded_low_capability"] == "1"
    assert r["ub_worst_cell"] == "advbench-100 [warmup_ratio=0.1] lr=5e-05"  # names the config (defaults implicit)
    assert float(r["ub_worst_ci_lo"]) < 0.70 < float(r["ub_worst_ci_hi"])
    head = read_csv(rep.out / "headline.csv")[0]  # the headline's worst case over every malicious attack agrees
    assert float(head["ub_worst"]) == pytest.approx(0.70) and head["ub_worst_cell"] == r["ub_worst_cell"]


def test_run_with_a_budget_runs_each_config_and_prints_the_worst_case(tmp_path, capsys, monkeypatch):
    """`run --attacker-budget` on tiny, with the budget table patched down to two configurations (warm-up 0 / 10%)."""
    monkeypatch.setitem(budget.BUDGETS, "small", budget.Budget(lr=(None,), steps=(1.0,), warmup_ratio=(0.0, 0.1),
                                                               optimizer=("adamw_torch",), lora=(False,), seeds=(0,),
                                                               source="test"))
    assert main(["run", "--profile", "tiny", "--attack", "beavertails-10", "--attacker-budget", "small",
                 "--n-harmful", "4", "--n-benign", "2", "--n-xstest", "0", "--judges", "keyword", "--quiet",
                 "--workdir", str(tmp_path / "w")]) == 0
    cap = capsys.readouterr()
    out = cap.out
    # --quiet silences transformers' and datasets' bars too (lm-eval's own have no switch)
    assert not [b for b in ("Loading weights", "Generating ", "Map") if b in cap.err], cap.err[-2000:]
    import datasets
    from transformers.utils import logging as hf_logging
    assert hf_logging.is_progress_bar_enabled() and datasets.is_progress_bar_enabled()  # and gives them back
    assert "attacker budget 'small': 2 attack configurations" in out and "[2/2] attack beavertails-10" in out
    line = next(x for x in out.splitlines() if x.startswith("none: "))
    assert "worst over 2 configurations" in line and "capability-bounded" in line and "verdict" in line


def test_budget_configurations_stay_out_of_table1_lr_sweeps_and_harm_vs_n(tmp_path, monkeypatch):
    """A LoRA or warm-up configuration of the recipe's attack is one attacker's sweep: worst_case.md's 'attacker
    sweep' group has it, while Table 1's columns, the lr-sweep group and the harm-vs-N lines keep the recipe's cells
    (a LoRA cell at N=100 beside the recipe's own N=100 is no point of a harm-vs-N line)."""
    from sdd_bench.leaderboards import figures
    from test_leaderboards import make_record, read_csv, report
    recs = [make_record("sdd", "advbench-100", harm=0.6), make_record("sdd", "advbench-100", lr=2e-4, harm=0.7,
                                                                      attack_options={"lr": 2e-4}),
            make_record("sdd", "advbench-10", n=10, harm=0.3),
            make_record("sdd", "advbench-100", attack_options={"lora": True}, harm=0.9),
            make_record("sdd", "advbench-100", lr=2e-4, attack_options={"lr": 2e-4, "warmup_ratio": 0.1}, harm=0.8),
            make_record("sdd", "none")]
    drawn = {}
    real = figures._line_panels

    def spy(res, quantities, panels, *a, **k):
        drawn.setdefault(a[0], panels)
        return real(res, quantities, panels, *a, **k)
    monkeypatch.setattr(figures, "_line_panels", spy)
    rep = report(tmp_path, recs)
    t1 = (rep.out / "table1_paper.md").read_text()
    assert "lora=True" not in t1 and "warmup_ratio" not in t1 and "(100-shot, lr=0.0002)" in t1
    assert "2 attacker-budget configurations" in t1 and "group 'attacker sweep'" in t1
    groups = {r["group"]: r for r in read_csv(rep.out / "worst_case.csv") if r["metric"].startswith("harm-clf")}
    assert groups["lr sweep: advbench-100"]["n_cells"] == "2"
    assert groups["attacker sweep: advbench-100"]["n_cells"] == "4" and "lora=True" in \
        groups["attacker sweep: advbench-100"]["worst_cell"]
    points = [x for ser in drawn[next(k for k in drawn if k.startswith("examples the attack trained on"))].values()
              for pts in ser.values()
              for x, _ in pts]
    # the recipe's two N at lr 5e-5 (records without attack_info: x falls back to N); no LoRA / warm-up point at N=100
    assert sorted(points) == [10, 100]
