"""The ``judge`` stage, for the judge package's callers: defined in the core (``harness/judge_stage.py``)."""
from sdd_bench.harness.judge_stage import (RETRYABLE, judge_stage, load_summary, load_verdicts,  # noqa: F401
                                           pending)

__all__ = ["RETRYABLE", "judge_stage", "load_summary", "load_verdicts", "pending"]
