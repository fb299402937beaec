from django.db import migrations


class Migration(migrations.Migration):
    """A dead letter names the outside service whose call failed as its dependency (a provider for a
    notification): the runtime speaks of jobs, not of one domain's providers."""

    dependencies = [("jobs", "0001_initial")]

    operations = [migrations.RenameField(model_name="deadletter", old_name="provider", new_name="dependency")]
