"""`manage.py provider_sandbox`: runs the local stand-in for the email, SMS and push vendors."""

from urllib.parse import urlsplit

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from harness.sandbox import server


def _port_of(url: str) -> int:
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise CommandError(f"SANDBOX_HTTP_URL={url!r} has an invalid port; fix it or pass --http-port.") from exc
    if port is None:
        return 443 if parts.scheme == "https" else 80
    return port


class Command(BaseCommand):
    help = (
        "Run the provider sandbox: Postmark, Twilio, FCM and Vonage look-alike HTTP routes and an SMTP server, "
        "recording every accepted message and taking faults at runtime (see /_sandbox/*)."
    )
    # The sandbox uses no models, URLs or templates; a half-configured project must
    # not stop the stand-in that its own tests need.
    requires_system_checks: list[str] = []

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--host", default="127.0.0.1", help="Address to bind (default 127.0.0.1).")
        parser.add_argument(
            "--http-port", type=int, default=None, help="HTTP port (default: the port of settings.SANDBOX_HTTP_URL)."
        )
        parser.add_argument(
            "--smtp-port", type=int, default=None, help="SMTP port (default: settings.SANDBOX_SMTP_PORT)."
        )
        parser.add_argument(
            "--reports-to",
            default="",
            help="The platform's base URL: Postmark, Twilio and Vonage report each accepted message there "
            "(delivered 95 %%, bounced 2 %%, opened 40 %%, after about half a second), signed with the settings' secrets.",
        )

    def handle(
        self, *args: object, host: str, http_port: int | None, smtp_port: int | None, reports_to: str, **options: object
    ) -> None:
        if http_port is None:
            http_port = _port_of(settings.SANDBOX_HTTP_URL)
        if smtp_port is None:
            smtp_port = settings.SANDBOX_SMTP_PORT

        def announce(bound_host: str, bound_http: int, bound_smtp: int) -> None:
            self.stdout.write(server.describe(bound_host, bound_http, bound_smtp))
            # Launchers read this line from a pipe, where stdout is block-buffered.
            self.stdout.flush()

        try:
            server.run(
                host=host, http_port=http_port, smtp_port=smtp_port, on_ready=announce, reports=_reports(reports_to)
            )
        except OSError as exc:
            raise CommandError(
                f"cannot listen on {host} (HTTP {http_port}, SMTP {smtp_port}): {exc.strerror or exc}; "
                "stop whatever holds the port or pass --http-port/--smtp-port."
            ) from exc


def _reports(base_url: str) -> list[dict]:
    """Delivery reports of the three vendors that send them, to the platform at `base_url`."""
    if not base_url:
        return []
    base = base_url.rstrip("/")
    if not base.startswith(("http://", "https://")):
        raise CommandError(f"--reports-to {base_url!r}: give the platform's base URL, e.g. http://127.0.0.1:8000")
    mix = {"delay_ms": 500, "delivered": 0.95, "bounced": 0.02, "opened": 0.4}
    twilio = next((p for p in settings.NOTIFICATIONS_PROVIDERS.get("sms", []) if p["name"] == "twilio"), None)
    return [
        {
            "provider": "postmark",
            "url": f"{base}/anymail/postmark/tracking/",
            "auth": settings.ANYMAIL["WEBHOOK_SECRET"],
            **mix,
        },
        {
            "provider": "twilio",
            "url": f"{base}/receipts/twilio",
            "secret": (twilio or {}).get("options", {}).get("auth_token", ""),
            **mix,
        },
        {"provider": "vonage", "url": f"{base}/receipts/vonage", "secret": settings.VONAGE_SIGNATURE_SECRET, **mix},
    ]
