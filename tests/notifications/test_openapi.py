"""The API describes itself: an OpenAPI 3.1 document that validates and names every route the URLconf serves,
interactive docs for staff only, and the schema's refusals in the API's own error envelope."""

import pytest
from django.urls import URLPattern, URLResolver, get_resolver
from openapi_spec_validator import validate

pytestmark = pytest.mark.django_db
DOC = "/api/v1/openapi.json"


def served_api_routes() -> set[str]:
    """Every route under /api/v1/ the URLconf serves, as OpenAPI writes them (`{name}`)."""
    routes = set()

    def walk(patterns, prefix: str) -> None:
        for pattern in patterns:
            route = prefix + str(pattern.pattern)
            if isinstance(pattern, URLResolver):
                walk(pattern.url_patterns, route)
            elif isinstance(pattern, URLPattern) and route.startswith("api/v1/"):
                routes.add("/" + route)

    walk(get_resolver().url_patterns, "")
    return {
        r.replace("<int:", "{").replace("<str:", "{").replace("<", "{").replace(">", "}")
        for r in routes
        if r not in ("/api/v1/", "/api/v1/openapi.json", "/api/v1/docs")
    }


def test_the_document_is_openapi_3_1_that_validates_and_lists_every_route(client):
    response = client.get(DOC)

    assert response.status_code == 200
    document = response.json()
    assert document["openapi"].startswith("3.1")
    validate(document)
    served = served_api_routes()
    assert served, "the walk found the API's routes"
    assert served == set(document["paths"]), "every served route is described, and nothing else"


def test_every_operation_documents_its_refusals_and_the_token_it_needs(client):
    document = client.get(DOC).json()
    assert document["components"]["securitySchemes"]["TokenAuth"] == {
        "type": "apiKey",
        "in": "header",
        "name": "Authorization",
    }
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            answers = operation["responses"]
            assert {"400", "401", "403", "429", "503"} <= set(answers), (method, path)
            assert answers["400"]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/ErrorOut"}
            assert operation["security"] == [{"TokenAuth": []}], (method, path)
    submit = document["paths"]["/api/v1/notifications"]["post"]
    body = document["components"]["schemas"]["NotificationIn"]
    assert body["additionalProperties"] is False
    assert set(body["properties"]["priority"]["enum"]) == {"security", "transactional", "marketing"}
    assert any(p["name"] == "Idempotency-Key" and p["in"] == "header" for p in submit["parameters"])


def test_the_interactive_docs_are_for_staff_only(client, django_user_model):
    anonymous = client.get("/api/v1/docs")
    assert anonymous.status_code == 302 and "/admin/login/" in anonymous["Location"]

    user = django_user_model.objects.create_user("clerk", password="pw-clerk-1234")
    client.force_login(user)
    assert client.get("/api/v1/docs").status_code == 302, "a user who is not staff is sent to the login"

    user.is_staff = True
    user.save()
    page = client.get("/api/v1/docs")
    assert page.status_code == 200
    html = page.content.decode()
    assert "swagger-ui" in html and DOC in html
    assert "cdn." not in html, "the docs' scripts come from our own static files"


@pytest.mark.parametrize("key", ["has space", "x" * 201, "é"])
def test_a_header_the_schema_refuses_is_400_naming_the_header(api, key):
    body = {
        "priority": "transactional",
        "channel": "email",
        "template": "password_reset",
        "to": "a@example.com",
        "context": {"code": "123456"},
    }
    response = api.post("/api/v1/notifications", body, HTTP_IDEMPOTENCY_KEY=key)

    assert response.status_code == 400, response.content
    assert response.json() == {
        "error": "invalid request",
        "errors": {"Idempotency-Key": "1 to 200 printable ASCII characters, no spaces"},
    }


def test_an_unknown_field_names_the_fields_the_schema_allows(api):
    response = api.post("/api/v1/notifications", {"priority": "transactional", "colour": "blue"})

    assert response.status_code == 400
    assert response.json()["errors"]["colour"] == (
        "unknown field; allowed: priority, channel, template, to, recipient_id, context, send_at, cancellation_key"
    )
