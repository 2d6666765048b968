"""The shape of the package, as ARCHITECTURE.md states it: few modules at the top, every module
under 500 lines, every function under 60 (argparse builders aside), a docstring on each
subpackage saying what it owns and may import. The layers themselves: `lint-imports`."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "tlvision"
MAX_MODULE_LINES = 500
MAX_FUNCTION_LINES = 60
# argparse builders: one add_argument call after another, longer by nature, not by logic
ARGPARSE_BUILDERS = {
    "add_commands",
    "add_predict_command",
    "add_export_command",
    "add_serve_command",
}


def modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def test_at_most_eight_modules_at_the_top() -> None:
    top = sorted(path.name for path in PACKAGE.glob("*.py"))
    assert len(top) <= 8, top


@pytest.mark.parametrize("path", modules(), ids=lambda path: str(path.relative_to(PACKAGE)))
def test_modules_and_functions_stay_small(path: Path) -> None:
    source = path.read_text()
    assert len(source.splitlines()) <= MAX_MODULE_LINES
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            length = (node.end_lineno or node.lineno) - node.lineno + 1
            if node.name not in ARGPARSE_BUILDERS:
                assert length <= MAX_FUNCTION_LINES, f"{node.name}: {length} lines"


def test_every_subpackage_says_what_it_owns_and_may_import() -> None:
    for init in sorted(PACKAGE.glob("*/__init__.py")):
        docstring = ast.get_docstring(ast.parse(init.read_text())) or ""
        assert "import" in docstring.lower(), f"{init.parent.name}: say what it may import"


def test_the_import_contracts_hold() -> None:
    """lint-imports as CI runs it: the layers, no circles, independent built-ins."""
    result = subprocess.run(
        [str(Path(sys.executable).with_name("lint-imports")), "--no-cache"],
        cwd=PACKAGE.parents[1], capture_output=True, text=True,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:]
    assert "3 kept, 0 broken" in result.stdout
