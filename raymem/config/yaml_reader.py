"""YAML read as the config files mean it: PyYAML's safe loader, except that a key given twice is an error.

PyYAML keeps the last of two equal keys without a word, so a config with ``trials: 2000`` under a forgotten
``trials: 20`` would silently plan the other number. A merge key (``<<: *base``) still overrides, as YAML says.
"""

from __future__ import annotations

import yaml

__all__ = ["describe_yaml_error", "load_yaml"]


class _UniqueKeyLoader(yaml.SafeLoader):
    """A safe loader that refuses a mapping naming one key twice, pointing at the second."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                duplicate = key in seen
            except TypeError:  # an unhashable key: the base class reports it
                break
            if duplicate:
                raise yaml.constructor.ConstructorError(
                    "while reading a mapping", node.start_mark, f"found the key {key!r} twice", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def load_yaml(text: str):
    """Return the Python value of YAML ``text``; yaml.YAMLError for bad syntax or a duplicated key."""
    return yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 (a SafeLoader subclass)


def describe_yaml_error(error: yaml.YAMLError) -> str:
    """Return where and what a YAML error is, for a message: ``at line 4, column 3 (found the key 'x' twice)``."""
    mark = getattr(error, "problem_mark", None)
    where = f"at line {mark.line + 1}, column {mark.column + 1} " if mark is not None else ""
    problem = getattr(error, "problem", None) or (str(error).splitlines() or [type(error).__name__])[0]
    return f"{where}({problem})"
