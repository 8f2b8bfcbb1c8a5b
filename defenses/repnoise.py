"""``repnoise``: Representation Noising (Rosati, Wehner, Williams, Bartoszcze, Atanasov, Gonzales,
Majumdar, Maple, Sajjad & Rudzicz, "Representation Noising: A Defence Mechanism Against Harmful
Finetuning", NeurIPS 2024, arXiv:2405.14577).

Idea: remove the information about harmful text from the model's representations so a later
harmful fine-tune has nothing to recover.  RepNoise trains on *paired* data — each harmful prompt
once with its harmful answer and once with a refusal — with three terms: keep the harmless
cross-entropy low, push the MLP activations of the harmful text towards Gaussian noise (an MMD
between them and N(0, I) samples, averaged over layers), and ascend the harmful loss measured at
every layer (gradient ascent on a log, which bounds its growth):

    L = CE_harmless + β · mean_l MMD(MLP_l(harmful), noise) − α · log( (CE_L + Σ_{l=0..L} CE_l) / (L + 1) + 1 )

with CE_l the harmful cross-entropy of hidden state l read through the final norm and the LM
head (l = 0 is the embedding output, L + 1 hidden states in all) and CE_L the model's own output.
Only tokens where the paired sequences differ enter the three terms (the response part).

Defaults and sources, checked against the authors' repository domenicrosati/representation-noising
(its README says the full training code is not released; the stored arXiv HTML of the paper only
exposes its opening, so the paper's experimental-setup text was not read):
- the objective: ``rep_noise_loss`` in ``representation_noising/loss.py`` (commit 03689ff), read
  term by term: (1) the token mask is ``harmful input_ids != harmless input_ids`` of the paired
  batch; (2) the noise term hooks every ``model.layers.{i}.mlp`` output, zeroes the unmasked
  positions, flattens each example to one vector (``view(batch, -1)``) and takes the MMD between
  the batch of those vectors and equally masked N(0, I) noise, with ``MMD_loss``'s Gaussian kernel:
  five bandwidths b·2^k, k = 0..4, where b = (sum of pairwise squared distances)/(n² − n)/4 is
  computed from the data (a data-dependent bandwidth), MMD = mean(XX + YY − XY − YX); the layer
  values are averaged; (3) the harmful loss is the final-logit CE plus the CE of every hidden state
  through ``norm`` and the output embeddings, divided by the number of hidden states, plus 1,
  inside ``log``; (4) the harmless CE uses the same mask.  Implemented as read (``repnoise_loss``).
  Until version 2 this port used −α·log CE(final layer), a per-token MMD over decoder states with
  fixed bandwidths, and unpaired harmless/harmful batches.
- β 0.001 and α 1: verified, ``rep_noise_loss`` defaults (same file); the README names the
  released defended model ``repnoise_0.001_beta``.  (Booster's reproduction of RepNoise,
  git-disl/Booster ``script/alignment/repNoise.sh``, uses α 0.1 instead; we keep the authors'.)
- data: the authors pair each harmful BeaverTails answer with a refusal to the same prompt
  (``data/beavertails_with_refusals_train.json``).  Here (``paired_rows``): unsafe
  ``beavertails-defense`` pairs, each with a refusal from ``_common.REFUSAL_TEMPLATES`` to the same
  prompt — RepNoise's GPT-written refusals are not in our data directory (deviation, recorded).
- lr 2e-5, full fine-tuning, batch 8, ``n_pairs`` 5000 (capped by the 1,796 distinct unsafe prompts
  of the partition), ``max_steps`` 1250: not found in what was read (README, ``loss.py``,
  ``datasets.py``, the demo notebook); values left as they were.  The repository's data helpers
  default to batch 4, context 256 and 1000 defence pairs, and the README warns that lr, α, β and
  the number of defence samples need a grid search per attack strength.  Weight decay 0, constant
  schedule, no warm-up, clipping 1.0 (transformers defaults): not stated by the authors; our choice.
- smoke: LoRA r 16 (α 32, all linear layers; our choice, RepNoise itself is full fine-tuning),
  lr 2e-4, 40 steps × batch 8; tiny: 2 steps.

Where this differs from ``loss.py``, deliberately:
- the masked CE: the authors multiply the *logits* by the shifted mask, so the first differing
  token is predicted from zeroed logits (a constant log V term) and token id 0 is dropped as a
  label; here the CE is the ordinary next-token CE on the masked positions (our labels), which is
  what the mask is meant to select.  Padding positions never count (the authors' mask also marks a
  padded position of the shorter sequence as "different").
- memory: each layer's LM-head read-out is recomputed in the backward pass
  (``torch.utils.checkpoint``) instead of keeping L + 1 vocabulary-sized logit tensors.
"""
from __future__ import annotations

from dataclasses import dataclass

from transformers import Trainer

from sdd_bench.harness.config import param
from sdd_bench.harness.registry import DEFENSES
from sdd_bench.harness.training import load_trainable, train_sft

from . import _common as C
from .base import BuiltData, Defense, prompts_of


@dataclass(frozen=True)
class RepNoiseConfig:
    beta: float = param(0.001, "weight of the MMD-to-noise term β (paper: 0.001)", ge=0)
    alpha: float = param(1.0, "weight of the harmful-loss ascent α (paper: 1)", ge=0)
    mmd_kernel_mul: float = param(2.0, "MMD bandwidth ratio between kernels (loss.py MMD_loss: 2)", gt=1)
    mmd_kernel_num: int = param(5, "MMD kernels (loss.py MMD_loss: 5)", ge=1)
    n_pairs: int = param(5000, "paired examples: harmful prompt with its harmful answer and with a refusal "
                               "(capped by the defense partition)", ge=1)
    lr: float = param(2e-5, "learning rate", gt=0)
    max_steps: int = param(1250, "optimizer steps", ge=1)
    batch_size: int = param(8, "batch size (harmless and harmful)", ge=1)
    max_length: int = param(256, "max tokens per example", ge=16)
    lora: bool = param(False, "LoRA instead of full fine-tuning (paper: full)")
    lora_r: int = param(16, "LoRA rank (if lora; our choice)", ge=1)
    lora_alpha: float = param(32.0, "LoRA α (if lora; our choice)", gt=0)
    lora_dropout: float = param(0.0, "LoRA dropout (if lora; our choice)", ge=0, lt=1)
    lora_target_modules: tuple[str, ...] | str = param("all-linear", "LoRA targets (if lora; our choice)")
    weight_decay: float = param(0.0, "AdamW weight decay (not stated by the authors; transformers default)", ge=0)
    scheduler: str = param("constant", "lr schedule (not stated; our choice)", choices=("constant", "linear", "cosine"))
    warmup_ratio: float = param(0.0, "warm-up share (not stated; our choice)", ge=0, le=1)
    max_grad_norm: float | None = param(1.0, "gradient clipping (not stated; transformers default)", gt=0)


def paired_rows(n: int, seed: int) -> list[dict]:
    """Harmful rows (prompt, harmful ``response``) each with a ``refusal`` to the same prompt."""
    import random
    rng = random.Random(seed + 7)
    return [dict(r, refusal=C.refusal_for(r["prompt"], rng)) for r in C.harmful_rows(n, seed)]


def mmd(x, y, kernel_mul: float = 2.0, kernel_num: int = 5):
    """MMD between samples x [n,d] and y [n,d] as ``loss.py``'s ``MMD_loss``: a sum of ``kernel_num`` Gaussian
    kernels exp(−‖a−b‖²/b_k) with b_k = b₀·mul^k and b₀ = mean off-diagonal squared distance / mul^(num//2)."""
    import torch
    n = x.shape[0]
    z = torch.cat([x, y]).float()
    d2 = torch.cdist(z, z).pow(2)
    m = z.shape[0]
    base = d2.detach().sum() / max(1, m * m - m) / kernel_mul ** (kernel_num // 2)
    base = base.clamp_min(1e-12)
    k = sum(torch.exp(-d2 / (base * kernel_mul ** i)) for i in range(kernel_num))
    return (k[:n, :n] + k[n:, n:] - k[:n, n:] - k[n:, :n]).mean()


def pair_batches(harm: dict, harmless_ids, harmless_labels, pad_id: int):
    """Pad a harmful batch and its paired harmless rows to one length; returns (harmful, harmless, mask) where
    mask marks response tokens at which the two sequences differ (``loss.py``: input_ids differ)."""
    import torch
    B = harm["input_ids"].shape[0]
    L = max(harm["input_ids"].shape[1], max(len(x) for x in harmless_ids))

    def pad(t, fill):
        return torch.nn.functional.pad(t, (0, L - t.shape[1]), value=fill)

    dev = harm["input_ids"].device
    ok_ids = torch.full((B, L), pad_id, dtype=torch.long, device=dev)
    ok_lab = torch.full((B, L), -100, dtype=torch.long, device=dev)
    ok_att = torch.zeros((B, L), dtype=torch.long, device=dev)
    for i, (ids, lab) in enumerate(zip(harmless_ids, harmless_labels)):
        ok_ids[i, :len(ids)] = torch.tensor(ids, device=dev)
        ok_lab[i, :len(lab)] = torch.tensor(lab, device=dev)
        ok_att[i, :len(ids)] = 1
    bad = {"input_ids": pad(harm["input_ids"], pad_id), "attention_mask": pad(harm["attention_mask"], 0),
           "labels": pad(harm["labels"], -100)}
    ok = {"input_ids": ok_ids, "attention_mask": ok_att, "labels": ok_lab}
    differ = bad["input_ids"] != ok["input_ids"]
    return bad, ok, differ


def _masked_labels(batch: dict, differ):
    return batch["labels"].masked_fill(~differ | (batch["labels"] == -100), -100)


def _final_norm(model):
    out = None
    for name, mod in model.named_modules():
        if name.split(".")[-1] in ("norm", "final_layernorm", "ln_f") and C.layer_of(name + ".") is None:
            out = mod
    if out is None:
        raise ValueError("could not find the final norm of this model")
    return out


def _ce(logits, labels):
    import torch.nn.functional as F
    return F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(), ignore_index=-100)


def repnoise_loss(model, harmful: dict, harmless: dict, differ, beta: float, alpha: float,
                  kernel_mul: float = 2.0, kernel_num: int = 5, scored_only: bool = True):
    """(loss, parts) of ``rep_noise_loss`` (loss.py): CE_harmless + β·mean_l MMD(MLP_l, noise)
    − α·log((CE_L + Σ_l CE_l)/(L+1) + 1), all on the positions in ``differ``.  ``scored_only=False`` runs
    each read-out over the whole sequence, as loss.py does (same value; bench/bench_repnoise.py times both)."""
    import torch
    import torch.nn.functional as F
    from torch.utils.checkpoint import checkpoint
    acts: dict[int, object] = {}
    handles = [layer.mlp.register_forward_hook(lambda _m, _i, out, i=i: acts.__setitem__(i, out))
               for i, layer in enumerate(C.decoder_layers(model))]
    try:
        out = model(input_ids=harmful["input_ids"], attention_mask=harmful["attention_mask"], output_hidden_states=True)
    finally:
        for h in handles:
            h.remove()
    bad_labels = _masked_labels(harmful, differ)
    m = (bad_labels != -100).unsqueeze(-1)
    noise = []
    for i in sorted(acts):
        h = acts[i] * m
        g = torch.randn_like(h) * m
        noise.append(mmd(h.reshape(h.shape[0], -1), g.reshape(g.shape[0], -1), kernel_mul, kernel_num))
    noise_loss = torch.stack(noise).mean()
    head, norm = model.get_output_embeddings(), _final_norm(model)
    # Each hidden state's read-out CE is taken only at the scored positions (the next-token targets inside the
    # mask): the same value as the whole-sequence CE with ignore_index, without the LM head over padding and
    # prompt tokens, which is most of RepNoise's compute (L + 1 vocabulary projections per step).
    scored = bad_labels[:, 1:] != -100
    targets = bad_labels[:, 1:][scored]
    if scored_only:
        readout = lambda h: F.cross_entropy(head(norm(h[:, :-1][scored])).float(), targets)  # noqa: E731
    else:
        readout = lambda h: _ce(head(norm(h)), bad_labels)  # noqa: E731
    layer_ces = [checkpoint(readout, h, use_reentrant=False) for h in out.hidden_states]
    ce_final = _ce(out.logits, bad_labels)
    harmful_loss = (ce_final + torch.stack(layer_ces).sum()) / len(out.hidden_states) + 1
    ok = model(input_ids=harmless["input_ids"], attention_mask=harmless["attention_mask"])
    ce_ok = _ce(ok.logits, _masked_labels(harmless, differ))
    loss = ce_ok + beta * noise_loss - alpha * torch.log(harmful_loss)
    return loss, {"harmless_ce": float(ce_ok.detach()), "harmful_ce": float(ce_final.detach()),
                  "harmful_loss_all_layers": float(harmful_loss.detach()), "mmd": float(noise_loss.detach())}


MECHANISM_BATCHES = 8  # held-out paired batches per model, as SEAM's and Booster's: a t interval over batches


def held_out_pairs(n: int, seed: int) -> list[dict]:
    """``n`` harmful pairs RepNoise never trains on (unsafe pairs of BeaverTails' *attack* partition; DESIGN §10),
    each with a refusal twin to the same prompt, as ``paired_rows`` builds its training pairs."""
    import random
    rng = random.Random(seed)
    pool = C.unsafe_pairs("beavertails-attack")
    return [{"prompt": r["prompt"], "response": r["response"], "refusal": C.refusal_for(r["prompt"], rng)}
            for r in rng.sample(pool, n)]


def harmful_information(ref, rows: list[dict], cfg: RepNoiseConfig, template: str, device: str) -> list[dict]:
    """Per batch of ``cfg.batch_size`` pairs, the parts of ``repnoise_loss`` on the adapter-merged model, no
    training: ``harmful_loss_all_layers`` (the harmful answers' CE read out from every hidden state, averaged, + 1:
    high when the representations no longer carry the harmful text) and ``mmd`` (MLP activations vs noise)."""
    import torch

    from sdd_bench.harness import models
    from sdd_bench.harness.training import PadCollator
    device = models.resolve_device(device)
    model, tok = models.load(ref, device=device, merge_adapter=True)
    model = model.float().eval()
    bad_rows = C.tokenize(tok, template, rows, cfg.max_length)
    twins = C.tokenize(tok, template, [{"prompt": r["prompt"], "response": r["refusal"]} for r in rows],
                       cfg.max_length)
    collate, bs, out = PadCollator(tok.pad_token_id), cfg.batch_size, []
    torch.manual_seed(0)  # the MMD's noise sample
    for i in range(0, len(rows) - bs + 1, bs):
        harm = {k: v.to(device) for k, v in collate(bad_rows[i:i + bs]).items()}
        tw = twins[i:i + bs]
        bad, ok, differ = pair_batches(harm, [t["input_ids"] for t in tw], [t["labels"] for t in tw],
                                       tok.pad_token_id)
        with torch.no_grad():
            _, parts = repnoise_loss(model, bad, ok, differ, cfg.beta, cfg.alpha, cfg.mmd_kernel_mul,
                                     cfg.mmd_kernel_num)
        out.append(parts)
    del model
    return out


class RepNoiseTrainer(Trainer):
    """Each example of the Trainer's batch is a harmful pair carrying its refusal twin's tokens."""

    def __init__(self, *a, beta: float = 1e-3, alpha: float = 1.0, kernel_mul: float = 2.0, kernel_num: int = 5,
                 pad_id: int = 0, **kw):
        super().__init__(*a, **kw)
        self.beta, self.alpha, self.kernel_mul, self.kernel_num, self.pad_id = beta, alpha, kernel_mul, kernel_num, pad_id
        self.parts_log: list[dict] = []

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        bad, ok, differ = pair_batches(inputs, inputs["harmless_input_ids"], inputs["harmless_labels"], self.pad_id)
        loss, parts = repnoise_loss(model, bad, ok, differ, self.beta, self.alpha, self.kernel_mul, self.kernel_num)
        self.parts_log.append(parts)
        return (loss, None) if return_outputs else loss


@DEFENSES.register("repnoise")
class RepNoise(Defense):
    Config = RepNoiseConfig
    PROFILE = {
        "tiny": {"n_pairs": 16, "max_steps": 2, "batch_size": 4, "max_length": 64, "lr": 1e-3},
        "smoke": {"n_pairs": 320, "lora": True, "lr": 2e-4, "max_steps": 40, "batch_size": 8,
                  "max_length": 192},
        "paper": {},
    }
    datasets = ("beavertails-defense",)
    version = 3  # 3: per-layer read-outs at scored positions only (same values up to float rounding, less compute)
    # 2: the authors' objective (loss.py) on paired data; 1: final-layer CE, per-token MMD, unpaired
    deviations = (
        "refusal twins are _common.REFUSAL_TEMPLATES (authors: RepNoise's paired GPT refusals, not in the data dir)",
        "n_pairs capped by the distinct unsafe prompts of beavertails-defense",
        "masked CE is the ordinary next-token CE on differing response tokens (loss.py zeroes the logits at the "
        "shifted mask, a constant term for the first differing token)",
        "lr, steps, batch, weight decay and schedule not published by the authors: our choice",
    )

    mechanism_runs_models = True

    def mechanism(self, probe) -> dict:
        """RepNoise's mechanism (paper §3: remove the information about harmful text from the representations, so a
        harmful fine-tune has nothing to recover; its loss ascends the harmful CE read out at every layer): harmful
        answers are harder to predict from every hidden state than before the defense.  Measured on
        ``MECHANISM_BATCHES`` held-out paired batches (``held_out_pairs``) as ``harmful_loss_all_layers`` of
        ``repnoise_loss`` (``harmful_information``), for the defended model and its start, paired over batches;
        the MMD to noise is recorded beside it.  Installed when the paired difference's 95% t interval lies above 0
        (our criterion)."""
        from statistics import mean

        from .base import paired_installed
        rows = held_out_pairs(MECHANISM_BATCHES * self.cfg.batch_size, probe.ctx.seed)
        before = harmful_information(probe.start, rows, self.cfg, probe.ctx.template, probe.ctx.device)
        after = harmful_information(probe.defended, rows, self.cfg, probe.ctx.template, probe.ctx.device)
        return paired_installed("harmful CE read out from every layer (+1)",
                                [p["harmful_loss_all_layers"] for p in before],
                                [p["harmful_loss_all_layers"] for p in after], higher=True, unit="batches",
                                source="RepNoise paper §3: the harmful-information term of its loss, ascended",
                                mmd_to_noise=mean(p["mmd"] for p in after),
                                start_mmd_to_noise=mean(p["mmd"] for p in before), batch_size=self.cfg.batch_size,
                                data={"harmful": "beavertails-attack (unsafe pairs; never trained on by a defense)"})

    def build_data(self, seed: int = 0) -> BuiltData:
        rows = paired_rows(self.cfg.n_pairs, seed)
        return BuiltData(rows, harmful_prompts=prompts_of(rows),
                         stats={"pairs": len(rows), "requested": self.cfg.n_pairs})

    def defend(self, ref, out_dir, ctx, built=None):
        from sdd_bench.harness import models
        c = self.cfg
        built = self.data_for(ctx, built)
        rows = built.rows
        model, tok = load_trainable(ref, models.resolve_device(ctx.device))
        twins = C.tokenize(tok, ctx.template, [{"prompt": r["prompt"], "response": r["refusal"]} for r in rows],
                           c.max_length)
        extra = [{"harmless_input_ids": t["input_ids"], "harmless_labels": t["labels"]} for t in twins]
        capture = C.TrainerCapture(RepNoiseTrainer)
        new, info = train_sft(ref, rows, C.lora_train_config(c, ctx.seed), out_dir, ctx.template,
                              device=ctx.device, progress=ctx.progress, name="repnoise", trainer_cls=capture,
                              model_and_tok=(model, tok), extra_fields=extra,
                              trainer_kwargs={"beta": c.beta, "alpha": c.alpha, "kernel_mul": c.mmd_kernel_mul,
                                              "kernel_num": c.mmd_kernel_num, "pad_id": tok.pad_token_id})
        log = capture.trainer.parts_log
        info["data_stats"] = dict(built.stats)
        info["loss_parts"] = {"first": log[0] if log else None, "last": log[-1] if log else None}
        return new, info
