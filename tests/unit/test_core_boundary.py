"""The layering is a test: the core stays torch-free and server-free, the server torch-free.

Each import runs in a fresh interpreter, so what another test imported earlier cannot hide a
dependency. See CONVENTIONS' room plan: bench/ > export/, models/, service/ > polynl_core/.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CORE_MODULES = sorted(p.stem for p in (ROOT / "polynl_core").glob("*.py") if p.stem != "__init__")


def _loaded_after(statement: str) -> set[str]:
    code = f"import sys\n{statement}\nprint('\\n'.join(sorted(sys.modules)))"
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120, check=True
    )
    return {name.split(".")[0] for name in done.stdout.split()}


def test_importing_the_core_loads_no_torch_fastapi_or_onnxruntime() -> None:
    statement = "; ".join(f"import polynl_core.{name}" for name in CORE_MODULES)
    loaded = _loaded_after(statement)
    assert not loaded & {
        "torch",
        "fastapi",
        "starlette",
        "onnxruntime",
        "onnx",
        "service",
        "models",
        "export",
    }


def test_importing_the_service_app_loads_no_torch() -> None:
    loaded = _loaded_after("import service.app")
    assert "torch" not in loaded and "models" not in loaded and "export" not in loaded


def _imported_roots(path: Path) -> set[str]:
    roots = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            roots |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            roots.add(node.module.split(".")[0])
    return roots


@pytest.mark.parametrize(
    ("room", "forbidden"),
    [
        ("polynl_core", {"service", "models", "export", "bench", "torch", "onnxruntime", "fastapi"}),
        ("models", {"service", "export", "bench"}),
        ("export", {"service", "bench"}),
        ("service", {"models", "export", "bench", "torch"}),
    ],
)
def test_no_room_imports_upward_or_sideways(room: str, forbidden: set[str]) -> None:
    """Even a lazy import inside a function counts: the source is read, not executed."""
    offenders = {
        str(path.relative_to(ROOT)): sorted(_imported_roots(path) & forbidden)
        for path in sorted((ROOT / room).rglob("*.py"))
        if _imported_roots(path) & forbidden
    }
    assert offenders == {}
