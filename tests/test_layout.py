"""Project layout rules that protect users."""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_no_pages_folder_beside_the_entry_file():
    # With a pages/ folder next to dashboard.py, a fresh Streamlit server serves a deep link such as
    # /compare by running pages/compare.py on its own (multipage v1 mode), skipping dashboard.py's
    # password gate. The page scripts therefore live in app_pages/.
    assert not (ROOT / "pages").exists()
    assert (ROOT / "app_pages" / "home.py").exists()


def test_engine_never_imports_streamlit():
    offenders = [p.name for p in (ROOT / "core").glob("*.py") if "import streamlit" in p.read_text()]
    assert offenders == []
