"""Options declared once: a dataclass field *is* the option (its flag, type, default, choices and help).

    Loss = Literal["ce", "mse"]
    model: str = option(help="zoo name or package.module:factory", group="model and data")
    loss: Loss = option("ce", help="ce: cross-entropy; mse: softmax vs one-hot")

The annotation is the type: ``int``, ``float``, ``str``, ``bool`` (a switch), a ``Literal`` of strings (the
choices: the parser offers them and `check_choices` checks them, both read from the annotation), any of these
``| None``, and ``tuple[X, ...]`` for several values (a positional taking one or more, a flag given again for
each). From such fields `add_options` builds the argparse arguments (flag ``--field-name``, help with the
default shown, fields without a default required), `from_args` builds the instance from the parsed namespace,
`to_argv` gives the arguments that rebuild an instance (an experiment's surface under a launcher) and
`check_choices` is the one choice check of every ``__post_init__``. Values stay typed everywhere but on the
command line: a field whose text is not its value declares ``parse`` (text -> value) and ``format``
(value -> text), e.g. an `Axis` from ``-1:1:51``.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import types
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from landscape_mpi.config.errors import UserError

_KEY = "landscape_mpi.option"
_TYPES = (int, float, str, bool)


@dataclass(frozen=True)
class Option:
    """What a field declares about its command-line option (the field's metadata), completed from its
    annotation by `options_of` (`kind`, `choices`, `many`)."""

    help: str
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
    kind: type | None = None
    """From the annotation: int, float, str or bool (of each value when `many`); None: only `parse` reads it."""
    choices: tuple | None = None
    """From the annotation: the values of its ``Literal``."""
    many: bool = False
    """From the annotation ``tuple[X, ...]`` (without `parse`): several values."""


def option(default: Any = dataclasses.MISSING, *, help: str, flag: str | None = None,  # noqa: A002
           parse: Callable[[str], Any] | None = None, format: Callable[[Any], str] | None = None,  # noqa: A002
           group: str | None = None, default_from: Callable[[dict[str, Any]], Any] | None = None,
           positional: bool = False, metavar: str | None = None, **unknown: Any) -> Any:
    """A dataclass field that is also a command-line option; no `default`: a required option."""
    if "choices" in unknown:
        raise TypeError("option(choices=...): choices are typed; annotate the field with a Literal of them "
                        "(landscape_mpi/config/options.py)")
    if unknown:
        raise TypeError(f"option() got unexpected arguments {sorted(unknown)}")
    meta = Option(help, flag, parse, format, group, default_from, positional, metavar)
    return dataclasses.field(default=default, metadata={_KEY: meta})


def literal_values(hint: Any) -> tuple:
    """The values of a ``Literal`` type (nested Literals flattened), e.g. the tuple of an option's choices."""
    if typing.get_origin(hint) is not Literal:
        raise TypeError(f"{hint!r} is not a Literal")
    return typing.get_args(hint)


def comma_tuple(spec: str) -> tuple[str, ...]:
    """``train,test`` -> ``("train", "test")`` (blanks dropped)."""
    return tuple(s.strip() for s in str(spec).split(",") if s.strip())


def comma_join(values: Sequence[str]) -> str:
    return ",".join(values)


# ------------------------------------------------------------------------------------------ reading
def _from_annotation(hint: Any, parsed: bool) -> dict[str, Any]:
    """`kind`, `choices` and `many` of an annotation such as ``int | None``, ``Loss`` or ``tuple[Kind, ...]``."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        rest = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(rest) != 1:
            return {"kind": None, "choices": None, "many": False}
        hint = rest[0]
    many = False
    args = typing.get_args(hint)
    if typing.get_origin(hint) is tuple and len(args) == 2 and args[1] is Ellipsis:
        many, hint = True, args[0]
    choices = None
    if typing.get_origin(hint) is Literal:
        choices = literal_values(hint)
        kinds = {type(c) for c in choices}
        hint = kinds.pop() if len(kinds) == 1 else None
    return {"kind": hint if hint in _TYPES else None, "choices": choices, "many": many and not parsed}


@functools.lru_cache(maxsize=None)
def options_of(cls: type) -> tuple[tuple[dataclasses.Field, Option], ...]:
    """The fields of dataclass `cls` declared with `option`, in order, each with its `Option` completed from
    the field's annotation."""
    hints = typing.get_type_hints(cls)
    return tuple((f, dataclasses.replace(f.metadata[_KEY], **_from_annotation(hints[f.name],
                                                                             f.metadata[_KEY].parse is not None)))
                 for f in dataclasses.fields(cls) if _KEY in f.metadata)


def _switch(opt: Option) -> bool:
    """A boolean option without `parse`: a flag that takes no value."""
    return opt.kind is bool and opt.parse is None and not opt.many


def flag_of(f: dataclasses.Field, opt: Option) -> str:
    if opt.flag:
        return opt.flag
    if _switch(opt) and f.default is True:
        return "--no-" + f.name.replace("_", "-")
    return "--" + f.name.replace("_", "-")


def _required(f: dataclasses.Field) -> bool:
    return f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING


def _default(f: dataclasses.Field) -> Any:
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default


def _text(opt: Option, value: Any) -> str:
    return opt.format(value) if opt.format else str(value)


def cli_default(f: dataclasses.Field, opt: Option) -> Any:
    """The argparse default: the field's default, as text for a `parse` field; None with `default_from` and
    for several values given by a repeated flag (`from_args` keeps the field's default then)."""
    if _required(f) or opt.default_from is not None or (opt.many and not opt.positional):
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
        if _switch(opt):
            target.add_argument(flag_of(f, opt), dest=f.name, help=help_text,
                                action="store_false" if f.default is True else "store_true")
            continue
        kw: dict[str, Any] = {"help": help_text, "default": default}
        if opt.parse is None:
            if opt.kind is None:
                raise TypeError(f"{cls.__name__}.{f.name}: annotation {f.type!r} needs parse= (and format=)")
            kw["type"] = opt.kind
            if opt.choices is not None:  # a parsed text is checked as a value, by check_choices
                kw["choices"] = opt.choices
        if opt.metavar or (opt.flag and (opt.choices is None or opt.parse is not None)):
            kw["metavar"] = opt.metavar or opt.flag.lstrip("-").replace("-", "_").upper()
        if opt.positional:
            if opt.many:
                kw["nargs"] = "+" if _required(f) else "*"
            target.add_argument(f.name, **kw)
            continue
        if opt.many:
            kw["action"] = "append"
        if _required(f) and f.name not in optional and opt.default_from is None:
            kw["required"] = True  # with default_from: computed when not given (the class says if it must be)
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
        if opt.many and isinstance(value, list):
            value = tuple(value)
        elif opt.many and value is None:
            continue  # a repeatable flag not given: the field's default
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
        if _switch(opt):
            if value != f.default:
                argv.append(flag_of(f, opt))
            continue
        if opt.positional:
            argv += [_text(opt, v) for v in value] if opt.many else [_text(opt, value)]
            continue
        if not _required(f):
            default = opt.default_from(values) if opt.default_from is not None else _default(f)
            if value == default:
                continue
            if value is None:
                raise ValueError(f"{type(instance).__name__}.{f.name}=None has no command-line form")
        if opt.many:
            argv += [f"{flag_of(f, opt)}={_text(opt, v)}" for v in value]
            continue
        argv.append(f"{flag_of(f, opt)}={_text(opt, value)}")
    return argv


def check_choices(instance: Any) -> None:
    """UserError ``--flag value: choose one of a, b`` for the first field with a value that is not among the
    choices its annotation declares (each value of a tuple; None where the annotation allows it). The
    parser offers the same choices; this check serves configs built without the command line."""
    for f, opt in options_of(type(instance)):
        value = getattr(instance, f.name)
        if opt.choices is None or value is None:
            continue
        for v in value if isinstance(value, tuple) else (value,):
            if v not in opt.choices:
                raise UserError(f"{flag_of(f, opt)} {v}: choose one of {', '.join(map(str, opt.choices))}")
