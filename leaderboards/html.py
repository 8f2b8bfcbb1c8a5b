"""``index.html``: one static, offline page (no CDN, no server) with sortable tables and the figures.

The tables' rows are embedded as JSON (the same rows as the CSV files) and rendered by the small
vanilla-JS script below; clicking a header sorts by that column, and ``#sort=TABLE:COLUMN:asc|desc``
in the URL sorts on load.  Each rendered table carries ``data-rows`` (rows drawn) and
``data-sort`` (current order), so a headless browser can check what the script produced.
"""
from __future__ import annotations

import html
import json
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
    "table2_paper": ("Table 2: capability, Vanilla / +defense / +BFT / +MFT (accuracy %, Δ vs Vanilla)", []),
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
  var state = {};
  function fmt(v) {
    if (v === null || v === undefined || v === "") return "\u2014";
    if (typeof v === "number") return Number.isInteger(v) ? String(v) : v.toPrecision(4);
    return String(v);
  }
  function cmp(a, b) {
    var an = a === null || a === undefined || a === "", bn = b === null || b === undefined || b === "";
    if (an || bn) return an === bn ? 0 : (an ? 1 : -1);
    if (typeof a === "number" && typeof b === "number") return a - b;
    return String(a).localeCompare(String(b), undefined, {numeric: true});
  }
  function draw(id) {
    var s = state[id], table = document.getElementById("t-" + id), body = table.tBodies[0];
    while (body.firstChild) body.removeChild(body.firstChild);
    s.rows.forEach(function (row) {
      var tr = document.createElement("tr");
      s.columns.forEach(function (c) {
        var td = document.createElement("td");
        td.textContent = fmt(row[c[0]]);
        if (typeof row[c[0]] === "number") td.className = "num";
        tr.appendChild(td);
      });
      body.appendChild(tr);
    });
    table.setAttribute("data-rows", String(s.rows.length));
    table.setAttribute("data-sort", s.sort ? s.sort.key + ":" + s.sort.dir : "");
    Array.prototype.forEach.call(table.tHead.rows[0].cells, function (th) {
      th.setAttribute("aria-sort", s.sort && th.getAttribute("data-key") === s.sort.key
        ? (s.sort.dir === "asc" ? "ascending" : "descending") : "none");
    });
  }
  function sortBy(id, key, dir) {
    var s = state[id];
    if (!s) return;
    if (!dir) dir = s.sort && s.sort.key === key && s.sort.dir === "asc" ? "desc" : "asc";
    var sign = dir === "asc" ? 1 : -1;
    s.rows = s.rows.map(function (r, i) { return [r, i]; }).sort(function (x, y) {
      return sign * cmp(x[0][key], y[0][key]) || x[1] - y[1];
    }).map(function (p) { return p[0]; });
    s.sort = {key: key, dir: dir};
    draw(id);
  }
  function build(id) {
    var spec = JSON.parse(document.getElementById("data-" + id).textContent);
    state[id] = {columns: spec.columns, rows: spec.rows, sort: null};
    var table = document.getElementById("t-" + id), tr = document.createElement("tr");
    spec.columns.forEach(function (c) {
      var th = document.createElement("th");
      th.textContent = c[1];
      th.setAttribute("data-key", c[0]);
      th.title = "sort by " + c[1];
      th.addEventListener("click", function () { sortBy(id, c[0]); });
      tr.appendChild(th);
    });
    table.createTHead().appendChild(tr);
    table.appendChild(document.createElement("tbody"));
    draw(id);
  }
  document.querySelectorAll("script[type='application/json'][id^='data-']").forEach(function (el) {
    build(el.id.slice(5));
  });
  var m = /(?:^|[#&])sort=([\w-]+):([\w-]+)(?::(asc|desc))?/.exec(window.location.hash);
  if (m) sortBy(m[1], m[2], m[3] || "asc");
  window.sddSort = sortBy;
})();
"""

STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5em; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; font-size: 0.85em; }
th, td { border: 1px solid #ccc; padding: 0.2em 0.5em; }
th { background: #f0f0f0; cursor: pointer; position: sticky; top: 0; }
th[aria-sort=ascending]::after { content: " \\25B2"; } th[aria-sort=descending]::after { content: " \\25BC"; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
.reference { border-left: 4px solid #b07d00; padding-left: 1em; background: #fffaf0; }
.log { font-family: monospace; font-size: 0.8em; white-space: pre-wrap; }
figure { display: inline-block; margin: 0.5em; max-width: 100%; } figure img { max-width: 100%; height: auto; }
"""


def _clean(value):
    if isinstance(value, float) and (math.isnan(value) or math.isinf(value)):
        return None
    return value


def _data_script(table_id: str, columns: list[tuple[str, str]], rows: list[dict]) -> str:
    payload = {"columns": [list(c) for c in columns],
               "rows": [{k: _clean(r.get(k)) for k, _ in columns} for r in rows]}
    text = json.dumps(payload, ensure_ascii=False).replace("</", "<\\/")
    return f'<script type="application/json" id="data-{table_id}">{text}</script>'


def _section(table_id: str, rows: list[dict], intro: str = "", css: str = "",
             columns: list[tuple[str, str]] | None = None) -> str:
    title, fixed = TABLES[table_id]
    columns = columns or fixed
    cls = f' class="{css}"' if css else ""
    empty = "" if rows else "<p><em>No rows: the records hold no data for this table.</em></p>"
    return (f'<section id="{table_id}"{cls}><h2>{html.escape(title)}</h2>{intro}{empty}'
            f'<table id="t-{table_id}" data-rows="0"></table>{_data_script(table_id, columns, rows)}</section>')


def _figure_html(f: str) -> str:
    e = html.escape(f)
    return (f"<figure><a href='{e}' title='full size'><img src='{e}' alt='{e}'></a>"
            f"<figcaption>{e} (<a href='{e}'>full size</a>)</figcaption></figure>")


def page(*, title: str, summary: list[str], tables: dict[str, list[dict]], figures: list[str],
         reference: list[dict] | None, reference_sources: list[str], log_lines: list[str],
         headline_intro: str | None = None) -> str:
    summary_html = "".join(f"<li>{html.escape(s)}</li>" for s in summary)
    parts = [f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
             f"<style>{STYLE}</style></head><body><h1>{html.escape(title)}</h1><ul>{summary_html}</ul>",
             "<p>Click a column header to sort. CSV files: "
             + ", ".join(f"<a href='{n}'>{n}</a>" for n in ("long.csv", "headline.csv", "table1_paper.csv", "table2_paper.csv",
                                                          "finetune_accuracy.csv", "lr_sweep.csv", "behaviour.csv", "table1.csv", "table2.csv",
                                                          "worst_case.csv", "compute.csv", "figures.json"))
             + ".</p>"]
    parts.append(_section("headline", tables.get("headline", []), headline_intro or ""))
    if "heatmap_defense_attack.png" in figures:
        parts.append("<section id='heatmap'><h2>Defense × attack heatmap</h2>"
                     + _figure_html("heatmap_defense_attack.png") + "</section>")
    t1 = tables.get("table1", [])
    t1_cols = [(k, k) for k in dict.fromkeys(k for r in t1 for k in r)]
    parts.append(_section("table1", t1, "<p>Each cell: harmfulness / harm rate (or refusal rate without a rubric), "
                          "95% CI and n; '—': no record.</p>", columns=t1_cols or [("defense", "defense")]))
    for tid, intro in (("table2_paper", "<p>Per defense and task: accuracy [95% CI] and, where Vanilla is above 0, "
                                        "the relative change Δ vs Vanilla (the undefended model before any attack). "
                                        "+BFT / +MFT: the attack of that kind with the lowest accuracy.</p>"),
                       ("finetune", ""), ("lr_sweep", "<p>Per defense and attack lr: harm [95% CI] / capability "
                                                     "[95% CI]; Δcap vs the defended model; SEAM's verdict "
                                                     "(lr_sweep.md states the thresholds).</p>"),
                       ("behaviour", "<p>Before any attack. Irrelevant: the relevance judge (a short refusal is "
                                     "usually off-topic too); behaviour.md adds the harmful-prompt shares after each "
                                     "malicious fine-tuning.</p>")):
        rows = tables.get(tid, [])
        cols = [(k, k) for k in dict.fromkeys(k for r in rows for k in r)]
        parts.append(_section(tid, rows, intro, columns=cols or [("defense", "defense")]))
    for tid in ("table2", "worst"):
        parts.append(_section(tid, tables.get(tid, [])))
    parts.append(_section("compute", tables.get("compute", []), "<p>Wall-clock seconds under the load each stage ran "
                          f"with; {html.escape(NOT_TIMED)}.</p>"))
    if figures:
        parts.append("<section id='figures'><h2>Figures</h2>" + "".join(_figure_html(f) for f in figures
                                                                         if f != "heatmap_defense_attack.png")
                     + "</section>")
    if reference is not None:
        intro = ("<p><strong>These are published numbers, not ours.</strong> They are matched to our cells by "
                 "defense, attack and model only where the setting matches; judges, data and hyperparameters "
                 "may still differ. Sources:</p><ul>"
                 + "".join(f"<li>{html.escape(s)}</li>" for s in reference_sources) + "</ul>")
        shown = [dict(r, value=str(r["value"])) for r in reference]  # the paper's number as printed: 0.3, not 0.3000
        parts.append(_section("reference", shown, intro, css="reference"))
    parts.append("<section id='log'><h2>Report log</h2><div class='log'>"
                 + html.escape("\n".join(log_lines)) + "</div></section>")
    parts.append(f"<script>{SCRIPT}</script></body></html>")
    return "\n".join(parts)
