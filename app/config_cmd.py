"""``flowwatch config check [FILE]``: validate a config file.

Prints each error as ``key.path: reason`` and exits 2; prints the effective configuration (secrets
masked) as YAML and exits 0 when valid.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

import yaml

from shared.runner import base_parser, settings_or_exit
from shared.settings import ENV_PREFIX, Settings
from shared.settings.root import MAX_CONFIG_BYTES
from shared.settings.yamlfile import MAX_CONFIG_DEPTH

DOC_HEADER = f"""# Configuration

flowwatch reads one YAML file (`-c FILE`, or `$FLOWWATCH_CONFIG`) and then the environment:
`FLOWWATCH_<KEY>` with `__` between levels overrides the file, e.g. `FLOWWATCH_MQTT__HOST=broker`
sets `mqtt.host`. Unknown keys are errors, and so is a key given twice in one mapping (plain YAML
would keep the last one silently); a config file is at most {MAX_CONFIG_BYTES >> 20} MiB and {MAX_CONFIG_DEPTH} levels deep.
`flowwatch config check FILE` validates a file, prints each
problem as a key path and exits 2, or prints the effective configuration (secrets masked).
Relative paths are under `data_dir`. Secrets have no defaults: `flowwatch up` and the compose `init`
service generate them on first start.

This page is generated from the settings models (`flowwatch config doc > docs/configuration.md`);
a test fails when it is out of date.
"""


def _type_name(field) -> str:
    import typing

    ann = field.annotation
    text = getattr(ann, "__name__", None) if not typing.get_args(ann) else None
    return (text or str(ann).replace("typing.", "").replace("pathlib.", "").replace("pydantic.types.", "")).replace("NoneType", "None")


def _default(field) -> str:
    from pydantic_core import PydanticUndefined

    if field.default_factory is not None:
        try:
            value = field.default_factory()
        except TypeError:
            return "(see below)"
        if hasattr(value, "model_dump"):
            return "(section)"
        return f"`{value!r}`"
    if field.default is PydanticUndefined:
        return "required"
    if field.default is None:
        return "unset"
    text = field.default if not isinstance(field.default, str) or field.default.isprintable() else repr(field.default)
    return f"`{text!s}`"


def reference() -> str:
    import typing

    from pydantic import BaseModel

    out = [DOC_HEADER]

    def section(model: type[BaseModel], path: str) -> None:
        rows, subs = [], []
        for name, field in model.model_fields.items():
            key = f"{path}{name}"
            ann = field.annotation
            if isinstance(ann, type) and issubclass(ann, BaseModel):
                subs.append((ann, key + "."))
                continue
            env = "(an entry of the list)" if "[]" in key else f"`{ENV_PREFIX + key.upper().replace('.', '__')}`"
            desc = (field.description or "").replace("|", "\\|")
            rows.append(f"| `{key}` | {_type_name(field).replace('|', 'or')} | {_default(field)} | {desc} | {env} |")
            item = typing.get_args(ann)[0] if typing.get_origin(ann) is list and typing.get_args(ann) else None
            if isinstance(item, type) and issubclass(item, BaseModel):  # the keys of each entry (meters, registers)
                subs.append((item, key + "[]."))
            inner = [a for a in typing.get_args(ann) if isinstance(a, type) and issubclass(a, BaseModel)]
            if len(inner) == 1 and type(None) in typing.get_args(ann):  # a section that may be null (frame.pressure)
                subs.append((inner[0], key + "."))
        title = path.rstrip(".") or "top level"
        doc = (model.__doc__ or "").strip().splitlines()[0] if model.__doc__ and path else ""
        out.append(f"\n## `{title}`\n" + (f"\n{doc}\n" if doc else ""))
        out.append("\n| key | type | default | meaning | environment |\n|---|---|---|---|---|")
        out.extend(rows)
        for m, p in subs:
            section(m, p)

    section(Settings, "")
    return "\n".join(out) + "\n"


def main(argv: Sequence[str]) -> int:
    p = base_parser("config", "Configuration tools.")
    sub = p.add_subparsers(dest="action", required=True)
    chk = sub.add_parser("check", help="validate a config file and print the effective config")
    chk.add_argument("file", nargs="?", default=None, help="config file (default: --config / $FLOWWATCH_CONFIG)")
    sub.add_parser("doc", help="print the configuration reference (Markdown) generated from the settings models")
    args = p.parse_args(argv)
    if args.action == "doc":
        sys.stdout.write(reference())
        return 0
    path = args.file or args.config
    settings = settings_or_exit(path)
    sys.stdout.write(f"# {path or 'built-in defaults'}: valid (environment overrides applied, secrets masked)\n")
    sys.stdout.write(yaml.safe_dump(settings.masked(), sort_keys=False))
    return 0
