/* Live preview on the email layout change page: the form (unsaved) is POSTed, debounced, to the
 * layout's preview endpoint, which renders a sample Markdown email in it. */
(function () {
  "use strict";
  document.addEventListener("DOMContentLoaded", function () {
    const panel = document.getElementById("ce-layout-preview");
    if (!panel) return;
    const form = panel.closest("form") || document.querySelector("#content-main form");
    const frame = document.getElementById("ce-pv-frame");
    const text = document.getElementById("ce-pv-text");
    const errors = document.getElementById("ce-layout-errors");
    let timer = null;
    let sequence = 0;

    async function preview() {
      const mine = ++sequence;
      const body = new FormData(form);
      const token = form.querySelector("input[name=csrfmiddlewaretoken]");
      const response = await fetch(panel.dataset.previewUrl, {
        method: "POST",
        body,
        headers: { "X-CSRFToken": token ? token.value : "", Accept: "application/json" },
        credentials: "same-origin",
      });
      if (mine !== sequence || !response.ok) return;
      const data = await response.json();
      const entries = Object.entries(data.errors || {});
      errors.hidden = entries.length === 0;
      errors.replaceChildren(...entries.map(([key, message]) => {
        const item = document.createElement("li");
        item.textContent = `${key}: ${message}`;
        return item;
      }));
      if (data.rendered) {
        frame.srcdoc = data.rendered.body;
        text.textContent = data.rendered.text;
      }
      panel.dataset.state = data.ok ? "ok" : "invalid";
    }

    function schedule(delay) {
      clearTimeout(timer);
      timer = setTimeout(preview, delay === undefined ? 300 : delay);
    }
    form.addEventListener("input", () => schedule());
    form.addEventListener("change", () => schedule());
    form.addEventListener("clarion:language", () => schedule(0));
    schedule(0);
  });
})();
