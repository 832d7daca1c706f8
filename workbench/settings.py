"""Typed settings dataclasses from notebook parameters, command lines and dicts.

Dependency-free (standard library and PyYAML only), so every layer can validate its own settings
without importing the app-level ``workbench.config``:

- :func:`from_params` builds a dataclass from a dict, rejecting unknown names (with the valid
  names and a close match) and ill-typed values before any work starts;
- :func:`namespace_params` picks a notebook's papermill parameters out of ``globals()``;
- :func:`parse_args` gives every field of a dataclass a ``--flag`` with its docstring as help;
- :func:`field_docs` reads each field's docstring (the string literal after it);
- :func:`parse_mapping` reads ``{alpha: 0.1, n_step: 1}`` (YAML or JSON) into a dict.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import difflib
import inspect
import math
import textwrap
import types
import typing
from dataclasses import fields
from typing import Any, TypeVar

import yaml

T = TypeVar("T")

__all__ = ["from_params", "namespace_params", "field_docs", "parse_args", "parse_mapping", "settings_dict"]


def _type_name(annotation: Any) -> str:
    return getattr(annotation, "__name__", str(annotation))


def _coerce(name: str, value: Any, annotation: Any) -> Any:
    """Check one value against a field's annotation; accept ints for floats and papermill's
    int-coerced strings (``-p run 007`` arrives as 7)."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(annotation)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _coerce(name, value, option)
            except ValueError as exc:
                errors.append(str(exc))
        raise ValueError(errors[0] if errors else f"parameter {name!r} got {value!r}")
    if origin is tuple:
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if isinstance(value, (list, tuple)):
            inner = typing.get_args(annotation)
            item = inner[0] if inner else Any
            return tuple(value if item is Any else (_coerce(name, v, item) for v in value))
    elif origin is dict or annotation is dict:
        if isinstance(value, str):
            value = parse_mapping(value, what=f"parameter {name!r}")
        if isinstance(value, dict):
            return dict(value)
        if value is None:
            return {}
    elif annotation is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
    elif annotation is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
    elif annotation is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif annotation is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)  # papermill's -p turns '1' into 1
        if isinstance(value, (list, tuple)):
            return ",".join(str(v) for v in value)  # -y "games: [Pong, Breakout]"
    elif annotation is Any:
        return value
    raise ValueError(f"parameter {name!r} must be {_type_name(annotation)}, got {value!r} ({type(value).__name__})")


def parse_mapping(text: str, *, what: str = "value") -> dict[str, Any]:
    """``"{alpha: 0.1, n_step: 1}"`` (YAML flow or JSON) -> dict; '' -> {}."""
    if not text.strip():
        return {}
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ValueError(f"{what} is not a mapping like '{{alpha: 0.1, n_step: 1}}': {exc}") from None
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ValueError(f"{what} must be a mapping like '{{alpha: 0.1, n_step: 1}}', got {text!r}")
    return value


# Names IPython puts in a kernel's user namespace; every other public primitive is a parameter.
_IPYTHON_NAMES = frozenset({"In", "Out", "exit", "quit", "get_ipython", "open"})
_PRIMITIVES = (str, int, float, bool, list, tuple, dict, type(None))


def namespace_params(namespace: dict[str, Any]) -> dict[str, Any]:
    """The papermill parameters in a notebook's namespace: public names holding primitives.

    A notebook's second cell calls ``Config.from_params(**namespace_params(globals()))``
    before defining anything else, so a misspelt ``-p modle ...`` is caught as unknown.
    """
    return {
        k: v for k, v in namespace.items()
        if not k.startswith("_") and k not in _IPYTHON_NAMES and isinstance(v, _PRIMITIVES)
    }


def from_params(cls: type[T], params: dict[str, Any], *, what: str = "parameter") -> T:
    """Construct dataclass ``cls`` from a dict, rejecting unknown names and ill-typed values."""
    hints = typing.get_type_hints(cls)
    valid = [f.name for f in fields(cls) if f.init]  # type: ignore[arg-type]
    unknown = sorted(set(params) - set(valid))
    if unknown:
        def hint(u: str) -> str:
            close = difflib.get_close_matches(u, valid, 1)
            return f"{u!r} (did you mean {close[0]!r}?)" if close else repr(u)

        raise ValueError(f"unknown {what}(s) {'; '.join(hint(u) for u in unknown)}; "
                         f"valid {what}s: {', '.join(valid) or '(none)'}")
    return cls(**{k: _coerce(k, v, hints[k]) for k, v in params.items()})


def settings_dict(obj: Any) -> dict[str, Any]:
    """A settings dataclass as a JSON-ready dict (tuples become lists)."""
    return dataclasses.asdict(obj)


def check_finite(obj: Any, *names: str, minimum: float | None = None) -> None:
    """Raise if any named float field is NaN/inf (or below ``minimum``)."""
    for name in names:
        v = getattr(obj, name)
        if not math.isfinite(v) or (minimum is not None and v < minimum):
            bound = f" >= {minimum}" if minimum is not None else ""
            raise ValueError(f"{name} must be a finite number{bound}, got {v}")


def field_docs(cls: type) -> dict[str, str]:
    """Each dataclass field's docstring (the string literal right after it in the class body),
    for the class and its dataclass bases."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        body = ast.parse(textwrap.dedent(inspect.getsource(klass))).body[0].body  # type: ignore[attr-defined]
        for node, nxt in zip(body, body[1:]):
            if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)
                    and isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant)):
                docs[node.target.id] = " ".join(str(nxt.value.value).split())
    return docs


def parse_args(cls: type[T], argv: list[str] | None = None, prog: str | None = None,
               extra_flags: dict[str, str] | None = None) -> tuple[T, dict[str, bool]]:
    """Command-line flags for every field of ``cls`` (``--batch-size 512``), validated by ``cls``.

    ``extra_flags`` adds boolean switches (name -> help), returned as the second value. A bad
    value exits with status 2 and the validation message, without a traceback.
    """
    doc = (cls.__doc__ or "").strip().splitlines()
    parser = argparse.ArgumentParser(prog=prog, description=doc[0] if doc else None)
    hints, docs = typing.get_type_hints(cls), field_docs(cls)
    for f in fields(cls):  # type: ignore[arg-type]
        flag = "--" + f.name.replace("_", "-")
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[operator]  # MISSING: no default at all
        parser.add_argument(flag, dest=f.name, default=None, type=str,
                            help=f"{docs.get(f.name, '')} (default: {default!r}; type {_type_name(hints[f.name])})")
    for name, text in (extra_flags or {}).items():
        parser.add_argument("--" + name.replace("_", "-"), dest=name, action="store_true", help=text)
    args = vars(parser.parse_args(argv))
    switches = {name: bool(args.pop(name)) for name in (extra_flags or {})}
    given: dict[str, Any] = {}
    for name, raw in args.items():
        if raw is None:
            continue
        kind = hints[name]
        try:
            given[name] = kind(raw) if kind in (int, float) else raw  # bools: from_params reads 'true'/'false'
        except ValueError:
            parser.error(f"--{name.replace('_', '-')} expects {_type_name(kind)}, got {raw!r}")
    try:
        return from_params(cls, given), switches
    except ValueError as exc:
        parser.error(str(exc))
