/*! Clarion inbox widget: <clarion-inbox>, a dependency-free web component. No build step.
 *
 *   <script src="https://clarion.example.com/static/clarion/inbox.js" defer></script>
 *   <clarion-inbox publishable-key="pk_..." subscriber-id="user-1" subscriber-hash="..."></clarion-inbox>
 *
 * Attributes: publishable-key + subscriber-id + subscriber-hash (HMAC from your backend), or token
 * (minted by POST /api/v1/inbox/tokens); api-url (default: where this script came from);
 * locale (en, fr, de; default: the subscriber's, then the browser's); theme (light, dark, auto)
 * or the boolean dark; inline (the panel is always open); categories ("key:Label,key2");
 * poll-interval (seconds, polling when the websocket is down; default 20); heading; align=left.
 * Events (bubbling, composed): clarion-inbox:ready, :counts, :message (a new one arrived),
 * :click (a message was opened), :action (an action button), :token-expired (set a new token).
 * Full guide: docs/inbox.md.
 */
(function () {
  "use strict";
  if (typeof window === "undefined" || !window.customElements || customElements.get("clarion-inbox")) return;

  var SCRIPT_ORIGIN = (function () {
    try { return new URL(document.currentScript.src).origin; } catch (e) { return location.origin; }
  })();
  var PAGE_SIZE = 20;
  var PING_MS = 25000;
  var DEFAULT_OVERLAP_US = 120000000;

  // --- Strings ------------------------------------------------------------------------------------

  var STRINGS = {
    en: {
      notifications: "Notifications", bellLabel: "Notifications, {n} unread", bellLabelNone: "Notifications",
      markAllRead: "Mark all as read", all: "All", unread: "Unread", archived: "Archived",
      allCategories: "All categories", category: "Category", filters: "Filters",
      empty: "No notifications yet", emptyUnread: "All caught up", emptyArchived: "Nothing archived",
      emptyCategory: "Nothing in this category",
      markRead: "Mark as read", markUnread: "Mark as unread", archive: "Archive", unarchive: "Move to inbox",
      snooze: "Snooze for an hour", remove: "Delete", preferences: "Notification preferences", back: "Back",
      preferencesTitle: "Preferences",
      close: "Close", done: "Done", loading: "Loading…", loadError: "Could not load notifications.",
      retry: "Retry", justNow: "just now", live: "Live", connecting: "Connecting…", reconnecting: "Reconnecting…",
      polling: "Updating every {n} s", originRefused: "This site may not show this inbox.",
      channels: "Channels", categories: "Categories", saved: "Saved", saveError: "Could not save.",
      critical: "Always on", unreadItem: "Unread", newMessage: "New notification: {title}",
      ch_in_app: "In-app", ch_email: "Email", ch_sms: "SMS", ch_push: "Push", ch_chat: "Chat", ch_webhook: "Webhook",
    },
    fr: {
      notifications: "Notifications", bellLabel: "Notifications, {n} non lues", bellLabelNone: "Notifications",
      markAllRead: "Tout marquer comme lu", all: "Toutes", unread: "Non lues", archived: "Archivées",
      allCategories: "Toutes les catégories", category: "Catégorie", filters: "Filtres",
      empty: "Aucune notification", emptyUnread: "Vous êtes à jour", emptyArchived: "Rien d'archivé",
      emptyCategory: "Rien dans cette catégorie",
      markRead: "Marquer comme lu", markUnread: "Marquer comme non lu", archive: "Archiver",
      unarchive: "Remettre dans la boîte", snooze: "Reporter d'une heure", remove: "Supprimer",
      preferences: "Préférences de notification", preferencesTitle: "Préférences", back: "Retour", close: "Fermer", done: "Fait",
      loading: "Chargement…", loadError: "Impossible de charger les notifications.", retry: "Réessayer",
      justNow: "à l'instant", live: "En direct", connecting: "Connexion…", reconnecting: "Reconnexion…",
      polling: "Mise à jour toutes les {n} s", originRefused: "Ce site ne peut pas afficher cette boîte.",
      channels: "Canaux", categories: "Catégories", saved: "Enregistré", saveError: "Échec de l'enregistrement.",
      critical: "Toujours actif", unreadItem: "Non lue", newMessage: "Nouvelle notification : {title}",
      ch_in_app: "Dans l'application", ch_email: "E-mail", ch_sms: "SMS", ch_push: "Push", ch_chat: "Chat",
      ch_webhook: "Webhook",
    },
    de: {
      notifications: "Mitteilungen", bellLabel: "Mitteilungen, {n} ungelesen",
      bellLabelNone: "Mitteilungen", markAllRead: "Alle als gelesen markieren", all: "Alle",
      unread: "Ungelesen", archived: "Archiviert", allCategories: "Alle Kategorien", category: "Kategorie",
      filters: "Filter", empty: "Noch keine Mitteilungen", emptyUnread: "Alles gelesen",
      emptyCategory: "Nichts in dieser Kategorie",
      emptyArchived: "Nichts archiviert", markRead: "Als gelesen markieren", markUnread: "Als ungelesen markieren",
      archive: "Archivieren", unarchive: "Zurück in den Posteingang", snooze: "Eine Stunde zurückstellen",
      remove: "Löschen", preferences: "Mitteilungseinstellungen", preferencesTitle: "Einstellungen", back: "Zurück", close: "Schließen",
      done: "Erledigt", loading: "Wird geladen…", loadError: "Mitteilungen konnten nicht geladen werden.",
      retry: "Erneut versuchen", justNow: "gerade eben", live: "Live", connecting: "Verbinde…",
      reconnecting: "Verbindung wird wiederhergestellt…", polling: "Aktualisierung alle {n} s",
      originRefused: "Diese Seite darf diesen Posteingang nicht anzeigen.", channels: "Kanäle",
      categories: "Kategorien", saved: "Gespeichert", saveError: "Speichern fehlgeschlagen.",
      critical: "Immer aktiv", unreadItem: "Ungelesen", newMessage: "Neue Mitteilung: {title}",
      ch_in_app: "In der App", ch_email: "E-Mail", ch_sms: "SMS", ch_push: "Push", ch_chat: "Chat",
      ch_webhook: "Webhook",
    },
  };

  function pickLocale(wanted) {
    var candidates = [].concat(wanted || [], navigator.languages || [], navigator.language || [], "en");
    for (var i = 0; i < candidates.length; i++) {
      var code = String(candidates[i] || "").toLowerCase().split(/[-_]/)[0];
      if (STRINGS[code]) return code;
    }
    return "en";
  }

  // --- Styles -------------------------------------------------------------------------------------

  var CSS = [
    ":host { --clarion-accent: #4f46e5; --clarion-accent-contrast: #fff; --clarion-bg: #fff; --clarion-fg: #111827;",
    "  --clarion-muted: #6b7280; --clarion-border: #e5e7eb; --clarion-hover: #f9fafb; --clarion-unread-bg: #f5f7ff;",
    "  --clarion-badge-bg: #e11d48; --clarion-badge-fg: #fff; --clarion-radius: 12px; --clarion-shadow: 0 12px 32px rgba(15,23,42,.16);",
    "  --clarion-font: system-ui, -apple-system, 'Segoe UI', Roboto, sans-serif; --clarion-panel-width: 380px;",
    "  --clarion-panel-height: 520px; --clarion-focus: 0 0 0 3px rgba(79,70,229,.45);",
    "  display: inline-block; position: relative; font-family: var(--clarion-font); color: var(--clarion-fg);",
    "  line-height: 1.4; font-size: 14px; }",
    ":host([hidden]) { display: none; }",
    ":host([theme=dark]), :host([dark]) { --clarion-accent: #818cf8; --clarion-accent-contrast: #0b1020; --clarion-bg: #111827;",
    "  --clarion-fg: #f3f4f6; --clarion-muted: #9ca3af; --clarion-border: #1f2937; --clarion-hover: #1a2232;",
    "  --clarion-unread-bg: #172033; --clarion-shadow: 0 12px 32px rgba(0,0,0,.5); --clarion-focus: 0 0 0 3px rgba(129,140,248,.55); }",
    "@media (prefers-color-scheme: dark) { :host([theme=auto]) { --clarion-accent: #818cf8; --clarion-accent-contrast: #0b1020;",
    "  --clarion-bg: #111827; --clarion-fg: #f3f4f6; --clarion-muted: #9ca3af; --clarion-border: #1f2937; --clarion-hover: #1a2232;",
    "  --clarion-unread-bg: #172033; } }",
    "*, *::before, *::after { box-sizing: border-box; }",
    "[hidden] { display: none !important; }",
    "button, select, input { font: inherit; color: inherit; }",
    "button { cursor: pointer; }",
    ":focus-visible { outline: none; box-shadow: var(--clarion-focus); }",
    ".sr-only { position: absolute; width: 1px; height: 1px; overflow: hidden; clip: rect(0 0 0 0); white-space: nowrap; }",
    ".bell { position: relative; width: 40px; height: 40px; border-radius: 50%; border: 1px solid var(--clarion-border);",
    "  background: var(--clarion-bg); color: var(--clarion-fg); display: grid; place-items: center; }",
    ".bell:hover { background: var(--clarion-hover); }",
    ".bell svg { width: 20px; height: 20px; }",
    ".badge { position: absolute; top: -5px; right: -7px; min-width: 20px; height: 20px; padding: 0 6px; border-radius: 10px;",
    "  background: var(--clarion-badge-bg); color: var(--clarion-badge-fg); font-size: 11px; font-weight: 700;",
    "  display: grid; place-items: center; border: 2px solid var(--clarion-bg); }",
    ".badge[hidden] { display: none; }",
    ".panel { position: absolute; top: calc(100% + 8px); right: 0; z-index: 2147483000; width: var(--clarion-panel-width);",
    "  background: var(--clarion-bg); color: var(--clarion-fg); border: 1px solid var(--clarion-border);",
    "  border-radius: var(--clarion-radius); box-shadow: var(--clarion-shadow); display: flex; flex-direction: column;",
    "  height: var(--clarion-panel-height); max-width: calc(100vw - 16px); overflow: hidden; }",
    ":host([align=left]) .panel { right: auto; left: 0; }",
    ":host([inline]) { display: block; }",
    ":host([inline]) .bell-wrap { display: none; }",
    ":host([inline]) .panel { position: static; width: 100%; box-shadow: none; }",
    ".panel[hidden] { display: none; }",
    // The header fits the panel in every language: when the words do not fit, "mark all as read"
    // becomes an icon (its words stay its accessible name) and, last, the heading is shortened.
    "header { display: flex; align-items: center; gap: 8px; padding: 12px 14px 8px; }",
    "header > * { flex-shrink: 0; }",
    "h2 { font-size: 15px; margin: 0; flex: 1 1 auto; min-width: 0; font-weight: 650; display: flex; align-items: center; gap: 8px; }",
    ".heading { overflow: hidden; text-overflow: ellipsis; white-space: nowrap; min-width: 0; }",
    ".count { flex-shrink: 0; font-size: 11.5px; font-weight: 700; color: var(--clarion-accent-contrast); background: var(--clarion-accent);",
    "  border-radius: 10px; padding: 1px 7px; min-width: 20px; text-align: center; }",
    ".icon-btn { border: 0; background: none; width: 30px; height: 30px; border-radius: 8px; display: grid; place-items: center;",
    "  color: var(--clarion-muted); }",
    ".icon-btn:hover { background: var(--clarion-hover); color: var(--clarion-fg); }",
    ".icon-btn svg { width: 17px; height: 17px; }",
    ".text-btn { border: 0; background: none; color: var(--clarion-accent); font-size: 12.5px; font-weight: 600; padding: 4px 6px;",
    "  border-radius: 6px; white-space: nowrap; }",
    ".text-btn:disabled { color: var(--clarion-muted); opacity: .6; cursor: default; }",
    ".read-all .btn-icon { display: none; }",
    ".compact header { gap: 4px; padding-left: 12px; padding-right: 8px; }",
    ".compact h2 { gap: 6px; }",
    ".compact .read-all { width: 30px; height: 30px; padding: 0; display: grid; place-items: center; border-radius: 8px; }",
    ".compact .read-all .btn-icon { display: contents; }",
    ".compact .read-all .btn-icon svg { width: 17px; height: 17px; }",
    ".compact .read-all .btn-label { position: absolute; width: 1px; height: 1px; overflow: hidden; clip: rect(0 0 0 0); white-space: nowrap; }",
    ".bar { display: flex; flex-wrap: wrap; align-items: center; gap: 6px; padding: 0 14px 8px; border-bottom: 1px solid var(--clarion-border); }",
    "[role=tablist] { display: flex; gap: 2px; flex: 1 0 auto; }",
    "[role=tab] { border: 0; background: none; padding: 6px 10px; border-radius: 8px; color: var(--clarion-muted); font-size: 13px; font-weight: 550;",
    "  white-space: nowrap; }",
    "[role=tab][aria-selected=true] { background: var(--clarion-unread-bg); color: var(--clarion-accent); }",
    "select { background: var(--clarion-bg); border: 1px solid var(--clarion-border); border-radius: 8px; padding: 4px 6px; font-size: 12.5px; max-width: 100%; }",
    ".list { list-style: none; margin: 0; padding: 0; overflow-y: auto; flex: 1; }",
    ".item { position: relative; display: grid; grid-template-columns: 36px 1fr; gap: 10px; padding: 12px 30px 12px 14px;",
    "  border-bottom: 1px solid var(--clarion-border); cursor: pointer; }",
    ".item:hover { background: var(--clarion-hover); }",
    ".item.unread { background: var(--clarion-unread-bg); }",
    ".item.fresh { animation: clarion-fresh 1.4s ease-out; }",
    "@keyframes clarion-fresh { from { box-shadow: inset 3px 0 0 var(--clarion-accent); } to { box-shadow: inset 3px 0 0 transparent; } }",
    ".avatar { width: 36px; height: 36px; border-radius: 50%; background: var(--clarion-accent); color: var(--clarion-accent-contrast);",
    "  display: grid; place-items: center; font-weight: 700; font-size: 14px; overflow: hidden; }",
    ".avatar img { width: 100%; height: 100%; object-fit: cover; }",
    ".title { font-weight: 600; font-size: 13.5px; overflow-wrap: anywhere; }",
    ".item:not(.unread) .title { font-weight: 500; }",
    ".body { color: var(--clarion-muted); font-size: 13px; margin-top: 2px; white-space: pre-line; overflow-wrap: anywhere;",
    "  display: -webkit-box; -webkit-line-clamp: 3; -webkit-box-orient: vertical; overflow: hidden; }",
    ".meta { font-size: 11.5px; color: var(--clarion-muted); margin-top: 4px; }",
    ".dot { position: absolute; right: 12px; top: 17px; width: 8px; height: 8px; border-radius: 50%; background: var(--clarion-accent); }",
    ".actions { display: flex; flex-wrap: wrap; gap: 6px; margin-top: 8px; }",
    ".action { border-radius: 8px; padding: 4px 12px; font-size: 12.5px; font-weight: 600; border: 1px solid var(--clarion-border);",
    "  background: var(--clarion-bg); }",
    ".action.primary { background: var(--clarion-accent); color: var(--clarion-accent-contrast); border-color: var(--clarion-accent); }",
    ".action[disabled] { opacity: .6; cursor: default; }",
    ".tools { display: none; gap: 2px; margin-top: 6px; }",
    ".item:hover .tools, .item:focus-within .tools, .item:focus .tools { display: flex; }",
    ".tools .icon-btn { width: 26px; height: 26px; }",
    ".empty, .status-line { padding: 40px 16px; text-align: center; color: var(--clarion-muted); }",
    ".error { padding: 8px 14px; color: var(--clarion-badge-bg); font-size: 12.5px; }",
    ".error[hidden], .more[hidden], .empty[hidden] { display: none; }",
    ".more { padding: 12px; text-align: center; color: var(--clarion-muted); font-size: 12px; }",
    "footer { display: flex; justify-content: space-between; align-items: center; gap: 8px; padding: 6px 14px;",
    "  border-top: 1px solid var(--clarion-border); font-size: 11.5px; color: var(--clarion-muted); }",
    ".conn::before { content: ''; display: inline-block; width: 7px; height: 7px; border-radius: 50%; margin-right: 6px;",
    "  background: #9ca3af; vertical-align: middle; }",
    ":host([connection=live]) .conn::before { background: #16a34a; }",
    ":host([connection=reconnecting]) .conn::before, :host([connection=polling]) .conn::before { background: #f59e0b; }",
    ".prefs { overflow-y: auto; flex: 1; padding: 4px 14px 14px; }",
    ".prefs h3 { font-size: 12px; text-transform: uppercase; letter-spacing: .04em; color: var(--clarion-muted); margin: 14px 0 6px; }",
    ".pref { display: flex; align-items: center; justify-content: space-between; gap: 10px; padding: 8px 0; border-bottom: 1px solid var(--clarion-border); }",
    ".pref-name { font-weight: 550; }",
    ".pref-desc { font-size: 12px; color: var(--clarion-muted); }",
    ".pref-channels { display: flex; flex-wrap: wrap; gap: 10px; margin-top: 4px; }",
    ".pref label { display: inline-flex; align-items: center; gap: 4px; font-size: 12.5px; }",
    ".pref input { accent-color: var(--clarion-accent); }",
    ".list-view { display: contents; }",
  ].join("\n");

  var ICONS = {
    bell: '<path d="M6 8a6 6 0 0 1 12 0c0 7 3 9 3 9H3s3-2 3-9"/><path d="M10.3 21a1.94 1.94 0 0 0 3.4 0"/>',
    gear: '<circle cx="12" cy="12" r="3"/><path d="M19.4 15a1.7 1.7 0 0 0 .3 1.8l.1.1a2 2 0 1 1-2.8 2.8l-.1-.1a1.7 1.7 0 0 0-1.8-.3 1.7 1.7 0 0 0-1 1.5V21a2 2 0 1 1-4 0v-.1a1.7 1.7 0 0 0-1.1-1.5 1.7 1.7 0 0 0-1.8.3l-.1.1a2 2 0 1 1-2.8-2.8l.1-.1a1.7 1.7 0 0 0 .3-1.8 1.7 1.7 0 0 0-1.5-1H3a2 2 0 1 1 0-4h.1a1.7 1.7 0 0 0 1.5-1.1 1.7 1.7 0 0 0-.3-1.8l-.1-.1a2 2 0 1 1 2.8-2.8l.1.1a1.7 1.7 0 0 0 1.8.3H9a1.7 1.7 0 0 0 1-1.5V3a2 2 0 1 1 4 0v.1a1.7 1.7 0 0 0 1 1.5 1.7 1.7 0 0 0 1.8-.3l.1-.1a2 2 0 1 1 2.8 2.8l-.1.1a1.7 1.7 0 0 0-.3 1.8V9a1.7 1.7 0 0 0 1.5 1H21a2 2 0 1 1 0 4h-.1a1.7 1.7 0 0 0-1.5 1z"/>',
    back: '<path d="M15 18l-6-6 6-6"/>',
    close: '<path d="M18 6 6 18M6 6l12 12"/>',
    check: '<path d="M20 6 9 17l-5-5"/>',
    checks: '<path d="M2 12.5 6.5 17 16 7.5"/><path d="m11.5 15.5 1.5 1.5L22.5 7.5"/>',
    envelope: '<rect x="3" y="5" width="18" height="14" rx="2"/><path d="m3 7 9 6 9-6"/>',
    archive: '<rect x="3" y="4" width="18" height="4" rx="1"/><path d="M5 8v11a1 1 0 0 0 1 1h12a1 1 0 0 0 1-1V8M10 12h4"/>',
    unarchive: '<rect x="3" y="4" width="18" height="4" rx="1"/><path d="M5 8v11a1 1 0 0 0 1 1h12a1 1 0 0 0 1-1V8M12 17v-6M9.5 13.5 12 11l2.5 2.5"/>',
    clock: '<circle cx="12" cy="12" r="9"/><path d="M12 7v5l3 2"/>',
    trash: '<path d="M3 6h18M8 6V4h8v2M19 6l-1 14H6L5 6"/>',
  };

  function svg(name) {
    return '<svg viewBox="0 0 24 24" fill="none" stroke="currentColor" stroke-width="2" stroke-linecap="round" ' +
      'stroke-linejoin="round" aria-hidden="true" focusable="false">' + ICONS[name] + "</svg>";
  }

  function el(tag, attrs, children) {
    var node = document.createElement(tag);
    if (attrs) {
      Object.keys(attrs).forEach(function (k) {
        var v = attrs[k];
        if (v === null || v === undefined || v === false) return;
        if (k === "text") node.textContent = v; // never innerHTML for content: titles and bodies are user data
        else if (k === "className") node.className = v;
        else if (k === "icon") node.innerHTML = svg(v);
        else if (k.slice(0, 2) === "on") node.addEventListener(k.slice(2), v);
        else node.setAttribute(k, v === true ? "" : v);
      });
    }
    (children || []).forEach(function (c) { if (c) node.appendChild(c); });
    return node;
  }

  // Constructable stylesheets need nothing from the host page's Content-Security-Policy; a <style>
  // element (the fallback for old browsers) needs style-src 'unsafe-inline' there.
  var SHEET = null;
  function adoptStyles(root) {
    if (root.adoptedStyleSheets !== undefined && typeof CSSStyleSheet === "function" && "replaceSync" in CSSStyleSheet.prototype) {
      if (!SHEET) {
        SHEET = new CSSStyleSheet();
        SHEET.replaceSync(CSS);
      }
      root.adoptedStyleSheets = [SHEET];
    } else {
      root.appendChild(el("style", { text: CSS }));
    }
  }

  function safeUrl(url) {
    if (!url) return null;
    try {
      var parsed = new URL(url, location.href);
      return parsed.protocol === "https:" || parsed.protocol === "http:" ? parsed.href : null;
    } catch (e) { return null; }
  }

  // --- The element ---------------------------------------------------------------------------------

  class ClarionInbox extends HTMLElement {
    static get observedAttributes() {
      return ["publishable-key", "subscriber-id", "subscriber-hash", "token", "api-url", "locale", "categories"];
    }

    constructor() {
      super();
      this._root = this.attachShadow({ mode: "open" });
      this._reset();
    }

    _reset() {
      this._token = null;
      this._wsPath = null;
      this._session = null;
      this._messages = new Map();
      this._next = null;
      this._counts = { unread: 0, unseen: 0, total: 0 };
      this._cursor = 0;
      this._overlap = DEFAULT_OVERLAP_US;
      this._filter = { tab: "all", category: "" };
      this._view = "list";
      this._generation = (this._generation || 0) + 1;
      this._failures = 0;
      this._loaded = false;
      this._syncing = null;
      this._resync = false;
    }

    connectedCallback() {
      this._build();
      this._start();
      this._tick = setInterval(this._renderTimes.bind(this), 60000);
      this._onDocClick = (function (e) {
        if (!this.hasAttribute("inline") && !this._panel.hidden && e.composedPath().indexOf(this) === -1) this.close();
      }).bind(this);
      document.addEventListener("click", this._onDocClick);
    }

    disconnectedCallback() {
      this._stop();
      clearInterval(this._tick);
      document.removeEventListener("click", this._onDocClick);
    }

    attributeChangedCallback(name, oldValue, newValue) {
      if (!this.isConnected || oldValue === newValue || !this._panel) return;
      if (name === "locale" || name === "categories") { this._applyStrings(); this._renderAll(); return; }
      if (name === "token" && this._token && this._authFailed) { this._authFailed = false; }
      this._stop();
      this._reset();
      this._start();
    }

    // --- configuration ---

    get apiUrl() {
      var base = this.getAttribute("api-url") || SCRIPT_ORIGIN;
      base = base.replace(/\/+$/, "");
      return /\/api\/v1\/inbox$/.test(base) ? base : base + "/api/v1/inbox";
    }

    get counts() { return Object.assign({}, this._counts); }

    _t(key, n) {
      var table = STRINGS[this._locale] || STRINGS.en;
      var text = table[key] !== undefined ? table[key] : STRINGS.en[key] !== undefined ? STRINGS.en[key] : key;
      return n === undefined ? text : String(text).replace("{n}", n).replace("{title}", n);
    }

    _categories() {
      return (this.getAttribute("categories") || "").split(",").map(function (part) {
        var bits = part.split(":");
        return { key: bits[0].trim(), label: (bits.slice(1).join(":") || bits[0]).trim() };
      }).filter(function (c) { return c.key; });
    }

    _emit(name, detail) {
      this.dispatchEvent(new CustomEvent("clarion-inbox:" + name, { detail: detail, bubbles: true, composed: true }));
    }

    // --- DOM ---

    _build() {
      if (this._panel) return;
      var self = this;
      adoptStyles(this._root);
      this._badge = el("span", { className: "badge", hidden: true, "aria-hidden": "true" });
      this._bell = el("button", {
        type: "button", className: "bell", part: "bell", "aria-haspopup": "dialog", "aria-expanded": "false",
        onclick: function (e) { e.stopPropagation(); self.toggle(); },
      }, [el("span", { icon: "bell" }), this._badge]);
      this._bell.firstChild.style.display = "contents";
      this._live = el("div", { className: "sr-only", "aria-live": "polite", role: "status" });

      this._heading = el("span", { className: "heading" });
      this._countLabel = el("span", { className: "count", hidden: true });
      this._title = el("h2", { id: "clarion-title" }, [this._heading, this._countLabel]);
      this._readAllLabel = el("span", { className: "btn-label" });
      this._readAll = el("button", { type: "button", className: "text-btn read-all", onclick: function () { self.markAllRead(); } },
        [el("span", { className: "btn-icon", icon: "checks" }), this._readAllLabel]);
      this._prefsBtn = el("button", { type: "button", className: "icon-btn", icon: "gear", onclick: function () { self._showPrefs(); } });
      this._closeBtn = el("button", { type: "button", className: "icon-btn", icon: "close", onclick: function () { self.close(true); } });
      this._backBtn = el("button", { type: "button", className: "icon-btn", icon: "back", hidden: true, onclick: function () { self._showList(); } });

      this._tabs = el("div", { role: "tablist" });
      ["all", "unread", "archived"].forEach(function (tab) {
        self._tabs.appendChild(el("button", {
          type: "button", role: "tab", "data-tab": tab, "aria-selected": String(tab === "all"), tabindex: tab === "all" ? "0" : "-1",
          "aria-controls": "clarion-list", onclick: function () { self._setFilter({ tab: tab }); },
        }));
      });
      this._tabs.addEventListener("keydown", function (e) {
        if (e.key !== "ArrowRight" && e.key !== "ArrowLeft") return;
        var tabs = Array.prototype.slice.call(self._tabs.children);
        var i = tabs.indexOf(self._root.activeElement);
        var next = tabs[(i + (e.key === "ArrowRight" ? 1 : tabs.length - 1)) % tabs.length];
        next.focus();
        next.click();
        e.preventDefault();
      });
      this._categorySelect = el("select", { onchange: function () { self._setFilter({ category: self._categorySelect.value }); } });

      this._error = el("div", { className: "error", role: "alert", hidden: true });
      this._list = el("ul", { className: "list", id: "clarion-list", role: "list", tabindex: "-1" });
      this._list.addEventListener("keydown", this._onListKey.bind(this));
      this._empty = el("div", { className: "empty", hidden: true });
      this._more = el("div", { className: "more", hidden: true });
      this._listView = el("div", { className: "list-view" }, [
        el("div", { className: "bar" }, [this._tabs, this._categorySelect]), this._error, this._list, this._empty,
      ]);
      this._list.appendChild(this._more);
      this._prefsView = el("div", { className: "prefs", hidden: true });
      this._conn = el("span", { className: "conn" });
      this._panel = el("div", {
        className: "panel", part: "panel", role: "dialog", "aria-labelledby": "clarion-title", hidden: true,
        onkeydown: function (e) { if (e.key === "Escape" && !self.hasAttribute("inline")) { self.close(true); e.stopPropagation(); } },
      }, [
        this._header = el("header", null, [this._backBtn, this._title, this._readAll, this._prefsBtn, this._closeBtn]),
        this._listView, this._prefsView, el("footer", null, [this._conn]),
      ]);
      this._root.appendChild(el("span", { className: "bell-wrap" }, [this._bell]));
      this._root.appendChild(this._panel);
      this._root.appendChild(this._live);
      if (this.hasAttribute("inline")) this._panel.hidden = false;
      if ("ResizeObserver" in window) {
        this._resizeObserver = new ResizeObserver(function () { self._fitHeader(); });
        this._resizeObserver.observe(this._panel);
      }

      if ("IntersectionObserver" in window) {
        this._observer = new IntersectionObserver(function (entries) {
          if (entries.some(function (e) { return e.isIntersecting; })) self._loadMore();
        }, { root: this._list, rootMargin: "120px" });
        this._observer.observe(this._more);
      }
      this._list.addEventListener("scroll", function () {
        if (self._list.scrollTop + self._list.clientHeight >= self._list.scrollHeight - 120) self._loadMore();
      });
      this._locale = pickLocale(this.getAttribute("locale"));
      this._applyStrings();
    }

    _applyStrings() {
      this._locale = pickLocale(this.getAttribute("locale") || this._subscriberLocale);
      var self = this;
      this._heading.textContent = this._view === "prefs" ? this._t("preferencesTitle") : this.getAttribute("heading") || this._t("notifications");
      this._readAllLabel.textContent = this._t("markAllRead");
      this._prefsBtn.setAttribute("aria-label", this._t("preferences"));
      this._prefsBtn.title = this._t("preferences");
      this._closeBtn.setAttribute("aria-label", this._t("close"));
      this._closeBtn.hidden = this.hasAttribute("inline");
      this._backBtn.setAttribute("aria-label", this._t("back"));
      this._tabs.setAttribute("aria-label", this._t("filters"));
      Array.prototype.forEach.call(this._tabs.children, function (tab) { tab.textContent = self._t(tab.dataset.tab); });
      this._categorySelect.setAttribute("aria-label", this._t("category"));
      var categories = this._categories();
      this._categorySelect.replaceChildren.apply(this._categorySelect, [el("option", { value: "", text: this._t("allCategories") })]
        .concat(categories.map(function (c) { return el("option", { value: c.key, text: c.label }); })));
      this._categorySelect.value = this._filter.category;
      this._categorySelect.hidden = categories.length === 0;
      this._more.textContent = this._t("loading");
      this._rtf = window.Intl && Intl.RelativeTimeFormat ? new Intl.RelativeTimeFormat(this._locale, { numeric: "auto" }) : null;
      this.setAttribute("lang", this._locale);
      this._renderCounts();
      this._renderConnection(this.getAttribute("connection") || "connecting");
      this._fitHeader();
    }

    // Words first; when they do not fit the panel's width, the compact header (see the CSS).
    _fitHeader() {
      if (!this._header || this._panel.hidden) return;
      var panel = this._panel;
      panel.classList.remove("compact");
      var crowded = this._header.scrollWidth > this._header.clientWidth + 1 ||
        this._heading.scrollWidth > this._heading.clientWidth + 1;
      panel.classList.toggle("compact", crowded);
      this._readAll.title = crowded ? this._t("markAllRead") : "";
    }

    // --- open / close ---

    open() {
      if (this.hasAttribute("inline")) return;
      this._panel.hidden = false;
      this._bell.setAttribute("aria-expanded", "true");
      this._fitHeader();
      var first = this._list.querySelector(".item") || this._tabs.querySelector("[aria-selected=true]");
      if (first) first.focus();
      this._markSeen();
    }

    close(restoreFocus) {
      if (this.hasAttribute("inline") || this._panel.hidden) return;
      this._panel.hidden = true;
      this._bell.setAttribute("aria-expanded", "false");
      if (restoreFocus) this._bell.focus();
    }

    toggle() { if (this._panel.hidden) this.open(); else this.close(false); }

    // --- auth + REST ---

    _openSession() {
      var self = this;
      var token = this.getAttribute("token");
      if (token) {
        this._token = token;
        this._wsPath = "/ws/inbox/?token=" + encodeURIComponent(token);
        return Promise.resolve();
      }
      if (!this._session) {
        var body = {
          publishable_key: this.getAttribute("publishable-key") || "",
          subscriber_id: this.getAttribute("subscriber-id") || "",
          subscriber_hash: this.getAttribute("subscriber-hash") || "",
        };
        this._session = fetch(this.apiUrl + "/session", {
          method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body), credentials: "omit",
        }).then(function (res) {
          return res.json().catch(function () { return {}; }).then(function (data) {
            if (!res.ok) {
              var err = new Error((data.error && data.error.message) || "session " + res.status);
              err.code = data.error && data.error.code;
              err.status = res.status;
              throw err;
            }
            self._token = data.token;
            self._wsPath = data.websocket_url;
            if (data.locale && !self.getAttribute("locale")) { self._subscriberLocale = data.locale; self._applyStrings(); }
          });
        }).finally(function () { self._session = null; });
      }
      return this._session;
    }

    _api(path, options, retried) {
      var self = this;
      var generation = this._generation;
      options = options || {};
      var ready = this._token ? Promise.resolve() : this._openSession();
      return ready.then(function () {
        var headers = { Authorization: "Bearer " + self._token };
        if (options.body !== undefined) headers["Content-Type"] = "application/json";
        return fetch(self.apiUrl + path, {
          method: options.method || "GET", headers: headers, credentials: "omit",
          body: options.body === undefined ? undefined : JSON.stringify(options.body),
        });
      }).then(function (res) {
        if (generation !== self._generation) throw new Error("stale");
        if (res.status === 401 && !retried) {
          self._token = null;
          if (self.getAttribute("token")) { self._authFailed = true; self._emit("token-expired", {}); throw new Error("token expired"); }
          return self._api(path, options, true); // the session expired: open a new one once
        }
        if (res.status === 204) return null;
        return res.json().catch(function () { return {}; }).then(function (data) {
          if (!res.ok) {
            var err = new Error((data.error && data.error.message) || "HTTP " + res.status);
            err.code = data.error && data.error.code;
            throw err;
          }
          return data;
        });
      });
    }

    _query(extra) {
      var params = new URLSearchParams();
      if (this._filter.tab === "unread") params.set("read", "false");
      if (this._filter.tab === "archived") params.set("archived", "true");
      if (this._filter.category) params.set("category", this._filter.category);
      params.set("limit", String(PAGE_SIZE));
      Object.keys(extra || {}).forEach(function (k) { params.set(k, extra[k]); });
      return params.toString();
    }

    _matches(m) {
      if (m.is_deleted || m.is_snoozed) return false;
      if (this._filter.tab === "archived" ? !m.is_archived : m.is_archived) return false;
      if (this._filter.tab === "unread" && m.is_read) return false;
      if (this._filter.category && m.category !== this._filter.category) return false;
      return true;
    }

    // --- lifecycle ---

    _start() {
      var self = this;
      var generation = this._generation;
      this._renderConnection("connecting");
      this._openSession().then(function () {
        return self._api("/changes"); // the current cursor and counts
      }).then(function (start) {
        if (generation !== self._generation) return;
        self._cursor = start.cursor;
        self._overlap = start.overlap || DEFAULT_OVERLAP_US;
        self._setCounts(start.counts);
        self._loadFirst();
        self._connect();
        self._emit("ready", { counts: self.counts });
      }).catch(function (err) { self._fail(err, generation); });
    }

    _stop() {
      this._generation += 1;
      clearTimeout(this._reconnectTimer);
      clearInterval(this._pingTimer);
      clearInterval(this._pollTimer);
      this._pollTimer = null;
      if (this._socket) { var s = this._socket; this._socket = null; try { s.close(1000); } catch (e) { /* closed */ } }
    }

    _fail(err, generation) {
      if (generation !== this._generation || (err && err.message === "stale")) return;
      if (err && err.code === "origin_not_allowed") { this._renderConnection("offline", this._t("originRefused")); this._showError(this._t("originRefused")); return; }
      if (err && (err.status === 401 || err.message === "token expired")) { this._showError(err.message); this._renderConnection("offline"); return; }
      this._showError(this._t("loadError"));
      var self = this;
      this._renderConnection("reconnecting");
      this._reconnectTimer = setTimeout(function () { if (generation === self._generation) self._start(); }, this._backoff());
    }

    _backoff() {
      var delay = Math.min(15000, 500 * Math.pow(2, this._failures));
      this._failures += 1;
      return delay * (0.5 + Math.random() / 2); // jitter: many tabs don't reconnect in lockstep
    }

    _loadFirst() {
      var self = this;
      var generation = this._generation;
      var filterKey = JSON.stringify(this._filter);
      this._loading = true;
      return this._api("/messages?" + this._query()).then(function (page) {
        if (generation !== self._generation || filterKey !== JSON.stringify(self._filter)) return;
        // merge, not replace: frames or a replay may already have brought newer versions
        page.data.forEach(function (m) {
          var current = self._messages.get(m.id);
          if (!current || current.seq <= m.seq) self._messages.set(m.id, m);
        });
        self._next = page.next_cursor;
        self._loaded = true;
        self._showError(null);
        self._renderAll();
      }).catch(function (err) {
        if (err.message !== "stale") self._showError(self._t("loadError"));
      }).finally(function () { self._loading = false; });
    }

    _loadMore() {
      if (!this._next || this._loading || this._view !== "list") return;
      var self = this;
      var generation = this._generation;
      var filterKey = JSON.stringify(this._filter);
      this._loading = true;
      this._api("/messages?" + this._query({ cursor: this._next })).then(function (page) {
        if (generation !== self._generation || filterKey !== JSON.stringify(self._filter)) return;
        page.data.forEach(function (m) { if (!self._messages.has(m.id)) self._messages.set(m.id, m); });
        self._next = page.next_cursor;
        self._renderAll();
      }).catch(function () { self._showError(self._t("loadError")); })
        .finally(function () { self._loading = false; });
    }

    _setFilter(change) {
      Object.assign(this._filter, change);
      var self = this;
      Array.prototype.forEach.call(this._tabs.children, function (tab) {
        var on = tab.dataset.tab === self._filter.tab;
        tab.setAttribute("aria-selected", String(on));
        tab.tabIndex = on ? 0 : -1;
      });
      this._categorySelect.value = this._filter.category;
      this._messages.clear();
      this._next = null;
      this._loaded = false;
      this._renderAll();
      this._loadFirst();
    }

    // --- live: websocket, replay, polling ---

    _connect() {
      var self = this;
      var generation = this._generation;
      clearTimeout(this._reconnectTimer);
      if (!window.WebSocket) { this._startPolling(); return; }
      var ready = this._token ? Promise.resolve() : this._openSession();
      ready.then(function () {
        if (generation !== self._generation) return;
        var base = new URL(self.apiUrl);
        var url = (base.protocol === "https:" ? "wss://" : "ws://") + base.host + self._wsPath;
        var socket = new WebSocket(url);
        self._socket = socket;
        socket.onmessage = function (e) { var frame; try { frame = JSON.parse(e.data); } catch (x) { return; } self._onFrame(frame); };
        socket.onclose = function (e) { self._lost(socket, e.code); };
        socket.onerror = function () { self._lost(socket, 1006); };
      }).catch(function (err) { self._lost(null, err && err.status === 401 ? 4401 : 1006, err); });
    }

    _lost(socket, code, err) {
      if (socket && this._socket !== socket) return; // already handled (error, then close) or superseded
      this._socket = null;
      clearInterval(this._pingTimer);
      if (socket && socket.readyState !== WebSocket.CLOSED) { try { socket.close(); } catch (e) { /* closing */ } }
      if (code === 4403 || (err && err.code === "origin_not_allowed")) {
        this._renderConnection("offline", this._t("originRefused"));
        return;
      }
      if (code === 4401) {
        this._token = null;
        if (this.getAttribute("token")) { this._emit("token-expired", {}); this._renderConnection("offline"); return; }
      }
      this._resync = true;
      this._startPolling(); // keep the inbox fresh while the socket is away
      var self = this;
      var generation = this._generation;
      this._reconnectTimer = setTimeout(function () { if (generation === self._generation) self._connect(); }, this._backoff());
    }

    _startPolling() {
      if (this._pollTimer) return;
      var seconds = Math.max(2, Number(this.getAttribute("poll-interval")) || 20);
      var self = this;
      this._renderConnection("polling");
      this._pollTimer = setInterval(function () { self._sync(true); }, seconds * 1000);
    }

    _stopPolling() { clearInterval(this._pollTimer); this._pollTimer = null; }

    _onFrame(frame) {
      switch (frame.event) {
        case "ready":
          this._failures = 0;
          this._stopPolling();
          this._renderConnection("live");
          clearInterval(this._pingTimer);
          var self = this;
          this._pingTimer = setInterval(function () {
            if (self._socket && self._socket.readyState === WebSocket.OPEN) self._socket.send(JSON.stringify({ type: "ping" }));
          }, PING_MS);
          // Changes made while we were away (or between our first load and this subscription).
          this._sync(true);
          this._resync = false;
          break;
        case "message.created":
        case "message.updated":
          var known = this._messages.has(frame.message.id);
          this._apply([frame.message], frame.event === "message.created");
          this._setCounts(frame.counts);
          this._advance(frame.cursor);
          if (frame.event === "message.created" && !known && !frame.message.is_read) {
            this._live.textContent = this._t("newMessage", frame.message.title || "");
            this._emit("message", { message: frame.message });
          }
          break;
        case "counts.changed":
          this._setCounts(frame.counts);
          // A bulk change: fetch the rows it touched (they carry its cursor, which may be below
          // ours if a later-numbered change was delivered first).
          this._sync(false, typeof frame.cursor === "number" ? frame.cursor - 1 : undefined);
          break;
      }
    }

    _advance(cursor) { if (typeof cursor === "number" && cursor > this._cursor) this._cursor = cursor; }

    _sync(withOverlap, from) {
      var self = this;
      if (this._syncing) {
        var again = this._syncAgain || { overlap: false, from: undefined };
        again.overlap = again.overlap || !!withOverlap;
        if (from !== undefined) again.from = again.from === undefined ? from : Math.min(again.from, from);
        this._syncAgain = again;
        return this._syncing;
      }
      var generation = this._generation;
      var after = Math.max(0, this._cursor - (withOverlap ? this._overlap : 0));
      if (from !== undefined) after = Math.max(0, Math.min(after, from));
      var pages = 0;
      function step() {
        return self._api("/changes?after=" + after + "&limit=200").then(function (res) {
          if (generation !== self._generation) return;
          self._apply(res.data, false);
          self._advance(res.cursor);
          self._setCounts(res.counts);
          after = res.cursor;
          pages += 1;
          if (res.has_more && pages < 25) return step();
        });
      }
      this._syncing = step().catch(function () { /* the next frame, poll or reconnect retries */ }).finally(function () {
        self._syncing = null;
        if (self._syncAgain) { var again = self._syncAgain; self._syncAgain = null; self._sync(again.overlap, again.from); }
      });
      return this._syncing;
    }

    _apply(messages, fresh) {
      var self = this;
      var changed = false;
      var oldest = Infinity;
      this._messages.forEach(function (m) { if (m.id < oldest) oldest = m.id; });
      messages.forEach(function (m) {
        var current = self._messages.get(m.id);
        if (current && current.seq > m.seq) return; // we already hold a newer version
        if (m.is_deleted) { if (current) { self._messages.delete(m.id); changed = true; } return; }
        if (current || (self._matches(m) && (!self._next || m.id > oldest))) {
          self._messages.set(m.id, m);
          if (fresh && !current) self._freshId = m.id;
          changed = true;
        }
      });
      if (changed) this._renderAll();
    }

    // --- writes ---

    _write(path, options) {
      var self = this;
      return this._api(path, options || { method: "POST" }).then(function (result) {
        if (result && result.id) self._apply([result], false);
        if (!self._socket) self._sync(false); // no frames are coming: fetch the effect ourselves
        return result;
      }).catch(function (err) { if (err.message !== "stale") self._showError(err.message); });
    }

    markRead(id) {
      var m = this._messages.get(id);
      if (m && !m.is_read) {
        this._patchLocal(id, { is_read: true, is_seen: true, read_at: new Date().toISOString() }, { unread: -1 });
        return this._write("/messages/" + id + "/read");
      }
      return Promise.resolve(m);
    }

    markUnread(id) { return this._write("/messages/" + id + "/unread"); }
    archive(id) { return this._write("/messages/" + id + "/archive"); }
    unarchive(id) { return this._write("/messages/" + id + "/unarchive"); }
    snooze(id, until) { return this._write("/messages/" + id + "/snooze", { method: "POST", body: { until: until.toISOString() } }); }
    remove(id) {
      var self = this;
      return this._write("/messages/" + id, { method: "DELETE" }).then(function () { self._messages.delete(id); self._renderAll(); });
    }

    markAllRead() {
      var self = this;
      var body = this._filter.category ? { category: [this._filter.category] } : {};
      this._readAll.disabled = true;
      return this._api("/messages/read-all", { method: "POST", body: body }).then(function () {
        var now = new Date().toISOString();
        self._messages.forEach(function (m) {
          if (!m.is_read && !m.is_archived && (!body.category || m.category === self._filter.category)) {
            m.is_read = m.is_seen = true; m.read_at = now;
          }
        });
        self._renderAll();
        self._sync(false);
      }).catch(function (err) { self._showError(err.message); self._renderCounts(); });
    }

    _markSeen() {
      if (this._counts.unseen > 0) this._api("/messages/seen-all", { method: "POST", body: {} }).catch(function () { /* best effort */ });
    }

    _patchLocal(id, fields, delta) {
      var m = this._messages.get(id);
      if (!m) return;
      this._messages.set(id, Object.assign({}, m, fields));
      if (delta && delta.unread) this._setCounts(Object.assign({}, this._counts, { unread: Math.max(0, this._counts.unread + delta.unread) }));
      this._renderAll();
    }

    _completeAction(m, action) {
      var self = this;
      // Through Clarion's click redirect when there is one (the click is counted), else directly.
      var url = safeUrl(action.tracking_url) || safeUrl(action.url);
      this._emit("action", { message: m, action: action });
      this._write("/messages/" + m.id + "/actions/" + encodeURIComponent(action.id) + "/complete").then(function () {
        if (url) window.open(url, "_blank", "noopener,noreferrer");
      });
      self._patchLocal(m.id, { actions: m.actions.map(function (a) { return a.id === action.id ? Object.assign({}, a, { completed_at: new Date().toISOString() }) : a; }) });
    }

    _openMessage(m) {
      this.markRead(m.id);
      var url = safeUrl(m.action_tracking_url) || safeUrl(m.action_url);
      var event = new CustomEvent("clarion-inbox:click", { detail: { message: m }, bubbles: true, composed: true, cancelable: true });
      if (this.dispatchEvent(event) && url) window.open(url, "_blank", "noopener,noreferrer");
    }

    // --- rendering ---

    _setCounts(counts) {
      if (!counts) return;
      this._counts = { unread: counts.unread | 0, unseen: counts.unseen | 0, total: counts.total | 0 };
      this._renderCounts();
      this._emit("counts", this.counts);
    }

    _renderCounts() {
      if (!this._badge) return;
      var unread = this._counts.unread;
      this._badge.hidden = unread === 0;
      this._badge.textContent = unread > 99 ? "99+" : String(unread);
      this._bell.setAttribute("aria-label", unread ? this._t("bellLabel", unread) : this._t("bellLabelNone"));
      this._countLabel.textContent = unread > 99 ? "99+" : String(unread);
      var countWasHidden = this._countLabel.hidden;
      this._countLabel.hidden = unread === 0 || this._view === "prefs"; // the list's count, not the settings'
      this._readAll.disabled = unread === 0;
      if (countWasHidden !== this._countLabel.hidden) this._fitHeader();
      this.setAttribute("unread", String(unread));
    }

    _renderConnection(state, label) {
      this.setAttribute("connection", state);
      var seconds = Math.max(2, Number(this.getAttribute("poll-interval")) || 20);
      this._conn.textContent = label || (state === "live" ? this._t("live") : state === "polling" ? this._t("polling", seconds)
        : state === "reconnecting" ? this._t("reconnecting") : state === "connecting" ? this._t("connecting") : "");
    }

    _showError(text) {
      this._error.hidden = !text;
      this._error.textContent = text || "";
    }

    _time(iso) {
      var seconds = (new Date(iso).getTime() - Date.now()) / 1000;
      var units = [["year", 31536000], ["month", 2592000], ["week", 604800], ["day", 86400], ["hour", 3600], ["minute", 60]];
      for (var i = 0; i < units.length; i++) {
        if (Math.abs(seconds) >= units[i][1] && this._rtf) return this._rtf.format(Math.round(seconds / units[i][1]), units[i][0]);
      }
      return this._t("justNow");
    }

    _renderTimes() {
      var self = this;
      Array.prototype.forEach.call(this._root.querySelectorAll("time[datetime]"), function (t) { t.textContent = self._time(t.dateTime); });
    }

    _renderAll() {
      if (this._view !== "list") return;
      var self = this;
      var focusedId = this._root.activeElement && this._root.activeElement.closest && this._root.activeElement.closest(".item");
      focusedId = focusedId ? Number(focusedId.dataset.id) : null;
      var items = Array.from(this._messages.values()).filter(this._matches.bind(this)).sort(function (a, b) { return b.id - a.id; });
      var nodes = items.map(function (m) { return self._renderItem(m, m.id === self._freshId); });
      this._freshId = null;
      nodes.push(this._more);
      this._list.replaceChildren.apply(this._list, nodes);
      this._more.hidden = !this._next;
      this._empty.hidden = items.length > 0 || !this._loaded;
      this._empty.textContent = this._t(this._emptyKey());
      if (focusedId) { var again = this._list.querySelector('.item[data-id="' + focusedId + '"]'); if (again) again.focus(); }
      this._renderCounts();
    }

    // "No notifications yet" only when there are none at all; when the tab or the category hides
    // messages, say what the filter found nothing of.
    _emptyKey() {
      if (this._filter.tab === "archived") return "emptyArchived";
      if (this._filter.tab === "unread") return "emptyUnread";
      if (this._filter.category) return "emptyCategory";
      return this._counts.total > 0 ? "emptyUnread" : "empty";
    }

    _renderItem(m, fresh) {
      var self = this;
      var initial = (m.title || "?").trim().charAt(0).toUpperCase();
      var avatarUrl = safeUrl(m.avatar);
      var avatar = el("div", { className: "avatar", "aria-hidden": "true" }, [avatarUrl ? el("img", { src: avatarUrl, alt: "", loading: "lazy" }) : document.createTextNode(initial)]);
      var time = el("time", { datetime: m.created_at, title: new Date(m.created_at).toLocaleString(this._locale), text: this._time(m.created_at) });
      var main = el("div", { className: "main" }, [
        el("div", { className: "title", text: m.title || "" }),
        m.body ? el("div", { className: "body", text: m.body }) : null,
        el("div", { className: "meta" }, [time]),
      ]);
      var actions = (m.actions || []).filter(function (a) { return a && a.id && a.label; });
      if (actions.length) {
        main.appendChild(el("div", { className: "actions" }, actions.map(function (a) {
          var done = !!a.completed_at;
          return el("button", {
            type: "button", className: "action " + (a.kind === "primary" ? "primary" : "secondary"), "data-action": a.id,
            disabled: done, "aria-pressed": done ? "true" : null, text: done ? "✓ " + a.label : a.label,
            onclick: function (e) { e.stopPropagation(); if (!done) self._completeAction(m, a); },
          });
        })));
      }
      var tool = function (icon, label, fn) {
        return el("button", { type: "button", className: "icon-btn", icon: icon, "aria-label": label, title: label,
          onclick: function (e) { e.stopPropagation(); fn(); } });
      };
      main.appendChild(el("div", { className: "tools" }, [
        m.is_read ? tool("envelope", this._t("markUnread"), function () { self.markUnread(m.id); })
          : tool("check", this._t("markRead"), function () { self.markRead(m.id); }),
        m.is_archived ? tool("unarchive", this._t("unarchive"), function () { self.unarchive(m.id); })
          : tool("archive", this._t("archive"), function () { self.archive(m.id); }),
        m.is_archived ? null : tool("clock", this._t("snooze"), function () { self.snooze(m.id, new Date(Date.now() + 3600000)); }),
        tool("trash", this._t("remove"), function () { self.remove(m.id); }),
      ]));
      var label = (m.is_read ? "" : this._t("unreadItem") + ": ") + (m.title || "") + (m.body ? ". " + m.body : "") + ". " + time.textContent;
      var li = el("li", {
        className: "item" + (m.is_read ? "" : " unread") + (fresh ? " fresh" : ""), "data-id": m.id, tabindex: "0",
        "aria-label": label, part: "item",
        onclick: function () { self._openMessage(m); },
        onkeydown: function (e) { if ((e.key === "Enter" || e.key === " ") && e.target === li) { e.preventDefault(); self._openMessage(m); } },
      }, [avatar, main, m.is_read ? null : el("span", { className: "dot", "aria-hidden": "true" })]);
      return li;
    }

    _onListKey(e) {
      if (e.key !== "ArrowDown" && e.key !== "ArrowUp" && e.key !== "Home" && e.key !== "End") return;
      var items = Array.prototype.slice.call(this._list.querySelectorAll(".item"));
      if (!items.length) return;
      var current = e.target.closest ? e.target.closest(".item") : null;
      var i = items.indexOf(current);
      var next = e.key === "Home" ? 0 : e.key === "End" ? items.length - 1 : e.key === "ArrowDown" ? Math.min(items.length - 1, i + 1) : Math.max(0, i - 1);
      items[next].focus();
      e.preventDefault();
    }

    // --- preferences ---

    _showPrefs() {
      var self = this;
      this._view = "prefs";
      this._listView.hidden = true;
      this._listView.style.display = "none";
      this._prefsView.hidden = false;
      this._backBtn.hidden = false;
      this._readAll.hidden = true;
      this._prefsBtn.hidden = true;
      this._heading.textContent = this._t("preferencesTitle");
      this._renderCounts();
      this._fitHeader();
      this._prefsView.replaceChildren(el("div", { className: "status-line", text: this._t("loading") }));
      this._api("/preferences").then(function (state) { self._renderPrefs(state); })
        .catch(function () { self._prefsView.replaceChildren(el("div", { className: "error", text: self._t("loadError") })); });
      this._backBtn.focus();
    }

    _showList() {
      this._view = "list";
      this._listView.hidden = false;
      this._listView.style.display = "contents";
      this._prefsView.hidden = true;
      this._backBtn.hidden = true;
      this._readAll.hidden = false;
      this._prefsBtn.hidden = false;
      this._applyStrings();
      this._renderAll();
      this._prefsBtn.focus();
    }

    _renderPrefs(state) {
      var self = this;
      if (!this._prefsStatus) this._prefsStatus = el("div", { className: "sr-only prefs-status", role: "status", "aria-live": "polite" });
      var status = this._prefsStatus;
      var save = function (body) {
        status.textContent = "";
        self._api("/preferences", { method: "PATCH", body: body }).then(function (next) {
          self._renderPrefs(next);
          status.textContent = self._t("saved");
        }).catch(function (err) { status.textContent = self._t("saveError") + " " + err.message; self._showError(err.message); });
      };
      var channelBox = function (label, checked, disabled, onChange) {
        var input = el("input", { type: "checkbox", checked: checked, disabled: disabled, onchange: function () { onChange(input.checked); } });
        return el("label", null, [input, document.createTextNode(label)]);
      };
      var nodes = [el("h3", { text: this._t("channels") })];
      Object.keys(state.channels).forEach(function (channel) {
        nodes.push(el("div", { className: "pref" }, [
          el("span", { className: "pref-name", text: self._t("ch_" + channel) }),
          channelBox(self._t("ch_" + channel), state.channels[channel], false, function (on) {
            var body = { channels: {} }; body.channels[channel] = on; save(body);
          }),
        ]));
        nodes[nodes.length - 1].lastChild.lastChild.textContent = "";
        nodes[nodes.length - 1].lastChild.firstChild.setAttribute("aria-label", self._t("ch_" + channel));
      });
      if (state.categories.length) nodes.push(el("h3", { text: this._t("categories") }));
      state.categories.forEach(function (category) {
        var channels = el("div", { className: "pref-channels" });
        Object.keys(state.channels).forEach(function (channel) {
          channels.appendChild(channelBox(self._t("ch_" + channel), category.channels[channel], category.critical, function (on) {
            var body = { categories: {} }; body.categories[category.key] = {}; body.categories[category.key][channel] = on; save(body);
          }));
        });
        nodes.push(el("div", { className: "pref", role: "group", "aria-label": category.name }, [
          el("div", null, [
            el("div", { className: "pref-name", text: category.name }),
            category.critical ? el("div", { className: "pref-desc", text: self._t("critical") })
              : category.description ? el("div", { className: "pref-desc", text: category.description }) : null,
            channels,
          ]),
        ]));
      });
      nodes.push(status);
      this._prefsView.replaceChildren.apply(this._prefsView, nodes);
    }
  }

  customElements.define("clarion-inbox", ClarionInbox);
})();
