"""The defense interface: ``defend(model_ref, out_dir, ctx) -> (ModelRef, info)``.

A defense class has a frozen ``Config`` (every hyper-parameter with its default and source in
the module docstring), a ``PROFILE`` table of size overrides per profile (sizes only — steps,
pairs, sequence length — never the method), a data-construction method testable without
training, and ``defend`` gluing data to the shared training utilities.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from sdd_bench.harness.config import build, to_dict


@dataclass(frozen=True)
class Context:
    template: str = "chat"
    device: str = "auto"
    seed: int = 0
    profile: str = "smoke"
    progress: bool = True


@dataclass(frozen=True)
class MechanismProbe:
    """What a defense's mechanism measurement may read (issue 36; DESIGN §6 "mechanism installed"), all from held-out
    data and before any attack: the model the defense started from, the defended model, the defended model's
    evaluation (``metrics``: the record's ``initial`` block), its generations per evaluation set
    (``generations(name)``: rows with ``prompt`` and ``text``) and its judges' verdicts (``verdicts(name, judge)``)."""
    start: Any
    defended: Any
    metrics: dict
    generations: Callable[[str], list[dict]]
    verdicts: Callable[[str, str], list[dict]]  # (eval set, judge) → one verdict per generation, in order
    ctx: "Context"


class Defense:
    Config: type = None  # type: ignore[assignment]
    PROFILE: dict[str, dict[str, Any]] = {}
    datasets: tuple[str, ...] = ()  # names of datasets it reads (fingerprints go into the spec)
    version: int = 1  # bump when data construction or the objective changes: old artifacts stop matching
    # where this port knowingly differs from the authors' method or settings, one line each (lands in the record)
    deviations: tuple[str, ...] = ()

    def __init__(self, cfg=None):
        self.cfg = cfg if cfg is not None else build(self.Config)

    @classmethod
    def configure(cls, profile: str, overrides: dict | None = None, where: str = ""):
        """Config for a profile: paper defaults, then the profile's sizes, then user overrides."""
        merged = dict(cls.PROFILE.get(profile, {}))
        merged.update(overrides or {})
        return cls(build(cls.Config, merged, where=where or f"defense {getattr(cls, 'registry_name', cls.__name__)!r}"))

    def spec(self) -> dict:
        from sdd_bench.harness import data
        out = {"defense": getattr(self, "registry_name", type(self).__name__), "version": self.version,
               "config": to_dict(self.cfg),
               "data": [fp for d in self.datasets for fp in data.get(d).fingerprints()]}
        if self.deviations:
            out["deviations"] = list(self.deviations)
        return out

    def defend(self, ref, out_dir: Path, ctx: Context):
        raise NotImplementedError

    # Mechanism installed (issue 36): a number showing that the defense's own mechanism took hold, measured on
    # held-out data before any attack, with the criterion its paper implies.  A defense whose paper defines one
    # overrides ``mechanism`` (and sets ``mechanism_runs_models`` when it loads models, so the pipeline caches it as a
    # stage keyed on both models); the default is "no such number" (the record says so).
    mechanism_runs_models: bool = False

    def mechanism(self, probe: MechanismProbe) -> dict | None:
        """``{"name", "value", "ci95", "n", "criterion", "installed", "source", …}`` or None."""
        return None


def share_installed(name: str, hits: list[bool], criterion_share: float, source: str, **extra) -> dict:
    """A mechanism measured as the share of held-out items showing it, with its Wilson 95% interval; installed when
    the interval's lower bound exceeds ``criterion_share`` (the mechanism holds for most items, beyond noise)."""
    from sdd_bench.harness.metrics import wilson_ci
    n, k = len(hits), sum(bool(h) for h in hits)
    lo, hi = wilson_ci(k, n) if n else (0.0, 1.0)
    return {"name": name, "value": k / n if n else 0.0, "ci95": [lo, hi], "n": n, "count": k,
            "criterion": f"Wilson 95% lower bound > {criterion_share:g}", "installed": bool(n and lo > criterion_share),
            "source": source, **extra}


def paired_installed(name: str, before: list[float], after: list[float], *, higher: bool, unit: str, source: str,
                     **extra) -> dict:
    """A mechanism measured on the same held-out units (batches, adversaries) for the model the defense started from
    (``before``) and the defended one (``after``): the defended mean, the start mean beside it, and the paired
    difference defended − start with its Student-t 95% interval; installed when that interval lies above 0
    (``higher``: the defense must raise the number) or below 0 (it must lower it) — a change beyond unit noise."""
    from statistics import mean

    from sdd_bench.harness.reference_loss import paired_difference
    diff = paired_difference(before, after)
    lo, hi = diff["ci95"]
    return {"name": name, "value": mean(after), "n": len(after), "per_unit": after, "start_value": mean(before),
            "start_per_unit": before, "unit": unit, "ci95": [lo, hi],
            "ci_of": f"defended − start, paired over {unit} (Student t)", "paired_diff": diff["mean_diff"],
            "criterion": f"95% t interval of (defended − start) {'above' if higher else 'below'} 0",
            "installed": bool(lo > 0 if higher else hi < 0), "source": source, **extra}


def replace_cfg(cfg, **kw):
    return dataclasses.replace(cfg, **kw)
