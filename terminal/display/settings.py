"""The ``[display]`` settings of the screen, read as strictly as terminal/config.py.

This module owns the ``[display]`` section of the settings file: its options,
their types and ranges, and the screen-related values it borrows from
``[terminal]`` (language and time zone). It reads them from the one loaded
``config.Settings`` (``from_settings``), never from the file itself; an
unknown option is a ``ConfigError`` naming section and option. It never opens
a socket, a device or the ledger; it only hands out a frozen
``DisplaySettings``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from terminal import config
from terminal.config import ConfigError, Section

# The staff PIN travels in plain HTTP between Chromium and the daemon on the
# same device; serving it to the network would expose it, so only loopback.
LOOPBACK_HOSTS = ("127.0.0.1", "::1", "localhost")


@dataclass(frozen=True)
class DisplaySettings:
    host: str  # loopback address the page is served on
    port: int  # 0 picks a free port (tests)
    language: str  # "zh" or "en", from [terminal] language
    timezone: str  # IANA name from [terminal] timezone; the page shows local time in it
    staff_pin: str  # digits; "" turns the staff panel off
    staff_tries: int  # wrong PINs in a row before the lockout
    staff_lockout_s: int  # how long the lockout lasts
    staff_idle_s: int  # the staff panel closes after this long untouched
    reversal_minutes: int  # how old a sale staff may still reverse
    verdict_seconds: int  # how long a verdict stays on screen
    offline_banner_after_s: int  # county server unreachable this long -> banner
    sound: bool  # a tone for accept, another for refuse
    max_clients: int  # event streams served at once
    client_queue: int  # events queued per stream before a slow stream is dropped

    @property
    def staff_enabled(self) -> bool:
        return bool(self.staff_pin)


def load(path: str | Path | None = None) -> DisplaySettings:
    """The ``[display]`` settings from ``path`` over the embedded defaults."""
    return from_settings(config.load(path))


def from_settings(settings: config.Settings) -> DisplaySettings:
    """The ``[display]`` table of the loaded settings, checked."""
    section = settings.section("display")
    result = DisplaySettings(
        host=section.get_str("host", LOOPBACK_HOSTS),
        port=section.get_int("port", 0, 65535),
        language=settings.language,
        timezone=settings.timezone.key,
        staff_pin=_pin(section),
        staff_tries=section.get_int("staff_tries", 1, 100),
        staff_lockout_s=section.get_int("staff_lockout_s", 1, 86400),
        staff_idle_s=section.get_int("staff_idle_s", 10, 3600),
        reversal_minutes=section.get_int("reversal_minutes", 1, 1440),
        verdict_seconds=section.get_int("verdict_seconds", 1, 60),
        offline_banner_after_s=section.get_int("offline_banner_after_s", 0, 86400),
        sound=_bool(section, "sound"),
        max_clients=section.get_int("max_clients", 1, 64),
        client_queue=section.get_int("client_queue", 4, 4096),
    )
    section.check_unused()
    return result


def _pin(section: Section) -> str:
    where = f"{section.origin}: [display] staff_pin"
    if "staff_pin" not in section.data:
        raise ConfigError(f"{where}: missing; add it to the settings file")
    section.used.add("staff_pin")
    value = section.data["staff_pin"]
    if not isinstance(value, str):
        # A TOML number would drop leading zeros ("0123" -> 123): insist on a quoted text.
        raise ConfigError(f'{where}: must be digits in quotes, such as "4821", got {value!r}')
    if value and not (value.isascii() and value.isdigit() and 4 <= len(value) <= 12):
        raise ConfigError(f"{where}: must be 4 to 12 digits, or empty to turn staff actions off")
    return value


def _bool(section: Section, option: str) -> bool:
    where = f"{section.origin}: [display] {option}"
    if option not in section.data:
        raise ConfigError(f"{where}: missing; add it to the settings file")
    section.used.add(option)
    value = section.data[option]
    if not isinstance(value, bool):
        raise ConfigError(f"{where}: must be true or false, got {value!r}")
    return value
