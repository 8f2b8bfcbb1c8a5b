"""The attack contract: an ``AttackPreset`` (what the registry holds, one per name) makes an ``Attack`` for a profile
and the user's options; the pipeline runs ``attack(ref, out_dir, template, seed, …) -> (ModelRef, info)``.

The pipeline and the grid planner read only what is declared here: the class attributes and properties below (each
with its default) and the methods ``spec``, ``build_data``, ``prepare``, ``preflight``, ``attack``, ``train_seed``
and ``planned_steps``.  The registry (``harness.registry.ATTACKS``) checks every registration against
``AttackPreset`` (:func:`check_attack_preset`) and ``harness.pipeline.resolve`` checks what ``make`` returns against
``Attack`` (:func:`check_attack`, registered as the registry's made-contract), each with one error naming what is missing and the fix.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar


class Attack(ABC):
    """Base of every attack (fine-tuning, restore, refusal ablation).  Implement ``spec``, ``build_data`` and
    ``attack``; set ``Config`` and ``kind``; the rest has defaults."""

    Config: ClassVar[type | None] = None
    """Required: the frozen dataclass of its options (``harness.config.param`` fields with defaults)."""
    kind: str = ""
    """Required: ``mft`` (malicious fine-tuning), ``bft`` (benign), ``poison`` (benign with harmful rows mixed in)
    or ``ablation`` (a weight edit); tables and the leaderboard group attacks by it."""
    needs_store: bool = False
    """True when ``prepare(store, …)`` must run before ``attack`` (donor-built data, cached sub-stages)."""
    data_needs_store: bool = False
    """True when ``build_data`` itself can only run after ``prepare(store)`` (donor-built responses): the preflight
    then calls ``preflight()`` to check the inputs instead of building the data, and the overlap check sees the data
    once the attack stage has built it."""

    name: str
    cfg: Any
    profile: str

    @abstractmethod
    def spec(self) -> dict:
        """The attack's identity in the store: name, version, config, data fingerprints."""

    @abstractmethod
    def build_data(self, seed: int = 0) -> tuple[list[dict], dict]:
        """(rows, info): its training rows, each with ``prompt`` and ``kind`` (``harmful`` rows are checked for
        overlap with the defender's and the evaluation's prompts), and counts about them."""

    @abstractmethod
    def attack(self, ref, out_dir, template: str, seed: int, device: str = "auto", progress: bool = True):
        """Attack model ``ref`` into ``out_dir``; returns ``(ModelRef, info)``."""

    def prepare(self, store, device: str = "auto", progress: bool = True, log=print) -> None:
        """Build what the attack needs from the store (only called when ``needs_store``); default: nothing."""

    def preflight(self) -> None:
        """Check the inputs of data that needs the store (only called when ``data_needs_store``); default: nothing."""

    def train_seed(self, seed: int) -> int:
        """The seed it trains (and samples its data) with for a cell of seed ``seed``; default: the cell's."""
        return seed

    def planned_steps(self) -> int | None:
        """Optimizer steps it will run, for the grid planner; None when it has no single count (the default)."""
        return None

    @property
    def checkpoints(self) -> tuple[float, ...]:
        """Fractions of its steps after which the model is also saved and evaluated (an attack trajectory); default
        none."""
        return ()


class AttackPreset(ABC):
    """A named attack as the registry holds it: ``make(profile, options)`` builds the ``Attack`` (fixed overrides,
    then the profile's sizes, then the user's options).  ``name`` is its registered name (``none``: no attack)."""

    name: str
    description: str

    @abstractmethod
    def make(self, profile: str, user: dict | None = None) -> Attack:
        """The attack for ``profile`` with the user's option overrides."""


def check_attack_preset(name: str, obj: Any) -> None:
    """Raise ``TypeError`` (what is missing and the fix) unless ``obj`` is an ``AttackPreset`` with ``make``."""
    if not isinstance(obj, AttackPreset):
        raise TypeError(f"attack {name!r}: {obj!r} is not an sdd_bench.attacks.base.AttackPreset; register an instance "
                        f"of a preset class that subclasses AttackPreset and implements `make(profile, user=None) -> "
                        f"Attack` (see attacks/finetune.py: Preset).")


def check_attack(name: str, obj: Any) -> None:
    """Raise ``TypeError`` (what is missing and the fix) unless ``obj`` (what a preset's ``make`` returned) fulfils
    ``Attack``: a subclass instance with ``Config`` and ``kind`` set."""
    if not isinstance(obj, Attack):
        raise TypeError(f"attack {name!r}: make() returned {type(obj).__name__}, not an sdd_bench.attacks.base.Attack; "
                        f"subclass Attack and implement spec, build_data and attack.")
    if type(obj).Config is None or not obj.kind:
        raise TypeError(f"attack {name!r}: {type(obj).__name__} must set `Config` (its options dataclass) and `kind` "
                        f"(mft, bft, poison or ablation).")
