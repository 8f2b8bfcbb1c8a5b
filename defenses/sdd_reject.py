"""``sdd-reject``: SDD with an explicit refusal sentence (Chen et al., ACL 2025, §5 "SDD-reject").

Identical to ``sdd`` (same data construction, objective and defaults; see defenses/sdd.py),
except that every irrelevant response starts with the paper's fixed sentence that explicitly
declines the request and says the answer that follows is irrational: "I refuse to answer your
question for responsible and ethical reasons. I provided an irrational answer to your question."
(SDD paper §5), verbatim, followed by a blank line and the response, as TamperBench's port joins
them (``reject_joiner``).  Until version 2 this file used a paraphrase opening with "I cannot",
joined by a space.  The paper uses it to show that an explicit rejection can be kept while
preserving SDD's degradation under attack (its Figure 3: harmfulness and explicit-rejection rate).
The explicit-rejection rate comes from the rubric judge; the sentence contains none of Qi et al.
2023's refusal keywords, so the keyword judge does not count it as a refusal.
"""
from __future__ import annotations

from dataclasses import dataclass

from sdd_bench.harness.config import param
from sdd_bench.harness.registry import DEFENSES

from .sdd import SDD, SDDConfig

# SDD paper §5, verbatim
REJECT_SENTENCE = ("I refuse to answer your question for responsible and ethical reasons. "
                   "I provided an irrational answer to your question.")


@dataclass(frozen=True)
class SDDRejectConfig(SDDConfig):
    reject_prefix: str = param(REJECT_SENTENCE, "explicit refusal sentence put before every irrelevant response")


@DEFENSES.register("sdd-reject")
class SDDReject(SDD):
    Config = SDDRejectConfig
    version = 4  # 4: the paper's sentence, joined by a blank line (3 = sdd's version 3 with the paraphrase)
