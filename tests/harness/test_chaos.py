"""Fault drills against an isolated copy of the platform: nothing is lost or sent twice when a piece fails.

Every drill in its quick form (smaller bursts and campaigns, fewer repetitions, shorter faults);
`make chaos` runs the full ones.
Set CHAOS_SEED to replay the random kill moments and victims of a failed run.
"""

import os
import random
import shutil

import pytest

from harness.chaos.catalogue import DRILLS, run_drill
from harness.chaos.drills import QUICK
from harness.chaos.stack import ChaosStack

pytestmark = pytest.mark.e2e

SEED = int(os.environ.get("CHAOS_SEED") or random.randrange(1 << 30))


@pytest.fixture(scope="module")
def stack(request):
    failures_before = request.session.testsfailed
    with ChaosStack() as stack:
        yield stack
    if request.session.testsfailed == failures_before:
        shutil.rmtree(stack.run_dir, ignore_errors=True)  # logs are kept only when a drill failed


@pytest.fixture(scope="module")
def rng() -> random.Random:
    return random.Random(SEED)


@pytest.mark.parametrize("number", sorted(DRILLS))
def test_drill_loses_nothing_and_sends_nothing_twice(stack, rng, number):
    row = run_drill(stack, number, QUICK, rng)

    explanation = f"{row['drill']} (CHAOS_SEED={SEED}): {row['notes']}\n{stack.failure_report()}"
    assert row["lost"] == 0, explanation
    assert row["duplicates"] == 0, explanation
    assert row["ok"], explanation


def test_no_log_line_of_the_drills_carries_an_address_in_clear(stack):
    """Runs after the drills: every worker, web and beat log line they produced has its addresses masked."""
    found = stack.unmasked_personal_data()
    assert not found, "\n".join(found[:20])
