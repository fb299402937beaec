"""mask_personal_data: what an operator sees of a job's arguments."""

import pytest

from jobs.masking import mask_personal_data


@pytest.mark.parametrize(
    ("value", "masked"),
    [
        ("ada@example.com", "a***@example.com"),
        ("Ada.Lovelace+news@mail.example.co.uk", "A***@mail.example.co.uk"),
        ("+14155550199", "+141******99"),
        ("+442071838750", "+442*******50"),
        ("fGzA1b2c3d4e5f6g7h8:APA91bHx-token_value", "fGzA…"),
        ("0123456789abcdef", "0123…"),
    ],
)
def test_personal_values_are_masked(value, masked):
    assert mask_personal_data(value) == masked


@pytest.mark.parametrize(
    "value",
    [
        "6f1c2a4e-8b1d-4c1e-9a7b-1234567890ab",  # a row id
        "6f1c2a4e8b1d4c1e9a7b1234567890ab",  # the same UUID without hyphens
        "billing.sync_invoice",  # a job name
        "order_shipped",  # shorter than a token
        "+12345",  # too short to be a phone number
        "",
    ],
)
def test_ids_job_names_and_short_values_are_left_alone(value):
    assert mask_personal_data(value) == value


def test_addresses_inside_prose_are_masked_but_long_words_are_not():
    message = "provider_refused_recipient: ada@invalid.example and +15005550001 are not deliverable"
    assert mask_personal_data(message) == (
        "provider_refused_recipient: a***@invalid.example and +150******01 are not deliverable"
    )


def test_dicts_and_lists_are_walked_and_keys_and_non_strings_kept():
    arguments = {
        "args": ["6f1c2a4e-8b1d-4c1e-9a7b-1234567890ab"],
        "to": "ada@example.com",
        "recipients": [{"phone": "+14155550199"}, {"token": "cV9aBcDeFgHiJkLmNoP:APA91b"}],
        "attempt": 3,
        "urgent": True,
        "note": None,
    }
    assert mask_personal_data(arguments) == {
        "args": ["6f1c2a4e-8b1d-4c1e-9a7b-1234567890ab"],
        "to": "a***@example.com",
        "recipients": [{"phone": "+141******99"}, {"token": "cV9a…"}],
        "attempt": 3,
        "urgent": True,
        "note": None,
    }


def test_masking_returns_a_copy_and_leaves_the_stored_value_whole():
    arguments = {"to": "ada@example.com"}
    mask_personal_data(arguments)
    assert arguments == {"to": "ada@example.com"}
