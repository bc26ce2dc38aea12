from modeltranslation.translator import TranslationOptions, register

from apps.templates.models import EmailLayout, TemplateVersion


@register(TemplateVersion)
class TemplateVersionTranslationOptions(TranslationOptions):
    fields = ("subject", "title", "body", "preheader", "primary_action_label", "secondary_action_label")


@register(EmailLayout)
class EmailLayoutTranslationOptions(TranslationOptions):
    fields = ("header", "footer")
