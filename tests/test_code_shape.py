"""The code stays readable in one sitting: outside the CLI, no function takes more than 10 parameters or runs past
80 lines (settings travel as objects: Bars, PairSelection, DriverOptions, ...), and the front door lists itself."""

from __future__ import annotations

import ast
from pathlib import Path

import raymem

PACKAGE = Path(raymem.__file__).resolve().parent
MAX_PARAMETERS, MAX_LINES = 10, 80


def functions():
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.name == "cli.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                yield path.relative_to(PACKAGE.parent), node


def parameters(node: ast.FunctionDef) -> int:
    a = node.args
    names = [*a.posonlyargs, *a.args, *a.kwonlyargs]
    count = len(names) + (a.vararg is not None) + (a.kwarg is not None)
    return count - 1 if names and names[0].arg in ("self", "cls") else count


def test_no_function_outside_the_cli_has_more_than_10_parameters_or_80_lines():
    too_big = [f"{path}:{node.lineno} {node.name}: {parameters(node)} parameters, "
               f"{node.end_lineno - node.lineno + 1} lines"
               for path, node in functions()
               if parameters(node) > MAX_PARAMETERS or node.end_lineno - node.lineno + 1 > MAX_LINES]
    assert not too_big, "\n".join(too_big)


def test_the_checker_sees_a_long_parameter_list(tmp_path):
    node = ast.parse("def f(self, a, b, c, d, e, f, g, h, i, j, *, k=1): pass").body[0]
    assert parameters(node) == 11


def test_every_exported_name_resolves_and_is_listed_by_dir():
    from raymem import api

    assert sorted(raymem.__all__) == sorted(api.__all__)
    for name in raymem.__all__:
        assert getattr(raymem, name) is getattr(api, name), name
        assert name in dir(raymem), name
    assert isinstance(raymem.Run("x", storage="nowhere"), raymem.Run)
