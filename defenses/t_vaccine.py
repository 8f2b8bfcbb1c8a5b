"""``t-vaccine``: Targeted Vaccine (Liu, Lin, Huang, Mo, Mu & Shen, "Targeted Vaccine: Safety
Alignment for Large Language Models against Harmful Fine-Tuning via Layer-wise Perturbation",
2024, arXiv:2410.09760).

Idea: Vaccine perturbs every layer's hidden embedding, which over-perturbs safety-irrelevant
layers and costs memory.  T-Vaccine scores each layer by the gradient norm of the loss on harmful
data w.r.t. its hidden state, samples a few "safety-critical" layers with probabilities proportional to those norms, perturbs
only them (ε of radius ρ over the sampled layers, as in Vaccine), and keeps the other layers
frozen; the sample is redrawn every few steps.

Defaults and sources, checked against the authors' repository Lslland/T-Vaccine (the stored
arXiv HTML of the paper only exposes its opening, so the paper's own hyper-parameter text was not
read):
- ``rho`` 3: verified.  The README (commit 01733ec9) runs the alignment as
  ``script/alignment/T-Vaccine.sh 3``, i.e. perturbation intensity 3.
- ``n_layers`` 8 and ``resample_every`` 20: verified.  ``script/alignment/T-Vaccine.sh`` (commit
  fe4cc4d4) sets 8 activated layers (S) and a 20-step switching interval (J).
- how the layers are sampled: the authors' ``trainer.py`` (commit bdf92d57, ``BaseTrainer``)
  draws S distinct layers without replacement with probability proportional to each layer's
  gradient norm, matching ``sample_layers`` here.  The norms there come from a *harmful* batch (a
  pool of 200 harmful prompts with harmful answers, batch size 1) and are refreshed every K = 200
  steps, not at every resampling; so here (``probe_every``, ``n_probe``, ``probe_batch`` below).
- alignment data and sizes: the same script aligns on 2000 refusal pairs (RepNoise's BeaverTails
  paired-refusal file) for 20 epochs at batch 10 and lr 1e-3 with LoRA rank 8 (``train.py`` at
  bdf92d57), i.e. 4000 steps: ``n_align`` 2000, ``batch_size`` 10, ``max_steps`` 4000, ``lr`` 1e-3
  and ``lora_r`` 8 here are verified against it.  (Vaccine's own script differs: batch 5, 50
  epochs.)  Our rows are the ``vaccine`` rows (BeaverTails ``is_safe`` answers topped up with
  ``refusals``).
- LoRA α 4, dropout 0.1 on q/k/v/o/gate/up/down: verified (``train.py`` at 4513750, the
  ``LoraConfig`` built for a fresh adapter: ``r=8, lora_alpha=4, lora_dropout=0.1``).  Scale α/r = 0.5
  (until version 3 this port used α = 2r, dropout 0: 4× the authors' scale).
- weight decay 0.1, cosine schedule, warm-up ratio 0.1, max length 200: verified
  (``script/alignment/T-Vaccine.sh`` at 4513750: ``--weight_decay 0.1 --warmup_ratio 0.1
  --lr_scheduler_type "cosine" --max_length 200``); clipping: not set there, transformers default 1.0.
- smoke profile (30-layer SmolLM2): 8 of 30 layers, lr 2e-4, 40 steps × batch 8, 320 pairs, max length
  192; LoRA shape, weight decay, schedule and warm-up ratio stay the authors'.  tiny: 1 of 2 layers.
- ``probe_every`` 200, ``n_probe`` 200, ``probe_batch`` 1: as the authors' trainer, the layer
  importances are the hidden-state gradient norms of the loss on a harmful batch (one example from
  a pool of 200 harmful pairs; here unsafe ``beavertails-defense`` pairs), refreshed every 200
  steps; on the smoke profile (40 steps) they are measured once, at step 0.

Versions: 1 perturbed decoder-block outputs and scored layers on the alignment batch; 2 perturbs
the self-attention outputs, as the authors; 3 scores layers on a harmful batch, as the authors.

Where this differs from the authors' code: (1) In the authors' ``trainer.py`` only the LoRA weights inside the non-sampled attention modules are frozen (the MLP
adapters are not touched there); here "frozen" drops the update of every trainable weight of a
non-sampled decoder layer, and weights outside the decoder blocks stay trainable.  (2) The first
pass takes hidden-state gradients of all layers (needed for the probabilities), so the paper's
memory saving is not reproduced here — only its perturbation and update targeting.
"""
from __future__ import annotations

from dataclasses import dataclass

from sdd_bench.harness.config import param
from sdd_bench.harness.registry import DEFENSES

from . import _common as C
from .base import BuiltData, prompts_of
from .vaccine import PerturbedAlignmentTrainer, Vaccine


@dataclass(frozen=True)
class TVaccineConfig:
    rho: float = param(3.0, "perturbation radius ρ over the sampled layers (paper: 3)", ge=0)
    n_layers: int = param(8, "safety-critical layers sampled (paper: 8)", ge=1)
    resample_every: int = param(20, "steps between layer resamplings (paper: 20)", ge=1)
    freeze_others: bool = param(True, "drop updates of non-sampled layers (paper: frozen)")
    probe_every: int = param(200, "steps between refreshes of the layer importances on a harmful batch "
                                  "(authors' trainer: 200)", ge=1)
    n_probe: int = param(200, "harmful (prompt, harmful answer) pairs the importances are measured on (authors: 200)",
                         ge=1)
    probe_batch: int = param(1, "harmful examples per importance measurement (authors: 1)", ge=1)
    n_align: int = param(2000, "alignment pairs: harmful prompt → safe answer", ge=1)
    lr: float = param(1e-3, "learning rate (LoRA)", gt=0)
    max_steps: int = param(4000, "optimizer steps", ge=1)
    batch_size: int = param(10, "batch size", ge=1)
    max_length: int = param(200, "max tokens per example (T-Vaccine.sh: 200)", ge=16)
    lora: bool = param(True, "LoRA (paper) or full fine-tuning")
    lora_r: int = param(8, "LoRA rank (authors' train.py: 8)", ge=1)
    lora_alpha: float = param(4.0, "LoRA α (authors' train.py: 4, scale α/r = 0.5)", gt=0)
    lora_dropout: float = param(0.1, "LoRA dropout (authors' train.py: 0.1)", ge=0, lt=1)
    lora_target_modules: tuple[str, ...] = param(("q_proj", "k_proj", "v_proj", "o_proj", "up_proj", "down_proj",
                                                  "gate_proj"), "LoRA targets (authors' train.py)")
    weight_decay: float = param(0.1, "AdamW weight decay (T-Vaccine.sh: 0.1)", ge=0)
    scheduler: str = param("cosine", "lr schedule (T-Vaccine.sh: cosine)", choices=("constant", "linear", "cosine"))
    warmup_ratio: float = param(0.1, "warm-up share of the steps (T-Vaccine.sh: 0.1)", ge=0, le=1)
    max_grad_norm: float | None = param(1.0, "gradient clipping (script sets none: transformers default 1.0)", gt=0)


def sample_layers(grad_norms: dict, k: int, generator=None) -> list[int]:
    """k distinct layers drawn with probability ∝ gradient norm (uniform if all norms are 0)."""
    import torch
    ids = sorted(grad_norms)
    w = torch.tensor([float(grad_norms[i]) for i in ids], dtype=torch.float64)
    if not torch.isfinite(w).all() or w.sum() <= 0:
        w = torch.ones_like(w)
    k = min(k, len(ids))
    pick = torch.multinomial(w / w.sum(), k, replacement=False, generator=generator)
    return sorted(ids[j] for j in pick.tolist())


class TargetedPerturbationTrainer(PerturbedAlignmentTrainer):
    """Vaccine's step restricted to sampled layers.  Layer importances are the hidden-state gradient
    norms of the loss on a *harmful* batch (``harmful``: a ``BatchCycler``), refreshed every
    ``probe_every`` steps; without ``harmful`` they fall back to the current alignment batch's."""

    def __init__(self, *a, n_layers: int = 8, resample_every: int = 20, freeze_others: bool = True,
                 harmful=None, probe_every: int = 200, **kw):
        super().__init__(*a, **kw)
        import torch
        self.n_layers, self.resample_every, self.freeze_others = n_layers, resample_every, freeze_others
        self.harmful, self.probe_every = harmful, probe_every
        self.sampled: list[int] = []
        self.sample_history: list[tuple[int, list[int]]] = []
        self.importance: dict[int, float] | None = None
        self.probe_history: list[tuple[int, dict]] = []
        self.gen = torch.Generator().manual_seed(self.args.seed)
        self._steps_seen = 0

    def probe(self, model) -> dict[int, float]:
        """Per-layer ‖∂L_harmful/∂h_l‖ on the next harmful batch (no parameter gradients)."""
        _, g = C.hidden_state_grads(model, self.harmful.next(C.model_device(model)))
        return {i: float(x.float().norm()) for i, x in g.items()}

    def layers_to_perturb(self, model, grads):
        step = self._steps_seen
        if self.harmful is not None and (self.importance is None or step % self.probe_every == 0):
            self.importance = self.probe(model)
            self.probe_history.append((step, dict(self.importance)))
        if not self.sampled or step % self.resample_every == 0:
            norms = self.importance if self.harmful is not None else {i: float(g.float().norm()) for i, g in grads.items()}
            self.sampled = sample_layers(norms, self.n_layers, self.gen)
            self.sample_history.append((step, list(self.sampled)))
        self._steps_seen += 1
        return self.sampled

    def after_backward(self, model, deltas):
        if not self.freeze_others:
            return
        keep = set(self.sampled)
        for name, p in model.named_parameters():
            li = C.layer_of(name)
            if p.requires_grad and li is not None and li not in keep:
                p.grad = None


@DEFENSES.register("t-vaccine")
class TVaccine(Vaccine):
    Config = TVaccineConfig
    PROFILE = {
        "tiny": {"n_align": 16, "max_steps": 2, "batch_size": 4, "max_length": 64, "n_layers": 1},
        "smoke": {"n_align": 320, "lr": 2e-4, "max_steps": 40, "batch_size": 8, "max_length": 192},
        "paper": {},
    }
    trainer_cls = TargetedPerturbationTrainer
    deviations = Vaccine.deviations + (
        "non-sampled layers: every trainable weight of the layer drops its update (authors: only the attention LoRA "
        "weights are frozen)",
        "pass 1 takes hidden-state gradients of all layers, so the paper's memory saving is not reproduced")
    # 4: authors' LoRA α/dropout, weight decay, cosine + warm-up, max length 200; 3: layer importances from a
    # harmful batch every probe_every steps (authors); 2: attention outputs
    version = 4

    def build_data(self, seed: int = 0) -> BuiltData:
        """Alignment rows (harmful prompt → safe answer) and, in ``parts["probe"]``, the harmful pairs the layer
        importances are measured on: both streams' prompts are harmful prompts the defense sees."""
        rows, harmful = C.alignment_rows(self.cfg.n_align, seed), C.harmful_rows(self.cfg.n_probe, seed + 1)
        return BuiltData(rows, harmful_prompts=prompts_of(rows) + prompts_of(harmful), parts={"probe": harmful},
                         stats={"alignment": len(rows), "harmful_probe": len(harmful)})

    def defend(self, ref, out_dir, ctx, built=None):
        from sdd_bench.harness import models
        from sdd_bench.harness.training import load_trainable, train_sft
        c = self.cfg
        built = self.data_for(ctx, built)
        rows, harmful = built.rows, built.parts["probe"]
        model, tok = load_trainable(ref, models.resolve_device(ctx.device))
        probe = C.BatchCycler(C.tokenize(tok, ctx.template, harmful, c.max_length), c.probe_batch, tok.pad_token_id,
                              ctx.seed)
        capture = C.TrainerCapture(TargetedPerturbationTrainer)
        new, info = train_sft(ref, rows, C.lora_train_config(c, ctx.seed), out_dir, ctx.template, device=ctx.device,
                              progress=ctx.progress, name=self.registry_name, trainer_cls=capture,
                              trainer_kwargs={"rho": c.rho, "n_layers": c.n_layers, "resample_every": c.resample_every,
                                              "freeze_others": c.freeze_others, "harmful": probe,
                                              "probe_every": c.probe_every},
                              model_and_tok=(model, tok))
        tr = capture.trainer
        info["data_stats"] = dict(built.stats)
        info["layer_samples"] = tr.sample_history
        info["layer_importance"] = [(step, {str(k): round(v, 6) for k, v in imp.items()}) for step, imp in tr.probe_history]
        return new, info
