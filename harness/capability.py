"""Capability: lm-eval tasks on local data, and benign fine-tuning accuracy (DESIGN §6).

**lm-eval capability.**  The task YAMLs under ``harness/tasks/`` are lm-eval task configs with
``dataset_path: json`` (MMLU, OpenBookQA, ARC-Easy, ARC-Challenge, HellaSwag, PIQA).  They copy
the prompts, choices and metrics of lm-eval's stock tasks, so numbers are comparable with
published lm-eval numbers, but read the checksum-verified files of the benchmark data
directory and never touch the network.  At run time:

1. ``capability-data`` artifact (cached): the verified files, schema-checked and copied into
   the store; MMLU split into one test and one dev file per subject (57).  The HF ``datasets``
   cache of these files lives inside the artifact too.
2. The YAMLs are rendered into a temp dir (``${data:…}`` → absolute path of the copy) and
   loaded with ``lm_eval.tasks.TaskManager(include_path=…, include_defaults=False)``.
3. ``lm_eval.simple_evaluate`` scores the model through lm-eval's own model class (``HFLM``
   wrapping the in-memory model; ``backend="vllm"``: lm-eval's vLLM class in a child process, GPU only).

``source="stock"`` maps the same names onto lm-eval's stock hub tasks (needs internet).

**Limits.**  ``limit`` is items per task (the first N of the file, as lm-eval's ``limit``).
For MMLU it is split evenly over the 57 subjects: ``ceil(N / 57)`` items *per subject* (the
first ones of each subject), because the file is sorted by subject and its first 200 rows
are two subjects only.  Per-task limits are passed to lm-eval as ``samples`` (doc indices).

**Benign fine-tuning accuracy** (``finetune_accuracy``): Vaccine/Booster (Huang et al. 2024)
definitions: SST-2 / AG News: correct iff the gold label word occurs in the output
(case-insensitive); GSM8K: the number after the last "The final answer is"/"####" marker,
else the last number of the output, equals the gold final answer.
"""
from __future__ import annotations

import json
import math
import os
import re
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import ConfigError, DataError, SddBenchError
# benign fine-tuning accuracy lives in harness/fa_tasks.py; every name is re-exported here
from .fa_tasks import (  # noqa: F401
    _fa_name, _FINAL_MARKERS, _gold, _LABEL_WORDS, _NUM, FA_FOR_DATASET, FA_TASKS, FATask, finetune_accuracy,
    finetune_accuracy_stage, gsm8k_final_number
)

TASK_DIR = Path(__file__).resolve().parent / "tasks"
DATA_FORMAT_VERSION = 1


@dataclass(frozen=True)
class CapabilityTask:
    """One capability task: its shipped YAML, lm-eval name, data files and stock fallback."""
    name: str
    yaml: str
    lm_eval_name: str
    stock_name: str
    files: tuple[str, ...]
    primary: str  # metric reported as "the" number: acc or acc_norm
    description: str
    schema: tuple[str, ...] = ("question", "choices", "answer")


TASK_SPECS: dict[str, CapabilityTask] = {t.name: t for t in [
    CapabilityTask("mmlu", "mmlu.yaml", "sdd_mmlu", "mmlu", ("capability/mmlu_test.jsonl", "capability/mmlu_dev.jsonl"),
                   "acc", "MMLU, 57 subjects, 4-choice letter answer; size-weighted aggregate + per subject",
                   ("subject", "question", "choices", "answer")),
    CapabilityTask("openbookqa", "openbookqa.yaml", "sdd_openbookqa", "openbookqa", ("capability/openbookqa_test.jsonl",),
                   "acc_norm", "OpenBookQA test (500), question stem → 4 choices"),
    CapabilityTask("arc_easy", "arc_easy.yaml", "sdd_arc_easy", "arc_easy", ("capability/arc_easy_test.jsonl",),
                   "acc", "ARC-Easy test (2,376), 'Question: … Answer:'"),
    CapabilityTask("arc_challenge", "arc_challenge.yaml", "sdd_arc_challenge", "arc_challenge",
                   ("capability/arc_challenge_test.jsonl",), "acc_norm", "ARC-Challenge test (1,172)"),
    CapabilityTask("hellaswag", "hellaswag.yaml", "sdd_hellaswag", "hellaswag",
                   ("capability/hellaswag_validation_1k.jsonl",), "acc_norm",
                   "HellaSwag validation, first 1,000 items, 4 endings",
                   ("activity_label", "ctx_a", "ctx_b", "endings", "label")),
    CapabilityTask("piqa", "piqa.yaml", "sdd_piqa", "piqa", ("capability/piqa_validation.jsonl",), "acc",
                   "PIQA validation (1,838), goal → 2 solutions"),
]}
# module-level handles for the lazy registry entries in capability_tasks.py
TASK_MMLU, TASK_OPENBOOKQA, TASK_ARC_EASY, TASK_ARC_CHALLENGE, TASK_HELLASWAG, TASK_PIQA = (
    TASK_SPECS[n] for n in ("mmlu", "openbookqa", "arc_easy", "arc_challenge", "hellaswag", "piqa"))

DEFAULT_TASKS = ("mmlu", "openbookqa", "arc_easy", "arc_challenge", "hellaswag", "piqa")

# Items per task by profile (None = the whole file).  MMLU's number is split evenly over its 57
# subjects (ceil(N/57) per subject).
#  tiny:  4 items per task (MMLU: 1 per subject) — exercises every code path in seconds.
#  smoke: 100 per task (MMLU: 2 per subject = 114).  100 items give a binomial stderr of ≈ ±0.05:
#         enough to see a collapse (a drop to chance), not a 2-point change.  Cost, SmolLM2-135M on
#         CPU (docs/capability.md): all six tasks = 2,256 requests = 15.5 CPU-min (≈ 8 min on 2 idle
#         cores); the pipeline's smoke set (arc_easy, piqa, openbookqa) = 1,000 short requests, the
#         few-minutes configuration for a stage that runs twice per cell.
#  paper: full test sets, as in the papers (SDD Table 2, SEAM).
PROFILE_LIMITS: dict[str, int | None] = {"tiny": 4, "smoke": 100, "paper": None}


def profile_limit(profile: str) -> int | None:
    if profile not in PROFILE_LIMITS:
        raise ConfigError(f"Unknown profile {profile!r} for capability limits; known: {', '.join(PROFILE_LIMITS)}.")
    return PROFILE_LIMITS[profile]


def _lm_eval_version() -> str:
    try:
        from importlib.metadata import version
        return version("lm_eval")
    except Exception as err:  # pragma: no cover
        raise SddBenchError("Capability evaluation needs lm-evaluation-harness: `pip install 'lm-eval>=0.4.5'` "
                            "(or `pip install 'sdd-bench[eval]'`).") from err


def resolve_tasks(tasks) -> list[str]:
    from .registry import TASKS
    from . import capability_tasks  # noqa: F401  (declares the names)
    if tasks is None:
        return list(DEFAULT_TASKS)
    if isinstance(tasks, str):
        tasks = [t for t in re.split(r"[,\s]+", tasks) if t]
    out = []
    for t in tasks:
        c = TASKS.canonical(t)  # raises with did-you-mean
        if c not in out:
            out.append(c)
    if not out:
        raise ConfigError("No capability tasks given; choose from " + ", ".join(DEFAULT_TASKS) + ".")
    return out


def _resolve_limits(tasks: list[str], limit) -> dict[str, int | None]:
    if isinstance(limit, dict):
        bad = [k for k in limit if k not in tasks]
        if bad:
            raise ConfigError(f"limit given for {bad}, which are not among the tasks {tasks}.")
        limits = {t: limit.get(t) for t in tasks}
    else:
        limits = {t: limit for t in tasks}
    for t, v in limits.items():
        if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 1):
            raise ConfigError(f"limit for {t!r} must be a positive integer or None (all items), got {v!r}.")
    return limits


# ------------------------------------------------------------------------------------------
# data preparation (cached artifact) and YAML rendering
def _validate_rows(rows: list[dict], task: CapabilityTask, rel: str) -> None:
    if not rows:
        raise DataError(f"{rel}: no rows. The file is malformed; restore it from its source (see `sdd-bench data check`).")
    for i, r in enumerate(rows):
        missing = [k for k in task.schema if k not in r]
        if missing:
            raise DataError(f"{rel}: row {i} has no field(s) {missing} (has {sorted(r)}); task {task.name!r} needs "
                            f"{list(task.schema)}. The file is malformed; restore it from its source.")
        ch = r.get("choices", r.get("endings"))
        ans = r.get("answer", r.get("label"))
        if not isinstance(ch, list) or len(ch) < 2 or not all(isinstance(c, str) for c in ch):
            raise DataError(f"{rel}: row {i}: choices must be a list of at least 2 strings, got {ch!r}. "
                            f"The file is malformed; restore it from its source.")
        try:
            ok = 0 <= int(ans) < len(ch)
        except (TypeError, ValueError):
            ok = False
        if not ok:
            raise DataError(f"{rel}: row {i}: answer {ans!r} is not an index into its {len(ch)} choices. "
                            f"The file is malformed; restore it from its source.")


def prepare_data(store, tasks: list[str]):
    """Cached ``capability-data`` artifact: verified, schema-checked copies of the task files."""
    from . import data
    from .store import write_json

    files = sorted({f for t in tasks for f in TASK_SPECS[t].files})
    paths = {rel: data.data_file(rel, dataset=f"capability:{_task_of(rel)}") for rel in files}  # verify (raises)
    spec = {"format": DATA_FORMAT_VERSION, "files": {rel: data.FILES[rel].sha256 for rel in files}}

    def fn(tmp: Path):
        index: dict[str, Any] = {"files": {}, "mmlu": None}
        for rel, p in paths.items():
            task = TASK_SPECS[_task_of(rel)]
            rows = data._read_jsonl(p)
            _validate_rows(rows, task, rel)
            if task.name == "mmlu":
                split = "test" if rel.endswith("_test.jsonl") else "dev"
                by_subject: dict[str, list[dict]] = {}
                for r in rows:
                    by_subject.setdefault(r["subject"], []).append(r)
                d = tmp / "mmlu" / split
                d.mkdir(parents=True, exist_ok=True)
                for s, rs in by_subject.items():
                    if not re.fullmatch(r"[a-z0-9_]+", s):
                        raise DataError(f"{rel}: subject name {s!r} is not snake_case; the file is malformed.")
                    with open(d / f"{s}.jsonl", "w", encoding="utf-8") as f:
                        for r in rs:
                            f.write(json.dumps(r, ensure_ascii=False) + "\n")
                index["mmlu"] = index["mmlu"] or {}
                index["mmlu"][split] = {s: len(rs) for s, rs in sorted(by_subject.items())}
            dst = tmp / "files" / rel
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(p, dst)
            index["files"][rel] = {"rows": len(rows), "sha256": data.FILES[rel].sha256}
        if index["mmlu"] is not None:
            test, dev = index["mmlu"].get("test", {}), index["mmlu"].get("dev", {})
            if dev and set(test) != set(dev):
                raise DataError(f"MMLU test and dev files cover different subjects: "
                                f"{sorted(set(test) ^ set(dev))}. The files are malformed.")
        write_json(tmp / "index.json", index)

    return store.run("capability-data", spec, [], fn)


def _task_of(rel: str) -> str:
    for t in TASK_SPECS.values():
        if rel in t.files:
            return t.name
    raise KeyError(rel)


_PLACEHOLDER = re.compile(r"\$\{([a-z_]+)(?::([^}]+))?\}")


def _render(text: str, values: dict[str, str], data_root: Path, where: str) -> str:
    def sub(m):
        key, arg = m.group(1), m.group(2)
        if key == "data":
            p = data_root / "files" / arg
            if not p.is_file():
                raise SddBenchError(f"{where}: {arg} is not among the prepared capability files.")
            return json.dumps(str(p))
        if key not in values:
            raise SddBenchError(f"{where}: unknown placeholder ${{{key}}}; known: data:<file>, {', '.join(values)}.")
        return values[key]
    return _PLACEHOLDER.sub(sub, text)


SHIM = ("# written by sdd_bench.harness.capability: functions the rendered task YAMLs refer to\n"
        "from sdd_bench.harness.capability import hellaswag_process_docs  # noqa: F401\n")


def render_task_dir(data_art, tasks: list[str], out: Path) -> dict[str, Any]:
    """Write the lm-eval YAMLs of ``tasks`` into ``out`` with absolute data paths; return the index."""
    index = json.loads((data_art.path / "index.json").read_text())
    root = data_art.path
    hf_cache = json.dumps(str(root / "hf_cache"))
    (out / "sdd_lmeval_utils.py").write_text(SHIM)
    for t in tasks:
        spec = TASK_SPECS[t]
        text = (TASK_DIR / spec.yaml).read_text(encoding="utf-8")
        if t == "mmlu":
            names = []
            for s in index["mmlu"]["test"]:
                dev = root / "mmlu" / "dev" / f"{s}.jsonl"
                vals = {"subject": s, "subject_words": s.replace("_", " "), "hf_cache": hf_cache,
                        "subject_test": json.dumps(str(root / "mmlu" / "test" / f"{s}.jsonl")),
                        "subject_dev": json.dumps(str(dev if dev.is_file() else root / "mmlu" / "test" / f"{s}.jsonl"))}
                (out / f"sdd_mmlu_{s}.yaml").write_text(_render(text, vals, root, spec.yaml), encoding="utf-8")
                names.append(f"sdd_mmlu_{s}")
            gtext = (TASK_DIR / "mmlu_group.yaml").read_text(encoding="utf-8")
            (out / "sdd_mmlu.yaml").write_text(_render(gtext, {"subject_tasks": json.dumps(names)}, root,
                                                       "mmlu_group.yaml"), encoding="utf-8")
        else:
            (out / spec.yaml).write_text(_render(text, {"hf_cache": hf_cache}, root, spec.yaml), encoding="utf-8")
    return index


def hellaswag_process_docs(dataset):
    """HellaSwag preprocessing of lm-eval's stock task (query = label: ctx_a Ctx_b; bracket artifacts removed)."""
    def clean(text: str) -> str:
        text = text.strip().replace(" [title]", ". ")
        text = re.sub(r"\[.*?\]", "", text)
        return text.replace("  ", " ")

    def one(doc):
        return {"query": clean(doc["activity_label"] + ": " + doc["ctx_a"] + " " + doc["ctx_b"].capitalize()),
                "choices": [clean(e) for e in doc["endings"]], "gold": int(doc["label"])}

    return dataset.map(one)


# ------------------------------------------------------------------------------------------
# lm-eval model classes
def make_lm(backend: str, model, tok, batch_size: int, device: str, ref=None):
    """lm-eval model object for ``backend``.

    ``hf``: lm-eval's HFLM around the in-memory model.  ``vllm``: lm-eval's own vLLM model class
    on the saved checkpoint (``ref.path``), a LoRA adapter served unmerged via
    ``lora_local_path``; run it through ``run_lm_eval_subprocess`` so its GPU memory is released.
    """
    if backend == "hf":
        from lm_eval.models.huggingface import HFLM
        return HFLM(pretrained=model, tokenizer=tok, batch_size=batch_size, device=device)
    if backend == "vllm":
        from importlib.util import find_spec
        from .vllm_backend import VLLMUnavailable
        if find_spec("vllm") is None:
            raise VLLMUnavailable("capability backend 'vllm' needs the vllm package (`pip install 'sdd-bench[gpu]'`) "
                                  "and a CUDA GPU; use backend 'hf' otherwise.")
        import torch
        if not torch.cuda.is_available():
            raise VLLMUnavailable("capability backend 'vllm' needs a CUDA GPU; none is visible. Use backend 'hf'.")
        from lm_eval.models.vllm_causallms import VLLM
        kw = {"pretrained": ref.path, "dtype": "bfloat16", "batch_size": "auto", "seed": 0,
              "gpu_memory_utilization": 0.85}
        if ref.adapter:
            import json as _json
            r = _json.loads((Path(ref.adapter) / "adapter_config.json").read_text()).get("r", 16)
            kw.update(lora_local_path=ref.adapter, enable_lora=True, max_lora_rank=max(16, int(r)))
        return VLLM(**kw)
    raise ConfigError(f"Unknown capability backend {backend!r}; known: hf, vllm.")


def _run_lm_eval_child(kwargs: dict) -> dict:
    return run_lm_eval(**kwargs)


def run_lm_eval_subprocess(**kwargs) -> dict:
    """``run_lm_eval`` in a spawned child process: vLLM's GPU memory is freed when it exits."""
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor
    with ProcessPoolExecutor(max_workers=1, mp_context=mp.get_context("spawn")) as ex:
        return ex.submit(_run_lm_eval_child, kwargs).result()


# ------------------------------------------------------------------------------------------
# the stage
def capability_stage(store, ref, tasks: list[str] | None = None, limit: int | dict | None = None, num_fewshot: int = 0,
                     batch_size: int = 16, device: str = "auto", loaded: tuple | None = None, backend: str = "hf",
                     source: str = "local", progress: bool = False):
    """Cached stage: lm-eval accuracy of ``ref`` on capability ``tasks``; returns (artifact, cache_hit).

    ``limit``: items per task (int, or {task: int|None}; None = all); MMLU's is split evenly over
    its subjects.  ``loaded`` = an already loaded (model, tok) to reuse.  ``source="stock"`` uses
    lm-eval's stock hub tasks instead of the local files (needs internet).  ``results.json`` holds
    per-task acc / acc_norm with stderr, n, task versions, n-shot, limits and the lm-eval version.
    """
    tasks = resolve_tasks(tasks)
    limits = _resolve_limits(tasks, limit)
    if source not in ("local", "stock"):
        raise ConfigError(f"capability source must be 'local' or 'stock', got {source!r}.")
    if not isinstance(num_fewshot, int) or num_fewshot < 0:
        raise ConfigError(f"num_fewshot must be a non-negative integer, got {num_fewshot!r}.")
    version = _lm_eval_version()
    data_art = None
    spec: dict[str, Any] = {"model": ref.identity(), "tasks": tasks, "limits": limits, "num_fewshot": num_fewshot,
                            "backend": backend, "source": source, "lm_eval": version}
    inputs = [ref.identity()]
    if source == "local":
        data_art, _ = prepare_data(store, tasks)
        spec["yaml_sha"] = {t: _sha_text((TASK_DIR / TASK_SPECS[t].yaml).read_text())
                            + ("+" + _sha_text((TASK_DIR / "mmlu_group.yaml").read_text()) if t == "mmlu" else "")
                            for t in tasks}
        inputs.append(data_art.ref())

    def fn(tmp: Path):
        kw = dict(ref=ref, tasks=tasks, limits=limits, num_fewshot=num_fewshot, batch_size=batch_size, device=device,
                  backend=backend, source=source, data_art=data_art, progress=progress)
        results = run_lm_eval_subprocess(**kw) if backend == "vllm" else run_lm_eval(loaded=loaded, **kw)
        from .store import write_json
        raw = results.pop("_raw")
        write_json(tmp / "results.json", results)
        write_json(tmp / "lm_eval_results.json", raw)

    return store.run("capability", spec, inputs, fn)


def _sha_text(text: str) -> str:
    import hashlib
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def run_lm_eval(ref, tasks: list[str], limits: dict[str, int | None], *, num_fewshot: int = 0, batch_size: int = 16,
                device: str = "auto", loaded: tuple | None = None, backend: str = "hf", source: str = "local",
                data_art=None, progress: bool = False) -> dict:
    """Run lm-eval (no caching) and summarize; ``results["_raw"]`` is lm-eval's own result dict."""
    import logging

    import lm_eval
    from lm_eval.tasks import TaskManager

    from . import models

    if not progress:
        logging.getLogger("lm_eval").setLevel(logging.WARNING)
        logging.getLogger("lm-eval").setLevel(logging.WARNING)
    dev = models.resolve_device(device)
    if backend == "vllm":  # vLLM loads the saved weights itself
        model, tok = None, None
    else:
        model, tok = loaded if loaded is not None else models.load(ref, device=dev)
    lm = make_lm(backend, model, tok, batch_size, dev, ref=ref)
    t0 = time.time()
    with tempfile.TemporaryDirectory(prefix="sdd-lmeval-") as td:
        if source == "local":
            index = render_task_dir(data_art, tasks, Path(td))
            tm = TaskManager(include_path=td, include_defaults=False)
            names = {t: TASK_SPECS[t].lm_eval_name for t in tasks}
        else:
            index = None
            tm = TaskManager()
            names = {t: TASK_SPECS[t].stock_name for t in tasks}
        samples, per_subject = _samples(tasks, limits, index, names)
        try:
            res = lm_eval.simple_evaluate(model=lm, tasks=[names[t] for t in tasks], num_fewshot=num_fewshot,
                                          samples=samples, task_manager=tm, log_samples=False,
                                          bootstrap_iters=1000, random_seed=0, numpy_random_seed=0,
                                          torch_random_seed=0, fewshot_random_seed=0)
        except DataError:
            raise
        except Exception as err:
            if "DatasetGenerationError" in type(err).__name__ or "json" in str(err).lower()[:200]:
                raise DataError(f"lm-eval could not read a capability data file ({type(err).__name__}: {err}). "
                                f"Check the files with `sdd-bench data check`.") from err
            raise
    dt = time.time() - t0
    summary = _summarize(res, tasks, names, limits, per_subject, num_fewshot)
    summary.update({"lm_eval_version": _lm_eval_version(), "source": source, "backend": backend,
                    "batch_size": batch_size, "device": dev, "seconds": round(dt, 2),
                    "model": ref.to_dict(), "limits": limits, "num_fewshot": num_fewshot,
                    "limit_rule": "first N items per task; MMLU: first ceil(N/57) items of each subject",
                    "data": (index or {}).get("files")})
    raw = {k: res.get(k) for k in ("results", "groups", "group_subtasks", "configs", "versions", "n-shot",
                                   "higher_is_better", "n-samples", "config") if k in res}
    summary["_raw"] = raw
    return summary


def _samples(tasks, limits, index, names):
    """lm-eval ``samples`` ({task: doc indices}) implementing per-task limits; None = everything."""
    if all(limits[t] is None for t in tasks):
        return None, None
    samples: dict[str, list[int]] = {}
    per_subject = None
    for t in tasks:
        n = limits[t]
        if t == "mmlu":
            if index is None:
                raise ConfigError("A limited MMLU run needs source='local' (per-subject sampling reads the local "
                                  "subject sizes); use limit=None with source='stock'.")
            sizes = index["mmlu"]["test"]
            per_subject = None if n is None else max(1, math.ceil(n / len(sizes)))
            for s, size in sizes.items():
                k = size if per_subject is None else min(per_subject, size)
                samples[f"sdd_mmlu_{s}"] = list(range(k))
        else:
            rows = (index or {}).get("files", {}).get(TASK_SPECS[t].files[0], {}).get("rows")
            if rows is None:
                raise ConfigError(f"Per-task limits need source='local' (task {t!r}).")
            samples[names[t]] = list(range(rows if n is None else min(n, rows)))
    return samples, per_subject


def _metric(block: dict, name: str):
    v = block.get(f"{name},none")
    se = block.get(f"{name}_stderr,none")
    return (None if v is None else float(v)), (None if se in (None, "N/A") else float(se))


def _summarize(res, tasks, names, limits, per_subject, num_fewshot) -> dict:
    out: dict[str, Any] = {"tasks": {}}
    results, versions, nshot = res.get("results", {}), res.get("versions", {}), res.get("n-shot", {})
    nsamp = res.get("n-samples", {})
    for t in tasks:
        name = names[t]
        spec = TASK_SPECS[t]
        entry: dict[str, Any] = {"lm_eval_task": name, "primary": spec.primary, "limit": limits[t]}
        if t == "mmlu":
            block = (res.get("groups") or {}).get(name) or results.get(name, {})
            subs = {}
            for key, b in results.items():
                if key.startswith(name + "_") and key != name:
                    s = key[len(name) + 1:]
                    acc, se = _metric(b, "acc")
                    subs[s] = {"acc": acc, "acc_stderr": se, "n": nsamp.get(key, {}).get("effective")}
            entry["subjects"] = dict(sorted(subs.items()))
            entry["n"] = sum(v["n"] or 0 for v in subs.values())
            entry["per_subject_limit"] = per_subject
            entry["version"] = versions.get(name)
            entry["subject_task_version"] = next((versions.get(f"{name}_{s}") for s in subs), None)
            entry["aggregate"] = "size-weighted mean over subjects (lm-eval weight_by_size)"
            entry["num_fewshot"] = next((nshot.get(f"{name}_{s}") for s in subs), num_fewshot)
        else:
            block = results.get(name, {})
            entry["n"] = nsamp.get(name, {}).get("effective")
            entry["version"] = versions.get(name)
            entry["num_fewshot"] = nshot.get(name, num_fewshot)
        for m in ("acc", "acc_norm"):
            v, se = _metric(block, m)
            if v is not None:
                entry[m], entry[f"{m}_stderr"] = v, se
        entry["value"] = entry.get(spec.primary, entry.get("acc"))
        out["tasks"][t] = entry
    return out


def read_results(art) -> dict:
    return json.loads((art.path / "results.json").read_text())


def format_table(results: dict) -> str:
    lines = [f"{'task':14s} {'n':>6s} {'acc':>14s} {'acc_norm':>14s}  primary"]
    for t, e in results["tasks"].items():
        def f(m):
            return f"{e[m]:.3f}±{e[m + '_stderr']:.3f}" if e.get(m) is not None and e.get(m + "_stderr") is not None \
                else (f"{e[m]:.3f}" if e.get(m) is not None else "-")
        lines.append(f"{t:14s} {e.get('n') or 0:6d} {f('acc'):>14s} {f('acc_norm'):>14s}  {e['primary']}")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------
# CLI
def register_cli(sub, add_common) -> dict:
    p = sub.add_parser("capability", help="lm-eval capability of a model (MMLU, OpenBookQA, ARC, HellaSwag, PIQA)")
    p.add_argument("--model", default="smollm2-135m", help="built-in name, checkpoint dir or adapter dir")
    p.add_argument("--tasks", default=",".join(DEFAULT_TASKS), help="comma-separated (`sdd-bench ls tasks`)")
    p.add_argument("--profile", default="smoke", choices=list(PROFILE_LIMITS),
                   help="sets the default --limit: " + ", ".join(f"{k}={v}" for k, v in PROFILE_LIMITS.items()))
    p.add_argument("--limit", type=int, default=None, help="items per task (MMLU: split evenly over 57 subjects); "
                   "0 = all items")
    p.add_argument("--num-fewshot", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--backend", default="hf", choices=["hf", "vllm"])
    p.add_argument("--source", default="local", choices=["local", "stock"],
                   help="local data dir (default) or lm-eval's stock hub tasks (needs internet)")
    add_common(p)
    return {"capability": cli_capability}


def cli_capability(args) -> int:
    from . import models
    from .store import Store

    os.environ.setdefault("HF_DATASETS_OFFLINE", "1" if args.source == "local" else "0")
    t0 = time.time()
    store = Store(args.workdir)
    store.check_no_legacy()
    limit = profile_limit(args.profile) if args.limit is None else (None if args.limit == 0 else args.limit)
    ref = models.materialize(args.model, store)
    art, hit = capability_stage(store, ref, tasks=args.tasks, limit=limit, num_fewshot=args.num_fewshot,
                                batch_size=args.batch_size, device=args.device, backend=args.backend,
                                source=args.source, progress=not args.quiet)
    res = read_results(art)
    print(f"{'cache hit' if hit else 'evaluated'}: {art.path}  ({time.time() - t0:.1f}s; lm-eval "
          f"{res['lm_eval_version']}, {res['num_fewshot']}-shot, limit {limit})")
    print(format_table(res))
    return 0
