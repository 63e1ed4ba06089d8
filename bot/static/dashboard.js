/* previewbot dashboard: plain JavaScript, no build step, no dependencies.
 *
 * Data comes from the REST API (GET /api/pull-requests, POST .../deploy, POST .../deployment/cancel)
 * and live updates from the WebSocket at /ws. Everything taken from the API is written with textContent or
 * setAttribute, never innerHTML, so a branch called `<img src=x onerror=alert(1)>` is text.
 */
(function () {
  "use strict";

  var TOKEN_KEY = "previewbot.token";
  var STATUS_LABEL = { idle: "Idle", deploying: "Deploying", deployed: "Deployed", failed: "Failed" };
  var STATUS_ICON = { idle: "\u25CB", deploying: "\u21BB", deployed: "\u2713", failed: "\u2715" };
  // Why an environment went back to idle (`outcome` on WebSocket messages, the record's status
  // in the list): a note on the idle card.
  var OUTCOME_LABEL = { cancelled: "Cancelled", destroyed: "Torn down", expired: "Expired" };
  var OUTCOME_TEXT = {
    cancelled: "The deploy was cancelled; no preview is running.",
    destroyed: "The preview was torn down.",
    expired: "The preview expired and was torn down.",
  };
  var BACKOFF_MIN_MS = 500;
  var BACKOFF_MAX_MS = 15000;
  var PING_EVERY_MS = 20000;
  var PONG_TIMEOUT_MS = 10000;
  var RESYNC_WHILE_DEPLOYING_MS = 10000;
  var RESYNC_IDLE_MS = 60000;
  var REFETCH_DEBOUNCE_MS = 250;

  // -- where the API lives ------------------------------------------------------------------

  function apiBase() {
    var meta = document.querySelector('meta[name="previewbot-api-url"]');
    var raw = meta ? (meta.getAttribute("content") || "").trim() : "";
    if (!raw || raw.indexOf("{{") !== -1) return window.location.origin;
    return raw.replace(/\/+$/, "");
  }

  var API = apiBase();
  var WS_BASE = API.replace(/^http/i, "ws");

  // -- state --------------------------------------------------------------------------------

  var state = {
    token: null,
    generation: 0, // bumped on sign-in/out so late responses for an old session are dropped
    cards: new Map(), // "owner/repo#12" -> card model (with its DOM nodes)
    repositories: new Set(),
    filters: { repository: "", status: "" },
    loaded: false,
    listController: null,
    lastListAt: 0,
    refetchTimer: null,
    ws: null,
    connection: "offline",
    attempt: 0,
    everLive: false,
    reconnectTimer: null,
    pingTimer: null,
    pongTimer: null,
    tickTimer: null,
    idCounter: 0,
  };

  var $ = function (id) { return document.getElementById(id); };
  var els = {};

  // -- small helpers ------------------------------------------------------------------------

  function el(tag, className, text) {
    var node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined && text !== null) node.textContent = String(text);
    return node;
  }

  function storage(action, value) {
    try {
      if (action === "get") return window.localStorage.getItem(TOKEN_KEY);
      if (action === "set") window.localStorage.setItem(TOKEN_KEY, value);
      if (action === "remove") window.localStorage.removeItem(TOKEN_KEY);
    } catch (e) {
      /* storage disabled: the token lives only as long as the page */
    }
    return null;
  }

  function keyOf(repository, prNumber) {
    return repository + "#" + Number(prNumber);
  }

  function isHttpUrl(value) {
    return typeof value === "string" && /^https?:\/\/[^\s]+$/i.test(value);
  }

  function formatElapsed(ms) {
    var total = Math.max(0, Math.floor(ms / 1000));
    if (total < 60) return total + "s";
    var minutes = Math.floor(total / 60);
    var seconds = total % 60;
    if (minutes < 60) return minutes + "m " + (seconds < 10 ? "0" : "") + seconds + "s";
    return Math.floor(minutes / 60) + "h " + (minutes % 60) + "m";
  }

  var relative = window.Intl && Intl.RelativeTimeFormat ? new Intl.RelativeTimeFormat("en", { numeric: "auto" }) : null;

  function ago(iso) {
    var then = Date.parse(iso);
    if (!iso || isNaN(then)) return "";
    var seconds = Math.round((then - Date.now()) / 1000);
    var steps = [["year", 31536000], ["month", 2592000], ["week", 604800], ["day", 86400], ["hour", 3600], ["minute", 60]];
    for (var i = 0; i < steps.length; i++) {
      if (Math.abs(seconds) >= steps[i][1]) {
        var n = Math.round(seconds / steps[i][1]);
        return relative ? relative.format(n, steps[i][0]) : Math.abs(n) + " " + steps[i][0] + "s ago";
      }
    }
    return "just now";
  }

  function announce(text) {
    els.announcer.textContent = "";
    window.setTimeout(function () { els.announcer.textContent = text; }, 50);
  }

  // -- the REST API -------------------------------------------------------------------------

  function ApiError(status, message, body) {
    this.status = status;
    this.message = message;
    this.body = body || null;
  }

  function api(path, options) {
    options = options || {};
    var headers = { Authorization: "Bearer " + state.token, Accept: "application/json" };
    var init = { method: options.method || "GET", headers: headers, cache: "no-store", signal: options.signal };
    if (options.body !== undefined) {
      headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(options.body);
    }
    return fetch(API + path, init).then(
      function (response) {
        return response.text().then(function (text) {
          var body = null;
          try { body = text ? JSON.parse(text) : null; } catch (e) { body = null; }
          if (!response.ok) {
            var message = body && typeof body.error === "string" ? body.error : "HTTP " + response.status;
            throw new ApiError(response.status, message, body);
          }
          return body;
        });
      },
      function (error) {
        if (error && error.name === "AbortError") throw error;
        throw new ApiError(0, "Cannot reach the previewbot API at " + API);
      }
    );
  }

  function listPath() {
    var query = new URLSearchParams();
    if (state.filters.repository) query.set("repository", state.filters.repository);
    if (state.filters.status) query.set("status", state.filters.status);
    var qs = query.toString();
    return "/api/pull-requests" + (qs ? "?" + qs : "");
  }

  function fetchList() {
    if (state.listController) state.listController.abort();
    var controller = typeof AbortController === "function" ? new AbortController() : null;
    state.listController = controller;
    return api(listPath(), { signal: controller ? controller.signal : undefined }).then(function (body) {
      if (state.listController === controller) state.listController = null;
      state.lastListAt = Date.now();
      return body && Array.isArray(body.pullRequests) ? body.pullRequests : [];
    });
  }

  function loadList() {
    if (!state.token) return Promise.resolve();
    var generation = state.generation;
    return fetchList().then(
      function (pulls) {
        if (generation !== state.generation) return;
        els.loadError.hidden = true;
        renderList(pulls);
      },
      function (error) {
        if (generation !== state.generation || (error && error.name === "AbortError")) return;
        if (error.status === 401) {
          signOut("Your API token is no longer accepted (" + error.message + "). Sign in again.", "error");
          return;
        }
        els.loadError.textContent = "Could not refresh the pull requests: " + error.message + ". Retrying shortly.";
        els.loadError.hidden = false;
      }
    );
  }

  function scheduleRefetch() {
    if (state.refetchTimer) return;
    state.refetchTimer = window.setTimeout(function () {
      state.refetchTimer = null;
      loadList();
    }, REFETCH_DEBOUNCE_MS);
  }

  // -- cards --------------------------------------------------------------------------------

  function deploymentOf(pull) {
    var d = pull.deployment;
    if (!d) return { deploymentId: null, status: pull.status || "idle", previewUrl: null, error: null, startedAt: null, updatedAt: "", outcome: null };
    return {
      deploymentId: d.id || d.deploymentId || null,
      status: d.status || pull.status || "idle",
      previewUrl: d.previewUrl || null,
      error: d.error || null,
      startedAt: d.createdAt || null,
      updatedAt: d.updatedAt || d.createdAt || "",
      // The list gives the record's own status beside the environment's state.
      outcome: d.outcome || d.recordStatus || null,
    };
  }

  /* Apply a deployment change (a WebSocket message, a deploy response or a list row) to a card
   * unless the card already knows something newer. Returns true when the card changed. */
  function applyDeployment(card, next) {
    var newer = !card.updatedAt || !next.updatedAt || next.updatedAt >= card.updatedAt;
    if (next.deploymentId && next.deploymentId === card.deploymentId) {
      if (!newer) return false;
    } else if (next.status !== "deploying") {
      // A finished deployment other than the one shown: an older one ending after a newer one
      // started must not replace the newer one.
      if (card.status === "deploying" || !newer) return false;
    } else if (!newer) {
      return false;
    }
    var sameDeployment = next.deploymentId && next.deploymentId === card.deploymentId;
    card.deploymentId = next.deploymentId || card.deploymentId;
    card.status = next.status in STATUS_LABEL ? next.status : "idle";
    card.previewUrl = card.status === "deployed" ? next.previewUrl || (sameDeployment ? card.previewUrl : null) : null;
    card.error = card.status === "failed" ? next.error || "The deploy failed without an error message." : null;
    card.outcome = card.status === "idle" && Object.prototype.hasOwnProperty.call(OUTCOME_LABEL, next.outcome) ? next.outcome : null;
    if (card.status !== "deploying") {
      card.cancelPending = false;
      card.cancelRequested = null;
    }
    if (card.status === "deploying") {
      card.startedAt = next.startedAt || (sameDeployment && card.startedAt) || next.updatedAt || null;
    }
    if (next.updatedAt) card.updatedAt = next.updatedAt;
    return true;
  }

  function newCard(pull) {
    var card = {
      key: keyOf(pull.repository, pull.prNumber),
      repository: pull.repository,
      prNumber: Number(pull.prNumber),
      title: pull.title,
      branchName: pull.branchName,
      author: pull.author,
      createdAt: pull.createdAt,
      deploymentId: null,
      status: "idle",
      previewUrl: null,
      error: null,
      outcome: null,
      startedAt: null,
      updatedAt: "",
      expanded: false,
      pending: false,
      cancelPending: false, // the cancel request is on its way
      cancelRequested: null, // the deployment a cancel was accepted for, until it ends
      keepFocus: false, // Cancel had the focus when clicked
      message: "",
      messageKind: "",
      nodes: null,
    };
    applyDeployment(card, deploymentOf(pull));
    card.nodes = buildCard(card);
    return card;
  }

  function buildCard(card) {
    var n = {};
    var uid = "pr-" + ++state.idCounter;

    n.root = el("li", "card");
    n.root.dataset.key = card.key;
    var article = el("article", "card-body");
    article.setAttribute("aria-labelledby", uid + "-title");
    n.root.appendChild(article);

    var head = el("div", "card-head");
    var ref = el("p", "card-ref");
    n.repo = el("span", "card-repo");
    n.number = el("span", "card-number");
    ref.appendChild(n.repo);
    ref.appendChild(n.number);
    n.badge = el("span", "badge");
    n.badgeIcon = el("span", "badge-icon");
    n.badgeIcon.setAttribute("aria-hidden", "true");
    n.badgeText = el("span", "badge-text");
    n.badge.appendChild(n.badgeIcon);
    n.badge.appendChild(n.badgeText);
    head.appendChild(ref);
    head.appendChild(n.badge);
    article.appendChild(head);

    n.title = el("h2", "card-title");
    n.title.id = uid + "-title";
    article.appendChild(n.title);

    var meta = el("dl", "card-meta");
    function metaRow(label, valueNode) {
      var row = el("div", "meta-row");
      row.appendChild(el("dt", null, label));
      var dd = el("dd");
      dd.appendChild(valueNode);
      row.appendChild(dd);
      meta.appendChild(row);
      return row;
    }
    n.branch = el("code", "branch");
    metaRow("Branch", n.branch);
    n.author = el("span", "author");
    n.authorRow = metaRow("Author", n.author);
    n.opened = el("time", "opened");
    n.openedRow = metaRow("Opened", n.opened);
    article.appendChild(meta);

    var status = el("div", "card-state");
    n.idle = el("p", "state state-idle");
    n.outcome = el("span", "outcome");
    n.idle.appendChild(n.outcome);
    n.idleText = el("span", "idle-text");
    n.idle.appendChild(n.idleText);
    n.deploying = el("p", "state state-deploying");
    var spinner = el("span", "spinner");
    spinner.setAttribute("aria-hidden", "true");
    n.deploying.appendChild(spinner);
    n.deploying.appendChild(el("span", "deploying-text", "Deploying preview\u2026"));
    n.elapsed = el("span", "elapsed");
    n.elapsed.setAttribute("title", "Time since the deploy started");
    n.deploying.appendChild(n.elapsed);
    n.deployed = el("p", "state state-deployed");
    n.deployed.appendChild(el("span", "state-label", "Preview"));
    n.link = el("a", "preview-link");
    n.link.target = "_blank";
    n.link.rel = "noopener noreferrer";
    n.deployed.appendChild(n.link);
    n.failed = el("div", "state state-failed");
    n.failed.appendChild(el("p", "state-label", "Deploy failed"));
    n.error = el("pre", "error-text");
    n.failed.appendChild(n.error);
    [n.idle, n.deploying, n.deployed, n.failed].forEach(function (node) { status.appendChild(node); });
    article.appendChild(status);

    n.message = el("p", "card-message");
    n.message.setAttribute("role", "status");
    article.appendChild(n.message);

    var actions = el("div", "card-actions");
    n.toggle = el("button", "button preview-toggle");
    n.toggle.type = "button";
    n.toggle.setAttribute("aria-expanded", "false");
    n.toggle.setAttribute("aria-controls", uid + "-panel");
    n.check = el("span", "check", "\u2713");
    n.check.setAttribute("aria-hidden", "true");
    n.toggle.appendChild(n.check);
    n.toggle.appendChild(el("span", "toggle-text", "Preview"));
    n.checkLabel = el("span", "visually-hidden", " (deployed)");
    n.toggle.appendChild(n.checkLabel);
    var chevron = el("span", "chevron", "\u25BE");
    chevron.setAttribute("aria-hidden", "true");
    n.toggle.appendChild(chevron);
    n.toggle.addEventListener("click", function () {
      card.expanded = !card.expanded;
      updateCard(card);
    });
    n.retry = el("button", "button button-primary retry", "Retry");
    n.retry.type = "button";
    n.retry.addEventListener("click", function () { deploy(card); });
    n.cancel = el("button", "button button-danger cancel", "Cancel deploy");
    n.cancel.type = "button";
    n.cancel.addEventListener("click", function () { cancel(card); });
    actions.appendChild(n.toggle);
    actions.appendChild(n.retry);
    actions.appendChild(n.cancel);
    article.appendChild(actions);

    n.panel = el("div", "card-panel");
    n.panel.id = uid + "-panel";
    n.deploy = el("button", "button button-primary deploy");
    n.deploy.type = "button";
    n.deploy.addEventListener("click", function () { deploy(card); });
    n.panelNote = el("p", "panel-note muted");
    n.panel.appendChild(n.deploy);
    n.panel.appendChild(n.panelNote);
    article.appendChild(n.panel);
    return n;
  }

  function updateCard(card) {
    var n = card.nodes;
    var status = card.status;
    n.root.dataset.status = status;
    n.repo.textContent = card.repository;
    n.number.textContent = "#" + card.prNumber;
    n.badge.dataset.status = status;
    n.badgeIcon.textContent = STATUS_ICON[status];
    n.badgeText.textContent = STATUS_LABEL[status];

    n.title.textContent = card.title || "Pull request #" + card.prNumber;
    n.title.classList.toggle("untitled", !card.title);
    n.branch.textContent = card.branchName || "";
    n.author.textContent = card.author || "";
    n.authorRow.hidden = !card.author;
    if (card.createdAt) {
      n.opened.dateTime = card.createdAt;
      n.opened.title = new Date(card.createdAt).toLocaleString();
      n.opened.textContent = ago(card.createdAt);
    }
    n.openedRow.hidden = !card.createdAt;

    n.idle.hidden = status !== "idle";
    n.outcome.textContent = card.outcome ? OUTCOME_LABEL[card.outcome] : "";
    n.outcome.dataset.outcome = card.outcome || "";
    n.outcome.hidden = !card.outcome;
    n.idleText.textContent = card.outcome ? OUTCOME_TEXT[card.outcome] : "No preview deployed yet.";
    n.deploying.hidden = status !== "deploying";
    n.deployed.hidden = status !== "deployed";
    n.failed.hidden = status !== "failed";
    updateElapsed(card);

    if (status === "deployed" && card.previewUrl) {
      n.link.textContent = card.previewUrl;
      if (isHttpUrl(card.previewUrl)) n.link.href = card.previewUrl;
      else n.link.removeAttribute("href");
    } else {
      n.link.textContent = status === "deployed" ? "(no preview URL reported)" : "";
      n.link.removeAttribute("href");
    }
    n.error.textContent = card.error || "";

    n.message.textContent = card.message || "";
    n.message.dataset.kind = card.messageKind || "";
    n.message.hidden = !card.message;

    var busy = status === "deploying" || card.pending;
    n.toggle.hidden = status === "failed";
    n.toggle.classList.toggle("is-deployed", status === "deployed");
    n.check.hidden = status !== "deployed";
    n.checkLabel.hidden = status !== "deployed";
    n.toggle.setAttribute("aria-expanded", String(card.expanded && status !== "failed"));
    n.panel.hidden = !card.expanded || status === "failed";

    n.retry.hidden = status !== "failed";
    n.retry.disabled = card.pending;
    n.retry.textContent = card.pending && status === "failed" ? "Retrying\u2026" : "Retry";

    var cancelling = card.cancelPending || (card.cancelRequested !== null && card.cancelRequested === card.deploymentId);
    n.cancel.hidden = status !== "deploying";
    n.cancel.disabled = cancelling;
    n.cancel.textContent = cancelling ? "Cancelling\u2026" : "Cancel deploy";
    if (card.keepFocus && (n.cancel.hidden || !cancelling)) {
      // Disabling or hiding the focused Cancel button drops the keyboard focus to the page:
      // give it back to this card (Cancel again after an error, else Preview or Retry).
      card.keepFocus = false;
      var active = document.activeElement;
      if (!active || active === document.body || active === n.cancel) {
        (!n.cancel.hidden ? n.cancel : n.toggle.hidden ? n.retry : n.toggle).focus();
      }
    }

    n.deploy.disabled = busy;
    if (card.pending) n.deploy.textContent = "Starting deploy\u2026";
    else if (status === "deploying") n.deploy.textContent = "Deploy in progress\u2026";
    else if (status === "deployed") n.deploy.textContent = "Redeploy Preview";
    else n.deploy.textContent = "Deploy Preview for " + (card.branchName || "this branch");
    n.panelNote.textContent =
      status === "deploying" ? "A deploy of this branch is running; wait for it to finish or cancel it." :
      status === "deployed" ? "Rebuilds the preview of " + (card.branchName || "this branch") + " at its latest commit." :
      "Builds an environment for this branch and links it here.";
  }

  function updateElapsed(card) {
    if (card.status !== "deploying") {
      card.nodes.elapsed.textContent = "";
      return;
    }
    var started = Date.parse(card.startedAt);
    card.nodes.elapsed.textContent = isNaN(started) ? "" : formatElapsed(Date.now() - started);
  }

  function describe(card) {
    var name = card.repository + " #" + card.prNumber;
    if (card.status === "deploying") return name + ": deploying a preview of " + card.branchName + ".";
    if (card.status === "deployed") return name + ": preview deployed" + (card.previewUrl ? " at " + card.previewUrl : "") + ".";
    if (card.status === "failed") return name + ": deploy failed. " + (card.error || "");
    if (card.outcome === "cancelled") return name + ": deploy cancelled.";
    return name + ": no preview.";
  }

  function renderList(pulls) {
    var seen = new Set();
    var ordered = [];
    pulls.forEach(function (pull) {
      if (!pull || typeof pull.repository !== "string") return;
      var key = keyOf(pull.repository, pull.prNumber);
      if (seen.has(key)) return;
      seen.add(key);
      state.repositories.add(pull.repository);
      var card = state.cards.get(key);
      if (!card) {
        card = newCard(pull);
        state.cards.set(key, card);
      } else {
        var before = card.status;
        card.title = pull.title;
        card.branchName = pull.branchName;
        card.author = pull.author;
        card.createdAt = pull.createdAt;
        applyDeployment(card, deploymentOf(pull));
        if (state.loaded && before !== card.status) announce(describe(card));
      }
      updateCard(card);
      ordered.push(card);
    });
    state.cards.forEach(function (card, key) {
      if (!seen.has(key)) {
        card.nodes.root.remove();
        state.cards.delete(key);
      }
    });
    // Newest first, as the API sends them; only move nodes that are out of place (keeps focus).
    var list = els.cards;
    ordered.forEach(function (card, index) {
      if (list.children[index] !== card.nodes.root) list.insertBefore(card.nodes.root, list.children[index] || null);
    });
    state.loaded = true;
    renderRepositories();
    renderSummary();
    ensureTicking();
  }

  function renderRepositories() {
    var select = els.filterRepository;
    if (state.filters.repository) state.repositories.add(state.filters.repository);
    var wanted = Array.from(state.repositories).sort();
    var current = Array.from(select.options).slice(1).map(function (o) { return o.value; });
    if (wanted.join("\n") !== current.join("\n")) {
      while (select.options.length > 1) select.remove(1);
      wanted.forEach(function (repo) { select.add(new Option(repo, repo)); });
    }
    select.value = state.filters.repository;
  }

  function renderSummary() {
    var count = state.cards.size;
    var filtered = !!(state.filters.repository || state.filters.status);
    els.summary.textContent =
      count + " open pull request" + (count === 1 ? "" : "s") + (filtered ? " matching the filters" : "");
    els.filterClear.hidden = !filtered;
    els.empty.hidden = count !== 0;
    els.cards.hidden = count === 0;
    if (count === 0) {
      els.emptyTitle.textContent = filtered ? "No pull requests match these filters." : "No open pull requests yet.";
      els.emptyDetail.textContent = filtered
        ? "Try another repository or status, or clear the filters."
        : "When the GitHub App sees a pull request, it shows up here, live.";
    }
  }

  // -- deploying ----------------------------------------------------------------------------

  function deploy(card) {
    if (card.pending || card.status === "deploying" || !state.token) return;
    var generation = state.generation;
    var parts = card.repository.split("/");
    var path = "/api/repos/" + encodeURIComponent(parts[0]) + "/" + encodeURIComponent(parts[1] || "") +
      "/pull-requests/" + encodeURIComponent(String(card.prNumber)) + "/deploy";
    card.pending = true;
    card.message = "";
    updateCard(card);
    api(path, { method: "POST", body: { branchName: card.branchName, trigger: "dashboard" } }).then(
      function (deployment) {
        if (generation !== state.generation) return;
        card.pending = false;
        if (deployment) {
          applyDeployment(card, {
            deploymentId: deployment.id || deployment.deploymentId,
            status: deployment.status || "deploying",
            previewUrl: deployment.previewUrl,
            error: deployment.error,
            startedAt: deployment.createdAt,
            updatedAt: deployment.updatedAt,
          });
        }
        announce(describe(card));
        updateCard(card);
        ensureTicking();
      },
      function (error) {
        if (generation !== state.generation) return;
        card.pending = false;
        if (error.status === 401) {
          signOut("Your API token is no longer accepted (" + error.message + "). Sign in again.", "error");
          return;
        }
        if (error.status === 409) {
          // Someone else started one: show it as running and let the list fill in the details.
          card.message = "A deploy of this branch is already in progress.";
          card.messageKind = "info";
          if (error.body && error.body.deploymentId && card.status !== "deploying") {
            card.deploymentId = error.body.deploymentId;
            card.status = "deploying";
            card.startedAt = null;
            card.updatedAt = "";
          }
          scheduleRefetch();
        } else if (error.status === 429) {
          card.message = error.message;
          card.messageKind = "error";
        } else {
          card.message = "Could not start the deploy: " + error.message;
          card.messageKind = "error";
        }
        updateCard(card);
        ensureTicking();
      }
    );
  }

  /* Ask for the running (or queued) deploy to be cancelled. The 202 only says the request is
   * taken: the card stays "deploying" (its button disabled) until the WebSocket, or the list,
   * says the environment went back to idle with the outcome "cancelled". */
  function cancel(card) {
    if (card.cancelPending || card.status !== "deploying" || !state.token) return;
    var generation = state.generation;
    var deploymentId = card.deploymentId;
    var parts = card.repository.split("/");
    var path = "/api/repos/" + encodeURIComponent(parts[0]) + "/" + encodeURIComponent(parts[1] || "") +
      "/pull-requests/" + encodeURIComponent(String(card.prNumber)) + "/deployment/cancel";
    card.cancelPending = true;
    card.keepFocus = document.activeElement === card.nodes.cancel;
    card.message = "";
    updateCard(card);
    api(path, { method: "POST" }).then(
      function (deployment) {
        if (generation !== state.generation) return;
        card.cancelPending = false;
        if (card.status === "deploying") {
          card.cancelRequested = (deployment && (deployment.id || deployment.deploymentId)) || deploymentId;
          announce(card.repository + " #" + card.prNumber + ": cancelling the deploy.");
        }
        updateCard(card);
      },
      function (error) {
        if (generation !== state.generation) return;
        card.cancelPending = false;
        if (error.status === 401) {
          signOut("Your API token is no longer accepted (" + error.message + "). Sign in again.", "error");
          return;
        }
        card.message = error.status === 429 ? error.message : "Could not cancel the deploy: " + error.message;
        card.messageKind = "error";
        // A 409 means nothing is running any more: the list tells what happened instead.
        if (error.status === 409) scheduleRefetch();
        updateCard(card);
        announce(card.repository + " #" + card.prNumber + ": " + card.message);
      }
    );
  }

  // -- live updates over the WebSocket ------------------------------------------------------

  function setConnection(next, detail) {
    state.connection = next;
    els.connection.dataset.state = next;
    var text = { connecting: "Connecting\u2026", live: "Live", reconnecting: "Reconnecting\u2026", offline: "Offline" }[next];
    els.connectionText.textContent = text;
    els.connection.title = detail || (next === "live" ? "Receiving updates as they happen" : "");
    els.main.setAttribute("aria-busy", next === "live" ? "false" : "true");
  }

  function connect() {
    window.clearTimeout(state.reconnectTimer);
    state.reconnectTimer = null;
    if (!state.token || state.ws) return;
    setConnection(state.everLive ? "reconnecting" : "connecting", state.attempt ? "Attempt " + (state.attempt + 1) : "");
    var ws;
    try {
      ws = new WebSocket(WS_BASE + "/ws?token=" + encodeURIComponent(state.token));
    } catch (e) {
      scheduleReconnect();
      return;
    }
    state.ws = ws;
    ws.onopen = function () {
      if (state.ws !== ws) return;
      sendPing(ws);
    };
    ws.onmessage = function (event) {
      if (state.ws !== ws) return;
      var message;
      try { message = JSON.parse(event.data); } catch (e) { return; }
      if (!message || typeof message !== "object") return;
      if (message.type === "pong") onPong(ws);
      else if (message.type === "deployment:update") onUpdate(message);
    };
    ws.onerror = function () { /* the close event follows and schedules the reconnect */ };
    ws.onclose = function (event) {
      if (state.ws !== ws) return;
      state.ws = null;
      window.clearTimeout(state.pingTimer);
      window.clearTimeout(state.pongTimer);
      if (!state.token) return;
      if (event.code === 4401) {
        // The server refused the token: find out over REST whether it was revoked.
        loadList();
      }
      scheduleReconnect();
    };
  }

  function sendPing(ws) {
    try {
      ws.send("ping");
    } catch (e) {
      return;
    }
    window.clearTimeout(state.pongTimer);
    state.pongTimer = window.setTimeout(function () {
      // No answer: the connection is dead even if the socket has not noticed; start over.
      if (state.ws === ws) {
        state.ws = null;
        try { ws.close(); } catch (e) { /* already closed */ }
        scheduleReconnect();
      }
    }, PONG_TIMEOUT_MS);
  }

  function onPong(ws) {
    window.clearTimeout(state.pongTimer);
    if (state.connection !== "live") {
      // The subscription is in place: fetch the list again so nothing published before it
      // (or while disconnected) is missed.
      state.attempt = 0;
      state.everLive = true;
      setConnection("live");
      loadList();
    }
    window.clearTimeout(state.pingTimer);
    state.pingTimer = window.setTimeout(function () {
      if (state.ws === ws) sendPing(ws);
    }, PING_EVERY_MS);
  }

  function scheduleReconnect() {
    if (!state.token || state.reconnectTimer) return;
    var base = Math.min(BACKOFF_MAX_MS, BACKOFF_MIN_MS * Math.pow(2, state.attempt));
    var delay = Math.round(base * (0.75 + Math.random() * 0.5));
    state.attempt += 1;
    setConnection("reconnecting", "Connection lost; trying again in " + Math.ceil(delay / 1000) + "s (attempt " + state.attempt + ")");
    state.reconnectTimer = window.setTimeout(function () {
      state.reconnectTimer = null;
      connect();
    }, delay);
  }

  function reconnectNow() {
    if (state.token && !state.ws && state.reconnectTimer) {
      window.clearTimeout(state.reconnectTimer);
      state.reconnectTimer = null;
      connect();
    }
  }

  function matchesFilters(message) {
    if (state.filters.repository && message.repository !== state.filters.repository) return false;
    if (state.filters.status && message.status !== state.filters.status) return false;
    return true;
  }

  function onUpdate(message) {
    if (typeof message.repository !== "string") return;
    if (!state.repositories.has(message.repository)) {
      state.repositories.add(message.repository);
      renderRepositories();
    }
    var card = state.cards.get(keyOf(message.repository, message.prNumber));
    if (!card) {
      // A pull request the page has not shown yet: the list knows its title and author.
      if (matchesFilters(message)) scheduleRefetch();
      return;
    }
    var changed = applyDeployment(card, {
      deploymentId: message.deploymentId,
      status: message.status,
      previewUrl: message.previewUrl,
      error: message.error,
      startedAt: null,
      updatedAt: message.updatedAt,
      outcome: message.outcome,
    });
    if (!changed) {
      // Another deployment finished while this card shows a newer one running: let the list,
      // which knows which deployment is the latest, decide.
      if (message.deploymentId !== card.deploymentId) scheduleRefetch();
      return;
    }
    if (message.branchName) card.branchName = message.branchName;
    if (card.messageKind === "info") card.message = "";
    updateCard(card);
    announce(describe(card));
    ensureTicking();
  }

  // -- timers: elapsed time and periodic resync ---------------------------------------------

  function anyDeploying() {
    var found = false;
    state.cards.forEach(function (card) { if (card.status === "deploying") found = true; });
    return found;
  }

  function ensureTicking() {
    if (state.tickTimer || !state.token) return;
    state.tickTimer = window.setInterval(tick, 1000);
  }

  function tick() {
    if (!state.token) return;
    var deploying = anyDeploying();
    state.cards.forEach(function (card) { if (card.status === "deploying") updateElapsed(card); });
    var since = Date.now() - state.lastListAt;
    // Events can be missed (a restart of the web process between publish and delivery);
    // the list is the record, so re-read it now and then, more often while deploys run.
    if (!document.hidden && state.lastListAt && since > (deploying ? RESYNC_WHILE_DEPLOYING_MS : RESYNC_IDLE_MS)) {
      state.lastListAt = Date.now();
      loadList();
    }
    if (Math.floor(Date.now() / 1000) % 30 === 0) {
      state.cards.forEach(function (card) {
        if (card.createdAt) card.nodes.opened.textContent = ago(card.createdAt);
      });
    }
  }

  // -- signing in and out -------------------------------------------------------------------

  function showSignIn(message, kind) {
    els.main.hidden = true;
    els.connection.hidden = true;
    els.signOut.hidden = true;
    els.signIn.hidden = false;
    els.signInSubmit.disabled = false;
    els.signInSubmit.textContent = "Sign in";
    els.signInMessage.textContent = message || "";
    els.signInMessage.dataset.kind = kind || "";
    els.signInMessage.hidden = !message;
    els.tokenInput.setAttribute("aria-invalid", kind === "error" ? "true" : "false");
    if (message) els.tokenInput.setAttribute("aria-describedby", "sign-in-message");
    else els.tokenInput.removeAttribute("aria-describedby");
  }

  function showDashboard() {
    els.signIn.hidden = true;
    els.signInMessage.hidden = true;
    els.tokenInput.value = "";
    els.main.hidden = false;
    els.connection.hidden = false;
    els.signOut.hidden = false;
  }

  function resetSession() {
    state.generation += 1;
    if (state.listController) state.listController.abort();
    state.listController = null;
    var ws = state.ws;
    state.ws = null;
    if (ws) {
      try { ws.close(1000, "signed out"); } catch (e) { /* ignore */ }
    }
    [state.reconnectTimer, state.pingTimer, state.pongTimer, state.refetchTimer].forEach(function (t) { window.clearTimeout(t); });
    window.clearInterval(state.tickTimer);
    state.reconnectTimer = state.pingTimer = state.pongTimer = state.refetchTimer = state.tickTimer = null;
    state.attempt = 0;
    state.everLive = false;
    state.loaded = false;
    state.lastListAt = 0;
    state.cards.forEach(function (card) { card.nodes.root.remove(); });
    state.cards.clear();
    state.repositories = new Set();
    setConnection("offline");
  }

  function signIn(token) {
    resetSession();
    state.token = token;
    var generation = state.generation;
    els.signInSubmit.disabled = true;
    els.signInSubmit.textContent = "Signing in\u2026";
    return fetchList().then(
      function (pulls) {
        if (generation !== state.generation) return;
        storage("set", token);
        showDashboard();
        renderList(pulls);
        connect();
      },
      function (error) {
        if (generation !== state.generation || (error && error.name === "AbortError")) return;
        state.token = null;
        if (error.status === 401) {
          storage("remove");
          showSignIn("This API token was not accepted: " + error.message + ". Check it and try again.", "error");
        } else {
          showSignIn("Could not sign in: " + error.message + ". Try again in a moment.", "error");
          els.tokenInput.value = token;
        }
        els.tokenInput.focus();
      }
    );
  }

  function signOut(message, kind) {
    resetSession();
    state.token = null;
    storage("remove");
    showSignIn(message || "You are signed out.", kind || "info");
    els.tokenInput.focus();
  }

  // -- filters in the address bar -----------------------------------------------------------

  function readFiltersFromUrl(params) {
    var repository = params.get("repository") || "";
    var status = params.get("status") || "";
    state.filters.repository = /^[\w.-]+\/[\w.-]+$/.test(repository) ? repository : "";
    state.filters.status = status in STATUS_LABEL ? status : "";
    els.filterStatus.value = state.filters.status;
    if (state.filters.repository) state.repositories.add(state.filters.repository);
    renderRepositories();
  }

  function writeFiltersToUrl() {
    var params = new URLSearchParams(window.location.search);
    params.delete("repository");
    params.delete("status");
    if (state.filters.repository) params.set("repository", state.filters.repository);
    if (state.filters.status) params.set("status", state.filters.status);
    var qs = params.toString();
    window.history.replaceState(null, "", window.location.pathname + (qs ? "?" + qs : "") + window.location.hash);
  }

  function onFiltersChanged() {
    state.filters.repository = els.filterRepository.value;
    state.filters.status = els.filterStatus.value;
    writeFiltersToUrl();
    renderSummary();
    loadList();
  }

  // -- start --------------------------------------------------------------------------------

  function init() {
    [
      ["signIn", "sign-in"], ["signInForm", "sign-in-form"], ["signInMessage", "sign-in-message"],
      ["signInSubmit", "sign-in-submit"], ["tokenInput", "token-input"], ["signOut", "sign-out"],
      ["connection", "connection"], ["connectionText", "connection-text"], ["main", "main"],
      ["summary", "summary"], ["filters", "filters"], ["filterRepository", "filter-repository"],
      ["filterStatus", "filter-status"], ["filterClear", "filter-clear"], ["loadError", "load-error"],
      ["cards", "cards"], ["empty", "empty"], ["emptyTitle", "empty-title"], ["emptyDetail", "empty-detail"],
      ["announcer", "announcer"],
    ].forEach(function (pair) { els[pair[0]] = $(pair[1]); });

    els.signInForm.addEventListener("submit", function (event) {
      event.preventDefault();
      var token = els.tokenInput.value.trim();
      if (!token) {
        showSignIn("Enter an API token to sign in.", "error");
        els.tokenInput.focus();
        return;
      }
      signIn(token);
    });
    els.signOut.addEventListener("click", function () { signOut("You are signed out."); });
    els.filters.addEventListener("submit", function (event) { event.preventDefault(); });
    els.filterRepository.addEventListener("change", onFiltersChanged);
    els.filterStatus.addEventListener("change", onFiltersChanged);
    els.filterClear.addEventListener("click", function () {
      els.filterRepository.value = "";
      els.filterStatus.value = "";
      onFiltersChanged();
      els.filterRepository.focus();
    });
    window.addEventListener("online", reconnectNow);
    document.addEventListener("visibilitychange", function () { if (!document.hidden) reconnectNow(); });
    window.addEventListener("storage", function (event) {
      // Signed out in another tab.
      if (event.key === TOKEN_KEY && !event.newValue && state.token) signOut("You signed out in another tab.");
    });

    // A token in the address bar is taken once, kept in localStorage and removed from the URL
    // (and so from history and bookmarks).
    var params = new URLSearchParams(window.location.search);
    var fromUrl = params.get("token");
    if (fromUrl !== null) {
      params.delete("token");
      var qs = params.toString();
      window.history.replaceState(null, "", window.location.pathname + (qs ? "?" + qs : "") + window.location.hash);
      if (fromUrl.trim()) storage("set", fromUrl.trim());
    }
    readFiltersFromUrl(params);

    var token = fromUrl && fromUrl.trim() ? fromUrl.trim() : storage("get");
    if (token) signIn(token);
    else showSignIn("");
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", init);
  else init();
})();
