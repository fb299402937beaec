"""Check that PostgreSQL and Redis answer (creating the database if it is missing); say how to start what is down."""

import sys

import psycopg
import redis
from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

POSTGRES_START = "pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start"
REDIS_START = 'redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no'


class Command(BaseCommand):
    help = (
        "Exit 0 when PostgreSQL and Redis are reachable; otherwise print one line per service saying how to start it."
    )

    def handle(self, *args, **options) -> None:
        problems = [p for p in (self._check_postgres(), self._check_redis()) if p]
        if problems:
            for problem in problems:
                sys.stderr.write(problem + "\n")
            raise CommandError("start the services above, then try again")
        self.stdout.write("PostgreSQL and Redis are up.")

    def _check_postgres(self) -> str | None:
        db = settings.DATABASES["default"]
        params = {
            "host": db.get("HOST") or "127.0.0.1",
            "port": db.get("PORT") or 5432,
            "user": db.get("USER") or "postgres",
            "password": db.get("PASSWORD") or None,
            "connect_timeout": 3,
        }
        try:
            psycopg.connect(dbname=db["NAME"], **params).close()
            return None
        except psycopg.OperationalError as exc:
            if f'database "{db["NAME"]}" does not exist' not in str(exc):
                return (
                    f"PostgreSQL is not reachable at {params['host']}:{params['port']} ({str(exc).strip().splitlines()[-1]}); "
                    f"start it with: {POSTGRES_START}"
                )
        try:
            with psycopg.connect(dbname="postgres", autocommit=True, **params) as conn:
                conn.execute(f'CREATE DATABASE "{db["NAME"]}"')
        except psycopg.Error as exc:
            return f"PostgreSQL database {db['NAME']!r} is missing and could not be created: {exc}"
        self.stdout.write(f"Created PostgreSQL database {db['NAME']!r}.")
        return None

    def _check_redis(self) -> str | None:
        try:
            redis.Redis.from_url(settings.CELERY_BROKER_URL, socket_connect_timeout=2, socket_timeout=2).ping()
        except redis.RedisError as exc:
            return f"Redis is not reachable at {settings.CELERY_BROKER_URL} ({exc}); start it with: {REDIS_START}"
        return None
