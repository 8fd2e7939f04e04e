"""Write the README's command reference from the CLI itself, so `--help` and the README say the same thing.

    python scripts/cli_reference.py            # print the reference
    python scripts/cli_reference.py --write    # replace the block between the README's cli-reference markers

``tests/test_readme.py`` fails when the README's block differs from what this prints.
"""

from __future__ import annotations

import sys
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"
START, END = "<!-- cli-reference:start -->", "<!-- cli-reference:end -->"


def _cell(text: str) -> str:
    return " ".join((text or "").split()).replace("|", "\\|")


def reference() -> str:
    """One table per command, in ``raymem --help`` order: each option with its help text and default."""
    import typer.main

    from raymem.cli import app

    group = typer.main.get_command(app)
    context = group.make_context("raymem", [], resilient_parsing=True)
    lines = []
    for name in group.list_commands(context):
        command = group.get_command(context, name)
        # typer carries its own copy of click, so parameters are told apart by kind, not by class
        arguments = " ".join(p.name.upper() for p in command.params
                             if p.param_type_name == "argument")
        summary = _cell((command.help or "").split("\n\n")[0])
        lines += [f"#### `raymem {name}{' ' + arguments if arguments else ''}`", "", summary, "",
                  "| option | what it does |", "|---|---|"]
        for param in command.params:
            if param.param_type_name == "option" and not param.hidden:
                flags = ", ".join(f"`{flag}`" for flag in [*param.opts, *param.secondary_opts])
                lines.append(f"| {flags} | {_cell(param.help)} |")
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def readme_block(text: str) -> str:
    """The README's reference block (between the markers)."""
    return text[text.index(START) + len(START):text.index(END)].strip("\n") + "\n"


def main(argv: list[str]) -> int:
    block = reference()
    if "--write" not in argv:
        sys.stdout.write(block)
        return 0
    text = README.read_text()
    README.write_text(text[:text.index(START) + len(START)] + "\n" + block + text[text.index(END):])
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
