"""Message templates: one folder per template under message_templates/, one file per channel part.

Rendering is strict: a variable the context lacks is an error at submit time, not a
blank in a message a user already received.
"""

import re
from dataclasses import dataclass
from functools import cache, lru_cache
from pathlib import Path
from typing import Any

from django.core.exceptions import ValidationError
from django.template import Context, Engine, TemplateSyntaxError

TEMPLATE_DIR = Path(__file__).resolve().parent / "message_templates"

#: Parts each channel needs (required) and may have (optional), as file names.
CHANNEL_PARTS: dict[str, dict[str, bool]] = {
    "email": {"email_subject.txt": True, "email_body.txt": True, "email_body.html": False},
    "sms": {"sms.txt": True},
    "push": {"push_title.txt": True, "push_body.txt": True},
}
#: Twilio refuses longer bodies; FCM's payload limit is 4 KB.
MAX_LENGTH = {"sms.txt": 1600, "push_title.txt": 200, "push_body.txt": 3000}

_MISSING = "\x00missing:%s\x00"
_MISSING_RE = re.compile("\x00missing:(.*?)\x00")


@dataclass(frozen=True)
class RenderedMessage:
    subject: str = ""
    text: str = ""
    html: str = ""
    title: str = ""


@lru_cache(maxsize=1)
def _engine() -> Engine:
    return Engine(
        dirs=[str(TEMPLATE_DIR)],
        string_if_invalid=_MISSING,
        loaders=[("django.template.loaders.cached.Loader", ["django.template.loaders.filesystem.Loader"])],
    )


# Templates ship with the code, so the catalogue is read once per process (the
# template engine caches compiled templates the same way).
@lru_cache(maxsize=1)
def template_names() -> list[str]:
    return sorted(p.name for p in TEMPLATE_DIR.iterdir() if p.is_dir())


@cache
def template_channels(name: str) -> list[str]:
    folder = TEMPLATE_DIR / name
    return [
        channel
        for channel, parts in CHANNEL_PARTS.items()
        if all((folder / part).is_file() for part, required in parts.items() if required)
    ]


@cache
def _parts(template: str, channel: str) -> tuple[str, ...]:
    folder = TEMPLATE_DIR / template
    return tuple(part for part in CHANNEL_PARTS[channel] if (folder / part).is_file())


def render(*, template: str, channel: str, context: dict[str, Any]) -> RenderedMessage:
    """Render every part of `template` for `channel`; ValidationError names the field at fault."""
    if template not in template_names():
        raise ValidationError({"template": f"unknown template {template!r}; available: {', '.join(template_names())}"})
    if channel not in template_channels(template):
        raise ValidationError({"template": f"template {template!r} has no {channel} version"})
    parts: dict[str, str] = {}
    missing: set[str] = set()
    for part in _parts(template, channel):
        try:
            compiled = _engine().get_template(f"{template}/{part}")
        except TemplateSyntaxError as exc:
            raise ValidationError({"template": f"template {template!r} part {part} is broken: {exc}"}) from exc
        text = compiled.render(Context(context, autoescape=part.endswith(".html")))
        missing.update(_MISSING_RE.findall(text))
        parts[part] = text.strip() if not part.endswith(".html") else text
        limit = MAX_LENGTH.get(part)
        if limit and len(parts[part]) > limit:
            raise ValidationError({"context": f"{part} renders to {len(parts[part])} characters; the limit is {limit}"})
    if missing:
        raise ValidationError(
            {"context": f"missing variable(s) for template {template!r}: {', '.join(sorted(missing))}"}
        )
    if channel == "email":
        return RenderedMessage(
            subject=" ".join(parts["email_subject.txt"].split()),
            text=parts["email_body.txt"],
            html=parts.get("email_body.html", ""),
        )
    if channel == "sms":
        return RenderedMessage(text=parts["sms.txt"])
    return RenderedMessage(title=parts["push_title.txt"], text=parts["push_body.txt"])
