"""Published numbers, stored as data with their source (``reference/*.json``), shown beside ours.

Each file names the paper, where its numbers were read (``source``: the paper itself, or a
secondary source that quotes it, with ``verified_against_paper``), a ``note`` on what could not be
found, and tables of rows ``[defense, attack, metric, value, unit]`` in the paper's own names and
units.  A table's ``match`` maps those names onto ours (defense, attack preset, metric key) and
says which model a cell must be for the setting to match.  Reference numbers are never averaged
into or compared numerically with ours by this package; a matched row only shows our number for
the corresponding cell beside the paper's.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from .aggregate import Results, Setting

REFERENCE_DIR = Path(__file__).resolve().parent / "reference"


@dataclass(frozen=True)
class Paper:
    file: str
    paper: str
    arxiv: str
    url: str
    source: dict
    note: str
    tables: list


def load_papers(directory: Path = REFERENCE_DIR) -> list[Paper]:
    out = []
    for f in sorted(directory.glob("*.json")):
        d = json.loads(f.read_text())
        out.append(Paper(f.name, d["paper"], d["arxiv"], d.get("url", ""), d.get("source", {}), d.get("note", ""),
                         d.get("tables", [])))
    return out


def _our_setting(res: Results, model_contains: str, defense: str, attack: str | None,
                 profile: str = "paper") -> list[Setting]:
    """Our cells in the paper's setting: same model, same profile (a tiny-profile record is never placed beside
    a paper's number), the paper's defense and attack without extra options."""
    pool = res.defended if attack is None else res.attacked
    return [s for s in pool if model_contains.lower() in s.model.lower() and s.profile == profile
            and s.defense == defense
            and not s.base_defense and not s.defense_options and s.attack == attack and not s.attack_options]


def reference_rows(papers: list[Paper], res: Results | None) -> list[dict]:
    """One row per published number, with our matching cell's number (if the setting matches) beside it."""
    rows = []
    for p in papers:
        for table in p.tables:
            match = table.get("match", {})
            cols = table["columns"]
            for values in table["rows"]:
                r = dict(zip(cols, values))
                ours_def = match.get("defense", {}).get(r["defense"])
                ours_atk = match.get("attack", {}).get(r["attack"], "?")
                ours_metric = match.get("metric", {}).get(r["metric"])
                ours = ""
                if res is not None and ours_def and ours_atk != "?" and ours_metric:
                    for s in _our_setting(res, match.get("model_contains", ""), ours_def, ours_atk,
                                          table.get("setting", {}).get("profile", "paper")):
                        summ = res.get(s, ours_metric)
                        if summ is not None:  # in the paper's units: % where the paper gives %
                            ours = f"{summ.fmt(percent=str(r.get('unit', '')).strip() == '%')} ({s.model}, {s.profile})"
                            break
                rows.append(dict(paper=p.paper, arxiv=p.arxiv, table=table["table"],
                                 model=table.get("setting", {}).get("model", ""), defense=r["defense"],
                                 attack=r["attack"], metric=r["metric"], value=r["value"], unit=r.get("unit", ""),
                                 our_defense=ours_def or "", our_attack=("initial" if ours_atk is None else ours_atk)
                                 if ours_atk != "?" else "", our_metric=ours_metric or "",
                                 ours=ours or "no matching cell in these records",
                                 source=p.source.get("where", ""), source_kind=p.source.get("kind", ""),
                                 verified_against_paper=bool(p.source.get("verified_against_paper"))))
    return rows


def source_lines(papers: list[Paper]) -> list[str]:
    """One line per paper: what was read and what is missing."""
    out = []
    for p in papers:
        kind = p.source.get("kind", "")
        verified = "verified against the paper" if p.source.get("verified_against_paper") else \
            "NOT verified against the paper"
        n = sum(len(t["rows"]) for t in p.tables)
        out.append(f"{p.paper}, arXiv {p.arxiv}: {n} numbers; source ({kind}, {verified}): "
                   f"{p.source.get('where', '')}. {p.note}")
    return out
