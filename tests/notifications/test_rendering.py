"""Templates render strictly: unknown template, missing channel version or variable is a validation error."""

import pytest
from django.core.exceptions import ValidationError

from notifications.rendering import render, template_channels


def test_password_reset_ships_for_every_channel():
    assert template_channels("password_reset") == ["email", "sms", "push"]


def test_email_has_subject_text_and_html_with_the_code():
    message = render(template="password_reset", channel="email", context={"code": "987654"})
    assert message.subject == "Your password reset code"
    assert "987654" in message.text and "987654" in message.html


def test_missing_variable_names_it():
    with pytest.raises(ValidationError) as caught:
        render(template="order_shipped", channel="email", context={"order_number": "A1"})
    assert caught.value.message_dict == {"context": ["missing variable(s) for template 'order_shipped': name"]}


def test_unknown_template_lists_the_available_ones():
    with pytest.raises(ValidationError) as caught:
        render(template="nope", channel="email", context={})
    assert "password_reset" in caught.value.message_dict["template"][0]


def test_text_parts_are_not_html_escaped_but_html_is():
    message = render(template="newsletter", channel="email", context={"headline": "Tom & Jerry", "body": "<b>hi</b>"})
    assert message.subject == "Tom & Jerry"
    assert "&lt;b&gt;" in message.html


def test_sms_longer_than_twilio_allows_is_refused():
    with pytest.raises(ValidationError, match="limit is 1600"):
        render(template="newsletter", channel="sms", context={"headline": "x", "body": "y" * 2000})
