/*
 * django-unfold under Clarion's Content-Security-Policy (script-src 'self', no 'unsafe-eval').
 *
 * The console loads Alpine's CSP build (vendor/alpine-csp-*.min.js), which parses expressions
 * instead of compiling them with new Function(). That build looks names up only in Alpine's own
 * scope: it never reaches global functions or objects (window, document, localStorage). So this
 * file, loaded (deferred) before Alpine, registers what unfold's templates name:
 *   - unfold's components, defined as global functions in unfold/js/app.js (theme, searchForm,
 *     searchDropdown, searchCommand), as Alpine.data components;
 *   - "consolePage", the <body>'s state (templates/unfold/layouts/skeleton.html): the active tab,
 *     the sidebar's open state kept in localStorage, the sort callbacks of sortable inlines, and a
 *     read-only view of the page's location for the change form's tab-preserving action.
 */
(function () {
  "use strict";

  function storedSidebarOpen() {
    try {
      var value = window.localStorage.getItem("sidebarDesktopOpen");
      return value === null ? true : value === "1";
    } catch (error) {
      return true;
    }
  }

  function storeSidebarOpen(open) {
    try {
      window.localStorage.setItem("sidebarDesktopOpen", open ? "1" : "0");
    } catch (error) {
      /* storage refused (private mode): the sidebar just forgets */
    }
  }

  document.addEventListener("alpine:init", function () {
    var Alpine = window.Alpine;

    ["theme", "searchForm", "searchDropdown"].forEach(function (name) {
      if (typeof window[name] === "function") {
        Alpine.data(name, window[name]);
      }
    });

    if (typeof window.searchCommand === "function") {
      Alpine.data("searchCommand", function (...args) {
        var component = window.searchCommand(...args);
        // The command palette's Enter: a statement in unfold's template, a method here (and only
        // once a result is highlighted: unfold's selectItem throws on none).
        component.enterUnlessModified = function (event, showHistory) {
          if (!event.metaKey && !event.ctrlKey && this.currentIndex > 0) {
            this.selectItem(showHistory, false);
          }
        };
        return component;
      });
    }

    Alpine.data("consolePage", function () {
      return {
        activeTab: "",
        sidebarMobileOpen: false,
        sidebarDesktopOpen: storedSidebarOpen(),
        // unfold's change form posts to the current address plus the active tab: a snapshot of
        // the location's two strings (the CSP build refuses the real global objects).
        window: {
          location: { pathname: window.location.pathname, search: window.location.search },
        },
        sortRecords: typeof window.sortRecords === "function" ? window.sortRecords : function () {},
        moveRecords: typeof moveRecords === "function" ? moveRecords : function () {},
        init: function () {
          var fallback = this.$el.dataset.defaultTab || "";
          if (this.$el.hasAttribute("data-default-tab")) {
            var current = typeof window.getCurrentTab === "function" ? window.getCurrentTab() : null;
            this.activeTab = current || fallback;
          }
          this.$watch("sidebarDesktopOpen", storeSidebarOpen);
        },
      };
    });
  });
})();
