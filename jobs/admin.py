"""Admin of the job runtime: durable jobs (inspect, retry now, cancel), the dead-letter table (inspect, replay,
discard) and the circuit breakers' state."""

import json

import redis
from django import forms
from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.contrib.admin.options import IncorrectLookupParameters
from django.contrib.contenttypes.models import ContentType
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import NoReverseMatch, reverse
from django.utils.html import format_html
from django.utils.text import Truncator

from jobs.deadletters import (
    BulkOutcome,
    deadletter_replay_refusal,
    deadletters_discard_many,
    deadletters_replay_in_background,
    deadletters_replay_many,
)
from jobs.durable import job_cancel, job_retry_now
from jobs.masking import mask_personal_data
from jobs.models import BreakerTransition, DeadLetter, DeadLetterStatus, Job
from jobs.selectors import (
    breaker_states,
    deadletter_facet_values,
    deadletters_filter,
    queue_facet_names,
    queue_facets,
)

#: Above this many rows, "replay everything matching" runs on the workers in batches:
#: replaying inline takes a few milliseconds per row, and a request must not run for minutes.
REPLAY_INLINE_LIMIT = 200
#: Rows named on the discard confirmation page; the count covers the rest.
DISCARD_PREVIEW_ROWS = 20


def _facet_filter(name: str) -> type[admin.SimpleListFilter]:
    """A list filter on one named part of the queue (JOBS_QUEUE_FACETS), offering the values that occur."""

    class FacetFilter(admin.SimpleListFilter):
        title = name
        parameter_name = name

        def lookups(self, request: HttpRequest, model_admin: admin.ModelAdmin) -> list[tuple[str, str]]:
            return [(value, value) for value in deadletter_facet_values(name)]

        def queryset(self, request: HttpRequest, queryset: QuerySet) -> QuerySet:
            return deadletters_filter(queryset, **{name: self.value()}) if self.value() else queryset

    FacetFilter.__name__ = f"{name.title()}Filter"
    return FacetFilter


def _facet_column(name: str):
    """A list column showing one named part of the queue, "-" for a queue without it."""

    def column(obj: DeadLetter) -> str:
        return queue_facets(obj.queue).get(name, "-")

    column.short_description = name
    column.__name__ = name
    return column


class DiscardForm(forms.Form):
    reason = forms.CharField(
        widget=forms.Textarea(attrs={"rows": 3, "cols": 80}),
        max_length=2000,
        error_messages={"required": "Give a reason: it is kept on each dead letter and in its history."},
        help_text="Why these jobs are not replayed (kept on each row).",
    )


@admin.register(DeadLetter)
class DeadLetterAdmin(admin.ModelAdmin):
    """Read-only record of failed jobs; replaying and discarding need the replay_deadletter permission."""

    list_display = (
        "id",
        "last_failed_at",
        "job_name",
        *(_facet_column(name) for name in reversed(queue_facet_names())),
        "dependency",
        "error_class_name",
        "short_message",
        "attempts",
        "status",
        "subject_link",
    )
    list_filter = (
        *(_facet_filter(name) for name in reversed(queue_facet_names())),
        "dependency",
        "error_class",
        "status",
        "last_failed_at",
    )
    search_fields = ("^subject_id", "message", "job_name", "error_class")
    date_hierarchy = "last_failed_at"
    show_full_result_count = False
    actions = ["replay_selected", "replay_all_matching", "discard_selected"]
    fieldsets = [
        (
            None,
            {
                "fields": [
                    "id",
                    "job_name",
                    "status",
                    "replayable",
                    "queue",
                    "dependency",
                    "subject_link",
                    "error_class",
                    "masked_message",
                    "attempts",
                    "first_failed_at",
                    "last_failed_at",
                ]
            },
        ),
        ("Arguments and traceback (personal data masked)", {"fields": ["masked_arguments", "masked_traceback"]}),
        ("Resolution", {"fields": ["resolved_by", "resolved_at", "resolution_note", "created_at"]}),
    ]
    readonly_fields = [name for _, options in fieldsets for name in options["fields"]]

    # A dead letter is a record: it changes only through replay and discard, never by hand.
    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: DeadLetter | None = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: DeadLetter | None = None) -> bool:
        return False

    def has_replay_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm(f"{self.opts.app_label}.replay_deadletter")

    @admin.display(description="error class", ordering="error_class")
    def error_class_name(self, obj: DeadLetter) -> str:
        return format_html('<span title="{}">{}</span>', obj.error_class, obj.error_class.rsplit(".", 1)[-1])

    @admin.display(description="message")
    def short_message(self, obj: DeadLetter) -> str:
        return Truncator(mask_personal_data(obj.message)).chars(80)

    @admin.display(description="message")
    def masked_message(self, obj: DeadLetter) -> str:
        return mask_personal_data(obj.message)

    @admin.display(description="subject")
    def subject_link(self, obj: DeadLetter) -> str:
        if not obj.subject_id:
            return "-"
        if obj.subject_type_id is None:
            return obj.subject_id
        content_type = ContentType.objects.get_for_id(obj.subject_type_id)  # cached: no query per row
        try:
            url = reverse(
                f"admin:{content_type.app_label}_{content_type.model}_change",
                args=[obj.subject_id],
                current_app=self.admin_site.name,
            )
        except NoReverseMatch:
            return f"{content_type.model} {obj.subject_id}"
        return format_html('<a href="{}">{} {}</a>', url, content_type.model, obj.subject_id)

    @admin.display(description="can be replayed")
    def replayable(self, obj: DeadLetter) -> str:
        refusal = deadletter_replay_refusal(obj)
        return "yes" if refusal is None else f"no: {refusal}"

    @admin.display(description="arguments")
    def masked_arguments(self, obj: DeadLetter) -> str:
        text = json.dumps(mask_personal_data(obj.arguments), indent=2, sort_keys=True, ensure_ascii=False)
        return format_html("<pre>{}</pre>", text)

    @admin.display(description="traceback")
    def masked_traceback(self, obj: DeadLetter) -> str:
        return format_html("<pre>{}</pre>", mask_personal_data(obj.traceback) or "(none recorded)")

    @admin.action(description="Replay selected dead letters", permissions=["replay"])
    def replay_selected(self, request: HttpRequest, queryset: QuerySet[DeadLetter]) -> None:
        outcome = deadletters_replay_many(ids=list(queryset.values_list("pk", flat=True)), user=request.user)
        self._report(request, outcome, "Replayed")

    @admin.action(description="Replay everything matching the current filter", permissions=["replay"])
    def replay_all_matching(self, request: HttpRequest, queryset: QuerySet[DeadLetter]) -> None:
        # The ticked rows do not matter: the operator asked for what the filter and search show.
        matching = self.get_changelist_instance(request).get_queryset(request)
        ids = list(matching.filter(status=DeadLetterStatus.OPEN).values_list("pk", flat=True))
        if len(ids) <= REPLAY_INLINE_LIMIT:
            self._report(request, deadletters_replay_many(ids=ids, user=request.user), "Replayed")
            return
        published, refused = deadletters_replay_in_background(ids=ids, user=request.user)
        if published:
            self.message_user(
                request,
                f"Replaying {len(ids)} open dead letter(s) in the background in {published} batch(es); "
                "refresh this page to follow their status.",
                messages.SUCCESS,
            )
        if refused:
            self.message_user(
                request,
                f"{refused} batch(es) could not be queued (is Redis up?); their dead letters are still open, "
                "run the action again.",
                messages.ERROR,
            )

    @admin.action(description="Discard selected dead letters…", permissions=["replay"])
    def discard_selected(self, request: HttpRequest, queryset: QuerySet[DeadLetter]) -> HttpResponse | None:
        open_letters = queryset.filter(status=DeadLetterStatus.OPEN)
        form = DiscardForm(request.POST if request.POST.get("post") == "yes" else None)
        if form.is_bound and form.is_valid():
            ids = list(open_letters.values_list("pk", flat=True))
            outcome = deadletters_discard_many(ids=ids, reason=form.cleaned_data["reason"], user=request.user)
            self._report(request, outcome, "Discarded")
            return None
        count = open_letters.count()
        if not count:
            self.message_user(
                request, "None of the selected dead letters is open; nothing to discard.", messages.WARNING
            )
            return None
        request.current_app = self.admin_site.name
        context = {
            **self.admin_site.each_context(request),
            "title": "Discard dead letters",
            "opts": self.opts,
            "form": form,
            "count": count,
            "preview": open_letters[:DISCARD_PREVIEW_ROWS],
            "more": max(count - DISCARD_PREVIEW_ROWS, 0),
            # Posted back as they came, so the confirmation acts on exactly the same rows.
            "selected": request.POST.getlist(helpers.ACTION_CHECKBOX_NAME),
            "select_across": request.POST.get("select_across", "0"),
            "action_checkbox_name": helpers.ACTION_CHECKBOX_NAME,
        }
        return TemplateResponse(request, "admin/jobs/deadletter/discard.html", context)

    def changelist_view(self, request: HttpRequest, extra_context: dict | None = None) -> HttpResponse:
        if self._replay_all_without_selection(request):
            try:
                self.replay_all_matching(request, self.get_queryset(request).none())
            except IncorrectLookupParameters:
                return super().changelist_view(request, extra_context)
            return HttpResponseRedirect(request.get_full_path())
        return super().changelist_view(request, extra_context)

    def _replay_all_without_selection(self, request: HttpRequest) -> bool:
        """Django refuses an action with no row ticked; "replay everything matching" needs none."""
        if request.method != "POST" or "index" not in request.POST:
            return False
        if request.POST.getlist(helpers.ACTION_CHECKBOX_NAME):
            return False
        try:
            chosen = request.POST.getlist("action")[int(request.POST["index"])]
        except (ValueError, IndexError):
            return False
        return (
            chosen == "replay_all_matching"
            and self.has_view_permission(request)
            and chosen in self.get_actions(request)
        )

    def _report(self, request: HttpRequest, outcome: BulkOutcome, verb: str) -> None:
        if outcome.failed:
            level = messages.ERROR
        elif outcome.not_replayable or not outcome.done:
            level = messages.WARNING
        else:
            level = messages.SUCCESS
        self.message_user(request, outcome.summary(verb), level)


@admin.register(BreakerTransition)
class BreakerTransitionAdmin(admin.ModelAdmin):
    """Every state change of every circuit breaker, under a table of their state right now."""

    list_display = ("at", "breaker", "from_state", "to_state", "reason")
    list_filter = ("breaker", "to_state")
    date_hierarchy = "at"
    show_full_result_count = False

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: BreakerTransition | None = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: BreakerTransition | None = None) -> bool:
        return False

    def changelist_view(self, request: HttpRequest, extra_context: dict | None = None) -> HttpResponse:
        try:
            states, error = breaker_states(), ""
        except redis.RedisError as exc:
            # The history below is in PostgreSQL and still worth showing.
            states, error = [], f"Redis is unreachable ({exc}); the current state cannot be read."
        extra_context = {**(extra_context or {}), "breaker_states": states, "breaker_states_error": error}
        return super().changelist_view(request, extra_context)


@admin.register(Job)
class JobAdmin(admin.ModelAdmin):
    """Durable jobs: one line each; the arguments (masked) and the last error in full on the job's page."""

    list_display = ("id", "name", "status", "attempts", "queue", "created_at", "next_attempt_at", "short_error")
    list_filter = ("status", "name", "queue")
    search_fields = ("=id", "=idempotency_key", "=order_key")
    # A large table: the admin's count of every row on each page is skipped.
    show_full_result_count = False
    list_per_page = 50
    fields = (
        "name",
        "status",
        "attempts",
        "max_attempts",
        "queue",
        "breaker",
        "idempotency_key",
        "order_key",
        "masked_arguments",
        "last_error",
        "created_at",
        "retry_from",
        "queued_at",
        "started_at",
        "next_attempt_at",
        "lease_expires_at",
        "finished_at",
    )
    readonly_fields = fields
    actions = ["retry_selected_now", "cancel_selected"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Job | None = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Job | None = None) -> bool:
        return False

    def has_run_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm("jobs.run_job")

    @admin.display(description="last error")
    def short_error(self, obj: Job) -> str:
        return Truncator(mask_personal_data(obj.last_error)).chars(80)

    @admin.display(description="arguments")
    def masked_arguments(self, obj: Job) -> str:
        return mask_personal_data(json.dumps(obj.arguments, indent=2, sort_keys=True, ensure_ascii=False))

    @admin.action(description="Retry selected jobs now (those waiting for their next attempt)", permissions=["run"])
    def retry_selected_now(self, request: HttpRequest, queryset: QuerySet[Job]) -> None:
        done = sum(job_retry_now(job_id=pk) for pk in queryset.values_list("pk", flat=True)[:REPLAY_INLINE_LIMIT])
        self.message_user(request, f"{done} job(s) will be tried now; the others were not waiting for a retry.")

    @admin.action(description="Cancel selected jobs (those not started or waiting for a retry)", permissions=["run"])
    def cancel_selected(self, request: HttpRequest, queryset: QuerySet[Job]) -> None:
        outcomes = [job_cancel(job_id=pk) for pk in queryset.values_list("pk", flat=True)[:REPLAY_INLINE_LIMIT]]
        done = sum(1 for cancelled, _ in outcomes if cancelled)
        level = messages.SUCCESS if done == len(outcomes) else messages.WARNING
        self.message_user(
            request, f"{done} job(s) cancelled; {len(outcomes) - done} had already started or finished.", level
        )
