"""Content-addressed artifact store (DESIGN §4).

``workdir/<stage>/<key>/`` holds ``spec.json``, the stage's outputs, a ``MANIFEST.json``
(size and sha256 of every file) and a ``COMPLETE`` marker written last.  A stage writes into
``workdir/<stage>/.tmp-<key>-<pid>-<rand>/`` and publishes with one atomic ``os.rename``; a
stage killed mid-write therefore leaves only a ``.tmp-*`` directory, never a half-written
artifact under its key.  ``key`` is the hash of the stage name, its spec and the keys of its
inputs, so a changed input re-runs every stage downstream of it and nothing else.

Concurrency: computing and publishing a key happen under an exclusive ``fcntl`` lock on
``workdir/.locks/<stage>/<key>``, so two processes that need the same artifact compute it once
(the second waits, then finds it cached) and publishing never races.  ``prune`` skips the temp
dirs of keys whose lock is held (a live run).

Integrity: reading an artifact (``get``) checks the size of every file in its manifest, and
the sha256 of files up to ``HASH_LIMIT`` bytes; a damaged artifact is reported in one line,
moved aside to ``workdir/<stage>/.corrupt-<key>-<time>/`` and treated as missing, so the
stage is rebuilt.  ``verify`` (``sdd-bench cache verify``) hashes everything.

Legacy artifacts (written before manifests existed, no ``MANIFEST.json``) cannot be proven intact: a
``generations.jsonl`` cut at a line boundary still parses.  They are never read as intact.  ``get`` moves
one aside (``.legacy-<key>-<time>``, reported in one line) so that the stage is rebuilt; every command that
reads a work dir (except ``cache``) refuses, before any work, one that holds any (:meth:`Store.check_no_legacy`),
naming the two ways out:
``sdd-bench cache verify`` reports them as unverifiable (exit 1), and ``cache verify --adopt`` runs the
structural checks of :func:`structure_problem` (every JSON file parses; every JSONL row parses and the file
ends with a newline; ``generations.jsonl`` / ``verdicts.jsonl`` have the row count their ``summary.json``
and ``spec.json`` state; every safetensors header parses and its tensors' byte sizes fill the file exactly;
every zip-format torch file passes its CRC check; every shard a ``*.index.json`` names exists) and gives each
legacy artifact that passes them a manifest of its current content; one that fails them is corrupt.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import math
import os
import shutil
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

from .errors import SddBenchError
# an artifact's integrity checks live in harness/integrity.py; every name is re-exported here
from .integrity import (  # noqa: F401
    _files, _jsonl_rows, _one_line, _sha256_file, check_artifact, HASH_LIMIT, LEGACY, MANIFEST, MARKER,
    os_error_line, SPEC, structure_problem, STRUCTURE_READ_LIMIT, write_manifest
)


class StoreError(SddBenchError):
    """The work dir cannot be read or written (permissions, disk full, …)."""


def report(msg: str) -> None:
    """One line on stderr for a problem the store recovered from (e.g. a corrupt artifact moved aside)."""
    print(f"sdd-bench: {msg}", file=sys.stderr, flush=True)


def canonical_json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str, ensure_ascii=False)


def stage_key(stage: str, spec: dict, inputs: list[str] | tuple[str, ...] = ()) -> str:
    h = hashlib.sha256(canonical_json({"stage": stage, "spec": spec, "inputs": list(inputs)}).encode())
    return h.hexdigest()[:20]


def _probe_dir(d: Path) -> None:
    """Create ``d`` (and its parents) and write and remove a probe file in it; raises the ``OSError``."""
    d.mkdir(parents=True, exist_ok=True)
    probe = d / f".sdd-bench-probe-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    probe.write_text("ok")
    probe.unlink()


def check_output_dir(path: str | Path, flag: str) -> None:
    """Fail in one line, before any work, when the output directory ``path`` (given by option ``flag``) cannot be
    created or written."""
    if not str(path).strip():
        raise StoreError(f"{flag} is empty; give a directory.")
    p = Path(path).expanduser()
    try:
        if p.exists() and not p.is_dir():
            raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), str(p))
        _probe_dir(p)
    except OSError as err:
        raise StoreError(f"{flag} {path} is not writable: {os_error_line(err, err.filename or p, flag)}") from err


def check_output_file(path: str | Path, flag: str) -> None:
    """Fail in one line, before any work, when the file ``path`` (option ``flag``) cannot be written: it is a
    directory, its directory cannot be created or written, or it exists read-only.  Nothing is left behind except
    the file's directory."""
    if not str(path).strip():
        raise StoreError(f"{flag} is empty; give a file path.")
    p = Path(path).expanduser()
    try:
        if p.is_dir():
            raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), str(p))
        _probe_dir(p.parent)
        if p.exists() and not os.access(p, os.W_OK):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(p))
    except OSError as err:
        fix = "give a file path" if err.errno == errno.EISDIR else None
        line = f"{err.filename}: {err.strerror}; {fix}." if fix else os_error_line(err, err.filename or p, flag)
        raise StoreError(f"{flag} {path} cannot be written: {line}") from err


def as_os_error(err: BaseException) -> OSError | None:
    """The I/O error behind ``err``: ``err`` itself if it is an ``OSError``; for a library's own error class that
    wraps one (safetensors' ``SafetensorError``: "IoError(Os { code: 28, kind: StorageFull, ... })") an ``OSError``
    with that errno; None for anything else."""
    if isinstance(err, OSError):
        return err
    text = str(err)
    if type(err).__name__ == "SafetensorError" or "No space left on device" in text:
        import re
        m = re.search(r"(?:code:|os error)\s*(\d+)", text)
        if m:
            code = int(m.group(1))
            return OSError(code, os.strerror(code))
        if "No space left on device" in text:
            return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    return None


@dataclass(frozen=True)
class Artifact:
    stage: str
    key: str
    path: Path

    @property
    def spec(self) -> dict:
        return json.loads((self.path / SPEC).read_text())

    def ref(self) -> str:
        return f"{self.stage}/{self.key}"


class Store:
    def __init__(self, workdir: str | Path = "runs"):
        if not str(workdir).strip():  # Path("") is the current directory: never a work dir by accident
            raise StoreError("The work dir path is empty; pass --workdir DIR (default ./runs, or $SDD_BENCH_WORKDIR).")
        self.root = Path(workdir).expanduser().resolve()
        self._verified: dict[str, float] = {}  # artifact dir → marker mtime, checked in this process
        self._held: set[str] = set()  # lock files this process holds (locks are re-entrant per Store)
        self.replaced: set[str] = set()  # refs re-published over a complete artifact by this Store (``replace``)

    def dir(self, stage: str, key: str) -> Path:
        return self.root / stage / key

    def _stage_dir(self, stage: str) -> Path:
        parent = self.root / stage
        try:
            parent.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise StoreError(f"cannot create the work dir: {os_error_line(err, err.filename or parent)}") from err
        return parent

    def check_writable(self) -> None:
        """Fail in one line, before any work, when the work dir cannot be written."""
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            probe = self.root / f".probe-{os.getpid()}-{uuid.uuid4().hex[:6]}"
            probe.write_text("ok")
            probe.unlink()
        except OSError as err:
            raise StoreError(f"the work dir is not writable: {os_error_line(err, err.filename or self.root)}") from err

    # -- locks ------------------------------------------------------------------------------
    def _lock_path(self, stage: str, key: str, create: bool = False) -> Path:
        d = self.root / ".locks" / stage
        if create:
            try:
                d.mkdir(parents=True, exist_ok=True)
            except OSError as err:
                raise StoreError(f"cannot create a lock file: {os_error_line(err, err.filename or d)}") from err
        return d / key

    @contextlib.contextmanager
    def lock(self, stage: str, key: str, log=None) -> Iterator[None]:
        """Exclusive per-key lock (``fcntl.flock``) around computing and publishing ``stage/key``."""
        path = self._lock_path(stage, key, create=True)
        ident = str(path)
        if ident in self._held:
            yield
            return
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as err:
            raise StoreError(f"cannot create a lock file: {os_error_line(err, path)}") from err
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                (log or report)(f"waiting for another process computing {stage}/{key}")
                fcntl.flock(fd, fcntl.LOCK_EX)
            self._held.add(ident)
            try:
                yield
            finally:
                self._held.discard(ident)
        finally:
            os.close(fd)

    def is_locked(self, stage: str, key: str) -> bool:
        """True while some process holds ``stage/key``'s lock (a live computation)."""
        path = self._lock_path(stage, key)
        if str(path) in self._held:
            return True
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return False
        except BlockingIOError:
            return True
        finally:
            os.close(fd)

    # -- reading ----------------------------------------------------------------------------
    def get(self, stage: str, key: str) -> Artifact | None:
        """The completed, intact artifact under ``stage/key``, or None (a corrupt one is moved aside)."""
        p = self.dir(stage, key)
        try:
            mtime = (p / MARKER).stat().st_mtime
        except OSError:
            return None
        if self._verified.get(str(p)) != mtime:
            problem = check_artifact(p)
            if problem is not None:
                try:
                    held = self.lock(stage, key)
                    held.__enter__()
                except StoreError:  # a read-only store: report, cannot move aside
                    what = f"artifact {stage}/{key} {problem}" if problem == LEGACY else \
                        f"corrupt artifact {stage}/{key}: {problem}"
                    report(f"{what}; treated as missing.")
                    return None
                try:  # re-check under the lock: a writer may have been replacing it while it was read
                    problem = check_artifact(p) if (p / MARKER).is_file() else None
                    if problem is not None:
                        self.quarantine(stage, key, problem)
                    if not (p / MARKER).is_file() or problem is not None:
                        return None
                finally:
                    held.__exit__(None, None, None)
            self._verified[str(p)] = (p / MARKER).stat().st_mtime
        return Artifact(stage, key, p)

    def quarantine(self, stage: str, key: str, problem: str) -> Path | None:
        """Move a damaged artifact aside (``.corrupt-<key>-<time>``; a legacy one, ``problem`` = :data:`LEGACY`:
        ``.legacy-<key>-<time>``), report it in one line; it is rebuilt."""
        p = self.dir(stage, key)
        legacy = problem == LEGACY
        dest = p.parent / (f".{'legacy' if legacy else 'corrupt'}-{key}-{time.strftime('%Y%m%dT%H%M%S')}-"
                           f"{uuid.uuid4().hex[:4]}")
        self._verified.pop(str(p), None)
        try:
            os.rename(p, dest)
        except FileNotFoundError:  # another process moved it first
            return None
        except OSError as err:
            raise StoreError(f"{'legacy' if legacy else 'corrupt'} artifact {stage}/{key} ({problem}) cannot be moved "
                             f"aside: {os_error_line(err, p)}") from err
        if legacy:
            report(f"artifact {stage}/{key} {problem}; moved aside to {dest.name}, it will be rebuilt (to keep "
                   f"such artifacts, run `sdd-bench cache verify --adopt` on the work dir first).")
        else:
            report(f"corrupt artifact {stage}/{key}: {problem}; moved aside to {dest.name}, it will be rebuilt.")
        return dest

    def legacy(self) -> list[str]:
        """``stage/key`` of every complete artifact without a manifest (cheap: two stats per artifact)."""
        out = []
        if not self.root.is_dir():
            return out
        for sdir in sorted(p for p in self.root.iterdir() if p.is_dir() and not p.name.startswith(".")):
            for a in sorted(sdir.iterdir()):
                if not a.name.startswith(".") and (a / MARKER).is_file() and not (a / MANIFEST).is_file():
                    out.append(f"{sdir.name}/{a.name}")
        return out

    def check_no_legacy(self) -> None:
        """Fail in one line, before any work, when the work dir holds legacy artifacts (no manifest): the pipeline
        would move each aside and rebuild it, which can cost hours; the user chooses (see the module docstring)."""
        old = self.legacy()
        if old:
            raise StoreError(f"the work dir {self.root} holds {len(old)} artifact(s) written before manifests (e.g. "
                             f"{old[0]}), which cannot be proven intact: run `sdd-bench cache verify --adopt "
                             f"--workdir {self.root}` to check their structure and keep those that pass, or "
                             f"`sdd-bench cache verify --workdir {self.root}` to move them aside so they are rebuilt.")

    def adopt(self, stage: str, key: str) -> str | None:
        """Give a legacy artifact a manifest of its current content after its structural checks pass; returns the
        structural problem instead (nothing written) when they fail."""
        d = self.dir(stage, key)
        with self.lock(stage, key):
            if (d / MANIFEST).is_file():
                return None
            problem = check_artifact(d, hash_limit=None, legacy=True)
            if problem is not None:
                return problem
            tmp = d / f".{MANIFEST}.{os.getpid()}.tmp"
            files = {rel: {"bytes": os.path.getsize(d / rel), "sha256": _sha256_file(d / rel)}
                     for rel in _files(d) if rel not in (MANIFEST, MARKER)}
            try:
                tmp.write_text(json.dumps({"files": files, "adopted": time.time()}, indent=1, sort_keys=True))
                os.replace(tmp, d / MANIFEST)
            except OSError as err:
                tmp.unlink(missing_ok=True)
                raise StoreError(f"cannot write {d / MANIFEST}: {os_error_line(err, d)}") from err
            self._verified.pop(str(d), None)
        return None

    def resolve(self, ref: str) -> Artifact:
        """``stage/key`` or a path inside the work dir → artifact."""
        p = Path(ref)
        if not p.is_absolute() and not p.exists():
            p = self.root / ref
        p = p.resolve()
        art = self.get(p.parent.name, p.name) if p.parent.parent == self.root else None
        if art is None and p.parent.parent != self.root and (p / MARKER).is_file():
            art = Artifact(p.parent.name, p.name, p)
        if art is None:
            raise SddBenchError(f"{ref!r} is not a completed artifact (no intact {MARKER} artifact under {p}). "
                                f"`sdd-bench cache ls` lists the artifacts of {self.root}.")
        return art

    # -- writing ----------------------------------------------------------------------------
    @contextlib.contextmanager
    def writing(self, stage: str, key: str, spec: dict, *, replace: bool = False) -> Iterator[Path]:
        """Yield a temp dir; on clean exit publish it atomically as ``stage/key`` (under the key's lock).
        ``replace``: publish over an existing complete artifact (e.g. a judge artifact after retries)."""
        parent = self._stage_dir(stage)
        with self.lock(stage, key):
            tmp = parent / f".tmp-{key}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
            try:
                tmp.mkdir()
            except OSError as err:
                raise StoreError(f"cannot write an artifact: {os_error_line(err, tmp)}") from err
            try:
                yield tmp
                (tmp / SPEC).write_text(json.dumps(spec, indent=2, sort_keys=True, default=str))
                write_manifest(tmp)
                (tmp / MARKER).write_text(json.dumps({"stage": stage, "key": key, "finished": time.time()}))
                final = parent / key
                if not replace and self.get(stage, key) is not None:  # published meanwhile (old, unlocked writer)
                    shutil.rmtree(tmp, ignore_errors=True)
                    return
                old = None
                if final.exists():  # stale leftover, or the artifact being replaced
                    old = parent / f".old-{key}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
                    os.rename(final, old)
                os.rename(tmp, final)
                self._verified.pop(str(final), None)
                if old is not None:
                    shutil.rmtree(old, ignore_errors=True)
                    if replace:
                        self.replaced.add(f"{stage}/{key}")
            except BaseException as err:
                shutil.rmtree(tmp, ignore_errors=True)  # the store stays clean: no half-written artifact
                oserr = None if isinstance(err, (OSError, SddBenchError)) else as_os_error(err)
                if oserr is not None:  # e.g. SafetensorError on a full disk: one line, not a library traceback
                    raise StoreError(f"cannot write the {stage} artifact {stage}/{key}: "
                                     f"{os_error_line(oserr, oserr.filename or tmp)}") from err
                raise

    def run(self, stage: str, spec: dict, inputs: list[str] | tuple[str, ...], fn: Callable[[Path], Any],
            *, replace: bool = False) -> tuple[Artifact, bool]:
        """Return the cached artifact or build it with ``fn(tmpdir)``; second value = cache hit.
        Concurrent callers of one key compute it once: the others wait for the lock and get the cached copy.
        ``replace``: rebuild and re-publish even if cached."""
        key = stage_key(stage, spec, inputs)
        if not replace:
            hit = self.get(stage, key)
            if hit is not None:
                return hit, True
        full_spec = {"stage": stage, "spec": spec, "inputs": list(inputs)}
        with self.lock(stage, key):
            if not replace:
                hit = self.get(stage, key)
                if hit is not None:  # a concurrent run computed it while this one waited
                    return hit, True
            with self.writing(stage, key, full_spec, replace=replace) as tmp:
                fn(tmp)
            art = self.get(stage, key)
        if art is None:
            raise StoreError(f"{self.dir(stage, key)}: the artifact vanished right after it was written; "
                             f"check that nothing else deletes files in the work dir.")
        return art, False

    # -- cache ls / verify / prune ------------------------------------------------------------
    def list(self, check: bool = False) -> list[dict]:
        """Every artifact dir (complete, temp, corrupt); ``check``: also check file sizes (``problem``)."""
        rows = []
        if not self.root.exists():
            return rows
        for sdir in sorted(p for p in self.root.iterdir() if p.is_dir() and not p.name.startswith(".")):
            for a in sorted(sdir.iterdir()):
                if not a.is_dir():
                    continue
                dotted = a.name.startswith(".")
                complete = (a / MARKER).is_file() and not dotted
                row = {"stage": sdir.name, "key": a.name, "complete": complete,
                       "bytes": _du(a), "mtime": a.stat().st_mtime,
                       "tmp": a.name.startswith(".tmp-"), "corrupt": a.name.startswith(".corrupt-")}
                if check and complete:
                    row["problem"] = check_artifact(a, hash_limit=0)
                rows.append(row)
        return rows

    def verify(self, *, move_aside: bool = True, adopt: bool = False, adopted: list | None = None) -> list[dict]:
        """Hash every file of every complete artifact against its manifest; returns the artifacts that cannot be proven
        intact (``problem`` set; ``legacy`` True for one without a manifest whose structure is whole) and, with
        ``move_aside``, moves them aside so that they are rebuilt.  ``adopt``: a legacy artifact whose structural checks
        pass gets a manifest instead (:meth:`adopt`) and is appended to ``adopted``."""
        bad = []
        for row in self.list():
            if not row["complete"]:
                continue
            problem = check_artifact(self.dir(row["stage"], row["key"]), hash_limit=None)
            if problem == LEGACY and adopt:
                problem = self.adopt(row["stage"], row["key"])
                if problem is None:
                    if adopted is not None:
                        adopted.append(row)
                    continue
            if problem is not None:
                row["problem"] = problem
                row["legacy"] = problem == LEGACY
                bad.append(row)
                if move_aside:
                    self.quarantine(row["stage"], row["key"], problem)
        return bad

    def _live_tmp(self, row: dict) -> bool:
        """A temp dir of a computation still running: its key's lock is held, or its pid is alive here."""
        parts = row["key"].split("-")  # .tmp-<key>-<pid>-<rand>
        if len(parts) < 4:
            return False
        key, pid = parts[1], parts[2]
        if self.is_locked(row["stage"], key):
            return True
        try:
            os.kill(int(pid), 0)
        except (ValueError, ProcessLookupError):
            return False
        except PermissionError:
            return True
        return True

    def prune(self, *, stage: str | None = None, older_than_s: float | None = None, everything: bool = False,
              dry_run: bool = False) -> list[dict]:
        """Remove incomplete/temp/corrupt dirs always (never a live run's temp dir); with
        ``stage``/``older_than_s``/``everything`` also complete ones."""
        now = time.time()
        removed = []
        for row in self.list():
            victim = not row["complete"]
            if row["complete"]:
                sel = everything or (stage is not None and row["stage"] == stage)
                if older_than_s is not None:
                    sel = (sel or stage is None) and (now - row["mtime"] > older_than_s)
                victim = sel
            elif row["tmp"] and self._live_tmp(row):
                victim = False
            if victim:
                removed.append(row)
                if not dry_run:
                    shutil.rmtree(self.root / row["stage"] / row["key"], ignore_errors=True)
        return removed


def _du(p: Path) -> int:
    total = 0
    for root, _, files in os.walk(p):
        for f in files:
            try:
                total += os.path.getsize(os.path.join(root, f))
            except OSError:
                pass
    return total


def strict(obj: Any) -> Any:
    """``obj`` with every non-finite float (NaN, ±inf) replaced by None: JSON outputs are strict."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: strict(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [strict(v) for v in obj]
    return obj


def dumps_strict(obj: Any, **kw) -> str:
    """``json.dumps`` that writes null for NaN/inf (never the non-standard ``NaN`` literal)."""
    return json.dumps(strict(obj), allow_nan=False, **{"default": str, **kw})


def write_json(path: Path, obj: Any) -> None:
    path.write_text(dumps_strict(obj, indent=2, ensure_ascii=False))


def write_jsonl(path: Path, rows: list[dict]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(dumps_strict(r, ensure_ascii=False) + "\n")


def read_jsonl(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]
