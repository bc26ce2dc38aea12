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
