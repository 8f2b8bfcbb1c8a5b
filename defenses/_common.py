"""Helpers shared by the defenses: the data pools they draw from (``unsafe_pairs``, the one filter for harmful
BeaverTails rows), a fixed refusal builder, a cycling batch source for a second data stream, per-layer hidden-state
hooks, a causal-LM loss that can run at a substitute set of weights (``torch.func.functional_call``), the training
config of a defense config (``train_config``: the one place of the LoRA α rule), a trainer factory that keeps the
trainer it builds (``TrainerCapture``), and saving a trained model the way ``harness.training.train_sft`` does.

Data partitions (DESIGN §10): harmful prompts and harmful responses come only from
``beavertails-defense`` (unsafe rows); safe alignment responses from its ``is_safe`` rows and
from ``refusals`` (Safety-Tuned LLaMAs refusals); benign anchors from Alpaca-GPT4 / Dolly.
"""
from __future__ import annotations

import contextlib
import random
import re
from typing import Callable, Sequence

from sdd_bench.harness import data

# Fixed, prompt-independent refusals used wherever a refusal *for a given harmful prompt* is
# needed (SimPO's chosen, DeepAlign's recovery, TAR's tamper-resistance target).  Generic
# templates avoid pairing a prompt with a refusal written for another request (the
# ``refusals`` responses often restate their own request).
REFUSAL_TEMPLATES = (
    "I'm sorry, but I can't help with that request.",
    "I cannot assist with this. It could cause harm to people, and I won't provide help with it.",
    "I'm not able to help with that. If you have another question, I'm happy to help.",
    "Sorry, I can't provide that. This request asks for something harmful or unsafe.",
    "I won't help with this request because it could lead to harm. Is there something else I can do for you?",
    "I must decline. Helping with this could put people at risk.",
)


def refusal_for(prompt: str, rng: random.Random) -> str:
    """A refusal for a harmful prompt: one of ``REFUSAL_TEMPLATES`` drawn with ``rng``."""
    return rng.choice(REFUSAL_TEMPLATES)


def unsafe_pairs(dataset: str, *, distinct_prompts: bool = False) -> list[dict]:
    """The harmful (prompt, response) rows of a BeaverTails partition (``beavertails-defense`` to train on,
    ``beavertails-attack`` for held-out measurements; DESIGN §10): ``is_safe`` false and a non-empty response, in
    file order, as loaded.  ``distinct_prompts`` keeps the first such row of each prompt (normalized text)."""
    rows = [r for r in data.load(dataset) if not r["is_safe"] and r["response"].strip()]
    if not distinct_prompts:
        return rows
    seen, out = set(), []
    for r in rows:
        k = data.normalize(r["prompt"])
        if k not in seen:
            seen.add(k)
            out.append(r)
    return out


def harmful_rows(n: int | None, seed: int) -> list[dict]:
    """Unsafe (prompt, harmful response) rows of ``beavertails-defense``, one per distinct prompt, shuffled."""
    rng = random.Random(seed)
    out = [{"prompt": r["prompt"], "response": r["response"], "category": (r["categories"] or [""])[0]}
           for r in unsafe_pairs("beavertails-defense", distinct_prompts=True)]
    rng.shuffle(out)
    return out[:n] if n else out


def alignment_rows(n: int, seed: int) -> list[dict]:
    """Harmful prompt → safe response: ``beavertails-defense`` is_safe rows first, then ``refusals`` pairs."""
    rng = random.Random(seed)
    safe = [{"prompt": r["prompt"], "response": r["response"], "source": "beavertails-safe"}
            for r in data.load("beavertails-defense") if r["is_safe"] and r["response"].strip()]
    rng.shuffle(safe)
    ref = [{"prompt": r["prompt"], "response": r["response"], "source": "refusals"} for r in data.load("refusals")]
    rng.shuffle(ref)
    return (safe + ref)[:n]


def benign_rows(n: int, seed: int, dataset: str = "alpaca-gpt4-1k") -> list[dict]:
    rng = random.Random(seed)
    rows = [{"prompt": r["prompt"], "response": r["response"]} for r in data.load(dataset) if r["response"].strip()]
    rng.shuffle(rows)
    return rows[:n]


class BatchCycler:
    """Endless shuffled batches of tokenized rows (a second data stream beside the Trainer's)."""

    def __init__(self, rows: Sequence[dict], batch_size: int, pad_id: int, seed: int = 0):
        from sdd_bench.harness.training import PadCollator
        if not rows:
            raise ValueError("BatchCycler needs at least one row")
        self.rows, self.bs, self.collate = list(rows), batch_size, PadCollator(pad_id)
        self.rng, self.order, self.pos = random.Random(seed), [], 0

    def next(self, device=None) -> dict:
        idx = []
        while len(idx) < self.bs:
            if self.pos >= len(self.order):
                self.order = list(range(len(self.rows)))
                self.rng.shuffle(self.order)
                self.pos = 0
            idx.append(self.order[self.pos])
            self.pos += 1
        b = self.collate([self.rows[i] for i in idx])
        return {k: v.to(device) if device is not None and hasattr(v, "to") else v for k, v in b.items()}


def tokenize(tok, template: str, rows: Sequence[dict], max_length: int) -> list[dict]:
    from sdd_bench.harness.training import tokenize_pairs
    return tokenize_pairs(tok, template, rows, max_length)


# --- losses at given weights -------------------------------------------------------------

def trainable(model) -> list[tuple[str, "object"]]:
    return [(n, p) for n, p in model.named_parameters() if p.requires_grad]


def lm_loss(model, batch: dict, params: dict | None = None, **kw):
    """Mean response-token cross-entropy of ``batch``; at ``params`` (name → tensor) when given."""
    args = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"], "labels": batch["labels"]}
    args.update(kw)
    if params is None:
        out = model(**args)
    else:
        from torch.func import functional_call
        out = functional_call(model, params, args=(), kwargs=args, strict=False)
    return out if kw else out.loss


def model_device(model):
    return next(model.parameters()).device


# --- per-layer hidden states (Vaccine, T-Vaccine) ----------------------------------------

def decoder_layers(model):
    """The transformer blocks (the largest ``ModuleList`` whose name ends in ``layers``)."""
    import torch.nn as nn
    best = None
    for name, mod in model.named_modules():
        if isinstance(mod, nn.ModuleList) and name.split(".")[-1] in ("layers", "h", "blocks"):
            if best is None or len(mod) > len(best):
                best = mod
    if best is None:
        raise ValueError("could not find the decoder layers of this model")
    return best


_LAYER_RE = re.compile(r"(?:^|\.)(?:layers|h|blocks)\.(\d+)\.")


def layer_of(param_name: str) -> int | None:
    m = _LAYER_RE.search(param_name)
    return int(m.group(1)) if m else None


ATTENTION_NAMES = ("self_attn", "attn", "attention", "self_attention")


def attention_modules(model) -> list:
    """Each decoder layer's self-attention module.  Vaccine and T-Vaccine perturb its output (the
    attention block's contribution before the residual add), as the authors' trainers hook
    ``LlamaAttention``/``OPTAttention`` (git-disl/Vaccine trainer.py, commit 39207088)."""
    out = []
    for i, layer in enumerate(decoder_layers(model)):
        mod = next((getattr(layer, n) for n in ATTENTION_NAMES if getattr(layer, n, None) is not None), None)
        if mod is None:
            raise ValueError(f"decoder layer {i} ({type(layer).__name__}) has no attention module named one of "
                             f"{ATTENTION_NAMES}")
        out.append(mod)
    return out


@contextlib.contextmanager
def layer_output_hooks(model, fn: Callable):
    """Call ``fn(i, h)`` on the output of layer i's self-attention module (the hidden state Vaccine
    perturbs); a non-None return replaces it."""
    handles = []

    def make(i):
        def hook(_mod, _inp, out):
            h = out[0] if isinstance(out, tuple) else out
            new = fn(i, h)
            if new is None:
                return None
            return (new,) + tuple(out[1:]) if isinstance(out, tuple) else new
        return hook

    for i, mod in enumerate(attention_modules(model)):
        handles.append(mod.register_forward_hook(make(i)))
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def hidden_state_grads(model, batch: dict, layer_ids: Sequence[int] | None = None):
    """(loss, {layer: ∂loss/∂h_layer}) from one forward/backward that leaves parameter grads untouched."""
    import torch
    caps: dict[int, object] = {}
    want = None if layer_ids is None else set(layer_ids)

    def grab(i, h):
        if want is None or i in want:
            if not h.requires_grad:
                h = h.detach().requires_grad_(True)
                caps[i] = h
                return h
            caps[i] = h
        return None

    with layer_output_hooks(model, grab):
        loss = lm_loss(model, batch)
    ids = sorted(caps)
    grads = torch.autograd.grad(loss, [caps[i] for i in ids], allow_unused=True)
    return loss.detach(), {i: (g if g is not None else torch.zeros_like(caps[i])).detach() for i, g in zip(ids, grads)}


def scaled_perturbation(grads: dict, rho: float) -> dict:
    """ε_l = ρ · g_l / ‖g‖ with ‖g‖ the joint norm over the given layers (Vaccine's normalised ascent step)."""
    import torch
    total = torch.sqrt(sum((g.float() ** 2).sum() for g in grads.values())) + 1e-12
    return {i: (rho * g / total).to(g.dtype) for i, g in grads.items()}


@contextlib.contextmanager
def add_to_hidden(model, deltas: dict):
    """Add ``deltas[i]`` to layer i's attention output during forwards inside the block."""
    def add(i, h):
        d = deltas.get(i)
        return None if d is None or d.shape != h.shape else h + d
    with layer_output_hooks(model, add):
        yield


# --- saving --------------------------------------------------------------------------------

def save_trained(model, tok, ref, out_dir, *, lora: bool, name: str):
    """Save like ``train_sft``: an adapter over ``ref`` when ``ref`` had none, else a merged checkpoint."""
    from sdd_bench.harness.models import ModelRef
    ckpt = out_dir / "model"
    if lora and ref.adapter is None:
        model.save_pretrained(ckpt)
        tok.save_pretrained(ckpt)
        return ModelRef(name=f"{ref.name}+{name}", path=ref.path, adapter=str(ckpt), lineage=ref.lineage + (name,))
    if lora:
        model = model.merge_and_unload()
    model.save_pretrained(ckpt)
    tok.save_pretrained(ckpt)
    return ModelRef(name=f"{ref.name}+{name}", path=str(ckpt), lineage=ref.lineage + (name,))


# The optimisation settings every defense config that trains through ``lora_train_config`` states itself,
# with the authors' values as defaults (issue 19: α = 2r, all-linear targets and dropout 0 used to be
# hard-coded here, which gave Vaccine 4× and Booster 16× the authors' LoRA scale).
TRAIN_FIELDS = ("lora", "lora_r", "lora_alpha", "lora_dropout", "lora_target_modules", "weight_decay", "scheduler",
                "warmup_ratio", "max_grad_norm")


# LoRA α where a defense config states no ``lora_alpha`` of its own (refusal-sft, seam): α = 2r, scale α/r = 2, the
# common LoRA SFT setting (our choice; it is TrainConfig's default pair r 16 / α 32).  Configs that follow their
# authors' LoRA (the baselines, issue 19) or state α as an option (sdd) use their own value.
LORA_ALPHA_PER_RANK = 2


def train_config(c, seed: int, *, required: tuple[str, ...] = (), **kw):
    """A ``TrainConfig`` from a defense config: every ``TrainConfig`` field the config declares under the same name
    (lr, epochs, max_steps, batch_size, max_length, lora, lora_r, lora_alpha, scheduler, …), then ``kw``; the others
    keep ``TrainConfig``'s defaults.  A config with ``lora_r`` but no ``lora_alpha`` gets
    α = ``LORA_ALPHA_PER_RANK``·r.  A config lacking one of ``required`` is a programming error and raises."""
    import dataclasses

    from sdd_bench.harness.training import TrainConfig
    declared = {f.name for f in dataclasses.fields(c)}
    missing = [f for f in required if f not in declared]
    if missing:
        raise TypeError(f"{type(c).__name__} lacks the training fields {missing} (see _common.TRAIN_FIELDS)")
    names = [f.name for f in dataclasses.fields(TrainConfig) if f.name != "seed"]
    fields = {f: getattr(c, f) for f in names if f in declared}
    if "lora_r" in fields and "lora_alpha" not in fields:
        fields["lora_alpha"] = LORA_ALPHA_PER_RANK * fields["lora_r"]
    fields.update(kw)
    return TrainConfig(seed=seed, **fields)


def lora_train_config(c, seed: int, **kw):
    """``train_config`` for a config that must state lr, max_steps, batch_size, max_length and every ``TRAIN_FIELDS``
    entry (the baselines: each states its own LoRA scale, weight decay, schedule, warm-up and clipping), so a missing
    one raises rather than falling back to a default."""
    return train_config(c, seed, required=("lr", "max_steps", "batch_size", "max_length") + TRAIN_FIELDS, **kw)


class TrainerCapture:
    """A ``trainer_cls`` for ``harness.training.train_sft`` that builds ``cls`` and keeps it (``.trainer``), so a
    defense can read its custom trainer's per-step log after training; ``setup(trainer)`` runs right after the trainer
    is built (TAR: the frozen reference model of its retain loss)."""

    def __init__(self, cls, setup: Callable | None = None):
        self.cls, self.setup, self.trainer = cls, setup, None

    def __call__(self, *a, **kw):
        trainer = self.cls(*a, **kw)
        if self.setup is not None:
            self.setup(trainer)
        self.trainer = trainer
        return trainer
