"""README's configuration table, generated from the config classes (`pipeline/contract/config.py`).

    python -m pipeline.config_doc            print the table
    python -m pipeline.config_doc --write    put it into README.md, between the config-table markers

One row per key: its dotted path, the default from the class, and the field's
pydantic `description=` (with the allowed values of a `Literal` appended when the
description does not name them all). The walk is generic, so a new key, section
or per-type class shows up without editing this file:

- a nested section (a config class) adds its name to the path;
- `dict[str, Section]` adds a placeholder (`finetune.<task>`; set by the field's
  `json_schema_extra={"placeholder": ...}`, else `<name>`), `list[Section]` adds `[i]`;
- a union of sections (a discriminated union, e.g. on `type`) lists the keys all
  members share once and marks the others with the member they belong to;
- keys inherited from one base class at several paths (`TrainConfig`'s training
  keys under `pretrain` and `finetune.<task>`) are listed once, under a heading row
  naming the paths, with each path's default where they differ.
"""

from __future__ import annotations

import argparse
import types
import typing
from dataclasses import dataclass
from typing import Any, Literal, get_args, get_origin

from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from pipeline.contract.config import Config
from pipeline.readme_blocks import write_block

BLOCK = "config-table"
COMMAND = "python -m pipeline.config_doc --write"


@dataclass
class _Key:
    path: str  # "pretrain", "finetune.<task>": where the section sits ("" at the top)
    name: str
    fields: list[tuple[str, FieldInfo]]  # (union member as "`type: qa`", or "", its field)
    owner: type[BaseModel]  # the most basic class that declares the key
    only: str = ""  # "`type: qa`" when only some members of a union have the key

    @property
    def dotted(self) -> str:
        return f"{self.path}.{self.name}" if self.path else self.name

    @property
    def description(self) -> str:
        return next((f.description.strip() for _, f in self.fields if f.description), "")


def _unwrap(annotation: Any) -> list[Any]:
    """The alternatives of an annotation: `A | B | None` -> [A, B]; Annotated[...] unwrapped."""
    origin = get_origin(annotation)
    if origin is typing.Annotated:
        return _unwrap(get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType):
        return [a for arg in get_args(annotation) if arg is not type(None) for a in _unwrap(arg)]
    return [annotation]


def _is_section(annotation: Any) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


def _sections(annotation: Any, placeholder: str) -> tuple[str, list[type[BaseModel]]] | None:
    """(path suffix, section classes) when a field holds sections, else None (a plain key)."""
    alternatives = _unwrap(annotation)
    if all(_is_section(a) for a in alternatives):
        return "", alternatives
    if len(alternatives) == 1 and get_origin(alternatives[0]) in (dict, list):
        args = get_args(alternatives[0])
        inner = _unwrap(args[-1]) if args else []
        if inner and all(_is_section(a) for a in inner):
            return (f".{placeholder}" if get_origin(alternatives[0]) is dict else "[i]"), inner
    return None


def _owner(cls: type[BaseModel], name: str) -> type[BaseModel]:
    bases = [c for c in cls.__mro__ if isinstance(c, type) and issubclass(c, BaseModel) and name in c.model_fields]
    return bases[-1]


def _discriminator(members: list[type[BaseModel]], cls: type[BaseModel]) -> str:
    """`type: qa` for a union member whose shared Literal field has one value."""
    for name, field in cls.model_fields.items():
        values = get_args(field.annotation) if get_origin(field.annotation) is Literal else ()
        if len(values) == 1 and all(name in m.model_fields for m in members):
            return f"`{name}: {values[0]}`"
    return f"`{cls.__name__}`"


def _keys(cls: type[BaseModel], path: str) -> list[_Key]:
    keys: list[_Key] = []
    for name, field in cls.model_fields.items():
        extra = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
        nested = _sections(field.annotation, str(extra.get("placeholder", "<name>")))
        if nested is None:
            keys.append(_Key(path, name, [("", field)], _owner(cls, name)))
            continue
        suffix, members = nested
        sub = f"{path}.{name}{suffix}" if path else f"{name}{suffix}"
        if len(members) == 1:
            keys.extend(_keys(members[0], sub))
            continue
        merged: dict[tuple[str, str], _Key] = {}  # one row per key, whichever members have it
        for member in members:
            label = _discriminator(members, member)
            for key in _keys(member, sub):
                if (key.path, key.name) in merged:
                    merged[key.path, key.name].fields += [(label, f) for _, f in key.fields]
                    continue
                key.fields = [(label, f) for _, f in key.fields]
                if not all(key.name in m.model_fields for m in members):
                    key.only = ", ".join(_discriminator(members, m) for m in members if key.name in m.model_fields)
                merged[key.path, key.name] = key
                keys.append(key)
    return keys


def _value(value: Any) -> str:
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):  # as one would write it in YAML: 1.0, 0.15, 1e-4, 5e-5
        if value.is_integer():
            return f"{value:.1f}"
        mantissa, exponent = f"{value:e}".split("e")
        scientific = f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"
        return min(f"{value:g}", scientific, key=len)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_value(v).strip("`") for v in value) + "]"
    return str(value)


def _one_default(field: FieldInfo) -> str:
    if field.default_factory is not None:
        return f"`{_value(field.default_factory())}`"
    if field.default is PydanticUndefined:
        return "required"
    return "unset" if field.default is None else f"`{_value(field.default)}`"


def _default(key: _Key) -> str:
    """The default; where union members differ, the first member's, then the others': `x` (`type: qa`: `y`)."""
    defaults = [(label, _one_default(field)) for label, field in key.fields]
    shown = defaults[0][1]
    return shown + "".join(f" ({label}: {d})" for label, d in defaults[1:] if d != shown)


def _choices(annotation: Any) -> list[str]:
    found: list[str] = []
    for alt in _unwrap(annotation):
        if get_origin(alt) is Literal:
            found += [str(v) for v in get_args(alt)]
        elif get_origin(alt) in (list, tuple):
            found += [c for arg in get_args(alt) for c in _choices(arg)]
    return found


def _meaning(key: _Key) -> str:
    text = key.description
    choices = list(dict.fromkeys(c for _, field in key.fields for c in _choices(field.annotation)))
    if choices and not all(f"`{c}`" in text for c in choices):
        text += " (" + ", ".join(f"`{c}`" for c in choices) + ")"
    if key.only:
        text = f"only with {key.only}: {text}"
    return text.replace("|", "\\|")


def missing_descriptions(root: type[BaseModel] = Config) -> list[str]:
    """Dotted keys without a `description=`: the table would have an empty meaning."""
    return [k.dotted for k in _keys(root, "") if not k.description]


def render(root: type[BaseModel] = Config) -> str:
    """The table, markdown, one row per key (what the README holds between the markers)."""
    keys = _keys(root, "")
    paths_of: dict[type[BaseModel], list[str]] = {}
    for key in keys:
        paths = paths_of.setdefault(key.owner, [])
        if key.path not in paths:
            paths.append(key.path)
    rows = ["| key | default | meaning |", "| --- | --- | --- |"]
    done: set[type[BaseModel]] = set()
    for key in keys:
        paths = paths_of[key.owner]
        if len(paths) == 1:
            rows.append(f"| `{key.dotted}` | {_default(key)} | {_meaning(key)} |")
            continue
        if key.owner in done:
            continue
        done.add(key.owner)
        # One base class at several paths: its keys once, each path's default where they differ.
        shared = " and ".join(f"`{p}.*`" for p in paths)
        rows.append(f"| {shared} | | {key.owner.__doc__.strip() if key.owner.__doc__ else 'shared keys'} |")
        for shared_key in (k for k in keys if k.owner is key.owner and k.path == paths[0]):
            defaults = [(p, _default(k)) for p in paths for k in keys
                        if k.owner is key.owner and k.path == p and k.name == shared_key.name]
            shown = defaults[0][1]
            shown += "".join(f" (`{p}`: {d})" for p, d in defaults[1:] if d != defaults[0][1])
            rows.append(f"| `{shared_key.name}` | {shown} | {_meaning(shared_key)} |")
    return "\n".join(rows) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m pipeline.config_doc", description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help="replace the table in README.md instead of printing it")
    args = parser.parse_args(argv)
    missing = missing_descriptions()
    if missing:
        raise SystemExit(f"config keys without a description= in pipeline/contract/config.py: {', '.join(missing)}")
    if not args.write:
        print(render(), end="")
        return
    print("README.md updated" if write_block(BLOCK, render()) else "README.md already up to date")


if __name__ == "__main__":
    main()
