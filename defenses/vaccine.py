"""``vaccine``: perturbation-aware alignment (Huang, Hu & Liu, "Vaccine: Perturbation-aware
Alignment for Large Language Models against Harmful Fine-tuning Attack", NeurIPS 2024,
arXiv:2402.01109).

Idea: harmful fine-tuning breaks alignment through a drift of the hidden embeddings of the
alignment data.  Vaccine aligns the model so that its alignment loss stays low even when every
layer's hidden embedding is moved by the worst-case perturbation of radius ρ.  Each step takes
two passes: pass 1 computes the gradient of the alignment loss w.r.t. each layer's attention
output h_l and sets ε = ρ·∇_h L / ‖∇_h L‖ (a normalised ascent step, the norm taken jointly over all
layers); pass 2 adds ε_l to h_l and trains on the perturbed loss.

Defaults and sources (checked against the authors' repository git-disl/Vaccine; the stored arXiv
HTML of the paper only exposes its opening, so the paper's training-details paragraph was read via
the NeurIPS reproducibility summary at ri.k117.org, which quotes it):
- ``rho`` 2: verified.  The repository README (commit 025c1e8f) launches the alignment run as
  ``script/alignment/Vaccine.sh 2``, i.e. perturbation intensity 2 (passed on as ``--rho``).
- alignment data: harmful prompts with safe answers (authors: the first 2000 ``is_safe`` rows of
  BeaverTails ``30k_train``, ``train.py`` at commit 0ccf1568).  Here: the ``is_safe`` rows of our
  ``beavertails-defense`` partition (132) topped up with ``refusals`` pairs to ``n_align``.
- ``n_align`` 2000: verified (same ``train.py``, 2000 safe rows).
- ``lr`` 1e-3: verified (``script/alignment/Vaccine.sh`` at commit 81d77433; the paper's setup
  paragraph gives the same AdamW learning rate for alignment).
- LoRA r 8, α 4, dropout 0.1 on q/k/v/o/gate/up/down: verified (``train.py`` at 8937f68, the
  ``LoraConfig`` built when no adapter is loaded: ``r=8, lora_alpha=4, lora_dropout=0.1``, those seven
  target modules).  Scale α/r = 0.5.  (Until version 2 this port used α = 2r and dropout 0, a 4× larger
  LoRA scale.)
- batch 5 and 50 epochs: ``Vaccine.sh`` runs 50 epochs with per-device batch 5, and the paper's
  setup paragraph also states 50 alignment epochs; hence ``batch_size`` 5 and ``max_steps`` 20000
  (= 50 × 2000 / 5) in the paper profile.
- weight decay 0.1, cosine schedule, warm-up ratio 0.1: verified (``script/alignment/Vaccine.sh`` at
  8937f68: ``--weight_decay 0.1 --warmup_ratio 0.1 --lr_scheduler_type "cosine"``).  Gradient clipping
  1.0: the script does not set ``max_grad_norm``, so the transformers default 1.0 applies.
- smoke profile (SmolLM2-135M, CPU): lr 2e-4, 40 steps × batch 8, 320 pairs, max length 192 — sized
  to the CPU budget like ``sdd``; LoRA rank/α/dropout/targets, weight decay, schedule and warm-up
  ratio are the authors' on every profile (warm-up = 4 of 40 smoke steps).  tiny: 2 steps.

Where the perturbation goes: at the output of each layer's self-attention module (before the
residual add), through forward hooks (``_common.attention_modules``), as the authors' ``trainer.py``
(git-disl/Vaccine, commit 39207088) hooks ``LlamaAttention``/``OPTAttention``; ε is normalised
jointly over all hooked layers, as there.  (Version 1 of this defense perturbed the decoder block
output instead; version 2 follows the authors.)  The first pass takes gradients w.r.t. the hidden
states only (no parameter gradients), which gives the same ε at lower cost.
"""
from __future__ import annotations

from dataclasses import dataclass

from transformers import Trainer

from sdd_bench.harness.config import param
from sdd_bench.harness.registry import DEFENSES
from sdd_bench.harness.training import train_sft

from . import _common as C
from .base import BuiltData, Defense, prompts_of


@dataclass(frozen=True)
class VaccineConfig:
    rho: float = param(2.0, "perturbation radius ρ (paper, LoRA: 2)", ge=0)
    n_align: int = param(2000, "alignment pairs: harmful prompt → safe answer", ge=1)
    lr: float = param(1e-3, "learning rate (LoRA)", gt=0)
    max_steps: int = param(20000, "optimizer steps (= 50 epochs × 2000 / 5, authors' script)", ge=1)
    batch_size: int = param(5, "batch size (authors' script: 5)", ge=1)
    max_length: int = param(256, "max tokens per example", ge=16)
    lora: bool = param(True, "LoRA (paper) or full fine-tuning")
    lora_r: int = param(8, "LoRA rank (authors' train.py: 8)", ge=1)
    lora_alpha: float = param(4.0, "LoRA α (authors' train.py: 4, i.e. scale α/r = 0.5)", gt=0)
    lora_dropout: float = param(0.1, "LoRA dropout (authors' train.py: 0.1)", ge=0, lt=1)
    lora_target_modules: tuple[str, ...] = param(("q_proj", "k_proj", "v_proj", "o_proj", "up_proj", "down_proj",
                                                  "gate_proj"), "LoRA targets (authors' train.py)")
    weight_decay: float = param(0.1, "AdamW weight decay (Vaccine.sh: 0.1)", ge=0)
    scheduler: str = param("cosine", "lr schedule (Vaccine.sh: cosine)", choices=("constant", "linear", "cosine"))
    warmup_ratio: float = param(0.1, "warm-up share of the steps (Vaccine.sh: 0.1)", ge=0, le=1)
    max_grad_norm: float | None = param(1.0, "gradient clipping (Vaccine.sh sets none: transformers default 1.0)", gt=0)


MECHANISM_BATCHES = 8  # held-out alignment batches per model, as SEAM's and Booster's: a t interval over batches


def held_out_alignment(n: int, seed: int) -> list[dict]:
    """``n`` alignment-type pairs (harmful prompt → safe answer) that no defense trains on: the ``is_safe`` pairs of
    BeaverTails' *attack* partition (the attack trains on its unsafe pairs only; DESIGN §10)."""
    import random

    from sdd_bench.harness import data
    pool = [{"prompt": r["prompt"], "response": r["response"]} for r in data.load("beavertails-attack")
            if r["is_safe"] and r["response"].strip()]
    return random.Random(seed).sample(pool, min(n, len(pool)))


def perturbation_loss_rises(ref, rows: list[dict], cfg: VaccineConfig, template: str, device: str) -> list[float]:
    """Per batch of ``cfg.batch_size`` rows: L(h + ε) − L(h), the alignment loss's rise when every layer's attention
    output h is moved by Vaccine's worst-case perturbation ε = ρ·∇_h L/‖∇_h L‖ (``C.hidden_state_grads``,
    ``C.scaled_perturbation``), on the adapter-merged model so a defended model and its start are measured alike."""
    import torch

    from sdd_bench.harness import models
    from sdd_bench.harness.training import PadCollator
    device = models.resolve_device(device)
    model, tok = models.load(ref, device=device, merge_adapter=True)
    model = model.float().eval()
    rows = C.tokenize(tok, template, rows, cfg.max_length)
    collate, bs, out = PadCollator(tok.pad_token_id), cfg.batch_size, []
    for i in range(0, len(rows) - bs + 1, bs):
        batch = {k: v.to(device) for k, v in collate(rows[i:i + bs]).items()}
        with torch.enable_grad():
            loss, grads = C.hidden_state_grads(model, batch)
        with torch.no_grad(), C.add_to_hidden(model, C.scaled_perturbation(grads, cfg.rho)):
            perturbed = C.lm_loss(model, batch)
        out.append(float(perturbed) - float(loss))
    del model
    return out


class PerturbedAlignmentTrainer(Trainer):
    """Vaccine's two-pass step: ε from the hidden-state gradient, then train on the perturbed loss."""

    def __init__(self, *a, rho: float = 2.0, **kw):
        super().__init__(*a, **kw)
        self.rho = rho
        self.last_perturbation: dict = {}
        self.perturbation_log: list[dict] = []

    def layers_to_perturb(self, model, grads: dict) -> list[int]:
        return sorted(grads)

    def perturbation(self, model, inputs) -> dict:
        loss, grads = C.hidden_state_grads(model, inputs)
        chosen = self.layers_to_perturb(model, grads)
        return C.scaled_perturbation({i: grads[i] for i in chosen}, self.rho)

    def training_step(self, model, inputs, num_items_in_batch=None):
        inputs = self._prepare_inputs(inputs)
        deltas = self.perturbation(model, inputs)
        self.last_perturbation = deltas
        with C.add_to_hidden(model, deltas):
            loss = super().training_step(model, inputs, num_items_in_batch)
        self.after_backward(model, deltas)
        return loss

    def after_backward(self, model, deltas):
        pass


@DEFENSES.register("vaccine")
class Vaccine(Defense):
    Config = VaccineConfig
    PROFILE = {
        "tiny": {"n_align": 16, "max_steps": 2, "batch_size": 4, "max_length": 64},
        "smoke": {"n_align": 320, "lr": 2e-4, "max_steps": 40, "batch_size": 8, "max_length": 192},
        "paper": {},
    }
    datasets = ("beavertails-defense", "refusals")
    deviations = ("alignment rows: beavertails-defense is_safe answers topped up with Safety-Tuned LLaMAs "
                  "refusals (authors: first 2000 BeaverTails is_safe rows)",)
    version = 3  # 3: authors' LoRA α/dropout/targets, weight decay, cosine + warm-up; 2: perturbation at the
    #              attention output (authors' site), was the decoder block output
    trainer_cls = PerturbedAlignmentTrainer

    mechanism_runs_models = True

    def mechanism(self, probe) -> dict:
        """Vaccine's mechanism (paper §4: alignment that stays low under the worst-case ρ-perturbation of the hidden
        embeddings, against harmful embedding drift): the alignment loss rises less under that perturbation than it
        did before the defense.  Measured on ``MECHANISM_BATCHES`` held-out batches of harmful prompts with safe
        answers (``held_out_alignment``) as the loss rise under ε of radius ρ at every attention output
        (``perturbation_loss_rises``), for the defended model and its start, paired over batches.  Installed when
        the paired difference's 95% t interval lies below 0 (our criterion).  T-Vaccine inherits it: its layer
        selection is a cheaper way to the same robustness, so the number is measured at every layer for both."""
        from .base import paired_installed
        rows = held_out_alignment(MECHANISM_BATCHES * self.cfg.batch_size, probe.ctx.seed)
        before = perturbation_loss_rises(probe.start, rows, self.cfg, probe.ctx.template, probe.ctx.device)
        after = perturbation_loss_rises(probe.defended, rows, self.cfg, probe.ctx.template, probe.ctx.device)
        return paired_installed("alignment-loss rise under the worst-case embedding perturbation", before, after,
                                higher=False, unit="batches",
                                source="Vaccine paper §4: perturbation-aware alignment (ρ-bounded embedding "
                                       "perturbation)", rho=self.cfg.rho, batch_size=self.cfg.batch_size,
                                data={"alignment": "beavertails-attack is_safe pairs (never trained on by a defense)"})

    def build_data(self, seed: int = 0) -> BuiltData:
        rows = C.alignment_rows(self.cfg.n_align, seed)  # harmful prompts → safe answers
        return BuiltData(rows, harmful_prompts=prompts_of(rows),
                         stats={"alignment": len(rows),
                                "beavertails_safe": sum(r["source"] == "beavertails-safe" for r in rows)})

    def trainer_kwargs(self) -> dict:
        return {"rho": self.cfg.rho}

    def defend(self, ref, out_dir, ctx, built=None):
        c = self.cfg
        built = self.data_for(ctx, built)
        rows = built.rows
        name = self.registry_name
        new, info = train_sft(ref, rows, C.lora_train_config(c, ctx.seed), out_dir, ctx.template, device=ctx.device,
                              progress=ctx.progress, name=name, trainer_cls=self.trainer_cls,
                              trainer_kwargs=self.trainer_kwargs())
        info["data_stats"] = dict(built.stats)
        return new, info
