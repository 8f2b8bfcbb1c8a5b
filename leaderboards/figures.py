"""The report's figures (PNG, matplotlib's Agg renderer; no display needed).

Each figure function returns the file it wrote, or raises :class:`Skip` with the reason its data is
absent; the report logs the reason instead of drawing an empty plot.  Every point is a seed mean
with its 95% CI as an error bar (see ``aggregate``).
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

from .aggregate import KIND_LABEL, Metric, Results, Setting, Thresholds, sweep_groups

HARMFUL_DATASETS = ("advbench", "beavertails-attack")  # attack data of malicious fine-tuning (attacks/finetune.py)
DPI = 120
DODGE = 0.03  # relative horizontal offset between series on log-x line plots, so error bars do not overlap


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
    fig.savefig(out, dpi=DPI)
    return out


Series = dict[tuple, list[tuple[float, Setting]]]  # series key -> [(x, cell)]


def _line_panels(res: Results, metric: Metric, panels: dict[str, tuple[tuple[str, ...], Series]], xlabel: str) -> object:
    """One panel per entry (title -> (names of the series key's fields, series)); log-x lines with CI bars."""
    fig, axes = _panel_figure(len(panels))
    for ax, (title, (names, series)) in zip(axes, sorted(panels.items())):
        keys = [dict(zip(names, k)) for k in series]
        for i, (key, pts) in enumerate(zip(keys, series.values())):
            pts = sorted(pts, key=lambda p: p[0])
            summ = [res.get(s, metric.key) for _, s in pts]
            dodge = 1 + DODGE * (i - (len(series) - 1) / 2)  # series side by side at one x (log axis)
            xs = [x * dodge for (x, _), sm in zip(pts, summ) if sm is not None]
            summ = [sm for sm in summ if sm is not None]
            ax.errorbar(xs, [sm.mean for sm in summ], yerr=_yerr(summ), marker="o", capsize=3,
                        label=_varying_label(keys, key))
        ax.set_xscale("log")
        ticks = sorted({x for pts in series.values() for x, _ in pts})  # the measured values, not log decades
        ax.set_xticks(ticks, [f"{x:g}" for x in ticks])
        ax.minorticks_off()
        ax.set_title(title, fontsize="medium")
        ax.set_xlabel(xlabel)
        ax.set_ylabel(_axis_label(metric))
        ax.legend(fontsize="x-small")
    return fig


def harm_vs_n(res: Results, out: Path) -> Path:
    metric = res.harm.primary
    panels: dict[str, tuple[tuple[str, ...], Series]] = {}
    for s in res.attacked:
        if s.attack_kind == "mft" and s.attack_dataset in HARMFUL_DATASETS and s.attack_n and \
                res.get(s, metric.key) is not None:
            title = f"{s.attack_dataset} attacks, {s.model} ({s.profile})"
            series = panels.setdefault(title, (("defense", "lr", "epochs"), {}))[1]
            series.setdefault((s.defense_label, s.attack_lr, s.attack_epochs), []).append((s.attack_n, s))
    if not panels:
        raise Skip("no malicious fine-tuning cells (advbench-N / beavertails-N) with a harmfulness measurement")
    fig = _line_panels(res, metric, panels, "malicious fine-tuning samples N (log; series offset slightly)")
    fig.suptitle("Harmfulness after malicious fine-tuning vs number of samples")
    return _save(fig, out)


def harm_vs_lr(res: Results, out: Path) -> Path:
    metric = res.harm.primary
    panels: dict[str, tuple[tuple[str, ...], Series]] = {}
    for d, group, cells in sweep_groups(res):
        if not group.startswith("lr sweep"):
            continue
        title = f"{d.model} ({d.profile})"
        series = panels.setdefault(title, (("defense", "attack"), {}))[1]
        for s in cells:
            if res.get(s, metric.key) is not None:
                series.setdefault((s.defense_label, s.attack), []).append((s.attack_lr, s))
    panels = {t: (names, {k: v for k, v in ser.items() if len(v) > 1}) for t, (names, ser) in panels.items()}
    panels = {t: p for t, p in panels.items() if p[1]}
    if not panels:
        raise Skip("no lr sweep: no attack was run at two or more learning rates on one defended model")
    fig = _line_panels(res, metric, panels, "attack learning rate (log; series offset slightly)")
    fig.suptitle("Harmfulness vs attack learning rate")
    return _save(fig, out)


def _bars(ax, res: Results, metric: Metric, groups: list[str], bars: dict[str, list[Setting | None]]) -> None:
    width = 0.8 / max(1, len(bars))
    for i, (name, cells) in enumerate(bars.items()):
        xs, summ = [], []
        for j, s in enumerate(cells):
            sm = res.get(s, metric.key) if s is not None else None
            if sm is not None:
                xs.append(j + (i - (len(bars) - 1) / 2) * width)
                summ.append(sm)
        if xs:
            ax.bar(xs, [sm.mean for sm in summ], width, yerr=_yerr(summ), capsize=2, label=name)
    ax.set_xticks(range(len(groups)), groups, rotation=20, ha="right", fontsize="small")
    ax.set_ylabel(_axis_label(metric))
    ax.legend(fontsize="small")


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
        axes[0].set_title(f"Harmfulness ({d.model}, {d.profile})")
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
    _bars(axes[0], res, metric, models, initial)
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
        _bars(axes[1], res, metric, models, worst)
        axes[1].set_title("Worst case over malicious fine-tuning attacks")
    else:
        axes[1].set_visible(False)
    return _save(fig, out)


def harm_vs_capability(res: Results, out: Path, th: Thresholds, log: Callable[[str], None]) -> Path:
    metric = res.harm.primary

    def point(s: Setting):
        h, c = res.get(s, metric.key), res.get(s, "capability_mean")
        return None if h is None or c is None else (c.mean, h.mean)

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
    fig, axes = _panel_figure(len(panels), width=7.0, height=5.0, max_cols=2)
    colors: dict[str, str] = {}
    # one marker shape per attack (legend), one colour per defense: text labels beside crowded points overlap
    def attack_name(s: Setting) -> str:
        return f"{s.attack_label} ({KIND_LABEL.get(s.attack_kind, '')})"

    attack_names = sorted({attack_name(s) for entries in panels.values() for _, _, att in entries for s, _ in att})
    shapes = ("x", "^", "s", "D", "v", "P", "*", "<", ">", "h")
    markers = {a: shapes[i] for i, a in enumerate(attack_names)} if len(attack_names) <= len(shapes) else None
    for ax, ((model, profile), entries) in zip(axes, sorted(panels.items())):
        for d, (c0, h0), attacked in entries:
            color = colors.setdefault(d.defense_label, f"C{len(colors) % 10}")
            ax.scatter([c0], [h0], color=color, marker="o", s=50, label=d.defense_label)
            for s, (c1, h1) in attacked:
                name = attack_name(s)
                ax.scatter([c1], [h1], color=color, marker=markers[name] if markers else "x", s=40)
                ax.annotate("", xy=(c1, h1), xytext=(c0, h0), arrowprops=dict(arrowstyle="->", color=color, alpha=0.6))
                if markers is None:  # too many attacks for distinct shapes: label the points instead
                    ax.annotate(name, (c1, h1), fontsize="x-small", alpha=0.8)
        ax.axvline(th.capability_bound, color="grey", linestyle=":", label=f"capability bound {th.capability_bound:g}")
        if metric.is_rate:
            ax.axhline(th.harm_threshold, color="grey", linestyle="--", label=f"harm threshold {th.harm_threshold:g}")
        ax.set_xlabel("capability: mean accuracy over lm-eval tasks (higher is better)")
        ax.set_ylabel(_axis_label(metric))
        ax.set_title(f"{model} ({profile})", fontsize="medium")
        first = ax.legend(fontsize="x-small", loc="upper left", title="defense (o: before attack)", title_fontsize="x-small")
        if markers:
            from matplotlib.lines import Line2D
            handles = [Line2D([], [], color="black", marker=m, linestyle="", label=a) for a, m in markers.items()]
            ax.add_artist(first)
            ax.legend(handles=handles, fontsize="x-small", loc="lower left", title="after attack", title_fontsize="x-small")
    fig.suptitle("Each defended model before (o) and after each attack (arrow);\na usable harmful model sits top right", fontsize=10)
    return _save(fig, out)


FIGURES = {"fig2_harm_vs_n.png": harm_vs_n, "fig2_harm_vs_lr.png": harm_vs_lr, "fig3_sdd_reject.png": sdd_reject,
           "fig4_backbones.png": backbones}


def render(res: Results, out_dir: Path, th: Thresholds, log: Callable[[str], None]) -> list[str]:
    """Write every figure whose data is present; log one line for each skipped one."""
    written = []
    jobs = dict(FIGURES, **{"scatter_harm_vs_capability.png":
                            lambda r, p: harm_vs_capability(r, p, th, log)})
    for name, fn in jobs.items():
        try:
            fn(res, out_dir / name)
            written.append(name)
        except Skip as why:
            log(f"figure {name} skipped: {why}")
    return written
