"""Shared machinery of the spec records: JSON encoding, a type registry, validation helpers.

Every spec record is a frozen dataclass whose fields are plain values
(``str``, ``int``, ``float``, ``bool``, ``None``), tuples of them, or other
spec records. :func:`to_dict` turns a record into JSON-ready data (tuples
become lists, records become ``{"type": ClassName, ...fields}``) and
:func:`from_dict` reverses it (lists become tuples again), so
``from_dict(json.loads(json.dumps(to_dict(s)))) == s``. Cost: O(size of the
record).
"""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Any, Iterable

import numpy as np

from ..errors import SpecError

__all__ = ["SpecRecord", "register", "to_dict", "from_dict", "to_json", "from_json"]

#: class name -> spec record class; filled by :func:`register`.
_REGISTRY: dict[str, type] = {}


def register(cls: type) -> type:
    """Class decorator: make ``cls`` decodable by :func:`from_dict` under its own name."""
    _REGISTRY[cls.__name__] = cls
    return cls


class SpecRecord:
    """Mixin of the spec records: ``to_dict``/``from_dict``/``to_json``/``from_json`` and a compact repr.

    The repr is a constructor call that ``eval`` reproduces in the namespace of
    :mod:`gradverify.spec` (fields equal to their defaults are left out).
    """

    def to_dict(self) -> dict:
        """JSON-ready nested dict; O(size)."""
        return to_dict(self)

    def to_json(self, **kwargs: Any) -> str:
        """``json.dumps(self.to_dict())``; keyword arguments go to :func:`json.dumps`."""
        return json.dumps(self.to_dict(), **kwargs)

    @classmethod
    def from_dict(cls, data: Any) -> Any:
        """Rebuild a record from :meth:`to_dict` output; raises SpecError if it is another type."""
        out = from_dict(data)
        if not isinstance(out, cls):
            raise SpecError(f"expected a {cls.__name__} record, got {type(out).__name__}")
        return out

    @classmethod
    def from_json(cls, text: str) -> Any:
        """Rebuild a record from :meth:`to_json` output."""
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise SpecError(f"not valid JSON: {exc}") from None
        return cls.from_dict(data)

    def __repr__(self) -> str:
        parts = []
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            v = getattr(self, f.name)
            if f.default is not dataclasses.MISSING and v == f.default:
                continue
            parts.append(f"{f.name}={v!r}")
        return f"{type(self).__name__}({', '.join(parts)})"


def _encode(v: Any) -> Any:
    if dataclasses.is_dataclass(v) and not isinstance(v, type):
        if hasattr(v, "_encode_fields"):
            fields = v._encode_fields()
        else:
            fields = {f.name: getattr(v, f.name) for f in dataclasses.fields(v)}
        return {"type": type(v).__name__, **{k: _encode(x) for k, x in fields.items()}}
    if isinstance(v, (tuple, list)):
        return [_encode(x) for x in v]
    if isinstance(v, dict):
        return {str(k): _encode(x) for k, x in v.items()}
    if isinstance(v, float) and not math.isfinite(v):
        return repr(v)       # "inf", "-inf", "nan": JSON has no literal for them
    return v


def _decode(v: Any) -> Any:
    if isinstance(v, dict):
        if "type" in v:
            name = v["type"]
            cls = _REGISTRY.get(name)
            if cls is None:
                raise SpecError(f"unknown spec type {name!r}; known: {', '.join(sorted(_REGISTRY))}")
            fields = {k: _decode(x) for k, x in v.items() if k != "type"}
            if hasattr(cls, "_from_fields"):
                return cls._from_fields(fields)
            known = {f.name for f in dataclasses.fields(cls)}
            extra = sorted(set(fields) - known)
            if extra:
                raise SpecError(f"{name} has no field(s) {extra}; fields: {sorted(known)}")
            try:
                return cls(**fields)
            except TypeError as exc:
                raise SpecError(f"cannot build {name} from {sorted(fields)}: {exc}") from None
        return {k: _decode(x) for k, x in v.items()}
    if isinstance(v, list):
        return tuple(_decode(x) for x in v)
    return v


def to_dict(spec: Any) -> Any:
    """Encode a spec record (or a tuple of them) as JSON-ready data; O(size)."""
    return _encode(spec)


def from_dict(data: Any) -> Any:
    """Decode :func:`to_dict` output back into spec records; O(size).

    Raises:
        SpecError: an unknown ``type`` or field, or a record that fails validation.
    """
    return _decode(data)


def to_json(spec: Any, **kwargs: Any) -> str:
    """``json.dumps(to_dict(spec))``."""
    return json.dumps(to_dict(spec), **kwargs)


def from_json(text: str) -> Any:
    """Decode :func:`to_json` output."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise SpecError(f"not valid JSON: {exc}") from None
    return from_dict(data)


# ---------------------------------------------------------------------------
# Validation helpers (used in __post_init__ of the records)
# ---------------------------------------------------------------------------

def setattr_frozen(obj: Any, name: str, value: Any) -> None:
    """Assign a field of a frozen dataclass during its own ``__post_init__``."""
    object.__setattr__(obj, name, value)


def as_int(v: Any, what: str, *, minimum: int | None = None) -> int:
    """``v`` as an int (bools refused), at least ``minimum``; SpecError naming ``what`` otherwise."""
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
        raise SpecError(f"{what} must be an integer, got {v!r}")
    v = int(v)
    if minimum is not None and v < minimum:
        raise SpecError(f"{what} must be >= {minimum}, got {v}")
    return v


def as_shape(v: Any, what: str, *, minimum: int = 1) -> tuple[int, ...]:
    """``v`` as a tuple of ints >= ``minimum`` (an int is a 1-tuple)."""
    if isinstance(v, (int, np.integer)) and not isinstance(v, bool):
        v = (v,)
    if not isinstance(v, Iterable) or isinstance(v, (str, bytes)):
        raise SpecError(f"{what} must be a tuple of integers, got {v!r}")
    return tuple(as_int(s, f"{what} entry", minimum=minimum) for s in v)


def as_pair(v: Any, what: str, *, minimum: int) -> int | tuple[int, int]:
    """An int or a pair of ints (kernel sizes, strides, paddings), kept as given."""
    if isinstance(v, (tuple, list)):
        if len(v) != 2:
            raise SpecError(f"{what} must be an int or a pair of ints, got {v!r}")
        return (as_int(v[0], what, minimum=minimum), as_int(v[1], what, minimum=minimum))
    return as_int(v, what, minimum=minimum)


def pair(v: int | tuple[int, int]) -> tuple[int, int]:
    """An int-or-pair as a pair."""
    return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))


def as_float(v: Any, what: str, *, positive: bool = False) -> float:
    """``v`` as a finite float (strictly positive if asked)."""
    if isinstance(v, bool):
        raise SpecError(f"{what} must be a number, got {v!r}")
    try:
        f = float(v)
    except (TypeError, ValueError):
        raise SpecError(f"{what} must be a number, got {v!r}") from None
    if not math.isfinite(f) or (positive and f <= 0):
        raise SpecError(f"{what} must be a finite{' positive' if positive else ''} number, got {v!r}")
    return f


def freeze(v: Any) -> Any:
    """Lists -> tuples, recursively (so records stay hashable and compare by value)."""
    if isinstance(v, (list, tuple)):
        return tuple(freeze(x) for x in v)
    return v
