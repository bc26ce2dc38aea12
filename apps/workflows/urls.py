from django.urls import path

from apps.workflows import api

urlpatterns = [
    path("workflows", api.WorkflowListView.as_view(), name="workflow-list"),
    path("workflows/<str:key>", api.WorkflowDetailView.as_view(), name="workflow-detail"),
    path("workflows/<str:key>/publish", api.WorkflowPublishView.as_view(), name="workflow-publish"),
    path("workflows/<str:key>/versions", api.WorkflowVersionListView.as_view(), name="workflow-versions"),
]
