"""The optional access gate: who gets past the first line of ``dashboard.py``.

Off by default: the server binds to 127.0.0.1 (``.streamlit/config.toml``), so only this computer
reaches it. To share the dashboard on a LAN, turn on one of:

- a shared password, from the environment variable ``FLOWER_PROBE_PASSWORD`` or ``password`` in
  ``.streamlit/secrets.toml`` (the environment wins);
- Streamlit's built-in OpenID Connect login (``st.login``), when ``secrets.toml`` has an ``[auth]``
  section (see Streamlit's authentication docs; it needs the Authlib package).

``require_access()`` runs in ``dashboard.py`` before navigation and again as the first statement of
every page script: a visitor who has not passed the gate gets the login form and ``st.stop()``, so no
page script, workspace path, job or run is ever sent to them, whichever way Streamlit reaches a page
(a fresh server runs a ``pages/`` folder's deep link in its old multipage mode, without the entry file).
Calling it again once the visitor is through costs nothing and draws nothing.
"""

from __future__ import annotations

import hmac
import os
import time
from collections.abc import Mapping

import streamlit as st

PASSWORD_ENV = "FLOWER_PROBE_PASSWORD"
_SESSION_KEY = "flower_probe_access_granted"
# A wrong password costs the guesser this long before the form comes back: slows guessing over the
# LAN without bothering someone who mistyped once.
_FAILED_ATTEMPT_DELAY_S = 1.0


def _secrets() -> Mapping:
    # st.secrets raises on access when no secrets.toml exists; no file means no secrets.
    return st.secrets if st.secrets.load_if_toml_exists() else {}


def configured_password() -> str | None:
    """The shared password, or None when the password gate is off (unset or empty)."""
    password = os.environ.get(PASSWORD_ENV) or _secrets().get("password")
    return str(password) if password else None


def oidc_providers() -> list[str] | None:
    """Provider names of the ``[auth]`` secrets section ([] for a single unnamed provider); None when off."""
    auth = _secrets().get("auth")
    if not auth:
        return None
    return [name for name, value in auth.items() if isinstance(value, Mapping)]


def password_matches(*, entered: str, expected: str) -> bool:
    """Constant-time comparison, so response timing does not leak how much of a guess was right."""
    return hmac.compare_digest(entered.encode("utf-8"), expected.encode("utf-8"))


def _oidc_gate(providers: list[str]) -> None:
    if st.user.is_logged_in:
        return
    st.title("Flower Probe")
    st.write("Sign in to use this dashboard.")
    for provider in providers or [None]:
        label = f"Log in with {provider}" if provider else "Log in"
        if st.button(label, icon=":material/login:", key=f"login-{provider}"):
            try:
                st.login(provider)
            except Exception as exc:  # Authlib missing or [auth] incomplete: fail closed, say why
                st.error(f"Login is configured in secrets.toml [auth] but cannot start: {exc}", icon=":material/error:")
    st.stop()


def _password_gate(expected: str) -> None:
    if st.session_state.get(_SESSION_KEY):
        return
    st.title("Flower Probe")
    with st.form("flower-probe-login"):
        entered = st.text_input("Password", type="password", help="Ask whoever runs this dashboard.")
        submitted = st.form_submit_button("Enter", icon=":material/login:")
    if submitted:
        if password_matches(entered=entered, expected=expected):
            st.session_state[_SESSION_KEY] = True
            st.rerun()
        time.sleep(_FAILED_ATTEMPT_DELAY_S)
        st.error("Wrong password.", icon=":material/lock:")
    st.stop()


def access_controls() -> None:
    """The signed-in user and a log-out button, for the sidebar (drawn once per run by ``ui.jobs.sidebar``)."""
    if oidc_providers() is not None and st.user.is_logged_in:
        st.caption(f"Signed in as {st.user.get('email') or st.user.get('name') or 'user'}")
        if st.button("Log out", icon=":material/logout:", key="flower-probe-logout"):
            st.logout()


# Set once dashboard.py has run in this process: from then on Streamlit is in st.navigation mode (a test
# harness that resets Streamlit's own flag between runs, such as AppTest, then needs no rerun either).
_entry_file_has_run = False


def _leave_multipage_v1() -> None:
    """Rerun in ``st.navigation`` mode when Streamlit ran a ``pages/`` script on its own.

    Until some script in the process has called ``st.navigation``, Streamlit 1.67 treats a ``pages/`` folder
    beside the entry file as a multipage-v1 app: a deep link such as ``/classify`` on a fresh server runs
    ``pages/classify.py`` alone, without ``dashboard.py`` (no sidebar, no navigation). The page's own gate
    already keeps a visitor out; this sends the visitor through the entry file too, by clearing the class flag
    Streamlit reads for that mode (it sets the same flag itself once ``st.navigation`` runs) and rerunning
    before anything is drawn. Streamlit has no public switch for it.
    """
    from streamlit.runtime.pages_manager import PagesManager

    if PagesManager.uses_pages_directory:
        PagesManager.uses_pages_directory = False
        st.rerun()


def require_access(*, entry_file: bool = False) -> None:
    """Let the visitor through, or show a login form and stop the script run.

    OIDC login wins when both it and a password are configured; with neither, everyone on the
    network the server listens on gets in (the default listens on this computer only). ``entry_file``
    is True only in ``dashboard.py``, whose own ``st.navigation`` call leaves multipage-v1 mode; a page
    script run alone leaves it here (see ``_leave_multipage_v1``).
    """
    global _entry_file_has_run
    if entry_file:
        _entry_file_has_run = True
    elif not _entry_file_has_run:
        _leave_multipage_v1()
    providers = oidc_providers()
    if providers is not None:
        _oidc_gate(providers)
        return
    expected = configured_password()
    if expected is not None:
        _password_gate(expected)
