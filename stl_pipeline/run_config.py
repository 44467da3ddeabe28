"""Dagster run config and resource fields made from the library's own dataclasses, so that a
setting is declared once: its name, type, default and description live in the dataclass,
and the asset or resource that exposes it is built from that."""

import dataclasses
import typing
from collections.abc import Iterable, Mapping
from typing import Any

from pydantic import Field, create_model


def knob(default: Any = dataclasses.MISSING, doc: str = "") -> Any:
    """A dataclass field with the description the Dagster UI shows for it; without a
    default, a setting that must be given."""
    return dataclasses.field(default=default, metadata={"doc": doc})


def _config_type(annotation: Any) -> Any:
    """Run config speaks lists: a tuple or set field is a list there."""
    if typing.get_origin(annotation) in (tuple, frozenset, set):
        return list[typing.get_args(annotation)[0]]
    return annotation


def _fields(source: type, exclude: Iterable[str], prefix: str, defaults: Mapping[str, Any]) -> dict:
    """``source``'s fields as pydantic ones; a nested dataclass's are flattened as
    ``<field>_<its field>``."""
    hints = typing.get_type_hints(source)
    fields: dict[str, Any] = {}
    for item in dataclasses.fields(source):
        name = prefix + item.name
        if item.name in exclude:
            continue
        if dataclasses.is_dataclass(hints[item.name]):
            fields |= _fields(hints[item.name], (), f"{name}_", defaults)
            continue
        doc = item.metadata.get("doc")
        if name in defaults:
            default = defaults[name]
        elif item.default is not dataclasses.MISSING:
            default = item.default
        elif item.default_factory is not dataclasses.MISSING:
            default = item.default_factory()
        else:
            fields[name] = (_config_type(hints[item.name]), Field(description=doc))  # required
            continue
        if isinstance(default, (tuple, frozenset, set)):
            default = list(default)
        fields[name] = (_config_type(hints[item.name]), Field(default=default, description=doc))
    return fields


def config_class(
    name: str,
    source: type,
    base: type,
    module: str,
    doc: str,
    exclude: Iterable[str] = (),
    **defaults: Any,
) -> type:
    """A subclass of ``base`` (``dg.Config`` or ``dg.ConfigurableResource``) with a field for
    each of ``source``'s, defaults overridden by ``defaults``."""
    unknown = set(defaults) - set(_fields(source, exclude, "", {}))
    if unknown:
        raise TypeError(f"{name}: {sorted(unknown)} are not fields of {source.__name__}")
    made = create_model(name, __base__=base, __module__=module, **_fields(source, exclude, "", defaults))
    made.__doc__ = doc
    return made


def to_dataclass(source: type, values: Mapping[str, Any], prefix: str = "", **fixed: Any) -> Any:
    """The ``source`` dataclass from a config's flattened ``values``, with ``fixed`` fields set
    directly; lists become the tuples or sets the dataclass declares."""
    hints = typing.get_type_hints(source)
    kwargs: dict[str, Any] = {}
    for item in dataclasses.fields(source):
        name = prefix + item.name
        if item.name in fixed:
            kwargs[item.name] = fixed[item.name]
        elif dataclasses.is_dataclass(hints[item.name]):
            kwargs[item.name] = to_dataclass(hints[item.name], values, f"{name}_")
        elif name in values:
            origin = typing.get_origin(hints[item.name])
            value = values[name]
            kwargs[item.name] = origin(value) if origin in (tuple, frozenset, set) else value
    return source(**kwargs)
