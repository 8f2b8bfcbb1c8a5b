"""Finding and reading run records (the JSON that ``harness/pipeline.py:run_cell`` writes).

Inputs may be record files, directories (``**/record.json`` below them and ``*.json`` directly in
them: a work dir, a ``--out`` copy, or a directory of published records such as ``results/smoke``, see
``sdd_bench.harness.publish``) and grid YAML files (through ``sdd_bench.harness.grid.records_of_grid``).
Input paths are normalized (``results/smoke/`` is ``results/smoke``; an absolute path below the current
directory is made relative to it), so the sources a report names, and hence its files, do not depend on
how the same records were spelled.  Each record
becomes a :class:`Loaded` (the record and where it came from).  Two records of the same cell and
seed are one replicate: the one with more measurements is kept and the other is reported as a
duplicate, so a record found both in the store and as a ``--out`` copy is never counted twice.

Records are read as strict JSON (a ``NaN``/``Infinity`` literal is one error naming the file), and a published
record whose content no longer matches its ``published.digest`` (edited by hand after publishing) fails the whole
report in one line naming the file (:func:`check_published`): a leaderboard rendered without it would silently
lose a cell, and rendered with it would show a number nobody measured.  Unsigned published records (published
before digests) are read, with one log line.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

from sdd_bench.harness.errors import SddBenchError
from sdd_bench.harness.publish import (NonStandardJSON, loads_strict, nonstandard_line, tampered_line, unsigned_line,
                                       verify)


class ReportError(SddBenchError):
    """The report cannot be built from these inputs or options."""


class NoRecordsError(ReportError):
    """No run record was found in the inputs."""


class NotARecordError(ReportError):
    """A file given as input is not a run record."""


GRID_SUFFIXES = (".yaml", ".yml")


@dataclass
class Loaded:
    record: dict
    source: str


def is_record(obj: Any) -> bool:
    return isinstance(obj, dict) and isinstance(obj.get("cell"), dict) and isinstance(obj.get("metrics"), dict)


def read_record(path: Path) -> dict:
    """One record file; raises :class:`NotARecordError` with a one-line reason (:class:`ReportError` for a
    ``NaN``/``Infinity`` literal, which a directory of records must not skip)."""
    try:
        obj = loads_strict(path.read_text())
    except NonStandardJSON as err:  # not "not a record": a directory would skip it, and its cell would vanish
        raise ReportError(nonstandard_line(path, err)) from None
    except json.JSONDecodeError as err:
        raise NotARecordError(f"{path}: not a run record (invalid JSON: {err.msg} at line {err.lineno}).") from None
    except OSError as err:
        raise NotARecordError(f"{path}: cannot be read ({err.strerror}).") from None
    if not is_record(obj):
        raise NotARecordError(f"{path}: not a run record (a record has 'cell' and 'metrics' keys; "
                              f"write one with `sdd-bench run ... --out FILE` or pass the store's record dir).")
    return obj


def _grid_records(path: Path, workdir: str | None) -> list[dict]:
    workdir = workdir if workdir is not None else os.environ.get("SDD_BENCH_WORKDIR", "runs")  # the CLI's default
    try:
        from sdd_bench.harness.grid import records_of_grid
    except ImportError:
        raise ReportError(f"{path}: grid inputs need sdd_bench.harness.grid.records_of_grid, which this "
                          f"installation does not have; pass the grid's record files or its work dir instead.") from None
    return list(records_of_grid(path, workdir))


def _dir_records(path: Path, log: Callable[[str], None]) -> list[Loaded]:
    files = sorted(set(path.glob("**/record.json")) | set(path.glob("*.json")))
    out, skipped = [], []
    for f in files:
        try:
            out.append(Loaded(read_record(f), str(f)))
        except NotARecordError:
            skipped.append(f.name)
    if skipped:
        log(f"{path}: skipped {len(skipped)} JSON file(s) that are not run records ({', '.join(skipped[:5])}"
            f"{', …' if len(skipped) > 5 else ''})")
    return out


def normalize(item: str | Path) -> Path:
    """An input path as reports name it: without a trailing slash, relative to the current directory when below it."""
    path = Path(item)
    if path.is_absolute():
        try:
            return path.relative_to(Path.cwd())
        except ValueError:
            return path
    return path


def load(inputs: Iterable[str], workdir: str | None = None, log: Callable[[str], None] = print) -> list[Loaded]:
    """Every record of the inputs, in input order, before de-duplication."""
    out: list[Loaded] = []
    for item in inputs:
        path = normalize(item)
        if path.is_dir():
            out += _dir_records(path, log)
        elif path.suffix in GRID_SUFFIXES:
            if not path.is_file():
                raise ReportError(f"{path}: no such grid file.")
            got = _grid_records(path, workdir)
            if not got:
                log(f"{path}: no finished cell of this grid in the work dir "
                    f"{workdir if workdir is not None else '(default)'} (run it with `sdd-bench grid`, or pass --workdir)")
            out += [Loaded(r, f"{path}#{i}") for i, r in enumerate(got)]
        elif path.is_file():
            out.append(Loaded(read_record(path), str(path)))
        else:
            raise ReportError(f"{path}: no such file or directory.")
    if not out:
        grids = any(Path(i).suffix in GRID_SUFFIXES for i in inputs)
        raise NoRecordsError(f"no run records found in {', '.join(map(str, inputs)) or '(no inputs)'}; give record "
                             f"JSON files, directories holding them, or grid YAML files"
                             + (" (a grid's records are read from its work dir, --workdir)." if grids else "."))
    check_published(out, log)
    return out


def check_published(loaded: list[Loaded], log: Callable[[str], None] = print) -> None:
    """Raise :class:`ReportError` (one line naming the files and how to restore them) if a published record was
    edited after it was published (``harness.publish.verify``); log one line naming the unsigned ones.  Failing,
    rather than withdrawing the record, keeps the rule simple: no table is ever rendered from an edited record, and
    no committed leaderboard quietly loses a cell.  Records that were never published (the store's) pass."""
    states = [(x.source, verify(x.record)) for x in loaded]
    tampered = [src for src, st in states if st == "tampered"]
    if tampered:
        raise ReportError(tampered_line(tampered, "; not rendered"))
    unsigned = [src for src, st in states if st == "unsigned"]
    if unsigned:
        log(unsigned_line(unsigned))


def misstated_dose(record: dict) -> str | None:
    """Why a record's attack dose cannot be believed, or None: its stated ``examples_seen`` must be what its trainer's
    optimizer steps fed the model (``harness.training.dose``: steps × batch when the batch divides the rows).  Records
    written while the profile's step cap replaced the recipe's epochs (before 2026-12-07; issue 36) state the recipe's
    dose — a 10-shot attack "50 examples, 5 epochs" that ran 40 steps × 10 — and fail this check."""
    from sdd_bench.harness.training import dose
    info = record.get("attack_info")
    if not isinstance(info, dict) or "train_config" not in info:  # no attack, or no single fine-tune (restore phases)
        return None
    tc = info.get("train_config") or {}
    steps, batch, rows, seen = info.get("steps"), tc.get("batch_size"), info.get("examples"), info.get("examples_seen")
    if not all(isinstance(v, (int, float)) for v in (steps, batch, rows, seen)) or not rows:
        return "its attack_info lacks the steps, batch size, rows or examples seen to check its dose"
    want = dose(int(steps), int(batch), int(rows), int(tc.get("grad_accum") or 1))["examples_seen"]
    if abs(float(seen) - want) > 1e-9:
        return (f"states {seen:g} examples seen, but its trainer ran {steps} steps × batch {batch} over {rows} rows "
                f"= {want} (written before profile step caps became caps; re-run the cell)")
    return None


def withdraw_misstated(loaded: list[Loaded], log: Callable[[str], None] = print) -> list[Loaded]:
    """The records whose dose checks out; each withdrawn one is named in one log line (never mixed into a table)."""
    out = []
    for item in loaded:
        why = misstated_dose(item.record)
        if why is None:
            out.append(item)
        else:
            log(f"withdrawn: {item.source} ({item.record.get('cell', {}).get('defense')} × "
                f"{item.record.get('cell', {}).get('attack')}) {why}")
    return out


def measurement_count(record: dict) -> int:
    """How many measurements a record carries (used to keep the richer of two duplicates)."""
    n = 0
    for cond in record.get("metrics", {}).values():
        for block in cond.values():
            if isinstance(block, dict):
                n += sum(isinstance(v, dict) and "value" in v for v in block.values())
                n += len(block.get("tasks", {})) if isinstance(block.get("tasks"), dict) else 0
    n += len(record.get("trajectory") or [])  # an attack's trajectory: the same cell with evaluations along the way
    return n


def deduplicate(loaded: list[Loaded], key: Callable[[dict], tuple], log: Callable[[str], None] = print) -> list[Loaded]:
    """One record per ``key`` (cell and seed): the one with most measurements, ties to the first given."""
    best: dict[tuple, Loaded] = {}
    order: list[tuple] = []
    for item in loaded:
        k = key(item.record)
        if k not in best:
            best[k] = item
            order.append(k)
            continue
        keep, drop = best[k], item
        if measurement_count(item.record) > measurement_count(keep.record):
            keep, drop = item, keep
        best[k] = keep
        log(f"duplicate record of one cell and seed: kept {keep.source} ({measurement_count(keep.record)} "
            f"measurements), dropped {drop.source} ({measurement_count(drop.record)})")
    return [best[k] for k in order]
