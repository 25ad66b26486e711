"""`processes.children.CLI`: a child `stagecast` command runs the installed (or PYTHONPATH)
code, never a package of the same name in its working directory."""

from __future__ import annotations

import subprocess
from pathlib import Path

from processes.children import CLI


def _shadow(directory: Path) -> None:
    """A `stagecast` package in `directory` whose cli says it was the one imported."""
    package = directory / "stagecast"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "cli.py").write_text("raise SystemExit('shadowed by the working directory')\n")


def test_a_child_command_ignores_a_package_in_its_working_directory(tmp_path: Path) -> None:
    _shadow(tmp_path)
    done = subprocess.run(
        [*CLI, "--help"], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert "shadowed" not in done.stderr and "stagecast" in done.stdout


def test_without_the_flag_the_working_directory_wins(tmp_path: Path) -> None:
    """What `-P` prevents (so the test above can fail): plain `-m` imports the shadow."""
    _shadow(tmp_path)
    plain = [part for part in CLI if part != "-P"]
    done = subprocess.run(
        [*plain, "--help"], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert done.returncode != 0 and "shadowed by the working directory" in done.stderr
