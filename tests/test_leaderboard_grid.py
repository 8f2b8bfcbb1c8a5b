"""Leaderboards on a real tiny grid with two backbones (issue 20): `grid`, then `report`, and what the outputs must
satisfy: intervals, Table 1 / Table 2 shape per backbone, headline verdicts, figures' titles and axes, the page."""
import csv
import json
import math
import re
from pathlib import Path

import pytest

from sdd_bench.leaderboards.report import build_report


def read_csv(path: Path) -> list[dict]:
    with path.open() as f:
        return list(csv.DictReader(f))


# ------------------------------------------------------------------------------------------
# a real tiny grid with two backbones, through `grid` and `report` (issue 20)
TWO_BACKBONES = """
name: lb-two-backbones
profile: tiny
models: [tiny, tiny-aligned]
defenses: [none, sdd]
attacks:
  - {name: advbench-prefix-10, sweep: {lr: [5.0e-5, 2.0e-4]}}   # 5e-5 is the preset's own lr: the plain cell
  - sst2-1k
seeds: [0, 1]
judges: []
capability: true
run: {n_harmful: 4, n_benign: 2, n_xstest: 2}
"""


@pytest.fixture(scope="module")
def two_backbones(session_store, tmp_path_factory):
    """24 real tiny cells (2 backbones × {none, sdd} × {10-shot MFT at two learning rates, BFT} × 2 seeds),
    reported; figures' titles, axes and y labels captured as they are saved."""
    from sdd_bench.harness import grid as G
    from sdd_bench.leaderboards import figures as F
    tmp = tmp_path_factory.mktemp("two-backbones")
    (tmp / "grid.yaml").write_text(TWO_BACKBONES)
    g = G.load_grid(tmp / "grid.yaml")
    results = G.run_grid(g, session_store, progress=False, log=lambda *a: None)
    assert all(r.error is None for r in results), [r.error for r in results if r.error]
    assert len(results) == 24  # the sweep's lr=5e-5 is the preset itself: one cell, not a duplicate
    seen, save = {}, F._save

    def capture(fig, out):
        seen[out.name] = [(ax.get_title(), ax.get_xlim(), [ln.get_xdata() for ln in ax.get_lines()], ax.get_ylabel())
                          for ax in fig.axes if ax.get_visible()] + \
            ([(fig._suptitle.get_text(), None, [], "")] if fig._suptitle else [])
        return save(fig, out)
    F._save = capture
    try:
        rep = build_report([str(tmp / "grid.yaml")], tmp / "report", workdir=str(session_store.root), echo=None)
    finally:
        F._save = save
    return rep, seen


INTERVAL = re.compile(r"\[(-?[\d.]+), (-?[\d.]+)\]")


def test_real_two_backbone_grid_report(two_backbones):
    rep, seen = two_backbones
    out = rep.out
    assert rep.records == 24
    # intervals: inside [0, 100] % (or [0, 1]), never zero-width (two seeds at 0/4 are not certainty)
    for name, top in (("table1_paper.md", 100.0), ("headline.md", 100.0), ("table2_paper.md", 100.0),
                      ("finetune_accuracy.md", 100.0), ("table1.md", 1.0)):
        text = (out / name).read_text().split("## Paper")[0]
        # the reference-loss row is in nats (its paired Δ from none may be negative): checked below
        text = "\n".join(line for line in text.splitlines() if "ref. loss" not in line)
        ivs = [(float(a), float(b)) for a, b in INTERVAL.findall(text)]
        assert ivs, name
        assert all(0.0 <= lo < hi <= top for lo, hi in ivs), (name, [x for x in ivs if not 0 <= x[0] < x[1] <= top])
    # every cell measured the reference-answer loss: Table 2's row has a positive value with an interval in each
    # measured column, and a paired Δ from none whose interval is ordered
    ref_rows = [line for line in (out / "table2_paper.md").read_text().splitlines() if line.startswith("| ref. loss")]
    assert ref_rows
    for line in ref_rows:
        cells = [c.strip() for c in line.strip("|").split("|")[1:]]
        for c in cells:
            if c == "—":
                continue
            ivs = [(float(a), float(b)) for a, b in INTERVAL.findall(c)]
            assert 0 < ivs[0][0] <= ivs[0][1] and all(lo <= hi for lo, hi in ivs), line
    # Table 1: per backbone, malicious attacks only, one column each, HS/HR-style pairs in %, XSTest column
    t1 = (out / "table1_paper.md").read_text()
    assert "## tiny (tiny profile)" in t1 and "## tiny-aligned (tiny profile)" in t1
    headers = [line for line in t1.splitlines() if line.startswith("| defense | Initial") and "XSTest" in line]
    assert len(headers) == 2
    for h in headers:
        cols = [c.strip() for c in h.strip("|").split("|")]
        # the lr sweep: one column per lr (the lr named in the column, since it varies), no duplicate column
        assert cols == ["defense", "Initial", "advbench-prefix-10 (10-shot, 2 steps, 20 seen, lr=5e-05)",
                        "advbench-prefix-10 (10-shot, 2 steps, 20 seen, lr=0.0002)", "XSTest over-refusal (%)"], cols
    assert "sst2" not in t1 and "Every attack at lr" not in t1
    rows = [line for line in t1.splitlines() if line.startswith(("| none |", "| sdd |"))]
    # 2 defenses × 2 backbones, in Table 1 and in its usable-harm table (the records carry usable_harm, so a grid
    # input, which names no store path, keeps it)
    assert len(rows) == 8 and t1.count("### Usable harm (%) beside it") == 2
    assert all(" / " in c for r in rows[:2] for c in r.strip("|").split("|")[1:3])
    # Table 2: per defense and backbone, none / +defense / +BFT / +MFT; the mean of one task is that task
    t2 = (out / "table2_paper.md").read_text()
    assert "## sdd — tiny (tiny profile)" in t2 and "## sdd — tiny-aligned (tiny profile)" in t2
    # each +BFT / +MFT column names its one attack (issue 37)
    assert t2.count("| task | none | +sdd | +BFT (sst2-1k) | +MFT (advbench-prefix-10") == 2, t2
    for block in t2.split("## sdd — ")[1:]:
        body = [line for line in block.splitlines() if line.startswith("| ") and not line.startswith("| task")]
        if len(body) == 2:  # one capability task and its mean
            assert body[0].split("|")[2:] == body[1].split("|")[2:], body
    fa = (out / "finetune_accuracy.md").read_text()
    assert fa.count("| defense | sst2-1k (fa_sst2) |") == 2
    # headline: one row per defense and backbone, a verdict each, short names, no "tiny (tiny)"
    head = read_csv(out / "headline.csv")
    assert sorted((r["model"], r["defense"]) for r in head) == [("tiny", "none"), ("tiny", "sdd"),
                                                                ("tiny-aligned", "none"), ("tiny-aligned", "sdd")]
    assert all(r["verdict"] in {"holds", "breaks", "inconclusive", "vacuous", "collapsed", "unknown"} for r in head)
    assert "tiny (tiny)" not in (out / "headline.md").read_text()
    # figures: one colour per defense, titles without a repeated name or a path, every point inside its axes
    meta = json.loads((out / "figures.json").read_text())
    assert {"heatmap_defense_attack.png", "fig4_backbones.png", "scatter_harm_vs_capability.png",
            "fig2_harm_vs_lr.png"} <= set(seen)
    # the lr sweep: harm vs lr beside capability vs lr, one panel each per backbone and attack, two lrs per line
    lr_axes = [a for a in seen["fig2_harm_vs_lr.png"] if a[1] is not None]
    assert any("capability" in a[3].lower() for a in lr_axes) and any("capability" not in a[3].lower() for a in lr_axes)
    assert all(len(x) >= 2 for a in lr_axes for x in a[2] if len(x)), "a single-point lr series"
    sweeps = {(r["model"], r["defense"]) for r in read_csv(out / "worst_case.csv") if r["group"].startswith("lr sweep")}
    assert sweeps == {(m, d) for m in ("tiny", "tiny-aligned") for d in ("none", "sdd")}
    for colors in meta["figures"].values():
        assert all(c == meta["colors"][d] for d, c in colors.items())
    assert len(set(meta["colors"].values())) == len(meta["colors"]) == 2
    for fig, axes in seen.items():
        for title, xlim, xs, _ in axes:
            assert "tiny, tiny" not in title and "tiny (tiny)" not in title and "/" not in title, (fig, title)
            for x in xs:  # data coordinates of every drawn point (error bars included)
                vals = [float(v) for v in x if math.isfinite(float(v))]
                assert all(xlim[0] <= v <= xlim[1] for v in vals), (fig, title, xlim, vals)
    # the page: both paper-shaped tables and the BFT accuracy, rows in the HTML itself
    page = (out / "index.html").read_text()
    for tid in ("headline", "table1", "table2_paper", "finetune"):
        table = page.split(f'<table id="t-{tid}"', 1)[1].split("</table>", 1)[0]
        assert "<tbody><tr>" in table, tid
    # reference numbers: never placed beside a tiny-profile cell
    assert all(r["ours"] == "no matching cell in these records" for r in read_csv(out / "reference.csv"))
