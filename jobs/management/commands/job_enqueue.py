"""`manage.py job_enqueue NAME --arguments JSON [--count N] [--idempotency-key K] [--order-key K]`: enqueue a declared
durable job from the command line (an operator's one-off, a script); prints the new jobs' ids as JSON."""

import json

from django.core.management.base import BaseCommand, CommandError
from django.db import transaction

from jobs import publishing
from jobs.durable import Enqueue, job_definition, job_definitions


class Command(BaseCommand):
    help = "Enqueue a declared durable job (jobs/durable.py) with keyword arguments given as a JSON object."

    def add_arguments(self, parser) -> None:
        parser.add_argument("name", help="the job's declared name, e.g. shop.sync_order")
        parser.add_argument(
            "--arguments", default="{}", help="its keyword arguments as a JSON object: '{\"order_id\": 7}'"
        )
        parser.add_argument("--count", type=int, default=1, help="how many runs with these arguments (default 1)")
        parser.add_argument("--idempotency-key", default="", help="with --count 1: the job's idempotency key")
        parser.add_argument("--order-key", default="", help="jobs of one order key run one after another")

    def handle(self, *args, name: str, arguments: str, count: int, idempotency_key: str, order_key: str, **options):
        definition = job_definition(name)
        if definition is None:
            known = ", ".join(sorted(job_definitions())) or "none"
            raise CommandError(f"no job named {name!r}; the declared jobs are: {known}")
        try:
            kwargs = json.loads(arguments)
        except ValueError as exc:
            raise CommandError(
                f"--arguments is not JSON ({exc}); give an object such as '{{\"order_id\": 7}}'"
            ) from None
        if not isinstance(kwargs, dict):
            raise CommandError("--arguments must be a JSON object of keyword arguments")
        if count < 1 or (idempotency_key and count != 1):
            raise CommandError("--count must be at least 1, and exactly 1 with --idempotency-key")
        try:
            with transaction.atomic():
                jobs = definition.enqueue_many(Enqueue(kwargs, idempotency_key, order_key) for _ in range(count))
        except TypeError as exc:
            raise CommandError(str(exc)) from None
        publishing.shutdown()  # the messages are published before the command exits (or left to the relay)
        self.stdout.write(json.dumps([job.pk for job in jobs]))
