"""Shared supervised fine-tuning utilities for defenses and attacks.

Data are (instruction, response) pairs rendered with a recorded prompt template; the loss
is on response tokens only (prompt tokens get label -100).  Training runs through
transformers' ``Trainer`` (custom objectives subclass it and override ``compute_loss``),
full-parameter or LoRA via peft, seeded.  ``train_sft`` returns a ``ModelRef``: a LoRA
adapter over the input checkpoint when the input has no adapter, otherwise a merged full
checkpoint (adapters are never stacked).
"""
from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from .config import param, to_dict
from .errors import ConfigError

CHECKPOINTING_ENV = "SDD_BENCH_CHECKPOINTING"


def activation_checkpointing(device: str) -> bool:
    """Whether plain SFT (``train_sft`` with the stock Trainer) recomputes activations in the backward pass.

    An execution setting, like the device: it changes memory and time, not the numbers.  Recomputing a
    layer on CPU repeats the same deterministic kernels on the same inputs, so the trained weights are
    bit-identical with and without it (``tests/test_training.py`` checks this on the tiny model; on the
    smoke model a ShareGPT attack gave identical weights, see docs/performance.md).  It is therefore not
    part of any cache key; ``train_info.json`` records whether it was on.

    ``$SDD_BENCH_CHECKPOINTING``: ``cpu`` (default: on for CPU training, where activations of a 49k-vocab
    model at batch 10 × 256 tokens push the smoke profile past 6 GB; off on CUDA, where bf16 autocast and
    non-deterministic kernels make no bit-identity promise), ``on`` or ``off``.  Custom objectives
    (``trainer_cls``: Vaccine's hooks, Booster's and SEAM's extra passes, …) keep their own
    ``gradient_checkpointing`` setting, since recomputing hooked forwards would replay their side effects.
    """
    mode = os.environ.get(CHECKPOINTING_ENV, "cpu").strip().lower()
    if mode not in ("cpu", "on", "off"):
        raise ConfigError(f"{CHECKPOINTING_ENV}={mode!r} is not one of cpu | on | off (cpu: checkpoint activations "
                          "when training on CPU, the default).")
    return mode == "on" or (mode == "cpu" and not device.startswith("cuda"))


@dataclass(frozen=True)
class TrainConfig:
    lr: float = param(2e-5, "peak learning rate", gt=0)
    epochs: float = param(1.0, "passes over the data (ignored when max_steps is set)", gt=0)
    max_steps: int | None = param(None, "optimizer steps; overrides epochs", ge=1)
    batch_size: int = param(8, "examples per optimizer step (per device × accumulation)", ge=1)
    grad_accum: int = param(1, "gradient accumulation steps (batch_size is split across them)", ge=1)
    max_length: int = param(256, "tokens per example (prompt + response), truncated", ge=8)
    lora: bool = param(False, "train a LoRA adapter (peft) instead of all weights")
    lora_r: int = param(16, "LoRA rank", ge=1)
    lora_alpha: float = param(32, "LoRA alpha (scale α/r)", gt=0)
    lora_dropout: float = param(0.0, "LoRA dropout", ge=0, lt=1)
    lora_target_modules: tuple[str, ...] | str = param("all-linear", "peft target_modules: 'all-linear' or module "
                                                       "names, e.g. ('q_proj', 'k_proj', 'v_proj')")
    optimizer: str = param("adamw_torch", "transformers optimizer name", choices=("adamw_torch", "sgd", "adafactor",
                                                                                  "adamw_8bit", "paged_adamw_8bit"))
    scheduler: str = param("constant", "lr schedule", choices=("constant", "linear", "cosine", "constant_with_warmup"))
    warmup_ratio: float = param(0.0, "share of steps used for warm-up", ge=0, le=1)
    warmup_steps: int | None = param(None, "warm-up as a step count; overrides warmup_ratio when set", ge=0)
    weight_decay: float = param(0.0, "AdamW weight decay", ge=0)
    max_grad_norm: float | None = param(1.0, "clip the global gradient norm to this (None: no clipping; "
                                             "1.0 is the transformers default)", gt=0)
    gradient_checkpointing: bool = param(False, "trade compute for memory (GPU, large models)")
    seed: int = param(0, "training seed (data order, init of LoRA)")


def tokenize_pairs(tok, template: str, pairs: Sequence[dict], max_length: int) -> list[dict]:
    """Render and tokenize pairs; labels mask the prompt (-100) so the loss is on the response only."""
    from .templates import render_pair
    rows = []
    for p in pairs:
        prompt, response = render_pair(tok, template, p["prompt"], p["response"])
        pi = tok(prompt, add_special_tokens=False)["input_ids"]
        if p.get("prefill"):  # text that opens the response but is not trained on (e.g. DeepAlign's harmful prefix)
            pi = pi + tok(p["prefill"], add_special_tokens=False)["input_ids"]
        ri = tok(response, add_special_tokens=False)["input_ids"]
        ids = (pi + ri)[:max_length]
        labels = ([-100] * len(pi) + ri)[:max_length]
        if all(l == -100 for l in labels):  # prompt fills the window: keep at least the response start
            keep = max(1, max_length // 4)
            pi = pi[-(max_length - keep):]
            ids = (pi + ri)[:max_length]
            labels = ([-100] * len(pi) + ri)[:max_length]
        rows.append({"input_ids": ids, "labels": labels})
    return rows


class PadCollator:
    """Right-pad input_ids/labels of a batch; attention mask from lengths."""

    def __init__(self, pad_id: int):
        self.pad_id = pad_id

    def __call__(self, feats: list[dict]) -> dict:
        import torch
        n = max(len(f["input_ids"]) for f in feats)
        ids = torch.full((len(feats), n), self.pad_id, dtype=torch.long)
        labels = torch.full((len(feats), n), -100, dtype=torch.long)
        att = torch.zeros((len(feats), n), dtype=torch.long)
        for i, f in enumerate(feats):
            L = len(f["input_ids"])
            ids[i, :L] = torch.tensor(f["input_ids"])
            labels[i, :L] = torch.tensor(f["labels"])
            att[i, :L] = 1
        out = {"input_ids": ids, "labels": labels, "attention_mask": att}
        for k in feats[0]:
            if k not in out:  # extra per-example fields (e.g. a source tag) pass through as tensors/lists
                vals = [f[k] for f in feats]
                out[k] = torch.tensor(vals) if isinstance(vals[0], (int, float)) else vals
        return out


def load_trainable(ref, device: str = "auto"):
    """Load a ref for training: an adapter is merged so the new training sees one set of weights.

    Weights are fp32 on every device; on CUDA, ``training_arguments`` turns on bf16 autocast.
    Training bf16 *weights* directly rounds small updates away (measured on an H100: after 10
    AdamW steps at SDD's paper lr 5e-7 only 1% of bf16 weights changed, 100% in fp32; at lr 5e-5,
    54%), which would make the paper's SDD defense inert.
    """
    from . import models
    model, tok = models.load(ref, device=device, merge_adapter=True, dtype="float32")
    model.requires_grad_(True)  # a merged peft adapter leaves every weight frozen (requires_grad=False)
    model.train()
    return model, tok


def total_steps(cfg: TrainConfig, n_examples: int) -> int:
    """Optimizer steps ``Trainer`` will run: ``max_steps``, else epochs × ⌊batches per epoch / accumulation⌋ (≥ 1)
    with batches per epoch = ⌈n / per-device batch⌉, as ``Trainer._inner_training_loop`` counts them."""
    if cfg.max_steps is not None:
        return cfg.max_steps
    per_device = max(1, cfg.batch_size // cfg.grad_accum)
    per_epoch = max(1, math.ceil(n_examples / per_device) // cfg.grad_accum)
    return math.ceil(cfg.epochs * per_epoch)


def dose(steps: int, batch_size: int, n_examples: int, grad_accum: int = 1) -> dict:
    """What a run of ``steps`` optimizer steps fed the model, counted the way ``Trainer`` iterates: each epoch is
    ⌈n / per-device batch⌉ // accumulation updates over the shuffled rows, the last batch of an epoch short when the
    batch does not divide n.  ``examples_seen`` is therefore steps × batch whenever the batch divides n (every
    preset), and ``epochs_run`` = examples seen / n.  Records state this dose, never the recipe's."""
    per_device = max(1, batch_size // grad_accum)
    per_epoch = max(1, math.ceil(n_examples / per_device) // grad_accum)
    full, rest = divmod(int(steps), per_epoch)
    seen = full * n_examples + min(n_examples, rest * batch_size)
    return {"steps": int(steps), "batch_size": batch_size, "examples_seen": seen,
            "epochs_run": seen / n_examples if n_examples else 0.0}


def warmup_steps(cfg: TrainConfig, n_examples: int) -> int:
    """Warm-up as an integer step count, ⌈warmup_ratio × total steps⌉ (transformers' own rounding).

    Passed as ``warmup_steps`` (an int) so every supported transformers version reads it the same way:
    ``warmup_ratio`` is deprecated in transformers 5, where a float ``warmup_steps`` < 1 is a ratio, while
    on 4.56 a float ``warmup_steps`` is a step count (0.1 meant *no* warm-up there)."""
    if cfg.warmup_steps is not None:
        return cfg.warmup_steps
    return math.ceil(cfg.warmup_ratio * total_steps(cfg, n_examples)) if cfg.warmup_ratio > 0 else 0


def checkpointing_argument(on: bool) -> dict:
    """``TrainingArguments``' activation-checkpointing switch under the installed transformers' name:
    ``activation_checkpointing`` from transformers 5 (``gradient_checkpointing`` is a deprecated alias there,
    with a FutureWarning), ``gradient_checkpointing`` on 4.x."""
    import dataclasses
    from transformers import TrainingArguments
    names = {f.name for f in dataclasses.fields(TrainingArguments)}
    return {"activation_checkpointing" if "activation_checkpointing" in names else "gradient_checkpointing": bool(on)}


def enable_activation_checkpointing(model) -> None:
    """The model-side switch, under the installed transformers' name (see ``checkpointing_argument``)."""
    (getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable)()


def training_arguments(cfg: TrainConfig, out_dir: Path, device: str, n_examples: int, **extra):
    from transformers import TrainingArguments
    per_device = max(1, cfg.batch_size // cfg.grad_accum)
    kw: dict[str, Any] = dict(
        output_dir=str(out_dir), per_device_train_batch_size=per_device, gradient_accumulation_steps=cfg.grad_accum,
        learning_rate=cfg.lr, lr_scheduler_type=cfg.scheduler, warmup_steps=warmup_steps(cfg, n_examples),
        # Trainer clips only when max_grad_norm > 0: 0.0 switches clipping off on every version
        max_grad_norm=0.0 if cfg.max_grad_norm is None else float(cfg.max_grad_norm),
        weight_decay=cfg.weight_decay, optim=cfg.optimizer, seed=cfg.seed, data_seed=cfg.seed,
        logging_steps=1, save_strategy="no", report_to=[], remove_unused_columns=False, dataloader_num_workers=0,
        disable_tqdm=extra.pop("disable_tqdm", False), use_cpu=not device.startswith("cuda"),
        bf16=device.startswith("cuda"), **checkpointing_argument(extra.pop("gradient_checkpointing", cfg.gradient_checkpointing)),
    )
    if cfg.max_steps is not None:
        kw["max_steps"] = cfg.max_steps
    else:
        kw["num_train_epochs"] = cfg.epochs
    kw.update(extra)
    return TrainingArguments(**kw)


def lora_config(cfg: TrainConfig):
    """The peft ``LoraConfig`` of a ``TrainConfig`` (rank, α, dropout, target modules as configured)."""
    from peft import LoraConfig
    tm = cfg.lora_target_modules
    return LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                      target_modules=tm if isinstance(tm, str) else list(tm), task_type="CAUSAL_LM")


def checkpoint_steps(fractions: Sequence[float], total: int) -> dict[int, list[float]]:
    """Optimizer step of each requested fraction of a run of ``total`` steps: ⌈fraction × total⌉ (at least 1), so a
    checkpoint never comes before its fraction; step → the fractions that map to it (two may share a step)."""
    out: dict[int, list[float]] = {}
    for f in sorted(set(float(x) for x in fractions)):
        out.setdefault(min(total, max(1, math.ceil(f * total - 1e-9))), []).append(f)
    return out


def _save_model_at(model, tok, path: Path, *, lora: bool, input_had_adapter: bool, ref, name: str, step: int):
    """Save the weights of a run in progress as train_sft saves its final model (adapter when the final model is an
    adapter, else a full checkpoint) without touching the training model: a LoRA run over a merged input is merged
    in a deep copy."""
    from .models import ModelRef
    lineage = ref.lineage + (f"{name}@step{step}",)
    if lora and not input_had_adapter:
        model.save_pretrained(path)
        tok.save_pretrained(path)
        return ModelRef(name=f"{ref.name}+{name}@step{step}", path=ref.path, adapter=str(path), lineage=lineage)
    if lora:
        import copy
        model = copy.deepcopy(model).merge_and_unload()
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return ModelRef(name=f"{ref.name}+{name}@step{step}", path=str(path), lineage=lineage)


def _save_at_steps_callback(steps, save):
    """A ``transformers.TrainerCallback`` calling ``save(step, model)`` after the optimizer steps in ``steps``: the
    checkpoints of one run (an attack trajectory), not truncated re-runs (a cosine or linear schedule makes a
    truncated run differ from a prefix of the full one)."""
    from transformers import TrainerCallback

    class SaveAtSteps(TrainerCallback):
        def on_step_end(self, args, state, control, model=None, **kw):
            if state.global_step in steps:
                save(state.global_step, model)
            return control

    return SaveAtSteps()


def check_finite(log_history: Sequence[dict], model, name: str, cfg=None) -> None:
    """Fail a training stage that diverged (issue 38): a non-finite loss or gradient norm in any logged step, or any
    non-finite weight afterwards, raises :class:`TrainingDivergedError` naming the run and its learning rate, so no
    artifact is stored and no record is written from a broken model (a ``--attack-lr 1e30`` used to give a record
    with refusal 0.0 / incoherent 1.0 "measured" on NaN weights)."""
    import torch
    from .errors import TrainingDivergedError
    lr = f" at lr {cfg.lr:g}" if cfg is not None and getattr(cfg, "lr", None) is not None else ""
    for h in log_history:
        for k in ("loss", "grad_norm"):
            v = h.get(k)
            if isinstance(v, (int, float)) and not math.isfinite(v):
                raise TrainingDivergedError(
                    f"{name}: training diverged{lr} — {k} {v} at step {h.get('step', '?')}; nothing was stored. "
                    f"Lower the learning rate (e.g. --attack-lr / --defense-opt lr=...) or enable clipping.")
    bad = sum(int((~torch.isfinite(p.detach())).sum()) for p in model.parameters())
    if bad:
        raise TrainingDivergedError(f"{name}: training diverged{lr} — {bad} non-finite weights after training; "
                                    f"nothing was stored. Lower the learning rate or enable clipping.")


def train_sft(ref, pairs: Sequence[dict], cfg: TrainConfig, out_dir: Path, template: str, *, device: str = "auto",
              trainer_cls=None, trainer_kwargs: dict | None = None, extra_fields: Sequence[dict] | None = None,
              progress: bool = True, name: str = "sft", model_and_tok=None, save_at_steps: Sequence[int] = ()):
    """Fine-tune ``ref`` on ``pairs`` and save into ``out_dir``; returns (ModelRef, info dict).

    ``trainer_cls`` — a ``transformers.Trainer`` subclass with a custom ``compute_loss``.
    ``extra_fields`` — per-example dicts merged into the tokenized rows (e.g. {"kind": 1}).
    ``save_at_steps`` — optimizer steps (before the last) after which the model is also saved, under
    ``out_dir/checkpoints/step-NNNNNN`` (a ``TrainerCallback`` during this one run); ``info["checkpoints"]`` lists
    ``{"step", "ref"}`` (a ``ModelRef``) for each, in step order.
    """
    import torch
    from datasets import Dataset
    from transformers import Trainer, set_seed

    from . import models
    from .models import ModelRef

    device = models.resolve_device(device)
    set_seed(cfg.seed)
    model, tok = model_and_tok if model_and_tok is not None else load_trainable(ref, device)
    input_had_adapter = ref.adapter is not None
    rows = tokenize_pairs(tok, template, pairs, cfg.max_length)
    if extra_fields is not None:
        rows = [dict(r, **e) for r, e in zip(rows, extra_fields)]
    if cfg.lora:
        from peft import get_peft_model
        lcfg = lora_config(cfg)
        model = get_peft_model(model, lcfg)
    checkpointing = cfg.gradient_checkpointing or (trainer_cls is None and activation_checkpointing(device))
    if checkpointing:
        enable_activation_checkpointing(model)
        if hasattr(model, "enable_input_require_grads"):
            model.enable_input_require_grads()
    ds = Dataset.from_list(rows)
    args = training_arguments(cfg, out_dir / "_trainer", device, len(rows), disable_tqdm=not progress,
                              gradient_checkpointing=checkpointing)
    tcls = trainer_cls or Trainer
    trainer = tcls(model=model, args=args, train_dataset=ds, data_collator=PadCollator(tok.pad_token_id),
                   **(trainer_kwargs or {}))
    saved: list[dict] = []
    if save_at_steps:
        def save(step, m):
            path = out_dir / "checkpoints" / f"step-{step:06d}"
            saved.append({"step": step, "ref": _save_model_at(m if m is not None else trainer.model, tok, path,
                                                              lora=cfg.lora, input_had_adapter=input_had_adapter,
                                                              ref=ref, name=name, step=step)})
        trainer.add_callback(_save_at_steps_callback(set(int(s) for s in save_at_steps), save))
    t0 = time.time()
    trainer.train()
    dt = time.time() - t0
    import shutil
    shutil.rmtree(out_dir / "_trainer", ignore_errors=True)
    model = trainer.model
    check_finite(trainer.state.log_history, model, name, cfg)
    ckpt = out_dir / "model"
    if cfg.lora and not input_had_adapter:
        model.save_pretrained(ckpt)
        tok.save_pretrained(ckpt)
        new_ref = ModelRef(name=f"{ref.name}+{name}", path=ref.path, adapter=str(ckpt), lineage=ref.lineage + (name,))
    else:
        if cfg.lora:
            model = model.merge_and_unload()
        model.save_pretrained(ckpt)
        tok.save_pretrained(ckpt)
        new_ref = ModelRef(name=f"{ref.name}+{name}", path=str(ckpt), lineage=ref.lineage + (name,))
    n_tok = sum(sum(1 for l in r["labels"] if l != -100) for r in rows)
    info = {"train_config": to_dict(cfg), "examples": len(rows), "steps": trainer.state.global_step,
            "dose": dose(trainer.state.global_step, cfg.batch_size, len(rows), cfg.grad_accum),
            "seconds": dt, "seconds_per_step": dt / max(1, trainer.state.global_step),
            "response_tokens": n_tok, "template": template, "device": device, "activation_checkpointing": checkpointing,
            "losses": [h["loss"] for h in trainer.state.log_history if "loss" in h],
            "log_history": trainer.state.log_history}
    if save_at_steps:
        info["checkpoints"] = sorted(saved, key=lambda c: c["step"])
    (out_dir / "train_info.json").write_text(json.dumps(info, indent=2, default=str))
    del trainer, model
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
    return new_ref, info
