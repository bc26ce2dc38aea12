from django.urls import path

from apps.templates import api

urlpatterns = [
    path("templates", api.TemplateListView.as_view(), name="template-list"),
    path("templates/<str:key>", api.TemplateDetailView.as_view(), name="template-detail"),
    path("templates/<str:key>/versions", api.TemplateVersionListView.as_view(), name="template-version-list"),
    path("templates/<str:key>/versions/diff", api.TemplateVersionDiffView.as_view(), name="template-version-diff"),
    path(
        "templates/<str:key>/versions/<int:number>",
        api.TemplateVersionDetailView.as_view(),
        name="template-version-detail",
    ),
    path("templates/<str:key>/publish", api.TemplatePublishView.as_view(), name="template-publish"),
    path("templates/<str:key>/preview", api.TemplatePreviewView.as_view(), name="template-preview"),
    path("templates/<str:key>/rollback", api.TemplateRollbackView.as_view(), name="template-rollback"),
    path("templates/<str:key>/variables", api.TemplateVariablesView.as_view(), name="template-variables"),
    path("templates/<str:key>/test", api.TemplateTestSendView.as_view(), name="template-test-send"),
    path("layouts", api.LayoutListView.as_view(), name="layout-list"),
    path("layouts/<str:key>", api.LayoutDetailView.as_view(), name="layout-detail"),
    path("layouts/<str:key>/preview", api.LayoutPreviewView.as_view(), name="layout-preview"),
]
