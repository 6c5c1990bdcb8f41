"""``torpor generate-jsonschema``: the JSON schema of the instance YAML, for editors (YAML language servers)."""

from __future__ import annotations

import argparse
import json


def add_arguments(p: argparse.ArgumentParser) -> None:
    pass


def run(args: argparse.Namespace) -> int:
    from torpor.config.schema import Config

    schema = Config.model_json_schema(mode="validation")
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "torpor instance YAML"
    print(json.dumps(schema, indent=2))
    return 0
