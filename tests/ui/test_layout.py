"""Project layout rules that protect users: the requested top level, a gated page, a README layout that is true.

The layers themselves (pages -> ui -> core, core's packages in order, no Streamlit or Plotly in core) are
import-linter contracts in pyproject.toml, checked by ``lint-imports`` in CI (.ci/run), not tests here.
"""

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
REQUESTED_TOP_LEVEL = ["README.md", "requirements.txt", "dashboard.py", "core", "pages", "tests", ".streamlit"]


def _navigation_pages() -> list[str]:
    from ui.navigation import NOT_FOUND, PAGES

    return [page.script for page in (*PAGES, NOT_FOUND)]


def test_the_requested_top_level_exists():
    missing = [name for name in REQUESTED_TOP_LEVEL if not (ROOT / name).exists()]
    assert missing == []
    assert not (ROOT / "app_pages").exists()


def test_every_page_script_is_in_the_navigation_and_enforces_the_gate_first():
    # With a pages/ folder beside dashboard.py, a fresh Streamlit server may run a deep link such as
    # /compare as pages/compare.py alone (multipage v1 mode), without dashboard.py's gate: so each page
    # calls require_access() as its first statement after the imports.
    scripts = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "pages").glob("*.py") if p.name != "__init__.py")
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


def _readme_layout() -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    start = text.index("\n## Layout")
    end = text.find("\n## ", start + 1)
    return text[start : end if end != -1 else len(text)]


def test_the_readme_layout_names_every_package_and_ui_module():
    """The README's Layout section is true: every core package and every ui/ module is named in it."""
    layout = _readme_layout()
    packages = sorted(f"core/{p.parent.name}/" for p in (ROOT / "core").glob("*/__init__.py"))
    ui_modules = sorted(p.name for p in (ROOT / "ui").glob("*.py") if p.name != "__init__.py")
    assert packages, "core/ has no packages"
    missing = [name for name in packages if name not in layout]
    missing += [f"ui/{name}" for name in ui_modules if not re.search(rf"(?<![\w/]){re.escape(name)}", layout)]
    assert missing == [], f"README.md's Layout section does not name {missing}"
    named = set(re.findall(r"\b(core/[a-z_]+/)", layout))
    ui_block = layout.split("\ncore/")[0].split("\nui/")[-1]  # the lines between ui/ and core/
    named |= {f"ui/{name}" for name in re.findall(r"(?<![\w/])([a-z_]+\.py)\b", ui_block)}
    gone = sorted(name for name in named if not (ROOT / name).exists())
    assert gone == [], f"README.md's Layout section names what no longer exists: {gone}"
