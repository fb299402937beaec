"""The operators' page in the admin (/admin/operations/): queues, breakers, send rates, dead letters and campaigns
at a glance, kept fresh by the page's script reading the same snapshot as JSON (/admin/operations/data)."""

from django.contrib import admin
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.template.response import TemplateResponse
from django.views.decorators.http import require_GET

from notifications.events import RATE_WINDOW_SECONDS
from notifications.selectors import CHART_SECONDS, SECURITY_LATE_SECONDS, operations_snapshot

#: How often the page asks for a new snapshot; each costs a few dozen Redis round trips.
REFRESH_MILLISECONDS = 2000


@require_GET
def _operations_page(request: HttpRequest) -> HttpResponse:
    request.current_app = admin.site.name
    context = {
        **admin.site.each_context(request),
        "title": "Operations",
        "snapshot": operations_snapshot(),
        "refresh_milliseconds": REFRESH_MILLISECONDS,
        "security_late_seconds": SECURITY_LATE_SECONDS,
        "chart_seconds": CHART_SECONDS,
        "rate_window_seconds": RATE_WINDOW_SECONDS,
    }
    return TemplateResponse(request, "admin/operations.html", context)


@require_GET
def _operations_data(request: HttpRequest) -> JsonResponse:
    return JsonResponse(operations_snapshot())


#: The page shows dead letters and campaigns: who sees it must be allowed to see both.
VIEW_PERMISSIONS = ("jobs.view_deadletter", "notifications.view_campaign")


def _allowed(view):
    def check(request: HttpRequest, *args, **kwargs):
        if not request.user.has_perms(VIEW_PERMISSIONS):
            raise PermissionDenied(f"the operations page needs {' and '.join(VIEW_PERMISSIONS)}")
        return view(request, *args, **kwargs)

    return check


# Staff only, like the rest of the admin (anyone else is sent to the admin's login page), and only those
# who may view what it shows.
operations_page = admin.site.admin_view(_allowed(_operations_page))
operations_data = admin.site.admin_view(_allowed(_operations_data))

# The stock admin templates come first in the template search (django.contrib.admin is the first
# installed app), so an admin/index.html here would never be found: the index names its own.
admin.site.index_template = "admin/operations_index.html"
