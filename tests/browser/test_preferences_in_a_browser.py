"""A recipient's preference centre in a real browser (Debian's Chromium driven by Playwright): open the link from a
marketing e-mail, untick a channel and a topic, set quiet hours, save, and see the page and the row agree."""

import pytest
from playwright.sync_api import Page, expect

from notifications.models import Recipient
from notifications.unsubscribe import preferences_url

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


def link_path(recipient: Recipient) -> str:
    """The path of the recipient's link (the link itself names PUBLIC_BASE_URL, not the test server)."""
    return "/" + preferences_url(recipient_id=recipient.pk).split("://", 1)[1].split("/", 1)[1]


@pytest.fixture
def recipient() -> Recipient:
    return Recipient.objects.create(
        email="grace@example.com",
        email_marketing_consent=True,
        sms_marketing_consent=True,
        tags=["news", "offers"],
        timezone="Europe/Paris",
    )


def test_a_recipient_changes_their_preferences_and_the_page_shows_what_was_saved(page: Page, recipient):
    page.goto(link_path(recipient))
    expect(page.get_by_role("heading", name="Your preferences")).to_be_visible()
    expect(page.get_by_label("E-mail", exact=True)).to_be_checked()
    expect(page.get_by_label("SMS")).to_be_checked()
    expect(page.get_by_label("offers")).to_be_checked()

    page.get_by_label("SMS").uncheck()
    page.get_by_label("offers").uncheck()
    page.get_by_label("Quiet hours").fill("22-7")
    page.get_by_role("button", name="Save").click()

    expect(page.locator("#saved")).to_contain_text("Saved.")
    expect(page.get_by_label("E-mail", exact=True)).to_be_checked()
    expect(page.get_by_label("SMS")).not_to_be_checked()
    expect(page.get_by_label("news")).to_be_checked()
    expect(page.get_by_label("offers")).not_to_be_checked()
    expect(page.get_by_label("Quiet hours")).to_have_value("22-7")
    expect(page.get_by_label("Time zone")).to_have_value("Europe/Paris")

    recipient.refresh_from_db()
    assert (recipient.email_marketing_consent, recipient.sms_marketing_consent) == (True, False)
    assert (recipient.muted_topics, recipient.quiet_hours, recipient.timezone) == (["offers"], "22-7", "Europe/Paris")


def test_a_mistyped_field_is_shown_with_its_error_and_nothing_is_saved(page: Page, recipient):
    page.goto(link_path(recipient))
    page.get_by_label("SMS").uncheck()
    page.get_by_label("Time zone").fill("Europe/Pariss")
    page.get_by_role("button", name="Save").click()

    expect(page.locator("#not-saved")).to_be_visible()
    expect(page.get_by_text("Unknown time zone 'Europe/Pariss'")).to_be_visible()
    recipient.refresh_from_db()
    assert (recipient.sms_marketing_consent, recipient.timezone) == (True, "Europe/Paris")


def test_another_site_cannot_frame_the_page(page: Page, recipient, live_server):
    # set_content returns after the load event, which waits for the frame to load or be refused.
    page.set_content(f'<iframe id="framed" src="{live_server.url}{link_path(recipient)}"></iframe>')
    expect(page.frame_locator("#framed").locator("#preferences")).to_have_count(0)
    page.goto(link_path(recipient))  # the same link, opened as a page of its own, shows the form
    expect(page.locator("#preferences")).to_be_visible()
