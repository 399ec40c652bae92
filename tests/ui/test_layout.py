"""Project layout rules that protect users: the requested top level, the engine without Streamlit, a gated page."""

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
REQUESTED_TOP_LEVEL = ["README.md", "requirements.txt", "dashboard.py", "core", "pages", "tests", ".streamlit"]


def _navigation_pages() -> list[str]:
    return re.findall(r'st\.Page\(\s*"([^"]+\.py)"', (ROOT / "dashboard.py").read_text())


def test_the_requested_top_level_exists():
    missing = [name for name in REQUESTED_TOP_LEVEL if not (ROOT / name).exists()]
    assert missing == []
    assert not (ROOT / "app_pages").exists()


def test_every_page_script_is_in_the_navigation_and_enforces_the_gate_first():
    # With a pages/ folder beside dashboard.py, a fresh Streamlit server may run a deep link such as
    # /compare as pages/compare.py alone (multipage v1 mode), without dashboard.py's gate: so each page
    # calls require_access() as its first statement after the imports.
    scripts = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "pages").glob("*.py"))
    assert scripts and sorted(_navigation_pages()) == scripts
    for script in scripts:
        body = ast.parse((ROOT / script).read_text()).body
        statements = [node for node in body if not isinstance(node, (ast.Import, ast.ImportFrom))]
        first = (
            statements[1]
            if isinstance(statements[0], ast.Expr) and isinstance(statements[0].value, ast.Constant)
            else statements[0]
        )
        assert ast.unparse(first) == "require_access()", f"{script} starts with {ast.unparse(first)!r}"


def _imported_modules(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def test_engine_never_imports_streamlit():
    # Any spelling: `import streamlit as st`, `from streamlit import ...`, `import streamlit.components.v1`,
    # also inside functions (ast.walk visits every node).
    offenders = [
        str(p.relative_to(ROOT))
        for p in (ROOT / "core").rglob("*.py")
        if any(name == "streamlit" or name.startswith("streamlit.") for name in _imported_modules(p))
    ]
    assert offenders == []


def test_core_never_imports_pages_or_ui():
    offenders = [
        str(p.relative_to(ROOT))
        for p in (ROOT / "core").rglob("*.py")
        if any(name.split(".")[0] in ("ui", "pages") for name in _imported_modules(p))
    ]
    assert offenders == []
