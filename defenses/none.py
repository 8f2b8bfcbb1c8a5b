"""``none``: the model as is (no defense). The reference row of every table."""
from __future__ import annotations

from dataclasses import dataclass

from sdd_bench.harness.registry import DEFENSES

from .base import BuiltData, Defense


@dataclass(frozen=True)
class NoneConfig:
    pass


@DEFENSES.register("none")
class NoDefense(Defense):
    Config = NoneConfig
    identity = True  # the pipeline skips training and reuses the input weights

    def build_data(self, seed: int = 0) -> BuiltData:
        return BuiltData.empty()

    def defend(self, ref, out_dir, ctx, built=None):
        return ref, {"note": "no defense"}
