"""``repnoise``: Representation Noising (Rosati, Wehner, Williams, Bartoszcze, Atanasov, Gonzales,
Majumdar, Maple, Sajjad & Rudzicz, "Representation Noising: A Defence Mechanism Against Harmful
Finetuning", NeurIPS 2024, arXiv:2405.14577).

Idea: remove the information about harmful text from the model's representations so a later
harmful fine-tune has nothing to recover.  RepNoise trains on paired harmless (harmful prompt →
safe answer) and harmful (harmful prompt → harmful answer) data with three terms: keep the
harmless cross-entropy low, push the hidden states of the harmful text towards Gaussian noise
(an MMD between them and N(0, I) samples, over all layers), and ascend the harmful loss
(gradient ascent on the log of the harmful cross-entropy, which bounds its growth):

    L = CE_harmless + β · Σ_l MMD(h_l(harmful), noise) − α · log CE_harmful

Defaults and sources, checked against the authors' repository domenicrosati/representation-noising
(its README says the full training code is not released; the stored arXiv HTML of the paper only
exposes its opening, so the paper's experimental-setup text was not read):
- β 0.001 and α 1: verified.  ``rep_noise_loss`` in ``representation_noising/loss.py`` (commit
  a1c3298d) defaults to ``beta`` 0.001 and ``alpha`` 1, and the README (commit 03689ff9) names the
  released defended model ``repnoise_0.001_beta``.  (Booster's reproduction of RepNoise,
  git-disl/Booster ``script/alignment/repNoise.sh``, uses α 0.1 instead; we keep the authors'.)
- data: ``beavertails-defense`` unsafe pairs as harmful, its is_safe rows + ``refusals`` as
  harmless.  The authors pair each harmful BeaverTails answer with a refusal to the same prompt
  (``data/beavertails_with_refusals_train.json``).
- lr 2e-5, full fine-tuning, batch 8, ``n_harmless``/``n_harmful`` 5000, ``max_steps`` 1250: not
  found in what was read (README, ``loss.py``, ``datasets.py``, the demo notebook, and the opening
  of the arXiv HTML); values left as they were.  The repository's data helpers default to batch 4,
  context 256 and a defence set of 1000 pairs, and the README warns that lr, α, β and the number of
  defence samples need a grid search for each attack strength.
- smoke: LoRA r 16, lr 2e-4, 40 steps × batch 8; tiny: 2 steps (unchanged).  MMD uses a Gaussian
  kernel with a few bandwidths and at most ``mmd_tokens`` response-token vectors per layer
  (subsampled; our choice, keeps the kernel matrix small on CPU).

Where this differs from the authors' code (``loss.py`` at a1c3298d): only response tokens of the
harmful examples enter the MMD (the authors mask the tokens where the paired harmful and harmless
sequences differ, and take activations at each layer's MLP output, whereas here the decoder
hidden states are used); the harmless and harmful batches are drawn independently (not the same
prompts); the harmful CE is the mean over response tokens of the final layer (the authors average
the CE of every layer's hidden state read through the final norm and LM head, add 1, then take
the log); the MMD kernel bandwidths are fixed multiples here, data-dependent in ``loss.py``.
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
class RepNoiseConfig:
    beta: float = param(0.001, "weight of the MMD-to-noise term β (paper: 0.001)", ge=0)
    alpha: float = param(1.0, "weight of the harmful-loss ascent α (paper: 1)", ge=0)
    mmd_tokens: int = param(256, "max token vectors per layer in the MMD (our choice)", ge=2)
    n_harmless: int = param(5000, "harmless pairs (harmful prompt → safe answer)", ge=1)
    n_harmful: int = param(5000, "harmful pairs (capped by the defense partition)", ge=1)
    lr: float = param(2e-5, "learning rate", gt=0)
    max_steps: int = param(1250, "optimizer steps", ge=1)
    batch_size: int = param(8, "batch size (harmless and harmful)", ge=1)
    max_length: int = param(256, "max tokens per example", ge=16)
    lora: bool = param(False, "LoRA instead of full fine-tuning (paper: full)")
    lora_r: int = param(16, "LoRA rank (if lora)", ge=1)


def mmd_rbf(x, y, bandwidths=(1.0, 2.0, 4.0, 8.0, 16.0)):
    """Biased MMD² between samples x [n,d] and y [m,d] with a sum of Gaussian kernels (bandwidth² scaled by d)."""
    import torch
    x, y = x.float(), y.float()
    d = x.shape[-1]

    def k(a, b):
        dist = torch.cdist(a, b).pow(2)
        return sum(torch.exp(-dist / (2.0 * s * s * d)) for s in bandwidths)

    return k(x, x).mean() + k(y, y).mean() - 2 * k(x, y).mean()


def noise_mmd(hidden_states, mask, max_tokens: int, generator=None):
    """Mean over layers of MMD(response-token hidden states, standard Gaussian noise of the same shape)."""
    import torch
    sel = mask.reshape(-1).nonzero().squeeze(-1)
    if sel.numel() > max_tokens:
        sel = sel[torch.randperm(sel.numel(), generator=generator)[:max_tokens].to(sel.device)]
    vals = []
    for h in hidden_states:
        x = h.reshape(-1, h.shape[-1])[sel]
        vals.append(mmd_rbf(x, torch.randn_like(x)))
    return torch.stack(vals).mean()


def repnoise_loss(model, harmless: dict, harmful: dict, beta: float, alpha: float, max_tokens: int = 256,
                  generator=None):
    """(loss, parts): CE_harmless + β·MMD(harmful hidden states, noise) − α·log CE_harmful."""
    import torch
    ce_ok = C.lm_loss(model, harmless)
    out = C.lm_loss(model, harmful, output_hidden_states=True)
    ce_bad = out.loss
    mask = harmful["labels"] != -100
    mmd = noise_mmd(out.hidden_states[1:], mask, max_tokens, generator)
    loss = ce_ok + beta * mmd - alpha * torch.log(ce_bad)
    return loss, {"harmless_ce": float(ce_ok.detach()), "harmful_ce": float(ce_bad.detach()), "mmd": float(mmd.detach())}


class RepNoiseTrainer(Trainer):
    def __init__(self, *a, harmful=None, beta: float = 1e-3, alpha: float = 1.0, mmd_tokens: int = 256, **kw):
        super().__init__(*a, **kw)
        import torch
        self.harmful, self.beta, self.alpha, self.mmd_tokens = harmful, beta, alpha, mmd_tokens
        self.gen = torch.Generator().manual_seed(self.args.seed)
        self.parts_log: list[dict] = []

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        hb = self.harmful.next(C.model_device(model))
        loss, parts = repnoise_loss(model, inputs, hb, self.beta, self.alpha, self.mmd_tokens, self.gen)
        self.parts_log.append(parts)
        return (loss, None) if return_outputs else loss


@DEFENSES.register("repnoise")
class RepNoise(Defense):
    Config = RepNoiseConfig
    PROFILE = {
        "tiny": {"n_harmless": 16, "n_harmful": 16, "max_steps": 2, "batch_size": 4, "max_length": 64, "lr": 1e-3},
        "smoke": {"n_harmless": 320, "n_harmful": 320, "lora": True, "lr": 2e-4, "max_steps": 40, "batch_size": 8,
                  "max_length": 192},
        "paper": {},
    }
    datasets = ("beavertails-defense", "refusals")

    def build_data(self, seed: int = 0) -> tuple[list[dict], list[dict]]:
        return C.alignment_rows(self.cfg.n_harmless, seed), C.harmful_rows(self.cfg.n_harmful, seed + 1)

    def defend(self, ref, out_dir, ctx):
        from sdd_bench.harness import models
        c = self.cfg
        harmless, harmful = self.build_data(ctx.seed)
        model, tok = load_trainable(ref, models.resolve_device(ctx.device))
        hs = C.BatchCycler(C.tokenize(tok, ctx.template, harmful, c.max_length), c.batch_size, tok.pad_token_id,
                           ctx.seed)
        box: dict = {}

        class _T(RepNoiseTrainer):
            def __init__(self, *a, **kw):
                super().__init__(*a, **kw)
                box["t"] = self

        new, info = train_sft(ref, harmless, C.lora_train_config(c, ctx.seed), out_dir, ctx.template,
                              device=ctx.device, progress=ctx.progress, name="repnoise", trainer_cls=_T,
                              model_and_tok=(model, tok),
                              trainer_kwargs={"harmful": hs, "beta": c.beta, "alpha": c.alpha,
                                              "mmd_tokens": c.mmd_tokens})
        log = box["t"].parts_log
        info["data_stats"] = {"harmless": len(harmless), "harmful": len(harmful)}
        info["loss_parts"] = {"first": log[0] if log else None, "last": log[-1] if log else None}
        return new, info
