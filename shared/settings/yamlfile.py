"""The YAML reader of config files (``read_config_file`` in :mod:`.root` uses it): stricter than
``yaml.SafeLoader``. Its own module so that a command run without a config file never imports PyYAML."""

from __future__ import annotations

from typing import Any

import yaml

MAX_CONFIG_DEPTH = 32  # levels of nesting: a flowwatch config has about five


class ConfigYamlError(yaml.YAMLError):
    """A problem of a config file found while reading its YAML; the message is the user's."""


class ConfigLoader(yaml.SafeLoader):
    """``yaml.SafeLoader``, stricter for a config file: a key given twice in one mapping is an error
    (SafeLoader keeps the last one, silently), and so is nesting deeper than ``MAX_CONFIG_DEPTH``
    (PyYAML composes nodes recursively: a deep enough file ended in a RecursionError traceback)."""

    def __init__(self, stream: Any) -> None:
        super().__init__(stream)
        self._keys: list[str] = []  # the key (or [position]) of each node being composed, outermost first

    def _where(self) -> str:
        return "".join(k if k.startswith("[") else f".{k}" for k in self._keys if k).lstrip(".") or "(top level)"

    def compose_node(self, parent: Any, index: Any) -> Any:
        if len(self._keys) >= MAX_CONFIG_DEPTH:
            line = self.peek_event().start_mark.line + 1
            raise ConfigYamlError(f"line {line}: nested deeper than {MAX_CONFIG_DEPTH} levels (under {self._where()}); a flowwatch config has about five")
        self._keys.append(index.value if isinstance(index, yaml.ScalarNode) else f"[{index}]" if isinstance(index, int) else "")
        try:
            node = super().compose_node(parent, index)
            if isinstance(node, yaml.MappingNode):
                self._unique_keys(node)
            return node
        finally:
            self._keys.pop()

    def _unique_keys(self, node: yaml.MappingNode) -> None:
        seen: dict[tuple[str, str], yaml.Node] = {}
        for key, _ in node.value:
            if not isinstance(key, yaml.ScalarNode) or key.tag == "tag:yaml.org,2002:merge":
                continue  # '<<: *base' then a key of its own is an override, not a duplicate
            first = seen.setdefault((key.tag, key.value), key)
            if first is not key:
                where = self._where()
                name = key.value if where == "(top level)" else f"{where}.{key.value}"
                raise ConfigYamlError(
                    f"line {key.start_mark.line + 1}: key {name} is given twice (first on line {first.start_mark.line + 1}); "
                    "YAML would keep the last one without a word: remove one"
                )
