"""``index.html``: one static, offline page (no CDN, no server) with the tables and the figures.

Every table is real HTML (the same rows as the CSV files), readable without JavaScript; a contents list
at the top links to each section.  A table's notes (its ``note`` column) are shown once below it, the
cells pointing to them.  Wide tables scroll inside their own box.  The small vanilla-JS script below only
adds sorting: clicking a header sorts by that column, and ``#sort=TABLE:COLUMN:asc|desc`` in the URL
sorts on load.  Each table carries ``data-rows`` (its rows) and ``data-sort`` (current order).
"""
from __future__ import annotations

import html
import math

from .compute import NOT_TIMED

TABLES = {
    "headline": ("Headline: worst case per defense over every malicious attack (sorted: safest first)", [
        ("model", "model"), ("profile", "profile"), ("defense_label", "defense"), ("verdict", "verdict"),
        ("ub_worst", "capability-bounded worst (sort)"), ("ub_worst_text", "capability-bounded worst [95% CI]"),
        ("ub_worst_cell", "at"), ("worst_text", "worst over all attacks [95% CI]"), ("worst_cell", "at"),
        ("ub_n_cells", "cells ≥ capability bound"), ("usable_worst_text", "worst usable harm (harmful ∧ coherent ∧ relevant)"), ("initial_capability_norm", "initial capability (chance-normalised)"),
        ("undefended_verdict", "undefended model under these attacks"), ("note", "note")]),
    "table1": ("Table 1: harmfulness under malicious fine-tuning (rows = defenses; rates in %)", []),  # columns: data
    "table2_paper": ("Table 2: capability, none / +defense / +BFT / +MFT (accuracy %, Δ vs none)", []),
    "finetune": ("Benign fine-tuning task accuracy after each BFT attack (%)", []),
    "lr_sweep": ("Attack learning-rate sweep (SEAM's protocol): harm % / chance-normalised capability, Δcap, verdict",
                 []),
    "behaviour": ("Response behaviour of each defended model: refusal / irrelevant / incoherent share of each eval "
                  "set's prompts (%)", []),
    "table2": ("Table 2 (long): capability per task and condition, benign fine-tuning accuracy", [
        ("model", "model"), ("profile", "profile"), ("defense_label", "defense"), ("condition", "condition"),
        ("column", "attack"), ("quantity_label", "task"), ("mean", "mean (higher is better)"), ("ci_lo", "CI low"),
        ("ci_hi", "CI high"), ("n_seeds", "seeds"), ("n_items", "items")]),
    "worst": ("Worst case over the attacker's sweep, and utility-bounded worst case", [
        ("model", "model"), ("defense_label", "defense"), ("group", "sweep"), ("metric_label", "metric"),
        ("n_cells", "cells"), ("worst", "worst"), ("worst_cell", "worst cell"), ("worst_capability", "its capability"),
        ("capability_bound", "capability bound"), ("ub_worst", "utility-bounded worst"), ("ub_worst_cell", "at"),
        ("ub_n_cells", "cells ≥ bound"), ("ub_excluded_low_capability", "below bound"),
        ("ub_excluded_no_capability", "no capability"), ("breaks", "verdict"),
        ("note", "note")]),
    "compute": ("Compute: measured stage times behind these records (each artifact once; compute.md has totals)", [
        ("stage", "stage"), ("model", "model"), ("defense", "defense"), ("attack", "attack"), ("steps", "steps"),
        ("seconds_per_step", "s / step"), ("seconds", "seconds"), ("device", "device"), ("records", "records using it"), ("builds", "builds (median shown)"),
        ("artifact", "artifact")]),
    "reference": ("Paper (reference) numbers, shown beside ours, never mixed in", [
        ("paper", "paper"), ("arxiv", "arXiv"), ("table", "table"), ("model", "model"), ("defense", "defense"),
        ("attack", "attack"), ("metric", "metric"), ("value", "paper value"), ("unit", "unit"),
        ("our_defense", "our defense"), ("our_attack", "our attack"), ("ours", "ours (this report)"),
        ("source_kind", "source"), ("verified_against_paper", "verified against paper")]),
}

SCRIPT = r"""
(function () {
  "use strict";
  function key(td) {
    var v = td.getAttribute("data-v");
    if (v !== null) return {n: parseFloat(v)};
    var t = td.textContent;
    return t === "\u2014" ? null : {s: t};
  }
  function cmp(a, b) {
    if (a === null || b === null) return a === b ? 0 : (a === null ? 1 : -1);
    if ("n" in a && "n" in b) return a.n - b.n;
    return String(a.s !== undefined ? a.s : a.n).localeCompare(String(b.s !== undefined ? b.s : b.n), undefined,
                                                                {numeric: true});
  }
  function sortBy(id, col, dir) {
    var table = document.getElementById("t-" + id);
    if (!table) return;
    var ths = Array.prototype.slice.call(table.tHead.rows[0].cells);
    var idx = ths.findIndex(function (th) { return th.getAttribute("data-key") === col; });
    if (idx < 0) return;
    var cur = table.getAttribute("data-sort");
    if (!dir) dir = cur === col + ":asc" ? "desc" : "asc";
    var sign = dir === "asc" ? 1 : -1, body = table.tBodies[0];
    var rows = Array.prototype.slice.call(body.rows).map(function (r, i) { return [r, i]; });
    rows.sort(function (x, y) {  // missing values ('\u2014') last in either direction
      var a = key(x[0].cells[idx]), b = key(y[0].cells[idx]);
      if (a === null || b === null) return (a === null) - (b === null) || x[1] - y[1];
      return sign * cmp(a, b) || x[1] - y[1];
    });
    rows.forEach(function (p) { body.appendChild(p[0]); });
    table.setAttribute("data-sort", col + ":" + dir);
    ths.forEach(function (th, i) {
      th.setAttribute("aria-sort", i === idx ? (dir === "asc" ? "ascending" : "descending") : "none");
    });
  }
  document.querySelectorAll("table[id^='t-'] th[data-key]").forEach(function (th) {
    var id = th.closest("table").id.slice(2);
    th.title = "sort by " + th.textContent;
    th.addEventListener("click", function () { sortBy(id, th.getAttribute("data-key")); });
  });
  var m = /(?:^|[#&])sort=([\w-]+):([\w-]+)(?::(asc|desc))?/.exec(window.location.hash);
  if (m) sortBy(m[1], m[2], m[3] || "asc");
  window.sddSort = sortBy;
})();
"""

STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5em; color: #222; max-width: 110em; }
.scroll { overflow-x: auto; max-width: 100%; margin: 0.5em 0 0.5em; }
table { border-collapse: collapse; font-size: 0.85em; }
th, td { border: 1px solid #ccc; padding: 0.2em 0.5em; vertical-align: top; }
th { background: #f0f0f0; cursor: pointer; position: sticky; top: 0; }
th[aria-sort=ascending]::after { content: " \\25B2"; } th[aria-sort=descending]::after { content: " \\25BC"; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
nav#contents { background: #f7f7f7; border: 1px solid #ddd; padding: 0.3em 1em; display: inline-block; }
.notes { font-size: 0.85em; color: #444; }
.reference { border-left: 4px solid #b07d00; padding-left: 1em; background: #fffaf0; }
.log { font-family: monospace; font-size: 0.8em; white-space: pre-wrap; }
figure { display: inline-block; margin: 0.5em; max-width: 100%; } figure img { max-width: 100%; height: auto; }
"""
DASH = "\u2014"  # every missing value on the page
FOLD_ROWS = 100  # a table with more rows is folded (<details>): still HTML, still in the page
NOTE_KEYS = ("note",)  # columns shown once per table, below it (cells point to them)
DEFAULT_FILES = ("long.csv", "headline.csv", "table1_paper.csv", "table2_paper.csv", "finetune_accuracy.csv",
                 "lr_sweep.csv", "behaviour.csv", "table1.csv", "table2.csv", "worst_case.csv", "compute.csv",
                 "figures.json")


def _clean(value):
    if isinstance(value, float) and (math.isnan(value) or math.isinf(value)):
        return None
    return value


def _text(value) -> str:
    """A cell as shown: '—' for anything missing, integers as they are, other numbers to 4 significant digits."""
    value = _clean(value)
    if value is None or value == "":
        return DASH
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() and abs(value) < 1e15 else f"{value:.4g}"
    return str(value)


def _td(value) -> str:
    value = _clean(value)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return f'<td class="num" data-v="{value!r}">{html.escape(_text(value))}</td>'
    return f"<td>{html.escape(_text(value))}</td>"


def _table(table_id: str, columns: list[tuple[str, str]], rows: list[dict]) -> str:
    """The table as HTML (thead, tbody with every row) in a box that scrolls sideways, and its notes below: each
    distinct ``note`` once, the cells pointing to it by number (a note every row shares is not repeated at all)."""
    notes: dict[str, list[str]] = {}
    for k, _ in columns:
        if k in NOTE_KEYS:
            notes[k] = list(dict.fromkeys(_text(r.get(k)) for r in rows if _text(r.get(k)) != DASH))
    shared = {k for k, v in notes.items() if len(v) == 1 and all(_text(r.get(k)) == v[0] for r in rows)}
    cols = [c for c in columns if c[0] not in shared]
    head = "".join(f'<th data-key="{html.escape(k)}" aria-sort="none">{html.escape(label)}</th>' for k, label in cols)
    body = []
    for r in rows:
        cells = []
        for k, _ in cols:
            if k in notes and _text(r.get(k)) != DASH:
                i = notes[k].index(_text(r.get(k))) + 1
                cells.append(f'<td><a href="#{table_id}-{k}-{i}">[{i}]</a></td>')
            else:
                cells.append(_td(r.get(k)))
        body.append("<tr>" + "".join(cells) + "</tr>")
    out = (f'<div class="scroll"><table id="t-{table_id}" data-rows="{len(rows)}" data-sort="">'
           f"<thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table></div>")
    for k, texts in notes.items():
        if not texts:
            continue
        label = dict(columns)[k]
        if k in shared:
            out += f'<p class="notes" id="{table_id}-{k}-1"><strong>{html.escape(label)}</strong> (every row): ' \
                   f"{html.escape(texts[0])}</p>"
        else:
            out += (f'<ol class="notes" aria-label="{html.escape(label)}s">'
                    + "".join(f'<li id="{table_id}-{k}-{i}">{html.escape(t)}</li>' for i, t in enumerate(texts, 1))
                    + "</ol>")
    return out


def _section(table_id: str, rows: list[dict], intro: str = "", css: str = "",
             columns: list[tuple[str, str]] | None = None) -> str:
    title, fixed = TABLES[table_id]
    columns = columns or fixed
    cls = f' class="{css}"' if css else ""
    empty = "" if rows else "<p><em>No rows: the records hold no data for this table.</em></p>"
    table = _table(table_id, columns, rows)
    if len(rows) > FOLD_ROWS:  # a long form: in the page, but folded, so the page stays short to scroll
        table = f"<details><summary>all {len(rows)} rows (the CSV has them too)</summary>{table}</details>"
    return f'<section id="{table_id}"{cls}><h2>{html.escape(title)}</h2>{intro}{empty}{table}</section>'



def _figure_html(f: str) -> str:
    e, svg = html.escape(f), html.escape(f.rsplit(".", 1)[0] + ".svg")
    return (f"<figure><a href='{e}' title='full size'><img src='{e}' alt='{e}'></a>"
            f"<figcaption>{e} (<a href='{e}'>full size</a>, <a href='{svg}'>SVG</a>)</figcaption></figure>")


def page(*, title: str, summary: list[str], tables: dict[str, list[dict]], figures: list[str],
         reference: list[dict] | None, reference_sources: list[str], log_lines: list[str],
         headline_intro: str | None = None, files: list[str] | None = None) -> str:
    """The page.  ``files``: the report's data files to link (default: the CSVs every report writes)."""
    summary_html = "".join(f"<li>{html.escape(s)}</li>" for s in summary)
    links = [f for f in (files if files is not None else DEFAULT_FILES) if f.endswith((".csv", ".md", ".json"))]
    sections: list[tuple[str, str, str]] = []  # (id, title, html)

    def add(sid: str, heading: str, body: str) -> None:
        sections.append((sid, heading, body))

    add("headline", TABLES["headline"][0], _section("headline", tables.get("headline", []), headline_intro or ""))
    if "heatmap_defense_attack.png" in figures:
        add("heatmap", "Defense × attack heatmap", "<section id='heatmap'><h2>Defense × attack heatmap</h2>"
            "<p>Left: the headline harm of each defense under each attack. Right: its difference from the undefended "
            "model (none) under the same attack; * / •: the difference is significant (paired test) / outside the "
            "cell's 95% CI.</p>" + _figure_html("heatmap_defense_attack.png") + "</section>")
    t1 = tables.get("table1", [])
    t1_cols = [(k, k) for k in dict.fromkeys(k for r in t1 for k in r)]
    add("table1", TABLES["table1"][0], _section(
        "table1", t1, f"<p>Each cell: harmfulness / harm rate (or refusal rate without a rubric), 95% CI and n; "
        f"'{DASH}': no record.</p>", columns=t1_cols or [("defense", "defense")]))
    for tid, intro in (("table2_paper", "<p>Per defense and task: accuracy [95% CI] and, where none is above 0, "
                                        "the relative change Δ vs none (the undefended model before any attack; the "
                                        "papers' \u201cVanilla\u201d). +BFT / +MFT: the attack of that kind with the "
                                        "lowest accuracy.</p>"),
                       ("finetune", ""), ("lr_sweep", "<p>Per defense and attack lr: harm [95% CI] / capability "
                                                     "[95% CI]; Δcap vs the defended model; SEAM's verdict "
                                                     "(lr_sweep.md states the thresholds).</p>"),
                       ("behaviour", "<p>Before any attack. Irrelevant: the relevance judge (a short refusal is "
                                     "usually off-topic too); behaviour.md adds the harmful-prompt shares after each "
                                     "malicious fine-tuning.</p>")):
        rows = tables.get(tid, [])
        cols = [(k, k) for k in dict.fromkeys(k for r in rows for k in r)]
        add(tid, TABLES[tid][0], _section(tid, rows, intro, columns=cols or [("defense", "defense")]))
    for tid in ("table2", "worst"):
        add(tid, TABLES[tid][0], _section(tid, tables.get(tid, [])))
    add("compute", TABLES["compute"][0], _section(
        "compute", tables.get("compute", []), "<p>Wall-clock seconds under the load each stage ran "
        f"with; {html.escape(NOT_TIMED)}.</p>"))
    if figures:
        add("figures", "Figures", "<section id='figures'><h2>Figures</h2><p>PNG (200 dpi) with an SVG beside each."
            "</p>" + "".join(_figure_html(f) for f in figures if f != "heatmap_defense_attack.png") + "</section>")
    if reference is not None:
        intro = ("<p><strong>These are published numbers, not ours.</strong> They are matched to our cells by "
                 "defense, attack and model only where the setting matches; judges, data and hyperparameters "
                 "may still differ. Sources:</p><ul>"
                 + "".join(f"<li>{html.escape(s)}</li>" for s in reference_sources) + "</ul>")
        shown = [dict(r, value=str(r["value"])) for r in reference]  # the paper's number as printed: 0.3, not 0.3000
        add("reference", TABLES["reference"][0], _section("reference", shown, intro, css="reference"))
    add("log", "Report log", "<section id='log'><h2>Report log</h2><div class='log'>"
        + html.escape("\n".join(log_lines)) + "</div></section>")
    contents = ("<nav id='contents' aria-label='contents'><strong>Contents</strong><ol>"
                + "".join(f"<li><a href='#{sid}'>{html.escape(h)}</a></li>" for sid, h, _ in sections)
                + "</ol></nav>")
    parts = [f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
             f"<style>{STYLE}</style></head><body id='top'><h1>{html.escape(title)}</h1><ul>{summary_html}</ul>",
             contents,
             "<p>Click a column header to sort (needs JavaScript; the tables read the same without it). Data files: "
             + ", ".join(f"<a href='{html.escape(n)}'>{html.escape(n)}</a>" for n in links) + ".</p>"]
    parts += [body for _, _, body in sections]
    parts.append(f"<script>{SCRIPT}</script></body></html>")
    return "\n".join(parts)
