"""Config dataclasses ↔ CLI flags ↔ TOML files: every field of a config is a flag and a key.

A command's config is one frozen dataclass made of *sections* (fields whose type is a
dataclass, declared with `section(...)`); a section is a TOML table and its fields are
flags, with the section's flag prefix (`retrieval_` → `--retrieval-epochs`) or none.
Sections may nest (`data.source`). `add_config_flags(parser, TrainConfig)` adds every
flag plus `--config FILE.toml` and `--print-config`; `build_config(TrainConfig, args)`
merges defaults ← file ← the flags given on the command line and builds the frozen
dataclass. A bad value anywhere becomes one `ConfigError` naming the flag.

The single-section helpers `add_config_args` / `config_from_args` remain for jobs whose
config is one flat dataclass; `config_to_dict` saves configs into manifests and reports.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import difflib
import re
import typing
from collections.abc import Iterator, Mapping
from typing import Any, Literal, TypeVar, get_args, get_origin

from core.errors import RecsysError

T = TypeVar("T")

CONFIG_FLAG = "--config"
PRINT_FLAG = "--print-config"


class ConfigError(RecsysError, ValueError):
    """A config value, flag combination or config file is invalid.

    `section` is the dotted path of the section the message's `--flags` belong to, so the
    CLI can spell them with the section's prefix (an IndexConfig says `--factory`; under
    `recsys train` the flag is `--index-factory`).
    """

    def __init__(self, message: str, section: str = "") -> None:
        super().__init__(message)
        self.section = section


@contextlib.contextmanager
def config_errors(section: str = "") -> Iterator[None]:
    """Turns a ValueError/TypeError raised by a config (or by code checking one) into a ConfigError
    for `section`; RecsysErrors pass through unchanged. The one place that translation is written."""
    try:
        yield
    except RecsysError:
        raise
    except (ValueError, TypeError) as e:
        raise ConfigError(str(e), section) from e


def section(cls: type, *, prefix: str = "", title: str = "") -> Any:
    """A field of a command config holding one section: its flags get `prefix`, its --help group `title`."""
    return dataclasses.field(default_factory=cls, metadata={"prefix": prefix, "title": title})


# -- one field = one flag -------------------------------------------------------------------

def _flag(prefix: str, name: str) -> str:
    return "--" + (prefix + name).replace("_", "-")


def _dest(prefix: str, name: str) -> str:
    return (prefix + name).replace("-", "_")


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return f.default_factory()  # type: ignore[misc]
    return None


def _is_section(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _argument(tp: Any, default: Any, help_text: str, suppress: bool) -> dict[str, Any]:
    kwargs: dict[str, Any] = {"default": argparse.SUPPRESS if suppress else default}
    origin = get_origin(tp)
    if tp is bool:
        kwargs["action"] = argparse.BooleanOptionalAction
    elif origin is Literal:
        kwargs["choices"] = list(get_args(tp))
        kwargs["type"] = type(get_args(tp)[0])
    elif origin is tuple:
        inner = get_args(tp)[0]
        kwargs["nargs"] = "*"
        if get_origin(inner) is tuple:  # tuple[tuple[str, str], ...]: KEY=VALUE pairs
            kwargs["type"] = _pair
            kwargs["metavar"] = "KEY=VALUE"
        elif get_origin(inner) is Literal:
            kwargs["choices"] = list(get_args(inner))
            kwargs["type"] = type(get_args(inner)[0])
        else:
            kwargs["type"] = inner
    elif tp in (int, float, str):
        kwargs["type"] = tp
    else:
        kwargs["type"] = str
    shown = default if not isinstance(default, tuple) else " ".join(map(str, default)) or "none"
    kwargs["help"] = f"{help_text} (default: {shown})".strip()
    return kwargs


def add_config_args(parser: argparse.ArgumentParser | Any, cls: type, prefix: str = "",
                    help_text: dict[str, str] | None = None, skip: tuple[str, ...] = (),
                    suppress: bool = False) -> None:
    """Adds one flag per field of dataclass `cls` to `parser` (or an argument group).

    Field metadata may add `aliases` (e.g. `("-k",)`). With `suppress`, an absent flag sets no
    attribute, so `build_config` can tell which flags the user gave."""
    hints = typing.get_type_hints(cls)
    help_text = help_text or {}
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        kwargs = _argument(hints[f.name], _default(f), help_text.get(f.name, ""), suppress)
        parser.add_argument(*f.metadata.get("aliases", ()), _flag(prefix, f.name), dest=_dest(prefix, f.name),
                            **kwargs)


def _pair(text: str) -> tuple[str, str]:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    key, value = text.split("=", 1)
    return key, value


def config_from_args(cls: type[T], args: argparse.Namespace, prefix: str = "", **overrides: Any) -> T:
    """Builds `cls` from the flags `add_config_args` added (plus explicit overrides)."""
    values = {}
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        dest = _dest(prefix, f.name)
        if f.name in overrides:
            values[f.name] = overrides[f.name]
        elif hasattr(args, dest):
            v = getattr(args, dest)
            values[f.name] = tuple(v) if isinstance(v, list) else v
    return cls(**values)


def config_to_dict(config: Any) -> dict[str, Any]:
    """A JSON-ready dict of a (possibly nested) config dataclass."""
    return dataclasses.asdict(config)


# -- a command config: sections → argument groups, TOML tables -------------------------------

@dataclasses.dataclass(frozen=True)
class _Section:
    path: tuple[str, ...]       # field names from the command config down to this section
    cls: type
    prefix: str
    title: str


def sections(cls: type) -> list[_Section]:
    """The leaf sections of command config `cls` (sections holding scalar fields), in field order."""
    out: list[_Section] = []

    def walk(c: type, path: tuple[str, ...], prefix: str, title: str) -> None:
        hints = typing.get_type_hints(c)
        fields = dataclasses.fields(c)
        if not fields or any(not _is_section(hints[f.name]) for f in fields):
            if path and any(_is_section(hints[f.name]) for f in fields):
                raise TypeError(f"{c.__name__} mixes sections and values; a section holds one or the other")
            out.append(_Section(path, c, prefix, title))
            return
        for f in fields:
            walk(hints[f.name], (*path, f.name), prefix + f.metadata.get("prefix", ""),
                 f.metadata.get("title", "") or f.name)
    walk(cls, (), "", "")
    return out


def flag_message(cls: type, error: ConfigError) -> str:
    """`error`'s message with the flags of its section spelled as command config `cls` spells them."""
    message = str(error)
    if not error.section:
        return message
    for s in sections(cls):
        if ".".join(s.path) == error.section:
            return _prefixed(message, s)
    return message


def _prefixed(message: str, s: _Section) -> str:
    """A section's messages name its fields' own flags (--epochs); under a prefix they are --retrieval-epochs."""
    if not s.prefix:
        return message
    names = sorted((f.name.replace("_", "-") for f in dataclasses.fields(s.cls)), key=len, reverse=True)
    pattern = re.compile(r"(?<![\w-])--(" + "|".join(map(re.escape, names)) + r")(?![\w-])")
    return pattern.sub(lambda m: _flag(s.prefix, m.group(1)), message)


def add_config_flags(parser: argparse.ArgumentParser, cls: type,
                     help_text: Mapping[str, Mapping[str, str]] | None = None,
                     skip: Mapping[str, tuple[str, ...]] | None = None) -> None:
    """Adds --config, --print-config and one flag per field of every section of command config `cls`.

    `help_text` maps a dotted section path to {field: help}; `skip` to fields that get no flag
    (they still are config keys). Flags are added with default=SUPPRESS: `build_config`
    sees only the ones given, so the order defaults ← file ← flags holds for each."""
    parser.add_argument(CONFIG_FLAG, default="", metavar="FILE.toml",
                        help="read settings from this TOML file (one table per section); flags given on the "
                             "command line override it")
    parser.add_argument(PRINT_FLAG, action="store_true",
                        help="print the complete effective config as TOML (loadable with --config) and exit")
    help_text, skip = help_text or {}, skip or {}
    for s in sections(cls):
        dotted = ".".join(s.path)
        group = parser.add_argument_group(s.title) if s.title else parser
        add_config_args(group, s.cls, prefix=s.prefix, help_text=dict(help_text.get(dotted, {})),
                        skip=skip.get(dotted, ()), suppress=True)


def given_flags(cls: type, args: argparse.Namespace) -> dict[str, Any]:
    """{dotted key: value} of the config flags given on the command line (see add_config_flags)."""
    out = {}
    for s in sections(cls):
        for f in dataclasses.fields(s.cls):
            dest = _dest(s.prefix, f.name)
            if hasattr(args, dest):
                out[".".join((*s.path, f.name))] = getattr(args, dest)
    return out


def read_config_file(cls: type, path: str) -> dict[str, Any]:
    """{dotted key: value} of a TOML config file for command config `cls`; ConfigError on an
    unreadable file or an unknown key (naming the closest valid one)."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10: the same parser from PyPI (a dependency there)
        import tomli as tomllib

    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError as e:
        raise ConfigError(f"{CONFIG_FLAG} {path}: file not found") from e
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise ConfigError(f"{CONFIG_FLAG} {path}: not a readable TOML file: {e}") from e
    return flatten(cls, data, where=f"{CONFIG_FLAG} {path}")


def flatten(cls: type, values: Mapping[str, Any], where: str = "") -> dict[str, Any]:
    """{dotted key: value} of nested tables shaped like command config `cls` (a TOML file, a
    manifest's config section). With `where` (a file), an unknown key is a ConfigError naming the
    closest valid key; without, unknown keys are ignored (an older manifest may hold retired ones)."""
    valid = {".".join((*s.path, f.name)) for s in sections(cls) for f in dataclasses.fields(s.cls)}
    tables = {".".join(s.path[:i]) for s in sections(cls) for i in range(1, len(s.path) + 1)}
    out: dict[str, Any] = {}

    def walk(d: Mapping[str, Any], path: tuple[str, ...]) -> None:
        for key, value in d.items():
            dotted = ".".join((*path, key))
            if dotted in valid:
                out[dotted] = value
            elif dotted in tables and isinstance(value, Mapping):
                walk(value, (*path, key))
            elif dotted in tables and where:
                raise ConfigError(f"{where}: {dotted!r} is a table ([{dotted}]), got {value!r}")
            elif where:
                raise ConfigError(f"{where}: unknown key {dotted!r}" + _suggestion(dotted, valid | tables))
    walk(values, ())
    return out


def _suggestion(key: str, valid: set[str]) -> str:
    """'; did you mean X?' with the closest valid key (a same-named field in another table first)."""
    tail = key.rsplit(".", 1)[-1]
    same_name = sorted(v for v in valid if v.rsplit(".", 1)[-1] == tail)
    match = same_name or difflib.get_close_matches(key, sorted(valid), n=1, cutoff=0.0)
    return f"; did you mean {match[0]!r}?" if match else ""


def _coerce(tp: Any, value: Any, where: str) -> Any:
    """A TOML (or flag) value as field type `tp`; TypeError naming `where` when it cannot be."""
    origin = get_origin(tp)
    if tp is bool:
        if not isinstance(value, bool):
            raise TypeError(f"{where}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TypeError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise TypeError(f"{where}: expected a string, got {value!r}")
        return value
    if origin is Literal:
        if value not in get_args(tp):
            raise ValueError(f"{where}: expected one of {list(get_args(tp))}, got {value!r}")
        return value
    if origin is tuple:
        inner = get_args(tp)[0]
        if get_origin(inner) is tuple:  # KEY=VALUE pairs: a TOML table, ["k=v", ...] or [[k, v], ...]
            if isinstance(value, Mapping):
                return tuple((str(k), _coerce(str, v, f"{where}.{k}")) for k, v in value.items())
            if isinstance(value, (list, tuple)):
                return tuple(_pair(v) if isinstance(v, str) else tuple(_coerce(str, x, where) for x in v)
                             for v in value)
            raise TypeError(f"{where}: expected a table of KEY = VALUE, got {value!r}")
        if not isinstance(value, (list, tuple)):
            raise TypeError(f"{where}: expected a list, got {value!r}")
        return tuple(_coerce(inner, v, where) for v in value)
    return value


def build_config(cls: type[T], args: argparse.Namespace | None = None,
                 base: Mapping[str, Any] | None = None, file_values: Mapping[str, Any] | None = None) -> T:
    """Command config `cls` from, in increasing priority: field defaults, `base` ({dotted key: value},
    e.g. a trained version's data settings), the --config file (or `file_values`), and the flags
    given in `args`. Any invalid value raises ConfigError naming its flag."""
    values: dict[str, Any] = dict(base or {})
    if file_values is None and args is not None and getattr(args, "config", ""):
        file_values = read_config_file(cls, args.config)
    values.update(file_values or {})
    if args is not None:
        values.update(given_flags(cls, args))
    return _construct(cls, (), "", values)


def _construct(cls: type, path: tuple[str, ...], prefix: str, values: Mapping[str, Any]) -> Any:
    hints = typing.get_type_hints(cls)
    fields = dataclasses.fields(cls)
    if fields and all(_is_section(hints[f.name]) for f in fields):
        return cls(**{f.name: _construct(hints[f.name], (*path, f.name), prefix + f.metadata.get("prefix", ""),
                                         values) for f in fields})
    s = _Section(path, cls, prefix, "")
    kwargs = {}
    with _section_errors(s):
        for f in fields:
            key = ".".join((*path, f.name))
            if key in values:
                kwargs[f.name] = _coerce(hints[f.name], values[key], _flag(prefix, f.name))
        return cls(**kwargs)


@contextlib.contextmanager
def _section_errors(s: _Section) -> Iterator[None]:
    try:
        yield
    except ConfigError:
        raise
    except RecsysError as e:  # e.g. a DataError of a data section: already says what to do
        raise ConfigError(str(e)) from e
    except (ValueError, TypeError) as e:
        raise ConfigError(_prefixed(str(e), s)) from e


def config_to_toml(config: Any) -> str:
    """The complete config as TOML: one table per section; `read_config_file` loads it back."""
    import tomli_w

    def plain(v: Any) -> Any:
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        if isinstance(v, (tuple, list)):
            return [plain(x) for x in v]
        return v
    d = plain(dataclasses.asdict(config))
    for s in sections(type(config)):  # KEY=VALUE pair fields print as tables: column_map = {user_id = "cust"}
        hints = typing.get_type_hints(s.cls)
        for f in dataclasses.fields(s.cls):
            tp = hints[f.name]
            if get_origin(tp) is tuple and get_origin(get_args(tp)[0]) is tuple:
                table = d
                for name in s.path:
                    table = table[name]
                table[f.name] = {k: v for k, v in table[f.name]}
    return tomli_w.dumps(d)



def flag_of(cls: type, dotted: str) -> str:
    """The command-line flag of config key `dotted` ("data.synthetic.seed" → "--synthetic-seed")."""
    for s in sections(cls):
        for f in dataclasses.fields(s.cls):
            if ".".join((*s.path, f.name)) == dotted:
                return _flag(s.prefix, f.name)
    raise KeyError(dotted)


def leaf_values(config: Any) -> dict[str, Any]:
    """{dotted key: value} of every field of a built command config."""
    out = {}
    for s in sections(type(config)):
        obj = config
        for name in s.path:
            obj = getattr(obj, name)
        for f in dataclasses.fields(s.cls):
            out[".".join((*s.path, f.name))] = getattr(obj, f.name)
    return out


def parse_config(cls: type[T], argv: list[str], prog: str = "") -> T:
    """Command config `cls` from command-line style `argv` (its flags and --config), for scripts and
    benches that take a command's flags without going through the `recsys` CLI."""
    parser = argparse.ArgumentParser(prog=prog or None)
    add_config_flags(parser, cls)
    return build_config(cls, parser.parse_args(argv))
