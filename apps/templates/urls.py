from django.urls import path

from apps.templates import api

urlpatterns = [
    path("templates", api.TemplateListView.as_view(), name="template-list"),
    path("templates/<str:key>", api.TemplateDetailView.as_view(), name="template-detail"),
    path("templates/<str:key>/versions", api.TemplateVersionListView.as_view(), name="template-version-list"),
    path(
        "templates/<str:key>/versions/<int:number>",
        api.TemplateVersionDetailView.as_view(),
        name="template-version-detail",
    ),
    path("templates/<str:key>/publish", api.TemplatePublishView.as_view(), name="template-publish"),
    path("templates/<str:key>/preview", api.TemplatePreviewView.as_view(), name="template-preview"),
]
