"""Typed, frozen config dataclasses and their validation.

Every plugin has a ``Config``: a frozen dataclass whose fields are the plugin's
hyper-parameters, each with a default and a one-line ``doc``.  Constraints live in the
field metadata (``ge``, ``gt``, ``le``, ``lt``, ``choices``) so that YAML files and CLI
overrides are checked in one place: unknown keys, wrong types and out-of-range values
raise one ``ConfigError`` that names the field, the value and what would be accepted.
"""
from __future__ import annotations

import dataclasses
import difflib
import json
import math
import types
import typing
from pathlib import Path
from typing import Any, Mapping

import yaml

from .errors import ConfigError


def param(default: Any = dataclasses.MISSING, doc: str = "", *, ge=None, gt=None, le=None, lt=None,
          choices=None, default_factory: Any = dataclasses.MISSING):
    """A config field with documentation and constraints."""
    md = {"doc": doc, "ge": ge, "gt": gt, "le": le, "lt": lt, "choices": choices}
    if default_factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=default_factory, metadata=md)
    return dataclasses.field(default=default, metadata=md)


def _type_ok(value: Any, tp: Any) -> tuple[bool, Any]:
    """Check (and gently coerce) ``value`` against annotation ``tp``; returns (ok, value)."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return True, value
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(tp):
            if arg is type(None) and value is None:
                return True, None
        for arg in typing.get_args(tp):
            if arg is type(None):
                continue
            ok, v = _type_ok(value, arg)
            if ok:
                return True, v
        return False, value
    if origin is typing.Literal:
        return (value in typing.get_args(tp)), value
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            return False, value
        args = typing.get_args(tp)
        inner = args[0] if args else Any
        out = []
        for v in value:
            ok, vv = _type_ok(v, inner)
            if not ok:
                return False, value
            out.append(vv)
        return True, tuple(out) if origin is tuple else out
    if origin is dict:
        return isinstance(value, dict), value
    if tp is bool:
        return isinstance(value, bool), value
    if tp is int:
        return (isinstance(value, int) and not isinstance(value, bool)), value
    if tp is float:
        if isinstance(value, bool):
            return False, value
        if isinstance(value, (int, float)):
            return True, float(value)
        return False, value
    if tp is str:
        return isinstance(value, str), value
    if isinstance(tp, type):
        return isinstance(value, tp), value
    return True, value


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def build(cls: type, overrides: Mapping[str, Any] | None = None, *, where: str = "") -> Any:
    """Instantiate config ``cls`` from ``overrides`` with full validation."""
    overrides = dict(overrides or {})
    ctx = f" in {where}" if where else ""
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    hints = typing.get_type_hints(cls)
    unknown = [k for k in overrides if k not in fields]
    if unknown:
        k = unknown[0]
        close = difflib.get_close_matches(k, list(fields), n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ConfigError(f"Unknown option {k!r}{ctx} for {cls.__qualname__}.{hint} "
                          f"Valid options: {', '.join(fields)}.")
    values = {}
    for name, value in overrides.items():
        f = fields[name]
        ok, v = _type_ok(value, hints[name])
        if not ok:
            raise ConfigError(f"Option {name!r}{ctx} must be {_type_name(hints[name])}, got {value!r} "
                              f"({type(value).__name__}).")
        values[name] = v
    obj = cls(**values)
    validate(obj, where=where)
    return obj


def validate(obj: Any, *, where: str = "") -> None:
    ctx = f" in {where}" if where else ""
    for f in dataclasses.fields(obj):
        v = getattr(obj, f.name)
        md = f.metadata or {}
        if v is None:
            continue
        if md.get("choices") is not None and v not in md["choices"]:
            raise ConfigError(f"Option {f.name!r}{ctx} must be one of {list(md['choices'])}, got {v!r}.")
        for x in (v if isinstance(v, (list, tuple)) else [v]):
            if isinstance(x, float) and not math.isfinite(x):
                raise ConfigError(f"Option {f.name!r}{ctx} must be a finite number, got {v!r}; give a real value "
                                  f"(e.g. lr=1e-5).")
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            for key, op, word in (("ge", lambda a, b: a >= b, ">="), ("gt", lambda a, b: a > b, ">"),
                                  ("le", lambda a, b: a <= b, "<="), ("lt", lambda a, b: a < b, "<")):
                bound = md.get(key)
                if bound is not None and not op(v, bound):
                    raise ConfigError(f"Option {f.name!r}{ctx} must be {word} {bound}, got {v!r}.")


def replace(obj: Any, **changes) -> Any:
    new = dataclasses.replace(obj, **changes)
    validate(new)
    return new


def to_dict(obj: Any) -> dict:
    return json.loads(json.dumps(dataclasses.asdict(obj), default=str))


def describe(cls: type) -> list[tuple[str, str, Any, str]]:
    """(name, type, default, doc) for every field: used by ``sdd-bench ls --verbose`` and docs."""
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else None)
        out.append((f.name, _type_name(hints[f.name]), default, (f.metadata or {}).get("doc", "")))
    return out


class _UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a mapping with the same key twice (PyYAML keeps the last silently)."""


def _construct_unique_mapping(loader: yaml.SafeLoader, node: yaml.MappingNode, deep: bool = False):
    seen: dict = {}
    for key_node, _ in node.value:  # the mapping's own keys: a key merged in with `<<` may be overridden
        if key_node.tag == "tag:yaml.org,2002:merge":
            continue
        key = loader.construct_object(key_node, deep=deep)
        try:
            first = seen.get(key)
        except TypeError:  # an unhashable key: SafeLoader's own message follows
            break
        if first is not None:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r} (first given at line {first}); keep one of them",
                key_node.start_mark)
        seen[key] = key_node.start_mark.line + 1
    return loader.construct_mapping(node, deep=deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_unique_mapping)


def yaml_load(text: str):
    """``yaml.safe_load`` that fails on duplicate mapping keys (a raised ``yaml.YAMLError``)."""
    return yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass


def parse_override(text: str) -> tuple[str, Any]:
    """``key=value`` from the command line; the value is parsed as YAML (so 1e-5, true, [a,b] work)."""
    if "=" not in text:
        raise ConfigError(f"Override {text!r} must look like key=value (e.g. lr=1e-5).")
    k, _, v = text.partition("=")
    try:
        val = yaml_load(v)
    except yaml.YAMLError as err:
        raise ConfigError(f"Override {text!r}: value is not valid YAML ({getattr(err, 'problem', None) or err}).") from err
    if isinstance(val, str):
        # YAML 1.1 reads "1e-5" as a string; accept numeric-looking strings as floats
        try:
            val = float(val) if any(c in val for c in "eE.") else val
        except ValueError:
            pass
    return k.strip(), val


# Largest config file read (bytes).  Our choice: the biggest shipped config (configs/) is under 4 KiB and a grid of
# 10,000 cells written out by hand is under 1 MiB; anything larger is not a config (e.g. `--config /dev/zero`).
MAX_CONFIG_BYTES = 1 << 20


def read_config_text(path: str | Path) -> str:
    """The text of a config file, or one ``ConfigError``: empty path, missing, not a regular file (a device, FIFO or
    directory), larger than ``MAX_CONFIG_BYTES``, unreadable, or not UTF-8."""
    if not str(path).strip():
        raise ConfigError("The config path is empty; give a YAML file (e.g. configs/example_run.yaml).")
    p = Path(path)
    try:
        st = p.stat()
    except FileNotFoundError:
        raise ConfigError(f"Config file {str(p)!r} does not exist.") from None
    except OSError as err:
        raise ConfigError(f"Config file {str(p)!r} cannot be read: {err.strerror or err}.") from None
    import stat as _stat
    if not _stat.S_ISREG(st.st_mode):
        kind = "a directory" if _stat.S_ISDIR(st.st_mode) else "not a regular file (a device, FIFO or socket)"
        raise ConfigError(f"Config file {str(p)!r} is {kind}; give a YAML file.")
    if st.st_size > MAX_CONFIG_BYTES:
        raise ConfigError(f"Config file {str(p)!r} has {st.st_size:,} bytes, more than the {MAX_CONFIG_BYTES:,} a "
                          f"config may have; it is not a config file (give the YAML spec).")
    try:
        with open(p, "rb") as f:
            raw = f.read(MAX_CONFIG_BYTES + 1)  # bounded even if the file grows after the stat
    except OSError as err:
        raise ConfigError(f"Config file {str(p)!r} cannot be read: {err.strerror or err}.") from None
    if len(raw) > MAX_CONFIG_BYTES:
        raise ConfigError(f"Config file {str(p)!r} has more than {MAX_CONFIG_BYTES:,} bytes; it is not a config file.")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        line = raw[:err.start].count(b"\n") + 1
        raise ConfigError(f"{p}: not UTF-8 text (byte 0x{raw[err.start]:02x} at line {line}, byte offset {err.start}); "
                          f"save the file as UTF-8.") from None


def load_yaml(path: str | Path) -> dict:
    p = Path(path)
    text = read_config_text(path)
    try:
        data = yaml_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        loc = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(f"{p}: malformed YAML{loc}: {getattr(err, 'problem', err)}. Fix the syntax and retry.") from err
    if data is None:
        raise ConfigError(f"{p}: the file is empty; it must be a YAML mapping.")
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: top level must be a mapping (key: value), got {type(data).__name__}.")
    return data


# Attack options that add evaluations without changing the attacked model (the same training run, also saved on the
# way: the ``checkpoints`` of attacks/finetune.py, an attack trajectory).  A cell with them answers the cell without
# (harness/pipeline.py: record_cell_keys); the report's settings ignore them.  Declared here, in the core, because the
# core reads them off records; attacks/finetune.py re-exports it.
EVAL_ONLY_OPTIONS = ("checkpoints",)
