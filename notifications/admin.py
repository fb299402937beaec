"""Admin for notifications, recipients, campaigns (start/pause/resume/cancel, progress), suppressed addresses and
API tokens; what is added here goes through the same services as the API."""

import json
from collections import Counter
from functools import cached_property

from django import forms
from django.conf import settings
from django.contrib import admin, messages
from django.contrib.admin.views.main import ChangeList
from django.contrib.auth import get_user_model
from django.core.exceptions import PermissionDenied, ValidationError
from django.core.paginator import Paginator
from django.db.models import Q
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils import timezone
from django.utils.html import format_html, format_html_join

from notifications.campaigns import (
    CampaignStateError,
    campaign_cancel,
    campaign_create,
    campaign_pause,
    campaign_resume,
    campaign_start,
    campaign_validate,
)
from notifications.counting import campaign_notifications
from notifications.inputs import parse_json_object, without_secrets
from notifications.models import (
    ApiToken,
    Campaign,
    CampaignStatus,
    Channel,
    Notification,
    NotificationStatus,
    Priority,
    PushDevice,
    Recipient,
    Suppression,
    WebhookEndpoint,
)
from notifications.rendering import template_names
from notifications.selectors import (
    EXACT_COUNT_LIMIT,
    NotificationSearch,
    campaign_progress,
    campaign_waiting,
    count_estimate,
    notification_search,
    notification_timeline,
    recipient_notifications,
)
from notifications.services import notification_send, notification_validate, notifications_cancel
from notifications.webhooks import webhook_endpoint_validate, webhook_send_test


class ServiceValidatedForm(forms.ModelForm):
    """An admin add form whose values a service function validates: a template, a JSON context, and
    the service's errors (field -> reason) shown on the matching form fields."""

    template = forms.ChoiceField(choices=[])
    context_json = forms.CharField(label="Context", widget=forms.Textarea(attrs={"rows": 4}), initial="{}")
    #: An example of the context, for the help text.
    context_example = "{}"
    #: The service's error keys that are named differently on the form.
    error_fields: dict[str, str] = {"context": "context_json"}

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.fields["template"].choices = [(name, name) for name in template_names()]
        self.fields[
            "context_json"
        ].help_text = f"JSON object with the template's variables, e.g. {self.context_example}."

    def clean_context_json(self) -> dict:
        try:
            return parse_json_object(self.cleaned_data["context_json"] or "{}", field="context")
        except ValidationError as exc:
            raise ValidationError([f"{field}: {' '.join(m)}" for field, m in exc.message_dict.items()]) from None

    def validate(self, data: dict) -> None:
        """Call the service's validation; raise its ValidationError."""
        raise NotImplementedError

    def clean(self) -> dict:
        data = super().clean()
        if self.errors:
            return data
        try:
            self.validate(data)
        except ValidationError as exc:
            for field, errors in exc.message_dict.items():
                # "context.code" belongs on the context's field, named so the user sees which variable.
                base, _, inner = field.partition(".")
                target = self.error_fields.get(field) or self.error_fields.get(base, field)
                messages = [f"{inner}: {e}" for e in errors] if inner and target != field else errors
                self.add_error(target if target in self.fields else None, messages)
        return data


class NotificationSendForm(ServiceValidatedForm):
    """The admin's 'add notification' form: validated and written by notification_send."""

    priority = forms.ChoiceField(choices=Priority.choices, initial=Priority.TRANSACTIONAL)
    channel = forms.ChoiceField(choices=Channel.choices)
    to = forms.CharField(help_text="E-mail address, E.164 phone number or push token.")
    send_at = forms.DateTimeField(required=False, help_text="Not before this moment (empty: now).")
    cancellation_key = forms.CharField(
        required=False, max_length=200, help_text="A label to cancel it by, with any others that carry it."
    )
    context_example = '{"code": "123456"}'

    class Meta:
        model = Notification
        fields: list[str] = []

    #: Who is adding (set by NotificationAdmin.get_form): sending is a permission per priority.
    user = None

    def validate(self, data: dict) -> None:
        if self.user is not None and not self.user.has_perm(f"notifications.send_{data['priority']}"):
            raise ValidationError({"priority": f"you may not send {data['priority']} notifications"})
        notification_validate(
            priority=data["priority"],
            channel=data["channel"],
            template=data["template"],
            context=data["context_json"],
            to=data["to"],
            send_at=data.get("send_at"),
            cancellation_key=data.get("cancellation_key") or "",
        )

    def _post_clean(self) -> None:
        # The service builds the row; the model has nothing to validate here.
        pass


class EstimatedCountPaginator(Paginator):
    """Counts exactly only up to selectors.EXACT_COUNT_LIMIT rows, so a page of a 50 M-row table runs no COUNT(*)
    over it; beyond, the count (and so the last page number) is PostgreSQL's estimate."""

    @cached_property
    def count(self) -> int:
        return count_estimate(self.object_list)


class ProviderFilter(admin.SimpleListFilter):
    """The configured providers (the default filter asked the table for its distinct values: a scan of every row)."""

    title = "provider"
    parameter_name = "provider__exact"

    def lookups(self, request: HttpRequest, model_admin) -> list[tuple[str, str]]:
        names = sorted({p["name"] for chain in settings.NOTIFICATIONS_PROVIDERS.values() for p in chain})
        return [(name, name) for name in names]

    def queryset(self, request: HttpRequest, queryset):
        return queryset.filter(provider=self.value()) if self.value() else queryset


class TemplateFilter(admin.SimpleListFilter):
    """The templates on disk, for the same reason as ProviderFilter."""

    title = "template"
    parameter_name = "template__exact"

    def lookups(self, request: HttpRequest, model_admin) -> list[tuple[str, str]]:
        return [(name, name) for name in template_names()]

    def queryset(self, request: HttpRequest, queryset):
        return queryset.filter(template=self.value()) if self.value() else queryset


class StatusFilter(admin.SimpleListFilter):
    """The status every reader gives (models.NotificationQuerySet.shown_status): a cancelled campaign's unsent rows
    are skipped, not scheduled, from the cancel on.  Same parameter as the field's own filter."""

    title = "status"
    parameter_name = "status__exact"

    def lookups(self, request: HttpRequest, model_admin) -> list[tuple[str, str]]:
        return list(NotificationStatus.choices)

    def queryset(self, request: HttpRequest, queryset):
        return queryset.shown_status(self.value()) if self.value() else queryset


class NewestFirstChangeList(ChangeList):
    """Newest first with no primary key as a tiebreak.  notif_created_idx returns rows of equal created_at in one
    fixed order already (a btree orders duplicates by their place in the table); "created_at, id" made PostgreSQL
    read and sort every row of a tie, and the 200,000 rows of a campaign segment share one created_at."""

    def _get_deterministic_ordering(self, ordering):
        if list(ordering) in (["-created_at"], ["created_at"]):
            return list(ordering)
        return super()._get_deterministic_ordering(ordering)


@admin.register(Notification)
class NotificationAdmin(admin.ModelAdmin):
    """The list stays fast at a year of traffic (50 M rows): estimated counts past EXACT_COUNT_LIMIT, searches that
    are exact lookups on indexes (selectors.notification_search), filters whose choices need no query, newest first
    on notif_created_idx (the only sortable column), no date hierarchy (its year list was a scan of the table)."""

    list_display = (
        "id",
        "created_at",
        "priority",
        "channel",
        "template",
        "to",
        "status_short",
        "attempts",
        "provider",
        "sent_at",
    )
    list_filter = (StatusFilter, "priority", "channel", ProviderFilter, TemplateFilter, "created_at")
    actions = ["cancel"]
    sortable_by = ("created_at",)
    paginator = EstimatedCountPaginator
    # Counts per filter choice would count the table once per choice.
    show_facets = admin.ShowFacets.NEVER

    @admin.display(description="status")
    def status_short(self, obj: Notification) -> str:
        """One word per row (the long description wrapped each row to several lines); the description on hover
        and on the notification's page."""
        status = getattr(obj, "shown_status", obj.status)
        return format_html('<span title="{}">{}</span>', NotificationStatus(status).label, status)

    def get_queryset(self, request: HttpRequest):
        # Each row's status as every reader gives it (a cancelled campaign's unsent rows are skipped).
        return super().get_queryset(request).with_shown_status()

    # Only so the search box shows: get_search_results does the searching.
    search_fields = ("=id",)
    search_help_text = (
        "Exact match: an e-mail address or E.164 phone, an id, an idempotency key, a provider message id, "
        f"or campaign:<id>. Counts above {EXACT_COUNT_LIMIT:,} are estimates."
    )
    list_select_related = ()
    show_full_result_count = False

    def _search(self, request: HttpRequest, term: str) -> NotificationSearch:
        # Asked twice per page (the rows, their order): the term is read from the database once.
        cached = getattr(request, "_notification_search", None)
        if cached is None or cached[0] != term:
            cached = (term, notification_search(term))
            request._notification_search = cached
        return cached[1]

    def get_search_results(self, request: HttpRequest, queryset, search_term: str):
        search = self._search(request, search_term)
        if search.campaign_id is not None:
            return queryset & campaign_notifications(Campaign(pk=search.campaign_id)), False
        return queryset.filter(search.condition), False

    def get_changelist(self, request: HttpRequest, **kwargs):
        return NewestFirstChangeList

    def get_ordering(self, request: HttpRequest):
        # A campaign's rows are a primary-key range: read backwards along it, the newest recipients first.
        # Newest first by created_at would walk the time index back to the campaign's day.
        if self._search(request, request.GET.get("q", "")).campaign_id is not None:
            return ["-pk"]
        return super().get_ordering(request)

    # The context is shown with its secrets hidden (a reset code is never on screen), never as stored.
    readonly_fields = [
        *(
            {"context": "shown_context", "status": "status_short"}.get(f.name, f.name)
            for f in Notification._meta.fields
        ),
        "timeline",
    ]
    exclude = ["context"]

    @admin.display(description="timeline")
    def timeline(self, obj: Notification) -> str:
        """Its events, oldest first: our own record and the provider's reports."""
        events = notification_timeline(obj)
        if not events:
            return "no events yet"
        rows = format_html_join(
            "",
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            (
                (e.at.strftime("%Y-%m-%d %H:%M:%S.%f")[:-3], e.kind, e.provider or "-", json.dumps(e.data)[:200])
                for e in events
            ),
        )
        return format_html("<table><tr><th>at</th><th>event</th><th>provider</th><th>details</th></tr>{}</table>", rows)

    @admin.display(description="context")
    def shown_context(self, obj: Notification) -> str:
        return json.dumps(without_secrets(obj.template, obj.context), ensure_ascii=False)

    def get_form(self, request: HttpRequest, obj=None, change: bool = False, **kwargs):
        if obj is None:
            kwargs["form"] = type("NotificationSendForm", (NotificationSendForm,), {"user": request.user})
            kwargs["fields"] = [*self.send_fields]
        return super().get_form(request, obj, change, **kwargs)

    send_fields = ("priority", "channel", "template", "to", "context_json", "send_at", "cancellation_key")

    def get_readonly_fields(self, request: HttpRequest, obj=None) -> list[str]:
        return self.readonly_fields if obj is not None else []

    def get_fieldsets(self, request: HttpRequest, obj=None):
        if obj is None:
            return [(None, {"fields": [*self.send_fields]})]
        return super().get_fieldsets(request, obj)

    def save_model(self, request: HttpRequest, obj: Notification, form: NotificationSendForm, change: bool) -> None:
        data = form.cleaned_data
        notification, _ = notification_send(
            priority=data["priority"],
            channel=data["channel"],
            template=data["template"],
            context=data["context_json"],
            to=data["to"],
            created_by=request.user,
            send_at=data.get("send_at"),
            cancellation_key=data.get("cancellation_key") or "",
        )
        # The admin redirects and logs using obj; point it at the row the service wrote.
        obj.pk = notification.pk
        obj.priority, obj.channel, obj.template, obj.to = (
            notification.priority,
            notification.channel,
            notification.template,
            notification.to,
        )

    def has_change_permission(self, request: HttpRequest, obj=None) -> bool:
        # Notifications are a record: they change only through the workers.
        return False

    def has_cancel_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm("notifications.add_notification")

    @admin.action(description="Cancel selected notifications (those no worker took yet)", permissions=["cancel"])
    def cancel(self, request: HttpRequest, queryset) -> None:
        ids = list(queryset.values_list("pk", flat=True)[:10_000])
        result = notifications_cancel(scope=Q(pk__in=ids), reason=f"cancelled by {request.user} in the admin")
        if result["cancelled"]:
            self.message_user(
                request, f"Cancelled {len(result['cancelled'])} notification(s): nothing of them will be sent."
            )
        too_late = [f"{pk} ({status})" for pk, status in result["too_late"].items()]
        if too_late:
            self.message_user(
                request,
                f"{len(too_late)} could not be cancelled, a worker took them already: {', '.join(too_late[:20])}",
                level=messages.WARNING,
            )


class PushDeviceInline(admin.TabularInline):
    model = PushDevice
    extra = 0


@admin.register(Recipient)
class RecipientAdmin(admin.ModelAdmin):
    list_display = ("id", "email", "phone", "locale", "timezone", "email_marketing_consent", "sms_marketing_consent")
    list_filter = ("locale", "email_marketing_consent", "sms_marketing_consent", "push_marketing_consent")
    search_fields = ("=email", "=phone")
    search_help_text = "Exact e-mail address or phone."
    show_full_result_count = False
    paginator = EstimatedCountPaginator
    readonly_fields = ("latest_notifications",)
    inlines = [PushDeviceInline]
    #: Rows shown on the recipient's page; the link under them opens the paginated list of all of them.
    LATEST = 20

    def get_search_results(self, request: HttpRequest, queryset, search_term: str):
        # "=email" would compare upper(email), which no index serves: a scan of every recipient.
        term = search_term.strip()
        if not term:
            return queryset, False
        return queryset.filter(Q(email=term) | Q(email=term.lower()) | Q(phone=term)), False

    @admin.display(description="notifications, newest first")
    def latest_notifications(self, obj: Recipient) -> str:
        if obj.pk is None:
            return "–"
        rows = list(recipient_notifications(obj.pk)[: self.LATEST])
        if not rows:
            return "none yet"
        table = format_html_join(
            "",
            '<tr><td><a href="{}">{}</a></td><td>{}</td><td>{}/{}</td><td>{}</td><td>{}</td></tr>',
            (
                (
                    reverse("admin:notifications_notification_change", args=[n.pk]),
                    n.created_at.strftime("%Y-%m-%d %H:%M:%S"),
                    n.to,
                    n.priority,
                    n.channel,
                    n.template,
                    n.shown_status,
                )
                for n in rows
            ),
        )
        url = f"{reverse('admin:notifications_notification_changelist')}?recipient__id__exact={obj.pk}"
        return format_html(
            "<table><tr><th>created</th><th>to</th><th>priority/channel</th><th>template</th><th>status</th></tr>"
            '{}</table><p><a href="{}">all of them, newest first (paginated) →</a></p>',
            table,
            url,
        )


@admin.register(ApiToken)
class ApiTokenAdmin(admin.ModelAdmin):
    """Tokens are minted here (the key is shown once, on the page that answers the add, never kept) and revoked
    here.  Only a superuser mints a token for someone else; changing a token's switches and revoking it need
    the change permission."""

    list_display = (
        "prefix",
        "user",
        "may_send_security",
        "daily_quota_security",
        "daily_quota_transactional",
        "daily_quota_marketing",
        "created_at",
        "revoked_at",
    )
    list_filter = ("revoked_at", "may_send_security")
    actions = ["revoke"]
    switches = ["may_send_security", "daily_quota_security", "daily_quota_transactional", "daily_quota_marketing"]
    identity = ["user", "prefix", "created_at", "revoked_at"]

    def get_fields(self, request: HttpRequest, obj=None) -> list[str]:
        return ["user", *self.switches] if obj is None else [*self.identity, *self.switches]

    def get_readonly_fields(self, request: HttpRequest, obj=None) -> list[str]:
        return [] if obj is None else self.identity

    def formfield_for_foreignkey(self, db_field, request: HttpRequest, **kwargs):
        if db_field.name == "user" and not request.user.is_superuser:
            # Anyone else may only mint a token that acts as themselves.
            kwargs["queryset"] = get_user_model().objects.filter(pk=request.user.pk)
            kwargs["initial"] = request.user.pk
        return super().formfield_for_foreignkey(db_field, request, **kwargs)

    def save_model(self, request: HttpRequest, obj: ApiToken, form, change: bool) -> None:
        if change:
            super().save_model(request, obj, form, change)
            return
        if obj.user_id != request.user.pk and not request.user.is_superuser:
            raise PermissionDenied("only a superuser may mint a token for another user")
        token, key = ApiToken.issue(obj.user, **{name: getattr(obj, name) for name in self.switches})
        obj.pk = token.pk
        request.minted_key = key

    def response_add(self, request: HttpRequest, obj: ApiToken, post_url_continue=None) -> HttpResponse:
        # The key goes into this page only: a message would keep it in the session or a cookie.
        context = {
            **self.admin_site.each_context(request),
            "title": "API token created",
            "opts": self.opts,
            "token": obj,
            "key": getattr(request, "minted_key", ""),
        }
        return TemplateResponse(request, "admin/notifications/apitoken/minted.html", context)

    @admin.action(description="Revoke selected tokens", permissions=["change"])
    def revoke(self, request: HttpRequest, queryset) -> None:
        count = queryset.filter(revoked_at__isnull=True).update(revoked_at=timezone.now())
        self.message_user(request, f"Revoked {count} token(s).")


class CampaignForm(ServiceValidatedForm):
    """The admin's campaign form: validated by the same service function as the API."""

    context_example = '{"headline": "Spring sale", "body": "…"}'
    error_fields = {"context": "context_json", "audience.locale": "audience_locale", "audience.tag": "audience_tag"}

    class Meta:
        model = Campaign
        fields = ["name", "template", "channel", "audience_locale", "audience_tag", "send_at"]

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if self.instance.pk:
            self.fields["context_json"].initial = json.dumps(self.instance.context)

    def validate(self, data: dict) -> None:
        campaign_validate(
            name=data["name"],
            template=data["template"],
            channel=data["channel"],
            context=data["context_json"],
            audience_locale=data.get("audience_locale") or "",
            audience_tag=data.get("audience_tag") or "",
        )


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m" if hours else f"{minutes}m {secs:02d}s"


@admin.register(Campaign)
class CampaignAdmin(admin.ModelAdmin):
    form = CampaignForm
    list_display = ("name", "status", "waiting", "channel", "template", "progress", "rate", "eta", "started_at")
    list_filter = ("status", "channel")
    search_fields = ("name",)
    actions = ["start", "pause", "resume", "cancel"]
    progress_fields = (
        "waiting",
        "progress",
        "rate",
        "eta",
        "materialized_count",
        "sent_count",
        "dead_count",
        "skipped_count",
    )

    def get_fields(self, request: HttpRequest, obj=None) -> list[str]:
        fields = ["name", "template", "channel", "context_json", "audience_locale", "audience_tag", "send_at"]
        if obj is not None and obj.status != CampaignStatus.DRAFT:
            return ["name", "status", "last_error", *self.progress_fields, "template", "channel", "context",
                    "audience_locale", "audience_tag", "send_at", "started_at", "finished_at", "created_by"]  # fmt: skip
        return fields if obj is None else ["status", *fields]

    def get_readonly_fields(self, request: HttpRequest, obj=None) -> list[str]:
        if obj is None:
            return []
        if obj.status == CampaignStatus.DRAFT:
            return ["status"]
        return self.get_fields(request, obj)

    def save_model(self, request: HttpRequest, obj: Campaign, form: CampaignForm, change: bool) -> None:
        data = form.cleaned_data
        if change:
            obj.context = data["context_json"]
            obj.send_at = data.get("send_at")
            obj.save()
            return
        campaign = campaign_create(
            name=data["name"],
            template=data["template"],
            channel=data["channel"],
            context=data["context_json"],
            audience_locale=data.get("audience_locale") or "",
            audience_tag=data.get("audience_tag") or "",
            created_by=request.user,
        )
        if data.get("send_at"):
            Campaign.objects.filter(pk=campaign.pk).update(send_at=data["send_at"])
        obj.pk = campaign.pk

    def has_delete_permission(self, request: HttpRequest, obj=None) -> bool:
        # A started campaign's notifications point at it: it stays as their record.
        return super().has_delete_permission(request, obj) and (obj is None or obj.status == CampaignStatus.DRAFT)

    @admin.display(description="progress")
    def progress(self, obj: Campaign) -> str:
        total = obj.materialized_count
        done = obj.done_count
        label = (
            f"{obj.sent_count:,} sent · {obj.dead_count:,} failed · {obj.skipped_count:,} skipped · "
            f"{obj.remaining_count:,} remaining"
        )
        if obj.status == CampaignStatus.RUNNING and obj.fanout_completed_at is None:
            label += f" · writing recipients ({obj.segments_done}/{obj.segments_total} segments)"
        return format_html(
            '<progress class="campaign-progress" value="{}" max="{}" style="width: 14em"></progress> {}% <br><small>{}</small>',
            done,
            max(total, 1),
            f"{100 * done / total:.1f}" if total else "0.0",
            label,
        )

    @admin.display(description="not sending because")
    def waiting(self, obj: Campaign) -> str:
        return format_html('<span style="white-space: nowrap">{}</span>', campaign_waiting(obj) or "–")

    @admin.display(description="send rate")
    def rate(self, obj: Campaign) -> str:
        return f"{campaign_progress(obj)['rate_per_second']:,.0f}/s" if obj.status == CampaignStatus.RUNNING else "–"

    @admin.display(description="time to finish")
    def eta(self, obj: Campaign) -> str:
        return _duration(campaign_progress(obj)["eta_seconds"]) if obj.status == CampaignStatus.RUNNING else "–"

    def _act(self, request: HttpRequest, queryset, service, verb: str) -> None:
        done = 0
        for campaign in queryset:
            try:
                service(campaign_id=campaign.pk)
                done += 1
            except CampaignStateError as exc:
                self.message_user(request, str(exc), level=messages.WARNING)
        if done:
            self.message_user(request, f"{verb} {done} campaign(s).")

    @admin.action(description="Start selected campaigns (at their send at, if set)", permissions=["change"])
    def start(self, request: HttpRequest, queryset) -> None:
        done: Counter = Counter()
        for campaign in queryset:
            try:
                done[campaign_start(campaign_id=campaign.pk, send_at=campaign.send_at).status] += 1
            except (CampaignStateError, ValidationError) as exc:
                self.message_user(request, f"campaign {campaign.pk}: {exc}", level=messages.WARNING)
        scheduled = done.pop(CampaignStatus.SCHEDULED, 0)
        if done:
            self.message_user(request, f"Started {done.total()} campaign(s).")
        if scheduled:
            self.message_user(request, f"Scheduled {scheduled} campaign(s) to start at their send at.")

    @admin.action(description="Pause selected campaigns", permissions=["change"])
    def pause(self, request: HttpRequest, queryset) -> None:
        self._act(request, queryset, campaign_pause, "Paused")

    @admin.action(description="Resume selected campaigns", permissions=["change"])
    def resume(self, request: HttpRequest, queryset) -> None:
        self._act(request, queryset, campaign_resume, "Resumed")

    @admin.action(description="Cancel selected campaigns", permissions=["change"])
    def cancel(self, request: HttpRequest, queryset) -> None:
        self._act(request, queryset, campaign_cancel, "Cancelled")


@admin.register(Suppression)
class SuppressionAdmin(admin.ModelAdmin):
    """Suppressed addresses; deleting one lets marketing and transactional mail reach it again."""

    list_display = ("address", "channel", "reason", "created_at")
    list_filter = ("channel",)
    search_fields = ("=address",)
    readonly_fields = ("created_at",)


class WebhookEndpointForm(forms.ModelForm):
    url = forms.URLField(max_length=500, assume_scheme="https")

    class Meta:
        model = WebhookEndpoint
        fields = ["url", "description", "event_kinds", "active", "rate_per_second"]

    def clean(self):
        data = super().clean()
        if not self.errors:
            webhook_endpoint_validate(
                url=data["url"], event_kinds=data.get("event_kinds") or [], rate_per_second=data["rate_per_second"]
            )
        return data


@admin.register(WebhookEndpoint)
class WebhookEndpointAdmin(admin.ModelAdmin):
    """Where status webhooks go: the URL, the kinds, the limit; the secret to verify signatures with."""

    form = WebhookEndpointForm
    list_display = ("id", "url", "description", "kinds", "active", "rate_per_second", "created_at")
    list_filter = ("active",)
    readonly_fields = ("secret", "created_by", "created_at")
    actions = ["send_test_event"]

    @admin.display(description="event kinds")
    def kinds(self, obj: WebhookEndpoint) -> str:
        return ", ".join(obj.event_kinds) or "all"

    def save_model(self, request: HttpRequest, obj: WebhookEndpoint, form, change: bool) -> None:
        if not change:
            obj.created_by = request.user
        super().save_model(request, obj, form, change)

    def has_send_test_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm("notifications.send_test_webhook")

    @admin.action(description="Send a test event to the selected endpoints", permissions=["send_test"])
    def send_test_event(self, request: HttpRequest, queryset) -> None:
        for endpoint in queryset[:20]:
            delivered, detail = webhook_send_test(endpoint=endpoint)
            level = messages.SUCCESS if delivered else messages.ERROR
            self.message_user(request, f"{endpoint}: {'delivered' if delivered else 'failed'} ({detail})", level)
