"""Options declared once: a dataclass field *is* the option (its flag, type, default, choices and help).

    model: str = option(help="zoo name or package.module:factory", group="model and data")
    loss: str = option("ce", help="ce: cross-entropy; mse: softmax vs one-hot", choices=LOSSES)

From such fields `add_options` builds the argparse arguments (flag ``--field-name``, type from the annotation,
choices, help with the default shown, booleans as switches, fields without a default required), `from_args`
builds the instance from the parsed namespace, `to_argv` gives the arguments that rebuild an instance (an
experiment's surface under a launcher) and `check_choices` is the one choice check of every ``__post_init__``.
Values stay typed everywhere but on the command line: a field whose text is not its value declares
``parse`` (text -> value) and ``format`` (value -> text), e.g. an `Axis` from ``-1:1:51``.
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from landscape_mpi.config.errors import UserError

_KEY = "landscape_mpi.option"
_TYPES = {"int": int, "float": float, "str": str, "bool": bool}


@dataclass(frozen=True)
class Option:
    """What a field declares about its command-line option (the field's metadata)."""

    help: str
    choices: tuple | None = None
    flag: str | None = None
    """The flag when it is not ``--`` + the field name with dashes (e.g. ``--metrics`` for ``eig``)."""
    parse: Callable[[str], Any] | None = None
    """Text -> value (may raise UserError); the option then takes a value whatever the field's type."""
    format: Callable[[Any], str] | None = None
    """Value -> text, the inverse of `parse` (default: str)."""
    group: str | None = None
    """Argument group in ``--help``."""
    default_from: Callable[[dict[str, Any]], Any] | None = None
    """When the option is not given: its value computed from the other values (the field's default is then
    the library's default, used by code that builds the dataclass directly)."""
    positional: bool = False
    metavar: str | None = None


def option(default: Any = dataclasses.MISSING, *, help: str, choices: Sequence | None = None,  # noqa: A002
           flag: str | None = None, parse: Callable[[str], Any] | None = None,
           format: Callable[[Any], str] | None = None, group: str | None = None,  # noqa: A002
           default_from: Callable[[dict[str, Any]], Any] | None = None, positional: bool = False,
           metavar: str | None = None) -> Any:
    """A dataclass field that is also a command-line option; no `default`: a required option."""
    meta = Option(help, tuple(choices) if choices is not None else None, flag, parse, format, group, default_from,
                  positional, metavar)
    return dataclasses.field(default=default, metadata={_KEY: meta})


def comma_tuple(spec: str) -> tuple[str, ...]:
    """``train,test`` -> ``("train", "test")`` (blanks dropped)."""
    return tuple(s.strip() for s in str(spec).split(",") if s.strip())


def comma_join(values: Sequence[str]) -> str:
    return ",".join(values)


# ------------------------------------------------------------------------------------------ reading
def options_of(cls: type) -> list[tuple[dataclasses.Field, Option]]:
    """The fields of dataclass `cls` declared with `option`, in order."""
    return [(f, f.metadata[_KEY]) for f in dataclasses.fields(cls) if _KEY in f.metadata]


def flag_of(f: dataclasses.Field, opt: Option) -> str:
    if opt.flag:
        return opt.flag
    if _base_type(f) is bool and f.default is True and opt.parse is None:
        return "--no-" + f.name.replace("_", "-")
    return "--" + f.name.replace("_", "-")


def _base_type(f: dataclasses.Field) -> type | None:
    """int, float, str or bool from an annotation such as ``int | None`` (a string under postponed evaluation)."""
    ann = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
    parts = [p.strip() for p in ann.split("|") if p.strip() != "None"]
    return _TYPES.get(parts[0]) if len(parts) == 1 else None


def _required(f: dataclasses.Field) -> bool:
    return f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING


def _default(f: dataclasses.Field) -> Any:
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default


def _text(opt: Option, value: Any) -> str:
    return opt.format(value) if opt.format else str(value)


def cli_default(f: dataclasses.Field, opt: Option) -> Any:
    """The argparse default: the field's default, as text for a `parse` field; None with `default_from`."""
    if _required(f) or opt.default_from is not None:
        return None
    value = _default(f)
    return _text(opt, value) if opt.parse is not None and value is not None else value


# ------------------------------------------------------------------------------------------ argparse
def add_options(parser: argparse.ArgumentParser, cls: type, *, skip: Sequence[str] = (),
                optional: Sequence[str] = ()) -> None:
    """Add one argument per option field of `cls` (but those in `skip`) to `parser`, in argument groups.

    `optional`: required fields that this command fills in itself when not given (their default is None).
    """
    groups: dict[str, Any] = parser.__dict__.setdefault("_option_groups", {})
    for f, opt in options_of(cls):
        if f.name in skip:
            continue
        target = parser
        if opt.group:
            if opt.group not in groups:
                groups[opt.group] = parser.add_argument_group(opt.group)
            target = groups[opt.group]
        help_text = opt.help.replace("%", "%%")
        default = cli_default(f, opt)
        if default is not None and default is not False and default != "":
            help_text += f" (default: {default})"
        kind = _base_type(f)
        if kind is bool and opt.parse is None:
            target.add_argument(flag_of(f, opt), dest=f.name, help=help_text,
                                action="store_false" if f.default is True else "store_true")
            continue
        kw: dict[str, Any] = {"help": help_text, "default": default}
        if opt.parse is None:
            if kind is None:
                raise TypeError(f"{cls.__name__}.{f.name}: annotation {f.type!r} needs parse= (and format=)")
            kw["type"] = kind
        if opt.choices is not None:
            kw["choices"] = opt.choices
        if opt.metavar or (opt.flag and opt.choices is None):
            kw["metavar"] = opt.metavar or opt.flag.lstrip("-").replace("-", "_").upper()
        if opt.positional:
            target.add_argument(f.name, **kw)
            continue
        if _required(f) and f.name not in optional:
            kw["required"] = True
        target.add_argument(flag_of(f, opt), dest=f.name, **kw)


def from_args(cls: type, namespace: argparse.Namespace | dict, **overrides: Any) -> Any:
    """An instance of `cls` from parsed arguments: `parse` applied to text, `overrides` (typed values) win,
    fields absent from `namespace` keep their dataclass defaults. Validation is the class's __post_init__."""
    given = vars(namespace) if isinstance(namespace, argparse.Namespace) else dict(namespace)
    values: dict[str, Any] = {}
    later = []
    for f, opt in options_of(cls):
        if f.name in overrides:
            values[f.name] = overrides[f.name]
            continue
        if f.name not in given:
            continue
        value = given[f.name]
        if value is None and opt.default_from is not None:
            later.append((f, opt))
            continue
        if opt.parse is not None and isinstance(value, str):
            value = opt.parse(value)
        values[f.name] = value
    unknown = set(overrides) - {f.name for f in dataclasses.fields(cls)}
    if unknown:
        raise UserError(f"{cls.__name__} has no option {', '.join(sorted(unknown))}")
    for f, opt in later:
        values[f.name] = opt.default_from(values)
    return cls(**values)


def to_argv(instance: Any) -> list[str]:
    """Command-line arguments that rebuild `instance` with `from_args` (values equal to the command line's
    default are left out). Values are written ``--flag=value``, so that ``--x=-1:1:5`` is not read as a flag."""
    values = {f.name: getattr(instance, f.name) for f in dataclasses.fields(instance)}
    argv: list[str] = []
    for f, opt in options_of(type(instance)):
        value = values[f.name]
        if _base_type(f) is bool and opt.parse is None:
            if value != f.default:
                argv.append(flag_of(f, opt))
            continue
        if opt.positional:
            argv.append(_text(opt, value))
            continue
        if not _required(f):
            default = opt.default_from(values) if opt.default_from is not None else _default(f)
            if value == default:
                continue
            if value is None:
                raise ValueError(f"{type(instance).__name__}.{f.name}=None has no command-line form")
        argv.append(f"{flag_of(f, opt)}={_text(opt, value)}")
    return argv


def check_choices(instance: Any) -> None:
    """UserError ``--flag value: choose one of a, b`` for the first field whose value is not among its
    declared choices (for configs built without the command line: the parser checks its own)."""
    for f, opt in options_of(type(instance)):
        value = getattr(instance, f.name)
        if opt.choices is not None and value not in opt.choices:
            raise UserError(f"{flag_of(f, opt)} {value}: choose one of {', '.join(map(str, opt.choices))}")
