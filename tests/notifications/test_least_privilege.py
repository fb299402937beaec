"""Least privilege in the admin: who may mint an API token for whom, the key shown once and kept nowhere, and
staff who may only look can act on nothing (no admin action, no operations page without the view rights)."""

import pytest
from django.contrib import admin
from django.contrib.auth.models import Permission
from django.test import RequestFactory

from notifications.models import ApiToken

pytestmark = pytest.mark.django_db
ADD_URL = "/admin/notifications/apitoken/add/"


def staff(django_user_model, username: str, *codenames: str):
    user = django_user_model.objects.create_user(username=username, password="x", is_staff=True)
    user.user_permissions.add(*Permission.objects.filter(codename__in=codenames))
    return user


def token_form(user_id: int, **switches) -> dict:
    return {"user": str(user_id), "may_send_security": "", **switches}


def test_staff_who_may_add_tokens_cannot_mint_one_for_the_superuser(client, django_user_model, admin_user):
    clerk = staff(django_user_model, "clerk", "add_apitoken", "view_apitoken")
    client.force_login(clerk)

    response = client.post(ADD_URL, token_form(admin_user.pk))

    assert response.status_code == 200
    assert "Select a valid choice" in response.content.decode()
    assert not ApiToken.objects.filter(user=admin_user).exists()


def test_staff_mint_for_themselves_and_see_the_key_once_never_in_a_message(client, django_user_model):
    clerk = staff(django_user_model, "clerk", "add_apitoken", "view_apitoken")
    client.force_login(clerk)

    response = client.post(ADD_URL, token_form(clerk.pk))

    assert response.status_code == 200
    page = response.content.decode()
    token = ApiToken.objects.get(user=clerk)
    key = page.split('id="api-token-key">')[1].split("<")[0]
    assert ApiToken.objects.for_key(key) == token
    assert "messages" not in response.cookies and not list(response.context["messages"])
    assert key not in client.get("/admin/notifications/apitoken/").content.decode(), "shown once"


def test_a_superuser_may_mint_for_another_user(admin_client, django_user_model):
    robot = django_user_model.objects.create_user(username="robot")
    assert admin_client.post(ADD_URL, token_form(robot.pk, may_send_security="on")).status_code == 200
    assert ApiToken.objects.get(user=robot).may_send_security


def test_a_view_only_user_is_offered_no_action_on_any_model(django_user_model):
    viewer = staff(django_user_model, "viewer")
    for model in admin.site._registry:
        viewer.user_permissions.add(
            Permission.objects.get(
                codename=f"view_{model._meta.model_name}", content_type__app_label=model._meta.app_label
            )
        )
    viewer = django_user_model.objects.get(pk=viewer.pk)  # fresh permission cache
    request = RequestFactory().get("/admin/")
    request.user = viewer

    offered = {
        f"{model._meta.label}: {name}"
        for model, model_admin in admin.site._registry.items()
        for name in model_admin.get_actions(request)
    }

    assert offered == set(), offered


def test_a_view_only_user_cannot_revoke_a_token_by_posting_the_action(client, django_user_model, admin_user):
    token, _ = ApiToken.issue(admin_user)
    viewer = staff(django_user_model, "viewer", "view_apitoken")
    client.force_login(viewer)

    client.post(
        "/admin/notifications/apitoken/", {"action": "revoke", "_selected_action": [str(token.pk)], "index": "0"}
    )

    token.refresh_from_db()
    assert token.revoked_at is None


def test_the_operations_page_needs_the_view_rights_on_what_it_shows(client, django_user_model):
    client.force_login(staff(django_user_model, "intern"))
    assert client.get("/admin/operations/").status_code == 403
    assert client.get("/admin/operations/data").status_code == 403

    client.force_login(staff(django_user_model, "oncall", "view_deadletter", "view_campaign"))
    assert client.get("/admin/operations/").status_code == 200
