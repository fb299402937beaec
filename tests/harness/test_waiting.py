"""wait_until: the one polling helper of the harness and the tests."""

import itertools
import time

import pytest

from harness.waiting import WaitTimeout, wait_until


def test_the_first_truthy_answer_is_returned():
    answers = iter([None, 0, "", {"id": 7}])
    assert wait_until(lambda: next(answers), timeout=5, interval=0.001) == {"id": 7}


def test_a_timeout_answers_false_after_a_last_look_at_the_deadline():
    calls = itertools.count(1)
    started = time.monotonic()
    assert wait_until(lambda: next(calls) and False, timeout=0.2, interval=0.05) is False
    assert 0.2 <= time.monotonic() - started < 0.5
    assert next(calls) >= 4 + 1


def test_a_zero_timeout_still_asks_once():
    assert wait_until(lambda: "yes", timeout=0) == "yes"


def test_a_timeout_with_what_raises_naming_it():
    with pytest.raises(WaitTimeout, match=r"timed out after 0.1s waiting for the campaign to complete"):
        wait_until(lambda: False, timeout=0.1, interval=0.02, what="the campaign to complete")


def test_only_the_ignored_exceptions_count_as_false():
    answers = iter([ConnectionError("still starting"), ConnectionError("still starting"), True])

    def service_up() -> bool:
        answer = next(answers)
        if isinstance(answer, Exception):
            raise answer
        return answer

    assert wait_until(service_up, timeout=5, interval=0.001, ignoring=(ConnectionError,)) is True
    with pytest.raises(KeyError):
        wait_until(lambda: {}["missing"], timeout=5, ignoring=(ConnectionError,))
