"""Build each channel's ordered provider list from settings.NOTIFICATIONS_PROVIDERS, once per process."""

import threading

from django.conf import settings
from django.utils.module_loading import import_string

from notifications.providers.base import BaseProvider

_lock = threading.Lock()
_providers: dict[str, list[BaseProvider]] = {}


def providers_for(channel: str) -> list[BaseProvider]:
    """The channel's providers, primary first; instances are reused for their connections."""
    with _lock:
        if channel not in _providers:
            _providers[channel] = [build_provider(entry) for entry in settings.NOTIFICATIONS_PROVIDERS[channel]]
        return _providers[channel]


def provider_names() -> list[str]:
    """Every configured provider's name (each is also the name of its breaker and its rate limiter)."""
    return [entry["name"] for entries in settings.NOTIFICATIONS_PROVIDERS.values() for entry in entries]


def provider_lookups() -> dict[str, bool]:
    """Every configured provider's name, and whether its vendor can be asked about a message (`can_look_up`)."""
    return {
        entry["name"]: import_string(entry["backend"]).can_look_up
        for entries in settings.NOTIFICATIONS_PROVIDERS.values()
        for entry in entries
    }


def build_provider(entry: dict) -> BaseProvider:
    cls = import_string(entry["backend"])
    return cls(name=entry["name"], timeout=settings.PROVIDER_TIMEOUT_SECONDS, **entry.get("options", {}))


def reset_providers() -> None:
    """Close and forget every provider (settings changed, or the worker is stopping)."""
    with _lock:
        for providers in _providers.values():
            for provider in providers:
                provider.close()
        _providers.clear()
