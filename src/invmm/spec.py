"""The one syntax of a configurable component on the command line, scorers and mitigations alike:
"name" or "name:key=value,key=value" (values read as JSON where they parse)."""

from __future__ import annotations

import json


def parse_spec(spec: str) -> tuple[str, dict]:
    """"pia" or "pia:t=100,p=2" -> ("pia", {"t": 100, "p": 2}); values are JSON where they parse as JSON."""
    name, _, rest = spec.strip().partition(":")
    options = {}
    for part in filter(None, (p.strip() for p in rest.split(","))):
        key, eq, value = part.partition("=")
        if not eq:
            raise ValueError(f"option {part!r} in {spec!r} is not key=value")
        try:
            options[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            options[key.strip()] = value.strip()
    return name.strip(), options
