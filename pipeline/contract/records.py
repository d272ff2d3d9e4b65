"""Typed records: the dataclasses that pass results between library and stage, as JSON and back.

A stage's outputs are a dataclass; `stage.json` stores `to_record(outputs)` (plain
JSON via `dataclasses.asdict`), and the next stage reads it back with
`Outputs.from_record(record)`, nested dataclasses, lists, dicts and optionals included.
Keys a reader does not know are ignored (a record may carry more than one reader
needs); a key it needs and lacks is a one-line ContractError naming the record.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, TypeVar

from pipeline.contract.errors import ContractError

T = TypeVar("T")


def to_record(obj: Any) -> dict[str, Any]:
    return dataclasses.asdict(obj)


def from_record(cls: type[T], data: Any, where: str = "") -> T:
    """`cls` (a dataclass) from its `to_record` form."""
    where = where or cls.__name__
    if not isinstance(data, dict):
        raise ContractError(f"{where} is not a record (got {type(data).__name__}): rerun the stage that wrote it")
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for field in dataclasses.fields(cls):
        if not field.init:
            continue
        if field.name not in data:
            if field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
                raise ContractError(f"{where} lacks {field.name!r} (written by an older bertpipe?): "
                                    "rerun the stage that wrote it with --force")
            continue
        kwargs[field.name] = _value(hints[field.name], data[field.name], f"{where}.{field.name}")
    return cls(**kwargs)


def _value(hint: Any, value: Any, where: str) -> Any:
    if value is None:
        return None
    origin = typing.get_origin(hint)
    if dataclasses.is_dataclass(hint):
        return from_record(hint, value, where)
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(hint):
            if dataclasses.is_dataclass(arg):
                return from_record(arg, value, where)
        return value
    if origin is list:
        (arg,) = typing.get_args(hint)
        return [_value(arg, v, where) for v in value]
    if origin is dict:
        _, arg = typing.get_args(hint)
        return {k: _value(arg, v, f"{where}.{k}") for k, v in value.items()}
    return value


class Record:
    """Mixin for a record dataclass: `Outputs.from_record(data)` and `outputs.to_record()`."""

    @classmethod
    def from_record(cls: type[T], data: Any, where: str = "") -> T:
        return from_record(cls, data, where)

    def to_record(self) -> dict[str, Any]:
        return to_record(self)
