"""torpor's `mode: yq` provisioning in the guest: apply assignments (read by torpor on the host from the yq
expression) to a JSON or YAML file, creating it if missing.  Usage: python3 yq.py OPS_FILE TARGET"""

import itertools
import json
import os
import sys
from typing import Any


def assign(data: Any, path: list[Any], value: Any, append: bool) -> None:
    node = data
    for step, nxt in itertools.pairwise(path):
        if isinstance(node, list):
            while len(node) <= step:
                node.append(None)
        elif not isinstance(node, dict):
            raise SystemExit(f"yq: {path}: cannot descend into {type(node).__name__}")
        if (node[step] if isinstance(node, list) else node.get(step)) is None:
            node[step] = [] if isinstance(nxt, int) else {}
        node = node[step]
    last = path[-1]
    if isinstance(node, list):
        while len(node) <= last:
            node.append(None)
        current = node[last]
    else:
        current = node.get(last)
    if append:
        value = (current or []) + value
    node[last] = value


def main() -> None:
    with open(sys.argv[1]) as f:
        spec = json.load(f)
    target = sys.argv[2]
    text = ""
    if os.path.exists(target):
        with open(target) as f:
            text = f.read()
    if spec["format"] == "ini":
        import configparser

        ini = configparser.ConfigParser(interpolation=None)
        ini.optionxform = str  # type: ignore[assignment,method-assign]
        ini.read_string(text)
        for (section, key), _, value in spec["ops"]:
            if not ini.has_section(section):
                ini.add_section(section)
            ini.set(section, key, value if isinstance(value, str) else json.dumps(value))
        tmp = target + ".torpor-new"
        with open(tmp, "w") as f:
            ini.write(f)
        os.replace(tmp, target)
        return
    if spec["format"] == "json":
        data = json.loads(text) if text.strip() else {}
    else:
        import yaml

        data = yaml.safe_load(text) if text.strip() else {}
    if data is None:
        data = {}
    for path, append, value in spec["ops"]:
        assign(data, path, value, append)
    tmp = target + ".torpor-new"
    with open(tmp, "w") as f:
        if spec["format"] == "json":
            json.dump(data, f, indent=2)
            f.write("\n")
        else:
            import yaml

            yaml.safe_dump(data, f, sort_keys=False)
    os.replace(tmp, target)


main()
