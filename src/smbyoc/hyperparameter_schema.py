"""Typed hyperparameters: declare what a training job expects, get typed values or one clear error.

A declaration is a JSON file (or the same structure built in Python). Two forms are accepted::

    {"epochs": {"type": "int", "default": 10, "minimum": 1},
     "optimizer": {"type": "str", "choices": ["sgd", "adam"]},
     "lr": {"type": "float", "required": true},
     "layers": {"type": "list", "items": "int"},
     "verbose": "bool"}

    {"allow_unknown": true, "hyperparameters": {...the same declarations...}}

The first (flat) form rejects undeclared hyperparameters; the second can allow them
(``allow_unknown``, default false). The file is the second form when its top level has a
``"hyperparameters"`` object that is not itself a declaration (has no string ``"type"``).

Declaration keys: ``type`` (``int``/``integer``, ``float``/``number``, ``bool``/``boolean``,
``str``/``string``, ``list``/``array``, ``dict``/``object``; inferred from ``default`` when omitted;
a bare string is shorthand for ``{"type": ...}``), ``default``, ``required``, ``choices``,
``minimum``/``maximum`` (numbers only), ``items`` (element type of a list), ``nullable`` (accept JSON
``null``), ``description``. Unknown declaration keys are errors (they are usually typos).

Values may be given as they travel (``"10"``, ``"\\"adam\\""`` from the SDK's framework estimators,
``"True"``/``"[1, 2]"``/``"{'a': 1}"`` from the generic ``Estimator``'s ``str()``) or already decoded
(:attr:`TrainingEnv.hyperparameters`); both give the same result. Passing the wire format
(:attr:`TrainingEnv.hyperparameters_raw`) keeps a string's exact text (``"0.10"`` stays ``"0.10"``);
reserved ``sagemaker_*`` keys in it are skipped. Conversions: booleans accept ``true/false``,
``True/False``, ``1/0``, ``yes/no``, ``on/off``, ``t/f``, ``y/n``; lists accept JSON, Python literals or
``a,b,c``; dicts accept JSON, Python literals or ``k=v,k2=v2``; integers accept integral floats
(``1e3``); floats must be finite. An undeclared, optional hyperparameter without default is left out.
"""

from __future__ import annotations

import ast
import copy
import difflib
import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from smbyoc.errors import ConfigError, HyperparameterError
from smbyoc.opt_ml.hyperparameters_file import is_reserved

TYPE_NAMES = {
    "int": "int", "integer": "int",
    "float": "float", "number": "float",
    "bool": "bool", "boolean": "bool",
    "str": "str", "string": "str",
    "list": "list", "array": "list",
    "dict": "dict", "object": "dict",
}
SCALAR_TYPES = ("int", "float", "bool", "str")
TRUE_STRINGS = frozenset({"true", "1", "yes", "y", "on", "t"})
FALSE_STRINGS = frozenset({"false", "0", "no", "n", "off", "f"})
_DECLARATION_KEYS = frozenset(
    {"type", "default", "required", "choices", "minimum", "maximum", "items", "nullable", "description"}
)


class _Missing:
    def __repr__(self) -> str:
        return "MISSING"


MISSING: Any = _Missing()


class _Invalid(ValueError):
    """One value does not fit its declaration; the message says why."""


@dataclass(frozen=True)
class HyperparameterSpec:
    """The declaration of one hyperparameter."""

    type: str
    default: Any = MISSING
    required: bool = False
    choices: tuple[Any, ...] | None = None
    minimum: float | None = None
    maximum: float | None = None
    items: str | None = None
    nullable: bool = False
    description: str = ""


@dataclass(frozen=True)
class Schema:
    """Declared hyperparameters; checked on construction (ConfigError naming the key)."""

    specs: Mapping[str, HyperparameterSpec]
    allow_unknown: bool = False
    source: str | None = None
    _checked: dict[str, HyperparameterSpec] = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        for name, spec in self.specs.items():
            self._checked[name] = _check_spec(name, spec, self.source)

    @classmethod
    def from_dict(cls, data: object, source: str | None = None) -> Schema:
        if not isinstance(data, dict):
            raise ConfigError("a hyperparameter schema must be a JSON object", source=source)
        allow_unknown = False
        declarations: object = data
        wrapped = data.get("hyperparameters")
        if isinstance(wrapped, dict) and not isinstance(wrapped.get("type"), str):
            extra = set(data) - {"hyperparameters", "allow_unknown", "description"}
            if extra:
                raise ConfigError(f"unknown top-level keys {sorted(extra)}", source=source)
            allow_unknown = data.get("allow_unknown", False)
            if not isinstance(allow_unknown, bool):
                raise ConfigError("must be true or false", source=source, key="allow_unknown")
            declarations = wrapped
        assert isinstance(declarations, dict)
        specs = {name: _spec_from_json(name, decl, source) for name, decl in declarations.items()}
        return cls(specs=specs, allow_unknown=allow_unknown, source=source)

    def coerce(self, hyperparameters: Mapping[str, Any]) -> dict[str, Any]:
        return coerce(self, hyperparameters)


def load_schema(path: Path | str) -> Schema:
    """Read a JSON hyperparameter declaration (see the module docstring)."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError("hyperparameter schema does not exist", source=str(path)) from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"cannot be read: {e}", source=str(path)) from e
    except ValueError as e:
        raise ConfigError(f"is not valid JSON: {e}", source=str(path)) from e
    return Schema.from_dict(data, source=str(path))


def coerce(schema: Schema, hyperparameters: Mapping[str, Any]) -> dict[str, Any]:
    """Typed values for every declared hyperparameter; HyperparameterError lists every bad key."""
    specs = schema._checked
    problems: list[tuple[str, str]] = []
    result: dict[str, Any] = {}
    for name, spec in specs.items():
        if name not in hyperparameters:
            if spec.required:
                problems.append((name, "required but not given"))
            elif spec.default is not MISSING:
                result[name] = copy.deepcopy(spec.default)
            continue
        value = hyperparameters[name]
        try:
            result[name] = _coerce_checked(spec, value)
        except _Invalid as e:
            problems.append((name, f"{e} (got {_show(value)})"))
    for name, value in hyperparameters.items():
        if name in specs or is_reserved(name):
            continue
        if schema.allow_unknown:
            result[name] = value
            continue
        why = "not declared in the hyperparameter schema"
        close = difflib.get_close_matches(name, list(specs), n=1)
        if close:
            why += f"; did you mean {close[0]!r}?"
        problems.append((name, why))
    if problems:
        raise HyperparameterError(problems)
    return result


# ----------------------------------------------------------------------------------- conversions


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _unquote(text: str) -> str:
    """The string inside a JSON string literal (SDK encoding), else the text itself."""
    stripped = text.strip()
    if len(stripped) >= 2 and stripped[0] == '"' and stripped[-1] == '"':
        try:
            decoded = json.loads(stripped)
        except ValueError:
            return text
        if isinstance(decoded, str):
            return decoded
    return text


def parse_bool(value: Any) -> bool:
    """A boolean from what SageMaker users send: ``true``, ``"True"``, ``"1"``, ``1``, ``"no"`` ..."""
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)) and value in (0, 1):
        return bool(value)
    if isinstance(value, str):
        lowered = _unquote(value).strip().lower()
        if lowered in TRUE_STRINGS:
            return True
        if lowered in FALSE_STRINGS:
            return False
    raise _Invalid("expected a boolean (true/false, 1/0, yes/no)")


def _to_int(value: Any) -> int:
    if isinstance(value, bool):
        raise _Invalid("expected an integer, got a boolean")
    if isinstance(value, int):
        return value
    number: Any = value
    if isinstance(value, str):
        text = _unquote(value).strip()
        try:
            return int(text)
        except ValueError:
            try:
                number = float(text)
            except ValueError:
                raise _Invalid("expected an integer") from None
    if isinstance(number, float) and math.isfinite(number) and number.is_integer():
        return int(number)
    raise _Invalid("expected an integer")


def _to_float(value: Any) -> float:
    if isinstance(value, bool):
        raise _Invalid("expected a number, got a boolean")
    try:
        if isinstance(value, (int, float)):
            number = float(value)
        elif isinstance(value, str):
            number = float(_unquote(value).strip())
        else:
            raise _Invalid("expected a number")
    except (ValueError, OverflowError):
        raise _Invalid("expected a number") from None
    if not math.isfinite(number):
        raise _Invalid("expected a finite number")
    return number


def _to_str(value: Any) -> str:
    if isinstance(value, str):
        return _unquote(value)
    if isinstance(value, (bool, int, float, list, dict)):
        return json.dumps(value)
    raise _Invalid("expected a string")


def _literal(text: str) -> Any:
    for parse in (json.loads, ast.literal_eval):
        try:
            return parse(text)
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            continue
    return MISSING


def _to_list(value: Any) -> list[Any]:
    if isinstance(value, (list, tuple)):
        return list(value)
    if isinstance(value, (bool, int, float)):
        return [value]
    if not isinstance(value, str):
        raise _Invalid("expected a list")
    text = _unquote(value).strip()
    parsed = _literal(text)
    if isinstance(parsed, (list, tuple)):
        return list(parsed)
    if isinstance(parsed, dict):
        raise _Invalid("expected a list, got an object")
    if not text:
        return []
    return [part.strip() for part in text.split(",")]


def _to_dict(value: Any) -> dict[str, Any]:
    if isinstance(value, dict):
        return value
    if not isinstance(value, str):
        raise _Invalid("expected an object")
    text = _unquote(value).strip()
    parsed = _literal(text)
    if isinstance(parsed, dict):
        return parsed
    if not text:
        return {}
    parts = [part.split("=", 1) for part in text.split(",")]
    if all(len(p) == 2 and p[0].strip() for p in parts):
        return {k.strip(): v.strip() for k, v in parts}
    raise _Invalid("expected an object (JSON, a Python dict or k=v,k2=v2)")


_CONVERTERS: dict[str, Callable[[Any], Any]] = {"int": _to_int, "float": _to_float, "bool": parse_bool, "str": _to_str,
               "list": _to_list, "dict": _to_dict}


def _coerce_checked(spec: HyperparameterSpec, value: Any) -> Any:
    if value is None or (isinstance(value, str) and value.strip() == "null" and spec.type != "str"):
        if spec.nullable:
            return None
        raise _Invalid("must not be null")
    result: Any = _CONVERTERS[spec.type](value)
    if spec.type == "list" and spec.items is not None:
        converter = _CONVERTERS[spec.items]
        converted = []
        for i, item in enumerate(result):
            try:
                converted.append(converter(item))
            except _Invalid as e:
                raise _Invalid(f"item {i}: {e}") from None
        result = converted
    if spec.minimum is not None and result < spec.minimum:
        raise _Invalid(f"must be at least {spec.minimum}")
    if spec.maximum is not None and result > spec.maximum:
        raise _Invalid(f"must be at most {spec.maximum}")
    if spec.choices is not None and result not in spec.choices:
        raise _Invalid("must be one of " + ", ".join(json.dumps(c) for c in spec.choices))
    return result


# ------------------------------------------------------------------------------ declaration checks


def _infer_type(default: Any) -> str | None:
    for python_type, name in ((bool, "bool"), (int, "int"), (float, "float"), (str, "str"),
                              (list, "list"), (dict, "dict")):
        if isinstance(default, python_type):
            return name
    return None


def _spec_from_json(name: str, declaration: object, source: str | None) -> HyperparameterSpec:
    if isinstance(declaration, str):
        declaration = {"type": declaration}
    if not isinstance(declaration, dict):
        raise ConfigError("a declaration must be an object or a type name", source=source, key=name)
    unknown = set(declaration) - _DECLARATION_KEYS
    if unknown:
        raise ConfigError(
            f"unknown declaration keys {sorted(unknown)}; allowed: {sorted(_DECLARATION_KEYS)}",
            source=source, key=name,
        )
    type_name = declaration.get("type")
    if type_name is None and "default" in declaration:
        type_name = _infer_type(declaration["default"])
    if not isinstance(type_name, str):
        raise ConfigError("\"type\" is missing (or give a default to infer it from)", source=source, key=name)
    choices = declaration.get("choices")
    if choices is not None and not isinstance(choices, list):
        raise ConfigError("choices must be a list", source=source, key=name)
    for flag in ("required", "nullable"):
        if not isinstance(declaration.get(flag, False), bool):
            raise ConfigError(f"{flag} must be true or false", source=source, key=name)
    description = declaration.get("description", "")
    return HyperparameterSpec(
        type=type_name,
        default=declaration.get("default", MISSING),
        required=declaration.get("required", False),
        choices=tuple(choices) if choices is not None else None,
        minimum=declaration.get("minimum"),
        maximum=declaration.get("maximum"),
        items=declaration.get("items"),
        nullable=declaration.get("nullable", False),
        description=description if isinstance(description, str) else "",
    )


def _check_spec(name: str, spec: HyperparameterSpec, source: str | None) -> HyperparameterSpec:
    """Normalise type names and convert choices/default; ConfigError for contradictions."""

    def fail(message: str) -> ConfigError:
        return ConfigError(message, source=source, key=name)

    type_name = TYPE_NAMES.get(str(spec.type).lower())
    if type_name is None:
        raise fail(f"type {spec.type!r} is not one of {', '.join(sorted(set(TYPE_NAMES.values())))}")
    items = None
    if spec.items is not None:
        items = TYPE_NAMES.get(str(spec.items).lower())
        if type_name != "list" or items not in SCALAR_TYPES:
            raise fail("items is only for lists and must name int, float, bool or str")
    for bound in ("minimum", "maximum"):
        value = getattr(spec, bound)
        if value is not None and (type_name not in ("int", "float") or isinstance(value, bool)
                                  or not isinstance(value, (int, float))):
            raise fail(f"{bound} must be a number and is only for int and float")
    if spec.minimum is not None and spec.maximum is not None and spec.minimum > spec.maximum:
        raise fail("minimum is larger than maximum")
    if spec.required and spec.default is not MISSING:
        raise fail("a required hyperparameter cannot have a default")
    plain = HyperparameterSpec(type=type_name, items=items, nullable=spec.nullable)
    choices = None
    if spec.choices is not None:
        if not spec.choices:
            raise fail("choices must not be empty")
        try:
            choices = tuple(_coerce_checked(plain, c) for c in spec.choices)
        except _Invalid as e:
            raise fail(f"choice does not fit the type: {e}") from None
    checked = HyperparameterSpec(
        type=type_name, default=MISSING, required=spec.required, choices=choices,
        minimum=spec.minimum, maximum=spec.maximum, items=items, nullable=spec.nullable,
        description=spec.description,
    )
    if spec.default is MISSING:
        return checked
    try:
        default = _coerce_checked(checked, spec.default)
    except _Invalid as e:
        raise fail(f"default {_show(spec.default)} does not fit the declaration: {e}") from None
    return replace(checked, default=default)
