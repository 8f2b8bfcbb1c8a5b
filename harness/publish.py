"""Published records (DESIGN §11): finished cells' records copied into the repository.

The work dir is a cache; ``results/<profile>/`` in the repository is the record.  ``sdd-bench publish``
(and ``sdd-bench grid --publish``) copies each finished cell's record to::

    <root>/<profile>/<record key>.json        root: results (relative to the current directory)

keyed like the store: ``<record key>`` is the key of the cell's ``record`` artifact (a hash of the run
spec and of every input artifact's key), so publishing the same record twice writes the same file with
the same bytes (idempotent; an unchanged file is not rewritten), and a cell re-run with other code or
configs gets a file of its own (``sdd-bench report`` keeps one record per cell and seed).

A published file is the record, sanitized so that it holds numbers, configuration and provenance, and
never prompt or generation text:

- ``template.source`` (the chat template's Jinja source, a few kB) is dropped: ``template.sha256``
  already identifies it (sha256 of the source, as in the store's record); ``template.example`` (the
  template rendered around ``{instruction}``) is replaced by ``template.example_sha256``.  The store
  keeps both in full.
- Any other string longer than :data:`MAX_TEXT` characters is replaced by a short label
  ``"<omitted: N chars, sha256 …>"`` and listed in ``published.omitted`` — a record field that long is
  not a label, number or path, and might be text from a prompt or a generation.  Strings under keys
  in :data:`SAFE_KEYS` (filesystem paths, hashes, versions) are kept up to :data:`MAX_SAFE` characters.
- A ``published`` block is added: ``{"record": "record/<key>", "omitted": [...], "schema": 1}``.

:func:`long_strings` is the check ``tests/test_publish.py`` runs over every file under ``results/``.
Writes are atomic (temp file + rename), so a grid killed while publishing leaves no half-written file.
"""
from __future__ import annotations

import copy
import hashlib
import json
import os
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

from .errors import SddBenchError

DEFAULT_ROOT = "results"
MAX_TEXT = 200   # longest string a published record may hold (a label, an id, a version)
MAX_SAFE = 1000  # longest path/hash/version string under a SAFE_KEYS key
SAFE_KEYS = frozenset({"path", "model_path", "cwd", "workdir", "python", "platform", "executable", "git", "sha256",
                       "version", "versions", "command"})
SCHEMA = 1


class PublishError(SddBenchError):
    """A record cannot be published."""


def _digest(s: str) -> str:
    return hashlib.sha256(s.encode("utf-8", "surrogatepass")).hexdigest()[:16]


def _safe_key(key: str) -> bool:
    k = key.lower()
    return k in SAFE_KEYS or k.endswith(("_path", "_dir", "_sha256", "_version"))


def long_strings(obj: Any, path: str = "") -> list[tuple[str, int]]:
    """(JSON path, length) of every string that a published record must not hold: longer than ``MAX_TEXT``
    (``MAX_SAFE`` under a :data:`SAFE_KEYS` key).  Dict keys count too."""
    out: list[tuple[str, int]] = []

    def walk(x: Any, p: str, limit: int) -> None:
        if isinstance(x, str):
            if len(x) > limit:
                out.append((p or "$", len(x)))
        elif isinstance(x, dict):
            for k, v in x.items():
                ks = str(k)
                if len(ks) > MAX_TEXT:
                    out.append((f"{p}.<key>", len(ks)))
                walk(v, f"{p}.{ks}", MAX_SAFE if _safe_key(ks) else MAX_TEXT)
        elif isinstance(x, (list, tuple)):
            for i, v in enumerate(x):
                walk(v, f"{p}[{i}]", limit)

    walk(obj, path, MAX_TEXT)
    return out


def sanitize(record: dict, record_ref: str | None) -> dict:
    """The publishable copy of a record (see the module docstring); the input is not modified."""
    if not (isinstance(record, dict) and isinstance(record.get("cell"), dict) and isinstance(record.get("metrics"), dict)):
        raise PublishError("not a run record (a record has 'cell' and 'metrics' keys).")
    rec = copy.deepcopy(record)
    rec.pop("_wall_seconds_this_invocation", None)
    rec.pop("published", None)
    tpl = rec.get("template")
    if isinstance(tpl, dict):
        src = tpl.pop("source", None)
        if isinstance(src, str) and "sha256" not in tpl:
            tpl["sha256"] = _digest(src)
        ex = tpl.pop("example", None)
        if isinstance(ex, str):
            tpl["example_sha256"] = _digest(ex)
    omitted: list[str] = []

    def walk(x: Any, p: str, limit: int) -> Any:
        if isinstance(x, str):
            if len(x) > limit:
                omitted.append(p)
                return f"<omitted: {len(x)} chars, sha256 {_digest(x)}>"
            return x
        if isinstance(x, dict):
            return {str(k) if len(str(k)) <= MAX_TEXT else f"<omitted key: sha256 {_digest(str(k))}>":
                    walk(v, f"{p}.{k}", MAX_SAFE if _safe_key(str(k)) else MAX_TEXT) for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            return [walk(v, f"{p}[{i}]", limit) for i, v in enumerate(x)]
        return x

    rec = walk(json.loads(json.dumps(rec, default=str)), "", MAX_TEXT)
    rec["published"] = {"record": record_ref, "omitted": omitted, "schema": SCHEMA}
    assert not long_strings(rec), long_strings(rec)
    return rec


def record_key(record: dict, record_ref: str | None) -> str:
    """File stem of a published record: the store's record key, else (a record given as a file) a content hash."""
    if record_ref and record_ref.startswith("record/"):
        return record_ref.split("/", 1)[1]
    from .store import canonical_json, stage_key
    return stage_key("record-file", json.loads(canonical_json(record)))


def dumps(rec: dict) -> str:
    return json.dumps(rec, indent=1, sort_keys=True, ensure_ascii=False) + "\n"


@dataclass
class Published:
    path: Path
    changed: bool
    omitted: list[str]


def backfill_usable_harm(record: dict, store_root: str | Path | None) -> dict:
    """A record written before the pipeline stored ``harmful.usable_harm`` gets that block computed from the
    store's judge verdicts (harness.metrics.usable_harm_from_store; each entry marked ``"from": "publish"``), so a
    published record keeps its usable-harm numbers once the store is gone.  Records that have it, or whose
    verdicts are not in the store, are returned as they are."""
    from .metrics import usable_harm_from_store
    if store_root is None:
        return record
    out = None
    for cond, m in (record.get("metrics") or {}).items():
        harmful = m.get("harmful") if isinstance(m, dict) else None
        if not isinstance(harmful, dict) or "usable_harm" in harmful:
            continue
        block = usable_harm_from_store(store_root, record, cond)
        if block:
            out = out or copy.deepcopy(record)
            out["metrics"][cond]["harmful"]["usable_harm"] = {k: dict(v, **{"from": "publish"}) for k, v in block.items()}
    return out or record


def publish_record(record: dict, record_ref: str | None, root: str | Path = DEFAULT_ROOT,
                   store_root: str | Path | None = None) -> Published:
    """Write one sanitized record to ``root/<profile>/<key>.json`` (atomic; unchanged bytes are not rewritten).
    With ``store_root`` (the work dir the record came from) a missing usable-harm block is filled in first."""
    record = backfill_usable_harm(record, store_root)
    profile = str(record.get("cell", {}).get("profile") or record.get("spec", {}).get("profile") or "")
    if not profile or "/" in profile or profile.startswith("."):
        raise PublishError(f"record {record_ref or ''} has no usable profile ({profile!r}); cannot choose results/<profile>/.")
    rec = sanitize(record, record_ref)
    text = dumps(rec)
    out_dir = Path(root) / profile
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{record_key(record, record_ref)}.json"
    if path.is_file() and path.read_text(encoding="utf-8") == text:
        return Published(path, False, rec["published"]["omitted"])
    tmp = out_dir / f".tmp-{path.stem}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return Published(path, True, rec["published"]["omitted"])


def published_cells(root: str | Path, profile: str) -> dict[str, tuple[dict, Path]]:
    """Cell key (harness.pipeline.record_cell_key) → (record, file) of every record published under
    ``root/<profile>/``: what ``sdd-bench grid --publish ROOT`` counts as finished, so a grid resumed on an empty
    work dir (a new machine, a pruned cache) runs only the cells the repository does not hold yet.  A record whose
    configs differ from today's (a changed default, another build of the base model) has another key and is not
    matched: its cell is run again.  A record of an attack trajectory also answers the same cell without one
    (``pipeline.record_cell_keys``); a record of the cell itself is preferred.  Unreadable files are skipped
    (``tests/test_publish.py`` checks them)."""
    from .pipeline import record_cell_keys
    out: dict[str, tuple[dict, Path]] = {}
    derived: dict[str, tuple[dict, Path]] = {}
    d = Path(root) / profile
    if not d.is_dir():
        return out
    for f in sorted(d.glob("*.json")):
        try:
            rec = json.loads(f.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        keys = record_cell_keys(rec) if isinstance(rec, dict) else []
        if keys:
            out[keys[0]] = (rec, f)
            derived.update({k: (rec, f) for k in keys[1:]})
    return {**derived, **out}


def store_records(workdir: str | Path) -> list[tuple[dict, str]]:
    """(record, ref) of every completed record artifact of a work dir, in key order."""
    from .store import Store
    store = Store(workdir)
    rdir = store.root / "record"
    out = []
    if rdir.is_dir():
        for d in sorted(p for p in rdir.iterdir() if p.is_dir() and not p.name.startswith(".")):
            art = store.get("record", d.name)
            if art is not None and (art.path / "record.json").is_file():
                out.append((json.loads((art.path / "record.json").read_text()), art.ref()))
    return out


def grid_records(spec_path: str | Path, workdir: str | Path) -> list[tuple[dict, str]]:
    """(record, ref) of a grid's finished cells in ``workdir``."""
    from .grid import expand, load_grid
    from .pipeline import finished_record, resolve
    from .store import Store
    store = Store(workdir)
    out = []
    for spec in expand(load_grid(spec_path), where=str(spec_path)):
        done = finished_record(store, resolve(spec))
        if done is not None:
            out.append((done[0], done[1].ref()))
    return out


def publish_many(items: Iterable[tuple[dict, str]], root: str | Path = DEFAULT_ROOT,
                 log: Callable[[str], None] = print, store_root: str | Path | None = None) -> list[Published]:
    out = []
    for record, ref in items:
        p = publish_record(record, ref, root, store_root)
        note = f" (omitted {len(p.omitted)} long field(s): {', '.join(p.omitted[:3])})" if p.omitted else ""
        log(f"{'published' if p.changed else 'unchanged'} {p.path}{note}")
        out.append(p)
    return out


# ------------------------------------------------------------------------------------------
# CLI
def register_cli(sub, add_common) -> dict:
    p = sub.add_parser("publish", help="copy finished cells' records (numbers, configs, provenance; no text) into results/",
                       description="Copy the records of finished cells from the work dir into the repository: "
                                   "ROOT/<profile>/<record key>.json, sanitized (no prompt or generation text: the chat "
                                   "template's source is replaced by its hash, any other string over "
                                   f"{MAX_TEXT} characters by a hash label). Idempotent. See docs/grids.md.")
    p.add_argument("grids", nargs="*", metavar="GRID",
                   help="grid YAML files: publish their finished cells (default: every finished record of the work dir)")
    p.add_argument("--to", default=DEFAULT_ROOT, metavar="ROOT",
                   help=f"results root; records go to ROOT/<profile>/ (default {DEFAULT_ROOT}, relative to the "
                        f"current directory: run from the repository root)")
    add_common(p)
    return {"publish": cli_publish}


def cli_publish(args) -> int:
    items: list[tuple[dict, str]] = []
    if args.grids:
        for g in args.grids:
            items += grid_records(g, args.workdir)
    else:
        items = store_records(args.workdir)
    if not items:
        print(f"publish: no finished record in {args.workdir}" + (f" for {', '.join(args.grids)}" if args.grids else ""))
        return 0
    res = publish_many(items, args.to, log=(lambda *_: None) if args.quiet else print, store_root=args.workdir)
    print(f"publish: {len(res)} record(s) -> {args.to}/ ({sum(p.changed for p in res)} written, "
          f"{sum(not p.changed for p in res)} unchanged)")
    return 0
