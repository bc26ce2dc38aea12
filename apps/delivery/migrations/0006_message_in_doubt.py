import django.db.models.deletion
from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('delivery', '0005_providers_retries_webhooks'),
    ]

    operations = [
        migrations.AlterField(
            model_name='message',
            name='status',
            field=models.CharField(choices=[('queued', 'Queued'), ('sending', 'Sending'), ('in_doubt', 'In Doubt'), ('sent', 'Sent'), ('delivered', 'Delivered'), ('opened', 'Opened'), ('clicked', 'Clicked'), ('read', 'Read'), ('bounced', 'Bounced'), ('failed', 'Failed')], default='queued', max_length=20),
        ),
        migrations.AlterField(
            model_name='message',
            name='integration',
            field=models.ForeignKey(blank=True, help_text='Sent (or being sent, or possibly sent when in doubt) by', null=True, on_delete=django.db.models.deletion.SET_NULL, related_name='messages', to='delivery.integration'),
        ),
        migrations.AddField(
            model_name='message',
            name='send_started_at',
            field=models.DateTimeField(blank=True, null=True),
        ),
        migrations.AddField(
            model_name='message',
            name='in_doubt_count',
            field=models.PositiveSmallIntegerField(default=0),
        ),
        migrations.AlterField(
            model_name='deliveryattempt',
            name='status',
            field=models.CharField(choices=[('success', 'Success'), ('failed', 'Failed'), ('in_doubt', 'In Doubt')], max_length=20),
        ),
        migrations.AlterField(
            model_name='deliveryattempt',
            name='error_kind',
            field=models.CharField(blank=True, help_text='timeout, connection_lost, worker_died, connection, rate_limited, server_error, invalid_address, …', max_length=30),
        ),
        migrations.AddIndex(
            model_name='message',
            index=models.Index(fields=['environment', 'status'], name='message_env_status_idx'),
        ),
    ]
