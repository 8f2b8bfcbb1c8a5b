"""The cached model stages of a cell: ``defend`` and ``attack`` (DESIGN §4).

They import no plugin: a defense or attack is passed in and read through its contract (``defenses.base.Defense``,
``attacks.base.Attack``).  Attacks that run an attack stage of their own (``attacks/restore.py``'s harmful phase,
``attacks/donor.py``'s donor attack) import :func:`attack_stage` from here, the core, never the pipeline.
"""
from __future__ import annotations

import json
import time
from pathlib import Path


def _ref_to_json(ref, art_dir: Path) -> dict:
    d = ref.to_dict()
    for k in ("path", "adapter"):
        if d.get(k) and str(d[k]).startswith(str(art_dir)):
            d[k] = "@artifact" + str(d[k])[len(str(art_dir)):]
    return d


def _ref_from_artifact(art):
    from .models import ModelRef
    d = json.loads((art.path / "ref.json").read_text())
    for k in ("path", "adapter"):
        if d.get(k) and str(d[k]).startswith("@artifact"):
            d[k] = str(art.path) + d[k][len("@artifact"):]
    d["key"] = art.ref()
    return ModelRef.from_dict(d)


def defend_stage(store, ref, defense, ctx, log, built=None):
    """The cached ``defend`` stage: ``defense.defend`` on ``ref`` (an identity defense returns ``ref``).  ``built`` is
    the defense's ``BuiltData`` for ``ctx.seed`` when the caller built it already (``run_cell``: the preflight's), so
    it is not built again; a cache hit builds nothing."""
    if defense.identity:
        return ref, {"note": "no defense"}, None
    spec = dict(defense.spec(), template=ctx.template, seed=ctx.seed)

    def fn(tmp: Path):
        new, info = defense.defend(ref, tmp, ctx, built=built)
        (tmp / "ref.json").write_text(json.dumps(_ref_to_json(new, tmp)))
        (tmp / "info.json").write_text(json.dumps(info, indent=1, default=str))

    t0 = time.time()
    art, hit = store.run("defend", spec, [ref.identity()], fn)
    log(f"defend {spec['defense']}: {'cache hit' if hit else 'trained'} ({time.time() - t0:.0f}s) -> {art.ref()}")
    return _ref_from_artifact(art), json.loads((art.path / "info.json").read_text()), art


def attack_stage(store, ref, attack, template, seed, device, progress, log):
    # needs_store: ``prepare(store)`` first (advbench-N's donor-built responses, the ablation's cached search)
    if attack.needs_store:
        attack.prepare(store, device=device, progress=progress, log=log)
    spec = dict(attack.spec(), template=template, seed=seed)

    def fn(tmp: Path):
        new, info = attack.attack(ref, tmp, template, seed, device=device, progress=progress)
        for c in info.get("checkpoints") or []:  # trajectory checkpoints: refs relative to the artifact
            c["ref"] = _ref_to_json(c["ref"], tmp)
        (tmp / "ref.json").write_text(json.dumps(_ref_to_json(new, tmp)))
        (tmp / "info.json").write_text(json.dumps(info, indent=1, default=str))

    t0 = time.time()
    art, hit = store.run("attack", spec, [ref.identity()], fn)
    log(f"attack {attack.name}: {'cache hit' if hit else 'trained'} ({time.time() - t0:.0f}s) -> {art.ref()}")
    return _ref_from_artifact(art), json.loads((art.path / "info.json").read_text()), art
