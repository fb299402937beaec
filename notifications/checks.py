"""System checks: a misspelt or missing provider setting stops start-up with a message that says what to fix."""

from django.conf import settings
from django.core.checks import Error, register
from django.utils.module_loading import import_string

from settings.topology import CHANNELS


@register()
def check_providers(app_configs, **kwargs) -> list[Error]:
    errors: list[Error] = []
    config = getattr(settings, "NOTIFICATIONS_PROVIDERS", None)
    if not isinstance(config, dict):
        return [
            Error("NOTIFICATIONS_PROVIDERS must be a dict of channel -> list of providers.", id="notifications.E001")
        ]
    unknown = set(config) - set(CHANNELS)
    if unknown:
        errors.append(
            Error(
                f"NOTIFICATIONS_PROVIDERS names unknown channel(s): {', '.join(sorted(unknown))}.",
                hint=f"Channels are {', '.join(CHANNELS)}.",
                id="notifications.E002",
            )
        )
    names: set[str] = set()
    for channel in CHANNELS:
        entries = config.get(channel)
        if not entries:
            errors.append(
                Error(f"NOTIFICATIONS_PROVIDERS has no provider for channel {channel!r}.", id="notifications.E003")
            )
            continue
        for index, entry in enumerate(entries):
            where = f"NOTIFICATIONS_PROVIDERS[{channel!r}][{index}]"
            extra = set(entry) - {"name", "backend", "options"}
            if extra or "name" not in entry or "backend" not in entry:
                errors.append(
                    Error(
                        f"{where} must have 'name' and 'backend' (and optionally 'options'); got {sorted(entry)}.",
                        id="notifications.E004",
                    )
                )
                continue
            if entry["name"] in names:
                errors.append(
                    Error(f"{where}: provider name {entry['name']!r} is used twice.", id="notifications.E005")
                )
            names.add(entry["name"])
            try:
                cls = import_string(entry["backend"])
            except ImportError as exc:
                errors.append(
                    Error(
                        f"{where}: cannot import {entry['backend']!r}: {exc}.",
                        hint="Use the dotted path of a module's Provider class, e.g. notifications.providers.smtp.Provider.",
                        id="notifications.E006",
                    )
                )
                continue
            if getattr(cls, "channel", None) != channel:
                errors.append(
                    Error(
                        f"{where}: {entry['backend']} delivers on {getattr(cls, 'channel', '?')!r}, not {channel!r}.",
                        id="notifications.E007",
                    )
                )
    return errors


@register()
def check_campaign_settings(app_configs, **kwargs) -> list[Error]:
    """Quiet hours and campaign sizes are parsed at start-up, not on the first send."""
    from notifications.consent import parse_quiet_hours

    errors: list[Error] = []
    try:
        parse_quiet_hours(settings.MARKETING_QUIET_HOURS)
    except ValueError as exc:
        errors.append(Error(str(exc), id="notifications.E008"))
    for name in ("CAMPAIGN_SEGMENT_SIZE", "CAMPAIGN_BATCH_SIZE"):
        if getattr(settings, name) < 1:
            errors.append(Error(f"{name} must be at least 1, not {getattr(settings, name)}.", id="notifications.E009"))
    return errors


@register()
def check_retention_kinds(app_configs, **kwargs) -> list[Error]:
    """The domain's keeping times (notifications/retention.py) are all set; their values are checked by jobs.E006."""
    missing = {"notifications", "marketing_notifications", "events"} - set(getattr(settings, "RETENTION_DAYS", {}))
    return [
        Error(f"RETENTION_DAYS has no {kind!r} (days to keep them).", id="notifications.E010")
        for kind in sorted(missing)
    ]
