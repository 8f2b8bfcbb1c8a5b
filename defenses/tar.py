"""``tar``: Tamper-Resistant Safeguards (Tamirisa, Bharathi, Phan, Zhou, Gatti, Suresh, Lin, Wang,
Wang, Arel, Zou, Song, Li, Hendrycks & Mazeika, "Tamper-Resistant Safeguards for Open-Weight
LLMs", ICLR 2025, arXiv:2408.00761).

Idea: adversarial meta-learning against fine-tuning.  Each outer step simulates a tampering
attack — an inner-loop adversary fine-tunes a *copy* of the weights on harmful data for K steps
— and measures a tamper-resistance loss at the attacked weights; the outer update combines the
(first-order) gradient of that loss, taken at the attacked weights and applied to the original
ones, with the gradient of a retain loss that keeps benign behaviour:

    g = λ_TR · mean_k ∇_{θ'_k} L_TR(θ'_k)  +  λ_retain · ∇_θ L_retain(θ),
    θ'_0 = θ,  θ'_{k+1} = θ'_k − η_adv ∇ L_harm(θ'_k)

The outer weights are untouched until the meta-step (the optimizer step on g).

Defaults and sources:
- λ_TR 4, λ_retain 1, inner steps K 64, adversary optimizer AdamW, outer lr 2e-5, 750 outer
  steps, batch 8: verified against the authors' script for the paper's main setting
  (weaponization knowledge, biosecurity, Llama-3-8B-Instruct): ``run_tar_bio.sh`` in
  rishub-tamirisa/tamper-resistance, commit 6b76bf5b (``tar_tamper_resistance_grad_scale`` 4.0,
  ``tar_retain_scale`` 1.0, ``tar_inner_loop_steps`` 64, ``lr`` 2e-05, ``max_steps`` 750,
  ``batch_size`` 8; its adversary batch size is 4, here the shared ``batch_size``).  The inner
  optimizer is ``torch.optim.AdamW`` in ``tar_training_loop`` (``modules/training.py``, commit
  0392cbbb).  The stored arXiv HTML only exposes the paper's opening, so its own hyper-parameter
  table was not read.
- adversary lr 2e-5: the authors sample it per inner run from {2e-6, 2e-5, 4e-5} (same script);
  we use the middle value of that pool, one fixed adversary (the paper samples adversaries from
  a pool of attack configurations).
- ``tr_every`` 1: the bio script evaluates L_TR only every 4th inner step
  (``tar_inner_loop_subsample`` 4, described as a compute-saving subsampling trick); the
  harmful-request script evaluates it at every step.  Kept at 1.  The authors also weight the
  L_TR gradients over inner steps with an exponential schedule (``schedule_lambda`` 0.0625, later
  steps weigh more) and split λ_TR across 1–2 sampled adversary tasks; here the evaluations are
  averaged with equal weight.
- For reference, the authors' harmful-request (refusal) script ``run_tar_dpo.sh`` (commit
  fae65099) uses a different setting: DPO tamper-resistance loss, λ_TR 0.1, K 8, outer lr 6e-5,
  100 outer steps, batch 4 × 2 accumulation, 2 adversary tasks per step.  The defaults here follow
  the main bio setting, since our L_TR (refusal cross-entropy) is neither the entropy nor the DPO
  loss and λ_TR does not transfer between them.
- L_TR here: cross-entropy of a refusal (``_common.REFUSAL_TEMPLATES``) to harmful prompts at the
  attacked weights — the model should still refuse after tampering.  The paper uses an entropy
  loss for its weaponization-knowledge setting and a preference (DPO-style) loss for harmful
  requests; ours is the simplest refusal target (deviation).  L_TR is evaluated every
  ``tr_every`` inner steps and averaged.
- L_retain: benign (Alpaca-GPT4) cross-entropy at θ; the paper adds a representation-distance
  term to the original model, which we omit (deviation).
- Harmful data for the adversary: unsafe ``beavertails-defense`` pairs.
- The paper starts from a model with an initial safeguard; use ``base_defense: refusal-sft``
  for that.

Profile reductions: smoke keeps the mechanism but shrinks everything — K 4 inner steps (paper
64), 12 outer steps (paper 750), LoRA r 16 instead of full weights, outer lr 2e-4 and adversary
lr 1e-3 so that a few LoRA steps move the model, batch 4, max length 192; tiny: K 2, 2 outer
steps.  The adversary then sees at most 48 harmful batches, so TAR's robustness at paper scale
cannot be judged from smoke numbers.
"""
from __future__ import annotations

import random
from dataclasses import dataclass

from transformers import Trainer

from sdd_bench.harness.config import param
from sdd_bench.harness.registry import DEFENSES
from sdd_bench.harness.training import load_trainable, train_sft

from . import _common as C
from .base import Defense


@dataclass(frozen=True)
class TARConfig:
    inner_steps: int = param(64, "adversary fine-tuning steps K per outer step (paper: 64)", ge=1)
    inner_lr: float = param(2e-5, "adversary learning rate (AdamW)", gt=0)
    tr_every: int = param(1, "evaluate L_TR every this many inner steps (and after the last)", ge=1)
    lambda_tr: float = param(4.0, "weight of the tamper-resistance gradient", ge=0)
    lambda_retain: float = param(1.0, "weight of the retain loss", ge=0)
    n_harmful: int = param(2000, "harmful pairs for the adversary / refusal targets", ge=1)
    n_retain: int = param(2000, "benign retain pairs", ge=1)
    lr: float = param(2e-5, "outer learning rate", gt=0)
    max_steps: int = param(750, "outer (meta) steps (paper: 750)", ge=1)
    batch_size: int = param(8, "batch size (retain, adversary and L_TR batches)", ge=1)
    max_length: int = param(256, "max tokens per example", ge=16)
    lora: bool = param(False, "LoRA instead of full weights (paper: full)")
    lora_r: int = param(16, "LoRA rank (if lora)", ge=1)


def adversary_tr_grads(model, harmful, refusal, inner_steps: int, inner_lr: float, tr_every: int):
    """Fine-tune a copy of the trainable weights on harmful batches; return (mean ∇L_TR at the copies, info).

    The model's own parameters are only read (``functional_call`` runs it at the copy)."""
    import torch
    named = C.trainable(model)
    adv = {n: p.detach().clone().requires_grad_(True) for n, p in named}
    opt = torch.optim.AdamW(adv.values(), lr=inner_lr, weight_decay=0.0)
    dev = C.model_device(model)
    acc = [torch.zeros_like(p) for _, p in named]
    n_tr, harm_losses, tr_losses = 0, [], []
    for k in range(inner_steps):
        loss = C.lm_loss(model, harmful.next(dev), params=adv)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        harm_losses.append(float(loss.detach()))
        if (k + 1) % tr_every == 0 or k == inner_steps - 1:
            tr = C.lm_loss(model, refusal.next(dev), params=adv)
            gs = torch.autograd.grad(tr, list(adv.values()), allow_unused=True)
            for a, g in zip(acc, gs):
                if g is not None:
                    a.add_(g)
            n_tr += 1
            tr_losses.append(float(tr.detach()))
    grads = [a / max(1, n_tr) for a in acc]
    return grads, {"adversary_losses": harm_losses, "tr_losses": tr_losses, "adapted": adv}


class TARTrainer(Trainer):
    def __init__(self, *a, harmful=None, refusal=None, inner_steps=64, inner_lr=2e-5, tr_every=1, lambda_tr=4.0,
                 lambda_retain=1.0, **kw):
        super().__init__(*a, **kw)
        self.harmful, self.refusal = harmful, refusal
        self.inner_steps, self.inner_lr, self.tr_every = inner_steps, inner_lr, tr_every
        self.lambda_tr, self.lambda_retain = lambda_tr, lambda_retain
        self.meta_log: list[dict] = []

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        loss = self.lambda_retain * C.lm_loss(model, inputs)
        return (loss, None) if return_outputs else loss

    def training_step(self, model, inputs, num_items_in_batch=None):
        import torch
        grads, info = adversary_tr_grads(model, self.harmful, self.refusal, self.inner_steps, self.inner_lr,
                                         self.tr_every)
        loss = super().training_step(model, inputs, num_items_in_batch)  # retain gradient at θ
        with torch.no_grad():
            for (_, p), g in zip(C.trainable(model), grads):
                if p.grad is None:
                    p.grad = self.lambda_tr * g
                else:
                    p.grad.add_(g, alpha=self.lambda_tr)
        self.meta_log.append({"retain": float(loss), "adversary_first": info["adversary_losses"][0],
                              "adversary_last": info["adversary_losses"][-1],
                              "tr_mean": sum(info["tr_losses"]) / len(info["tr_losses"])})
        return loss


@DEFENSES.register("tar")
class TAR(Defense):
    Config = TARConfig
    PROFILE = {
        "tiny": {"inner_steps": 2, "inner_lr": 1e-3, "n_harmful": 8, "n_retain": 8, "max_steps": 2, "batch_size": 4,
                 "max_length": 64, "lr": 1e-3},
        "smoke": {"inner_steps": 4, "inner_lr": 1e-3, "n_harmful": 240, "n_retain": 240, "max_steps": 12,
                  "batch_size": 4, "max_length": 192, "lora": True, "lr": 2e-4},
        "paper": {},
    }
    datasets = ("beavertails-defense", "alpaca-gpt4-1k")

    def build_data(self, seed: int = 0) -> tuple[list[dict], list[dict], list[dict]]:
        c = self.cfg
        harmful = C.harmful_rows(c.n_harmful, seed)
        rng = random.Random(seed + 1)
        refusal = [{"prompt": r["prompt"], "response": C.refusal_for(r["prompt"], rng)} for r in harmful]
        return C.benign_rows(c.n_retain, seed + 2), harmful, refusal

    def defend(self, ref, out_dir, ctx):
        from sdd_bench.harness import models
        c = self.cfg
        retain, harmful, refusal = self.build_data(ctx.seed)
        model, tok = load_trainable(ref, models.resolve_device(ctx.device))
        mk = lambda rows, s: C.BatchCycler(C.tokenize(tok, ctx.template, rows, c.max_length), c.batch_size,
                                           tok.pad_token_id, s)
        box: dict = {}

        class _T(TARTrainer):
            def __init__(self, *a, **kw):
                super().__init__(*a, **kw)
                box["t"] = self

        new, info = train_sft(ref, retain, C.lora_train_config(c, ctx.seed), out_dir, ctx.template,
                              device=ctx.device, progress=ctx.progress, name="tar", trainer_cls=_T,
                              model_and_tok=(model, tok),
                              trainer_kwargs={"harmful": mk(harmful, ctx.seed), "refusal": mk(refusal, ctx.seed + 1),
                                              "inner_steps": c.inner_steps, "inner_lr": c.inner_lr,
                                              "tr_every": c.tr_every, "lambda_tr": c.lambda_tr,
                                              "lambda_retain": c.lambda_retain})
        info["data_stats"] = {"retain": len(retain), "harmful": len(harmful)}
        info["meta_log"] = box["t"].meta_log
        return new, info
