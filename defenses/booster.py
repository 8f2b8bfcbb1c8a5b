"""``booster``: attenuating harmful perturbation (Huang, Hu, Ilhan, Tekin & Liu, "Booster:
Tackling Harmful Fine-tuning for Large Language Models via Attenuating Harmful Perturbation",
ICLR 2025, arXiv:2409.01586).

Idea: harmful fine-tuning works because a step along the harmful gradient lowers the harmful
loss quickly.  Booster adds to the alignment loss a regulariser that is the harmful loss now
minus the harmful loss after one simulated, normalised harmful gradient step of size α:

    L = L_align(θ) + λ · [ h(θ) − h(θ − α ∇h(θ)/‖∇h(θ)‖) ]

so the alignment stage flattens the harmful-loss descent a later attack would exploit.  As in
the paper, the gradient of the second term is taken at the shifted point with the step
direction treated as a constant (first order, no Hessian).

Defaults and sources, checked against the authors' repository git-disl/Booster (the stored arXiv
HTML of the paper only exposes its opening, so the paper's hyper-parameter text was not read):
- λ 5 and α 0.1: verified.  ``script/alignment/smooth_align.sh`` (commit 30f959ee) defaults to
  ``lamb`` 5 and ``alpha`` 0.1 and is the alignment run the README points to.  The README's update
  rule (commit 03930694) adds λ·(∇h(θ) − ∇h(θ − α g/‖g‖)) to the alignment gradient with
  g/‖g‖ the normalised harmful gradient, which is what ``booster_regularizer`` computes.
- data: alignment = harmful prompts with safe answers (authors: BeaverTails ``is_safe`` rows);
  harmful = unsafe BeaverTails pairs (authors: taken from index 5000 on, ``train.py`` at 30f959ee).
  Here: ``beavertails-defense`` is_safe rows + ``refusals``, and unsafe ``beavertails-defense``
  pairs.
- ``n_align``/``n_harmful`` 5000, lr 5e-4, batch 10, 20 epochs (``max_steps`` 10000 =
  20 × 5000 / 10): verified against the same script (``sample_num`` 5000, ``bad_sample_num`` 5000,
  20 epochs, per-device batch 10, lr 5e-4, constant schedule).  The harmful batch size inside the
  authors' trainer was not checked; here it equals ``batch_size``.  The script also sets weight
  decay 0.1, which this port does not use.
- LoRA r 32: verified (``train.py`` at 30f959ee: rank 32, alpha 4, on q/k/v only; here alpha is
  2·r and adapters sit on all linear layers).  Max length 256 matches the same ``train.py``.
- smoke: LoRA r 16, lr 2e-4, 40 steps × batch 8 (harmful batch 8), max length 192; tiny: 2 steps
  (unchanged).

Where this differs: the harmful batch is drawn from its own shuffled stream each step (the
authors also iterate a separate harmful loader).
"""
from __future__ import annotations

from dataclasses import dataclass

from transformers import Trainer

from sdd_bench.harness.config import param
from sdd_bench.harness.registry import DEFENSES
from sdd_bench.harness.training import load_trainable, train_sft

from . import _common as C
from .base import Defense


@dataclass(frozen=True)
class BoosterConfig:
    lam: float = param(5.0, "regulariser weight λ (paper: 5)", ge=0)
    alpha: float = param(0.1, "simulated harmful step size α (paper: 0.1)", gt=0)
    n_align: int = param(5000, "alignment pairs (harmful prompt → safe answer)", ge=1)
    n_harmful: int = param(5000, "harmful pairs (capped by the defense partition)", ge=1)
    lr: float = param(5e-4, "learning rate (LoRA)", gt=0)
    max_steps: int = param(10000, "optimizer steps (≈ 20 epochs × 5000 / 10)", ge=1)
    batch_size: int = param(10, "batch size (alignment and harmful)", ge=1)
    max_length: int = param(256, "max tokens per example", ge=16)
    lora: bool = param(True, "LoRA (paper) or full fine-tuning")
    lora_r: int = param(32, "LoRA rank", ge=1)


def booster_regularizer(model, harmful_batch: dict, alpha: float):
    """(reg, h0, h1): reg = h(θ) − h(θ − α g/‖g‖) with g = ∇h(θ) detached; reg's gradient is ∇h(θ) − ∇h(θ')."""
    import torch
    named = C.trainable(model)
    h0 = C.lm_loss(model, harmful_batch)
    grads = torch.autograd.grad(h0, [p for _, p in named], retain_graph=True, allow_unused=True)
    grads = [torch.zeros_like(p) if g is None else g.detach() for (_, p), g in zip(named, grads)]
    norm = torch.sqrt(sum((g.float() ** 2).sum() for g in grads)) + 1e-12
    shifted = {n: p - (alpha / norm) * g for (n, p), g in zip(named, grads)}
    h1 = C.lm_loss(model, harmful_batch, params=shifted)
    return h0 - h1, h0.detach(), h1.detach()


class BoosterTrainer(Trainer):
    def __init__(self, *a, harmful=None, lam: float = 5.0, alpha: float = 0.1, **kw):
        super().__init__(*a, **kw)
        self.harmful, self.lam, self.alpha = harmful, lam, alpha
        self.reg_log: list[dict] = []

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        align = C.lm_loss(model, inputs)
        hb = self.harmful.next(C.model_device(model))
        reg, h0, h1 = booster_regularizer(model, hb, self.alpha)
        self.reg_log.append({"align": float(align.detach()), "harmful": float(h0), "harmful_after_step": float(h1),
                             "reg": float(reg.detach())})
        loss = align + self.lam * reg
        return (loss, None) if return_outputs else loss


@DEFENSES.register("booster")
class Booster(Defense):
    Config = BoosterConfig
    PROFILE = {
        "tiny": {"n_align": 16, "n_harmful": 16, "max_steps": 2, "batch_size": 4, "max_length": 64},
        "smoke": {"n_align": 320, "n_harmful": 320, "lr": 2e-4, "lora_r": 16, "max_steps": 40, "batch_size": 8,
                  "max_length": 192},
        "paper": {},
    }
    datasets = ("beavertails-defense", "refusals")

    def build_data(self, seed: int = 0) -> tuple[list[dict], list[dict]]:
        return C.alignment_rows(self.cfg.n_align, seed), C.harmful_rows(self.cfg.n_harmful, seed + 1)

    def defend(self, ref, out_dir, ctx):
        from sdd_bench.harness import models
        c = self.cfg
        align, harmful = self.build_data(ctx.seed)
        device = models.resolve_device(ctx.device)
        model, tok = load_trainable(ref, device)
        hs = C.BatchCycler(C.tokenize(tok, ctx.template, harmful, c.max_length), c.batch_size, tok.pad_token_id,
                           ctx.seed)
        box: dict = {}

        class _T(BoosterTrainer):
            def __init__(self, *a, **kw):
                super().__init__(*a, **kw)
                box["t"] = self

        new, info = train_sft(ref, align, C.lora_train_config(c, ctx.seed), out_dir, ctx.template, device=ctx.device,
                              progress=ctx.progress, name="booster", trainer_cls=_T, model_and_tok=(model, tok),
                              trainer_kwargs={"harmful": hs, "lam": c.lam, "alpha": c.alpha})
        log = box["t"].reg_log
        info["data_stats"] = {"alignment": len(align), "harmful": len(harmful)}
        info["regularizer"] = {"first": log[0] if log else None, "last": log[-1] if log else None}
        return new, info
