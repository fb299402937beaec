"""Reading /metrics as Prometheus would: every sample by name and labels."""

import base64

from django.conf import settings
from prometheus_client.parser import text_string_to_metric_families


def scrape(client) -> dict[tuple[str, tuple], float]:
    auth = "Basic " + base64.b64encode(settings.METRICS_BASIC_AUTH.encode()).decode()
    response = client.get("/metrics", HTTP_AUTHORIZATION=auth)
    assert response.status_code == 200
    samples = {}
    for family in text_string_to_metric_families(response.content.decode()):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples, metric: str, **labels) -> float:
    return samples.get((metric, tuple(sorted(labels.items()))), 0.0)
