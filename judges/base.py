"""The judge interface, for judge authors: ``Verdict``, ``Judge`` and ``make_judge``.

They are defined in the core (``harness/judging.py``), which calls them without importing any judge package.
"""
from sdd_bench.harness.judging import Judge, Verdict, make_judge  # noqa: F401

__all__ = ["Judge", "Verdict", "make_judge"]
