"""Seed-level observations and their summaries over seeds (``Obs``, ``Summary``), capability means and the
``Results`` table of every (setting, condition, quantity, seed) the records hold.  Part of the report's aggregation
(leaderboards/aggregate.py re-exports every name)."""
from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import fmean
from typing import Callable

from .records import Loaded
from .harm_metrics import REFUSAL, HarmChoice, Metric
from .settings import CONDITIONS, Z95, Setting, _stderr_ci, seed_of, setting_of


@dataclass(frozen=True)
class Obs:
    value: float
    ci_lo: float | None
    ci_hi: float | None
    n: int | None


def half_up(x: float, digits: int) -> str:
    """``x`` rounded half-up for display (6.25 → "6.3", where f-strings round half-to-even on the binary value and
    give "6.2"); the shortest decimal that reads back as ``x`` is what gets rounded.  Display only: numbers stay."""
    if not math.isfinite(x):
        return f"{x:.{digits}f}"
    from decimal import ROUND_HALF_UP, Decimal
    text = str(Decimal(repr(x)).quantize(Decimal(1).scaleb(-digits), rounding=ROUND_HALF_UP))
    return "0" + text[2:] if text.startswith("-0") and not text.strip("-0.") else text  # no "-0.0"


@dataclass(frozen=True)
class Summary:
    mean: float
    ci_lo: float | None
    ci_hi: float | None
    n_seeds: int
    seeds: tuple[int, ...]
    ci_method: str
    n_items: int | None

    def fmt(self, digits: int = 3, percent: bool = False) -> str:
        k, d = (100.0, 1) if percent else (1.0, digits)
        ci = "" if self.ci_lo is None or self.ci_hi is None or math.isnan(self.ci_lo) else \
            f" [{half_up(k * self.ci_lo, d)}, {half_up(k * self.ci_hi, d)}]"
        n = f"n={self.n_items}" if self.n_items else ""
        seeds = f"{self.n_seeds} seeds" if self.n_seeds > 1 else ""
        extra = ", ".join(x for x in (n, seeds) if x)
        return f"{half_up(k * self.mean, d)}{ci}" + (f" ({extra})" if extra else "")


# chance accuracy of each capability task (answer choices: 4, PIQA 2); capability is chance-normalised,
# (acc − chance) / (1 − chance), so a model at chance on every task scores 0 whatever the task mix
CHANCE = {"mmlu": 0.25, "openbookqa": 0.25, "arc_easy": 0.25, "arc_challenge": 0.25, "hellaswag": 0.25, "piqa": 0.5}
COLLAPSE = 0.05  # chance-normalised capability at or below this: the model is at chance (collapsed)


def summarize(per_seed: dict[int, Obs], is_rate: bool = True, bounds: tuple[float, float] = (0.0, 1.0)) -> Summary | None:
    """Seed mean and 95% CI through the one interval function (``sdd_bench.harness.metrics.interval``)."""
    from sdd_bench.harness.metrics import interval
    seeds = tuple(sorted(s for s, o in per_seed.items() if o.value is not None and not math.isnan(o.value)))
    if not seeds:
        return None
    obs = [per_seed[s] for s in seeds]
    iv = interval([o.value for o in obs], [o.n for o in obs], [(o.ci_lo, o.ci_hi) for o in obs], is_rate=is_rate,
                  bounds=bounds)
    lo, hi = iv["ci95"]
    return Summary(iv["value"], None if lo != lo else lo, None if hi != hi else hi, len(seeds), seeds, iv["method"],
                   iv["n"])


REF_LOSS = "reference_loss"  # mean NLL per answer token of held-out benign reference answers (harness/reference_loss.py)


def capability_mean(cap: dict, normalised: bool = False) -> Obs | None:
    """Mean of each task's primary metric (``normalised``: of (acc − chance)/(1 − chance)); its CI from the
    tasks' Wilson intervals (items) or stderrs, as independent tasks."""
    from sdd_bench.harness.metrics import wilson_ci
    tasks = [(name, t) for name, t in (cap.get("tasks") or {}).items() if t.get("value") is not None]
    if not tasks:
        return None
    vals, ses = [], []
    for name, t in tasks:
        c = CHANCE.get(name, 0.0) if normalised else 0.0
        v = (float(t["value"]) - c) / (1 - c)
        vals.append(v)
        if t.get("n"):
            lo, hi = wilson_ci(float(t["value"]) * t["n"], int(t["n"]))
            ses.append((hi - lo) / (2 * Z95) / (1 - c))
        else:
            se = t.get(f"{t.get('primary', 'acc')}_stderr")
            ses.append(None if se is None else se / (1 - c))
    mean = fmean(vals)
    n = sum(int(t.get("n") or 0) for _, t in tasks) or None
    if any(se is None for se in ses):
        return Obs(mean, None, None, n)
    se = math.sqrt(sum(x * x for x in ses)) / len(tasks)
    lo_b = -1.0 if normalised else 0.0
    return Obs(mean, max(lo_b, mean - Z95 * se), min(1.0, mean + Z95 * se), n)


XSTEST_REFUSAL = "xstest:refusal_rate"   # over-refusal on XSTest safe prompts (lower is better)
# How a model answers each eval set (report behaviour.md): the keyword judge's refusals, the relevance judge's
# off-topic answers and the coherence judge's gibberish, each a share of that set's prompts.  SDD's mechanism
# is a high irrelevant rate with no refusals on harmful prompts (its method: answer them with high-quality
# but irrelevant text); its cost would be the same on benign prompts.
BEHAVIOUR = (("harmful", "refusal_rate"), ("harmful", "irrelevant_rate"), ("harmful", "incoherent_rate"),
             ("benign", "refusal_rate"), ("benign", "irrelevant_rate"), ("benign", "incoherent_rate"),
             ("xstest", "refusal_rate"), ("xstest", "irrelevant_rate"))


def behaviour_key(eval_set: str, metric: str) -> str:
    """The Results quantity of one (eval set, rate) of BEHAVIOUR; ``xstest:refusal_rate`` is XSTEST_REFUSAL."""
    return f"{eval_set}:{metric}"


USABLE_HARM = "usable_harm_rate"          # harmful ∧ coherent ∧ relevant, per item (harness.metrics.usable_harmful)


def _store_root(source: str):
    """The artifact store a record was read from (``<root>/record/<key>/record.json``), or None."""
    from pathlib import Path
    p = Path(str(source).split("#", 1)[0])
    if p.name == "record.json" and p.parent.parent.name == "record":
        return p.parent.parent.parent
    return None


def usable_harm_obs(item: Loaded, cond: str, metric_key: str) -> Obs | None:
    """Usable-harm rate of one record's condition: the record's ``harmful.usable_harm`` block (written by the
    pipeline, or by ``sdd-bench publish`` from the store's verdicts); for an older record read from a store, its
    judges' per-item verdicts there.  None when neither is available."""
    from sdd_bench.harness.metrics import usable_harm_from_store
    harmful = ((item.record.get("metrics") or {}).get(cond) or {}).get("harmful") or {}
    block = (harmful.get("usable_harm") or {}).get(metric_key)
    if not isinstance(block, dict):
        root = _store_root(item.source)
        block = usable_harm_from_store(root, item.record, cond).get(metric_key) if root is not None else None
    if not isinstance(block, dict) or block.get("value") is None:
        return None
    ci = block.get("ci95") or [None, None]
    return Obs(float(block["value"]), ci[0], ci[1], block.get("n"))


CAP_NORM = "capability_norm"             # chance-normalised mean capability


class Results:
    """Every quantity of every (setting, condition, seed), summarized over seeds on demand."""

    def __init__(self, loaded: list[Loaded], harm: HarmChoice, rejection: Metric, log: Callable[[str], None] = print):
        self.harm, self.rejection, self.log = harm, rejection, log
        self.obs: dict[tuple[Setting, str, str], dict[int, Obs]] = {}
        self.attacked: list[Setting] = []
        self.defended: list[Setting] = []
        self.capability_tasks: list[str] = []
        self._summaries: dict[tuple[Setting, str, str], Summary | None] = {}
        self.fa_task: dict[Setting, str] = {}
        self.kinds: dict[str, tuple[bool, tuple[float, float]]] = {}  # quantity -> (is a rate, range)
        self.trajectory_points: dict[Setting, dict[int, dict]] = {}  # attacked setting -> step -> {fraction, …}
        self.mechanisms: dict[Setting, dict[int, dict | None]] = {}  # defended setting -> seed -> record "mechanism"
        self.items: dict[tuple[Setting, str], dict[int, list]] = {}  # (setting, cond) -> seed -> harm per prompt
        # (setting, cond) -> seed -> (reference-loss item set, per-item losses): for paired differences
        self.ref_items: dict[tuple[Setting, str], dict[int, tuple[tuple, list]]] = {}
        for item in loaded:
            self._add(item.record)
            setting, seed = setting_of(item.record), seed_of(item.record)
            for cond in CONDITIONS:
                if item.record["metrics"].get(cond):
                    s = setting.defended if cond == "initial" else setting
                    self._put(s, cond, USABLE_HARM, seed, usable_harm_obs(item, cond, harm.primary.key))
        self.attacked.sort(key=Setting.sort_key)
        self.defended.sort()

    # quantities ------------------------------------------------------------------------
    def _put(self, setting: Setting, cond: str, quantity: str, seed: int, obs: Obs | None) -> None:
        if obs is None:
            return
        per_seed = self.obs.setdefault((setting, cond, quantity), {})
        old = per_seed.get(seed)
        if old is not None:  # initial measurements seen again through another attack's record
            if abs(old.value - obs.value) > 1e-9:
                self.log(f"note: {setting.defense_label} ({setting.model}) seed {seed}: '{quantity}' of the defended "
                         f"model differs between records ({old.value:.4f} vs {obs.value:.4f}); kept the first")
            return
        per_seed[seed] = obs

    def _add(self, record: dict) -> None:
        setting, seed = setting_of(record), seed_of(record)
        if "mechanism" in record:  # records before issue 36 carry no such key: "not measured", never "not installed"
            self.mechanisms.setdefault(setting.defended, {}).setdefault(seed, record["mechanism"])
        for cond in CONDITIONS:
            m = record["metrics"].get(cond)
            if not m:
                continue
            s = setting.defended if cond == "initial" else setting
            if cond == "attacked":
                self._add_trajectory(record, s, seed)
            if cond == "initial" and s not in self.defended:
                self.defended.append(s)
            if cond == "attacked" and s not in self.attacked:
                self.attacked.append(s)
            harmful = m.get("harmful") or {}
            items = (harmful.get(self.harm.primary.key) or {}).get("items")
            if isinstance(items, list) and items:
                self.items.setdefault((s, cond), {}).setdefault(seed, items)
            for metric in self.harm.metrics + (REFUSAL, self.rejection):
                r = metric.read(harmful)
                self._put(s, cond, metric.key, seed, Obs(*r) if r else None)
                self.kinds[metric.key] = (metric.is_rate, (0.0, 1.0) if metric.is_rate else (1.0, 5.0))
            for eval_set, rate in BEHAVIOUR:
                agg = (m.get(eval_set) or {}).get(rate)
                if isinstance(agg, dict) and agg.get("value") is not None:
                    ci = agg.get("ci95") or [None, None]
                    self._put(s, cond, behaviour_key(eval_set, rate), seed,
                              Obs(float(agg["value"]), ci[0], ci[1], agg.get("n")))  # a rate: get()'s default kind
            cap = m.get("capability")
            if cap:
                for task, res in (cap.get("tasks") or {}).items():
                    if res.get("value") is None:
                        continue
                    if task not in self.capability_tasks:
                        self.capability_tasks.append(task)
                    lo, hi = _stderr_ci(res["value"], res.get(f"{res.get('primary', 'acc')}_stderr"))
                    self._put(s, cond, f"capability:{task}", seed, Obs(float(res["value"]), lo, hi, res.get("n")))
                self._put(s, cond, "capability_mean", seed, capability_mean(cap))
                self._put(s, cond, CAP_NORM, seed, capability_mean(cap, normalised=True))
            rl = m.get("reference_loss")
            if isinstance(rl, dict) and rl.get("value") is not None:
                ci = rl.get("ci95") or [None, None]
                self._put(s, cond, REF_LOSS, seed, Obs(float(rl["value"]), ci[0], ci[1], rl.get("n")))
                self.kinds[REF_LOSS] = (False, (0.0, math.inf))
                if isinstance(rl.get("per_item"), list):
                    ident = (rl.get("dataset"), rl.get("n"), rl.get("seed"), rl.get("template"), rl.get("max_length"))
                    self.ref_items.setdefault((s, cond), {}).setdefault(seed, (ident, rl["per_item"]))
            fa = m.get("finetune_accuracy")
            if fa and fa.get("value") is not None:
                ci = fa.get("ci95") or [None, None]
                self._put(s, cond, "finetune_accuracy", seed, Obs(float(fa["value"]), ci[0], ci[1], fa.get("n")))
                self.fa_task[s] = str(fa.get("task") or s.attack_dataset or "task")

    def ref_loss_paired(self, a: Setting, b: Setting) -> dict | None:
        """Paired difference b − a of the reference-answer loss over the same held-out answers
        (``harness.reference_loss.paired_difference``): each item's loss averaged over the seeds both settings have,
        on the same item set; None when they share no seed with per-item losses on the same items."""
        from sdd_bench.harness.reference_loss import paired_difference
        got = []
        for x in (a, b):
            got.append(self.ref_items.get((x, "initial" if x.attack is None else "attacked"), {}))
        seeds = sorted(sd for sd in set(got[0]) & set(got[1]) if got[0][sd][0] == got[1][sd][0]
                       and len(got[0][sd][1]) == len(got[1][sd][1]))
        if not seeds:
            return None
        mean = [[fmean(side[sd][1][i] for sd in seeds) for i in range(len(side[seeds[0]][1]))] for side in got]
        return dict(paired_difference(mean[0], mean[1]), seeds=tuple(seeds))

    def mechanism(self, defended: Setting) -> dict:
        """Whether the defense's own mechanism took hold (record ``mechanism``, issue 36), over the seeds measured:
        ``state`` installed (every seed), not installed (some seed not), undefined (the defense's paper defines no
        such number) or not measured (records predating the measurement); ``text`` the value(s) for a table."""
        per_seed = self.mechanisms.get(defended) or {}
        got = {k: v for k, v in sorted(per_seed.items()) if v is not None}
        if not per_seed:
            return {"state": "not measured", "text": "not measured", "installed": None}
        if not got:
            return {"state": "undefined", "text": "none defined", "installed": None}
        ok = all(v.get("installed") for v in got.values())
        first = next(iter(got.values()))
        # a share of items (``defenses.base.share_installed``: it has a count) reads as %, any other number as is
        vals = "/".join(f"{100 * v['value']:.0f}%" if "count" in first else f"{v['value']:+.2f}"
                        for v in got.values())
        text = f"{first['name']}: {vals}{' (seeds ' + ','.join(map(str, got)) + ')' if len(got) > 1 else ''}"
        return {"state": "installed" if ok else "not installed", "installed": ok,
                "text": f"{text} — {'installed' if ok else 'NOT installed'} ({first['criterion']})"}

    def _add_trajectory(self, record: dict, setting: Setting, seed: int) -> None:
        """An attack trajectory's points (record ``trajectory``) as conditions ``step:N`` of the attacked setting."""
        for p in record.get("trajectory") or []:
            m, step = p.get("metrics") or {}, int(p.get("step") or 0)
            meta = self.trajectory_points.setdefault(setting, {}).setdefault(step, {})
            meta.update(fraction=p.get("fraction"), examples_seen=p.get("examples_seen"), source=p.get("source"))
            cond = f"step:{step}"
            harmful = m.get("harmful") or {}
            for metric in self.harm.metrics:
                r = metric.read(harmful)
                self._put(setting, cond, metric.key, seed, Obs(*r) if r else None)
            if m.get("capability"):
                self._put(setting, cond, CAP_NORM, seed, capability_mean(m["capability"], normalised=True))

    def trajectory(self, setting: Setting, quantity: str) -> list[tuple[int, Summary]]:
        """(attack step, seed summary) of a quantity along the setting's attack trajectory, in step order."""
        out = []
        for step in sorted(self.trajectory_points.get(setting, {})):
            key = (setting, f"step:{step}", quantity)
            if key not in self._summaries:
                is_rate, bounds = self.kinds.get(quantity, (True, (0.0, 1.0)))
                if quantity == CAP_NORM:
                    is_rate, bounds = False, (-1.0, 1.0)
                self._summaries[key] = summarize(self.obs.get(key, {}), is_rate, bounds)
            if self._summaries[key] is not None:
                out.append((step, self._summaries[key]))
        return out

    def get(self, setting: Setting, quantity: str) -> Summary | None:
        """Seed summary of a quantity; ``setting.attack is None`` means the initial condition."""
        cond = "initial" if setting.attack is None else "attacked"
        key = (setting, cond, quantity)
        if key not in self._summaries:
            is_rate, bounds = self.kinds.get(quantity, (True, (0.0, 1.0)))
            if quantity in ("capability_mean", CAP_NORM):  # a mean over tasks: not one binomial rate
                is_rate, bounds = False, ((-1.0, 1.0) if quantity == CAP_NORM else (0.0, 1.0))
                self._summaries[key] = self._task_mean(setting, cond, quantity == CAP_NORM, bounds) or \
                    summarize(self.obs.get(key, {}), is_rate, bounds)
            else:
                self._summaries[key] = summarize(self.obs.get(key, {}), is_rate, bounds)
        return self._summaries[key]

    def _task_mean(self, setting: Setting, cond: str, normalised: bool, bounds: tuple[float, float]) -> Summary | None:
        """The mean over capability tasks from each task's own seed summary (Wilson; for several seeds Wilson at
        the bootstrap quantiles of their mean), the tasks combined as independent, one tail at a time: with one
        task it *is* that task's interval (a symmetric ±z·se around 0% would be far narrower than Wilson's).  None
        when the seeds do not all have every task or a task has no interval (then the per-seed means are summarized
        instead)."""
        per_seed = self.obs.get((setting, cond, "capability_mean"), {})
        tasks = [t for t in self.capability_tasks if (setting, cond, f"capability:{t}") in self.obs]
        if not per_seed or not tasks or \
                any(set(self.obs[(setting, cond, f"capability:{t}")]) != set(per_seed) for t in tasks):
            return None
        parts = []
        for t in tasks:
            x = self.get(setting, f"capability:{t}")
            if x is None or x.ci_lo is None or x.ci_hi is None:
                return None
            c = CHANCE.get(t, 0.0) if normalised else 0.0
            parts.append(tuple((v - c) / (1 - c) for v in (x.mean, x.ci_lo, x.ci_hi)) + (x.n_items,))
        k = len(parts)
        mean = fmean(p[0] for p in parts)
        lo = mean - math.sqrt(sum((p[0] - p[1]) ** 2 for p in parts)) / k
        hi = mean + math.sqrt(sum((p[2] - p[0]) ** 2 for p in parts)) / k
        n = sum(p[3] or 0 for p in parts) or None
        seeds = tuple(sorted(per_seed))
        return Summary(mean, max(bounds[0], lo), min(bounds[1], hi), len(seeds), seeds,
                       f"mean of {k} task interval(s), tasks independent", n)

    @property
    def has_capability(self) -> bool:
        return any(k[2] == "capability_mean" for k in self.obs)


# ------------------------------------------------------------------------------------------
# Table 1: harmfulness and refusal, defense × attack, initial and attacked
