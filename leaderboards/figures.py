"""The report's figures (PNG at print resolution and SVG beside it, matplotlib's Agg renderer; no display needed).

Each figure function returns the file it wrote, or raises :class:`Skip` with the reason its data is
absent; the report logs the reason instead of drawing an empty plot.  Every point is a seed mean
with its 95% CI as a full (two-sided) error bar (see ``aggregate``).  Colours come from one
colour-blind-safe palette fixed per defense name (``DEFENSE_COLORS``: Okabe–Ito, then Paul Tol's
muted set), so a defense has the same colour in every figure of every report.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

from .aggregate import CAP_NORM, KIND_LABEL, Metric, Results, Setting, Thresholds, sweep_groups

HARMFUL_DATASETS = ("advbench", "advbench-responses", "beavertails-attack")  # attack data of malicious fine-tuning (attacks/finetune.py)
DPI = 200  # print resolution; every figure is also written as SVG (``_save``)
SPREAD = 0.12  # total relative horizontal spread of the series at one x on log-x plots (±6 %), so bars do not overlap
LINESTYLES = ("-", "--", ":", "-.")
# One colour-blind-safe palette, fixed per defense name (not per report): Okabe & Ito (2008) for the common
# defenses, Paul Tol's "muted" scheme for the rest; `none` (the undefended reference) is neutral grey.
DEFENSE_COLORS: dict[str, str] = {
    "none": "#898989", "sdd": "#0072B2", "seam": "#E69F00", "repnoise": "#CC79A7", "sdd-reject": "#56B4E9",
    "refusal-sft": "#009E73", "vaccine": "#D55E00", "t-vaccine": "#CC6677", "booster": "#DDCC77",
    "deepalign": "#332288", "simpo": "#882255", "tar": "#999933",
}
FALLBACK_COLORS = ("#117733", "#88CCEE", "#44AA99", "#AA4499", "#F0E442", "#000000")  # unknown names: by hash
COLORS: dict[str, str] = {}  # defense label -> colour drawn in this report (``assign_colors``); written to figures.json
USED: dict[str, dict[str, str]] = {}  # figure -> {defense label: colour} actually drawn (the report's metadata)
_CURRENT: list[str] = [""]
# the smoke profile's two backbones are one model, raw and aligned: say so wherever a backbone is named
BACKBONE_LABEL = {"smollm2-135m": "SmolLM2-135M (raw chat)",
                  "smollm2-135m-aligned": "SmolLM2-135M aligned (refusal-SFT base)"}


def defense_color(defense_label: str) -> str:
    """The fixed colour of a defense label: its own entry, else its base name's (``sdd[opt]`` → ``sdd``'s), else a
    deterministic pick from ``FALLBACK_COLORS`` by a hash of the name (the same in every run and report)."""
    if defense_label in DEFENSE_COLORS:
        return DEFENSE_COLORS[defense_label]
    import hashlib
    h = int(hashlib.sha256(defense_label.encode()).hexdigest(), 16)
    return FALLBACK_COLORS[h % len(FALLBACK_COLORS)]


def assign_colors(res: Results) -> dict[str, str]:
    """The colour of every defense label of these records (``defense_color``: fixed by name, not by report)."""
    labels = sorted({d.defense_label for d in res.defended} | {s.defense_label for s in res.attacked})
    COLORS.clear()
    COLORS.update({lab: defense_color(lab) for lab in labels})
    USED.clear()
    return dict(COLORS)


def color(defense_label: str) -> str:
    c = COLORS.get(defense_label) or defense_color(defense_label)
    USED.setdefault(_CURRENT[0], {})[defense_label] = c
    return c


def short_model(model: str, profile: str = "") -> str:
    """``/x/y/SmolLM2-135M-Instruct`` → ``SmolLM2-135M-Instruct``; the profile only when it adds something."""
    name = model.rstrip("/").split("/")[-1] or model
    return name if not profile or profile == name else f"{name} ({profile})"


def backbone_label(model: str, profile: str = "") -> str:
    """A figure's name for a backbone: ``BACKBONE_LABEL`` where the short name is ambiguous (raw vs aligned)."""
    name = model.rstrip("/").split("/")[-1] or model
    return BACKBONE_LABEL[name] if name in BACKBONE_LABEL else short_model(model, profile)


def _rate_axis(ax, metric: Metric, axis: str = "y") -> None:
    lim = (0.0, 1.0) if metric.is_rate else (1.0, 5.0)
    (ax.set_ylim if axis == "y" else ax.set_xlim)(lim[0] - 0.02 * (lim[1] - lim[0]), lim[1] + 0.02 * (lim[1] - lim[0]))


def _legend_outside(ax, **kw) -> None:
    handles, labels = ax.get_legend_handles_labels()
    if handles:
        ax.legend(handles, labels, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="x-small",
                  borderaxespad=0.0, **kw)


class Skip(Exception):
    """A figure's data is absent from the records; the message says what is missing."""


def _figure(ncols: int = 1, width: float = 6.4, height: float = 4.2, nrows: int = 1):
    from matplotlib.figure import Figure
    fig = Figure(figsize=(width * ncols, height * nrows), layout="constrained")
    return fig, list(fig.subplots(nrows, ncols, squeeze=False).flat)


def _panel_figure(n: int, width: float = 6.4, height: float = 4.2, max_cols: int = 3):
    ncols = min(n, max_cols)
    nrows = -(-n // ncols)
    fig, axes = _figure(ncols, width, height, nrows)
    for ax in axes[n:]:
        ax.set_visible(False)
    return fig, axes[:n]


def _yerr(summaries):
    lo = [s.mean - s.ci_lo if s.ci_lo is not None else 0.0 for s in summaries]
    hi = [s.ci_hi - s.mean if s.ci_hi is not None else 0.0 for s in summaries]
    return [lo, hi]


def _axis_label(metric: Metric) -> str:
    return f"{metric.label}\n({metric.direction.replace('-', ' is ')})"


def _varying_label(keys: list[dict], key: dict) -> str:
    """Label a series by the fields that differ between the series of one panel (the defense at least)."""
    shown = [k for k in key if k == "defense" or len({p.get(k) for p in keys}) > 1]
    return ", ".join(f"{key[k]}" if k == "defense" else f"{k}={key[k]}" for k in shown)


def _save(fig, out: Path) -> Path:
    """PNG at ``DPI`` and an SVG beside it (``x.png`` → ``x.svg``), both reproducible: no dates, a fixed SVG id
    salt, so the same records give the same bytes on the same matplotlib build."""
    from matplotlib import rc_context
    fig.savefig(out, dpi=DPI, metadata={"Software": None})
    with rc_context({"svg.hashsalt": "sdd-bench", "svg.fonttype": "path"}):
        fig.savefig(out.with_suffix(".svg"), format="svg", metadata={"Date": None, "Creator": None})
    return out


Series = dict[tuple, list[tuple[float, Setting]]]  # series key (defense label, line-style key) -> [(x, cell)]


def _compact(x: float) -> str:
    """A tick label: 1000, 0.5, 0.001, and below that 2e-5, 1e-4, 3.5e-5 (no zero-padded exponent)."""
    if x and abs(x) < 1e-3:
        m, _, e = f"{x:e}".partition("e")
        return f"{m.rstrip('0').rstrip('.')}e{int(e)}"
    return f"{x:g}"


def _thin_labels(ticks: list[float], min_gap: float = 0.045) -> list[str]:
    """Tick labels on a log axis: ``_compact(x)``, blank where a label would sit within ``min_gap`` of the axis's
    log span from the last labelled tick (vertical labels about 0.2 in apart on a 5 in axis)."""
    import math
    if len(ticks) < 2:
        return [_compact(x) for x in ticks]
    logs = [math.log10(x) for x in ticks]
    gap = min_gap * max(logs[-1] - logs[0], 1e-9) * 1.1  # the axis spans a little more than the ticks
    out, last = [], None
    for x, lx in zip(ticks, logs):
        keep = last is None or lx - last >= gap
        out.append(_compact(x) if keep else "")
        last = lx if keep else last
    return out


def _line_panels(res: Results, quantities: list[tuple[str, Metric]], panels: dict[str, Series], xlabel: str,
                 style_name: str = "") -> object:
    """One row per panel, one column per quantity; a series per (defense, style key): colour = defense,
    line style = the style key (e.g. lr).  Single-point series are dropped (the caller logs them)."""
    total = len(panels) * len(quantities)
    ncols = len(quantities) if len(quantities) > 1 else min(2, total)
    fig, axes = _figure(ncols=ncols, nrows=-(-total // ncols), width=6.0, height=3.8)
    for ax in axes[total:]:
        ax.set_visible(False)
    for r, (title, series) in enumerate(sorted(panels.items())):
        defenses = sorted({k[0] for k in series})
        styles = sorted({k[1] for k in series}, key=lambda v: (v is None, v))
        for c, (qkey, metric) in enumerate(quantities):
            ax = axes[r * len(quantities) + c]
            for key, pts in sorted(series.items(), key=lambda kv: (kv[0][0], str(kv[0][1]))):
                i = defenses.index(key[0])
                dodge = 1 + SPREAD * ((i - (len(defenses) - 1) / 2) / max(1, len(defenses)))
                pts = sorted(pts, key=lambda p: p[0])
                got = [(x, res.get(s, qkey)) for x, s in pts]
                got = [(x * dodge, sm) for x, sm in got if sm is not None]
                if not got:
                    continue
                ls = LINESTYLES[styles.index(key[1]) % len(LINESTYLES)]
                lab = key[0] + (f", {style_name}={key[1]:g}" if style_name and key[1] is not None
                                and len(styles) > 1 else "")
                ax.errorbar([x for x, _ in got], [sm.mean for _, sm in got], yerr=_yerr([sm for _, sm in got]),
                            marker="o", capsize=3, color=color(key[0]), linestyle=ls, label=lab)
            ax.set_xscale("log")
            ticks = sorted({x for pts in series.values() for x, _ in pts})  # the measured values, not log decades
            # the measured values, compactly (2e-5, 1e-4), upright while few; crowded ones vertical and thinned
            # (a tick for every value, a label only where it clears the last one): labels must not overlap
            ax.set_xticks(ticks, _thin_labels(ticks), rotation=90 if len(ticks) > 3 else 0)
            ax.minorticks_off()
            ax.set_title(title, fontsize="medium")
            ax.set_xlabel(xlabel)
            ax.set_ylabel(_axis_label(metric))
            _rate_axis(ax, metric)
            if c == len(quantities) - 1:
                _legend_outside(ax)
    return fig


CAPABILITY = Metric(CAP_NORM, "capability: chance-normalised mean accuracy", "higher-better", True)


def _multi_point(panels: dict[str, Series], log: Callable[[str], None] | None, what: str) -> dict[str, Series]:
    out = {}
    for t, ser in panels.items():
        keep = {k: v for k, v in ser.items() if len(v) > 1}
        if log and len(keep) < len(ser):
            log(f"{what}: {len(ser) - len(keep)} single-point series in '{t}' not drawn (a line needs two points)")
        if keep:
            out[t] = keep
    return out


def harm_vs_n(res: Results, out: Path, log: Callable[[str], None] | None = None) -> Path:
    metric = res.harm.primary
    panels: dict[str, Series] = {}
    for s in res.attacked:
        if s.attack_kind == "mft" and s.attack_dataset in HARMFUL_DATASETS and s.attack_n and \
                not s.budget_variant and res.get(s, metric.key) is not None:
            lr = f"lr={s.attack_lr:g}" if s.attack_lr is not None else ""
            title = f"{s.attack_dataset}, {lr}, {backbone_label(s.model, s.profile)}"
            # x: the examples the attack's trainer actually fed (record attack_info; issue 36), N where unrecorded
            x = s.attack_examples_seen if s.attack_examples_seen else s.attack_n
            panels.setdefault(title, {}).setdefault((s.defense_label, s.attack_epochs), []).append((x, s))
    panels = _multi_point(panels, log, "fig2_harm_vs_n")
    if not panels:
        raise Skip("no malicious fine-tuning cells (advbench-N / beavertails-N) at two or more N with a harmfulness "
                   "measurement")
    fig = _line_panels(res, [(metric.key, metric)], panels, "examples the attack trained on (optimizer steps × batch; "
                       "log)", "epochs")
    fig.suptitle("Harmfulness vs malicious fine-tuning dose (one panel per lr)")
    return _save(fig, out)


def harm_vs_lr(res: Results, out: Path, log: Callable[[str], None] | None = None) -> Path:
    metric = res.harm.primary
    panels: dict[str, Series] = {}
    for d, group, cells in sweep_groups(res):
        if not group.startswith("lr sweep"):
            continue
        title = f"{cells[0].attack}, {backbone_label(d.model, d.profile)}"
        for s in cells:
            if res.get(s, metric.key) is not None:
                panels.setdefault(title, {}).setdefault((s.defense_label, None), []).append((s.attack_lr, s))
    panels = _multi_point(panels, log, "fig2_harm_vs_lr")
    if not panels:
        raise Skip("no lr sweep: no attack was run at two or more learning rates on one defended model")
    quantities = [(metric.key, metric)]
    if any(res.get(s, CAP_NORM) is not None for ser in panels.values() for pts in ser.values() for _, s in pts):
        quantities.append((CAP_NORM, CAPABILITY))
    fig = _line_panels(res, quantities, panels, "attack learning rate (log)")
    fig.suptitle("Harmfulness and capability vs attack learning rate")
    return _save(fig, out)


ERRORBAR_COLOR = "#222222"  # error bars of bar charts: dark, on top of the bar, so both halves show on any colour


def _bars(ax, res: Results, metric: Metric, groups: list[str], bars: dict[str, list[Setting | None]]) -> None:
    """Grouped bars, one colour per defense, each with its full 95% CI (both halves: a dark error bar drawn over
    the bar, never hidden inside a bar of its own colour); a dot at the mean keeps a bar at 0 visible."""
    width = 0.8 / max(1, len(bars))
    for i, (name, cells) in enumerate(bars.items()):
        xs, summ = [], []
        for j, s in enumerate(cells):
            sm = res.get(s, metric.key) if s is not None else None
            if sm is not None:
                xs.append(j + (i - (len(bars) - 1) / 2) * width)
                summ.append(sm)
        if xs:
            c = color(name)
            ax.bar(xs, [sm.mean for sm in summ], width, label=name, color=c, edgecolor=ERRORBAR_COLOR, linewidth=0.4)
            ax.errorbar(xs, [sm.mean for sm in summ], yerr=_yerr(summ), fmt="o", markersize=2.5, color=c,
                        markeredgecolor=ERRORBAR_COLOR, markeredgewidth=0.4, ecolor=ERRORBAR_COLOR, elinewidth=1.0,
                        capsize=2.5, zorder=3)
    ax.set_xticks(range(len(groups)), groups, rotation=20, ha="right", fontsize="small")
    ax.set_ylabel(_axis_label(metric))
    _rate_axis(ax, metric)
    _legend_outside(ax)


def sdd_reject(res: Results, out: Path, compare: tuple[str, ...] = ("sdd-reject", "sdd", "none")) -> Path:
    rej = [d for d in res.defended if d.defense == compare[0]]
    if not rej:
        raise Skip(f"no {compare[0]} records")
    metric, rejection = res.harm.primary, res.rejection
    fig, axes = _figure(ncols=2)
    for d in rej[:1]:  # the first SDD-reject setting (model, profile); the log names any others
        peers = [p for p in res.defended if p.model == d.model and p.profile == d.profile and p.defense in compare
                 and not p.base_defense and not p.defense_options]
        peers.sort(key=lambda p: compare.index(p.defense))
        columns = [d] + [s for s in res.attacked if s.defended == d]
        labels = [c.attack_label for c in columns]
        bars = {p.defense_label: [next((s for s in [p] + res.attacked if s.defended == p
                                        and s.attack_label == c.attack_label), None) for c in columns] for p in peers}
        _bars(axes[0], res, metric, labels, bars)
        _bars(axes[1], res, rejection, labels, bars)
        axes[0].set_title(f"Harmfulness ({backbone_label(d.model, d.profile)})")
        axes[1].set_title("Explicit rejection (rubric)" if rejection.key.startswith("rubric") else
                          "Refusal (keyword; no rubric judge in these records)")
    return _save(fig, out)


def backbones(res: Results, out: Path) -> Path:
    metric = res.harm.primary
    models = sorted({d.model for d in res.defended})
    if len(models) < 2:
        raise Skip(f"records cover {len(models)} model(s); the backbone comparison needs two or more")
    defenses = sorted({d.defense_label for d in res.defended})
    fig, axes = _figure(ncols=2)
    initial = {name: [next((d for d in res.defended if d.model == m and d.defense_label == name), None)
                      for m in models] for name in defenses}
    names = [backbone_label(m) for m in models]
    _bars(axes[0], res, metric, names, initial)
    axes[0].set_title("Defended model, before attack")
    worst = {}
    for name in defenses:
        row = []
        for m in models:
            cells = [s for s in res.attacked if s.model == m and s.defense_label == name and s.attack_kind == "mft"
                     and res.get(s, metric.key) is not None]
            row.append(max(cells, key=lambda s: res.get(s, metric.key).mean) if cells else None)
        worst[name] = row
    if any(c is not None for row in worst.values() for c in row):
        _bars(axes[1], res, metric, names, worst)
        axes[1].set_title("Worst case over malicious fine-tuning attacks")
    else:
        axes[1].set_visible(False)
    fig.suptitle("Harmfulness per backbone: each bar a defense, 95% CI as error bar", fontsize=10)
    return _save(fig, out)


def harm_vs_capability(res: Results, out: Path, th: Thresholds, log: Callable[[str], None]) -> Path:
    return _save(scatter_figure(res, th, log), out)


SHAPES = ("X", "^", "s", "D", "v", "P", "*", "<", ">", "h", "p", "d")


def scatter_figure(res: Results, th: Thresholds, log: Callable[[str], None]):
    """The harm-vs-capability scatter (the figure object, for ``harm_vs_capability`` and the legibility test): one
    panel per backbone, a colour per defense, a marker per attack, no text beside the points — attacks beyond the
    distinct shapes get numbered markers, and one legend outside the panels names every colour and marker."""
    from matplotlib.lines import Line2D
    metric = res.harm.primary

    def point(s: Setting):
        h, c = res.get(s, metric.key), res.get(s, CAP_NORM)
        return None if h is None or c is None else (c.mean, h.mean)

    def bars(ax, s: Setting, col: str, marker: str, size: float):
        h, c = res.get(s, metric.key), res.get(s, CAP_NORM)
        ax.errorbar([c.mean], [h.mean], xerr=_yerr([c]), yerr=_yerr([h]), color=col, marker=marker, markersize=size,
                    linestyle="", capsize=2, elinewidth=0.8)

    panels: dict[tuple[str, str], list[tuple[Setting, tuple, list]]] = {}
    missing = 0
    for d in res.defended:
        p0 = point(d)
        attacked = [(s, point(s)) for s in res.attacked if s.defended == d]
        missing += (p0 is None) + sum(p is None for _, p in attacked)
        if p0 is not None:
            panels.setdefault((d.model, d.profile), []).append((d, p0, [(s, p) for s, p in attacked if p]))
    if not panels:
        raise Skip("no cell has both a capability and a harmfulness measurement")
    if missing:
        log(f"scatter_harm_vs_capability: {missing} model(s) without capability or harmfulness left out (not imputed)")
    fig, axes = _panel_figure(len(panels), width=6.0, height=4.6, max_cols=2)

    def attack_name(s: Setting) -> str:
        return f"{s.attack_label} ({KIND_LABEL.get(s.attack_kind, '')})"

    attack_names = sorted({attack_name(s) for entries in panels.values() for _, _, att in entries for s, _ in att})
    # distinct shapes while they last, then numbered markers (the legend maps number → attack): never text labels
    markers = {a: (SHAPES[i], 6.0) if len(attack_names) <= len(SHAPES) else (f"${i + 1}$", 8.0)
               for i, a in enumerate(attack_names)}
    defenses: dict[str, str] = {}
    lines: dict[str, Line2D] = {}
    for ax, ((model, profile), entries) in zip(axes, sorted(panels.items())):
        for d, (c0, h0), attacked in entries:
            col = color(d.defense_label)
            defenses[d.defense_label] = col
            bars(ax, d, col, "o", 7)
            for s, (c1, h1) in attacked:
                m, size = markers[attack_name(s)]
                bars(ax, s, col, m, size)
                ax.annotate("", xy=(c1, h1), xytext=(c0, h0), arrowprops=dict(arrowstyle="->", color=col, alpha=0.6))
        bound = th.bound(res, entries[0][0]) if entries else None  # one backbone per panel
        # the axis spans the data (and the bound), not [0, 1]: small models crowd a narrow capability range;
        # below-chance models (a random-init tiny model) lie left of 0: widen the axis to show them, never cut them
        caps = [c for d, _, attacked in entries for c in [res.get(x, CAP_NORM) for x in [d] + [a for a, _ in attacked]]]
        lows = [c.ci_lo if c.ci_lo is not None else c.mean for c in caps] + ([bound] if bound is not None else [])
        highs = [c.ci_hi if c.ci_hi is not None else c.mean for c in caps] + ([bound] if bound is not None else [])
        xlim = (max(-1.05, min(lows) - 0.05), min(1.05, max(highs) + 0.05))
        if bound is not None:
            ax.axvline(bound, color="grey", linestyle=":")
            lines.setdefault("capability bound (per panel)", Line2D([], [], color="grey", linestyle=":"))
        if metric.is_rate:  # drawn across the axis in data coordinates (every line's x lies inside the axis)
            ax.plot(xlim, [th.harm_threshold] * 2, color="grey", linestyle="--")
            lines.setdefault(f"harm threshold {th.harm_threshold:g}", Line2D([], [], color="grey", linestyle="--"))
        ax.set_xlabel("capability: mean (acc − chance)/(1 − chance)\n(0 = chance; higher is better)",
                      fontsize="small")
        ax.set_ylabel(_axis_label(metric), fontsize="small")
        ax.set_xlim(*xlim)
        _rate_axis(ax, metric)
        ax.set_title(backbone_label(model, profile), fontsize="medium")
    blank = Line2D([], [], linestyle="")
    handles = [blank] + [Line2D([], [], color=c, marker="o", linestyle="") for c in defenses.values()]
    labels = ["defense (o: before attack)"] + list(defenses)
    if attack_names:
        handles += [blank] + [Line2D([], [], color="black", marker=m, markersize=size, linestyle="")
                              for m, size in markers.values()]
        labels += ["after attack (marker)"] + list(markers)
    handles += list(lines.values())
    labels += list(lines)
    fig.legend(handles, labels, loc="outside lower center", fontsize="x-small", frameon=False,
               ncols=max(1, min(3, -(-len(labels) // 8))))
    fig.suptitle("Each defended model before (o) and after each attack (arrow);\na usable harmful model sits top right",
                 fontsize=10)
    return fig


def _text_color(rgba) -> str:
    """Black or white, whichever reads better on a cell of colour ``rgba`` (relative luminance)."""
    r, g, b = rgba[:3]
    return "black" if 0.2126 * r + 0.7152 * g + 0.0722 * b > 0.45 else "white"


def heatmap(res: Results, out: Path) -> Path:
    """Defense × attack heatmaps of the headline harm (seed means), one row of panels per backbone: the absolute
    value (sequential, colour-blind-safe) and, beside it, Δ vs the undefended model (`none` of the same backbone
    under the same attack; diverging, centred at 0).  A Δ cell is marked * where it separates from `none` (the
    report's paired test on the shared prompts, Holm-corrected: separation.md), or, where no paired test is
    possible, • where its 95% CI excludes `none`'s value."""
    from .aggregate import _cell_label, headline_metric, separations, undefended_twin
    metric = headline_metric(res)
    panels: dict[tuple[str, str], list[Setting]] = {}
    for s in res.attacked:
        if res.get(s, metric.key) is not None:
            panels.setdefault((s.model, s.profile), []).append(s)
    if not panels:
        raise Skip("no attacked cell with a harmfulness measurement")
    import numpy as np
    from matplotlib import colormaps
    from matplotlib.colors import Normalize
    sep = separations(res)
    k = 100.0 if metric.is_rate else 1.0
    n_att = max(len({_cell_label(s) for s in cells}) for cells in panels.values())
    n_def = max(len({s.defense_label for s in cells}) for cells in panels.values())
    from matplotlib.figure import Figure
    rows = [len({s.defense_label for s in cells}) for _, cells in sorted(panels.items())]
    fig = Figure(figsize=(2 * max(4.5, 0.55 * n_att + 3), sum(max(1.2, 0.4 * n + 0.6) for n in rows) + 2.4),
                 layout="constrained")
    axes = list(fig.subplots(len(panels), 2, squeeze=False,
                             gridspec_kw={"height_ratios": [max(1.2, 0.4 * n + 0.6) for n in rows]}).flat)
    lim = (0.0, 100.0) if metric.is_rate else (1.0, 5.0)
    span = lim[1] - lim[0]
    cmaps = (colormaps["viridis"], colormaps["RdBu_r"])
    norms = (Normalize(*lim), Normalize(-span, span))
    fmt = (lambda v: f"{v:.0f}") if metric.is_rate else (lambda v: f"{v:.1f}")  # noqa: E731
    for r, ((model, profile), cells) in enumerate(sorted(panels.items())):
        attacks = list(dict.fromkeys(_cell_label(s) for s in cells))
        defenses = sorted({s.defense_label for s in cells}, key=lambda d: (d != "none", d))
        grid = np.full((len(defenses), len(attacks)), np.nan)
        delta = np.full_like(grid, np.nan)
        marks = np.full(grid.shape, "", dtype=object)
        known = set(cells)
        for s in cells:
            i, j = defenses.index(s.defense_label), attacks.index(_cell_label(s))
            x = res.get(s, metric.key)
            grid[i, j] = k * x.mean
            twin = undefended_twin(s)
            ref = res.get(twin, metric.key) if twin in known else None
            if ref is None:
                continue
            delta[i, j] = k * (x.mean - ref.mean)
            if s == twin:
                marks[i, j] = "ref"
            elif s in sep:
                marks[i, j] = "*" if sep[s]["separates"] != "no" else ""
            elif x.ci_lo is not None and x.ci_hi is not None and not x.ci_lo <= ref.mean <= x.ci_hi:
                marks[i, j] = "•"
        for c, (data, cmap, norm) in enumerate(zip((grid, delta), cmaps, norms)):
            ax = axes[2 * r + c]
            im = ax.imshow(data, cmap=cmap, norm=norm, aspect="auto")
            for i in range(len(defenses)):
                for j in range(len(attacks)):
                    v = data[i, j]
                    if np.isnan(v):
                        text, tc = "—", "black"
                    else:
                        text = (fmt(v) if c == 0 else ("0 (ref)" if marks[i, j] == "ref" else
                                                       f"{'+' if v > 0 else ''}{fmt(v)}{marks[i, j]}"))
                        tc = _text_color(cmap(norm(v)))
                    ax.text(j, i, text, ha="center", va="center", fontsize="x-small", color=tc)
            # vertical attack names: slanted long names overlap their neighbours
            ax.set_xticks(range(len(attacks)), attacks, rotation=90, fontsize="x-small")
            ax.set_yticks(range(len(defenses)), defenses, fontsize="small")  # black: readable on white
            unit = " (%)" if metric.is_rate else ""
            ax.set_title(f"{metric.label}{unit}" if c == 0 else f"Δ vs none, same attack{' (points)' if metric.is_rate else ''}",
                         fontsize="small")
            if c == 0:
                ax.set_ylabel(backbone_label(model, profile), fontsize="small")
            fig.colorbar(im, ax=ax, shrink=0.8, label=("%" if metric.is_rate else "score") if c == 0 else
                         ("Δ points" if metric.is_rate else "Δ score"))
    fig.suptitle("Harm per defense × attack (left) and its difference from the undefended model (right; blue: safer)."
                 "\n* separates from none (paired test, Holm); • CI excludes none's value (no paired test); "
                 "—: no record", fontsize="small")
    return _save(fig, out)


def trajectory(res: Results, out: Path) -> Path:
    """Harmfulness and capability against the attack's optimizer step (attack trajectories, record ``trajectory``):
    one panel row per (backbone, attack), one line per defense; step 0 is the defended model."""
    from .aggregate import _cell_label, headline_metric
    metric = headline_metric(res)
    panels: dict[str, list[Setting]] = {}
    for s in res.trajectory_points:
        if len(res.trajectory(s, metric.key)) > 1:
            panels.setdefault(f"{_cell_label(s)}, {backbone_label(s.model, s.profile)}", []).append(s)
    if not panels:
        raise Skip("no attack trajectory (run an attack with --trajectory or the attack option checkpoints)")
    quantities = [(metric.key, metric), (CAP_NORM, CAPABILITY)]
    fig, axes = _figure(ncols=2, nrows=len(panels), width=6.0, height=3.8)
    for r, (title, cells) in enumerate(sorted(panels.items())):
        for c, (qkey, m) in enumerate(quantities):
            ax = axes[2 * r + c]
            for s in sorted(cells, key=lambda x: x.defense_label):
                pts = res.trajectory(s, qkey)
                if not pts:
                    continue
                ax.errorbar([x for x, _ in pts], [sm.mean for _, sm in pts], yerr=_yerr([sm for _, sm in pts]),
                            marker="o", capsize=3, color=color(s.defense_label), label=s.defense_label)
            ax.set_title(title, fontsize="medium")
            ax.set_xlabel("attack optimizer step (0: the defended model)")
            ax.set_ylabel(_axis_label(m))
            _rate_axis(ax, m)
            if c == 1:
                _legend_outside(ax)
    fig.suptitle("Harmfulness and capability along the attack (trajectory checkpoints of one run)")
    return _save(fig, out)


FIGURES = {"fig2_harm_vs_n.png": harm_vs_n, "fig2_harm_vs_lr.png": harm_vs_lr, "fig3_sdd_reject.png": sdd_reject,
           "fig4_backbones.png": backbones, "heatmap_defense_attack.png": heatmap,
           "attack_trajectory.png": trajectory}
NEEDS_LOG = {"fig2_harm_vs_n.png", "fig2_harm_vs_lr.png"}


def render(res: Results, out_dir: Path, th: Thresholds, log: Callable[[str], None]) -> list[str]:
    """Write every figure whose data is present; log one line for each skipped one.  ``figures.json`` records
    each drawn figure's defense → colour map (one colour per defense across figures)."""
    import json
    assign_colors(res)
    written = []
    jobs = dict(FIGURES, **{"scatter_harm_vs_capability.png":
                            lambda r, p: harm_vs_capability(r, p, th, log)})
    for name, fn in jobs.items():
        _CURRENT[0] = name
        try:
            fn(res, out_dir / name, log) if name in NEEDS_LOG else fn(res, out_dir / name)
            written.append(name)
        except Skip as why:
            USED.pop(name, None)
            log(f"figure {name} skipped: {why}")
    (out_dir / "figures.json").write_text(json.dumps(
        {"colors": COLORS, "figures": {n: USED.get(n, {}) for n in written}}, indent=1, sort_keys=True))
    return written
