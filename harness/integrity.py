"""The integrity of an artifact: its manifest (size and sha256 of every file), the structural checks of what its
stage wrote, and the check that combines them.  The artifact store (harness/store.py) runs them on every first read
and re-exports every name.
"""
from __future__ import annotations

import errno
import hashlib
import json
import os
from pathlib import Path

MARKER = "COMPLETE"
SPEC = "spec.json"
MANIFEST = "MANIFEST.json"
HASH_LIMIT = 64 << 20  # files up to this size are hashed on every first read in a process; larger: size only


def os_error_line(err: OSError, path: str | Path | None = None, flag: str = "--workdir") -> str:
    """One line naming the path and the fix for an I/O error (``flag``: the option that chose the path)."""
    where = path or err.filename or "?"
    fix = {errno.EACCES: "make it writable (chmod/chown) or pass --workdir to a writable directory",
           errno.EPERM: "make it writable (chmod/chown) or pass --workdir to a writable directory",
           errno.EROFS: "the file system is read-only; pass --workdir to a writable directory",
           errno.ENOSPC: "the disk is full; free space (`sdd-bench cache prune`) or pass --workdir on another disk",
           errno.EDQUOT: "the disk quota is exceeded; free space (`sdd-bench cache prune`) or use another --workdir",
           errno.ENOTDIR: "a part of the path is a file, not a directory; pass --workdir to a directory",
           errno.ENOENT: "it does not exist; check the path"}.get(
        err.errno, "check the path and its permissions, or pass --workdir to a writable directory")
    return f"{where}: {err.strerror or err}; {fix.replace('--workdir', flag)}."


def _sha256_file(p: Path) -> str:
    h = hashlib.sha256()
    with open(p, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _files(d: Path) -> list[str]:
    out = []
    for root, _, files in os.walk(d):
        for f in files:
            out.append(os.path.relpath(os.path.join(root, f), d))
    return sorted(out)


def write_manifest(d: Path) -> None:
    files = {rel: {"bytes": os.path.getsize(d / rel), "sha256": _sha256_file(d / rel)}
             for rel in _files(d) if rel not in (MANIFEST, MARKER)}
    (d / MANIFEST).write_text(json.dumps({"files": files}, indent=1, sort_keys=True))


LEGACY = f"has no {MANIFEST} (written before manifests), so it cannot be proven intact"
# files a structural check reads whole (JSON, JSONL, zip CRCs): larger ones are checked by size and header only
STRUCTURE_READ_LIMIT = 256 << 20


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split())[:200] or type(err).__name__


def _jsonl_rows(p: Path, rel: str) -> tuple[int | None, str | None]:
    """(rows, None) for a complete JSONL file, else (None, problem)."""
    raw = p.read_bytes()
    if raw and not raw.endswith(b"\n"):
        return None, f"{rel} does not end with a newline (cut mid-row)"
    n = 0
    for i, line in enumerate(raw.decode("utf-8", errors="strict").splitlines(), 1):
        if not line.strip():
            continue
        try:
            json.loads(line)
        except ValueError as err:
            return None, f"{rel} row {i} is not valid JSON ({err})"
        n += 1
    return n, None


def structure_problem(d: Path) -> str | None:
    """None if every file of the artifact at ``d`` is structurally whole, else one phrase naming the first that is
    not.  What is checked, by file type (the only evidence a legacy artifact, without a manifest, has):
    ``*.json`` parses; ``*.jsonl`` ends with a newline and every row parses, and ``generations.jsonl`` /
    ``verdicts.jsonl`` have the ``n`` rows that ``summary.json`` (and a generate stage's ``spec.json``) state;
    ``*.safetensors``: the header parses and the tensors' byte sizes (shape × dtype) fill the file exactly
    (``safetensors.safe_open`` validates both); zip-format ``*.bin`` / ``*.pt`` / ``*.pth`` pass their CRCs;
    ``*.index.json`` names only shards that exist.  Other files (tokenizer vocabularies, text) have no structure
    to check."""
    try:
        files = _files(d)
        summary = spec_n = None
        for rel in files:
            p = d / rel
            size = p.stat().st_size
            name = p.name
            if name.endswith(".json"):
                if size > STRUCTURE_READ_LIMIT:
                    continue
                try:
                    obj = json.loads(p.read_text(encoding="utf-8"))
                except (ValueError, UnicodeDecodeError) as err:
                    return f"{rel} is not valid JSON ({_one_line(err)})"
                if rel == "summary.json" and isinstance(obj, dict):
                    summary = obj.get("n")
                if rel == SPEC and isinstance(obj, dict) and isinstance(obj.get("spec"), dict) \
                        and obj.get("stage") == "generate":
                    spec_n = obj["spec"].get("n")
                if name.endswith(".index.json") and isinstance(obj, dict) and isinstance(obj.get("weight_map"), dict):
                    for shard in sorted(set(map(str, obj["weight_map"].values()))):
                        if not (p.parent / shard).is_file():
                            return f"{rel} names the shard {shard}, which is missing"
            elif name.endswith(".jsonl"):
                if size > STRUCTURE_READ_LIMIT:
                    continue
                try:
                    _, problem = _jsonl_rows(p, rel)
                except UnicodeDecodeError as err:
                    return f"{rel} is not UTF-8 ({_one_line(err)})"
                if problem:
                    return problem
            elif name.endswith(".safetensors"):
                try:
                    from safetensors import safe_open
                    with safe_open(str(p), framework="numpy"):
                        pass
                except Exception as err:  # noqa: BLE001 - SafetensorError and anything the header parse raises
                    return f"{rel} is not a whole safetensors file ({_one_line(err)})"
            elif name.endswith((".bin", ".pt", ".pth")) and size <= STRUCTURE_READ_LIMIT:
                import zipfile
                if zipfile.is_zipfile(p):
                    try:
                        with zipfile.ZipFile(p) as z:
                            bad = z.testzip()
                    except (zipfile.BadZipFile, OSError, EOFError) as err:
                        return f"{rel} is not a whole zip archive ({_one_line(err)})"
                    if bad is not None:
                        return f"{rel} has a damaged member {bad} (CRC mismatch)"
        for rel in ("generations.jsonl", "verdicts.jsonl"):
            if rel in files and (isinstance(summary, int) or isinstance(spec_n, int)):
                rows, problem = _jsonl_rows(d / rel, rel)
                if problem:
                    return problem
                for want, src in ((summary, "summary.json"), (spec_n if rel == "generations.jsonl" else None, SPEC)):
                    if isinstance(want, int) and not isinstance(want, bool) and rows != want:
                        return f"{rel} has {rows} rows where its {src} states {want}"
    except OSError as err:
        return f"a file cannot be read ({os_error_line(err)})"
    return None


def check_artifact(d: Path, *, hash_limit: int | None = HASH_LIMIT, legacy: bool = False) -> str | None:
    """None if the artifact at ``d`` is intact, else one phrase naming the problem.
    ``hash_limit``: hash files up to this size (None: all, 0: none).  An artifact without a manifest cannot be proven
    intact: its structural problem if it has one (:func:`structure_problem`), else :data:`LEGACY` (with ``legacy``:
    None, i.e. its structure is all that is asked)."""
    try:
        json.loads((d / MARKER).read_text() or "{}")
    except (OSError, ValueError):
        return f"its {MARKER} marker is unreadable"
    mpath = d / MANIFEST
    if not mpath.is_file():  # written before manifests: its structure is all there is to check
        problem = structure_problem(d)
        if problem is not None:
            return problem
        return None if legacy else LEGACY
    try:
        files = json.loads(mpath.read_text())["files"]
    except (OSError, ValueError, KeyError, TypeError):
        return f"its {MANIFEST} is unreadable"
    for rel, want in sorted(files.items()):
        p = d / rel
        try:
            size = p.stat().st_size
        except OSError:
            return f"{rel} is missing"
        if size != want["bytes"]:
            return f"{rel} has {size} bytes where {want['bytes']} were written"
        if hash_limit is None or size <= hash_limit:
            if _sha256_file(p) != want["sha256"]:
                return f"{rel} has a different sha256 than was written"
    return None
