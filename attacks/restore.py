"""Restore attacks: an attacker who adds benign data to a harmful fine-tune.

A defense that makes a model *collapse* under harmful fine-tuning (SDD's self-degradation, Chen et
al., ACL 2025; collapse-style defenses generally) "scores safe" because the attacked model is
useless.  An attacker is not bound to stop there.  Two attacks test that (issue 23; both are our
construction from existing pieces, no new training loop):

* **Harmful then benign** (``restore-<harmful preset>``): phase 1 is a malicious fine-tuning preset
  (default ``beavertails-100``: Qi et al. 2023's harmful-examples attack, recipe ``qi2023``), run as
  its own cached ``attack`` stage, so it is the *same artifact* as the plain ``beavertails-100``
  attack on that model; phase 2 fine-tunes phase 1's output on benign data (default ``alpaca-1k``:
  1,000 Alpaca-GPT4 pairs with the ``benign`` recipe, Qi et al. 2023's benign Alpaca case, lr 2e-5,
  1 epoch, batch 10).  Question: does capability come back while harmfulness stays?  Qi et al. 2023
  show benign fine-tuning alone erodes safety, so phase 2 is not expected to undo phase 1.
* **Mixed** (``mixed-<harmful source>-100``): one fine-tune on harmful and benign pairs shuffled
  together: 100 harmful (BeaverTails attack partition, or donor-built AdvBench responses) and 100
  Alpaca-GPT4 pairs, with the *malicious* recipe ``qi2023`` (lr 5e-5, 5 epochs, batch 10).  It is
  the poison-mix machinery of ``attacks/finetune.py`` (Vaccine/Booster, Huang et al. 2024, use 5–20%
  harmful with a benign recipe) at a 1:1 ratio with the attacker's recipe.  The ratio is
  ``poison_ratio`` (harmful share of ``n``): ``--attack-opt poison_ratio=0.25 --attack-opt n=400``
  keeps 100 harmful among 300 benign.  Its records say ``poison_ratio_actual``.

Both phases' options are overridable: ``--attack-opt harmful_options={lr: 2e-5}``,
``--attack-opt benign_options={n: 500}``, ``--attack-opt benign=dolly-1k``.  The profile's sizes
(tiny: 2 steps, smoke: 40 steps per fine-tune) apply to each phase.  The record (``attack_info``)
holds both phases: examples seen, steps, distinct examples and seconds of each, the phase-1
artifact, and the model each phase started from (phase 2 starts from phase 1's output).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from sdd_bench.harness.config import build, param, to_dict
from sdd_bench.harness.errors import ConfigError

from .base import Attack, AttackPreset

VERSION = 1
_PHASE_FLAGS = ("lr", "epochs", "batch_size", "max_steps", "lora", "lora_r", "lora_alpha", "optimizer", "max_length")


@dataclass(frozen=True)
class RestoreConfig:
    harmful: str = param("beavertails-100", "phase 1: a malicious fine-tuning preset (`sdd-bench ls attacks`)")
    benign: str = param("alpaca-1k", "phase 2: a benign fine-tuning preset, trained on phase 1's output")
    harmful_options: dict = param(default_factory=dict, doc="overrides of phase 1's config, e.g. {lr: 2e-5}")
    benign_options: dict = param(default_factory=dict, doc="overrides of phase 2's config, e.g. {n: 500}")

    @property
    def dataset(self) -> str:
        """The data the final model was last trained on (the pipeline's fine-tune accuracy keys on it)."""
        return _phase(self.benign, {}, "paper", "benign").cfg.dataset

    @property
    def max_steps(self) -> None:  # the grid planner's estimate key; two phases have no single cap
        return None


def _phase(name: str, options: dict, profile: str, role: str):
    from sdd_bench.harness.registry import ATTACKS

    from .finetune import Preset
    preset = ATTACKS.get(name)
    if not isinstance(preset, Preset) or preset.name == "none":
        raise ConfigError(f"restore attack: {role} phase {name!r} is not a fine-tuning preset; give one of "
                          f"`sdd-bench ls attacks` such as {'beavertails-100' if role == 'harmful' else 'alpaca-1k'}.")
    a = preset.make(profile, options)
    want = ("mft",) if role == "harmful" else ("bft",)
    if a.kind not in want:
        raise ConfigError(f"restore attack: the {role} phase must be a {'malicious (MFT)' if role == 'harmful' else 'benign (BFT)'} "
                          f"preset, {name!r} is {a.kind}; e.g. {'beavertails-100' if role == 'harmful' else 'alpaca-1k'}.")
    return a


class RestoreAttack(Attack):
    """Harmful fine-tuning (its own cached attack stage), then benign fine-tuning of its output."""
    Config = RestoreConfig
    kind = "mft"  # a malicious attack for tables and the leaderboard's worst case

    def __init__(self, cfg: RestoreConfig, name: str, profile: str = "smoke"):
        self.cfg, self.name, self.profile = cfg, name, profile
        self.harmful = _phase(cfg.harmful, cfg.harmful_options, profile, "harmful")
        self.benign = _phase(cfg.benign, cfg.benign_options, profile, "benign")
        self._store = None

    needs_store = True  # phase 1 is an attack stage of the store

    @property
    def data_needs_store(self) -> bool:
        """Whether a phase's data can only be built after ``prepare(store)`` (donor-built responses)."""
        return any(a.data_needs_store for a in (self.harmful, self.benign))

    def prepare(self, store, device: str = "auto", progress: bool = True, log=print) -> None:
        self._store, self._log = store, log
        for a in (self.harmful, self.benign):
            if a.needs_store:
                a.prepare(store, device=device, progress=progress, log=log)

    def preflight(self) -> None:
        for a in (self.harmful, self.benign):
            a.preflight() if a.data_needs_store else a.build_data(0)

    def build_data(self, seed: int = 0) -> tuple[list[dict], dict]:
        r1, i1 = self.harmful.build_data(seed)
        r2, i2 = self.benign.build_data(seed)
        return [dict(r, phase="harmful") for r in r1] + [dict(r, phase="benign") for r in r2], {"harmful": i1, "benign": i2}

    def spec(self) -> dict:
        return {"attack": self.name, "version": VERSION, "config": to_dict(self.cfg),
                "phases": {"harmful": self.harmful.spec(), "benign": self.benign.spec()}}

    def attack(self, ref, out_dir, template: str, seed: int, device: str = "auto", progress: bool = True):
        from sdd_bench.harness.stages import attack_stage
        if self._store is None:
            raise ConfigError(f"attack {self.name!r} runs its harmful phase as a cached stage: call prepare(store) "
                              f"first (the pipeline does).")
        mid, info1, art1 = attack_stage(self._store, ref, self.harmful, template, seed, device, progress,
                                        lambda m: self._log(f"  phase 1: {m}"))
        new, info2 = self.benign.attack(mid, out_dir, template, seed, device=device, progress=progress)
        phases = {}
        for role, info, start, a in (("harmful", info1, ref.identity(), self.harmful),
                                     ("benign", info2, mid.identity(), self.benign)):
            phases[role] = {"attack": a.name, "start_model": start, "steps": info["steps"],
                            "examples_seen": info["examples_seen"], "distinct_examples": info["distinct_examples"],
                            "epochs_run": info["epochs_run"], "seconds": info.get("seconds"),
                            "losses": info.get("losses"), "data_info": info.get("data_info"),
                            "train_config": info.get("train_config")}
        phases["harmful"]["artifact"] = art1.ref()
        out = {"phases": phases, "steps": sum(p["steps"] for p in phases.values()),
               "examples_seen": sum(p["examples_seen"] for p in phases.values()),
               "distinct_examples": sum(p["distinct_examples"] for p in phases.values()),
               "seconds": sum(p["seconds"] or 0.0 for p in phases.values())}
        return new, out


@dataclass(frozen=True)
class RestorePreset(AttackPreset):
    """A named restore attack: fixed overrides of ``RestoreConfig`` (+ user overrides)."""
    name: str
    overrides: dict
    description: str
    Config: ClassVar[type] = RestoreConfig

    def make(self, profile: str, user: dict | None = None) -> RestoreAttack:
        user = dict(user or {})
        flags = sorted(k for k in user if k in _PHASE_FLAGS)
        if flags:
            raise ConfigError(f"attack {self.name!r} has two fine-tuning phases: {', '.join(flags)} must name its phase, "
                              f"e.g. --attack-opt harmful_options={{{flags[0]}: ...}} or "
                              f"--attack-opt benign_options={{{flags[0]}: ...}} (--attack-lr/-epochs/-batch/-steps/"
                              f"-lora do not apply).")
        merged = dict(self.overrides)
        merged.update(user)
        return RestoreAttack(build(RestoreConfig, merged, where=f"attack {self.name!r}"), self.name, profile)
