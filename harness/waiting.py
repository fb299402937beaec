"""The one way the harness and the tests wait for something: poll a predicate until it holds or time is up."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Literal, TypeVar

T = TypeVar("T")


class WaitTimeout(TimeoutError):
    """A wait that was told what it waited for ran out of time; the message names it."""


def wait_until(
    predicate: Callable[[], T],
    *,
    timeout: float,
    interval: float = 0.1,
    what: str | None = None,
    ignoring: tuple[type[BaseException], ...] = (),
) -> T | Literal[False]:
    """Call `predicate` every `interval` seconds until it returns something truthy, and return that.

    It is called at least once, and once more when `timeout` is up.  On timeout the answer is
    False, or, when `what` says what was awaited, WaitTimeout is raised naming it.  Exceptions
    of the `ignoring` classes count as a false answer (a service still coming up, a database
    stopped on purpose); any other propagates at once.
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = predicate()
        except ignoring:
            value = None
        if value:
            return value
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            if what is not None:
                raise WaitTimeout(f"timed out after {timeout:g}s waiting for {what}")
            return False
        time.sleep(min(interval, remaining))
