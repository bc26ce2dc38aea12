from modeltranslation.translator import TranslationOptions, register

from apps.templates.models import TemplateVersion


@register(TemplateVersion)
class TemplateVersionTranslationOptions(TranslationOptions):
    fields = ("subject", "title", "body")
