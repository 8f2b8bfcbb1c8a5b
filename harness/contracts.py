"""What the core hands a plugin: the run context of a defense and the probe of its mechanism measurement.

They live in the core (the pipeline and ``harness.models`` build them) so that the core imports no plugin package;
``defenses.base`` re-exports both, so a defense author reads the whole contract there (docs/write_a_defense.md).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable


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
