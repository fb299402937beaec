"""What untrusted input may contain, checked once for every way in (API, admin, services): JSON without NaN or
Infinity, text without NUL characters or lone UTF-16 surrogates, and a template's context of exactly the
variables the template declares (message_templates/<name>/variables.json), each of its declared type.

Every refusal is a ValidationError naming the field (a JSON path such as `context.code`) and the reason.
"""

import json
import re
from functools import cache
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db.models.expressions import RawSQL
from django.utils import timezone

from notifications.rendering import TEMPLATE_DIR, template_names

#: A caller-chosen key (an Idempotency-Key, a cancellation key): printable ASCII without spaces, and what to say
#: when one is not.
CALLER_KEY_PATTERN = r"^[\x21-\x7e]{1,200}$"
CALLER_KEY = re.compile(CALLER_KEY_PATTERN)
CALLER_KEY_RULE = "1 to 200 printable ASCII characters, no spaces"
#: Characters PostgreSQL cannot store (NUL) or UTF-8 cannot encode (lone surrogates), and other C0 controls
#: but tab, line feed and carriage return.
_FORBIDDEN_TEXT = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff]")
#: What a declared variable may say about itself.
_DECLARATION_KEYS = {"type", "max_length", "pattern", "secret", "description"}
#: Longest text a declared string variable takes when its declaration sets no max_length.
DEFAULT_MAX_LENGTH = 1000


class MalformedJSON(ValidationError):
    """The text is not JSON at all (as opposed to JSON with a value that is refused)."""


def parse_json_object(raw: bytes | str, *, field: str = "body") -> dict[str, Any]:
    """The JSON object in `raw`; MalformedJSON or ValidationError naming `field` (or the path inside it) otherwise."""
    try:
        value = json.loads(raw, parse_constant=_refuse_constant)
    except UnicodeDecodeError:
        raise MalformedJSON({field: "not UTF-8"}) from None
    except json.JSONDecodeError as exc:
        raise MalformedJSON({field: f"not valid JSON: {exc}"}) from None
    except ValueError as exc:  # NaN, Infinity
        raise ValidationError({field: str(exc)}) from None
    if not isinstance(value, dict):
        raise ValidationError({field: "must be a JSON object"})
    text_check(value, path=field if field != "body" else "")
    return value


def _refuse_constant(name: str) -> float:
    raise ValueError(f"{name} is not a JSON number; send a number or a string")


def text_check(value: Any, *, path: str) -> None:
    """Refuse NUL, C0 controls and lone surrogates anywhere in `value` (keys included), naming the path."""
    if isinstance(value, str):
        bad = _FORBIDDEN_TEXT.search(value)
        if bad:
            raise ValidationError(
                {path or "body": f"contains the character U+{ord(bad.group()):04X}, which is not allowed"}
            )
    elif isinstance(value, dict):
        for key, item in value.items():
            text_check(key, path=f"{path}.{key}" if path else str(key))
            text_check(item, path=f"{path}.{key}" if path else str(key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            text_check(item, path=f"{path}[{index}]")


@cache
def template_variables(template: str) -> dict[str, dict[str, Any]]:
    """The variables `template` declares, by name (read once per process; templates ship with the code)."""
    path = TEMPLATE_DIR / template / "variables.json"
    if not path.is_file():
        return {}
    declared = json.loads(path.read_text())
    for name, declaration in declared.items():
        unknown = set(declaration) - _DECLARATION_KEYS
        if unknown or declaration.get("type") not in ("string", "integer"):
            raise ValueError(
                f"{path}: variable {name!r} must declare type string or integer and only {_DECLARATION_KEYS}"
            )
    return declared


def secret_variables(template: str) -> frozenset[str]:
    """The variables of `template` that are secrets (a reset code): never shown, logged or kept after sending."""
    return frozenset(name for name, d in template_variables(template).items() if d.get("secret"))


_NAME = re.compile(r"^[a-z][a-z0-9_]*$")


@cache
def wipe_secrets_sql(alias: str = "") -> str:
    """An SQL expression: the row's context without its template's secret variables (for an UPDATE ... SET)."""
    cases = []
    for template in template_names():
        names = sorted(secret_variables(template))
        if names:
            if not _NAME.match(template) or not all(_NAME.match(n) for n in names):
                raise ValueError(f"template {template!r} or its secret variables {names} are not plain names")
            keys = ",".join(names)
            cases.append(f"WHEN '{template}' THEN {alias}context - '{{{keys}}}'::text[]")
    if not cases:
        return f"{alias}context"
    return f"CASE {alias}template {' '.join(cases)} ELSE {alias}context END"


def wiped_context() -> RawSQL:
    """The row's context without its template's secrets, as the value of an update (a final row keeps none).

    Bandit B611 (RawSQL): built from template and variable names checked against ^[a-z][a-z0-9_]*$.
    """
    return RawSQL(wipe_secrets_sql(), ())  # nosec B611


def without_secrets(template: str, context: dict[str, Any]) -> dict[str, Any]:
    """`context` with its secret values hidden, for showing it."""
    secret = secret_variables(template)
    return {name: "•••••• (secret)" if name in secret else value for name, value in context.items()}


def context_check(template: str, context: Any) -> None:
    """Refuse a context that is not exactly what `template` declares: unknown variables, wrong types, too long."""
    if not isinstance(context, dict):
        raise ValidationError({"context": "must be a JSON object"})
    text_check(context, path="context")
    if template not in template_names():
        return  # rendering names the unknown template
    declared = template_variables(template)
    errors: dict[str, str] = {}
    for name, value in context.items():
        field = f"context.{name}"
        declaration = declared.get(name)
        if declaration is None:
            known = ", ".join(sorted(declared)) or "none"
            errors[field] = f"template {template!r} has no variable {name!r}; it takes: {known}"
        elif declaration["type"] == "integer":
            if not isinstance(value, int) or isinstance(value, bool):
                errors[field] = "must be an integer"
        elif not isinstance(value, str):
            errors[field] = "must be a string"
        elif len(value) > declaration.get("max_length", DEFAULT_MAX_LENGTH):
            errors[field] = f"at most {declaration.get('max_length', DEFAULT_MAX_LENGTH)} characters"
        elif "pattern" in declaration and not re.fullmatch(declaration["pattern"], value):
            errors[field] = declaration.get("description") or f"must match {declaration['pattern']}"
    if errors:
        raise ValidationError(errors)


def send_at_problem(send_at) -> str | None:
    """Why `send_at` (a notification's or a campaign's) cannot be used, or None."""
    if not hasattr(send_at, "tzinfo") or not hasattr(send_at, "date"):
        return "must be a date and time (ISO 8601 with a time zone, e.g. 2027-01-31T09:00:00Z)"
    if timezone.is_naive(send_at):
        return "needs a time zone (e.g. Z or +01:00): a time without one means different moments to different people"
    if send_at - timezone.now() > settings.NOTIFICATIONS_MAX_SCHEDULE_AHEAD:
        return f"at most {settings.NOTIFICATIONS_MAX_SCHEDULE_AHEAD.days} days ahead"
    return None
