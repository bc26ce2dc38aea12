/* Clarion live inbox demo: session over REST, list + counts over REST, live frames over the websocket.
 * Plain JS, no build step. The embeddable widget (a later issue) grows out of this. */
(function () {
  "use strict";

  var cfg = JSON.parse(document.getElementById("clarion-demo-config").textContent);
  var $ = function (id) { return document.getElementById(id); };
  var els = {
    status: $("clarion-status"), bell: $("clarion-bell"), badge: $("clarion-badge"), panel: $("clarion-panel"),
    summary: $("clarion-summary"), readAll: $("clarion-read-all"), error: $("clarion-error"),
    list: $("clarion-messages"), empty: $("clarion-empty"), more: $("clarion-more"),
    curl: $("clarion-demo-curl"), copy: $("clarion-demo-copy"),
  };
  var PAGE = 20;
  var state = {
    token: null, wsUrl: null, session: null,
    messages: new Map(), // id -> message (inbox_message_data shape)
    nextCursor: null, counts: { unread: 0, unseen: 0, total: 0 },
    socket: null, attempts: 0, reconnectTimer: null, pingTimer: null, loaded: false, loading: null,
  };

  // --- REST ------------------------------------------------------------------------------------

  function openSession() {
    if (!state.session) {
      state.session = fetch(cfg.api_base + "/session", {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify({
          publishable_key: cfg.publishable_key, subscriber_id: cfg.subscriber_id, subscriber_hash: cfg.subscriber_hash,
        }),
      }).then(function (res) {
        return res.json().then(function (body) {
          if (!res.ok) throw new Error((body.error && body.error.message) || "Could not open a session.");
          state.token = body.token;
          state.wsUrl = body.websocket_url;
          return body;
        });
      }).finally(function () { state.session = null; });
    }
    return state.session;
  }

  function api(path, method, retried) {
    var ready = state.token ? Promise.resolve() : openSession();
    return ready.then(function () {
      return fetch(cfg.api_base + path, { method: method || "GET", headers: { Authorization: "Bearer " + state.token } });
    }).then(function (res) {
      if (res.status === 401 && !retried) { // the token expired: open a new session once
        state.token = null;
        return api(path, method, true);
      }
      return res.json().then(function (body) {
        if (!res.ok) throw new Error((body.error && body.error.message) || "Request failed (" + res.status + ").");
        return body;
      });
    });
  }

  function showError(err) { els.error.textContent = err ? String(err.message || err) : ""; }

  function loadFirstPage() {
    if (!state.loading) {
      state.loading = Promise.all([api("/messages?limit=" + PAGE), api("/counts")]).then(function (results) {
        state.messages.clear();
        state.loaded = true;
        addPage(results[0]);
        setCounts(results[1]);
        showError(null);
      }).catch(showError).finally(function () { state.loading = null; });
    }
    return state.loading;
  }

  function loadMore() {
    if (!state.nextCursor) return;
    els.more.disabled = true;
    api("/messages?limit=" + PAGE + "&cursor=" + encodeURIComponent(state.nextCursor))
      .then(addPage).catch(showError)
      .finally(function () { els.more.disabled = false; });
  }

  function addPage(page) {
    page.data.forEach(function (m) { state.messages.set(m.id, m); });
    state.nextCursor = page.next_cursor;
    render();
  }

  function refreshCounts() { return api("/counts").then(setCounts).catch(showError); }

  function markRead(id) {
    var m = state.messages.get(id);
    if (!m || m.is_read) return;
    api("/messages/" + id + "/read", "POST").then(function (updated) {
      state.messages.set(updated.id, updated);
      render();
      if (!isLive()) refreshCounts(); // otherwise the message.updated frame brings the counts
    }).catch(showError);
  }

  function markAllRead() {
    els.readAll.disabled = true;
    api("/messages/read-all", "POST").then(function () {
      markAllLocally("read");
      if (!isLive()) refreshCounts();
    }).catch(showError);
  }

  function markAllSeen() {
    if (state.counts.unseen > 0) api("/messages/seen-all", "POST").then(function () { markAllLocally("seen"); }).catch(showError);
  }

  function markAllLocally(what) {
    var now = new Date().toISOString();
    state.messages.forEach(function (m) {
      if (what === "read" && !m.is_read) { m.is_read = true; m.read_at = now; }
      if (!m.is_seen) { m.is_seen = true; m.seen_at = now; }
    });
    render();
  }

  // --- Websocket -------------------------------------------------------------------------------

  function isLive() { return state.socket && state.socket.readyState === WebSocket.OPEN; }

  function setStatus(s, label) { els.status.dataset.state = s; els.status.textContent = label; }

  function connect() {
    clearTimeout(state.reconnectTimer);
    var ready = state.token ? Promise.resolve() : openSession();
    ready.then(function () {
      var scheme = location.protocol === "https:" ? "wss://" : "ws://";
      var socket = new WebSocket(scheme + location.host + state.wsUrl);
      state.socket = socket;
      socket.onmessage = function (e) { onFrame(JSON.parse(e.data)); };
      socket.onclose = function (e) { lost(socket, e.code); };
      socket.onerror = function () { lost(socket, 1006); }; // some runtimes fire no close after a failed connect
    }).catch(function (err) { showError(err); scheduleReconnect(false); });
  }

  function lost(socket, code) {
    if (state.socket !== socket) return; // already handled (error then close) or superseded
    state.socket = null;
    clearInterval(state.pingTimer);
    if (socket.readyState !== WebSocket.CLOSED) socket.close();
    if (code === 4403) { setStatus("offline", "origin not allowed"); return; }
    if (code === 4401) state.token = null; // expired or invalid token: the next attempt opens a new session
    scheduleReconnect(code === 4401);
  }

  function scheduleReconnect(immediately) {
    setStatus("reconnecting", "reconnecting…");
    var delay = immediately && state.attempts === 0 ? 0 : Math.min(30000, 1000 * Math.pow(2, state.attempts));
    delay = delay * (0.5 + Math.random() / 2); // jitter so many tabs don't reconnect in lockstep
    state.attempts += 1;
    state.reconnectTimer = setTimeout(connect, delay);
  }

  function onFrame(frame) {
    switch (frame.event) {
      case "ready":
        var wasReconnect = state.attempts > 0;
        state.attempts = 0;
        setStatus("live", "live");
        clearInterval(state.pingTimer);
        state.pingTimer = setInterval(function () {
          if (isLive()) state.socket.send(JSON.stringify({ type: "ping" }));
        }, 25000);
        // Frames sent while we were away are lost: re-sync from REST so nothing drifts.
        if (wasReconnect || !state.loaded) loadFirstPage();
        break;
      case "message.created":
        state.messages.set(frame.message.id, frame.message);
        render(frame.message.id);
        setCounts(frame.counts);
        break;
      case "message.updated":
        if (state.messages.has(frame.message.id)) { state.messages.set(frame.message.id, frame.message); render(); }
        setCounts(frame.counts);
        break;
      case "counts.changed":
        if (frame.counts.unread === 0) markAllLocally("read");
        else if (frame.counts.unseen === 0) markAllLocally("seen");
        setCounts(frame.counts);
        break;
    }
  }

  // --- Rendering -------------------------------------------------------------------------------

  var rtf = new Intl.RelativeTimeFormat(undefined, { numeric: "auto" });
  var UNITS = [["year", 31536000], ["month", 2592000], ["week", 604800], ["day", 86400], ["hour", 3600], ["minute", 60]];

  function relativeTime(iso) {
    var seconds = (new Date(iso).getTime() - Date.now()) / 1000;
    for (var i = 0; i < UNITS.length; i++) {
      if (Math.abs(seconds) >= UNITS[i][1]) return rtf.format(Math.round(seconds / UNITS[i][1]), UNITS[i][0]);
    }
    return "just now";
  }

  function el(tag, className, text) {
    var node = document.createElement(tag);
    if (className) node.className = className;
    if (text) node.textContent = text; // never innerHTML: titles and bodies are user content
    return node;
  }

  function renderItem(m, fresh) {
    var li = el("li", "message" + (m.is_read ? "" : " unread") + (fresh ? " fresh" : ""));
    li.dataset.id = m.id;
    li.appendChild(el("span", "dot"));
    var main = el("div");
    main.appendChild(el("div", "message-title", m.title || "(untitled)"));
    if (m.body) main.appendChild(el("div", "message-body", m.body));
    var meta = el("div", "message-meta");
    var time = el("time", null, relativeTime(m.created_at));
    time.dateTime = m.created_at;
    time.title = new Date(m.created_at).toLocaleString();
    meta.appendChild(time);
    if (/^https?:\/\//i.test(m.action_url || "")) {
      meta.appendChild(document.createTextNode(" · "));
      var link = el("a", null, "Open");
      link.href = m.action_url;
      link.target = "_blank";
      link.rel = "noopener noreferrer";
      meta.appendChild(link);
    }
    main.appendChild(meta);
    li.appendChild(main);
    return li;
  }

  function render(freshId) {
    var items = Array.from(state.messages.values())
      .filter(function (m) { return !m.is_archived; })
      .sort(function (a, b) { return b.id - a.id; });
    els.list.replaceChildren.apply(els.list, items.map(function (m) { return renderItem(m, m.id === freshId); }));
    els.empty.hidden = items.length > 0 || !state.loaded;
    els.more.hidden = !state.nextCursor;
  }

  function setCounts(counts) {
    state.counts = counts;
    els.badge.hidden = counts.unread === 0;
    els.badge.textContent = counts.unread > 99 ? "99+" : String(counts.unread);
    els.summary.textContent = counts.total === 0 ? "Nothing here" : counts.unread + " unread of " + counts.total;
    els.readAll.disabled = counts.unread === 0;
    document.title = (counts.unread ? "(" + counts.unread + ") " : "") + "Live inbox demo · Clarion";
  }

  // --- Wiring ----------------------------------------------------------------------------------

  els.list.addEventListener("click", function (e) {
    if (e.target.closest("a")) return;
    var li = e.target.closest(".message");
    if (li) markRead(Number(li.dataset.id));
  });
  els.readAll.addEventListener("click", markAllRead);
  els.more.addEventListener("click", loadMore);
  els.bell.addEventListener("click", function () {
    els.panel.hidden = !els.panel.hidden;
    els.bell.setAttribute("aria-expanded", String(!els.panel.hidden));
    if (!els.panel.hidden) markAllSeen();
  });
  if (els.copy) {
    els.copy.addEventListener("click", function () {
      navigator.clipboard.writeText(els.curl.textContent).then(function () {
        els.copy.textContent = "Copied";
        setTimeout(function () { els.copy.textContent = "Copy"; }, 1500);
      });
    });
  }
  setInterval(function () { render(); }, 60000); // keep relative times fresh

  openSession().then(function () {
    loadFirstPage();
    connect();
  }).catch(function (err) { showError(err); setStatus("reconnecting", "offline"); scheduleReconnect(false); });
})();
