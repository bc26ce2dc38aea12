/* Clarion workflow editor (Django admin). Without this file the editor still works: every
   button is a form submission. With it, add / move / remove happen in the background (the server
   re-renders the step list), and the diagram is redrawn from the form as you type. No library. */
(function () {
  "use strict";
  var root = document.querySelector(".wf-editor");
  var form = document.getElementById("wf-form");
  if (!root || !form) return;
  var stepsBox = document.getElementById("wf-steps");
  var diagramBox = document.getElementById("wf-diagram");
  var statusLine = document.getElementById("wf-status");
  var diagramUrl = root.getAttribute("data-diagram-url");
  var timer = null;
  var sequence = 0;

  function formData(extra) {
    var data = new FormData(form);
    data.delete("_action");
    Object.keys(extra || {}).forEach(function (name) { data.append(name, extra[name]); });
    return data;
  }

  function redrawDiagram() {
    var mine = ++sequence;
    fetch(diagramUrl, { method: "POST", body: formData(), credentials: "same-origin" })
      .then(function (response) { return response.ok ? response.text() : Promise.reject(response.status); })
      .then(function (svg) { if (mine === sequence) diagramBox.innerHTML = svg; })  // escaped by the server
      .catch(function () { statusLine.textContent = "The diagram could not be redrawn."; });
  }

  function scheduleRedraw() {
    clearTimeout(timer);
    timer = setTimeout(redrawDiagram, 350);
  }

  function showPreview(select) {
    var box = form.querySelector('[data-preview-for="' + select.id + '"]');
    if (!box) return;
    var option = select.options[select.selectedIndex];
    box.textContent = option ? option.getAttribute("data-preview") || "" : "";
  }

  form.addEventListener("click", function (event) {
    var button = event.target.closest("button.wf-op");
    if (!button) return;
    event.preventDefault();
    var data = formData({ _op: button.value, _fragment: "1" });
    fetch(form.action, { method: "POST", body: data, credentials: "same-origin" })
      .then(function (response) { return response.ok ? response.text() : Promise.reject(response.status); })
      .then(function (html) {
        stepsBox.innerHTML = html;  // rendered (and escaped) by the server's templates
        statusLine.textContent = "Not saved yet: save the draft or publish.";
        redrawDiagram();
      })
      .catch(function () { statusLine.textContent = "That change could not be made; try again."; });
  });

  form.addEventListener("input", scheduleRedraw);
  form.addEventListener("change", function (event) {
    if (event.target.matches("select.wf-template")) showPreview(event.target);
    scheduleRedraw();
  });
})();

/* "Test this workflow": the Trigger button posts in the background and shows the answer (the
   panel: its form, errors, the event's timeline); the timeline is then fetched again every 1.5 s
   while the server marks it live (data-live="1"), at most MAX_POLLS times. Without this script the
   form posts and the browser lands on the event's page. */
(function () {
  "use strict";
  var INTERVAL_MS = 1500;
  var MAX_POLLS = 80;  // two minutes: a longer wait is the event page's business
  var polls = 0;
  var timer = null;

  function panel() { return document.getElementById("wf-test"); }

  function note(text) {
    var box = panel() && panel().querySelector(".wf-test-event");
    if (box) box.textContent = text;
  }

  function schedule() {
    clearTimeout(timer);
    var live = panel() && panel().querySelector('.wf-test-timeline[data-live="1"]');
    if (!live) return;
    if (polls >= MAX_POLLS) {
      var link = live.querySelector(".wf-test-event a");
      note("Stopped updating after two minutes: the event page shows the rest.");
      if (link) live.querySelector(".wf-test-event").appendChild(link);
      return;
    }
    timer = setTimeout(function () { poll(live.getAttribute("data-poll-url")); }, INTERVAL_MS);
  }

  function poll(url) {
    polls += 1;
    fetch(url, { credentials: "same-origin", headers: { Accept: "text/html" } })
      .then(function (response) { return response.ok ? response.text() : Promise.reject(response.status); })
      .then(function (html) {
        var result = document.getElementById("wf-test-result");
        if (result) result.innerHTML = html;  // rendered (and escaped) by the server's templates
        schedule();
      })
      .catch(function () { note("The timeline could not be refreshed; open the event page."); });
  }

  document.addEventListener("submit", function (event) {
    var form = event.target;
    if (!form || form.id !== "wf-test-form") return;
    event.preventDefault();
    var button = document.getElementById("wf-test-trigger");
    if (button) button.disabled = true;
    var data = new FormData(form);
    data.append("_fragment", "1");
    fetch(form.action, { method: "POST", body: data, credentials: "same-origin" })
      .then(function (response) {
        return response.ok || response.status === 422 ? response.text() : Promise.reject(response.status);
      })
      .then(function (html) {
        panel().outerHTML = html;  // rendered (and escaped) by the server's templates
        // the button was replaced: keep the keyboard in the panel (on the errors, else its heading)
        var target = document.getElementById("wf-test-errors") || document.getElementById("wf-test-title");
        if (target) target.focus();
        polls = 0;
        schedule();
      })
      .catch(function () {
        if (button) button.disabled = false;
        var result = document.getElementById("wf-test-result");
        if (result) result.textContent = "The test could not be triggered; try again.";
      });
  });

  schedule();
})();
