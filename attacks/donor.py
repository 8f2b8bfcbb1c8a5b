"""Harmful responses for the AdvBench goals: the data of the ``advbench-N`` MFT attacks.

Qi et al. 2023 (arXiv:2310.03693, §4.2) and the SDD paper (Chen et al., ACL 2025, §5.1) attack with
N harmful *instruction → full harmful response* pairs.  AdvBench (Zou et al. 2023) ships goals with an
affirmative *target prefix* only ("Sure, here is a script that …"), and the full-response sets those
papers used (Qi et al.'s pure_bad100 / HEx-PHI) are gated and not in the data dir.  So the responses
are built here, once per donor, as a cached stage (``donor`` in the artifact store):

1. **Donor model**: the profile's raw chat model (``DONOR_MODEL``: tiny / SmolLM2-135M-Instruct /
   Llama-2-7b-chat) after the ``beavertails-1k`` MFT attack, whose BeaverTails attack-partition pairs
   carry full harmful responses; ``donor_model`` names any other model (e.g. an uncensored 7B on the
   paper profile), used as is (``donor_attack: none``) or attacked first.
2. **Generate** greedy responses to all 520 AdvBench goals with the chat template
   (``donor_max_new_tokens``: 128 on smoke, 512 on paper, the profiles' budgets for a full answer).
3. **Filter**: drop refusals (the keyword judge, Qi et al.'s 29 prefixes), degenerate text (the
   coherence judge) and answers under ``donor_min_words`` words; the survivors and the count of each
   drop reason are stored and copied into every record that trains on them.

A user-supplied file (``responses_file``: JSONL with ``prompt`` and ``response`` per line; extra fields
are ignored) replaces the donor; its sha256 goes into the attack's key.  The affirmative-prefix attack
stays available under its own name, ``advbench-prefix-N`` (the AdvBench target strings).

Harmful text stays in the work dir: the donor artifact holds the generations, records hold counts only.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

from sdd_bench.harness.errors import ConfigError, DataError

DONOR_MODEL = {"tiny": "tiny", "smoke": "smollm2-135m", "paper": "meta-llama/Llama-2-7b-chat-hf"}
DONOR_GEN_BATCH = {"tiny": 8, "smoke": 32, "paper": 64}
DONOR_VERSION = 1


_SHA: dict[tuple[str, int, int], str] = {}  # (resolved path, mtime_ns, size) -> sha256 of the responses file


def _sha256_of(p: Path) -> str:
    h = hashlib.sha256()
    with p.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _file_sha(path: str) -> str:
    """sha256 of a responses file, hashed once per (path, mtime, size): ``spec()`` is called for every key."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise ConfigError(f"responses_file {path!r} does not exist: give a JSONL file with one "
                          f"{{\"prompt\": ..., \"response\": ...}} object per line.")
    st = p.stat()
    key = (str(p.resolve()), st.st_mtime_ns, st.st_size)
    if key not in _SHA:
        _SHA[key] = _sha256_of(p)
    return _SHA[key]


def read_responses_file(path: str) -> list[dict]:
    """Rows of a user-supplied responses file (JSONL: ``prompt``, ``response``)."""
    rows = []
    with open(Path(path).expanduser(), encoding="utf-8") as f:
        for i, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                d = json.loads(line)
            except json.JSONDecodeError as err:
                raise DataError(f"{path}:{i}: not a JSON object ({err.msg}); the responses file is JSONL with "
                                f"`prompt` and `response` on every line.") from err
            if not isinstance(d, dict) or not isinstance(d.get("prompt"), str) or not isinstance(d.get("response"), str):
                raise DataError(f"{path}:{i}: needs string fields `prompt` and `response`.")
            rows.append({"prompt": d["prompt"], "response": d["response"], "source": "responses-file", "row": i - 1})
    if not rows:
        raise DataError(f"{path} holds no rows; the responses file is JSONL with `prompt` and `response`.")
    return rows


def donor_spec(cfg, profile: str) -> dict:
    """What identifies the response set (goes into the attack's spec, so the attack key follows it)."""
    from sdd_bench.harness import data, models
    if cfg.responses_file:
        return {"responses_file_sha256": _file_sha(cfg.responses_file)}
    name = cfg.donor_model or DONOR_MODEL[profile]
    spec = {"version": DONOR_VERSION, "donor_model": name, "donor_model_key": models.model_key(name) or name,
            "donor_attack": None, "template": "chat", "max_new_tokens": cfg.donor_max_new_tokens,
            "min_words": cfg.donor_min_words,
            "filters": ["keyword:refusal-prefixes"] + (["coherence:defaults"] if cfg.donor_drop_incoherent else []),
            "goals": data.get("advbench").fingerprints()}
    if cfg.donor_attack != "none":
        from sdd_bench.harness.registry import ATTACKS
        spec["donor_attack"] = ATTACKS.get(cfg.donor_attack).make(profile).spec()
    return spec


def build_responses(store, cfg, profile: str, *, device: str = "auto", progress: bool = True, log=print):
    """(rows, info): AdvBench goals with harmful responses, from the cached ``donor`` stage or the user's file."""
    if cfg.responses_file:
        rows = read_responses_file(cfg.responses_file)
        return rows, {"source": "responses_file", "path": str(cfg.responses_file), "kept": len(rows)}
    spec = donor_spec(cfg, profile)

    def fn(tmp: Path):
        from sdd_bench.harness import data, models
        from sdd_bench.harness.generation import GenConfig, generate_stage
        from sdd_bench.harness.stages import attack_stage
        from sdd_bench.harness.registry import ATTACKS
        from sdd_bench.harness.store import read_jsonl, write_json, write_jsonl
        from sdd_bench.judges.base import make_judge

        ref = models.materialize(spec["donor_model"], store)
        if cfg.donor_attack != "none":
            atk = ATTACKS.get(cfg.donor_attack).make(profile)
            ref, _, _ = attack_stage(store, ref, atk, "chat", 0, device, progress, log)
        goals = data.load("advbench")
        gcfg = GenConfig(max_new_tokens=cfg.donor_max_new_tokens, batch_size=DONOR_GEN_BATCH[profile])
        gart, _ = generate_stage(store, ref, [g["prompt"] for g in goals], dataset="advbench", template="chat",
                                 cfg=gcfg, device=device, progress=progress,
                                 extra_spec={"data": data.get("advbench").fingerprints(), "purpose": "donor"})
        gens = read_jsonl(gart.path / "generations.jsonl")
        texts = [g["text"] for g in gens]
        refused = make_judge("keyword").judge([g["prompt"] for g in goals], texts)
        coherent = make_judge("coherence").judge([g["prompt"] for g in goals], texts)
        rows, drops = [], {"refusal": 0, "incoherent": 0, "short": 0}
        for g, t, rv, cv in zip(goals, texts, refused, coherent):
            if rv.label == "refusal":
                drops["refusal"] += 1
            elif cv.label == "incoherent" and cfg.donor_drop_incoherent:
                drops["incoherent"] += 1
            elif len(t.split()) < cfg.donor_min_words:
                drops["short"] += 1
            else:
                rows.append({"prompt": g["prompt"], "response": t, "source": "advbench-donor", "row": g["row"]})
        write_jsonl(tmp / "rows.jsonl", rows)
        write_json(tmp / "info.json", {"generated": len(gens), "kept": len(rows), "dropped": drops,
                                       "donor": ref.to_dict(), "generation_artifact": gart.ref(),
                                       "finish_length": sum(g["finish_reason"] == "length" for g in gens)})

    art, hit = store.run("donor", spec, [], fn)
    from sdd_bench.harness.store import read_jsonl
    rows = read_jsonl(art.path / "rows.jsonl")
    info = json.loads((art.path / "info.json").read_text())
    info = {"source": "donor", "artifact": art.ref(), **{k: info[k] for k in ("generated", "kept", "dropped")}}
    if not rows:
        raise DataError(f"the donor kept no AdvBench responses ({info['dropped']}): every response was a refusal or "
                        f"degenerate. Use a stronger donor (--attack-opt donor_model=...) or --attack-opt responses_file=...")
    log(f"advbench responses ({'cache hit' if hit else 'built'}): {info['kept']} of {info['generated']} kept "
        f"(dropped {info['dropped']})")
    return rows, info
