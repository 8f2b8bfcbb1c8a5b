"""The judge interface: (prompts, responses) → one ``Verdict`` per item.

It lives in the core (the pipeline and the judge stage call ``make_judge``), so the core imports no judge package;
``judges.base`` re-exports it for judge authors.

Judges never aggregate: ``score`` and ``label`` are per item, ``valid=False`` marks an item the
judge could not assess (e.g. an unparseable rubric reply); aggregation (rates, means, CIs)
lives in ``sdd_bench.harness.metrics`` and excludes invalid items, reporting their count.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Sequence


@dataclass
class Verdict:
    score: float | None          # numeric judgement (e.g. 1–5 rubric, probability, similarity)
    label: str | None            # categorical judgement (e.g. "refusal", "harmful", "incoherent")
    raw: str = ""                # raw judge output (reply text, features) for audit
    valid: bool = True           # False: the judge could not assess this item
    meta: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


class Judge:
    """Base class. Subclasses set ``Config`` (frozen dataclass) and implement ``judge``.

    ``metrics``: name → (label value counted as positive | "mean", direction), where direction
    says which way is safer/better: "lower-safer", "higher-safer", "higher-better", "lower-better".
    """
    Config: type = None  # type: ignore[assignment]
    metrics: dict[str, tuple[str, str]] = {}

    def __init__(self, cfg=None, store=None, device: str = "cpu"):
        from .config import build
        self.cfg = cfg if cfg is not None else build(self.Config) if self.Config else None
        self.store = store
        self.device = device

    def judge(self, prompts: Sequence[str], responses: Sequence[str]) -> list[Verdict]:
        raise NotImplementedError

    def preflight(self) -> None:
        """Check, without network and without loading a model, everything this judge will need that can be checked
        before a run starts (its data files, credentials, endpoint URL); raise one ``SddBenchError`` otherwise.
        Called by the pipeline's preflight (``run``, ``grid``, ``validate``) for every judge a cell will run."""

    def spec(self) -> dict:
        from .config import to_dict
        return {"judge": getattr(self, "registry_name", type(self).__name__),
                "config": to_dict(self.cfg) if self.cfg is not None else {}}


def make_judge(name: str, overrides: dict | None = None, store=None, device: str = "cpu") -> Judge:
    from .config import build
    from .registry import JUDGES
    cls = JUDGES.get(name)
    cfg = build(cls.Config, overrides or {}, where=f"judge {name!r}") if cls.Config else None
    j = cls(cfg, store=store, device=device)
    j.registry_name = JUDGES.canonical(name)
    return j
