"""The policy format as JSON Schema, so editors can complete and check policy files."""

from __future__ import annotations

from typing import Any

from policies.model import PolicyFile


def json_schema() -> dict[str, Any]:
    """JSON Schema (draft 2020-12) of one policy file."""
    schema = PolicyFile.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "pgwarden policy file, version 1"
    return schema
