/* Language tabs for django-modeltranslation fields in the Django admin, without jQuery UI or a CDN.
 *
 * modeltranslation marks each translated widget with the classes "mt mt-field-<field>-<lang>"
 * (and "mt-default" for the default language). This script adds a tab per language above the
 * form; choosing one hides the other languages' rows. Empty non-default fields say which
 * language they fall back to. The chosen language is also kept in a hidden "preview_locale"
 * input, so a live preview (layout-preview.js) renders that language.
 */
(function () {
  "use strict";

  function ready(fn) {
    if (document.readyState !== "loading") fn();
    else document.addEventListener("DOMContentLoaded", fn);
  }

  ready(function () {
    const form = document.querySelector("#content-main form");
    if (!form) return;
    const widgets = Array.from(form.querySelectorAll(".mt"));
    if (!widgets.length) return;

    const languageOf = (widget) => {
      const cls = Array.from(widget.classList).find((c) => c.startsWith("mt-field-"));
      return cls ? cls.split("-").pop() : null;
    };
    const fieldOf = (widget) => {
      const cls = Array.from(widget.classList).find((c) => c.startsWith("mt-field-"));
      return cls ? cls.slice("mt-field-".length, cls.lastIndexOf("-")) : null;
    };
    const defaultWidget = widgets.find((w) => w.classList.contains("mt-default"));
    const defaultLanguage = defaultWidget ? languageOf(defaultWidget) : languageOf(widgets[0]);
    const languages = [];
    widgets.forEach((w) => {
      const lang = languageOf(w);
      if (lang && !languages.includes(lang)) languages.push(lang);
    });
    languages.sort((a, b) => (a === defaultLanguage ? -1 : b === defaultLanguage ? 1 : 0));

    let locale = form.querySelector("input[name=preview_locale]");
    if (!locale) {
      locale = document.createElement("input");
      locale.type = "hidden";
      locale.name = "preview_locale";
      form.appendChild(locale);
    }

    const bar = document.createElement("div");
    bar.className = "ce-tabs mt-tabs";
    bar.setAttribute("role", "tablist");
    const buttons = languages.map((lang) => {
      const button = document.createElement("button");
      button.type = "button";
      button.className = "ce-tab";
      button.dataset.lang = lang;
      button.setAttribute("role", "tab");
      button.textContent = lang.toUpperCase() + (lang === defaultLanguage ? " (default)" : "");
      bar.appendChild(button);
      return button;
    });
    const firstFieldset = form.querySelector("fieldset");
    (firstFieldset || form).parentNode.insertBefore(bar, firstFieldset || form.firstChild);

    function rowOf(widget) {
      return widget.closest(".form-row") || widget.closest("div") || widget;
    }

    function refreshFallbacks() {
      widgets.forEach((widget) => {
        const lang = languageOf(widget);
        if (lang === defaultLanguage) return;
        const source = form.querySelector(`.mt-field-${fieldOf(widget)}-${defaultLanguage}`);
        const untranslated = !widget.value && source && source.value;
        let hint = rowOf(widget).querySelector(".ce-fallback");
        if (!hint) {
          hint = document.createElement("div");
          hint.className = "ce-fallback";
          widget.insertAdjacentElement("beforebegin", hint);
        }
        hint.textContent = `Not translated: falls back to ${defaultLanguage.toUpperCase()}.`;
        hint.hidden = !untranslated;
      });
    }

    function activate(lang) {
      buttons.forEach((b) => {
        const on = b.dataset.lang === lang;
        b.classList.toggle("ce-active", on);
        b.setAttribute("aria-selected", on ? "true" : "false");
      });
      widgets.forEach((widget) => { rowOf(widget).hidden = languageOf(widget) !== lang; });
      locale.value = lang;
      const label = document.getElementById("ce-preview-lang");
      if (label) label.textContent = lang;
      form.dispatchEvent(new CustomEvent("clarion:language", { detail: { language: lang } }));
    }

    buttons.forEach((b) => b.addEventListener("click", () => activate(b.dataset.lang)));
    form.addEventListener("input", refreshFallbacks);
    // Open the first language that has an error, else the default language.
    const withError = widgets.find((w) => rowOf(w).querySelector(".errorlist"));
    activate(withError ? languageOf(withError) : defaultLanguage);
    refreshFallbacks();
  });
})();
