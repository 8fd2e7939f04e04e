"""The README's notebook example runs as written (a tiny digits run on a local Ray)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def notebook_example() -> str:
    text = README.read_text()
    marker = text.index("<!-- notebook-example")
    return re.search(r"```python\n(.*?)```", text[marker:], re.S).group(1)


def test_the_readme_front_page_has_install_quick_start_own_data_and_cluster_run():
    first = "\n".join(README.read_text().splitlines()[:80])
    for needed in ("[gpu]", "## Quick start", "raymem.Run", "Your own data", "raymem up cluster.yaml", "--dry-run"):
        assert needed in first, needed


@pytest.mark.slow
@pytest.mark.usefixtures("isolated_ray")
def test_the_readme_notebook_example_runs(tmp_path):
    namespace = {"storage": str(tmp_path / "runs")}
    exec(compile(notebook_example(), str(README), "exec"), namespace)  # noqa: S102 - the README's own code
    assert namespace["mem"].height == namespace["run"].n_train
    assert namespace["plan"]["trials"] == 2000


def _cli_reference():
    import importlib.util

    path = README.parent / "scripts" / "cli_reference.py"
    spec = importlib.util.spec_from_file_location("cli_reference", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_readme_command_reference_is_what_the_cli_says():
    reference = _cli_reference()
    assert reference.readme_block(README.read_text()) == reference.reference(), (
        "the README's command reference is stale; run `python scripts/cli_reference.py --write`")


def test_every_option_of_every_help_is_in_the_readme_reference_and_the_reverse():
    """Read independently of the generator: the flags `raymem CMD --help` prints against the README's block."""
    from typer.testing import CliRunner

    from raymem.cli import app

    block = _cli_reference().readme_block(README.read_text())
    sections = dict(re.findall(r"#### `raymem (\S+)[^`]*`\n(.*?)(?=\n#### |\Z)", block, re.S))
    assert sections, "the README has a command reference"
    for command, section in sections.items():
        text = CliRunner().invoke(app, [command, "--help"], env={"COLUMNS": "200"}).stdout
        options = text.split("Options:", 1)[-1]
        declared = re.findall(r"^ {2,4}(--?[a-z][\w-]*)(?:(?:, | / )(--?[a-z][\w-]*))?", options, re.M)
        in_help = {flag for pair in declared for flag in pair if flag}
        in_readme = set(re.findall(r"`(--?[a-z][a-z-]*)`", section))
        in_help.discard("--help")
        assert in_help <= in_readme, (command, sorted(in_help - in_readme))
        assert in_readme <= in_help, (command, sorted(in_readme - in_help))
