"""Who is using the dashboard: sign-in with Streamlit's `st.login` (OpenID Connect) and roles.

- With an `[auth]` section in `.streamlit/secrets.toml` everyone signs in, and the
  allow-lists (`PLOOMES_DASHBOARD_VIEWERS`, `PLOOMES_DASHBOARD_ADMINS`) say who may enter
  and who may change things.
- Without one, only the machine's own user gets in: the dashboard must listen on a
  loopback address (`server.address` in `.streamlit/config.toml`, 127.0.0.1 as shipped)
  and the request must come straight from this machine, not through a reverse proxy
  (whose forwarding headers give it away). Anyone else sees how to set up sign-in, never
  data.

Pages show write actions to admins only; the check that counts is in `ploomes.actions`.
"""

from __future__ import annotations

import ipaddress
import time
from dataclasses import dataclass

import streamlit as st
from streamlit.errors import StreamlitAPIException

from ploomes.actions import Actor, Role, role_of
from ploomes.config import Settings
from ploomes.i18n import N_, _
from views.common import settings
from views.text import plain

SIGN_IN_HOURS = 12  # a sign-in older than this is asked again (the cookie lasts 30 days)
# Headers a reverse proxy adds: a request that carries one did not come from this machine.
FORWARDING_HEADERS = ("X-Forwarded-For", "Forwarded", "X-Real-Ip")
PROXY_HEADERS = (*FORWARDING_HEADERS, "X-Forwarded-Host", "X-Forwarded-Proto")
ADMIN_PAGES = frozenset({"views/audit.py"})
ROLE_NAMES = {"viewer": N_("viewer"), "admin": N_("admin")}

AUTH_EXAMPLE = """\
# top-level keys go before the first [section]
PLOOMES_DASHBOARD_ADMINS = "ana@empresa.com.br"
PLOOMES_DASHBOARD_VIEWERS = "@empresa.com.br"   # a whole domain, or addresses

[auth]
redirect_uri = "https://monitor.empresa.com.br/oauth2callback"
cookie_secret = "<python3 -c 'import secrets; print(secrets.token_urlsafe(32))'>"
client_id = "<from Google Cloud, or the Entra app registration>"
client_secret = "<its secret>"
# Google Workspace:
server_metadata_url = "https://accounts.google.com/.well-known/openid-configuration"
# Microsoft Entra, one tenant (<tenant> = the directory id):
# server_metadata_url = "https://login.microsoftonline.com/<tenant>/v2.0/.well-known/\
openid-configuration"
"""
LOCAL_ONLY = """\
# .streamlit/config.toml: listen on this machine only (no sign-in needed)
[server]
address = "127.0.0.1"
"""
TUNNEL = "ssh -L 8501:127.0.0.1:8501 <this machine>   # then open http://127.0.0.1:8501"


@dataclass(frozen=True)
class Access:
    """The user of this session: who (`actor`), their role, and whether they signed in."""

    actor: Actor
    role: Role
    signed_in: bool

    @property
    def is_admin(self) -> bool:
        """Return whether this user may change things."""
        return self.role is Role.ADMIN


@dataclass(frozen=True)
class _Refusal:
    why: str  # setup | sign_in | expired | no_email | unverified | refused
    email: str | None = None


def auth_configured() -> bool:
    """Return whether sign-in is set up (an `[auth]` section in the secrets)."""
    try:
        return "auth" in st.secrets
    except FileNotFoundError:  # no secrets file at all
        return False


def _header(name: str) -> str | None:
    value = st.context.headers.get(name)
    return value if isinstance(value, str) and value.strip() else None


def _client_ip() -> str | None:
    # Streamlit gives None for a loopback connection (a browser or proxy on this machine)
    value = st.context.ip_address
    return value if isinstance(value, str) else None


def forwarded_for() -> str | None:
    """Return what a reverse proxy said about the client, if one did (unverified)."""
    return next((value for name in FORWARDING_HEADERS if (value := _header(name))), None)


def _listens_on_loopback() -> bool:
    address = st.get_option("server.address")
    if not address:
        return False  # unset: Streamlit listens on every interface
    if address == "localhost":
        return True
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False  # a host name: it may well resolve to a public address


def served_locally() -> bool:
    """Return whether this request can only come from this machine's own user."""
    client = _client_ip()
    try:
        from_loopback = client is None or ipaddress.ip_address(client).is_loopback
    except ValueError:
        from_loopback = False
    return (_listens_on_loopback() and from_loopback
            and not any(_header(name) for name in PROXY_HEADERS))


def _email() -> str | None:
    for claim in ("email", "preferred_username"):  # Entra may give only the latter
        value = st.user.get(claim)
        if isinstance(value, str) and "@" in value:
            return value.strip().lower()
    return None


def _decide(config: Settings) -> Access | _Refusal:
    client, forwarded = _client_ip(), forwarded_for()
    if not auth_configured():
        if served_locally():
            return Access(Actor(None, client, forwarded), Role.ADMIN, signed_in=False)
        return _Refusal("setup")
    if not st.user.get("is_logged_in"):
        return _Refusal("sign_in")
    issued = st.user.get("iat")
    if isinstance(issued, int | float) and time.time() - issued > SIGN_IN_HOURS * 3600:
        return _Refusal("expired")
    email = _email()
    if email is None:
        return _Refusal("no_email")
    if str(st.user.get("email_verified", "")).lower() == "false":
        return _Refusal("unverified", email)
    actor = Actor(email, client, forwarded)
    role = role_of(actor, config)
    if role is None:
        return _Refusal("refused", email)
    return Access(actor, role, signed_in=True)


def _providers() -> list[str | None]:
    """Return the named providers of `[auth]` (`[auth.google]`…), or [None] for one unnamed."""
    section = st.secrets.get("auth", {})
    named = [name for name, value in section.items()
             if hasattr(value, "get") and value.get("client_id")]
    return [*named] or [None]


def _sign_in_buttons() -> None:
    for provider in _providers():
        label = (_("Sign in") if provider is None
                 else _("Sign in with {provider}").format(provider=plain(provider)))
        if st.button(label, key=f"sign_in_{provider or 'default'}", type="primary"):
            try:
                st.login(provider)
            except StreamlitAPIException as exc:  # a misconfigured [auth] section
                st.error(_("Sign-in is not set up correctly: {problem}").format(
                    problem=plain(exc)))


def _sign_out_button(in_sidebar: bool = False) -> None:
    if (st.sidebar if in_sidebar else st).button(_("Sign out"), key="sign_out"):
        st.logout()


def _show_refusal(refusal: _Refusal, config: Settings) -> None:
    who = plain(refusal.email or "")
    if refusal.why == "setup":
        st.title(_("Sign-in is not set up"))
        st.write(_("This dashboard shows personal data from the CRM and can be reached from "
                   "other machines (it does not listen on 127.0.0.1 only, or the request "
                   "came through a reverse proxy), so it opens only after sign-in."))
        st.subheader(_("Set up sign-in (Google Workspace or Microsoft Entra)"))
        st.write(_("Register the dashboard as a web application with your identity provider, "
                   "with the redirect URI `https://<its public address>/oauth2callback`, "
                   "then add to `.streamlit/secrets.toml` beside `dashboard.py` and restart "
                   "it:"))
        st.code(AUTH_EXAMPLE, language="toml")
        st.subheader(_("Or keep it on this machine"))
        st.code(LOCAL_ONLY, language="toml")
        st.write(_("and reach it from another computer through an SSH tunnel:"))
        st.code(TUNNEL, language="bash")
    elif refusal.why in ("sign_in", "expired"):
        st.title(_("Ploomes webhook monitor"))
        st.write(_("Your sign-in is more than {hours} hours old: sign in again to continue.")
                 .format(hours=SIGN_IN_HOURS)
                 if refusal.why == "expired" else
                 _("Sign in with your company account to continue."))
        _sign_in_buttons()
    else:
        st.title(_("Not allowed"))
        if refusal.why == "no_email":
            st.error(_("Your sign-in carried no e-mail address, and access is granted by "
                       "address. (Microsoft Entra: add the optional claim `email` to the ID "
                       "token.)"))
        elif refusal.why == "unverified":
            st.error(_("{who} is not verified by your identity provider, so it cannot be "
                       "used to sign in here.").format(who=who))
        elif not (config.dashboard_admins or config.dashboard_viewers):
            st.error(_("{who} signed in, but nobody is allowed in yet: set "
                       "PLOOMES_DASHBOARD_ADMINS (and PLOOMES_DASHBOARD_VIEWERS) in the "
                       "environment or `.streamlit/secrets.toml`.").format(who=who))
        else:
            st.error(_("{who} may not use this dashboard. Ask an admin to add the address, "
                       "or its domain, to PLOOMES_DASHBOARD_VIEWERS.").format(who=who))
        _sign_out_button()


def current() -> Access:
    """Return who uses this session; for anyone who may not, show why and stop the page."""
    config = settings()
    decision = _decide(config)
    if isinstance(decision, _Refusal):
        _show_refusal(decision, config)
        st.stop()
        raise RuntimeError("unreachable")  # st.stop() ends the script run
    return decision


def gate() -> Access:
    """Like `current`, and say in the sidebar who is signed in (with a sign-out button)."""
    access = current()
    if access.signed_in:
        st.sidebar.caption(_("Signed in as {name} · {role}").format(
            name=plain(access.actor.name), role=_(ROLE_NAMES.get(access.role.value,
                                                                 access.role.value))))
        _sign_out_button(in_sidebar=True)
    else:
        st.sidebar.caption(_("This machine, without sign-in · admin"))
    return access


def require_admin(access: Access) -> None:
    """Stop a page that only admins may see, saying so."""
    if not access.is_admin:
        st.error(_("This page is for admins (PLOOMES_DASHBOARD_ADMINS)."))
        st.stop()


def page_allowed(path: str, access: Access) -> bool:
    """Return whether a page file is in this user's navigation."""
    return access.is_admin or path not in ADMIN_PAGES
