"""Admin for notifications, recipients and API tokens; a notification added here goes through the service."""

import json

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import ValidationError
from django.http import HttpRequest

from notifications.models import ApiToken, Channel, Notification, Priority, PushDevice, Recipient
from notifications.rendering import template_names
from notifications.services import notification_send, notification_validate


class NotificationSendForm(forms.ModelForm):
    """The admin's 'add notification' form: validated and written by notification_send."""

    priority = forms.ChoiceField(choices=Priority.choices, initial=Priority.TRANSACTIONAL)
    channel = forms.ChoiceField(choices=Channel.choices)
    template = forms.ChoiceField(choices=[])
    to = forms.CharField(help_text="E-mail address, E.164 phone number or push token.")
    context_json = forms.CharField(
        label="Context",
        widget=forms.Textarea(attrs={"rows": 4}),
        initial="{}",
        help_text='JSON object with the template\'s variables, e.g. {"code": "123456"}.',
    )

    class Meta:
        model = Notification
        fields: list[str] = []

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.fields["template"].choices = [(name, name) for name in template_names()]

    def clean_context_json(self) -> dict:
        try:
            value = json.loads(self.cleaned_data["context_json"] or "{}")
        except json.JSONDecodeError as exc:
            raise ValidationError(f"not valid JSON: {exc}") from exc
        if not isinstance(value, dict):
            raise ValidationError("must be a JSON object")
        return value

    def clean(self) -> dict:
        data = super().clean()
        if self.errors:
            return data
        try:
            notification_validate(
                priority=data["priority"],
                channel=data["channel"],
                template=data["template"],
                context=data["context_json"],
                to=data["to"],
            )
        except ValidationError as exc:
            for field, errors in exc.message_dict.items():
                self.add_error(
                    "context_json" if field == "context" else field if field in self.fields else None, errors
                )
        return data

    def _post_clean(self) -> None:
        # The service builds the row; the model has nothing to validate here.
        pass


@admin.register(Notification)
class NotificationAdmin(admin.ModelAdmin):
    list_display = (
        "id",
        "created_at",
        "priority",
        "channel",
        "template",
        "to",
        "status",
        "attempts",
        "provider",
        "sent_at",
    )
    list_filter = ("status", "priority", "channel", "provider", "template", "created_at")
    search_fields = ("=id", "to", "idempotency_key", "provider_message_id")
    date_hierarchy = "created_at"
    list_select_related = ()
    show_full_result_count = False
    readonly_fields = [f.name for f in Notification._meta.fields]

    def get_form(self, request: HttpRequest, obj=None, change: bool = False, **kwargs):
        if obj is None:
            kwargs["form"] = NotificationSendForm
            kwargs["fields"] = ["priority", "channel", "template", "to", "context_json"]
        return super().get_form(request, obj, change, **kwargs)

    def get_readonly_fields(self, request: HttpRequest, obj=None) -> list[str]:
        return self.readonly_fields if obj is not None else []

    def get_fieldsets(self, request: HttpRequest, obj=None):
        if obj is None:
            return [(None, {"fields": ["priority", "channel", "template", "to", "context_json"]})]
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


class PushDeviceInline(admin.TabularInline):
    model = PushDevice
    extra = 0


@admin.register(Recipient)
class RecipientAdmin(admin.ModelAdmin):
    list_display = ("id", "email", "phone", "locale", "timezone", "email_marketing_consent", "sms_marketing_consent")
    list_filter = ("locale", "email_marketing_consent", "sms_marketing_consent", "push_marketing_consent")
    search_fields = ("=email", "=phone")
    show_full_result_count = False
    inlines = [PushDeviceInline]


@admin.register(ApiToken)
class ApiTokenAdmin(admin.ModelAdmin):
    list_display = ("prefix", "user", "created_at", "revoked_at")
    list_filter = ("revoked_at",)
    fields = ("user",)
    actions = ["revoke"]

    def save_model(self, request: HttpRequest, obj: ApiToken, form, change: bool) -> None:
        token, key = ApiToken.issue(obj.user)
        obj.pk = token.pk
        self.message_user(request, f"API token for {obj.user}: {key} (shown once; copy it now)", level=messages.WARNING)

    def has_change_permission(self, request: HttpRequest, obj=None) -> bool:
        return False

    @admin.action(description="Revoke selected tokens")
    def revoke(self, request: HttpRequest, queryset) -> None:
        from django.utils import timezone

        count = queryset.filter(revoked_at__isnull=True).update(revoked_at=timezone.now())
        self.message_user(request, f"Revoked {count} token(s).")
