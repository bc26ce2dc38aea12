// Settings pages of the console (docs/console.md, "Settings"): the allowed-origins list editor
// (Add / Remove rows; the server validates every row), the logo preview, and Copy buttons.
// The pages work without this file: one empty origin row per save, no live preview, select to copy.
(function () {
  "use strict";

  function originRow(list, name, value) {
    var item = document.createElement("li");
    item.className = "clarion-origin-row";
    var input = document.createElement("input");
    input.type = "text";
    input.name = name;
    input.size = 50;
    input.maxLength = 500;
    input.placeholder = "https://app.example.com";
    input.value = value || "";
    item.appendChild(input);
    list.appendChild(item);
    addRemoveButton(item);
    renumber(list);
    return input;
  }

  function renumber(list) {
    var inputs = list.querySelectorAll("input[type=text]");
    for (var i = 0; i < inputs.length; i++) {
      inputs[i].setAttribute("aria-label", "Allowed origin " + (i + 1));
    }
  }

  function addRemoveButton(item) {
    var button = document.createElement("button");
    button.type = "button";
    button.className = "button clarion-origin-remove";
    button.textContent = "Remove";
    button.addEventListener("click", function () {
      var list = item.parentNode;
      var input = item.querySelector("input");
      if (list.querySelectorAll("li").length > 1) {
        list.removeChild(item);
      } else {
        input.value = "";
      }
      renumber(list);
    });
    item.insertBefore(button, item.querySelector(".clarion-origin-error"));  // beside the input
  }

  function enhanceOrigins(editor) {
    var list = editor.querySelector(".clarion-origin-rows");
    var name = editor.getAttribute("data-name");
    var rows = list.querySelectorAll("li");
    for (var i = 0; i < rows.length; i++) addRemoveButton(rows[i]);
    var add = document.createElement("button");
    add.type = "button";
    add.className = "button clarion-origin-add";
    add.textContent = "Add an origin";
    add.addEventListener("click", function () {
      originRow(list, name, "").focus();
    });
    editor.appendChild(add);
  }

  function enhanceLogo(img) {
    var input = document.getElementById(img.getAttribute("data-for"));
    if (!input) return;
    function update() {
      var url = input.value.trim();
      if (url.indexOf("https://") === 0) {
        img.src = url;
        img.hidden = false;
      } else {
        img.removeAttribute("src");
        img.hidden = true;
      }
    }
    input.addEventListener("input", update);
  }

  function enhanceCopy(button) {
    button.addEventListener("click", function () {
      var source = button.getAttribute("data-copy-from");
      var text = source ? document.getElementById(source).value : button.getAttribute("data-copy");
      var done = function () {
        var label = button.textContent;
        button.textContent = "Copied";
        setTimeout(function () { button.textContent = label; }, 1500);
      };
      if (navigator.clipboard && navigator.clipboard.writeText) {
        navigator.clipboard.writeText(text).then(done, function () { button.textContent = "Select and copy"; });
      } else {
        button.textContent = "Select and copy";
      }
    });
  }

  // Picking a colour means using it: untick "No brand colour".
  function enhanceColor(picker) {
    var none = document.getElementById("id_brand_color_default");
    if (!none) return;
    picker.addEventListener("input", function () { none.checked = false; });
  }

  function init() {
    document.querySelectorAll(".clarion-origin-list").forEach(enhanceOrigins);
    document.querySelectorAll(".clarion-logo-preview").forEach(enhanceLogo);
    document.querySelectorAll(".clarion-copy").forEach(enhanceCopy);
    document.querySelectorAll("input[type=color][name=brand_primary_color]").forEach(enhanceColor);
  }

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", init);
  } else {
    init();
  }
})();
