"""Options declared once: each dataclass field carries its help, label, choices and bounds.

A field is declared with :func:`option`; everything else is derived from the dataclass:

* :func:`add_arguments` / :func:`from_namespace`: the command-line flags (``--face-index`` and
  ``--face_index`` for ``face_index``; ``--no-cache`` style flags for booleans that default to True);
* :func:`parameters`: the flat parameters an API endpoint and a UI form take. A tuple with named
  ``parts`` (the pads) becomes one number per part (``pad_top``...); an optional tuple (a fixed box)
  becomes one text of numbers (``"top bottom left right"``, empty = none);
* :func:`from_parameters`: the dataclass built back from such values, with readable errors;
* :func:`check_bounds`: the bounds and choices, enforced by the dataclasses' ``__post_init__`` so
  every way in (Python, CLI, API) is checked the same way.

Nothing here imports gradio: app.py turns :class:`Parameter` objects into components.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import re
import typing
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from common.errors import InputError

Kind = Literal["bool", "int", "float", "choice", "numbers"]
SPEC_KEY = "lipsync.option"


@dataclass(frozen=True)
class Spec:
    """What the CLI, the API and the UI need to know about one option field."""

    help: str  # one or two sentences, for --help, the API docs and the UI's hint
    label: str  # the UI's label
    choices: tuple[str, ...] = ()  # for str fields (Literal fields give their own)
    open_choices: bool = False  # the CLI also takes other values (e.g. a checkpoint path)
    minimum: float | None = None  # inclusive, for numbers and every element of a tuple
    maximum: float | None = None
    parts: tuple[str, ...] = ()  # names of a fixed tuple's elements (API/UI: one number each)
    stem: str = ""  # API/UI name prefix of the parts (pads -> pad_top...); default: the field's name
    flags: tuple[str, ...] = ()  # extra CLI spellings, kept for users' scripts
    negate: str = ""  # CLI flag of a bool that defaults to True (default: --no-<name>)
    negate_help: str = ""  # its help (default: "turn off: " + help)
    group: str = ""  # UI: options of one group share a row
    advanced: bool = False  # UI: inside a closed "more" accordion


def option(default: Any, help: str, label: str, **spec: Any) -> Any:  # noqa: A002 - argparse's word
    """A dataclass field with its :class:`Spec`."""
    return dataclasses.field(default=default, metadata={SPEC_KEY: Spec(help=help, label=label, **spec)})


@dataclass(frozen=True)
class Parameter:
    """One flat API/UI parameter. A fixed tuple gives one per part (``part`` = its index)."""

    name: str  # the API parameter name
    field: str  # the dataclass field it fills
    kind: Kind
    default: Any  # as the API takes it ("" for no box)
    spec: Spec
    element: type = float  # int or float: numbers and tuple elements
    part: int | None = None
    count: int = 0  # numbers: how many

    @property
    def label(self) -> str:
        return f"{self.spec.label} {self.spec.parts[self.part]}" if self.part is not None else self.spec.label

    @property
    def choices(self) -> tuple[str, ...]:
        return self.spec.choices

    @property
    def placeholder(self) -> str:
        return " ".join(self.spec.parts) if self.kind == "numbers" else ""


@dataclass(frozen=True)
class _FieldType:
    kind: Kind | Literal["tuple"]
    element: type = float
    count: int = 0
    optional: bool = False
    choices: tuple[str, ...] = ()


def _field_type(hint: Any) -> _FieldType:
    """Read a field's annotation: bool, int, float, str/Literal, tuple[...] and tuple[...] | None."""
    args = typing.get_args(hint)
    if type(None) in args:
        inner = [a for a in args if a is not type(None)]
        if len(inner) != 1:
            raise TypeError(f"unsupported option type {hint}")
        found = _field_type(inner[0])
        if found.kind != "tuple":
            raise TypeError(f"only tuples may be optional options, not {hint}")
        return _FieldType("numbers", found.element, found.count, optional=True)
    origin = typing.get_origin(hint)
    if origin is Literal:
        return _FieldType("choice", choices=tuple(str(a) for a in args))
    if origin is tuple:
        if not args or any(a is not args[0] for a in args):
            raise TypeError(f"tuple options need one element type, not {hint}")
        return _FieldType("tuple", element=args[0], count=len(args))
    if hint is bool:
        return _FieldType("bool")
    if hint in (int, float):
        return _FieldType("int" if hint is int else "float", element=hint)
    if hint is str:
        return _FieldType("choice")
    raise TypeError(f"unsupported option type {hint}")


def _declared(cls: type) -> list[tuple[dataclasses.Field, Spec, _FieldType]]:
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        spec = f.metadata.get(SPEC_KEY)
        if spec is None:
            raise TypeError(f"{cls.__name__}.{f.name} is not declared with option()")
        found = _field_type(hints[f.name])
        if found.kind == "choice" and not found.choices:
            found = dataclasses.replace(found, choices=spec.choices)
        if found.kind == "choice" and not found.choices:
            raise TypeError(f"{cls.__name__}.{f.name}: a str option needs choices")
        out.append((f, spec, found))
    return out


def _spec_with_choices(spec: Spec, found: _FieldType) -> Spec:
    return dataclasses.replace(spec, choices=found.choices) if found.choices != spec.choices else spec


# -- validation ----------------------------------------------------------------------------------------
def check_bounds(options: Any) -> None:
    """Raise InputError for a value outside its declared choices or bounds (call from ``__post_init__``)."""
    for f, spec, found in _declared(type(options)):
        value = getattr(options, f.name)
        if found.kind == "choice" and not spec.open_choices and value not in found.choices:
            raise InputError(f"{f.name} must be one of {', '.join(found.choices)}, not {value!r}")
        if found.kind in ("int", "float"):
            _check_number(f.name, value, spec)
        if found.kind in ("tuple", "numbers") and value is not None:
            if len(value) != found.count:
                what = " ".join(spec.parts) or f"{found.count} numbers"
                raise InputError(f"{f.name} needs {found.count} numbers ({what}), got {len(value)}")
            for v in value:
                _check_number(f.name, v, spec)


def _check_number(name: str, value: float, spec: Spec) -> None:
    if not math.isfinite(value):
        raise InputError(f"{name} must be a finite number, not {value}")
    if spec.minimum is not None and value < spec.minimum:
        raise InputError(f"{name} must be at least {spec.minimum:g}, not {value:g}")
    if spec.maximum is not None and value > spec.maximum:
        raise InputError(f"{name} must be at most {spec.maximum:g}, not {value:g}")


# -- the command line ----------------------------------------------------------------------------------
def cli_flags(name: str, spec: Spec) -> list[str]:
    hyphens = "--" + name.replace("_", "-")
    flags = [hyphens] + ([f"--{name}"] if "_" in name else [])
    return flags + [f for f in spec.flags if f not in flags]


def add_arguments(parser: argparse.ArgumentParser | argparse._ArgumentGroup, cls: type) -> None:
    """One flag (with its spellings) per field of ``cls``; ``dest`` is the field's name."""
    for f, spec, found in _declared(cls):
        default = f.default
        help_text = spec.help
        if found.kind == "bool":
            if default:
                flag = spec.negate or "--no-" + f.name.replace("_", "-")
                parser.add_argument(flag, dest=f.name, action="store_false",
                                    help=spec.negate_help or f"Turn off: {help_text}")
            else:
                parser.add_argument(*cli_flags(f.name, spec), dest=f.name, action="store_true", help=help_text)
            continue
        kwargs: dict[str, Any] = {"dest": f.name, "default": default,
                                  "help": f"{help_text} (default: {_show(default)})"}
        if found.kind == "choice":
            if not spec.open_choices:
                kwargs["choices"] = found.choices
        elif found.kind in ("int", "float"):
            kwargs["type"] = found.element
        else:
            kwargs.update(type=found.element, nargs=found.count,
                          metavar=tuple(p.upper() for p in spec.parts) or None)
        parser.add_argument(*cli_flags(f.name, spec), **kwargs)


def from_namespace(cls: type, namespace: argparse.Namespace) -> Any:
    """The options from parsed arguments (InputError from the dataclass's checks)."""
    values = {}
    for f, _, found in _declared(cls):
        value = getattr(namespace, f.name)
        values[f.name] = tuple(value) if found.kind in ("tuple", "numbers") and value is not None else value
    return cls(**values)


def _show(value: Any) -> str:
    if value is None:
        return "none"
    if isinstance(value, tuple):
        return " ".join(_show(v) for v in value)
    return f"{value:g}" if isinstance(value, float) else str(value)


# -- API / UI parameters -------------------------------------------------------------------------------
def parameters(cls: type, *, prefix: str = "", unprefixed: Iterable[str] = (),
               presets: Mapping[str, Any] | None = None) -> list[Parameter]:
    """The flat parameters for the fields of ``cls``, in field order.

    ``prefix`` is put before each name (``score_mode``) except for the fields in ``unprefixed``.
    ``presets`` gives some fields another default for this endpoint (checked like any value).
    """
    keep = set(unprefixed)
    presets = dict(presets or {})
    unknown = set(presets) - {f.name for f in dataclasses.fields(cls)}
    if unknown:
        raise TypeError(f"presets for unknown fields of {cls.__name__}: {', '.join(sorted(unknown))}")
    check_bounds(dataclasses.replace(cls(), **presets))
    out: list[Parameter] = []
    for f, spec, found in _declared(cls):
        spec = _spec_with_choices(spec, found)
        head = "" if f.name in keep else prefix
        default = presets.get(f.name, f.default)
        if found.kind == "tuple":
            if len(spec.parts) != found.count:
                raise TypeError(f"{cls.__name__}.{f.name}: a fixed tuple option needs {found.count} parts")
            stem = spec.stem or f.name
            for i, part in enumerate(spec.parts):
                out.append(Parameter(f"{head}{stem}_{part}", f.name, found.element.__name__, default[i], spec,
                                     element=found.element, part=i))
        elif found.kind == "numbers":
            text = "" if default is None else _show(default)
            out.append(Parameter(head + f.name, f.name, "numbers", text, spec, element=found.element,
                                 count=found.count))
        else:
            out.append(Parameter(head + f.name, f.name, found.kind, default, spec, element=found.element))
    return out


def parse_numbers(text: Any, count: int, what: str) -> tuple[float, ...] | None:
    """``"1 2 3 4"`` (spaces or commas), or a list of numbers, -> a tuple of ``count`` numbers; empty -> None."""
    if text is None or (isinstance(text, str) and not text.strip()):
        return None
    if isinstance(text, (list, tuple)):
        parts = list(text)
    else:  # a string, or whatever a remote caller sent in its place
        parts = [p for p in re.split(r"[\s,]+", str(text).strip("[]() ")) if p]
    try:
        numbers = tuple(float(p) for p in parts)
    except (TypeError, ValueError):
        numbers = ()
    if len(numbers) != count or not all(math.isfinite(n) for n in numbers):
        raise InputError(f"{what} needs {count} numbers separated by spaces, got {text!r}")
    return numbers


def _convert(param: Parameter, value: Any) -> Any:
    """One API value -> the field's type, or InputError naming the parameter."""
    if param.kind == "bool":
        if isinstance(value, bool) or value in (0, 1):
            return bool(value)
        raise InputError(f"{param.name} must be true or false, not {value!r}")
    if param.kind == "choice":
        # strict even where the CLI takes other values: a remote caller must not name a server file
        if value not in param.choices:
            raise InputError(f"{param.name} must be one of {', '.join(param.choices)}, not {value!r}")
        return value
    if param.kind == "numbers":
        what = f"{param.name} ({param.placeholder})" if param.placeholder else param.name
        numbers = parse_numbers(value, param.count, what)
        if numbers is None or param.element is float:
            return numbers
        return tuple(_whole(param.name, n) for n in numbers)
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise InputError(f"{param.name} must be a number, not {value!r}") from None
    return _whole(param.name, number) if param.element is int else number


def _whole(name: str, number: float) -> int:
    if not math.isfinite(number) or number != int(number):
        raise InputError(f"{name} must be a whole number, not {number:g}")
    return int(number)


def from_parameters(cls: type, values: Mapping[str, Any], params: list[Parameter]) -> Any:
    """Build ``cls`` from API values keyed by parameter name (missing ones take their defaults)."""
    fields: dict[str, Any] = {}
    parts: dict[str, list[Any]] = {}
    for param in params:
        value = _convert(param, values.get(param.name, param.default))
        if param.part is None:
            fields[param.field] = value
        else:
            parts.setdefault(param.field, []).append(value)
    fields.update({name: tuple(v) for name, v in parts.items()})
    return cls(**fields)


def describe(params: list[Parameter]) -> list[str]:
    """``name: help`` lines for a docstring's Args section (Gradio shows them in the API docs)."""
    lines = []
    for p in params:
        text = p.spec.help
        if p.part is not None:
            text = f"{p.spec.parts[p.part]} part of: {text}"
        if p.kind == "numbers":
            text += f' Give "{p.placeholder}", or "" for none.'
        lines.append(f"{p.name}: {text}")
    return lines
