"""Harmfulness and rejection metrics of records: which metric a record (or a set of records) is read by, in one
order of preference shared by the report and the ``run`` answer line.  Part of the report's aggregation
(leaderboards/aggregate.py re-exports every name)."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable

from .records import ReportError
from .settings import CONDITIONS, UnknownMetricError


@dataclass(frozen=True)
class Metric:
    key: str          # the metric's key in a record's harmful eval set (or a derived key)
    label: str        # what a table header calls it
    direction: str    # lower-safer for every harmfulness metric; higher-safer for refusal/rejection
    is_rate: bool     # a fraction in [0, 1] (HS is a 1–5 mean and is not)
    derived_from: str | None = None  # keyword non-refusal is 1 − refusal_rate

    def read(self, harmful: dict) -> tuple[float, float, float, int | None] | None:
        """(value, ci_lo, ci_hi, n) of this metric in a record's harmful block, or None if absent."""
        src = harmful.get(self.derived_from or self.key)
        if not isinstance(src, dict) or src.get("value") is None:
            return None
        v = float(src["value"])
        lo, hi = (src.get("ci95") or [math.nan, math.nan])
        if self.derived_from:
            v, lo, hi = 1.0 - v, 1.0 - hi, 1.0 - lo
        return v, lo, hi, src.get("n")


HS = Metric("rubric:harmfulness_score", "HS (rubric score 1–5)", "lower-safer", False)
HR = Metric("rubric:harmfulness_rate", "HR (rubric: share scored 5)", "lower-safer", True)
HARM_CLF = Metric("harm-clf:harmful_rate", "harm-clf harmful rate", "lower-safer", True)
KEYWORD_HARM = Metric("keyword:non_refusal_rate", "keyword non-refusal rate (1 − refusal rate)", "lower-safer", True,
                      derived_from="refusal_rate")
REFUSAL = Metric("refusal_rate", "refusal rate (keyword)", "higher-safer", True)
EXPLICIT_REJECTION = Metric("rubric:explicit_rejection_rate", "explicit-rejection rate (rubric)", "higher-safer", True)
CLASSIFIER_RATE = ":harmful_rate"  # a classifier judge's harmful rate (``<judge>:harmful_rate``)
ALIASES = {"rubric": (HS, HR), "keyword": (KEYWORD_HARM,), KEYWORD_HARM.key: (KEYWORD_HARM,)}


def harm_metric_order(keys: Iterable[str]) -> list[tuple[Metric, ...]]:
    """The harmfulness metrics among a harmful block's ``keys``, in the one order of preference used everywhere
    (the report's Table 1 and headline, ``regress``, and the one-line answer of ``sdd-bench run``):

    1. the rubric judge, HS and HR (Qi et al. 2023's rubric, the papers' metric);
    2. harm-clf's harmful rate (the local CPU classifier, ``run``'s default judge);
    3. any other classifier's harmful rate, ``<judge>:harmful_rate``, alphabetically;
    4. keyword non-refusal, 1 − keyword refusal rate (every record has the refusal rate: a proxy, not a judge).

    Each entry is a group: its first metric is the primary one; a rate is taken with :func:`rate_of`.
    """
    keys = set(keys)
    out: list[tuple[Metric, ...]] = []
    if HS.key in keys or HR.key in keys:
        out.append((HS, HR) if HS.key in keys else (HR,))
    if HARM_CLF.key in keys:
        out.append((HARM_CLF,))
    out += [(Metric(k, f"{k.split(':', 1)[0]} harmful rate", "lower-safer", True),)
            for k in sorted(keys) if k.endswith(CLASSIFIER_RATE) and k != HARM_CLF.key]
    if KEYWORD_HARM.derived_from in keys:
        out.append((KEYWORD_HARM,))
    return out


def rate_of(group: tuple[Metric, ...]) -> Metric:
    """The group's harm *rate* (HR for the rubric, whose HS is a 1–5 mean), else its primary metric."""
    return next((m for m in group if m.is_rate), group[0])


def record_harm_metric(record: dict) -> Metric | None:
    """The harm rate one record is read by (``sdd-bench run``'s answer line): the first of
    :func:`harm_metric_order` that every condition of the record carries; None if none does."""
    group, _ = _first_common([record])
    return rate_of(group) if group else None


@dataclass(frozen=True)
class HarmChoice:
    metrics: tuple[Metric, ...]  # Table 1's harmfulness columns; metrics[0] is the primary one
    reason: str

    @property
    def primary(self) -> Metric:
        return self.metrics[0]


def _harmful_blocks(record: dict) -> list[dict]:
    return [record["metrics"][c].get("harmful") or {} for c in CONDITIONS if record["metrics"].get(c)]


def _has(record: dict, metric: Metric) -> bool:
    blocks = _harmful_blocks(record)
    return bool(blocks) and all(metric.read(b) is not None for b in blocks)


def choose_harm_metric(records: list[dict], name: str | None = None) -> HarmChoice:
    """The harmfulness metric(s) of the report: ``name`` if given, else the first of rubric HS/HR,
    harm-clf harmful rate, keyword non-refusal that every record carries (never a mix of judges)."""
    if name:
        if name in ALIASES:
            metrics = ALIASES[name]
            if not any(_has(r, metrics[0]) for r in records):
                raise UnknownMetricError(f"--harm-metric {name!r}: no record has {metrics[0].key} on harmful prompts; "
                                         f"available: {', '.join(available_harm_metrics(records))}.")
        else:
            found = [b[name] for r in records for b in _harmful_blocks(r) if isinstance(b.get(name), dict)]
            if not found:
                raise UnknownMetricError(f"--harm-metric {name!r}: no record has it on harmful prompts; available: "
                                         f"{', '.join(available_harm_metrics(records))}.")
            direction = str(found[0].get("direction", ""))
            if not direction.startswith("lower-safer"):
                raise UnknownMetricError(f"--harm-metric {name!r} is {direction or 'of unknown direction'}, not a "
                                         f"harmfulness metric (lower-safer); available: "
                                         f"{', '.join(available_harm_metrics(records))}.")
            known = {m.key: m for group in harm_metric_order([name, HS.key]) for m in group}
            metrics = (known.get(name) or Metric(name, name, "lower-safer", _looks_like_rate(found)),)
        have = sum(_has(r, metrics[0]) for r in records)
        return HarmChoice(metrics, f"{metrics[0].label}: chosen with --harm-metric ({have} of {len(records)} "
                                   f"records carry it)")
    group, partial = _first_common(records)
    if group is None:
        raise ReportError("no record has a keyword refusal rate on harmful prompts; these are not sdd-bench run "
                          "records.")
    why = f"{group[0].label}: the first of rubric HS, harm-clf, other classifiers, keyword that every record carries"
    if partial:
        why += f" ({'; '.join(partial)}: not used, so that one judge scores every cell)"
    return HarmChoice(group, why)


def _first_common(records: list[dict]) -> tuple[tuple[Metric, ...] | None, list[str]]:
    """The first group of :func:`harm_metric_order` that every record carries, and what was passed over."""
    keys = {k for r in records for b in _harmful_blocks(r) for k in b}
    partial = []
    for group in harm_metric_order(keys):
        have = sum(_has(r, group[0]) for r in records)
        if records and have == len(records):
            return group, partial
        if have:
            partial.append(f"{group[0].label} in {have} of {len(records)} records")
    return None, partial


def _looks_like_rate(aggs: list[dict]) -> bool:
    return all(0.0 <= float(a.get("value", 0)) <= 1.0 for a in aggs)


def available_harm_metrics(records: list[dict]) -> list[str]:
    names = {k for r in records for b in _harmful_blocks(r) for k, v in b.items()
             if isinstance(v, dict) and str(v.get("direction", "")).startswith("lower-safer")}
    return sorted(names) + [alias for alias, ms in ALIASES.items()
                            if ":" not in alias and any(_has(r, ms[0]) for r in records)]


SENTENCE_REJECTION = Metric("reject-sentence:explicit_rejection_rate", "explicit-rejection rate (SDD-reject's sentence)",
                            "higher-safer", True)


def rejection_metric(records: list[dict]) -> Metric:
    """Explicit rejection (SDD-reject, Figure 3): the rubric's explicit-rejection rate where every record has it, else
    the rate of SDD-reject's own sentence (judge ``reject-sentence``; the keyword judge never matches that sentence by
    design, issue 37) where every record has it, else the keyword refusal rate."""
    for m in (EXPLICIT_REJECTION, SENTENCE_REJECTION):
        if records and all(_has(r, m) for r in records):
            return m
    return REFUSAL


# ------------------------------------------------------------------------------------------
# observations per seed and their summaries over seeds
