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
- Every string (and key) that is an absolute local path is rewritten by ``provenance.portable_path``
  (``<workdir>/attack/<key>/model``, ``<repo>/…``, ``<home>/…``, ``<tmp>/…``, ``<local>/…``): a published record
  names no machine's directories (:func:`absolute_paths` is the check).
- A ``published`` block is added: ``{"record": "record/<key>", "omitted": [...], "schema": 1, "digest": "sha256:…"}``.

A record made from uncommitted code (``environment.git`` ending in ``-dirty``, or missing) is refused in one line
(:func:`dirty_line`) unless ``--allow-dirty``, which publishes it with ``published.forced_dirty: true``.

``published.digest`` is the sha256 of the record's canonical JSON (sorted keys, no whitespace) without the digest
itself: its numbers, cell, configs, provenance and the rest of the ``published`` block.  A committed file is the
result that the leaderboard is rendered from, and a number edited by hand in it would otherwise be rendered like
a measured one; with the digest every reader notices (:func:`verify`): ``sdd-bench report`` refuses to render a
record whose content no longer matches its digest, ``sdd-bench publish`` (and ``grid --publish``) refuses to
overwrite one, and ``grid --publish`` does not count one as a finished cell — each in one line naming the file and
how to restore it.  Records published before digests existed have none ("unsigned"): they are read as they are,
with one line saying how many there are, and ``sdd-bench publish --stamp DIR`` (:func:`stamp`) signs them once,
explicitly, as they are now; ``--stamp DIR --resign-sanitized`` also rewrites the absolute paths of records
published before paths were made portable, and signs them anew (once, explicitly; never an edited record).
Published files are strict JSON, written and read: a ``NaN`` or ``Infinity``
literal (which the store never writes: a missing number is ``null``) is one error naming the file
(:func:`loads_strict`).

:func:`long_strings` is the check ``tests/test_publish.py`` runs over every file under ``results/``.
Writes are atomic (temp file + rename), so a grid killed while publishing leaves no half-written file.
"""
from __future__ import annotations

import copy
import hashlib
import json
import os
import sys
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

from .errors import SddBenchError

DEFAULT_ROOT = "results"
MAX_TEXT = 200   # longest string a published record may hold (a label, an id, a version)
MAX_SAFE = 1000  # longest path/hash/version string under a SAFE_KEYS key
SAFE_KEYS = frozenset({"path", "model_path", "cwd", "workdir", "python", "platform", "executable", "git", "sha256",
                       "version", "versions", "command"})
SCHEMA = 1
DIGEST_KEY = "digest"  # published.digest: "sha256:<hex>" of the record without this field
STAMP_HINT = "sdd-bench publish --stamp"
ALLOW_DIRTY = "--allow-dirty"


class PublishError(SddBenchError):
    """A record cannot be published."""


class NonStandardJSON(ValueError):
    """A ``NaN``, ``Infinity`` or ``-Infinity`` literal: Python's json reads them, JSON has no such numbers."""

    def __init__(self, literal: str):
        super().__init__(f"{literal} is not a JSON number")
        self.literal = literal


def _reject_constant(literal: str):
    raise NonStandardJSON(literal)


def loads_strict(text: str) -> Any:
    """``json.loads`` that refuses ``NaN``/``Infinity`` literals (:class:`NonStandardJSON`, a ValueError): the
    store writes a missing number as null, so such a literal in a record was written by hand, and read as a float
    it would reach the tables (or crash them) instead of being reported."""
    return json.loads(text, parse_constant=_reject_constant)


def restore_hint(path: str | Path) -> str:
    return (f"restore it with `git checkout -- {path}`, or delete it and publish the cell again from its work dir "
            f"(`sdd-bench publish`)")


def nonstandard_line(path: str | Path, err: NonStandardJSON) -> str:
    """The one line for a record file holding a ``NaN``/``Infinity`` literal."""
    return (f"{path}: holds {err.literal}, which is not a JSON number (a missing number is null; records never hold "
            f"{err.literal}), so it was edited by hand; {restore_hint(path)}")


def tampered_line(paths: list[str] | list[Path], what: str = "") -> str:
    """The one line for published records whose content no longer matches their ``published.digest``."""
    if len(paths) == 1:
        return (f"{paths[0]}: edited after it was published (its content no longer matches published.digest)"
                f"{what}; {restore_hint(paths[0])}")
    names = ", ".join(map(str, paths[:5])) + (", …" if len(paths) > 5 else "")
    return (f"{len(paths)} published records were edited after they were published (their content no longer "
            f"matches published.digest){what}: {names}; restore each with `git checkout -- <file>`, or delete it and "
            f"publish the cell again from its work dir (`sdd-bench publish`)")


def content_digest(rec: dict) -> str:
    """sha256 of a published record's canonical JSON without ``published.digest`` (everything else counts)."""
    from .store import canonical_json
    body = dict(rec)
    if isinstance(body.get("published"), dict):
        body["published"] = {k: v for k, v in body["published"].items() if k != DIGEST_KEY}
    return "sha256:" + hashlib.sha256(canonical_json(body).encode("utf-8", "surrogatepass")).hexdigest()


def sign(rec: dict) -> dict:
    """``rec`` with ``published.digest`` set (in place; ``rec`` must have its ``published`` block)."""
    rec["published"][DIGEST_KEY] = content_digest(rec)
    return rec


def verify(rec: Any) -> str:
    """``"signed"`` (its digest matches), ``"tampered"`` (it does not), ``"unsigned"`` (a published record without
    a digest: published before digests existed, or by an older sdd-bench still running) or ``"unpublished"`` (no
    ``published`` block: a store record or a ``--out`` copy, which nobody edits in a repository)."""
    pub = rec.get("published") if isinstance(rec, dict) else None
    if not isinstance(pub, dict):
        return "unpublished"
    if pub.get(DIGEST_KEY) is None:
        return "unsigned"
    return "signed" if pub[DIGEST_KEY] == content_digest(rec) else "tampered"


def unsigned_line(paths: list[str] | list[Path]) -> str:
    """The one line for published records without a digest: they are read, and named so they get stamped."""
    dirs = " ".join(dict.fromkeys(str(Path(p).parent) for p in paths))
    names = ", ".join(Path(p).name for p in paths[:3]) + (", …" if len(paths) > 3 else "")
    return (f"{len(paths)} published record(s) carry no digest (published before digests, or by an older sdd-bench) "
            f"and are read as they are: {names}; sign them once, after checking them: `{STAMP_HINT} {dirs}`")


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


def sanitize(record: dict, record_ref: str | None, workdir: str | Path | None = None) -> dict:
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

    from .store import dumps_strict
    rec = json.loads(dumps_strict(rec))  # NaN/inf become null, as in the store: strict JSON
    rec = walk(portable_paths(rec, workdir), "", MAX_TEXT)
    rec["published"] = {"record": record_ref, "omitted": omitted, "schema": SCHEMA}
    assert not long_strings(rec), long_strings(rec)
    assert not absolute_paths(rec), absolute_paths(rec)
    return rec


def is_absolute_path(s: Any) -> bool:
    """A string a published record must not hold: an absolute local path (``/…``; it names a machine's directories,
    often a user's home)."""
    return isinstance(s, str) and s.startswith("/")


def portable_paths(obj: Any, workdir: str | Path | None = None) -> Any:
    """``obj`` with every string that is an absolute local path (dict keys too) rewritten by
    :func:`harness.provenance.portable_path`: ``<workdir>/attack/<key>/model``, ``<repo>/…``, ``<home>/…``."""
    from .provenance import portable_path
    if isinstance(obj, str):
        return portable_path(obj, workdir) if is_absolute_path(obj) else obj
    if isinstance(obj, dict):
        return {portable_paths(k, workdir): portable_paths(v, workdir) for k, v in obj.items()}
    if isinstance(obj, list):
        return [portable_paths(v, workdir) for v in obj]
    return obj


def absolute_paths(obj: Any, path: str = "") -> list[tuple[str, str]]:
    """(JSON path, string) of every absolute local path in ``obj`` (dict keys too): what ``tests/test_publish.py``
    checks no file under ``results/`` holds."""
    out: list[tuple[str, str]] = []
    if is_absolute_path(obj):
        out.append((path or "$", obj))
    elif isinstance(obj, dict):
        for k, v in obj.items():
            if is_absolute_path(k):
                out.append((f"{path}.<key>", str(k)))
            out += absolute_paths(v, f"{path}.{k}")
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            out += absolute_paths(v, f"{path}[{i}]")
    return out


def record_key(record: dict, record_ref: str | None) -> str:
    """File stem of a published record: the store's record key, else (a record given as a file) a content hash."""
    if record_ref and record_ref.startswith("record/"):
        return record_ref.split("/", 1)[1]
    from .store import canonical_json, stage_key
    return stage_key("record-file", json.loads(canonical_json(record)))


def dumps(rec: dict) -> str:
    return json.dumps(rec, indent=1, sort_keys=True, ensure_ascii=False, allow_nan=False) + "\n"


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.parent / f".tmp-{path.stem}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _check_overwrite(path: Path, old: str) -> None:
    """Refuse (one line) to replace a published file that was edited by hand: one whose content no longer matches
    its digest, or that is no longer strict JSON.  The edit may be a mistake or someone's work; either way it must
    be looked at, not silently replaced.  An unsigned file (published before digests) is replaced as before."""
    try:
        obj = loads_strict(old)
    except NonStandardJSON as err:
        raise PublishError(nonstandard_line(path, err) + "; not overwritten") from None
    except ValueError as err:
        raise PublishError(f"{path}: not valid JSON ({err}), so it was edited by hand and is not overwritten; "
                           f"{restore_hint(path)}") from None
    if verify(obj) == "tampered":
        raise PublishError(tampered_line([path], ", so publish does not overwrite it"))


@dataclass
class Published:
    path: Path
    changed: bool
    omitted: list[str]
    forced_dirty: bool = False  # made from uncommitted code, published with --allow-dirty


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


def record_git(record: Any) -> Any:
    env = record.get("environment") if isinstance(record, dict) else None
    return env.get("git") if isinstance(env, dict) else None


def cell_label(record: dict) -> str:
    c = record.get("cell") if isinstance(record.get("cell"), dict) else {}
    return f"{c.get('defense')} × {c.get('attack')} seed {c.get('seed')} on {c.get('model')}"


def dirty_line(record: dict, record_ref: str | None) -> str:
    """The one line refusing to publish a record made from uncommitted code (or from no git checkout)."""
    git = record_git(record)
    why = (f"was made from uncommitted code (environment.git {git})" if isinstance(git, str) and git
           else "does not say which commit made it (no environment.git: not run from a git checkout)")
    return (f"{record_ref or 'record'} ({cell_label(record)}) {why}, so nobody can reproduce it from a commit; "
            f"commit the change and re-run the cell from the clean checkout (its cached stages are reused and the "
            f"record is re-assembled), or publish it anyway with {ALLOW_DIRTY} (marked published.forced_dirty)")


def publish_record(record: dict, record_ref: str | None, root: str | Path = DEFAULT_ROOT,
                   store_root: str | Path | None = None, allow_dirty: bool = False) -> Published:
    """Write one sanitized, signed record to ``root/<profile>/<key>.json`` (atomic; unchanged bytes are not
    rewritten; a file there that was edited by hand is not overwritten: :class:`PublishError`).  With
    ``store_root`` (the work dir the record came from) a missing usable-harm block is filled in first, and paths
    below it become ``<workdir>/…``.  A record made from uncommitted code (``environment.git`` ending in ``-dirty``,
    or missing) is refused (:class:`PublishError`, :func:`dirty_line`) unless ``allow_dirty``, which marks it
    ``published.forced_dirty: true``."""
    from .provenance import from_commit
    forced = not from_commit(record_git(record))
    if forced and not allow_dirty:
        raise PublishError(dirty_line(record, record_ref))
    record = backfill_usable_harm(record, store_root)
    profile = str(record.get("cell", {}).get("profile") or record.get("spec", {}).get("profile") or "")
    if not profile or "/" in profile or profile.startswith("."):
        raise PublishError(f"record {record_ref or ''} has no usable profile ({profile!r}); cannot choose results/<profile>/.")
    rec = sanitize(record, record_ref, store_root)
    if forced:
        rec["published"]["forced_dirty"] = True
    rec = sign(rec)
    text = dumps(rec)
    assert verify(loads_strict(text)) == "signed"  # the digest is of what the file holds, not of the dict
    out_dir = Path(root) / profile
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{record_key(record, record_ref)}.json"
    if path.is_file():
        old = path.read_text(encoding="utf-8")
        if old == text:
            return Published(path, False, rec["published"]["omitted"], forced)
        _check_overwrite(path, old)
    _write_atomic(path, text)
    return Published(path, True, rec["published"]["omitted"], forced)


def published_cells(root: str | Path, profile: str,
                    log: Callable[[str], None] = print) -> dict[str, tuple[dict, Path]]:
    """Cell key (harness.pipeline.record_cell_key) → (record, file) of every record published under
    ``root/<profile>/``: what ``sdd-bench grid --publish ROOT`` counts as finished, so a grid resumed on an empty
    work dir (a new machine, a pruned cache) runs only the cells the repository does not hold yet.  A record whose
    configs differ from today's (a changed default, another build of the base model) has another key and is not
    matched: its cell is run again.  A record of an attack trajectory also answers the same cell without one
    (``pipeline.record_cell_keys``); a record of the cell itself is preferred.  A record edited after it was
    published (its digest does not match) or holding a ``NaN``/``Infinity`` literal is not finished: one ``log``
    line names it and how to restore it (its cell is planned, and publishing its result will refuse to overwrite
    the file until it is restored).  Unsigned records count, with one line saying how many.  Other unreadable
    files are skipped (``tests/test_publish.py`` checks them)."""
    from .pipeline import record_cell_keys
    out: dict[str, tuple[dict, Path]] = {}
    derived: dict[str, tuple[dict, Path]] = {}
    d = Path(root) / profile
    if not d.is_dir():
        return out
    tampered: list[Path] = []
    unsigned: list[Path] = []
    for f in sorted(d.glob("*.json")):
        try:
            rec = loads_strict(f.read_text(encoding="utf-8"))
        except NonStandardJSON as err:
            log(nonstandard_line(f, err) + "; its cell is not counted as published")
            continue
        except (OSError, ValueError):
            continue
        state = verify(rec)
        if state == "tampered":
            tampered.append(f)
            continue
        if state == "unsigned":
            unsigned.append(f)
        keys = record_cell_keys(rec) if isinstance(rec, dict) else []
        if keys:
            out[keys[0]] = (rec, f)
            derived.update({k: (rec, f) for k in keys[1:]})
    if tampered:
        log(tampered_line(tampered, "; not counted as published, so the cell is planned again"))
    if unsigned:
        log(unsigned_line(unsigned))
    return {**derived, **out}


def store_records(workdir: str | Path) -> list[tuple[dict, str]]:
    """(record, ref) of every completed record artifact of a work dir, in key order."""
    from .store import Store
    store = Store(workdir)
    store.check_no_legacy()  # a legacy record would be moved aside by get(): the user chooses first
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
    from .grid_spec import expand, load_grid
    from .pipeline import finished_record, resolve
    from .store import Store
    store = Store(workdir)
    store.check_no_legacy()
    out = []
    for spec in expand(load_grid(spec_path), where=str(spec_path)):
        done = finished_record(store, resolve(spec))
        if done is not None:
            out.append((done[0], done[1].ref()))
    return out


def publish_many(items: Iterable[tuple[dict, str]], root: str | Path = DEFAULT_ROOT,
                 log: Callable[[str], None] = print, store_root: str | Path | None = None,
                 refused: list[str] | None = None, allow_dirty: bool = False) -> list[Published]:
    """Publish each record; with ``refused`` a record that cannot be published (a file edited by hand in its place,
    a record made from uncommitted code without ``allow_dirty``) adds its one line there and the others are still
    published, else the first such error is raised."""
    out = []
    for record, ref in items:
        try:
            p = publish_record(record, ref, root, store_root, allow_dirty=allow_dirty)
        except PublishError as err:
            if refused is None:
                raise
            refused.append(str(err))
            continue
        note = f" (omitted {len(p.omitted)} long field(s): {', '.join(p.omitted[:3])})" if p.omitted else ""
        note += f" (made from uncommitted code: published with {ALLOW_DIRTY}, marked forced_dirty)" if p.forced_dirty else ""
        log(f"{'published' if p.changed else 'unchanged'} {p.path}{note}")
        out.append(p)
    return out


@dataclass
class Stamped:
    stamped: list[Path]
    signed: list[Path]     # already carried a matching digest
    problems: list[str]    # one line each: edited files, NaN literals, files that are not published records
    resigned: list[Path] = field(default_factory=list)  # --resign-sanitized: absolute paths rewritten, signed anew


def stamp(targets: Iterable[str | Path], log: Callable[[str], None] = print,
          resign_sanitized: bool = False) -> Stamped:
    """Sign the unsigned published records in ``targets`` (directories such as ``results/smoke`` or ``results``:
    every ``*.json`` below them; or files): the one-time, explicit path for records published before digests
    existed.  A stamp vouches for the content as it is now, so run it on files you trust (a clean checkout of
    committed results).  Idempotent: a signed record is left alone (its bytes unchanged); a record whose digest
    does not match is reported, never re-signed (that would bless the edit); a file that is not a published record
    or holds a ``NaN`` literal is reported and left alone.  The file is rewritten in the publish format with only
    ``published.digest`` added.

    ``resign_sanitized`` (``--resign-sanitized``, once, for records published before publish rewrote absolute
    paths): a record whose digest matches (or that has none) and that holds absolute local paths gets them
    rewritten as publish now writes them (:func:`portable_paths`: ``<workdir>/attack/<key>/model``) and is signed
    anew; nothing else in it changes.  An edited record is still never signed."""
    out = Stamped([], [], [])
    files: list[Path] = []
    for t in targets:
        t = Path(t)
        if t.is_dir():
            files += sorted(t.rglob("*.json"))
        elif t.is_file():
            files.append(t)
        else:
            out.problems.append(f"{t}: no such file or directory")
    for f in files:
        try:
            rec = loads_strict(f.read_text(encoding="utf-8"))
        except NonStandardJSON as err:
            out.problems.append(nonstandard_line(f, err) + "; not stamped")
            continue
        except ValueError as err:
            out.problems.append(f"{f}: not valid JSON ({err}); not stamped")
            continue
        state = verify(rec)
        if state == "unpublished":
            out.problems.append(f"{f}: not a published record (no 'published' block); not stamped")
        elif state == "tampered":
            out.problems.append(tampered_line([f], ", so it is not stamped"))
        elif resign_sanitized and absolute_paths(rec):
            n = len(absolute_paths(rec))
            _write_atomic(f, dumps(sign(portable_paths(rec))))
            out.resigned.append(f)
            log(f"re-signed {f} ({n} absolute path(s) made portable)")
        elif state == "signed":
            out.signed.append(f)
        else:
            _write_atomic(f, dumps(sign(rec)))
            out.stamped.append(f)
            log(f"stamped {f}")
    return out


# ------------------------------------------------------------------------------------------
# CLI
def register_cli(sub, add_common) -> dict:
    p = sub.add_parser("publish", help="copy finished cells' records (numbers, configs, provenance; no text) into results/",
                       description="Copy the records of finished cells from the work dir into the repository: "
                                   "ROOT/<profile>/<record key>.json, sanitized (no prompt or generation text: the chat "
                                   "template's source is replaced by its hash, any other string over "
                                   f"{MAX_TEXT} characters by a hash label) and signed (published.digest, a sha256 of "
                                   "the record's content: report, publish and grid --publish refuse a record edited "
                                   "after publishing); absolute local paths become <workdir>/..., <home>/...; a record "
                                   "made from uncommitted code is refused unless --allow-dirty. Idempotent. "
                                   "See docs/grids.md.")
    p.add_argument("grids", nargs="*", metavar="GRID",
                   help="grid YAML files: publish their finished cells (default: every finished record of the work dir)")
    p.add_argument("--to", default=DEFAULT_ROOT, metavar="ROOT",
                   help=f"results root; records go to ROOT/<profile>/ (default {DEFAULT_ROOT}, relative to the "
                        f"current directory: run from the repository root)")
    p.add_argument("--stamp", nargs="+", metavar="DIR",
                   help="instead of publishing: add the digest to the published records in DIR (e.g. results/smoke) "
                        "that have none (published before digests existed); signs them as they are now, so run it on "
                        "a clean checkout; idempotent; reports records edited after publishing instead of signing them")
    p.add_argument("--resign-sanitized", action="store_true",
                   help="with --stamp: also rewrite the absolute local paths that records published before "
                        "2026-12-07 hold (e.g. a capability model path in the work dir) as publish writes them now "
                        "(<workdir>/attack/<key>/model) and sign those records anew; nothing else changes; a record "
                        "edited after publishing is still reported, never signed (one-time, see docs/grids.md)")
    p.add_argument(ALLOW_DIRTY, action="store_true",
                   help="publish records made from uncommitted code (environment.git ending in -dirty, or missing) "
                        "too, marked published.forced_dirty: true (default: refused, one line each)")
    add_common(p)
    return {"publish": cli_publish}


def cli_publish(args) -> int:
    if args.stamp:
        if args.grids:
            raise PublishError("--stamp signs published records already in the repository; it takes no GRID "
                               f"(got {', '.join(args.grids)}).")
        res = stamp(args.stamp, log=(lambda *_: None) if args.quiet else print,
                    resign_sanitized=args.resign_sanitized)
        for line in res.problems:
            print(f"stamp: {line}", file=sys.stderr)
        n = len(res.stamped) + len(res.signed) + len(res.resigned) + len(res.problems)
        print(f"stamp: {n} file(s) in {' '.join(args.stamp)}: {len(res.stamped)} stamped, {len(res.signed)} already "
              f"signed, " + (f"{len(res.resigned)} re-signed with portable paths, " if args.resign_sanitized else "")
              + f"{len(res.problems)} not stamped")
        return 1 if res.problems else 0
    if args.resign_sanitized:
        raise PublishError("--resign-sanitized re-signs published records already in the repository; use it with "
                           "--stamp DIR.")
    items: list[tuple[dict, str]] = []
    if args.grids:
        for g in args.grids:
            items += grid_records(g, args.workdir)
    else:
        items = store_records(args.workdir)
    if not items:
        print(f"publish: no finished record in {args.workdir}" + (f" for {', '.join(args.grids)}" if args.grids else ""))
        return 0
    refused: list[str] = []
    res = publish_many(items, args.to, log=(lambda *_: None) if args.quiet else print, store_root=args.workdir,
                       refused=refused, allow_dirty=args.allow_dirty)
    for line in refused:
        print(f"publish: REFUSED {line}", file=sys.stderr)
    print(f"publish: {len(res) + len(refused)} record(s) -> {args.to}/ ({sum(p.changed for p in res)} written, "
          f"{sum(not p.changed for p in res)} unchanged" + (f", {len(refused)} refused" if refused else "") + ")")
    return 1 if refused else 0
