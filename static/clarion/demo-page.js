/* The demo page around the widget: the unread count in the tab title, and the curl copy button. */
(function () {
  "use strict";
  var inbox = document.getElementById("clarion-demo-inbox");
  var title = document.title;
  if (inbox) {
    inbox.addEventListener("clarion-inbox:counts", function (e) {
      document.title = (e.detail.unread ? "(" + e.detail.unread + ") " : "") + title;
    });
  }
  var copy = document.getElementById("clarion-demo-copy");
  var curl = document.getElementById("clarion-demo-curl");
  if (copy && curl) {
    copy.addEventListener("click", function () {
      navigator.clipboard.writeText(curl.textContent).then(function () {
        copy.textContent = "Copied";
        setTimeout(function () { copy.textContent = "Copy"; }, 1500);
      });
    });
  }
})();
