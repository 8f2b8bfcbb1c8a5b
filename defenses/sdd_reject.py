"""``sdd-reject``: SDD with an explicit refusal sentence (Chen et al., ACL 2025, §5 "SDD-reject").

Identical to ``sdd`` (same data construction, objective and defaults; see defenses/sdd.py),
except that every irrelevant response starts with a fixed sentence that explicitly declines
the request and says the answer that follows is deliberately unrelated.  The paper's wording
is "I refuse to answer your question for responsible and ethical reasons. I provided an
irrational answer to your question."; ours (below) has the same meaning in our own words and
opens with "I cannot", one of Qi et al. 2023's refusal prefixes, so the keyword judge counts the
explicit rejection without an API judge (the rubric judge's explicit-rejection class measures it too).
The paper uses it to show that an explicit rejection can be kept while preserving SDD's
degradation under attack (its Figure 3: harmfulness and explicit-rejection rate).
"""
from __future__ import annotations

from dataclasses import dataclass

from sdd_bench.harness.config import param
from sdd_bench.harness.registry import DEFENSES

from .sdd import SDD, SDDConfig

REJECT_SENTENCE = ("I cannot help with that request, as answering it would be irresponsible. "
                   "What follows is deliberately unrelated to your question.")


@dataclass(frozen=True)
class SDDRejectConfig(SDDConfig):
    reject_prefix: str = param(REJECT_SENTENCE, "explicit refusal sentence put before every irrelevant response")


@DEFENSES.register("sdd-reject")
class SDDReject(SDD):
    Config = SDDRejectConfig
