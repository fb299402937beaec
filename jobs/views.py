"""The Prometheus endpoint: /metrics, behind basic auth (METRICS_BASIC_AUTH), never open."""

import base64
import binascii
import hmac

from celery import current_app
from django.conf import settings
from django.http import HttpRequest, HttpResponse
from django.views.decorators.http import require_GET
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from jobs.metrics import PlatformCollector


def _queue_names() -> list[str]:
    """Every queue the Celery app declares (CELERY_TASK_QUEUES): what the workers consume."""
    return [queue.name for queue in current_app.conf.task_queues or ()]


_registry = CollectorRegistry(auto_describe=False)
_registry.register(PlatformCollector(_queue_names))


def _authorized(request: HttpRequest) -> bool:
    scheme, _, encoded = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "basic":
        return False
    try:
        given = base64.b64decode(encoded, validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        return False
    return hmac.compare_digest(given.encode(), settings.METRICS_BASIC_AUTH.encode())


@require_GET
def metrics(request: HttpRequest) -> HttpResponse:
    if not _authorized(request):
        response = HttpResponse("authentication required\n", status=401, content_type="text/plain")
        response["WWW-Authenticate"] = 'Basic realm="metrics"'
        return response
    return HttpResponse(generate_latest(_registry), content_type=CONTENT_TYPE_LATEST)
