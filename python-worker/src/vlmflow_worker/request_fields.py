"""Which fields a request sets: the worker's defaults apply only to fields the caller left out."""

from __future__ import annotations

from typing import Any


def set_fields(message: Any, names: dict[str, str]) -> dict[str, Any]:
    """{our name: value} for the fields of `message` (keyed by proto name) that the caller set. A proto3 `optional`
    field is set when it was sent, even as zero, so `dropout: 0` means 0; a field without presence (a plain string)
    counts as set when it is not empty."""
    found: dict[str, Any] = {}
    for proto_name, name in names.items():
        descriptor = message.DESCRIPTOR.fields_by_name[proto_name]
        present = message.HasField(proto_name) if descriptor.has_presence else bool(getattr(message, proto_name))
        if present:
            found[name] = getattr(message, proto_name)
    return found
