"""The leaderboard a reader can use (issue 42): tables in the HTML itself, a contents list whose links work, notes
shown once, wide tables in their own scroll box, one colour-blind-safe colour per defense name, legible figures
(no overlapping text, full error bars), SVG beside every PNG, one name and one rounding for what is shown."""
from html.parser import HTMLParser
from itertools import combinations

import pytest

from sdd_bench.leaderboards import figures as F
from sdd_bench.leaderboards import html as H
from test_leaderboards import make_record, report

# colour-blind-safe sets: Okabe & Ito (2008), Paul Tol's muted scheme, and neutral greys
OKABE_ITO = {"#000000", "#E69F00", "#56B4E9", "#009E73", "#F0E442", "#0072B2", "#D55E00", "#CC79A7"}
TOL_MUTED = {"#332288", "#88CCEE", "#44AA99", "#117733", "#999933", "#DDCC77", "#CC6677", "#882255", "#AA4499"}
GREYS = {"#898989", "#999999", "#BBBBBB"}
SAFE = {c.lower() for c in OKABE_ITO | TOL_MUTED | GREYS}
DEFENSES = ("none", "sdd", "seam", "repnoise", "vaccine")
ATTACK_NS = (10, 20, 30, 40, 50, 60, 70, 80, 90, 100, 200, 300, 500, 1000)  # more attacks than marker shapes


def _records(defenses=DEFENSES, ns=(10, 100)):
    recs = []
    for i, d in enumerate(defenses):
        for j, n in enumerate(ns):
            recs.append(make_record(d, f"advbench-{n}", n=n, harm=min(0.95, 0.3 + 0.05 * i + 0.02 * j),
                                    cap=0.4 + 0.01 * j, harm0=0.1 + 0.02 * i))
        recs.append(make_record(d, "sst2-1k", dataset="sst2-train", n=1000, harm=0.2, fa=0.8))
    return recs


class Page(HTMLParser):
    """What a browser without JavaScript gets: every id, every link, each table's rows, every script."""

    def __init__(self):
        super().__init__()
        self.ids, self.links, self.scripts, self.tables = set(), [], [], {}
        self.parents: list[tuple[str, dict]] = []
        self.table_parent: dict[str, tuple[str, dict]] = {}
        self._table = self._section = None
        self._in_body = False
        self._nav = False
        self.contents: list[str] = []
        self.cells: list[str] = []
        self._cell = None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if "id" in a:
            self.ids.add(a["id"])
        if tag == "a" and "href" in a:
            self.links.append(a["href"])
            if self._nav:
                self.contents.append(a["href"])
        if tag == "nav" and a.get("id") == "contents":
            self._nav = True
        if tag == "script":
            self.scripts.append(a)
        if tag == "table":
            self._table = a.get("id")
            self.tables[self._table] = {"rows": 0, "data-rows": a.get("data-rows")}
            self.table_parent[self._table] = self.parents[-1] if self.parents else ("", {})
        if tag == "tbody":
            self._in_body = True
        if tag == "tr" and self._in_body:
            self.tables[self._table]["rows"] += 1
        if tag == "td":
            self._cell = ""
        if tag not in ("br", "img", "meta", "input", "hr"):
            self.parents.append((tag, a))

    def handle_data(self, data):
        if self._cell is not None:
            self._cell += data

    def handle_endtag(self, tag):
        if tag == "nav":
            self._nav = False
        if tag == "tbody":
            self._in_body = False
        if tag == "td":
            self.cells.append(self._cell)
            self._cell = None
        if self.parents and self.parents[-1][0] == tag:
            self.parents.pop()


def _parse(text: str) -> Page:
    p = Page()
    p.feed(text)
    return p


def test_every_table_is_html_without_javascript(tmp_path):
    rep = report(tmp_path, _records())
    page = _parse((rep.out / "index.html").read_text())
    # every table is there with its rows, as many as it says, before any script runs
    for tid in ("headline", "table1", "table2_paper", "finetune", "behaviour", "table2", "worst", "reference"):
        t = page.tables.get(f"t-{tid}")
        assert t is not None, tid
        assert t["rows"] > 0 and t["rows"] == int(t["data-rows"]), (tid, t)
    # no table is filled by a script: no JSON data islands, one script (sorting) and it is not needed to read
    assert not any(s.get("type") == "application/json" for s in page.scripts)
    assert not any(i.startswith("data-") for i in page.ids)
    # missing values read '—', never a blank cell
    assert page.cells and all(c.strip() for c in page.cells)
    # every table scrolls sideways inside its own box, not the page
    for tid, (tag, attrs) in page.table_parent.items():
        assert tag == "div" and attrs.get("class") == "scroll", tid
    assert ".scroll { overflow-x: auto;" in (rep.out / "index.html").read_text()


def test_contents_list_and_every_link_resolve(tmp_path):
    rep = report(tmp_path, _records())
    page = _parse((rep.out / "index.html").read_text())
    assert len(page.contents) >= 10 and all(h.startswith("#") for h in page.contents)
    for want in ("#headline", "#heatmap", "#table1", "#table2_paper", "#figures", "#log"):
        assert want in page.contents
    for href in page.links:
        if href.startswith("#"):
            assert href[1:] in page.ids, href          # an anchor on the page
        else:
            assert (rep.out / href).is_file(), href    # a file the report wrote beside the page


def test_a_tables_note_is_shown_once():
    note = "the defended model's own capability (0.176) is already below the bound"
    rows = [dict(model="m", defense_label=d, group="all", note=note) for d in ("a", "b", "c")]
    rows.append(dict(model="m", defense_label="d", group="all", note="another note"))
    text = H.page(title="t", summary=[], tables={"worst": rows}, figures=[], reference=None, reference_sources=[],
                  log_lines=[])
    assert text.count(H.html.escape(note)) == 1 and text.count("another note") == 1
    page = _parse(text)
    assert page.tables["t-worst"]["rows"] == 4
    assert all(h[1:] in page.ids for h in page.links if h.startswith("#worst-"))  # each cell points to its note
    # a note every row shares: stated once, no column
    same = H.page(title="t", summary=[], tables={"worst": rows[:3]}, figures=[], reference=None,
                  reference_sources=[], log_lines=[])
    worst = same.split('<table id="t-worst"', 1)[1].split("</table>", 1)[0]
    assert same.count(H.html.escape(note)) == 1 and 'data-key="note"' not in worst


def test_palette_is_fixed_by_defense_name_and_colour_blind_safe(tmp_path):
    a = report(tmp_path / "a", _records(("none", "sdd", "seam", "repnoise")))
    b = report(tmp_path / "b", _records(("booster", "none", "sdd", "tar", "vaccine")))
    import json
    ca = json.loads((a.out / "figures.json").read_text())["colors"]
    cb = json.loads((b.out / "figures.json").read_text())["colors"]
    for d in set(ca) & set(cb):
        assert ca[d] == cb[d], d  # the same defense, the same colour, whatever else the report holds
    four = [ca[d] for d in ("none", "repnoise", "sdd", "seam")]
    assert len(set(four)) == 4
    assert {c.lower() for c in list(ca.values()) + list(cb.values())} <= SAFE
    # every figure draws a defense in that colour
    for colors in json.loads((a.out / "figures.json").read_text())["figures"].values():
        assert all(ca[d] == c for d, c in colors.items())
    # an unknown name gets a fixed colour of the same safe set, the same every time
    assert F.defense_color("my-new-defense") == F.defense_color("my-new-defense")
    assert F.defense_color("my-new-defense").lower() in SAFE


def _capture(monkeypatch):
    figs, save = {}, F._save

    def capture(fig, out):
        figs[out.name] = fig
        return save(fig, out)
    monkeypatch.setattr(F, "_save", capture)
    return figs


def _texts(fig):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.text import Text
    FigureCanvasAgg(fig)
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    hidden = set()  # tick labels of ticks outside the view: matplotlib keeps them but does not draw them
    for ax in fig.axes:
        for axis in (ax.xaxis, ax.yaxis):
            lo, hi = sorted(axis.get_view_interval())
            tol = 1e-9 * max(1.0, abs(hi - lo))
            for tick in axis.get_major_ticks() + axis.get_minor_ticks():
                if not lo - tol <= tick.get_loc() <= hi + tol:
                    hidden |= {id(tick.label1), id(tick.label2)}
    out = []
    for t in fig.findobj(Text):
        if id(t) in hidden:
            continue
        if t.get_visible() and t.get_text().strip() and (t.axes is None or t.axes.get_visible()):
            bb = t.get_window_extent(renderer)
            if bb.width > 0 and bb.height > 0:
                out.append((t.get_text(), bb))
    return out


def test_scatter_text_never_overlaps(tmp_path, monkeypatch):
    figs = _capture(monkeypatch)
    recs = [make_record(d, f"advbench-{n}", n=n, harm=0.5 + 0.002 * n / 10 + 0.01 * i, cap=0.42, harm0=0.1)
            for i, d in enumerate(DEFENSES) for n in ATTACK_NS]
    report(tmp_path, recs)
    assert "scatter_harm_vs_capability.png" in figs and "heatmap_defense_attack.png" in figs
    assert len(_texts(figs["scatter_harm_vs_capability.png"])) > 20
    for name, fig in figs.items():  # the scatter, and every other figure of the report too
        texts = _texts(fig)
        clash = [(a, b) for (a, ba), (b, bb) in combinations(texts, 2) if ba.overlaps(bb)]
        assert not clash, (name, clash[:5])


def test_bar_error_bars_are_full_and_visible(tmp_path, monkeypatch):
    figs = _capture(monkeypatch)
    recs = _records() + [make_record(d, "advbench-100", model="tiny-b", harm=0.6) for d in DEFENSES]
    rep = report(tmp_path, recs)
    fig = figs["fig4_backbones.png"]
    cis = {(round(s.ci_lo, 9), round(s.ci_hi, 9)) for key in (rep.results.harm.primary.key,)
           for s in [rep.results.get(x, key) for x in rep.results.defended + rep.results.attacked] if s is not None}
    from matplotlib.colors import to_hex
    seen = 0
    for ax in fig.axes:
        bars = {c.get_label(): c for c in ax.containers if c.__class__.__name__ == "BarContainer"}
        errs = [c for c in ax.containers if c.__class__.__name__ == "ErrorbarContainer"]
        for err in errs:
            data_line, _, cols = err.lines
            for (x, lo), (_, hi) in cols[0].get_segments():
                assert (round(lo, 9), round(hi, 9)) in cis  # the CI itself: both ends, lower half included
                seen += 1
            ecolor = to_hex(cols[0].get_colors()[0])
            assert all(to_hex(p.get_facecolor()) != ecolor for b in bars.values() for p in b.patches), \
                "an error bar the colour of its bar hides its lower half"
        assert len(errs) == len(bars)
    assert seen >= 2 * len(DEFENSES)
    # the two smoke backbones are one model, raw and aligned: the figure says which is which
    assert F.backbone_label("/m/smollm2-135m") == "SmolLM2-135M (raw chat)"
    assert "aligned" in F.backbone_label("smollm2-135m-aligned")


def test_heatmap_has_delta_beside_absolute(tmp_path, monkeypatch):
    figs = _capture(monkeypatch)
    report(tmp_path, _records())
    fig = figs["heatmap_defense_attack.png"]
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    assert any("Δ vs none" in t for t in titles) and any("harmful rate" in t for t in titles)
    delta = next(ax for ax in fig.axes if "Δ vs none" in ax.get_title())
    norm = delta.images[0].norm
    assert norm.vmin == -norm.vmax  # diverging, centred at 0
    # row labels readable: black, not the defense's pale colour
    from matplotlib.colors import to_hex
    assert {to_hex(t.get_color()) for t in delta.get_yticklabels()} == {"#000000"}


def test_svg_beside_every_png_at_print_resolution(tmp_path):
    rep = report(tmp_path, _records())
    pngs = sorted(p for p in rep.out.glob("*.png"))
    assert len(pngs) >= 3
    from PIL import Image
    for p in pngs:
        svg = p.with_suffix(".svg")
        assert svg.is_file() and "<svg" in svg.read_text()[:2000], svg.name
        assert svg.name in rep.files
        assert Image.open(p).info["dpi"][0] == pytest.approx(F.DPI, abs=1) and F.DPI >= 200
    first = {p.name: p.read_bytes() for p in rep.out.glob("*.svg")}
    again = report(tmp_path / "again", _records())
    assert {p.name: p.read_bytes() for p in again.out.glob("*.svg")} == first  # reproducible bytes


def test_one_name_and_half_up_rounding(tmp_path):
    recs = [make_record("none", "advbench-100", harm=0.0625), make_record("sdd", "advbench-100", harm=0.5),
            make_record("none", "advbench-10", n=10, harm=0.3)]  # sdd × advbench-10: no record
    rep = report(tmp_path, recs)
    import re
    for name in ("table1.md", "table1_paper.md", "table2.md", "worst_case.md", "headline.md", "behaviour.md"):
        blank = [line for line in (rep.out / name).read_text().splitlines() if re.search(r"\|\s+\|", line)]
        assert not blank, (name, blank[:2])  # a missing value reads '—', never a blank cell
    t1 = (rep.out / "table1_paper.md").read_text()
    assert "6.3 [" in t1 and "6.2 [" not in t1  # 6.25 % rounds half-up
    page = (rep.out / "index.html").read_text()
    assert "6.3 [" in page
    t2 = (rep.out / "table2_paper.md").read_text()
    assert "Vanilla |" not in t2 and "| task | none | +sdd |" in t2  # `none`, as in Table 1
