"""``simpo``: SimPO preference optimisation on safety preference pairs (Meng, Xia & Chen, "SimPO:
Simple Preference Optimization with a Reference-Free Reward", NeurIPS 2024, arXiv:2405.14734);
one of the SDD paper's (Chen et al., ACL 2025) Table 1 baselines.

Idea: SimPO is DPO without a reference model: the implicit reward of a response is its
length-normalised log-likelihood β·(1/|y|)·log π(y|x), and the loss asks the chosen reward to
beat the rejected one by a margin γ:

    L = −log σ( β/|y_c| · log π(y_c|x) − β/|y_r| · log π(y_r|x) − γ )

As a safety alignment baseline, chosen = a refusal, rejected = the harmful response, for harmful
prompts of the defense partition.  The loss is trl's (``CPOTrainer`` with ``loss_type="simpo"``
and ``cpo_alpha=0``, i.e. no behaviour-cloning term); it is not re-implemented here.

Defaults and sources:
- β 2.5, γ 1.375, lr 1e-6: the official Llama-3-Instruct setting of princeton-nlp/SimPO.  Its
  README hyper-parameter table (commit 005072f8) and
  ``training_configs/llama-3-8b-instruct-simpo.yaml`` (commit 3e9c4cc3) give β 2.5, γ/β 0.55 and
  lr 1e-6, so the absolute margin is γ = 2.5 × 0.55 = 1.375 (trl's ``simpo_gamma`` is that
  absolute margin).  β and lr verified; γ corrected from the earlier rounded 1.4.  The paper's own
  table could not be read (the stored arXiv HTML only exposes its opening).  The README recommends
  a grid over lr 3e-7, 5e-7, 1e-6 and calls lr the most sensitive setting.
- schedule and batch: cosine, warm-up ratio 0.1, 1 epoch, effective batch 128: verified in
  ``training_configs/llama-3-8b-instruct-simpo.yaml`` (commit 1b3e8f3: ``lr_scheduler_type: cosine``,
  ``warmup_ratio: 0.1``, ``num_train_epochs: 1``, per-device batch 2 × ``gradient_accumulation_steps``
  16 on the README's multi-GPU launch = 128).  Here ``batch_size`` 128 as 16 accumulation steps of 8
  on one device; ``epochs`` 1 with ``max_steps`` unset (until version 2: constant lr, batch 8, 500
  steps).  One epoch over our ≤ 1,796 pairs is only ≈ 14 steps — the authors' epoch is over
  UltraFeedback (≈ 60K pairs); kept, since the authors give no step count.  AdamW (``adamw_torch``),
  weight decay 0 and clipping 1.0 are transformers defaults the config does not override.
  ``max_length`` 512 (authors 2048 / prompt 1800): our choice, BeaverTails pairs are short.
- chosen refusals: fixed refusal templates (``_common.REFUSAL_TEMPLATES``), one drawn per prompt
  — not responses sampled from ``refusals``, whose text is written for other prompts.
- rejected: the BeaverTails harmful response of the same prompt (``beavertails-defense``).
- ``n_pairs`` 2000 (capped by the partition's distinct unsafe prompts): our choice.
- smoke: LoRA r 16 (α 32, all linear; our choice), lr 1e-4 (LoRA needs a larger lr), 40 steps × batch 4
  pairs (no accumulation), max length 192; cosine and 10% warm-up as the authors.  tiny: 2 steps.  The SDD paper does not give its SimPO settings.
"""
from __future__ import annotations

import random
import time
from dataclasses import dataclass

from sdd_bench.harness.config import param
from sdd_bench.harness.registry import DEFENSES
from sdd_bench.harness.training import checkpointing_argument

from . import _common as C
from .base import BuiltData, Defense, prompts_of


@dataclass(frozen=True)
class SimPOConfig:
    beta: float = param(2.5, "reward scale β (SimPO, instruct setting)", gt=0)
    gamma: float = param(1.375, "target reward margin γ (SimPO Llama-3-Instruct: 2.5 × 0.55)", ge=0)
    n_pairs: int = param(2000, "preference pairs (capped by the defense partition)", ge=1)
    lr: float = param(1e-6, "learning rate (SimPO Llama-3-Instruct config)", gt=0)
    epochs: float = param(1.0, "passes over the pairs (SimPO config: 1)", gt=0)
    max_steps: int | None = param(None, "optimizer steps; overrides epochs (profiles set it)", ge=1)
    batch_size: int = param(128, "preference pairs per optimizer step (SimPO config: 2 × 16 accumulation × GPUs "
                                 "= 128)", ge=1)
    grad_accum: int = param(16, "accumulation steps the batch is split into (SimPO config: 16)", ge=1)
    scheduler: str = param("cosine", "lr schedule (SimPO config: cosine)", choices=("constant", "linear", "cosine"))
    warmup_ratio: float = param(0.1, "warm-up share of the steps (SimPO config: 0.1)", ge=0, le=1)
    weight_decay: float = param(0.0, "AdamW weight decay (config sets none: transformers default 0)", ge=0)
    max_grad_norm: float | None = param(1.0, "gradient clipping (config sets none: transformers default 1.0)", gt=0)
    max_length: int = param(512, "max tokens of prompt + response (our choice; authors 2048)", ge=16)
    lora: bool = param(False, "LoRA instead of full fine-tuning (authors: full)")
    lora_r: int = param(16, "LoRA rank (if lora; our choice)", ge=1)
    lora_alpha: float = param(32.0, "LoRA α (if lora; our choice)", gt=0)


def preference_pairs(n: int, seed: int) -> list[dict]:
    """Harmful prompt, chosen = a refusal template, rejected = its harmful response (text, not yet templated)."""
    rng = random.Random(seed)
    return [{"prompt": r["prompt"], "chosen": C.refusal_for(r["prompt"], rng), "rejected": r["response"]}
            for r in C.harmful_rows(n, seed)]


def templated(pairs: list[dict], tok, template: str) -> list[dict]:
    """Render with the recorded template: prompt = generation prompt, responses end with the end-of-turn text."""
    from sdd_bench.harness.templates import render_prompt, response_suffix
    suf = response_suffix(tok, template)
    return [{"prompt": render_prompt(tok, template, p["prompt"]), "chosen": p["chosen"] + suf,
             "rejected": p["rejected"] + suf} for p in pairs]


def make_trainer(model, tok, rows: list[dict], cfg: SimPOConfig, out_dir, device: str, seed: int, lora: bool,
                 progress: bool = False):
    from datasets import Dataset
    from trl.experimental.cpo import CPOConfig, CPOTrainer

    from sdd_bench.harness.training import TrainConfig, warmup_steps
    steps = dict(max_steps=cfg.max_steps) if cfg.max_steps is not None else dict(num_train_epochs=cfg.epochs)
    # warm-up as an integer step count, computed like every other training run here (harness.training)
    warm = warmup_steps(TrainConfig(lr=cfg.lr, epochs=cfg.epochs, max_steps=cfg.max_steps, batch_size=cfg.batch_size,
                                    grad_accum=cfg.grad_accum, warmup_ratio=cfg.warmup_ratio), len(rows))
    args = CPOConfig(
        output_dir=str(out_dir), loss_type="simpo", cpo_alpha=0.0, beta=cfg.beta, simpo_gamma=cfg.gamma,
        learning_rate=cfg.lr, per_device_train_batch_size=max(1, cfg.batch_size // cfg.grad_accum),
        gradient_accumulation_steps=cfg.grad_accum, lr_scheduler_type=cfg.scheduler, warmup_steps=warm,
        weight_decay=cfg.weight_decay, max_grad_norm=0.0 if cfg.max_grad_norm is None else cfg.max_grad_norm,
        max_length=cfg.max_length, seed=seed, data_seed=seed, logging_steps=1, **steps,
        save_strategy="no", report_to=[], remove_unused_columns=False, dataloader_num_workers=0,
        use_cpu=not device.startswith("cuda"), bf16=device.startswith("cuda"), **checkpointing_argument(False),
        disable_tqdm=not progress,
    )
    peft_config = None
    if lora:
        from peft import LoraConfig
        peft_config = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=0.0,
                                 target_modules="all-linear", task_type="CAUSAL_LM")
    return CPOTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tok,
                      peft_config=peft_config)


MECHANISM_PAIRS = 64  # held-out preference pairs: as many as the smoke profile's harmful evaluation prompts


def held_out_pairs(n: int, seed: int) -> list[dict]:
    """``n`` preference pairs SimPO never trains on, built like ``preference_pairs`` from the unsafe pairs of
    BeaverTails' *attack* partition (DESIGN §10): chosen = a refusal template, rejected = the harmful answer."""
    rng = random.Random(seed)
    pool = C.unsafe_pairs("beavertails-attack")
    return [{"prompt": r["prompt"], "chosen": C.refusal_for(r["prompt"], rng), "rejected": r["response"]}
            for r in rng.sample(pool, n)]


def reward_margins(ref, pairs: list[dict], cfg: SimPOConfig, template: str, device: str) -> list[float]:
    """SimPO's implicit reward margin per pair, β·(mean log π(chosen) − mean log π(rejected)) over answer tokens
    (``harness.reference_loss.per_item_losses``: the mean NLL per answer token under the cell's template)."""
    from sdd_bench.harness import models
    from sdd_bench.harness.reference_loss import per_item_losses
    model, tok = models.load(ref, device=models.resolve_device(device))
    chosen, _ = per_item_losses(model, tok, template, [{"prompt": p["prompt"], "response": p["chosen"]} for p in pairs],
                                max_length=cfg.max_length)
    rejected, _ = per_item_losses(model, tok, template,
                                  [{"prompt": p["prompt"], "response": p["rejected"]} for p in pairs],
                                  max_length=cfg.max_length)
    del model
    return [cfg.beta * (r - c) for c, r in zip(chosen, rejected)]  # NLLs: −log π, so the sign flips


@DEFENSES.register("simpo")
class SimPO(Defense):
    Config = SimPOConfig
    PROFILE = {
        "tiny": {"n_pairs": 8, "max_steps": 2, "batch_size": 2, "grad_accum": 1, "max_length": 64, "lr": 1e-3},
        "smoke": {"n_pairs": 320, "lora": True, "lr": 1e-4, "max_steps": 40, "batch_size": 4, "grad_accum": 1,
                  "max_length": 192},
        "paper": {},
    }
    datasets = ("beavertails-defense",)
    version = 2  # 2: the authors' cosine schedule, 10% warm-up, batch 128 over 1 epoch
    deviations = ("one epoch over ≤ 1,796 safety pairs (authors: one epoch over ~60K UltraFeedback pairs)",
                  "max_length 512 (authors 2048)")

    mechanism_runs_models = True

    def mechanism(self, probe) -> dict:
        """SimPO's mechanism (paper §2: the length-normalised reward of the chosen answer beats the rejected one's by
        the margin γ): on held-out harmful prompts (``held_out_pairs``), the share of pairs whose reward margin
        (``reward_margins``) exceeds γ, the refusal preferred to the harmful answer by what the loss asks.  Installed
        when the Wilson lower bound of that share exceeds 0.5 (``share_installed``; our criterion); the start
        model's share is recorded beside it."""
        from statistics import mean

        from .base import share_installed
        pairs = held_out_pairs(MECHANISM_PAIRS, probe.ctx.seed)
        before = reward_margins(probe.start, pairs, self.cfg, probe.ctx.template, probe.ctx.device)
        after = reward_margins(probe.defended, pairs, self.cfg, probe.ctx.template, probe.ctx.device)
        return share_installed("held-out pairs with reward margin > γ", [m > self.cfg.gamma for m in after], 0.5,
                               "SimPO paper §2: reward margin γ between chosen and rejected",
                               start_value=sum(m > self.cfg.gamma for m in before) / len(before),
                               mean_margin=mean(after), start_mean_margin=mean(before), gamma=self.cfg.gamma,
                               data={"pairs": "beavertails-attack unsafe prompts: refusal template vs harmful answer "
                                              "(never trained on by a defense)"})

    def build_data(self, seed: int = 0) -> BuiltData:
        rows = preference_pairs(self.cfg.n_pairs, seed)
        return BuiltData(rows, harmful_prompts=prompts_of(rows))

    def defend(self, ref, out_dir, ctx, built=None):
        import shutil

        from transformers import set_seed

        from sdd_bench.harness import models
        from sdd_bench.harness.training import check_finite, load_trainable
        c = self.cfg
        device = models.resolve_device(ctx.device)
        set_seed(ctx.seed)
        model, tok = load_trainable(ref, device)
        rows = templated(self.data_for(ctx, built).rows, tok, ctx.template)
        trainer = make_trainer(model, tok, rows, c, out_dir / "_trainer", device, ctx.seed, c.lora, ctx.progress)
        t0 = time.time()
        trainer.train()
        dt = time.time() - t0
        shutil.rmtree(out_dir / "_trainer", ignore_errors=True)
        check_finite(trainer.state.log_history, trainer.model, "defense:simpo", c)
        new = C.save_trained(trainer.model, tok, ref, out_dir, lora=c.lora, name="simpo")
        hist = trainer.state.log_history
        info = {"examples": len(rows), "steps": trainer.state.global_step, "seconds": dt,
                "seconds_per_step": dt / max(1, trainer.state.global_step), "template": ctx.template,
                "device": device, "losses": [h["loss"] for h in hist if "loss" in h],
                "reward_margins": [h["rewards/margins"] for h in hist if "rewards/margins" in h],
                "trainer": "trl.experimental.cpo.CPOTrainer(loss_type='simpo', cpo_alpha=0)"}
        return new, info
