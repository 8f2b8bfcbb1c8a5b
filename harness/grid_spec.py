"""A grid spec (DESIGN §1): its YAML (``configs/*.yaml``) read and expanded into cells (normalized RunSpecs).

The planner (harness/grid_plan.py), the runner (harness/grid.py) and the publisher (harness/publish.py) all read
grids through this module, which imports none of them.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import config as C
from .errors import ConfigError

@dataclass(frozen=True)
class GridSpec:
    name: str = C.param("grid", "grid name (shown in plans and reports)")
    profile: str = C.param("smoke", "tiny | smoke | paper", choices=("tiny", "smoke", "paper"))
    models: list = C.param(default_factory=list, doc="model names/paths (default: the profile's model)")
    defenses: list = C.param(default_factory=lambda: ["none"], doc="defense names or {name, base_defense, options}")
    attacks: list = C.param(default_factory=lambda: ["none"],
                            doc="attack presets or {name, options, sweep: {option: [values]}}")
    seeds: list = C.param(default_factory=lambda: [0], doc="training seeds of defense and attack")
    judges: list = C.param(default_factory=list, doc="extra harmfulness judges on harmful prompts (e.g. harm-clf)")
    capability: bool = C.param(True, "run the capability stage (lm-eval)")
    run: dict = C.param(default_factory=dict, doc="other RunSpec fields applied to every cell (template, n_harmful…)")
    attacker_budget: str | None = C.param(None, "expand each fine-tuning attack into an attacker budget's sweep: small | "
                                          "paper | strong (harness/budget.py, docs/attacker_budget.md)")
    executor: str = C.param("local", "local | ray", choices=("local", "ray"))
    ray: dict = C.param(default_factory=dict, doc="ray options: address, num_cpus, cpus_per_cell, gpus_per_cell")
    description: str = C.param("", "free text")


GRID_KEYS = {"defenses", "attacks"}


def is_grid(data: dict) -> bool:
    return bool(GRID_KEYS & set(data))


def load_grid(path: str | Path, cells_out: list | None = None, progress=None) -> GridSpec:
    """The grid spec of a YAML file, validated down to every cell (``cells_out`` receives the expanded cells)."""
    data = C.load_yaml(path)
    if not is_grid(data):
        raise ConfigError(f"{path}: not a grid spec (a grid has `defenses:` and `attacks:` lists; a single run "
                          f"spec is run with `sdd-bench run --config`).")
    return grid_from_mapping(data, where=str(path), cells_out=cells_out, progress=progress)


def grid_from_mapping(data: dict, where: str = "grid", cells_out: list | None = None, progress=None) -> GridSpec:
    g = C.build(GridSpec, data, where=where)
    for k, v in (("defenses", g.defenses), ("attacks", g.attacks), ("seeds", g.seeds)):
        if not v:
            raise ConfigError(f"{where}: `{k}` is empty; list at least one.")
    for s in g.seeds:
        if not isinstance(s, int) or isinstance(s, bool):
            raise ConfigError(f"{where}: seeds must be integers, got {s!r}.")
    if g.attacker_budget is not None:
        from . import budget
        try:
            budget.get(g.attacker_budget)
        except ConfigError as err:
            raise ConfigError(f"{where}: {err}") from None
    cells = expand(g, where=where, progress=progress)  # validates every cell (names, options, sweeps)
    if cells_out is not None:
        cells_out.extend(cells)
    return g


def _entry(x: Any, kind: str, where: str) -> dict:
    if isinstance(x, str):
        return {"name": x}
    if isinstance(x, dict) and isinstance(x.get("name"), str):
        return dict(x)
    raise ConfigError(f"{where}: each of `{kind}` must be a name or a mapping with a `name`, got {x!r}.")


def _num(v: Any) -> Any:
    """YAML 1.1 reads ``2e-5`` as a string: accept numeric-looking strings in sweeps and options."""
    if isinstance(v, str):
        try:
            return float(v) if any(c in v for c in "eE.") else int(v)
        except ValueError:
            return v
    return v


def _attack_variants(entry: dict, where: str) -> list[tuple[str, dict]]:
    e = dict(entry)
    name = e.pop("name")
    base = {k: _num(v) for k, v in dict(e.pop("options", {}) or {}).items()}
    sweep = e.pop("sweep", None) or {}
    if e:
        raise ConfigError(f"{where}: attack {name!r} has unknown keys {sorted(e)}; use `options:` and `sweep:`.")
    if not isinstance(sweep, dict) or any(not isinstance(v, list) or not v for v in sweep.values()):
        raise ConfigError(f"{where}: `sweep` of attack {name!r} must map an option to a non-empty list, "
                          f"e.g. sweep: {{lr: [2.0e-5, 1.0e-4]}}.")
    out = [(name, base)]
    for opt, values in sweep.items():
        out = [(n, {**o, opt: _num(v)}) for n, o in out for v in values]
    return out


def _budget_variants(g: GridSpec, variants: list[tuple[str, dict]], seed: int, where: str) -> list[tuple[str, dict]]:
    """Each attack variant expanded into the grid's attacker budget (harness/budget.py); unchanged without one."""
    if g.attacker_budget is None:
        return variants
    from . import budget
    return [(name, o) for name, opts in variants
            for o in budget.expand_attack(g.attacker_budget, name, opts, g.profile, seed, where=where)]


def expand(g: GridSpec, where: str = "grid", progress=None) -> list:
    """Cells as RunSpecs, in a cache-friendly order (defense-major, so each defended model is built once).
    Each spec is normalized (options equal to their defaults dropped), so two spellings of one resolved
    configuration (``advbench-100`` and ``advbench-100 {lr: 5e-5}``) are one cell, trained once."""
    from .pipeline import resolve, spec_from_mapping
    models = g.models or [None]
    cells, seen = [], set()
    for d in g.defenses:
        de = _entry(d, "defenses", where)
        dname = de.pop("name")
        base = de.pop("base_defense", None)
        dopts = de.pop("options", {}) or {}
        bopts = de.pop("base_defense_options", {}) or {}
        if de:
            raise ConfigError(f"{where}: defense {dname!r} has unknown keys {sorted(de)}; "
                              f"use `base_defense`, `options`, `base_defense_options`.")
        for m in models:
            for seed in g.seeds:
                for a in g.attacks:
                    for aname, aopts in _budget_variants(g, _attack_variants(_entry(a, "attacks", where), where),
                                                         seed, where):
                        d_ = dict(g.run)
                        d_.update(defense=dname, base_defense=base, defense_options=dopts, base_defense_options=bopts,
                                  attack=aname, attack_options=aopts, model=m, profile=g.profile, seed=seed,
                                  judges=list(g.judges), capability=g.capability)
                        spec = spec_from_mapping(d_, where=f"{where} (cell {dname} × {aname})")
                        spec = resolve(spec).spec  # identity: options at their defaults drop out
                        k = json.dumps(C.to_dict(spec), sort_keys=True)
                        if k not in seen:
                            seen.add(k)
                            cells.append(spec)
                            if progress is not None:
                                progress(len(cells))
    return cells


def _opts(d: dict) -> str:
    return "[" + ",".join(f"{k}={v}" for k, v in sorted(d.items())) + "]" if d else ""


def label(spec) -> str:
    """The cell's name: defense (and base defense) with their options, attack with its options, model, seed."""
    s = f"{spec.defense}{_opts(spec.defense_options)}"
    if spec.base_defense:
        s += f"(on {spec.base_defense}{_opts(spec.base_defense_options)})"
    s += f" × {spec.attack}{_opts(spec.attack_options)}"
    if spec.model:
        s += f" @ {spec.model}"
    return s + f" seed {spec.seed}"
