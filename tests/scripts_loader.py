"""Import a file of scripts/ as a module, so tests run the scripts' own code (scripts/ is not a package)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


def load_script(file_name: str) -> ModuleType:
    """The module of ``scripts/<file_name>``, registered in sys.modules (dataclasses look their module up while the
    file executes)."""
    spec = importlib.util.spec_from_file_location(f"raymem_script_{Path(file_name).stem}", SCRIPTS / file_name)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module
