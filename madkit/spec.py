"""Typed specs: a strict cattrs converter, polymorphic ``kind`` slots and error collection.

- Strict primitives: no 1.7 -> 1, no "false" -> True, no 3 -> "3". An int is accepted where a
  float belongs (TOML writes ``lr = 1`` naturally).
- Arrays must be arrays: cattrs would iterate a string into a list of characters.
- Unknown keys are errors; every error is collected, none stops the others from being reported,
  including attrs validator failures (attrs itself stops at the first and cattrs drops the key).
- A slot (``slot("partitioner")``) is a table with ``kind = "..."``, resolved through the registry
  into that kind's own config class.
"""

from __future__ import annotations

import collections.abc
import difflib
from typing import Any, Iterable, get_args, get_origin

import attrs
import cattrs
from cattrs.errors import (
    AttributeValidationNote,
    ClassValidationError,
    ForbiddenExtraKeysError,
    IterableValidationError,
    IterableValidationNote,
)
from cattrs.gen import make_dict_structure_fn

from madkit.errors import UserError
from madkit.registry import Registry, UnknownKindError

_SLOT_TYPES: dict[str, type] = {}


def slot(interface: str) -> type:
    """The annotation for a field holding a component config of ``interface``, chosen by ``kind``."""
    if interface not in _SLOT_TYPES:
        _SLOT_TYPES[interface] = type(f"{interface.title()}Slot", (), {"__madkit_interface__": interface})
    return _SLOT_TYPES[interface]


def _slot_interface(t: Any) -> str | None:
    return getattr(t, "__madkit_interface__", None) if isinstance(t, type) else None


class StructureProblem(Exception):
    """One located problem: a dotted TOML path and a message."""

    def __init__(self, path: str, message: str):
        super().__init__(f"{path}: {message}")
        self.path, self.message = path, message


class SpecError(UserError):
    """All problems of a spec, each rendered as ``FILE: toml.path: message``."""

    def __init__(self, lines: list[str]):
        super().__init__("\n".join(lines))
        self.lines = lines


class _KindProblem(Exception):
    """Raised inside a slot hook; rendered with ``.kind`` appended to the path."""

    def __init__(self, message: str, subpath: str = "kind"):
        super().__init__(message)
        self.subpath = subpath


def _type_name(t: Any) -> str:
    return getattr(t, "__name__", str(t))


def _strict(expected: type, accept: tuple[type, ...], convert=lambda v: v):
    def hook(value: Any, _t: Any) -> Any:
        # bool is an int subclass in Python; TOML true must never become 1
        if isinstance(value, bool) and bool not in accept or not isinstance(value, accept):
            raise TypeError(f"expected {_type_name(expected)}, got {type(value).__name__} {value!r}")
        return convert(value)

    return hook


def make_converter(registry: Registry) -> cattrs.Converter:
    conv = cattrs.Converter(forbid_extra_keys=True, detailed_validation=True)
    conv.register_structure_hook(int, _strict(int, (int,)))
    conv.register_structure_hook(float, _strict(float, (int, float), float))
    conv.register_structure_hook(bool, _strict(bool, (bool,)))
    conv.register_structure_hook(str, _strict(str, (str,)))
    conv.register_structure_hook_func(_is_sequence, lambda value, t: _structure_sequence(conv, value, t))
    conv.register_structure_hook_factory(attrs.has, lambda cls: _validating_attrs_hook(conv, cls))

    def structure_slot(value: Any, t: type) -> Any:
        interface = t.__madkit_interface__
        if isinstance(value, str):  # a bare kind: that kind with its defaults (log.sinks = ["tensorboard"])
            value = {"kind": value}
        if not isinstance(value, dict):
            raise _KindProblem(f"expected a table with kind = \"...\", got {type(value).__name__}", "")
        if "kind" not in value:
            raise _KindProblem(
                f"missing; choose one of the installed {interface} kinds: {', '.join(registry.kinds(interface))}"
            )
        kind = value["kind"]
        if not isinstance(kind, str):
            raise _KindProblem(f"expected a string, got {type(kind).__name__}")
        try:
            reg = registry.get(interface, kind)
        except UnknownKindError as exc:
            raise _KindProblem(str(exc)) from None
        rest = {k: v for k, v in value.items() if k != "kind"}
        return conv.structure(rest, reg.config_cls)

    def unstructure_slot(value: Any) -> dict[str, Any]:
        interface = _interface_of_config(registry, value)
        return {"kind": registry.kind_of(interface, value), **conv.unstructure(value)}

    conv.register_structure_hook_func(lambda t: _slot_interface(t) is not None, structure_slot)
    conv.register_unstructure_hook_func(lambda t: _slot_interface(t) is not None, unstructure_slot)
    # Unstructure configs found in slots by their runtime class (the declared type is the marker).
    conv.register_unstructure_hook_func(
        lambda t: t is Any or t is object, lambda v: conv.unstructure(v, unstructure_as=type(v))
    )
    return conv


_SEQUENCE_ORIGINS = (list, tuple, set, frozenset, collections.abc.Sequence, collections.abc.MutableSequence)


def _is_sequence(t: Any) -> bool:
    return (get_origin(t) or t) in _SEQUENCE_ORIGINS


def _structure_sequence(conv: cattrs.Converter, value: Any, t: Any) -> Any:
    """A TOML array into ``list[X]``, ``tuple[X, Y]`` or ``tuple[X, ...]``, refusing anything else."""
    if not isinstance(value, (list, tuple)):
        raise TypeError(f"expected an array, got {type(value).__name__} {value!r}")
    origin, args = get_origin(t) or t, get_args(t)
    if origin is tuple and args and args[-1] is not Ellipsis:
        if len(value) != len(args):
            raise TypeError(f"expected an array of {len(args)} items, got {len(value)}: {value!r}")
        item_types = list(args)
    else:
        item_types = [args[0] if args else Any] * len(value)
    items, errors = [], []
    for index, (item, item_type) in enumerate(zip(value, item_types, strict=True)):
        try:
            items.append(conv.structure(item, item_type))
        except Exception as exc:
            exc.add_note(IterableValidationNote(f"Structuring {t} @ index {index}", index, item_type))
            errors.append(exc)
    if errors:
        raise IterableValidationError(f"While structuring {t}", errors, t)
    return origin(items) if origin in (list, tuple, set, frozenset) else items


def _validating_attrs_hook(conv: cattrs.Converter, cls: type):
    """Structure an attrs class, then run every field validator and report all failures located.

    attrs runs validators inside ``__init__`` and stops at the first; cattrs then reports the bare
    message without the key. So build with validators off and run them here, one note per field.
    """
    build = make_dict_structure_fn(cls, conv)

    def hook(value: Any, _t: Any) -> Any:
        if not isinstance(value, dict):
            raise TypeError(f"expected a table, got {type(value).__name__} {value!r}")
        was_disabled = attrs.validators.get_disabled()
        attrs.validators.set_disabled(True)
        try:
            instance = build(value, cls)
        finally:
            attrs.validators.set_disabled(was_disabled)
        errors = []
        for field in attrs.fields(cls):
            if field.validator is None:
                continue
            try:
                field.validator(instance, field, getattr(instance, field.name))
            except (TypeError, ValueError) as exc:
                # attrs' own validators put (message, attribute, ...) in args; keep the message only
                message = exc.args[0] if exc.args and isinstance(exc.args[0], str) else str(exc)
                error = ValueError(message)
                error.add_note(AttributeValidationNote(f"Validating {field.name}", field.name, field.type))
                errors.append(error)
        if errors:
            raise ClassValidationError(f"While validating {cls.__name__}", errors, cls)
        return instance

    return hook


def _interface_of_config(registry: Registry, config: Any) -> str:
    for reg in registry.registrations():
        if type(config) is reg.config_cls:
            return reg.interface
    raise LookupError(f"{type(config).__name__} is not a registered config class")


# --------------------------------------------------------------------------- error collection
def _fields_hint(cls: Any, extra: str) -> str:
    if not attrs.has(cls):
        return ""
    names = [f.name for f in attrs.fields(cls)]
    close = difflib.get_close_matches(extra, names, n=1, cutoff=0.6)
    if close:
        return f"; did you mean {close[0]!r}?"
    return f"; allowed keys: {', '.join(names)}"


def collect_problems(exc: BaseException, path: str, cls: Any = None) -> list[StructureProblem]:
    """Flatten a cattrs exception tree into located problems."""
    out: list[StructureProblem] = []
    if isinstance(exc, ForbiddenExtraKeysError):
        for extra in sorted(exc.extra_fields):
            out.append(
                StructureProblem(_join(path, extra), f"unknown key{_fields_hint(exc.cl, extra)}")
            )
    elif isinstance(exc, (ClassValidationError, IterableValidationError)):
        for sub in exc.exceptions:
            sub_path, sub_cls = path, None
            for note in getattr(sub, "__notes__", []):
                # both note classes are str subclasses: test the class, never hasattr (str.index exists)
                if isinstance(note, AttributeValidationNote):
                    sub_path, sub_cls = _join(path, note.name), note.type
                elif isinstance(note, IterableValidationNote):
                    sub_path, sub_cls = f"{path}[{note.index}]", note.type
            out.extend(collect_problems(sub, sub_path, sub_cls))
    elif isinstance(exc, _KindProblem):
        out.append(StructureProblem(_join(path, exc.subpath), str(exc)))
    elif isinstance(exc, KeyError):
        # cattrs already put the missing field's name on the path through its note
        if (interface := _slot_interface(cls)) is not None:
            message = f'required table is missing; add it with kind = "..." (`madkit plugins` lists {interface} kinds)'
        else:
            message = "required key is missing"
        out.append(StructureProblem(path, message))
    else:
        out.append(StructureProblem(path or "(top level)", str(exc)))
    return out


def _join(path: str, name: str) -> str:
    if not name:
        return path
    return f"{path}.{name}" if path else name


def structure(conv: cattrs.Converter, data: dict[str, Any], cls: type, prefix: str = "") -> Any:
    """Structure ``data`` into ``cls``; on failure raise ``Problems`` listing every located problem."""
    try:
        return conv.structure(data, cls)
    except (ClassValidationError, IterableValidationError, ForbiddenExtraKeysError, _KindProblem) as exc:
        raise Problems(collect_problems(exc, prefix, cls)) from None
    except (TypeError, ValueError) as exc:
        raise Problems([StructureProblem(prefix or "(top level)", str(exc))]) from None


class Problems(Exception):
    def __init__(self, problems: list[StructureProblem]):
        super().__init__(f"{len(problems)} problem(s)")
        self.problems = problems


def iter_configs(value: Any, path: str = "") -> Iterable[tuple[str, Any]]:
    """Every attrs config in a structured spec tree, with its dotted path (parents first)."""
    if attrs.has(type(value)):
        yield path, value
        for field in attrs.fields(type(value)):
            yield from iter_configs(getattr(value, field.name), _join(path, field.name))
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            if attrs.has(type(item)):
                yield from iter_configs(item, f"{path}[{i}]")

