"""Every console script the installed package declares: it is importable as declared, and
answers ``--version`` and ``--help`` with exit 0 on stdout, as a user's shell sees it."""

from __future__ import annotations

from importlib.metadata import distribution

import pytest
from clitools import run_main

from amnet import __version__

SCRIPTS = {
    e.name: e.value for e in distribution("amnet").entry_points if e.group == "console_scripts"
}


def test_the_commands_are_installed() -> None:
    assert {"amnet-train", "amnet-eval", "amnet-export", "amnet-infer", "amnet-serve"} <= set(
        SCRIPTS
    )


@pytest.mark.parametrize(("name", "target"), sorted(SCRIPTS.items()))
def test_version_and_help(name: str, target: str) -> None:
    module, _, function = target.partition(":")
    assert function == "main", target
    version = run_main(module, "--version")
    assert (version.returncode, version.stderr) == (0, "")
    assert version.stdout == f"{name} {__version__}\n"
    usage = run_main(module, "--help")
    assert usage.returncode == 0 and usage.stderr == ""
    assert name in usage.stdout
