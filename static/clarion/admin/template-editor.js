/* Clarion template editor (Django admin). Plain JavaScript, no dependencies, no build step.
 *
 * - language tabs over the translated fields, with "falls back to …" hints and untranslated counts;
 * - live preview: the form is POSTed (debounced) to the preview endpoint, which answers the
 *   rendered message and per-field errors ("fr.body": "line 2: unknown variable …");
 * - variable picker: inserts {{ name }} at the cursor of the last focused field;
 * - SMS character / segment counter (GSM-7 or UCS-2), live;
 * - test send: POSTs the form plus the address to the test-send endpoint.
 */
(function () {
  "use strict";

  const root = document.querySelector(".ce-editor");
  if (!root) return;
  const form = document.getElementById("ce-form");
  const channel = root.dataset.channel;
  const defaultLanguage = root.dataset.defaultLanguage;
  const previewBox = document.getElementById("ce-preview");
  const localeInput = document.getElementById("ce-preview-locale");
  const DEBOUNCE_MS = 300;
  let lastField = null;
  let timer = null;
  let sequence = 0;

  function csrfToken() {
    const input = form.querySelector("input[name=csrfmiddlewaretoken]");
    return input ? input.value : "";
  }

  // --- language tabs ---------------------------------------------------------------------------
  const tabs = Array.from(root.querySelectorAll(".ce-tab"));
  const panels = Array.from(root.querySelectorAll(".ce-lang-panel"));

  function activate(lang) {
    tabs.forEach((tab) => {
      const on = tab.dataset.lang === lang;
      tab.classList.toggle("ce-active", on);
      tab.setAttribute("aria-selected", on ? "true" : "false");
    });
    panels.forEach((panel) => { panel.hidden = panel.dataset.lang !== lang; });
    localeInput.value = lang;
    const label = document.getElementById("ce-preview-lang");
    if (label) label.textContent = lang;
    schedulePreview(0);
  }
  tabs.forEach((tab) => tab.addEventListener("click", () => activate(tab.dataset.lang)));

  function defaultValue(fieldName) {
    const input = form.querySelector(`[name="${fieldName}_${defaultLanguage}"]`);
    return input ? input.value : "";
  }

  function refreshFallbacks() {
    const missing = {};
    form.querySelectorAll(".ce-input[data-lang]").forEach((input) => {
      const lang = input.dataset.lang;
      if (lang === defaultLanguage) return;
      const fallback = defaultValue(input.dataset.field);
      const untranslated = !input.value && !!fallback;
      const hint = form.querySelector(`[data-fallback-for="${input.name}"]`);
      if (hint) hint.hidden = !untranslated;
      input.placeholder = fallback ? fallback.slice(0, 200) : "";
      missing[lang] = (missing[lang] || 0) + (untranslated ? 1 : 0);
    });
    Object.entries(missing).forEach(([lang, count]) => {
      const badge = root.querySelector(`[data-missing-for="${lang}"]`);
      if (!badge) return;
      badge.hidden = count === 0;
      badge.textContent = `${count} untranslated`;
    });
  }

  // --- SMS counter -------------------------------------------------------------------------------
  const GSM7 = "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà";
  const GSM7_EXT = "^{}\\[~]|€\f";

  function smsSegments(text) {
    const chars = Array.from(text);
    const gsm = chars.every((c) => GSM7.includes(c) || GSM7_EXT.includes(c));
    let units, single, multi;
    if (gsm) {
      units = chars.reduce((n, c) => n + (GSM7_EXT.includes(c) ? 2 : 1), 0);
      single = 160; multi = 153;
    } else {
      units = text.length; // UTF-16 code units
      single = 70; multi = 67;
    }
    const segments = units === 0 ? 0 : units <= single ? 1 : Math.ceil(units / multi);
    return { characters: chars.length, units, segments, encoding: gsm ? "GSM-7" : "UCS-2" };
  }

  function describeSms(stats) {
    const plural = stats.segments === 1 ? "" : "s";
    return `${stats.characters} characters · ${stats.segments} segment${plural} · ${stats.encoding}`;
  }

  function refreshCounters() {
    root.querySelectorAll("[data-counter-for]").forEach((counter) => {
      const input = document.getElementById(counter.dataset.counterFor);
      if (!input) return;
      const stats = smsSegments(input.value);
      counter.textContent = `Template text: ${describeSms(stats)} (variables are counted in the preview)`;
      counter.classList.toggle("ce-warn", stats.segments > 1);
    });
  }

  // --- errors --------------------------------------------------------------------------------------
  function showErrors(errors) {
    const known = new Set();
    root.querySelectorAll("[data-error-for]").forEach((list) => {
      const key = list.dataset.errorFor;
      const message = errors[key];
      list.hidden = !message;
      list.querySelector("li").textContent = message || "";
      if (message) known.add(key);
      const field = list.closest(".ce-field");
      if (field) field.classList.toggle("ce-has-error", !!message);
    });
    // A tab with an error gets a marker, so errors in hidden languages are not missed.
    tabs.forEach((tab) => {
      const lang = tab.dataset.lang;
      tab.classList.toggle("ce-tab-error", Object.keys(errors).some((key) => key.startsWith(`${lang}.`)));
    });
    const general = root.querySelector(".ce-general-errors");
    const others = Object.entries(errors).filter(([key]) => !known.has(key));
    general.hidden = others.length === 0;
    general.replaceChildren(...others.map(([key, message]) => {
      const item = document.createElement("li");
      item.textContent = `${key}: ${message}`;
      return item;
    }));
  }

  // --- preview -------------------------------------------------------------------------------------
  function setText(id, value) {
    const node = document.getElementById(id);
    if (node) node.textContent = value || "";
  }

  function render(rendered) {
    if (channel === "email") {
      setText("ce-pv-subject", rendered.subject || "(no subject)");
      setText("ce-pv-preheader", rendered.preheader);
      document.getElementById("ce-pv-frame").srcdoc = rendered.body;
      setText("ce-pv-text", rendered.text);
    } else if (channel === "sms") {
      setText("ce-pv-body", rendered.body);
      setText("ce-pv-sms", rendered.sms && rendered.sms.encoding ? `Rendered: ${describeSms(rendered.sms)}` : "");
    } else if (channel === "in_app") {
      setText("ce-pv-title", rendered.title);
      setText("ce-pv-body", rendered.body);
      setText("ce-pv-link", rendered.action_url ? `Opens ${rendered.action_url}` : "");
      const actions = document.getElementById("ce-pv-actions");
      actions.replaceChildren(...(rendered.actions || []).map((action) => {
        const button = document.createElement("span");
        button.className = `ce-inbox-button ce-${action.kind}`;
        button.textContent = action.label;
        button.title = action.url;
        return button;
      }));
    } else {
      setText("ce-pv-title", rendered.title);
      setText("ce-pv-body", rendered.body);
    }
    const fallbacks = Object.entries(rendered.fallbacks || {});
    setText(
      "ce-preview-note",
      fallbacks.length
        ? `Untranslated here, shown in ${root.dataset.defaultLanguageName}: ${fallbacks.map(([f]) => f.replace(/_/g, " ")).join(", ")}.`
        : ""
    );
  }

  async function preview() {
    const mine = ++sequence;
    previewBox.dataset.state = "loading";
    let response;
    try {
      response = await fetch(root.dataset.previewUrl, {
        method: "POST",
        body: new FormData(form),
        headers: { "X-CSRFToken": csrfToken(), Accept: "application/json" },
        credentials: "same-origin",
      });
    } catch (error) {
      previewBox.dataset.state = "offline";
      return;
    }
    if (mine !== sequence) return; // a newer preview is on its way
    if (!response.ok) {
      previewBox.dataset.state = "error";
      showErrors({ preview: `The preview failed (HTTP ${response.status}).` });
      return;
    }
    const data = await response.json();
    if (mine !== sequence) return;
    showErrors(data.errors || {});
    if (data.rendered) render(data.rendered);
    previewBox.dataset.state = data.ok ? "ok" : "invalid";
    previewBox.dataset.sequence = String(mine);
  }

  function schedulePreview(delay) {
    clearTimeout(timer);
    timer = setTimeout(preview, delay === undefined ? DEBOUNCE_MS : delay);
  }

  form.addEventListener("input", (event) => {
    if (event.target.id === "id_sample_payload") refreshPayloadVariables();
    if (event.target.classList.contains("ce-input")) {
      refreshFallbacks();
      refreshCounters();
      schedulePreview();
    }
  });
  form.addEventListener("change", (event) => {
    if (event.target.tagName === "SELECT") schedulePreview(0);
  });
  form.addEventListener("focusin", (event) => {
    if (event.target.matches("textarea.ce-input[data-field], input.ce-input[data-field]")) lastField = event.target;
  });

  // Email: HTML / plain text switch.
  root.querySelectorAll(".ce-switch button").forEach((button) => {
    button.addEventListener("click", () => {
      root.querySelectorAll(".ce-switch button").forEach((b) => b.classList.toggle("ce-active", b === button));
      const text = button.dataset.show === "text";
      document.getElementById("ce-pv-frame").hidden = text;
      document.getElementById("ce-pv-text").hidden = !text;
    });
  });

  // --- variable picker ---------------------------------------------------------------------------
  const varList = document.getElementById("ce-var-list");

  function flatten(prefix, value, out, depth) {
    if (value && typeof value === "object" && !Array.isArray(value) && Object.keys(value).length && depth < 6) {
      Object.entries(value).forEach(([key, item]) => {
        const name = /^[A-Za-z_][A-Za-z0-9_]*$/.test(key) ? `${prefix}.${key}` : `${prefix}[${JSON.stringify(key)}]`;
        flatten(name, item, out, depth + 1);
      });
    } else if (Array.isArray(value) && value.length && depth < 6) {
      out.push([prefix, `list of ${value.length}`]);
      flatten(`${prefix}[0]`, value[0], out, depth + 1);
    } else {
      out.push([prefix, value === null || value === undefined ? "" : String(value).slice(0, 80)]);
    }
  }

  function variableItem(group, name, example) {
    const item = document.createElement("li");
    item.dataset.group = group;
    const button = document.createElement("button");
    button.type = "button";
    button.className = "ce-var";
    button.dataset.insert = name;
    button.title = example;
    const code = document.createElement("code");
    code.textContent = name;
    const span = document.createElement("span");
    span.textContent = example.length > 30 ? `${example.slice(0, 29)}…` : example;
    button.append(code, span);
    item.appendChild(button);
    return item;
  }

  // The payload variables follow the sample payload as it is edited.
  function refreshPayloadVariables() {
    const sample = document.getElementById("id_sample_payload");
    if (!sample || !varList) return;
    let parsed;
    try { parsed = JSON.parse(sample.value || "{}"); } catch (error) { return; }
    if (!parsed || typeof parsed !== "object" || Array.isArray(parsed)) return;
    const rows = [];
    flatten("payload", parsed, rows, 0);
    const items = rows.filter(([name]) => name !== "payload").map(([name, example]) => variableItem("payload", name, example));
    varList.querySelectorAll('li[data-group="payload"]').forEach((item) => item.remove());
    varList.prepend(...items);
  }

  function insertVariable(button) {
    let target = lastField;
    if (!target || target.closest("[hidden]")) {
      target = root.querySelector(`.ce-lang-panel[data-lang="${localeInput.value}"] .ce-input`);
    }
    if (!target) return;
    const snippet = `{{ ${button.dataset.insert} }}`;
    const start = target.selectionStart ?? target.value.length;
    const end = target.selectionEnd ?? target.value.length;
    target.setRangeText(snippet, start, end, "end");
    target.focus();
    target.dispatchEvent(new Event("input", { bubbles: true }));
  }
  if (varList) {
    varList.addEventListener("mousedown", (event) => {
      if (event.target.closest(".ce-var")) event.preventDefault(); // keep the field's focus
    });
    varList.addEventListener("click", (event) => {
      const button = event.target.closest(".ce-var");
      if (button) insertVariable(button);
    });
  }
  const filter = document.getElementById("ce-var-filter");
  if (filter) {
    filter.addEventListener("input", () => {
      const needle = filter.value.trim().toLowerCase();
      root.querySelectorAll("#ce-var-list li").forEach((item) => {
        item.hidden = needle && !item.textContent.toLowerCase().includes(needle);
      });
    });
  }

  // --- test send -------------------------------------------------------------------------------------
  const sendButton = document.getElementById("ce-test-send");
  if (sendButton) {
    sendButton.addEventListener("click", async () => {
      const result = document.getElementById("ce-test-result");
      const body = new FormData(form);
      body.set("test_to", document.getElementById("ce-test-to").value);
      body.set("test_subscriber", document.getElementById("ce-test-subscriber").value);
      sendButton.disabled = true;
      result.textContent = "Sending…";
      result.className = "ce-test-result";
      try {
        const response = await fetch(root.dataset.testSendUrl, {
          method: "POST",
          body,
          headers: { "X-CSRFToken": csrfToken(), Accept: "application/json" },
          credentials: "same-origin",
        });
        const data = await response.json();
        result.textContent = data.message;
        result.classList.add(data.ok ? "ce-ok" : "ce-fail");
        if (data.errors) showErrors(data.errors);
      } catch (error) {
        result.textContent = `The test send failed: ${error}`;
        result.classList.add("ce-fail");
      } finally {
        sendButton.disabled = false;
      }
    });
  }

  // Rolling back asks first: it publishes at once.
  root.querySelectorAll(".ce-rollback").forEach((button) => {
    button.addEventListener("click", (event) => {
      if (!window.confirm(`Publish a new version with the content of version ${button.dataset.version}?`)) {
        event.preventDefault();
      }
    });
  });

  // A refused save or publish comes back with errors next to the fields: when they are in another
  // language than the open tab, open that language and bring its first error into view.
  function revealFirstError() {
    const error = Array.from(root.querySelectorAll(".ce-lang-panel .ce-error")).find((list) => !list.hidden);
    if (!error) return;
    const panel = error.closest(".ce-lang-panel");
    if (panel.hidden) activate(panel.dataset.lang);
    tabs.forEach((tab) => {
      const lang = tab.dataset.lang;
      const failing = root.querySelector(`.ce-lang-panel[data-lang="${lang}"] .ce-error:not([hidden])`);
      tab.classList.toggle("ce-tab-error", !!failing);
    });
    error.closest(".ce-field").scrollIntoView({ block: "center" });
  }

  refreshFallbacks();
  refreshCounters();
  refreshPayloadVariables(); // a re-shown form may carry an unsaved sample payload
  revealFirstError();
  schedulePreview(0);
})();
