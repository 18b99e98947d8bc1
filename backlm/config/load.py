"""Reading a configuration: presets, YAML, ``--set a.b=c`` overrides and flags, merged and
coerced into the typed dataclasses of :mod:`backlm.config.schema`.

Precedence: dataclass defaults < preset YAML (``--config``) < ``--set`` overrides < explicit
flags. Unknown keys and values of the wrong type raise :class:`UserError`. The user's two
layers never override each other in silence: :func:`user_layer` is the one place where a
``--set`` value that a flag would replace is refused, naming the winner.
"""

from __future__ import annotations

import dataclasses
import enum
import types
import typing
from pathlib import Path
from typing import Any

import yaml

from backlm.config.schema import RunConfig
from backlm.errors import UserError

# Presets ship inside the package (the repository's top-level configs/ links here), so they
# resolve from any folder and from a non-editable install.
CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"

def preset_path(name_or_path: str) -> Path:
    """Resolve ``cpu-tiny`` / ``configs/cpu-tiny.yaml`` / any YAML path to an existing file."""
    path = Path(name_or_path)
    looks_like_path = "/" in name_or_path or path.suffix in (".yaml", ".yml")
    if path.is_dir():
        raise UserError(f"--config {name_or_path} is a folder: give a YAML file or a preset name")
    candidates = [path]
    if not looks_like_path:
        candidates.append(CONFIG_DIR / f"{name_or_path}.yaml")
    candidates.append(CONFIG_DIR / path.name)
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    known = ", ".join(sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))) or "none"
    if looks_like_path:
        raise UserError(f"config file {name_or_path} does not exist: check the path, or name a "
                        f"preset ({known})")
    raise UserError(f"unknown config preset {name_or_path!r}: known presets are {known}, or give "
                    "the path of a YAML file")


def read_yaml(path: Path) -> dict[str, Any]:
    """Read a YAML mapping; a file that is not one raises :class:`UserError` (syntax errors
    with their line and column)."""
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = exc.problem or exc.context or "invalid YAML"
        raise UserError(f"config {path}{where}: {problem}; fix the YAML syntax there") from None
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise UserError(f"cannot read config {path}: {exc}".splitlines()[0]) from None
    if not isinstance(data, dict):
        raise UserError(f"config {path} must be a mapping of keys to values (section: key: value)"
                        f", not a {type(data).__name__}")
    return data


_YAML11_WORDS = {"on", "off", "yes", "no", "y", "n"}
_BOOL_WORDS = {"true": True, "on": True, "yes": True, "y": True,
               "false": False, "off": False, "no": False, "n": False}


def parse_overrides(items: list[str] | None) -> dict[str, Any]:
    """Turn ``["a.b=3", "c=x"]`` into a nested dict; values are parsed as YAML scalars."""
    return _parse_overrides(items)[0]


def _parse_overrides(items: list[str] | None) -> tuple[dict[str, Any], dict[str, str]]:
    """The nested dict of ``items`` and, by dotted key, the item that gave each value."""
    out: dict[str, Any] = {}
    given: dict[str, str] = {}
    for item in items or []:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise UserError(f"--set expects key=value, got {item!r}")
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            value = raw
        if raw.strip().lower() in _YAML11_WORDS:
            value = raw.strip()  # YAML 1.1 reads on/off/yes/no as booleans: keep the word
        node = out
        parts = key.strip().split(".")
        if not all(p.strip() for p in parts):
            raise UserError(f"--set key {key.strip()!r} has an empty part: write section.key=value"
                            ", e.g. model.depth=4")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise UserError(f"--set key {key!r} conflicts with another override")
        node[parts[-1]] = value
        given[".".join(p.strip() for p in parts)] = item.strip()
    return out, given


def deep_merge(base: dict[str, Any], update: dict[str, Any], path: str = "") -> dict[str, Any]:
    """Recursively merge ``update`` into a copy of ``base``; a mapping on one side and a value
    on the other is a :class:`UserError` (neither silently replaces the other)."""
    merged = dict(base)
    for key, value in update.items():
        here = f"{path}{key}"
        old = merged.get(key)
        if isinstance(value, dict) and isinstance(old, dict):
            merged[key] = deep_merge(old, value, f"{here}.")
        elif key in merged and (isinstance(value, dict) != isinstance(old, dict)) and (
                old is not None and value is not None):
            raise UserError(f"config key {here!r} is a section (key: value pairs) on one side "
                            f"and the value {old if not isinstance(old, dict) else value!r} on "
                            f"the other: set its keys, e.g. {here}.<key>=value")
        else:
            merged[key] = value
    return merged


T = typing.TypeVar("T")


def from_dict(cls: type[T], data: dict[str, Any], prefix: str = "") -> T:
    """Build dataclass ``cls`` from a nested dict, rejecting unknown keys and bad types."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        choices = ", ".join(sorted(names))
        raise UserError(f"unknown config key '{prefix}{unknown[0]}': valid keys here are {choices}")
    kwargs = {}
    for name, value in data.items():
        kwargs[name] = _coerce(hints[name], value, f"{prefix}{name}")
    return cls(**kwargs)


def _coerce(tp: Any, value: Any, key: str) -> Any:
    if dataclasses.is_dataclass(tp):
        if value is None:  # an empty section (`model:` with nothing under it)
            value = {}
        if not isinstance(value, dict):
            raise UserError(f"config section {key!r} must be a mapping of keys to values, got "
                            f"{value!r}: write its keys, e.g. {key}.<key>=value")
        return from_dict(tp, value, prefix=f"{key}.")
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            return None
        return _coerce(args[0], value, key)
    if origin is tuple:
        args = typing.get_args(tp)
        if not isinstance(value, list | tuple) or len(value) != len(args):
            raise UserError(f"config key {key!r} must be a list of {len(args)} values, got "
                            f"{value!r}")
        return tuple(_coerce(a, v, key) for a, v in zip(args, value, strict=True))
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        # a typed name (a direction): its own parser says what the valid names are
        parse = getattr(tp, "parse", tp)
        if isinstance(value, str | tp):
            try:
                return parse(value)
            except UserError as exc:
                raise UserError(f"config key {key!r}: {exc}") from None
    elif tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in _BOOL_WORDS:
            return _BOOL_WORDS[value.lower()]
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
    elif tp is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
    elif tp is str:
        if isinstance(value, bool):
            return "on" if value else "off"  # a preset's YAML 1.1 `off` means the word
        if isinstance(value, str | int | float):
            return str(value)
    else:
        return value
    raise UserError(f"config key {key!r} expects {tp.__name__}, got {value!r}")


def to_dict(cfg: Any) -> dict[str, Any]:
    """Plain nested dict of a dataclass config (tuples become lists, typed names their names,
    for YAML)."""
    def conv(v: Any) -> Any:
        if isinstance(v, tuple):
            return [conv(x) for x in v]
        if isinstance(v, dict):
            return {k: conv(x) for k, x in v.items()}
        if isinstance(v, enum.Enum):
            return v.value  # written back as its name
        return v
    return conv(dataclasses.asdict(cfg))


def to_yaml(cfg: Any) -> str:
    """The resolved config as YAML text."""
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


class Flags(dict):
    """The flags layer: a nested dict of config values, and how each was given (by dotted key,
    e.g. ``{"data.direction": "--direction forward"}``) so that a ``--set`` it would replace is
    refused naming it; ``fixes`` says, by key, what to do instead (default: give one)."""

    def __init__(self, values: dict[str, Any] | None = None,
                 labels: dict[str, str] | None = None,
                 fixes: dict[str, str] | None = None) -> None:
        super().__init__(values or {})
        self.labels = dict(labels or {})
        self.fixes = dict(fixes or {})


def user_layer(overrides: list[str] | None, flags: dict[str, Any] | None = None,
               cls: type = RunConfig) -> dict[str, Any]:
    """What the user gave: ``--set`` overrides with ``flags`` over them (a nested dict).

    The one place where the two meet: a key a ``--set`` gives and a flag gives too (or a rule
    a :class:`Flags` names, e.g. quickstart's per-member direction) must get the same value
    (compared as ``cls`` types it); otherwise it is refused naming both, since one of them
    would be dropped in silence."""
    sets, given = _parse_overrides(overrides)  # a key set again: the last --set is the value
    labels = getattr(flags, "labels", {})
    fixes = getattr(flags, "fixes", {})
    for key, value in flatten(dict(flags or {})).items():
        if key in given and _typed(cls, key, given[key]) != _typed(cls, key, value, False):
            winner = labels.get(key, f"the option for {key}")
            raise UserError(f"--set {given[key]} conflicts with {winner}: "
                            f"{fixes.get(key, 'give one')}")
    return deep_merge(sets, dict(flags or {}))


def _typed(cls: type, key: str, value: Any, item: bool = True) -> Any:
    """``key``'s value as ``cls`` types it, from a ``--set`` item (``item``) or a flag's value,
    so that two spellings of one value (``5`` and ``5.0``) count as the same."""
    if item:
        value = flatten(parse_overrides([value])).get(key)
    tp: Any = cls
    for part in key.split("."):
        hints = typing.get_type_hints(tp) if dataclasses.is_dataclass(tp) else {}
        if part not in hints:
            return value  # an unknown key: from_dict names it
        tp = hints[part]
    return _coerce(tp, value, key)


def load_config(
    cls: type[T] = RunConfig,  # type: ignore[assignment]
    preset: str | None = None,
    overrides: list[str] | None = None,
    flags: dict[str, Any] | None = None,
) -> T:
    """Resolve a config: defaults < preset YAML < ``--set`` overrides < flags (nested dict; a
    :class:`Flags` names them); a ``--set`` that a flag or another ``--set`` would replace with
    another value is refused (:func:`user_layer`)."""
    data: dict[str, Any] = {}
    if preset:
        data = read_yaml(preset_path(preset))
    data = deep_merge(data, user_layer(overrides, flags, cls))
    return from_dict(cls, data)


def flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` as ``{"a.b": 1}``: a nested config dict by dotted key."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def explicit_keys(overrides: list[str] | None, flags: dict[str, Any] | None) -> set[str]:
    """Dotted keys the user set on the command line (``--set`` and flags), as opposed to values
    that come from a preset or a default."""
    return set(flatten(parse_overrides(overrides))) | set(flatten(flags or {}))
