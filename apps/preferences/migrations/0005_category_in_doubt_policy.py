from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('preferences', '0004_frequencies_history_overrides'),
    ]

    operations = [
        migrations.AddField(
            model_name='category',
            name='in_doubt_policy',
            field=models.CharField(choices=[('auto', 'auto: resend if critical or the provider deduplicates, else hold'), ('resend', 'resend through the same provider (at least once)'), ('drop', 'never resend (at most once)')], default='auto', help_text='When a send may or may not have reached the provider: resend it (same provider, same idempotency key) or hold it.', max_length=10),
        ),
    ]
