"""The defense contract: a ``Defense`` subclass builds its training data (``build_data`` → ``BuiltData``) and trains
on it (``defend(model_ref, out_dir, ctx, built) -> (ModelRef, info)``).

A defense class has a frozen ``Config`` (every hyper-parameter with its default and source in the module
docstring), a ``PROFILE`` table of size overrides per profile (sizes only — steps, pairs, sequence length — never
the method), a data-construction method testable without training, and ``defend`` gluing data to the shared
training utilities.  ``docs/write_a_defense.md`` walks a third-party author through one complete defense.

The registry (``harness.registry.DEFENSES``) checks every registration against this base
(:func:`check_defense_class`): a class that does not subclass ``Defense``, leaves an abstract method
unimplemented or has no ``Config`` is refused with one error naming what is missing and the fix.
"""
from __future__ import annotations

import dataclasses
import inspect
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar

from sdd_bench.harness.config import build, to_dict
# the run context and the mechanism probe are the core's (harness/contracts.py): the pipeline builds them; they are
# re-exported here so that a defense reads its whole contract from this module
from sdd_bench.harness.contracts import Context, MechanismProbe  # noqa: F401


@dataclass(frozen=True)
class BuiltData:
    """What a defense's ``build_data`` returns: one typed result, built once per cell by the pipeline and handed to
    both the preflight (the overlap check) and ``defend`` (training), so the data is never built twice.

    ``rows``: the main training rows (dicts with at least ``prompt``; most have ``response`` and ``kind``).
    ``harmful_prompts``: every harmful prompt the defense trains or probes on, from any stream — the pipeline's
    overlap check requires them to be disjoint from the attacker's and the evaluation's prompts (DESIGN §10).
    ``parts``: further named row streams a defense trains on beside ``rows`` (Booster's harmful batches, TAR's
    adversary and held-out halves, T-Vaccine's probe pool).  ``stats``: counts about the construction, recorded
    in the defense's info (``data_stats``)."""
    rows: list[dict]
    harmful_prompts: tuple[str, ...] = ()
    stats: dict = field(default_factory=dict)
    parts: dict[str, list[dict]] = field(default_factory=dict)

    def __post_init__(self):
        if not isinstance(self.rows, list):
            raise TypeError(f"BuiltData.rows must be a list of row dicts, got {type(self.rows).__name__}.")
        object.__setattr__(self, "harmful_prompts", tuple(self.harmful_prompts))

    @classmethod
    def empty(cls) -> "BuiltData":
        """No training data (the ``none`` defense)."""
        return cls(rows=[])


def prompts_of(rows, *, skip_kinds: tuple[str, ...] = ("benign",)) -> tuple[str, ...]:
    """The prompts of ``rows`` whose ``kind`` is not in ``skip_kinds`` (rows without a kind count): the usual
    ``harmful_prompts`` of a defense whose rows mix harmful prompts with benign anchors."""
    return tuple(r["prompt"] for r in rows if r.get("kind") not in skip_kinds)




class Defense(ABC):
    """Base of every defense.  Implement ``build_data`` and ``defend``; set ``Config``; the rest has defaults.

    The pipeline reads only what is declared here: the class attributes below (each with its default) and the
    methods ``configure``, ``spec``, ``build_data``, ``defend`` and ``mechanism``."""

    Config: ClassVar[type | None] = None
    """Required: a frozen dataclass of every hyper-parameter (``harness.config.param`` fields with defaults)."""
    PROFILE: ClassVar[dict[str, dict[str, Any]]] = {}
    """Size overrides per profile (``tiny``, ``smoke``, ``paper``): steps, pairs, lengths — never the method."""
    datasets: ClassVar[tuple[str, ...]] = ()
    """Names of the datasets it reads (their fingerprints go into the spec, so changed data changes the key)."""
    version: ClassVar[int] = 1
    """Bump when data construction or the objective changes: old artifacts stop matching."""
    deviations: ClassVar[tuple[str, ...]] = ()
    """Where this port knowingly differs from the authors' method or settings, one line each (lands in the record)."""
    identity: ClassVar[bool] = False
    """True for a defense that returns its input model unchanged (``none``): the pipeline skips its stage."""
    mechanism_runs_models: ClassVar[bool] = False
    """True when ``mechanism`` loads models (the pipeline then caches it as a stage keyed on both models)."""
    registry_name: str = ""
    """The name it is registered under (set by the registry; ``spec`` falls back to the class name)."""

    def __init__(self, cfg=None):
        self.cfg = cfg if cfg is not None else build(self.Config)

    @classmethod
    def configure(cls, profile: str, overrides: dict | None = None, where: str = ""):
        """Config for a profile: paper defaults, then the profile's sizes, then user overrides."""
        merged = dict(cls.PROFILE.get(profile, {}))
        merged.update(overrides or {})
        return cls(build(cls.Config, merged, where=where or f"defense {cls.registry_name or cls.__name__!r}"))

    def spec(self) -> dict:
        """The defense's identity in the store: name, version, resolved config, data fingerprints, deviations."""
        from sdd_bench.harness import data
        out = {"defense": self.registry_name or type(self).__name__, "version": self.version,
               "config": to_dict(self.cfg),
               "data": [fp for d in self.datasets for fp in data.get(d).fingerprints()]}
        if self.deviations:
            out["deviations"] = list(self.deviations)
        return out

    @abstractmethod
    def build_data(self, seed: int = 0) -> BuiltData:
        """The training data for seed ``seed``, without a model at hand (the pipeline's preflight calls it before
        any training, checks ``harmful_prompts`` for overlap, then passes the same object to ``defend``)."""

    @abstractmethod
    def defend(self, ref, out_dir: Path, ctx: "Context", built: BuiltData | None = None):
        """Train from model ``ref`` into ``out_dir``; returns ``(ModelRef, info)``.  ``built`` is this defense's
        ``build_data(ctx.seed)`` (the pipeline passes the one it built; None: build it here, ``data_for``)."""

    def data_for(self, ctx: "Context", built: BuiltData | None) -> BuiltData:
        """``built`` when the pipeline passed it, else ``build_data(ctx.seed)`` (a direct call of ``defend``)."""
        return built if built is not None else self.build_data(ctx.seed)

    # Mechanism installed (issue 36): a number showing that the defense's own mechanism took hold, measured on
    # held-out data before any attack, with the criterion its paper implies.  A defense whose paper defines one
    # overrides ``mechanism`` (and sets ``mechanism_runs_models`` when it loads models, so the pipeline caches it as a
    # stage keyed on both models); the default is "no such number" (the record says so).
    def mechanism(self, probe: MechanismProbe) -> dict | None:
        """``{"name", "value", "ci95", "n", "criterion", "installed", "source", …}`` or None."""
        return None

    def workload(self) -> tuple[int | None, int | None, int | None]:
        """(optimizer steps, batch size, max length) of its training, for the grid planner's time estimate
        (``harness.grid.defend_estimate``); None where the config does not state one.  The default reads the config
        fields ``max_steps``, ``batch_size`` and ``max_length`` (the names every built-in defense uses)."""
        return tuple(getattr(self.cfg, f, None) for f in ("max_steps", "batch_size", "max_length"))  # type: ignore


def check_defense_class(name: str, obj: Any) -> None:
    """Raise ``TypeError`` (one line: what is missing and the fix) unless ``obj`` fulfils the ``Defense`` contract.
    The registry calls it for every registration (built-in, decorator or entry point)."""
    where = f"defense {name!r} ({getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', obj)!s})"
    if not (isinstance(obj, type) and issubclass(obj, Defense)):
        raise TypeError(f"{where} is not a subclass of sdd_bench.defenses.base.Defense; write "
                        f"`class MyDefense(Defense):` and implement build_data and defend (docs/write_a_defense.md).")
    missing = sorted(getattr(obj, "__abstractmethods__", ()))
    if missing:
        raise TypeError(f"{where} does not implement {', '.join(missing)}; add "
                        + "; ".join(_SIGNATURES[m] for m in missing) + " (docs/write_a_defense.md).")
    if obj.Config is None or not dataclasses.is_dataclass(obj.Config):
        raise TypeError(f"{where} has no Config; set `Config = MyConfig`, a frozen dataclass of its hyper-parameters "
                        f"(an empty `@dataclass(frozen=True) class MyConfig: pass` when it has none).")
    params = inspect.signature(obj.defend).parameters
    if "built" not in params:
        raise TypeError(f"{where}: defend has no `built` parameter; declare it as `def defend(self, ref, out_dir, ctx, "
                        f"built=None)` and train on `self.data_for(ctx, built)` (the pipeline passes the data it "
                        f"built).")


_SIGNATURES = {"build_data": "`def build_data(self, seed=0) -> BuiltData`",
               "defend": "`def defend(self, ref, out_dir, ctx, built=None) -> (ModelRef, info)`"}


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
