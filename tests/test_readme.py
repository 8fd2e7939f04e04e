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
