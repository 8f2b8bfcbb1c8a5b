"""Fine-tuning attacks: malicious (MFT), benign (BFT) and poison mixes.

* MFT — Qi et al., "Fine-tuning Aligned Language Models Compromises Safety, Even When Users
  Do Not Intend To!" (ICLR 2024, arXiv:2310.03693): full fine-tuning on N harmful
  (instruction, response) pairs; their defaults lr 5e-5, 5 epochs, batch 10 (``recipe: qi2023``).
  SEAM (Wang et al., arXiv:2505.12186) attacks with 1K samples, 1 epoch, full fine-tuning and an
  lr sweep {2e-5, 5e-5, 8e-5, 1e-4, 2e-4} (``recipe: seam``, lr 2e-5 unless overridden).
* BFT — benign fine-tuning on ShareGPT / Alpaca / SST-2 / AG News / GSM8K (Qi et al. 2023's benign
  case; the Vaccine/Booster task set); defaults lr 2e-5, 1 epoch, batch 10 (``recipe: benign``;
  our choice, matching Qi et al.'s benign Alpaca run in lr and epochs).
* Poison mix — Vaccine/Booster protocol (Huang et al. 2024): n task examples of which a fraction
  p are harmful BeaverTails pairs.

N counts training examples; a dataset smaller than N is cycled and the attack's info says how
many times.  ``advbench-N`` trains on AdvBench goals paired with *full harmful responses* built by a
donor model (``attacks/donor.py``); ``advbench-prefix-N`` is the affirmative-prefix attack on
AdvBench's own ``target`` strings ("Sure, here is …").  Harmful attack data come only from attack partitions
(``advbench``, ``beavertails-attack``), disjoint from defense data and evaluation prompts.

**Budgets.**  A recipe runs epochs × ⌈N / batch⌉ optimizer steps (Qi et al. 2023 at N = 10, 50, 100, 1000: 5, 25,
50, 500).  A profile's ``max_steps`` is a *cap* on that count, never a fixed length (DESIGN §5; issue 36): smoke caps
at 40 (so 5, 25, 40, 40), tiny at 2, paper not at all.  Until 2026-12-07 the cap replaced the recipe, so every
smoke attack ran 40 steps (a 10-shot attack 40 epochs); those records are withdrawn (docs/withdrawn.md).
Every record states the dose that ran, from the trainer's step count (``training.dose``): optimizer steps,
``examples_seen``, ``distinct_examples``, ``epochs_run``.  ``steps`` (an attacker budget's steps axis) sets an exact
step count instead, overriding the epochs and the cap.

Options for an attacker who tunes (issue 23; docs/attacker_budget.md).  Their defaults leave every attack as the
recipe has it, and at their defaults they are left out of the attack's spec (``LATER_FIELDS``), so no existing key
changes:

* ``optimizer`` (default ``adamw_torch``: every recipe's source trains with AdamW; ``sgd``: SEAM's SGD attack), passed
  to transformers' ``optim``;
* ``warmup_ratio`` (default None: the recipe's, 0 for Qi et al. 2023's code, 10% for SEAM's script); on a constant
  recipe a warm-up runs as ``constant_with_warmup`` (transformers' ``constant`` ignores warm-up);
* ``seed`` (default None: the cell's seed, as before): the attack's own seed, so an attacker budget can rerun the
  attack with other seeds on one defended model;
* ``checkpoints`` (default none): fractions of the steps after which the model is also saved during the one attack
  run (a ``TrainerCallback``), each then evaluated as its own cached stage (record ``trajectory``); the
  ``--trajectory`` default 10/25/50/100% is the issue's example.
"""
from __future__ import annotations

import random
from dataclasses import dataclass

from sdd_bench.harness import data
from sdd_bench.harness.config import build, param, to_dict
from sdd_bench.harness.errors import ConfigError
from sdd_bench.harness.training import TrainConfig, checkpoint_steps, dose, total_steps, train_sft

from .base import Attack, AttackPreset

ATTACK_DATASETS = ("advbench-responses", "advbench", "beavertails-attack", "sharegpt", "alpaca-gpt4-1k", "dolly-1k", "sst2-train",
                   "agnews-train", "gsm8k-train")
HARMFUL = ("advbench-responses", "advbench", "beavertails-attack")
DONOR = "advbench-responses"  # not a file: built by attacks/donor.py (needs the store: ``prepare``)


@dataclass(frozen=True)
class Recipe:
    """One attack recipe's optimisation settings, each from its source (``source``/``notes``)."""
    lr: float                                   # peak learning rate
    epochs: float                               # passes over the N examples
    batch_size: int                             # examples per optimizer step
    scheduler: str                              # transformers lr schedule
    warmup_ratio: float                         # share of steps warming up
    weight_decay: float                         # AdamW weight decay
    max_grad_norm: float | None                 # clipping (None: none)
    lora_r: int                                 # LoRA shape when the attack runs with ``lora: true``
    lora_alpha: float
    lora_dropout: float
    lora_target_modules: tuple[str, ...] | str
    source: str                                 # where the values come from
    notes: tuple[str, ...] = ()                 # what is our choice rather than the source's


RECIPES = {
    # Qi et al. 2023 (arXiv:2310.03693), code LLM-Tuning-Safety/LLMs-Finetuning-Safety @2be2fa0:
    # lr 5e-5, 5 epochs, batch 10 (paper §4.2 / its scripts); llama2/configs/training.py: weight_decay 0.0;
    # llama2/utils/train_utils.py: no gradient clipping, no warm-up, torch StepLR(γ 0.85) stepped once per epoch.
    "qi2023": Recipe(5e-5, 5.0, 10, "constant", 0.0, 0.0, None, 16, 32, 0.0, "all-linear",
                     "Qi et al. 2023 harmful-examples attack (paper + LLMs-Finetuning-Safety llama2 code)",
                     ("schedule: constant (our choice; the authors decay lr ×0.85 after each epoch, a per-epoch "
                      "StepLR that transformers' schedules do not offer)",
                      "LoRA shape (only with lora: true; the paper attacks with full fine-tuning): r 16, α 32 on "
                      "all linear layers, our choice")),
    # SEAM (arXiv:2505.12186) attack script, values as given in issue 18 (the authors' repository was not
    # reachable from here): per-device batch 4 (250 steps on 1K examples = 1 epoch), cosine, 10% warm-up,
    # weight decay 0.01, no clipping; LoRA attack with peft defaults (r 8, α 8, dropout 0, Llama: q_proj/v_proj).
    "seam": Recipe(2e-5, 1.0, 4, "cosine", 0.1, 0.01, None, 8, 8, 0.0, ("q_proj", "v_proj"),
                   "SEAM attack script: 1 epoch, batch 4, cosine, 10% warm-up, wd 0.01, no clipping, lr sweep "
                   "from 2e-5; LoRA = peft defaults"),
    # benign fine-tuning: Qi et al.'s benign Alpaca case for lr/epochs; the rest follows the qi2023 code.
    "benign": Recipe(2e-5, 1.0, 10, "constant", 0.0, 0.0, None, 16, 32, 0.0, "all-linear",
                     "benign fine-tuning (Qi et al. 2023 benign case lr/epochs; their code: no clipping, wd 0)",
                     ("lr 2e-5, 1 epoch, batch 10: our choice matching Qi et al.'s benign Alpaca run",
                      "schedule constant and LoRA shape r 16 / α 32 all-linear, as qi2023")),
}


# options added after version 2 of the attack spec: dropped from ``spec()`` while at their defaults, so the attack
# (and cell) keys of every existing configuration are unchanged
LATER_FIELDS = {"warmup_ratio": None, "seed": None, "checkpoints": [], "steps": None}
# options that add evaluations without changing the attacked model: declared in the core, which reads them off records
# (harness/config.py; harness/pipeline.py: record_cell_keys; the report's settings ignore them)
from sdd_bench.harness.config import EVAL_ONLY_OPTIONS  # noqa: E402,F401


@dataclass(frozen=True)
class AttackConfig:
    dataset: str = param("advbench-responses", "training data (advbench-responses: goals + donor responses; "
                         "advbench: goals + AdvBench target prefixes)", choices=ATTACK_DATASETS)
    n: int = param(100, "training examples (cycled if the dataset is smaller)", ge=1)
    poison_ratio: float = param(0.0, "fraction of examples replaced by harmful pairs (Vaccine/Booster)", ge=0, le=1)
    poison_dataset: str = param("beavertails-attack", "source of poison pairs", choices=HARMFUL)
    recipe: str = param("qi2023", "optimisation settings (lr, epochs, batch, schedule, warm-up, weight decay, "
                                  "clipping, LoRA shape); see RECIPES", choices=tuple(RECIPES))
    lr: float | None = param(None, "learning rate (None: the recipe's)", gt=0)
    epochs: float | None = param(None, "epochs (None: the recipe's)", gt=0)
    batch_size: int | None = param(None, "batch size (None: the recipe's)", ge=1)
    max_steps: int | None = param(None, "cap on optimizer steps: min(cap, the recipe's epochs × ⌈N / batch⌉) "
                                  "(profiles set it)", ge=1)
    steps: int | None = param(None, "exact optimizer steps, overriding the recipe's epochs and the cap (an "
                              "attacker budget's steps axis)", ge=1)
    lora: bool = param(False, "LoRA attack (default: full fine-tuning, as in the papers)")
    lora_r: int | None = param(None, "LoRA rank (None: the recipe's)", ge=1)
    lora_alpha: float | None = param(None, "LoRA α (None: the recipe's)", gt=0)
    optimizer: str = param("adamw_torch", "optimizer, passed to transformers' ``optim`` (SEAM also attacks with sgd)",
                           choices=("adamw_torch", "sgd"))
    warmup_ratio: float | None = param(None, "share of the steps warming up (None: the recipe's; with the recipe's "
                                       "constant schedule a warm-up means constant_with_warmup)", ge=0, lt=1)
    seed: int | None = param(None, "the attack's own training seed (data sample and order, LoRA init; None: the "
                             "cell's seed). An attacker budget varies it without re-training the defense", ge=0)
    checkpoints: tuple[float, ...] = param((), "attack trajectory: also save the model after these fractions of the "
                                           "steps (e.g. [0.1, 0.25, 0.5, 1.0]) in this one run; each is evaluated "
                                           "like the final model (record: trajectory)")
    max_length: int = param(256, "max tokens per example", ge=16)
    responses_file: str | None = param(None, "advbench-responses: JSONL of {prompt, response} instead of the donor")
    donor_model: str | None = param(None, "advbench-responses: donor model (None: the profile's raw chat model)")
    donor_attack: str = param("beavertails-1k", "advbench-responses: attack applied to the donor first ('none': as is)")
    donor_max_new_tokens: int = param(512, "advbench-responses: donor response length (smoke: 128)", ge=8)
    donor_min_words: int = param(8, "advbench-responses: shorter donor answers are dropped", ge=0)
    donor_drop_incoherent: bool = param(True, "advbench-responses: drop degenerate donor answers (tiny: off, its "
                                        "random-init model only writes gibberish)")

    def resolved(self) -> dict:
        r = RECIPES[self.recipe]
        warmup = r.warmup_ratio if self.warmup_ratio is None else self.warmup_ratio
        # transformers' "constant" schedule ignores warm-up: a warm-up on a constant recipe is constant_with_warmup
        scheduler = "constant_with_warmup" if warmup > 0 and r.scheduler == "constant" else r.scheduler
        out = {"lr": self.lr or r.lr, "epochs": self.epochs or r.epochs, "batch_size": self.batch_size or r.batch_size,
               "scheduler": scheduler, "warmup_ratio": warmup, "weight_decay": r.weight_decay,
               "max_grad_norm": r.max_grad_norm, "recipe_source": r.source}
        if self.lora:
            out.update(lora_r=self.lora_r or r.lora_r, lora_alpha=self.lora_alpha or r.lora_alpha,
                       lora_dropout=r.lora_dropout, lora_target_modules=r.lora_target_modules)
        if r.notes:
            out["recipe_notes"] = list(r.notes)
        return out


class FinetuneAttack(Attack):
    """Build the attack data and fine-tune; ``kind`` is mft (harmful), bft (benign) or poison."""
    Config = AttackConfig
    PROFILE = {"tiny": {"max_steps": 2, "max_length": 64, "donor_max_new_tokens": 8, "donor_min_words": 0,
                        "donor_drop_incoherent": False},
               # smoke: 40 steps of 128-token examples (a BeaverTails prompt + ~100 response tokens) keep a full
               # fine-tuning attack near 5 min on 2 CPU cores; longer responses are truncated (sizes, not semantics)
               "smoke": {"max_steps": 40, "max_length": 128, "donor_max_new_tokens": 128}, "paper": {}}

    def __init__(self, cfg: AttackConfig, name: str = "custom", profile: str = "smoke"):
        self.cfg, self.name, self.profile = cfg, name, profile
        self._donor: tuple[list[dict], dict] | None = None
        bad = [f for f in cfg.checkpoints if not 0.0 < f <= 1.0]
        if bad:
            raise ConfigError(f"attack {name!r}: checkpoints must be fractions of the attack's steps in (0, 1], got "
                              f"{list(cfg.checkpoints)}; e.g. checkpoints=[0.1,0.25,0.5,1.0].")
        if cfg.dataset != DONOR and (cfg.responses_file or cfg.donor_model):
            raise ConfigError(f"attack {name!r}: responses_file / donor_model apply to dataset advbench-responses "
                              f"only (this attack trains on {cfg.dataset}).")

    @property
    def needs_store(self) -> bool:
        """Whether ``prepare(store)`` must run before ``build_data`` (donor-built responses)."""
        return self.cfg.dataset == DONOR or self.cfg.poison_dataset == DONOR and self.cfg.poison_ratio > 0

    @property
    def data_needs_store(self) -> bool:
        """Whether ``build_data`` can only run after ``prepare(store)`` (donor-built responses); the pipeline's
        preflight then checks the inputs with :meth:`preflight` instead of building the data.  A ``responses_file``
        needs no store: its rows are read up front, so the overlap of its prompts with the evaluation prompts is
        checked before the attack trains."""
        return self.needs_store and not self.cfg.responses_file

    def prepare(self, store, device: str = "auto", progress: bool = True, log=print) -> None:
        """Build (or load from the store) the donor responses this attack trains on."""
        if self.needs_store and self._donor is None:
            from .donor import build_responses
            self._donor = build_responses(store, self.cfg, self.profile, device=device, progress=progress, log=log)

    def preflight(self) -> None:
        """Check (load, checksum) every input of the donor-built responses before any work is done."""
        if self.cfg.responses_file:
            from .donor import read_responses_file
            read_responses_file(self.cfg.responses_file)
            return
        data.load("advbench")
        if self.cfg.donor_attack != "none":
            from sdd_bench.harness.registry import ATTACKS
            ATTACKS.get(self.cfg.donor_attack).make(self.profile).build_data(0)
        for d in {self.cfg.dataset, self.cfg.poison_dataset if self.cfg.poison_ratio > 0 else DONOR} - {DONOR}:
            data.load(d)

    def _load(self, name: str) -> list[dict]:
        if name != DONOR:
            return data.load(name)
        if self._donor is None and self.cfg.responses_file:  # the user's file: no store needed
            from .donor import build_responses
            self._donor = build_responses(None, self.cfg, self.profile)
        if self._donor is None:
            raise ConfigError(f"attack {self.name!r} trains on donor-built AdvBench responses: call "
                              f"prepare(store) first (the pipeline does).")
        return [dict(r) for r in self._donor[0]]

    @property
    def kind(self) -> str:
        if self.cfg.dataset in HARMFUL:
            return "mft"
        return "poison" if self.cfg.poison_ratio > 0 else "bft"

    def build_data(self, seed: int = 0) -> tuple[list[dict], dict]:
        c = self.cfg
        rng = random.Random(seed)
        src = self._load(c.dataset)
        if c.dataset == "beavertails-attack":
            src = [r for r in src if not r["is_safe"]]
        n_poison = round(c.n * c.poison_ratio) if c.dataset not in HARMFUL else 0
        n_main = c.n - n_poison
        main, cycles = _take(src, n_main, rng)
        rows = [dict(r, kind="harmful" if c.dataset in HARMFUL else "benign") for r in main]
        info = {"dataset": c.dataset, "available": len(src), "examples": c.n, "cycled": cycles > 1, "cycles": cycles,
                "distinct_examples": len({data.normalize(r["prompt"]) + "\0" + r["response"] for r in main})}
        if c.dataset == DONOR:
            info["responses"] = self._donor[1]
        if n_poison:
            pool = [r for r in self._load(c.poison_dataset) if not r.get("is_safe", False)]
            poison, pc = _take(pool, n_poison, rng)
            rows += [dict(r, kind="harmful") for r in poison]
            rng.shuffle(rows)
            info.update(poison=n_poison, poison_dataset=c.poison_dataset, poison_cycles=pc)
        info["poison_ratio_actual"] = sum(r["kind"] == "harmful" for r in rows) / len(rows) if self.kind != "mft" else 1.0
        return rows, info

    def train_seed(self, seed: int) -> int:
        """The seed the attack trains with: its own ``seed`` option, else the cell's."""
        return seed if self.cfg.seed is None else self.cfg.seed

    def recipe_steps(self) -> int:
        """Optimizer steps the recipe asks for on N examples, uncapped: epochs × ⌈N / batch⌉ (Trainer's count)."""
        r = self.cfg.resolved()
        return total_steps(TrainConfig(epochs=r["epochs"], batch_size=r["batch_size"]), self.cfg.n)

    def step_plan(self) -> tuple[int, str]:
        """The one decision on how many optimizer steps this attack runs, and why: (steps, source) with source
        ``exact`` (the ``steps`` option), ``cap`` (the profile's ``max_steps`` is below the recipe's steps: the cap
        binds) or ``recipe`` (epochs × ⌈N / batch⌉, at or under any cap)."""
        if self.cfg.steps is not None:
            return self.cfg.steps, "exact"
        rec = self.recipe_steps()
        if self.cfg.max_steps is not None and self.cfg.max_steps < rec:
            return self.cfg.max_steps, "cap"
        return rec, "recipe"

    def planned_steps(self) -> int:
        """Optimizer steps this attack runs: ``steps`` if set, else min(the profile's cap, the recipe's steps)."""
        return self.step_plan()[0]

    @property
    def checkpoints(self) -> tuple[float, ...]:
        """The trajectory fractions of its ``checkpoints`` option."""
        return tuple(self.cfg.checkpoints)

    def _trainer_steps(self) -> int | None:
        """``TrainConfig.max_steps`` (an exact count there): set when the steps are not the recipe's epochs."""
        steps, source = self.step_plan()
        return None if source == "recipe" else steps

    def train_config(self, seed: int) -> TrainConfig:
        """The training config for a cell of seed ``seed`` (the attack's own ``seed`` option wins)."""
        c, r, seed = self.cfg, self.cfg.resolved(), self.train_seed(seed)
        lora = {k: r[k] for k in ("lora_r", "lora_alpha", "lora_dropout", "lora_target_modules") if k in r}
        return TrainConfig(lr=r["lr"], epochs=r["epochs"], batch_size=r["batch_size"], max_steps=self._trainer_steps(),
                           scheduler=r["scheduler"], warmup_ratio=r["warmup_ratio"], weight_decay=r["weight_decay"],
                           max_grad_norm=r["max_grad_norm"], lora=c.lora, optimizer=c.optimizer,
                           max_length=c.max_length, seed=seed, **lora)

    def spec(self) -> dict:
        ds = [self.cfg.dataset] + ([self.cfg.poison_dataset] if self.cfg.poison_ratio > 0 else [])
        fps = []
        config = to_dict(self.cfg)
        for k, default in LATER_FIELDS.items():  # at their defaults, options added later leave the keys as they were
            if config.get(k) == default:
                config.pop(k)
        if config.get("checkpoints"):
            config["checkpoints"] = sorted(set(config["checkpoints"]))
        out = {"attack": self.name, "version": 2, "config": config, "resolved": self.cfg.resolved()}
        # Before the cap was a cap, a set max_steps ran exactly max_steps.  Where the recipe's steps are fewer the run
        # now differs from what that key stored, so the key names the steps; where the cap binds the run is the same
        # and the key is unchanged (the published capped records stay valid).
        steps, source = self.step_plan()
        if source == "recipe" and self.cfg.max_steps is not None and steps < self.cfg.max_steps:
            out["steps_run"] = steps
        for d in ds:
            if d == DONOR:
                from .donor import donor_spec
                out["responses"] = donor_spec(self.cfg, self.profile)
            else:
                fps += data.get(d).fingerprints()
        out["data"] = fps
        return out

    def attack(self, ref, out_dir, template: str, seed: int, device: str = "auto", progress: bool = True):
        seed = self.train_seed(seed)
        rows, info = self.build_data(seed)
        tcfg = self.train_config(seed)
        total = total_steps(tcfg, len(rows))
        at = checkpoint_steps(self.cfg.checkpoints, total) if self.cfg.checkpoints else {}
        new, tinfo = train_sft(ref, rows, tcfg, out_dir, template, device=device, progress=progress,
                               name=f"attack:{self.name}", save_at_steps=[s for s in at if s < total])
        tinfo["data_info"] = info
        # the dose that ran, from the trainer's own step count (training.dose), never from the recipe
        ran = dose(tinfo["steps"], tcfg.batch_size, len(rows), tcfg.grad_accum)
        tinfo.update(examples_seen=ran["examples_seen"], distinct_examples=info["distinct_examples"],
                     epochs_run=ran["epochs_run"], recipe_steps=self.recipe_steps(), step_cap=self.cfg.max_steps)
        if self.cfg.checkpoints:  # the trajectory: each saved step, then the final model
            for c in tinfo.get("checkpoints", []):
                c.update(fraction=c["step"] / total, requested=at[c["step"]],
                         examples_seen=dose(c["step"], tcfg.batch_size, len(rows), tcfg.grad_accum)["examples_seen"])
            tinfo["trajectory_steps"] = {"total": total, "requested": sorted(set(self.cfg.checkpoints)),
                                         "final_requested": at.get(total, [])}
        return new, tinfo


def _take(src: list[dict], n: int, rng: random.Random) -> tuple[list[dict], int]:
    if not src:
        raise ConfigError("attack dataset is empty")
    order = list(range(len(src)))
    rng.shuffle(order)
    out = [src[order[i % len(src)]] for i in range(n)]
    return out, -(-n // len(src))


@dataclass(frozen=True)
class Preset(AttackPreset):
    """A named attack: fixed overrides of ``AttackConfig`` (+ profile sizes + user overrides)."""
    name: str
    overrides: dict
    description: str

    def make(self, profile: str, user: dict | None = None) -> FinetuneAttack:
        merged = dict(FinetuneAttack.PROFILE.get(profile, {}))
        merged.update(self.overrides)
        merged.update(user or {})
        if isinstance(merged.get("checkpoints"), str):  # --attack-opt checkpoints=0.1,0.5,1.0 (YAML reads a string)
            try:
                merged["checkpoints"] = [float(x) for x in merged["checkpoints"].split(",") if x.strip()]
            except ValueError:
                raise ConfigError(f"attack {self.name!r}: checkpoints={merged['checkpoints']!r} is not a list of "
                                  f"fractions; e.g. checkpoints=[0.1,0.25,0.5,1.0].") from None
        return FinetuneAttack(build(AttackConfig, merged, where=f"attack {self.name!r}"), self.name, profile)
