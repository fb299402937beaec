"""The names the domain's tasks are published by (jobs.publishing): services and the relay publish a name, so none
of them imports notifications/tasks.py, which sits above them all."""

#: One notification: notifications.delivery.notification_deliver.
DELIVER = "notifications.deliver"
#: Republish what a lost publish or a dead worker left behind (beat, every RELAY_INTERVAL_SECONDS).
RELAY = "notifications.relay"
#: Write one segment of a campaign's notifications.
CAMPAIGN_FANOUT = "notifications.campaign_fanout"
#: Send one batch of a campaign's notifications.
CAMPAIGN_BATCH = "notifications.campaign_batch"
#: Turn new notification events into webhook deliveries (beat, every WEBHOOKS_DISPATCH_SECONDS).
WEBHOOKS_DISPATCH = "notifications.webhooks_dispatch"
#: Publish scheduled notifications and start scheduled campaigns whose send_at has come (beat, every
#: SCHEDULED_RELEASE_SECONDS).
RELEASE_SCHEDULED = "notifications.release_scheduled"
#: Skip the unsent rows of a cancelled campaign (published by the cancel; it hands back after CAMPAIGN_SWEEP_SECONDS).
CAMPAIGN_SWEEP = "notifications.campaign_sweep"
#: Delete what is past its keeping time (beat, every RETENTION_INTERVAL_SECONDS; continues itself until done).
PRUNE = "notifications.prune"
