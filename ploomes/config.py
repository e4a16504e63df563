"""Configuration: the one place that reads environment variables and secrets files.

Defaults first, then `.streamlit/secrets.toml` (for the API settings), then the
environment, then explicit overrides from a caller (a CLI flag or a test).
"""

from __future__ import annotations

import os
import re
import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DATA_DIR = PROJECT_ROOT / "data"
DEFAULT_API_URL = "https://api2.ploomes.com"
DEFAULT_TIMEZONE = "America/Sao_Paulo"
# The interface's languages (ploomes.i18n): Brazilian Portuguese by default, English, and
# "pseudo" (the Portuguese marked ⟦…⟧, to spot text that skipped the catalog)
LANGUAGES = ("pt_BR", "en", "pseudo")
DEFAULT_LANGUAGE = "pt_BR"


class ConfigError(ValueError):
    """A setting has a value the project cannot use."""


@dataclass(frozen=True)
class Settings:
    """Every setting of the project, resolved once and passed around explicitly."""

    data_dir: Path = DEFAULT_DATA_DIR
    validation_keys: tuple[str, ...] = ()
    max_body_bytes: int = 1024 * 1024
    duplicate_window_seconds: float = 120.0
    timezone: str = DEFAULT_TIMEZONE
    language: str = DEFAULT_LANGUAGE
    journal_retention_days: float = 0.0  # 0 keeps the journal forever
    journal_segment_bytes: int = 16 * 1024 * 1024  # a segment file: ~10k deliveries
    # A request's line and headers must arrive within this many seconds (counted from
    # the connection's start, or from the first byte of a later request on it)
    header_timeout_seconds: float = 10.0
    max_connections: int = 1000  # open connections to the receiver at once
    # Connections from one address that may be sending their headers at once; beyond
    # that, the one that has been sending longest is closed
    max_pending_per_client: int = 32
    receiver_url: str = "http://127.0.0.1:8000"
    callback_url: str | None = None
    api_url: str = DEFAULT_API_URL
    user_key: str | None = field(default=None, repr=False)
    # Who may use the dashboard once sign-in is configured: e-mail addresses or whole
    # domains ("@empresa.com.br"); admins may also change things (see ploomes.actions).
    dashboard_viewers: tuple[str, ...] = ()
    dashboard_admins: tuple[str, ...] = ()
    # Alerts (ploomes.alerts): where a rule without its own Apprise URL notifies (a
    # secret), the dashboard's address for links in messages, the business hours silence
    # rules count in (days 0 = Monday … 6 = Sunday, in `timezone`), how often time-based
    # rules are looked at, and the retry schedule (comma-separated seconds)
    alerts_notify: str | None = field(default=None, repr=False)
    dashboard_url: str = "http://127.0.0.1:8501"
    business_days: str = "0-4"
    business_hours: str = "08:00-18:00"
    alerts_tick_seconds: float = 30.0
    alerts_retry: str = "0,5,300,1800,7200,18000,36000,36000"

    @property
    def tz(self) -> ZoneInfo:
        """Return the display time zone."""
        return ZoneInfo(self.timezone)

    @property
    def db_path(self) -> Path:
        """Return the DuckDB file of this data dir."""
        return self.data_dir / "ploomes.duckdb"

    @property
    def journal_dir(self) -> Path:
        """Return the journal folder of this data dir."""
        return self.data_dir / "journal"


def mask_secret(value: str | None) -> str:
    """Return a masked form of a secret that shows at most its last 4 characters."""
    if not value:
        return "(none)"
    tail = value[-4:] if len(value) >= 12 else ""
    return "••••" + tail


_ENV = {
    "PLOOMES_DATA_DIR": ("data_dir", Path),
    "PLOOMES_MAX_BODY_BYTES": ("max_body_bytes", int),
    "PLOOMES_DUPLICATE_WINDOW_SECONDS": ("duplicate_window_seconds", float),
    "PLOOMES_TIMEZONE": ("timezone", str),
    "PLOOMES_LANGUAGE": ("language", str),
    "PLOOMES_JOURNAL_RETENTION_DAYS": ("journal_retention_days", float),
    "PLOOMES_JOURNAL_SEGMENT_BYTES": ("journal_segment_bytes", int),
    "PLOOMES_HEADER_TIMEOUT_SECONDS": ("header_timeout_seconds", float),
    "PLOOMES_MAX_CONNECTIONS": ("max_connections", int),
    "PLOOMES_MAX_PENDING_PER_CLIENT": ("max_pending_per_client", int),
    "PLOOMES_RECEIVER_URL": ("receiver_url", str),
    "PLOOMES_CALLBACK_URL": ("callback_url", str),
    "PLOOMES_API_URL": ("api_url", str),
    "PLOOMES_USER_KEY": ("user_key", str),
    "PLOOMES_ALERTS_NOTIFY": ("alerts_notify", str),
    "PLOOMES_DASHBOARD_URL": ("dashboard_url", str),
    "PLOOMES_BUSINESS_DAYS": ("business_days", str),
    "PLOOMES_BUSINESS_HOURS": ("business_hours", str),
    "PLOOMES_ALERTS_TICK_SECONDS": ("alerts_tick_seconds", float),
    "PLOOMES_ALERTS_RETRY": ("alerts_retry", str),
}


def _split_keys(raw: str) -> tuple[str, ...]:
    return tuple(k.strip() for k in raw.split(",") if k.strip())


# Allow-lists of the dashboard: environment variable → Settings field.
_ALLOW_LISTS = {"PLOOMES_DASHBOARD_VIEWERS": "dashboard_viewers",
                "PLOOMES_DASHBOARD_ADMINS": "dashboard_admins"}
_DOMAIN = re.compile(r"(?:[a-z0-9](?:[a-z0-9-]*[a-z0-9])?\.)+[a-z]{2,}")


def parse_allow_list(name: str, raw: object) -> tuple[str, ...]:
    """Return an allow-list (comma-separated text or a TOML list) as lower-case entries.

    An entry is an e-mail address (`ana@empresa.com.br`) or a domain, written
    `@empresa.com.br` or `empresa.com.br` and kept as `@empresa.com.br`; anything else is
    a ConfigError naming the setting.
    """
    items = raw if isinstance(raw, list | tuple) else str(raw).split(",")
    entries: list[str] = []
    for item in items:
        entry = str(item).strip().lower()
        if not entry:
            continue
        local, _, domain = entry.rpartition("@")
        if not _DOMAIN.fullmatch(domain) or any(c.isspace() or c in ",;<>@" for c in local):
            raise ConfigError(f"{name}: {str(item).strip()!r} is neither an e-mail address nor "
                              "a domain such as @empresa.com.br")
        entries.append(entry if local else "@" + domain)
    return tuple(dict.fromkeys(entries))


def _read_secrets(path: Path) -> dict:
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        return {}
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from exc


def load_settings(env: dict[str, str] | None = None, secrets_path: Path | None = None,
                  **overrides: Any) -> Settings:
    """Resolve settings from defaults, secrets.toml, the environment and overrides."""
    env = dict(os.environ if env is None else env)
    values: dict = {}
    secrets = _read_secrets(secrets_path or PROJECT_ROOT / ".streamlit" / "secrets.toml")
    for key in ("PLOOMES_USER_KEY", "PLOOMES_API_URL", "PLOOMES_CALLBACK_URL",
                "PLOOMES_ALERTS_NOTIFY"):
        if secrets.get(key):
            values[_ENV[key][0]] = str(secrets[key])
    for key, attr in _ALLOW_LISTS.items():
        raw_list = env.get(key, "").strip() or secrets.get(key)
        if raw_list:
            values[attr] = parse_allow_list(key, raw_list)
    for name, (attr, kind) in _ENV.items():
        raw = env.get(name, "").strip()
        if not raw:
            continue
        try:
            values[attr] = kind(raw)
        except ValueError as exc:
            raise ConfigError(f"{name} must be a {kind.__name__}, got {raw!r}") from exc
    if env.get("PLOOMES_VALIDATION_KEYS", "").strip():
        values["validation_keys"] = _split_keys(env["PLOOMES_VALIDATION_KEYS"])
    values.update({k: v for k, v in overrides.items() if v is not None})
    if "language" in values:
        values["language"] = _language(values["language"])
    if "data_dir" in values:
        values["data_dir"] = Path(values["data_dir"]).expanduser().resolve()
    settings = replace(Settings(), **values)
    _check(settings)
    return settings


def _language(raw: str) -> str:
    # pt-BR, pt_br and pt all mean Brazilian Portuguese; en-US and en_GB mean English
    code = raw.strip().replace("-", "_").lower()
    for language in LANGUAGES:
        if code == language.lower() or code.split("_")[0] == language.lower():
            return language
    if code == "pt":
        return "pt_BR"
    raise ConfigError(f"PLOOMES_LANGUAGE must be pt_BR or en, got {raw!r}")


def _check(settings: Settings) -> None:
    if settings.max_body_bytes < 1024:
        raise ConfigError("PLOOMES_MAX_BODY_BYTES must be at least 1024")
    if settings.duplicate_window_seconds < 0:
        raise ConfigError("PLOOMES_DUPLICATE_WINDOW_SECONDS cannot be negative")
    if settings.journal_retention_days < 0:
        raise ConfigError("PLOOMES_JOURNAL_RETENTION_DAYS cannot be negative")
    if settings.journal_segment_bytes < 4096:
        raise ConfigError("PLOOMES_JOURNAL_SEGMENT_BYTES must be at least 4096")
    if not settings.header_timeout_seconds > 0:
        raise ConfigError("PLOOMES_HEADER_TIMEOUT_SECONDS must be positive")
    if settings.max_connections < 2:
        raise ConfigError("PLOOMES_MAX_CONNECTIONS must be at least 2")
    if settings.max_pending_per_client < 1:
        raise ConfigError("PLOOMES_MAX_PENDING_PER_CLIENT must be at least 1")
    if not settings.alerts_tick_seconds > 0:
        raise ConfigError("PLOOMES_ALERTS_TICK_SECONDS must be positive")
    try:
        ZoneInfo(settings.timezone)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ConfigError(f"unknown time zone {settings.timezone!r}") from exc
