"""Configuration: the one place that reads environment variables and secrets files.

Defaults first, then `.streamlit/secrets.toml` (for the API settings), then the
environment, then explicit overrides from a caller (a CLI flag or a test).
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DATA_DIR = PROJECT_ROOT / "data"
DEFAULT_API_URL = "https://api2.ploomes.com"
DEFAULT_TIMEZONE = "America/Sao_Paulo"


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
    journal_retention_days: float = 0.0  # 0 keeps the journal forever
    journal_segment_bytes: int = 16 * 1024 * 1024  # a segment file: ~10k deliveries
    receiver_url: str = "http://127.0.0.1:8000"
    callback_url: str | None = None
    api_url: str = DEFAULT_API_URL
    user_key: str | None = field(default=None, repr=False)

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
    "PLOOMES_JOURNAL_RETENTION_DAYS": ("journal_retention_days", float),
    "PLOOMES_JOURNAL_SEGMENT_BYTES": ("journal_segment_bytes", int),
    "PLOOMES_RECEIVER_URL": ("receiver_url", str),
    "PLOOMES_CALLBACK_URL": ("callback_url", str),
    "PLOOMES_API_URL": ("api_url", str),
    "PLOOMES_USER_KEY": ("user_key", str),
}


def _split_keys(raw: str) -> tuple[str, ...]:
    return tuple(k.strip() for k in raw.split(",") if k.strip())


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
    for key in ("PLOOMES_USER_KEY", "PLOOMES_API_URL", "PLOOMES_CALLBACK_URL"):
        if secrets.get(key):
            values[_ENV[key][0]] = str(secrets[key])
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
    if "data_dir" in values:
        values["data_dir"] = Path(values["data_dir"]).expanduser().resolve()
    settings = replace(Settings(), **values)
    _check(settings)
    return settings


def _check(settings: Settings) -> None:
    if settings.max_body_bytes < 1024:
        raise ConfigError("PLOOMES_MAX_BODY_BYTES must be at least 1024")
    if settings.duplicate_window_seconds < 0:
        raise ConfigError("PLOOMES_DUPLICATE_WINDOW_SECONDS cannot be negative")
    if settings.journal_retention_days < 0:
        raise ConfigError("PLOOMES_JOURNAL_RETENTION_DAYS cannot be negative")
    if settings.journal_segment_bytes < 4096:
        raise ConfigError("PLOOMES_JOURNAL_SEGMENT_BYTES must be at least 4096")
    try:
        ZoneInfo(settings.timezone)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ConfigError(f"unknown time zone {settings.timezone!r}") from exc
