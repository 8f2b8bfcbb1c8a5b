"""Settings and the long table: a record's cell without its seed (``Setting``), its columns and one row per
measurement (``long.csv``).  Part of the report's aggregation (leaderboards/aggregate.py re-exports every name)."""
from __future__ import annotations

import json
from dataclasses import dataclass, fields, replace
from statistics import NormalDist
from typing import Iterable

from sdd_bench.harness.config import EVAL_ONLY_OPTIONS

from .records import Loaded, ReportError

Z95 = NormalDist().inv_cdf(0.975)


CONDITIONS = ("initial", "attacked")
EVAL_SETS = ("harmful", "benign", "xstest")
KIND_LABEL = {"mft": "MFT", "bft": "BFT", "poison": "poison", "ablation": "refusal ablation"}


class UnknownMetricError(ReportError):
    """--harm-metric names a metric that no record carries, or one that is not a harmfulness metric."""


# ------------------------------------------------------------------------------------------
# settings
@dataclass(frozen=True, order=True)
class Setting:
    """A cell without its seed; ``attack is None`` is the defended model itself (the initial condition)."""
    model: str
    profile: str
    defense: str
    base_defense: str | None
    defense_options: str
    template: str
    attack: str | None = None
    attack_kind: str | None = None
    attack_dataset: str | None = None
    attack_n: int | None = None
    attack_lr: float | None = None
    attack_epochs: float | None = None
    attack_lora: bool | None = None
    attack_options: str = ""
    attack_steps: int | None = None          # the dose that ran (record attack_info, from the trainer; issue 36)
    attack_examples_seen: int | None = None

    @property
    def defended(self) -> "Setting":
        """The same defended model before any attack."""
        return replace(self, attack=None, attack_kind=None, attack_dataset=None, attack_n=None, attack_lr=None,
                       attack_epochs=None, attack_lora=None, attack_options="", attack_steps=None,
                       attack_examples_seen=None)

    @property
    def defense_label(self) -> str:
        s = self.defense + (f" on {self.base_defense}" if self.base_defense else "")
        return s + (f" [{self.defense_options}]" if self.defense_options else "")

    @property
    def attack_label(self) -> str:
        if self.attack is None:
            return "initial"
        return self.attack + (f" [{self.attack_options}]" if self.attack_options else "")

    @property
    def budget_variant(self) -> bool:
        """Whether the attack sets an attacker-budget axis other than its lr (harness/budget.py: LoRA, warm-up,
        optimizer, steps, attack seed).  Such a cell is one configuration of an attacker's sweep: it counts in
        worst_case's ``attacker sweep`` group and the all-attacks worst case, not as a Table 1 column, an lr-sweep
        line or a point of the harm-vs-N figure (where it would sit beside the recipe's own cell at the same N)."""
        from sdd_bench.harness.budget import OPTIONS
        axes = set(OPTIONS) - {"lr"}
        return any(o.split("=", 1)[0] in axes for o in self.attack_options.split(",") if o)

    @property
    def sweep_key(self) -> tuple:
        """Attacks that differ only in learning rate share this key (an lr sweep)."""
        return (self.attack, self.attack_dataset, self.attack_n, self.attack_epochs, self.attack_lora)

    def sort_key(self) -> tuple:
        kinds = ("mft", "poison", "ablation", "bft")
        return (self.attack is not None, kinds.index(self.attack_kind) if self.attack_kind in kinds else len(kinds),
                self.attack_dataset or "", self.attack_n or 0, self.attack_lr or 0.0, self.attack_label)


SETTING_COLUMNS = [f.name for f in fields(Setting)]


def options_label(d: dict | None, prefix: str) -> str:
    """The short, sorted `k=v,…` label of an options dict as the leaderboard columns show it (each key
    prefixed, nested values as JSON); "" when there are none."""
    if not d:
        return ""
    return ",".join(f"{prefix}{k}={json.dumps(v) if isinstance(v, (dict, list)) else v}" for k, v in sorted(d.items()))


_NORMALIZED: dict[str, dict] = {}


def _normalized_spec(spec: dict) -> dict:
    """A record's spec with options at their defaults dropped (harness/pipeline.py:normalize), so records
    written before cells were normalized group with the cells they are; unchanged where that fails."""
    if not (spec.get("attack_options") or spec.get("defense_options") or spec.get("base_defense_options")):
        return spec
    key = json.dumps(spec, sort_keys=True, default=str)
    if key not in _NORMALIZED:
        from sdd_bench.harness import config as C
        from sdd_bench.harness.pipeline import normalize, spec_from_mapping
        out = dict(spec)
        # the attack's and the defenses' options separately: a plugin that cannot load here spoils only its own
        for part in (("attack", "attack_options"), ("defense", "defense_options"),
                     ("base_defense", "base_defense_options", "defense", "defense_options")):
            fields_ = {k: spec.get(k) for k in part if k in spec}
            if not any(fields_.get(k) for k in part if k.endswith("_options")):
                continue
            fields_["profile"] = spec.get("profile", "smoke")
            try:
                norm = C.to_dict(normalize(spec_from_mapping(fields_)))
                out.update({k: norm[k] for k in part if k.endswith("_options")})
            except Exception:  # a record of a plugin this installation lacks: keep its options as written
                pass
        _NORMALIZED[key] = out
    return _NORMALIZED[key]


def setting_of(record: dict) -> Setting:
    cell, spec = record["cell"], _normalized_spec(record.get("spec") or {})
    atk = ((record.get("config") or {}).get("attack")) or {}
    acfg, ares = atk.get("config") or {}, atk.get("resolved") or {}
    ainfo = record.get("attack_info") if isinstance(record.get("attack_info"), dict) else {}
    defense_options = ",".join(x for x in (options_label(spec.get("base_defense_options"), "base."),
                                           options_label(spec.get("defense_options"), "")) if x)
    attacked = cell.get("attack") not in (None, "none")
    return Setting(
        model=str(cell.get("model")), profile=str(cell.get("profile")), defense=str(cell.get("defense")),
        base_defense=cell.get("base_defense"), defense_options=defense_options, template=str(spec.get("template", "")),
        attack=cell["attack"] if attacked else None, attack_kind=cell.get("attack_kind") if attacked else None,
        attack_dataset=acfg.get("dataset") if attacked else None, attack_n=acfg.get("n") if attacked else None,
        attack_lr=ares.get("lr") if attacked else None, attack_epochs=ares.get("epochs") if attacked else None,
        attack_lora=acfg.get("lora") if attacked else None,
        attack_options=options_label({k: v for k, v in (spec.get("attack_options") or {}).items() if k not in EVAL_ONLY},
                                "") if attacked else "",
        attack_steps=_int_or_none(ainfo.get("steps")) if attacked else None,
        attack_examples_seen=_int_or_none(ainfo.get("examples_seen")) if attacked else None)


def _int_or_none(x) -> int | None:
    return int(x) if isinstance(x, (int, float)) and not isinstance(x, bool) else None


# attack options that add evaluations without changing the attacked model: not part of the setting
EVAL_ONLY = EVAL_ONLY_OPTIONS


def seed_of(record: dict) -> int:
    return int(record["cell"].get("seed", 0))


def replicate_key(record: dict) -> tuple:
    return (setting_of(record), seed_of(record))


def git_of(record: dict) -> str:
    return str((record.get("environment") or {}).get("git") or "")


# ------------------------------------------------------------------------------------------
# the long table: every number of every record, one row each
LONG_COLUMNS = ["model", "profile", "defense", "base_defense", "defense_options", "attack", "attack_kind",
                "attack_dataset", "attack_n", "attack_lr", "attack_epochs", "attack_lora", "attack_options", "attack_steps",
                "attack_examples_seen", "template",
                "seed", "git", "condition", "eval_set", "metric", "value", "ci_lo", "ci_hi", "ci_method", "n", "invalid",
                "direction", "judge", "source"]


def _cell_columns(record: dict, source: str) -> dict:
    s = setting_of(record)
    cols = {k: getattr(s, k) for k in SETTING_COLUMNS}
    cols["attack"] = s.attack or "none"
    cols.update(seed=seed_of(record), git=git_of(record), source=source)
    return cols


def _stderr_ci(value, se) -> tuple[float | None, float | None]:
    if value is None or se is None:
        return None, None
    return value - Z95 * se, value + Z95 * se


def _long_ci(value, n, record_ci, is_rate: bool) -> tuple[float | None, float | None, str]:
    """One seed's 95% CI for ``long.csv``.  A share of items (``*_rate``, a task's accuracy): the interval the
    tables give a single seed (:func:`sdd_bench.harness.metrics.interval`, Wilson on the items), so a rate never
    appears with two different intervals.  Otherwise the record's own CI as recorded (the judge's bootstrap over
    prompts, e.g. a mean probability or relevance score; the tables centre its half-width on the mean)."""
    from sdd_bench.harness.metrics import interval
    if is_rate and value is not None and n:
        iv = interval([value], [n])
        return iv["ci95"][0], iv["ci95"][1], iv["method"]
    lo, hi = record_ci or [None, None]
    return lo, hi, ("record" if lo is not None else "none")


def long_rows(loaded: Iterable[Loaded]) -> list[dict]:
    rows = []
    for item in loaded:
        rec = item.record
        base = _cell_columns(rec, item.source)
        for cond in CONDITIONS:
            m = rec["metrics"].get(cond)
            if not m:
                continue
            for eval_set in EVAL_SETS:
                for name, agg in (m.get(eval_set) or {}).items():
                    if not (isinstance(agg, dict) and "value" in agg):
                        continue
                    lo, hi, how = _long_ci(agg["value"], agg.get("n"), agg.get("ci95"), name.endswith("_rate"))
                    rows.append(dict(base, condition=cond, eval_set=eval_set, metric=name, value=agg["value"],
                                     ci_lo=lo, ci_hi=hi, ci_method=how, n=agg.get("n"), invalid=agg.get("invalid"),
                                     direction=agg.get("direction"), judge=agg.get("judge")))
            for task, res in ((m.get("capability") or {}).get("tasks") or {}).items():
                primary = res.get("primary", "acc")
                if res.get("n"):
                    lo, hi, how = _long_ci(res.get("value"), res["n"], None, True)
                else:  # no item count: lm-eval's stderr, as capability_mean reads it
                    lo, hi = _stderr_ci(res.get("value"), res.get(f"{primary}_stderr"))
                    how = "±1.96·stderr" if lo is not None else "none"
                rows.append(dict(base, condition=cond, eval_set="capability", metric=f"{task}:{primary}",
                                 value=res.get("value"), ci_lo=lo, ci_hi=hi, ci_method=how, n=res.get("n"),
                                 invalid=None, direction="higher-better", judge="lm-eval"))
            rl = m.get("reference_loss")
            if isinstance(rl, dict) and rl.get("value") is not None:
                lo, hi = (rl.get("ci95") or [None, None])[:2]
                rows.append(dict(base, condition=cond, eval_set="reference_loss", metric=str(rl.get("dataset")),
                                 value=rl["value"], ci_lo=lo, ci_hi=hi, ci_method="record" if lo is not None else "none",
                                 n=rl.get("n"), invalid=None, direction="lower-better", judge="nats/token"))
            fa = m.get("finetune_accuracy")
            if fa:
                lo, hi, how = _long_ci(fa.get("value"), fa.get("n"), fa.get("ci95"), True)
                rows.append(dict(base, condition=cond, eval_set="finetune_accuracy", metric=str(fa.get("task")),
                                 value=fa.get("value"), ci_lo=lo, ci_hi=hi, ci_method=how, n=fa.get("n"),
                                 invalid=None, direction="higher-better", judge="finetune-accuracy"))
    return rows


# ------------------------------------------------------------------------------------------
# harmfulness metrics
