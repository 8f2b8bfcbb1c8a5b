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
from typing import Any

from sdd_bench.harness.config import build, to_dict


@dataclass(frozen=True)
class Context:
    template: str = "chat"
    device: str = "auto"
    seed: int = 0
    profile: str = "smoke"
    progress: bool = True


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


def replace_cfg(cfg, **kw):
    return dataclasses.replace(cfg, **kw)
