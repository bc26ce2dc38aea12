from django.urls import path

from apps.workflows import api

urlpatterns = [
    path("workflows", api.WorkflowListView.as_view(), name="workflow-list"),
    path("workflows/<str:key>", api.WorkflowDetailView.as_view(), name="workflow-detail"),
    path("workflows/<str:key>/publish", api.WorkflowPublishView.as_view(), name="workflow-publish"),
    path("workflows/<str:key>/versions", api.WorkflowVersionListView.as_view(), name="workflow-versions"),
    path("workflows/<str:key>/preferences", api.WorkflowPreferenceView.as_view(), name="workflow-preferences"),
    path("subscribers/<str:subscriber_id>/runs", api.SubscriberRunsView.as_view(), name="subscriber-runs"),
    path("digests/flush", api.DigestFlushView.as_view(), name="digest-flush"),
    path("frequency-caps", api.FrequencyCapListView.as_view(), name="frequency-cap-list"),
    path("frequency-caps/<int:cap_id>", api.FrequencyCapDetailView.as_view(), name="frequency-cap-detail"),
]
