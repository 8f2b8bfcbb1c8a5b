"""``tar``: Tamper-Resistant Safeguards (Tamirisa, Bharathi, Phan, Zhou, Gatti, Suresh, Lin, Wang,
Wang, Arel, Zou, Song, Li, Hendrycks & Mazeika, "Tamper-Resistant Safeguards for Open-Weight
LLMs", ICLR 2025, arXiv:2408.00761).

Idea: adversarial meta-learning against fine-tuning.  Each outer step simulates a tampering
attack — an inner-loop adversary fine-tunes a *copy* of the weights on harmful data for K steps
— and measures a tamper-resistance loss on held-out harmful text at the attacked weights; the
outer update combines the (first-order) gradients of that loss, taken at the attacked weights
and applied to the original ones with an exponential weighting that favours late inner steps,
with the gradient of a retain loss that keeps benign behaviour and representations:

    g = λ_TR · Σ_{k : (k+1) mod s = 0} w_k ∇_{θ'_k} L_TR(θ'_k)  +  λ_retain · ∇_θ L_retain(θ)
    w_k = exp(λ_s · (k − (K − 1))),   θ'_0 = θ,  θ'_{k+1} = AdamW step of θ'_k on L_harm
    L_TR = −(mean token entropy of the next-token distribution on x_tr)          (max-entropy)
    L_retain = CE(x_r) + mean_l mean_tokens ‖h_l(θ; x_r) − h_l(θ_0; x_r)‖₂         (θ_0: frozen start)

The outer weights are untouched until the meta-step (the optimizer step on g).

Defaults and sources (rishub-tamirisa/tamper-resistance, commit 19de233, the paper's main setting:
weaponization knowledge, biosecurity, ``run_tar_bio.sh``; the stored arXiv HTML only exposes the
paper's opening, so its own hyper-parameter table was not read):
- λ_TR 4, λ_retain 1, K 64, outer lr 2e-5, 750 outer steps, batch 8, adversary batch 4, outer
  warm-up 32 steps, TR subsampling every 4th inner step, weighting schedule on with λ_s 0.0625,
  adversary lr drawn per outer step from {2e-6, 2e-5, 4e-5}, ``max_entropy`` TR loss, retain on
  representations: ``run_tar_bio.sh`` (``--tar_tamper_resistance_grad_scale 4.0 --tar_retain_scale
  1.0 --tar_inner_loop_steps 64 --lr 2e-05 --max_steps 750 --batch_size 8 --tar_adversary_batch_size
  4 --warmup_steps 32 --tar_inner_loop_subsample 4 --use_weighting_schedule --schedule_lambda
  0.0625 --adversary_lr_samples 2e-6,2e-5,4e-5 --tar_tamper_resistance_loss_type max_entropy
  --retain_representations``).
- the weighting and subsampling: ``tar_training_loop`` in ``modules/training.py``: the TR gradient is
  computed only when (k + 1) mod 4 = 0, scaled by λ_TR · exp(λ_s(k − (K − 1))) (``schedule``) and
  *summed* into the stored gradients.  For K 64 the weights sum to ≈ 4.4; until version 2 this port
  took an unweighted mean over every inner step (total weight 1, ≈ 4.4× weaker).
- the adversary: a fresh ``torch.optim.AdamW`` per outer step (torch defaults, so weight decay
  0.01), constant lr (``--adversary_lr_schedulers constant:1.0``).
- L_TR: ``obj_max_entropy_next_token`` / ``max_entropy_loss`` in ``modules/objectives.py``: minus the
  mean entropy of the softmax over the vocabulary, on a held-out forget batch x_tr (batch 8, the
  ``heldout_dataloader`` uses ``--batch_size``).  Here x_tr is a held-out half of the harmful rows
  (disjoint from the adversary's half).  Until version 2 this port used the CE of a refusal.
- L_retain: ``obj_model_mse_representations`` (same file): the retain CE plus the mean over all
  hidden states of the mean L2 distance to the frozen starting model's hidden states.  The frozen
  model here is the adapter-less base for LoRA (``disable_adapter``), else a frozen copy.
- outer optimizer: ``tar.py`` uses schedule-free AdamW (``schedulefree.AdamWScheduleFree``, warm-up
  32) without gradient clipping; here AdamW with a linear 32-step warm-up then constant lr
  (``constant_with_warmup``), no clipping, weight decay 0.  (Deviation: no schedule-free averaging.)
- the authors' harmful-request (refusal) setting ``run_tar_dpo.sh`` uses a DPO TR loss, λ_TR 0.1,
  K 8, outer lr 6e-5, 100 steps; that loss is not implemented here (``tr_loss`` offers only
  ``max_entropy``, the bio setting whose other defaults we use).
- data: harmful = unsafe ``beavertails-defense`` pairs (adversary half, x_tr half); retain =
  Alpaca-GPT4 (the authors retain on Pile/Magpie text).  The authors also draw the adversary from
  a distribution of attack types (Pile-bio, Camel-bio, retain→forget switch); one harmful SFT
  adversary here.  The paper starts from a model with an initial safeguard; use ``base_defense:
  refusal-sft`` for that.

Profile reductions: smoke keeps the mechanism but shrinks everything — K 4 inner steps (one TR
evaluation, at k = 3, weight 1), 12 outer steps with a 1-step warm-up (≈ 32/750 of them), LoRA
r 16 (α 32, all linear) instead of full weights, outer lr 2e-4 and adversary lr 1e-3 so that a
few LoRA steps move the model, batch 4 (adversary 4), max length 192; tiny: K 2, every inner step
evaluated, 2 outer steps.  The adversary then sees at most 48 harmful batches, so TAR's
robustness at paper scale cannot be judged from smoke numbers.
"""
from __future__ import annotations

import copy
import math
import random
from dataclasses import dataclass

from transformers import Trainer

from sdd_bench.harness.config import param
from sdd_bench.harness.registry import DEFENSES
from sdd_bench.harness.training import load_trainable, train_sft

from . import _common as C
from .base import BuiltData, Defense, prompts_of


@dataclass(frozen=True)
class TARConfig:
    inner_steps: int = param(64, "adversary fine-tuning steps K per outer step (run_tar_bio.sh: 64)", ge=1)
    inner_lr_samples: tuple[float, ...] = param((2e-6, 2e-5, 4e-5), "adversary lr, one drawn per outer step "
                                                "(run_tar_bio.sh --adversary_lr_samples)")
    inner_weight_decay: float = param(0.01, "adversary AdamW weight decay (torch default, as the authors)", ge=0)
    adversary_batch_size: int = param(4, "adversary batch (run_tar_bio.sh --tar_adversary_batch_size 4)", ge=1)
    tr_subsample: int = param(4, "evaluate L_TR when (k+1) mod this = 0 (run_tar_bio.sh: 4)", ge=1)
    schedule_lambda: float = param(0.0625, "λ_s of the TR weights exp(λ_s(k−(K−1))) (run_tar_bio.sh: 0.0625)", ge=0)
    tr_loss: str = param("max_entropy", "tamper-resistance loss (authors, bio: max_entropy)", choices=("max_entropy",))
    retain_representations: bool = param(True, "retain = CE + hidden-state distance to the start model (authors: on)")
    lambda_tr: float = param(4.0, "λ_TR, scale of the TR gradients (run_tar_bio.sh: 4)", ge=0)
    lambda_retain: float = param(1.0, "λ_retain (run_tar_bio.sh: 1)", ge=0)
    n_harmful: int = param(2000, "harmful pairs, split into adversary and held-out x_tr halves", ge=2)
    n_retain: int = param(2000, "benign retain pairs", ge=1)
    lr: float = param(2e-5, "outer learning rate (run_tar_bio.sh: 2e-5)", gt=0)
    max_steps: int = param(750, "outer (meta) steps (run_tar_bio.sh: 750)", ge=1)
    warmup_steps: int = param(32, "outer warm-up steps (run_tar_bio.sh --warmup_steps 32)", ge=0)
    batch_size: int = param(8, "retain and x_tr batch (run_tar_bio.sh --batch_size 8)", ge=1)
    max_length: int = param(256, "max tokens per example", ge=16)
    lora: bool = param(False, "LoRA instead of full weights (paper: full)")
    lora_r: int = param(16, "LoRA rank (if lora; our choice)", ge=1)
    lora_alpha: float = param(32.0, "LoRA α (if lora; our choice)", gt=0)
    lora_dropout: float = param(0.0, "LoRA dropout (if lora; our choice)", ge=0, lt=1)
    lora_target_modules: tuple[str, ...] | str = param("all-linear", "LoRA targets (if lora; our choice)")
    weight_decay: float = param(0.0, "outer weight decay (schedule-free AdamW default 0)", ge=0)
    scheduler: str = param("constant_with_warmup", "outer schedule: warm-up then constant (authors: schedule-free)",
                           choices=("constant_with_warmup", "constant", "cosine"))
    warmup_ratio: float = param(0.0, "unused: the warm-up is warmup_steps", ge=0, le=1)
    max_grad_norm: float | None = param(None, "outer clipping (authors' loop: none)", gt=0)


def tr_weights(inner_steps: int, subsample: int, schedule_lambda: float) -> dict[int, float]:
    """{inner step k: weight} for the steps at which L_TR is evaluated (``schedule`` in the authors' loop)."""
    return {k: math.exp(schedule_lambda * (k - (inner_steps - 1)))
            for k in range(inner_steps) if (k + 1) % subsample == 0}


def max_entropy_loss(logits, attention_mask):
    """Minus the mean next-token entropy over the non-padding positions."""
    import torch
    lp = torch.log_softmax(logits.float(), -1)
    ent = -(lp.exp() * lp).sum(-1)
    m = attention_mask.to(ent.dtype)
    return -(ent * m).sum() / m.sum().clamp_min(1)


def _forward(model, batch, params=None, **kw):
    args = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"], **kw}
    if params is None:
        return model(**args)
    from torch.func import functional_call
    return functional_call(model, params, args=(), kwargs=args, strict=False)


def tamper_resistance_loss(model, batch, params=None):
    return max_entropy_loss(_forward(model, batch, params).logits, batch["attention_mask"])


def retain_loss(model, batch, frozen=None):
    """CE on the retain batch, plus (``frozen`` given) the mean over hidden states of the mean per-token L2
    distance to the frozen model's hidden states (``obj_model_mse_representations``)."""
    import torch
    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"],
                output_hidden_states=frozen is not None)
    if frozen is None:
        return out.loss, {"retain_ce": float(out.loss.detach())}
    with torch.no_grad():
        ref = frozen(batch)
    m = batch["attention_mask"].to(out.hidden_states[0].dtype)
    dist = torch.stack([((h - r).norm(dim=-1) * m).sum() / m.sum() for h, r in zip(out.hidden_states, ref)]).mean()
    return out.loss + dist, {"retain_ce": float(out.loss.detach()), "retain_rep_dist": float(dist.detach())}


def adversary_tr_grads(model, harmful, heldout, inner_steps: int, inner_lr: float, weights: dict[int, float],
                       weight_decay: float = 0.01):
    """Fine-tune a copy of the trainable weights on harmful batches; return (Σ_k w_k ∇L_TR(θ'_k), info).

    The model's own parameters are only read (``functional_call`` runs it at the copy); one x_tr batch
    per outer step, as the authors' loop samples ``meta_forget_batches`` once per adversary."""
    import torch
    named = C.trainable(model)
    adv = {n: p.detach().clone().requires_grad_(True) for n, p in named}
    opt = torch.optim.AdamW(adv.values(), lr=inner_lr, weight_decay=weight_decay)
    dev = C.model_device(model)
    x_tr = heldout.next(dev)
    acc = [torch.zeros_like(p) for _, p in named]
    harm_losses, tr_losses = [], []
    for k in range(inner_steps):
        loss = C.lm_loss(model, harmful.next(dev), params=adv)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        harm_losses.append(float(loss.detach()))
        if k in weights:
            tr = tamper_resistance_loss(model, x_tr, adv)
            gs = torch.autograd.grad(tr, list(adv.values()), allow_unused=True)
            for a, g in zip(acc, gs):
                if g is not None:
                    a.add_(g, alpha=weights[k])
            tr_losses.append(float(tr.detach()))
    return acc, {"adversary_losses": harm_losses, "tr_losses": tr_losses, "adapted": adv}


class TARTrainer(Trainer):
    def __init__(self, *a, harmful=None, heldout=None, inner_steps=64, inner_lr_samples=(2e-5,), tr_weights=None,
                 inner_weight_decay=0.01, lambda_tr=4.0, lambda_retain=1.0, frozen=None, **kw):
        super().__init__(*a, **kw)
        self.harmful, self.heldout = harmful, heldout
        self.inner_steps, self.inner_lr_samples = inner_steps, tuple(inner_lr_samples)
        self.tr_weights = tr_weights if tr_weights is not None else {inner_steps - 1: 1.0}
        self.inner_weight_decay = inner_weight_decay
        self.lambda_tr, self.lambda_retain, self.frozen = lambda_tr, lambda_retain, frozen
        self.rng = random.Random(self.args.seed)
        self.meta_log: list[dict] = []
        self._retain_parts: dict = {}

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        loss, self._retain_parts = retain_loss(model, inputs, self.frozen)
        loss = self.lambda_retain * loss
        return (loss, None) if return_outputs else loss

    def training_step(self, model, inputs, num_items_in_batch=None):
        import torch
        lr = self.rng.choice(self.inner_lr_samples)
        grads, info = adversary_tr_grads(model, self.harmful, self.heldout, self.inner_steps, lr, self.tr_weights,
                                         self.inner_weight_decay)
        loss = super().training_step(model, inputs, num_items_in_batch)  # retain gradient at θ
        with torch.no_grad():
            for (_, p), g in zip(C.trainable(model), grads):
                if p.grad is None:
                    p.grad = self.lambda_tr * g
                else:
                    p.grad.add_(g, alpha=self.lambda_tr)
        self.meta_log.append({"retain": float(loss), **self._retain_parts, "adversary_lr": lr,
                              "adversary_first": info["adversary_losses"][0],
                              "adversary_last": info["adversary_losses"][-1], "tr_losses": info["tr_losses"]})
        return loss


def frozen_reference(model):
    """Hidden states of the starting weights: the base without its adapter (LoRA) or a frozen copy."""
    if hasattr(model, "disable_adapter"):
        def run(batch):
            with model.disable_adapter():
                return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                             output_hidden_states=True).hidden_states
        return run
    twin = copy.deepcopy(model).eval().requires_grad_(False)

    def run(batch):
        return twin(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                    output_hidden_states=True).hidden_states
    return run


MECHANISM_ADVERSARIES = 4  # independent simulated tampering runs per model: a t interval over adversaries
MECHANISM_ADVERSARY_LR = 2e-5  # the middle of the authors' adversary lr samples (run_tar_bio.sh)


def held_out_tamper_data(cfg: TARConfig, seed: int) -> tuple[list[dict], list[dict]]:
    """(adversary rows, x_tr rows) that TAR never trains on, from the unsafe pairs of BeaverTails' *attack*
    partition (DESIGN §10), disjoint: ``MECHANISM_ADVERSARIES`` × K × adversary batch rows to tamper with and
    ``MECHANISM_ADVERSARIES`` × batch rows to measure on."""
    pool = [{"prompt": r["prompt"], "response": r["response"]} for r in C.unsafe_pairs("beavertails-attack")]
    n_adv = MECHANISM_ADVERSARIES * cfg.inner_steps * cfg.adversary_batch_size
    n_tr = MECHANISM_ADVERSARIES * cfg.batch_size
    rows = random.Random(seed).sample(pool, min(len(pool), n_adv + n_tr))
    return rows[:len(rows) - n_tr], rows[len(rows) - n_tr:]


def tampered_entropies(ref, adversary: list[dict], x_tr: list[dict], cfg: TARConfig, template: str,
                       device: str) -> list[float]:
    """Per simulated adversary: fine-tune a copy of every weight (adapter-merged model) with AdamW at
    ``MECHANISM_ADVERSARY_LR`` for K = ``inner_steps`` steps on its own harmful batches, then the mean next-token
    entropy on its held-out x_tr batch at the tampered weights (−``tamper_resistance_loss``)."""
    import torch

    from sdd_bench.harness import models
    from sdd_bench.harness.training import PadCollator
    device = models.resolve_device(device)
    model, tok = models.load(ref, device=device, merge_adapter=True)
    model = model.float().eval()
    collate = PadCollator(tok.pad_token_id)
    adv_rows = C.tokenize(tok, template, adversary, cfg.max_length)
    tr_rows = C.tokenize(tok, template, x_tr, cfg.max_length)
    K, ab, tb, out = cfg.inner_steps, cfg.adversary_batch_size, cfg.batch_size, []
    torch.manual_seed(0)
    for a in range(len(tr_rows) // tb):
        weights = {n: p.detach().clone().requires_grad_(True) for n, p in model.named_parameters()}
        opt = torch.optim.AdamW(weights.values(), lr=MECHANISM_ADVERSARY_LR, weight_decay=cfg.inner_weight_decay)
        for k in range(K):
            lo = (a * K + k) * ab % max(1, len(adv_rows) - ab + 1)
            batch = {n: v.to(device) for n, v in collate(adv_rows[lo:lo + ab]).items()}
            with torch.enable_grad():
                loss = C.lm_loss(model, batch, params=weights)
                opt.zero_grad(set_to_none=True)
                loss.backward()
            opt.step()
        batch = {n: v.to(device) for n, v in collate(tr_rows[a * tb:(a + 1) * tb]).items()}
        with torch.no_grad():
            out.append(-float(tamper_resistance_loss(model, batch, weights)))
        del weights, opt
    del model
    return out


@DEFENSES.register("tar")
class TAR(Defense):
    Config = TARConfig
    PROFILE = {
        "tiny": {"inner_steps": 2, "inner_lr_samples": (1e-3,), "tr_subsample": 1, "n_harmful": 8, "n_retain": 8,
                 "max_steps": 2, "warmup_steps": 0, "batch_size": 4, "adversary_batch_size": 4, "max_length": 64,
                 "lr": 1e-3},
        "smoke": {"inner_steps": 4, "inner_lr_samples": (1e-3,), "n_harmful": 240, "n_retain": 240, "max_steps": 12,
                  "warmup_steps": 1, "batch_size": 4, "adversary_batch_size": 4, "max_length": 192, "lora": True,
                  "lr": 2e-4},
        "paper": {},
    }
    datasets = ("beavertails-defense", "alpaca-gpt4-1k")
    version = 2  # 2: max-entropy TR loss, weighted/subsampled TR gradients, representation retain loss, warm-up
    deviations = (
        "one adversary type (harmful SFT on beavertails-defense); authors sample Pile-bio / Camel-bio / "
        "retain-forget-switch adversaries",
        "retain data Alpaca-GPT4 (authors: Pile / Magpie text)",
        "outer optimizer AdamW with 32-step linear warm-up then constant (authors: schedule-free AdamW)",
        "max-entropy and representation distance averaged over non-padding tokens (authors: all positions)",
        "DPO tamper-resistance loss of the authors' refusal setting not implemented",
    )

    mechanism_runs_models = True

    def mechanism(self, probe) -> dict:
        """TAR's mechanism (paper §4: after a simulated tampering attack the held-out harmful text stays
        unpredictable, its max-entropy tamper-resistance loss): ``MECHANISM_ADVERSARIES`` independent adversaries
        each fine-tune the model for K = ``inner_steps`` steps on held-out harmful batches
        (``held_out_tamper_data``), then the mean next-token entropy on held-out harmful text is read at the
        tampered weights (``tampered_entropies``), for the defended model and its start, paired over adversaries.
        Installed when the paired difference's 95% t interval lies above 0 (our criterion).  Deviation: the
        adversary fine-tunes every weight at lr 2e-5 (the middle of the authors' samples), not the profile's LoRA
        adversary, so defended and start models face the same attack."""
        from .base import paired_installed
        adversary, x_tr = held_out_tamper_data(self.cfg, probe.ctx.seed)
        before = tampered_entropies(probe.start, adversary, x_tr, self.cfg, probe.ctx.template, probe.ctx.device)
        after = tampered_entropies(probe.defended, adversary, x_tr, self.cfg, probe.ctx.template, probe.ctx.device)
        return paired_installed("held-out harmful entropy after a simulated tampering attack (nats)", before, after,
                                higher=True, unit="adversaries",
                                source="TAR paper §4: max-entropy tamper-resistance loss after an inner-loop adversary",
                                adversary={"steps": self.cfg.inner_steps, "lr": MECHANISM_ADVERSARY_LR,
                                           "optimizer": "AdamW", "batch": self.cfg.adversary_batch_size},
                                data={"harmful": "beavertails-attack unsafe pairs (never trained on by a defense)"})

    def build_data(self, seed: int = 0) -> BuiltData:
        """Retain rows (benign) and, in ``parts``, the adversary's harmful rows and the held-out harmful rows for
        x_tr (disjoint halves); the harmful prompts are those two halves', not the retain rows'."""
        c = self.cfg
        harmful = C.harmful_rows(c.n_harmful, seed)
        half = len(harmful) // 2
        retain, adversary, heldout = C.benign_rows(c.n_retain, seed + 2), harmful[:half], harmful[half:]
        return BuiltData(retain, harmful_prompts=prompts_of(adversary) + prompts_of(heldout),
                         parts={"adversary": adversary, "heldout": heldout},
                         stats={"retain": len(retain), "adversary": len(adversary), "heldout_tr": len(heldout)})

    def defend(self, ref, out_dir, ctx, built=None):
        from sdd_bench.harness import models
        c = self.cfg
        built = self.data_for(ctx, built)
        retain, adversary, heldout = built.rows, built.parts["adversary"], built.parts["heldout"]
        model, tok = load_trainable(ref, models.resolve_device(ctx.device))
        mk = lambda rows, bs, s: C.BatchCycler(C.tokenize(tok, ctx.template, rows, c.max_length), bs,  # noqa: E731
                                               tok.pad_token_id, s)
        def with_frozen_start(trainer):  # the retain loss's reference: the starting weights, frozen
            trainer.frozen = frozen_reference(trainer.model)

        capture = C.TrainerCapture(TARTrainer, setup=with_frozen_start if c.retain_representations else None)
        tc = C.lora_train_config(c, ctx.seed, warmup_steps=c.warmup_steps)
        new, info = train_sft(ref, retain, tc, out_dir, ctx.template, device=ctx.device, progress=ctx.progress,
                              name="tar", trainer_cls=capture, model_and_tok=(model, tok),
                              trainer_kwargs={"harmful": mk(adversary, c.adversary_batch_size, ctx.seed),
                                              "heldout": mk(heldout, c.batch_size, ctx.seed + 1),
                                              "inner_steps": c.inner_steps, "inner_lr_samples": c.inner_lr_samples,
                                              "tr_weights": tr_weights(c.inner_steps, c.tr_subsample,
                                                                       c.schedule_lambda),
                                              "inner_weight_decay": c.inner_weight_decay,
                                              "lambda_tr": c.lambda_tr, "lambda_retain": c.lambda_retain})
        info["data_stats"] = dict(built.stats)
        info["tr_weight_total"] = sum(tr_weights(c.inner_steps, c.tr_subsample, c.schedule_lambda).values())
        info["meta_log"] = capture.trainer.meta_log
        return new, info
