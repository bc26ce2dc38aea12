/* The hosted preference pages: after a save, move focus to the confirmation so screen readers announce it. */
(function () {
  "use strict";
  var target = document.querySelector("[data-autofocus]");
  if (target) target.focus();
})();
