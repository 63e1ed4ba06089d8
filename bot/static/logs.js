/* previewbot: one deployment's log, live. Plain JavaScript, no build step, no dependencies.
 *
 * The page is /deployments/ID/logs. It reads the deployment (GET /api/deployments/ID) for its
 * heading, then follows the log over the WebSocket: after the auth message it sends
 * {"type": "subscribe", "logs": ID} and gets the last lines, then each new one; after a
 * reconnect it asks only for the lines after the last one shown ("after"), and a line already
 * shown (by seq) is never shown twice. The view follows the end unless the reader scrolled up.
 * It uses the dashboard's sign-in (its token in local storage); every text is set with
 * textContent, never innerHTML.
 */
(function () {
  "use strict";

  var TOKEN_KEY = "previewbot.token";
  var STATUS_LABEL = { idle: "Idle", deploying: "Deploying", deployed: "Deployed", failed: "Failed",
    cancelled: "Cancelled", superseded: "Superseded", destroyed: "Torn down" };
  var STATUS_ICON = { idle: "\u25CB", deploying: "\u21BB", deployed: "\u2713", failed: "\u2715" };
  var BACKOFF_MIN_MS = 500;
  var BACKOFF_MAX_MS = 15000;
  var FLUSH_MS = 40; // lines are added to the page in batches, at most this often
  var MAX_SHOWN = 20000; // lines kept on the page; older ones leave it (they stay a click away)
  var EARLIER_PAGE = 1000;
  var AT_END_PX = 24;

  var meta = document.querySelector('meta[name="previewbot-api-url"]');
  var raw = meta ? (meta.getAttribute("content") || "").trim() : "";
  var API = !raw || raw.indexOf("{{") !== -1 ? window.location.origin : raw.replace(/\/+$/, "");
  var WS_BASE = API.replace(/^http/i, "ws");

  var state = {
    token: null,
    id: null,
    deployment: null,
    ws: null,
    attempt: 0,
    reconnectTimer: null,
    lastSeq: 0, // the last line shown
    firstSeq: 0, // the first line shown (0: none)
    pending: [], // lines received, not yet on the page
    flushTimer: null,
    following: true,
    refused: false,
  };
  var els = {};

  function el(tag, className, text) {
    var node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined && text !== null) node.textContent = String(text);
    return node;
  }

  function readToken() {
    try { return window.localStorage.getItem(TOKEN_KEY); } catch (e) { return null; }
  }

  function api(path) {
    return fetch(API + path, { headers: { Accept: "application/json", Authorization: "Bearer " + state.token }, cache: "no-store" }).then(
      function (response) {
        return response.json().catch(function () { return null; }).then(function (body) {
          if (!response.ok) {
            var error = new Error(body && typeof body.error === "string" ? body.error : "HTTP " + response.status);
            error.status = response.status;
            throw error;
          }
          return body;
        });
      },
      function () {
        var error = new Error("Cannot reach the previewbot API at " + API);
        error.status = 0;
        throw error;
      }
    );
  }

  // -- heading ------------------------------------------------------------------------------

  function showSignedOut(text) {
    els.main.hidden = true;
    els.connection.hidden = true;
    els.signedOut.hidden = false;
    if (text) els.signedOutText.textContent = text;
    offerGitHubSignIn();
  }

  /* A reviewer who followed a check run's details link signs in with GitHub and comes back
   * here (the dashboard opens `next` once signed in), when the server offers it. */
  function offerGitHubSignIn() {
    els.signInGitHub.href = API + "/auth/github?next=" + encodeURIComponent(window.location.pathname);
    fetch(API + "/api/auth", { headers: { Accept: "application/json" }, cache: "no-store" })
      .then(function (response) { return response.ok ? response.json() : null; })
      .then(function (body) { els.signInGitHub.hidden = !(body && body.github === true); }, function () {});
  }

  function showNotice(text) {
    els.notice.textContent = text;
    els.notice.hidden = !text;
  }

  function setStatus(status, outcome) {
    var shown = status === "idle" && outcome ? outcome : status;
    els.status.hidden = !(shown in STATUS_LABEL);
    els.status.dataset.status = STATUS_ICON[shown] ? shown : "idle";
    els.statusIcon.textContent = STATUS_ICON[shown] || STATUS_ICON.idle;
    els.statusText.textContent = STATUS_LABEL[shown] || "";
  }

  function renderHeading(d) {
    var name = d.repository + " #" + d.prNumber;
    els.title.textContent = "Log of " + name + (d.environment && d.environment !== "preview" ? " \u00B7 " + d.environment : "");
    document.title = "previewbot \u00B7 log of " + name;
    var facts = [];
    if (d.branchName) facts.push(d.branchName);
    if (typeof d.headSha === "string" && d.headSha) facts.push("commit " + d.headSha.slice(0, 7));
    if (d.trigger) facts.push("by " + d.trigger + (d.requestedBy ? " (" + d.requestedBy + ")" : ""));
    if (d.createdAt) facts.push("started " + new Date(d.createdAt).toLocaleString());
    els.meta.replaceChildren();
    facts.forEach(function (fact) { els.meta.appendChild(el("span", null, fact)); });
    setStatus(d.status);
  }

  // -- lines --------------------------------------------------------------------------------

  function lineNode(seq, text) {
    var row = el("div", "log-line");
    row.dataset.seq = String(seq);
    row.appendChild(el("span", "log-seq", seq));
    row.appendChild(el("span", "log-text", text));
    return row;
  }

  function receive(message) {
    if (typeof message.seq !== "number" || message.seq <= state.lastSeq) return; // seen already
    state.lastSeq = message.seq;
    state.pending.push(message);
    if (!state.flushTimer) state.flushTimer = window.setTimeout(flush, FLUSH_MS);
  }

  function flush() {
    state.flushTimer = null;
    if (!state.pending.length) return;
    var fragment = document.createDocumentFragment();
    state.pending.forEach(function (m) { fragment.appendChild(lineNode(m.seq, typeof m.line === "string" ? m.line : "")); });
    if (!state.firstSeq) state.firstSeq = state.pending[0].seq;
    state.pending = [];
    els.lines.appendChild(fragment);
    // A log of hundreds of thousands of lines stays readable: the oldest leave the page.
    var extra = els.lines.childElementCount - MAX_SHOWN;
    while (extra-- > 0) els.lines.firstElementChild.remove();
    state.firstSeq = Number(els.lines.firstElementChild.dataset.seq);
    updateEarlier();
    els.empty.hidden = true;
    if (state.following) scrollToEnd();
    else els.follow.hidden = false;
  }

  function updateEarlier() {
    var before = state.firstSeq - 1;
    els.earlier.hidden = before < 1;
    els.earlier.textContent = "Show earlier lines (" + Math.min(before, EARLIER_PAGE) + " of " + before + ")";
  }

  /* The lines before the first one shown, from the REST API; the view keeps its place. */
  function loadEarlier() {
    var before = state.firstSeq - 1;
    if (before < 1) return;
    var after = Math.max(0, before - EARLIER_PAGE);
    els.earlier.disabled = true;
    api("/api/deployments/" + encodeURIComponent(state.id) + "/logs?after=" + after + "&limit=" + (before - after)).then(
      function (page) {
        els.earlier.disabled = false;
        var lines = (page && Array.isArray(page.lines) ? page.lines : []).filter(function (l) { return l.seq < state.firstSeq; });
        // Lines Redis and SQLite no longer hold leave a gap; the button then goes.
        state.firstSeq = lines.length ? lines[0].seq : 1;
        var fragment = document.createDocumentFragment();
        lines.forEach(function (l) { fragment.appendChild(lineNode(l.seq, l.line)); });
        var height = els.log.scrollHeight;
        els.lines.insertBefore(fragment, els.lines.firstChild);
        els.log.scrollTop += els.log.scrollHeight - height;
        updateEarlier();
      },
      function (error) {
        els.earlier.disabled = false;
        showNotice("Could not load the earlier lines: " + error.message);
      }
    );
  }

  function atEnd() {
    return els.log.scrollTop + els.log.clientHeight >= els.log.scrollHeight - AT_END_PX;
  }

  function scrollToEnd() {
    els.log.scrollTop = els.log.scrollHeight;
  }

  function onScroll() {
    state.following = atEnd();
    if (state.following) els.follow.hidden = true;
  }

  // -- the WebSocket ------------------------------------------------------------------------

  function setConnection(next) {
    els.connection.dataset.state = next;
    els.connectionText.textContent = { connecting: "Connecting\u2026", live: "Live", reconnecting: "Reconnecting\u2026", offline: "Offline" }[next];
  }

  function connect() {
    state.reconnectTimer = null;
    var d = state.deployment;
    // Its environment's updates too: the heading follows the deployment's status.
    var query = new URLSearchParams({ repository: d.repository, prNumber: String(d.prNumber), environment: d.environment || "preview" });
    var ws;
    try {
      ws = new WebSocket(WS_BASE + "/ws?" + query.toString());
    } catch (e) {
      scheduleReconnect();
      return;
    }
    state.ws = ws;
    setConnection(state.attempt ? "reconnecting" : "connecting");
    ws.onopen = function () { ws.send(JSON.stringify({ type: "auth", token: state.token })); };
    ws.onmessage = function (event) {
      if (state.ws !== ws) return;
      var message;
      try { message = JSON.parse(event.data); } catch (e) { return; }
      if (!message || typeof message !== "object") return;
      if (message.type === "auth" && message.ok === true) {
        var subscribe = { type: "subscribe", logs: state.id };
        if (state.lastSeq) subscribe.after = state.lastSeq; // only what came meanwhile
        ws.send(JSON.stringify(subscribe));
      } else if (message.type === "subscribed") {
        state.attempt = 0;
        setConnection("live");
      } else if (message.type === "deployment:log" && message.deploymentId === state.id) {
        receive(message);
      } else if (message.type === "deployment:update") {
        onUpdate(message);
      } else if (message.type === "error") {
        // About this log (it does not exist for this sign-in): final. Otherwise (Redis or
        // SQLite unavailable a moment) subscribe again on a new connection.
        state.refused = message.logs === state.id;
        showNotice(message.error || "This log cannot be shown.");
        setConnection(state.refused ? "offline" : "reconnecting");
        ws.close();
      }
    };
    ws.onclose = function (event) {
      if (state.ws !== ws) return;
      state.ws = null;
      if (event.code === 4401) {
        showSignedOut("Your sign-in is no longer accepted: its token was revoked or has expired. Sign in on the dashboard again.");
        return;
      }
      if (!state.refused) scheduleReconnect();
    };
  }

  function scheduleReconnect() {
    if (state.reconnectTimer) return;
    var delay = Math.min(BACKOFF_MAX_MS, BACKOFF_MIN_MS * Math.pow(2, state.attempt));
    state.attempt += 1;
    setConnection("reconnecting");
    state.reconnectTimer = window.setTimeout(connect, Math.round(delay * (0.75 + Math.random() * 0.5)));
  }

  function onUpdate(message) {
    if (message.deploymentId === state.id) {
      setStatus(message.status, message.outcome);
      els.newer.hidden = true;
    } else if (message.status === "deploying" && typeof message.deploymentId === "string") {
      els.newerLink.href = "../" + encodeURIComponent(message.deploymentId) + "/logs";
      els.newer.hidden = false;
    }
  }

  // -- start --------------------------------------------------------------------------------

  function init() {
    [
      ["main", "main"], ["signedOut", "signed-out"], ["signedOutText", "signed-out-text"], ["signInGitHub", "sign-in-github"], ["connection", "connection"],
      ["connectionText", "connection-text"], ["title", "title"], ["status", "status"], ["statusIcon", "status-icon"],
      ["statusText", "status-text"], ["meta", "meta"], ["notice", "notice"], ["newer", "newer"], ["newerLink", "newer-link"],
      ["log", "log"], ["earlier", "earlier"], ["lines", "lines"], ["empty", "empty"], ["follow", "follow"],
    ].forEach(function (pair) { els[pair[0]] = document.getElementById(pair[1]); });
    els.log.addEventListener("scroll", onScroll, { passive: true });
    els.follow.addEventListener("click", function () {
      state.following = true;
      els.follow.hidden = true;
      scrollToEnd();
    });
    els.earlier.addEventListener("click", loadEarlier);

    var match = /\/deployments\/([^/]+)\/logs\/?$/.exec(window.location.pathname);
    state.token = readToken();
    if (!state.token) {
      showSignedOut();
      return;
    }
    els.main.hidden = false;
    els.connection.hidden = false;
    setConnection("connecting");
    if (!match) {
      showNotice("This address names no deployment.");
      return;
    }
    state.id = decodeURIComponent(match[1]);
    api("/api/deployments/" + encodeURIComponent(state.id)).then(
      function (d) {
        state.deployment = d;
        renderHeading(d);
        connect();
      },
      function (error) {
        if (error.status === 401) showSignedOut("Your sign-in is no longer accepted. Sign in on the dashboard again.");
        else {
          setConnection("offline");
          showNotice(error.status === 404 ? "No such deployment, or not one this sign-in may see." : "Could not load the deployment: " + error.message);
        }
      }
    );
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", init);
  else init();
})();
