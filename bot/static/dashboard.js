/* previewbot dashboard: plain JavaScript, no build step, no dependencies.
 *
 * Data comes from the REST API (GET /api/pull-requests, POST .../deploy, POST .../deployment/cancel,
 * POST .../deployment/extend, DELETE .../deployment, GET .../deployments for the history, each for
 * one of a pull request's environments) and live updates from the WebSocket at /ws. Each deployment's log has a page of
 * its own (deployments/ID/logs, logs.js).
 * A token never goes in a URL: a sign-in link carries a one-time code (`/?code=…`) that the page
 * trades for a session token (POST /api/sessions), and the WebSocket gets the token in its first
 * message.
 * Everything taken from the API is written with textContent or setAttribute, never innerHTML,
 * so a branch called `<img src=x onerror=alert(1)>` is text.
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
  // The same on an environment's row, where the row names the environment.
  var ROW_OUTCOME_TEXT = {
    cancelled: "The deploy was cancelled; nothing is running.",
    destroyed: "Torn down; nothing is running.",
    expired: "Expired and torn down.",
  };
  // The API's environment when none is named; a pull request with only this one keeps the
  // classic card.
  var DEFAULT_ENVIRONMENT = "preview";
  var BACKOFF_MIN_MS = 500;
  var BACKOFF_MAX_MS = 15000;
  var PING_EVERY_MS = 20000;
  var PONG_TIMEOUT_MS = 10000;
  var RESYNC_WHILE_DEPLOYING_MS = 10000;
  var RESYNC_IDLE_MS = 60000;
  var REFETCH_DEBOUNCE_MS = 250;
  var HISTORY_PAGE = 10;
  // A deployment record's status (the history), as the history shows it.
  var RECORD_LABEL = {
    deploying: "Deploying", deployed: "Deployed", failed: "Failed", cancelled: "Cancelled",
    superseded: "Superseded", destroyed: "Torn down", expired: "Expired",
  };
  // Less time than this before a preview expires, its expiry is shown as a warning (the
  // server's PREVIEW_TTL_WARNING is not known here; 2 hours is its default).
  var EXPIRY_WARNING_MS = 2 * 3600 * 1000;

  // -- where the API lives ------------------------------------------------------------------

  function apiBase() {
    var meta = document.querySelector('meta[name="previewbot-api-url"]');
    var raw = meta ? (meta.getAttribute("content") || "").trim() : "";
    if (!raw || raw.indexOf("{{") !== -1) return window.location.origin;
    return raw.replace(/\/+$/, "");
  }

  var API = apiBase();
  // Where a sign-in may return to: a deployment's log page on this site (bot.github_signin).
  var RETURN_PATH = /^\/deployments\/[A-Za-z0-9._~-]{1,64}\/logs$/;
  var WS_BASE = API.replace(/^http/i, "ws");

  // -- state --------------------------------------------------------------------------------

  var state = {
    token: null,
    generation: 0, // bumped on sign-in/out so late responses for an old session are dropped
    githubAsked: false, // GET /api/auth was sent (see offerGitHubSignIn)
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

  function isEnvironmentName(value) {
    return typeof value === "string" && /^[a-z][a-z0-9-]{0,63}$/.test(value);
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

  /* What a deployment runs on, from the API's `resources`: only well-formed entries, as text
   * such as "ec2:instance i-0abc… t3.small eu-west-1". */
  function resourcesOf(list) {
    if (!Array.isArray(list)) return [];
    return list.filter(function (r) {
      return r && typeof r.kind === "string" && typeof r.id === "string";
    }).map(function (r) {
      return [r.kind, r.id, r.type, r.region].filter(function (part) { return typeof part === "string" && part; }).join(" ");
    });
  }

  function hourlyCostOf(value) {
    return typeof value === "number" && isFinite(value) && value >= 0 ? value : null;
  }

  var usd = window.Intl ? new Intl.NumberFormat("en-US", { style: "currency", currency: "USD", maximumSignificantDigits: 3 }) : null;

  function formatHourlyCost(value) {
    // Whole cents as such ("$0.50"), else three significant digits ("$0.0208").
    var cents = Math.abs(value * 100 - Math.round(value * 100)) < 1e-9;
    return (cents ? "$" + value.toFixed(2) : usd ? usd.format(value) : "$" + value) + " an hour";
  }

  function formatCost(cost) {
    return cost < 0.01 && cost > 0 ? "< $0.01" : "$" + cost.toFixed(2);
  }

  function isTimestamp(value) {
    return typeof value === "string" && !isNaN(Date.parse(value));
  }

  /* How long a preview has left, as the server says it (bot.expiry.describe_left):
   * "1 h 59 min", "45 min", "2 d 23 h", "30 s". */
  function formatTimeLeft(ms) {
    var seconds = Math.max(0, Math.floor(ms / 1000));
    if (seconds < 60) return seconds + " s";
    var minutesTotal = Math.floor(seconds / 60);
    var days = Math.floor(minutesTotal / 1440);
    var rest = minutesTotal % 1440;
    var hours = Math.floor(rest / 60);
    var minutes = rest % 60;
    var parts = [];
    if (days) parts.push(days + " d");
    if (hours) parts.push(hours + " h");
    if (minutes && !days) parts.push(minutes + " min");
    return parts.join(" ") || "0 min";
  }

  function utcText(iso) {
    var date = new Date(iso);
    return date.toISOString().replace("T", " ").replace(/:\d\d\.\d+Z$/, " UTC");
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
    var headers = { Accept: "application/json" };
    if (!options.anonymous) headers.Authorization = "Bearer " + state.token;
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
          signOut("Your sign-in is no longer accepted (" + error.message + "). Sign in again.", "error");
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
  //
  // A card is one pull request; each of its environments (`preview`, `staging`, ...) has its
  // own state, keyed by name. A pull request whose only environment is the default one is
  // shown as it always was (the "classic" card: one state block, Preview ▾ and its panel);
  // one with several environments gets a row per environment, each with its own badge,
  // state and buttons.

  function deploymentOf(d, status) {
    if (!d) return { deploymentId: null, status: status || "idle", previewUrl: null, error: null, startedAt: null, updatedAt: "", outcome: null, resources: [], hourlyCost: null, cost: null, expiresAt: null };
    return {
      deploymentId: d.id || d.deploymentId || null,
      status: d.status || status || "idle",
      previewUrl: d.previewUrl || null,
      error: d.error || null,
      startedAt: d.createdAt || null,
      updatedAt: d.updatedAt || d.createdAt || "",
      // The list gives the record's own status beside the environment's state; a record
      // destroyed because it expired ended with the outcome "expired".
      outcome: d.outcome || (d.recordStatus === "destroyed" && d.expired === true ? "expired" : d.recordStatus) || null,
      // Only the list carries them; WebSocket messages and action answers leave them undefined.
      resources: resourcesOf(d.resources),
      hourlyCost: hourlyCostOf(d.hourlyCost),
      cost: hourlyCostOf(d.cost),
      expiresAt: isTimestamp(d.expiresAt) ? d.expiresAt : null,
    };
  }

  /* A list row's environments, in the API's order (the operator's, then any other with a
   * record), as [{name, next}]. An API without `environments` has only the default one. */
  function environmentsOf(pull) {
    // A GitHub sign-in may act only where the person can push; other tokens wherever they see.
    var writable = pull.canWrite !== false;
    var out = [];
    var seen = new Set();
    (Array.isArray(pull.environments) ? pull.environments : []).forEach(function (item) {
      if (!item || !isEnvironmentName(item.environment) || seen.has(item.environment)) return;
      seen.add(item.environment);
      // An environment the operator no longer lists keeps its record but takes no new deploy.
      out.push({ name: item.environment, next: deploymentOf(item.deployment, item.status), deployable: item.deployable !== false, writable: writable });
    });
    if (!out.length) out.push({ name: DEFAULT_ENVIRONMENT, next: deploymentOf(pull.deployment, pull.status), deployable: true, writable: writable });
    return out;
  }

  /* Apply a deployment change (a WebSocket message, a deploy response or a list row) to an
   * environment unless it already knows something newer. Returns true when it changed. */
  function applyDeployment(env, next) {
    var newer = !env.updatedAt || !next.updatedAt || next.updatedAt >= env.updatedAt;
    if (next.deploymentId && next.deploymentId === env.deploymentId) {
      if (!newer) return false;
    } else if (next.status !== "deploying") {
      // A finished deployment other than the one shown: an older one ending after a newer one
      // started must not replace the newer one.
      if (env.status === "deploying" || !newer) return false;
    } else if (!newer) {
      return false;
    }
    var sameDeployment = next.deploymentId && next.deploymentId === env.deploymentId;
    var previousStatus = env.status;
    env.deploymentId = next.deploymentId || env.deploymentId;
    env.status = next.status in STATUS_LABEL ? next.status : "idle";
    if (Array.isArray(next.resources)) {
      env.resources = next.resources;
    } else if (!sameDeployment || env.status !== previousStatus) {
      // Unknown until the list says (a deploy records them when it ends).
      env.resources = null;
    }
    if (next.hourlyCost !== undefined) {
      // The list, and WebSocket messages since they carry the cost (absent: not known).
      env.hourlyCost = next.hourlyCost;
      env.cost = next.hourlyCost === null ? null : next.cost === undefined ? null : next.cost;
      env.costAt = Date.now();
    } else if (!sameDeployment || env.status !== previousStatus) {
      env.hourlyCost = null;
      env.cost = null;
    }
    // When the deployed preview is destroyed unless extended; null: never (or not deployed).
    if (env.status !== "deployed") env.expiresAt = null;
    else if (next.expiresAt !== undefined) env.expiresAt = next.expiresAt;
    else if (!sameDeployment) env.expiresAt = null;
    env.previewUrl = env.status === "deployed" ? next.previewUrl || (sameDeployment ? env.previewUrl : null) : null;
    env.error = env.status === "failed" ? next.error || "The deploy failed without an error message." : null;
    env.outcome = env.status === "idle" && Object.prototype.hasOwnProperty.call(OUTCOME_LABEL, next.outcome) ? next.outcome : null;
    if (env.status !== "deploying") {
      env.cancelPending = false;
      env.cancelRequested = null;
    }
    if (env.status !== "deployed") env.extendPending = false;
    if (env.status === "deploying") {
      env.startedAt = next.startedAt || (sameDeployment && env.startedAt) || next.updatedAt || null;
    }
    if (next.updatedAt) env.updatedAt = next.updatedAt;
    return true;
  }

  function newEnvironment(name) {
    return {
      name: name,
      writable: true, // this sign-in may deploy, destroy and cancel here (see environmentsOf)
      deploymentId: null,
      status: "idle",
      previewUrl: null,
      error: null,
      outcome: null,
      startedAt: null,
      updatedAt: "",
      resources: null, // what the deployment runs on, as text; null until the list says
      hourlyCost: null, // USD an hour, when known
      cost: null, // USD so far, when known, as of costAt (Date.now())
      costAt: 0,
      expiresAt: null, // when the deployed preview expires unless extended; null: never
      extendPending: false, // the extend request is on its way
      extendFocus: false, // its Extend button had the focus when clicked
      expanded: false, // the classic card's Preview panel
      pending: false, // the deploy request is on its way
      cancelPending: false, // the cancel request is on its way
      cancelRequested: null, // the deployment a cancel was accepted for, until it ends
      confirmingDestroy: false, // Destroy was clicked once: the confirmation is shown
      destroyPending: false, // the destroy request is on its way
      destroyRequested: null, // the deployment a destroy was accepted for, until it ends
      history: null, // its history panel, once opened (see openHistory)
      keepFocus: false, // one of its buttons had the focus when clicked
      message: "",
      messageKind: "",
      row: null, // its row's DOM nodes, once the card shows rows
    };
  }

  function environmentOf(card, name) {
    var env = card.envs.get(name);
    if (!env) {
      env = newEnvironment(name);
      env.writable = card.canWrite;
      card.envs.set(name, env);
      card.order.push(name);
    }
    return env;
  }

  /* Rows for a card with another environment than the default one; the classic card otherwise. */
  function hasRows(card) {
    return card.order.length !== 1 || card.order[0] !== DEFAULT_ENVIRONMENT;
  }

  function eachEnvironment(card, fn) {
    card.order.forEach(function (name) { fn(card.envs.get(name)); });
  }

  /* Take a list row's environments: their states, and their order. A row the list does not
   * have goes, unless a deploy the list has not caught up with runs there. */
  function syncEnvironments(card, environments, announceChanges) {
    var names = environments.map(function (item) { return item.name; });
    card.order.slice().forEach(function (name) {
      if (names.indexOf(name) !== -1) return;
      var env = card.envs.get(name);
      if (env.status === "deploying" || env.pending) {
        names.push(name);
      } else {
        if (env.row) env.row.root.remove();
        card.envs.delete(name);
      }
    });
    card.order = card.order.filter(function (name) { return card.envs.has(name); });
    environments.forEach(function (item) {
      var env = environmentOf(card, item.name);
      env.deployable = item.deployable;
      env.writable = item.writable;
      var before = env.status;
      applyDeployment(env, item.next);
      if (announceChanges && before !== env.status) announce(describe(card, env));
    });
    card.order = names;
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
      canWrite: pull.canWrite !== false,
      envs: new Map(), // environment name -> its state (and row)
      order: [], // environment names, as shown
      uid: "pr-" + ++state.idCounter,
      nodes: null,
    };
    syncEnvironments(card, environmentsOf(pull), false);
    card.nodes = buildCard(card);
    return card;
  }

  function buildCard(card) {
    var n = {};
    var uid = card.uid;

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

    // The classic card: the default environment alone.
    n.single = el("div", "card-single");
    article.appendChild(n.single);

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
    n.single.appendChild(status);
    n.details = buildDetails();
    n.single.appendChild(n.details.root);

    n.message = el("p", "card-message");
    n.message.setAttribute("role", "status");
    n.single.appendChild(n.message);

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
      var env = environmentOf(card, DEFAULT_ENVIRONMENT);
      env.expanded = !env.expanded;
      updateCard(card);
    });
    n.retry = el("button", "button button-primary retry", "Retry");
    n.retry.type = "button";
    n.retry.addEventListener("click", function () { deploy(card, environmentOf(card, DEFAULT_ENVIRONMENT)); });
    n.cancel = el("button", "button button-danger cancel", "Cancel deploy");
    n.cancel.type = "button";
    n.cancel.addEventListener("click", function () { cancel(card, environmentOf(card, DEFAULT_ENVIRONMENT)); });
    n.extend = el("button", "button extend", "Extend");
    n.extend.type = "button";
    n.extend.setAttribute("aria-label", "Extend preview");
    n.extend.addEventListener("click", function () { extend(card, environmentOf(card, DEFAULT_ENVIRONMENT)); });
    n.destroy = el("button", "button button-danger destroy", "Destroy");
    n.destroy.type = "button";
    n.destroy.setAttribute("aria-label", "Destroy preview");
    n.destroy.addEventListener("click", function () { askDestroy(card, environmentOf(card, DEFAULT_ENVIRONMENT)); });
    actions.appendChild(n.toggle);
    actions.appendChild(n.retry);
    actions.appendChild(n.cancel);
    actions.appendChild(n.extend);
    actions.appendChild(n.destroy);
    n.single.appendChild(actions);
    n.confirm = buildConfirm(card, function () { return environmentOf(card, DEFAULT_ENVIRONMENT); });
    n.single.appendChild(n.confirm.root);

    n.panel = el("div", "card-panel");
    n.panel.id = uid + "-panel";
    n.deploy = el("button", "button button-primary deploy");
    n.deploy.type = "button";
    n.deploy.addEventListener("click", function () { deploy(card, environmentOf(card, DEFAULT_ENVIRONMENT)); });
    n.panelNote = el("p", "panel-note muted");
    n.panel.appendChild(n.deploy);
    n.panel.appendChild(n.panelNote);
    n.single.appendChild(n.panel);
    n.links = buildLinks(card, function () { return environmentOf(card, DEFAULT_ENVIRONMENT); }, uid + "-history");
    n.single.appendChild(n.links.root);
    n.single.appendChild(n.links.history.root);

    // Several environments: a row each.
    n.envSection = el("section", "env-section");
    n.envSection.setAttribute("aria-labelledby", uid + "-envs");
    var envHeading = el("h3", "env-section-title", "Environments");
    envHeading.id = uid + "-envs";
    n.envSection.appendChild(envHeading);
    n.envList = el("ul", "env-list");
    n.envSection.appendChild(n.envList);
    article.appendChild(n.envSection);
    return n;
  }

  function buildRow(card, env) {
    var r = {};
    var id = card.uid + "-env-" + env.name;
    r.root = el("li", "env");
    r.root.dataset.environment = env.name;
    r.root.setAttribute("aria-labelledby", id);

    var head = el("div", "env-head");
    r.name = el("h4", "env-name", env.name);
    r.name.id = id;
    head.appendChild(r.name);
    r.badge = el("span", "badge env-badge");
    r.badgeIcon = el("span", "badge-icon");
    r.badgeIcon.setAttribute("aria-hidden", "true");
    r.spinner = el("span", "spinner spinner-small");
    r.spinner.setAttribute("aria-hidden", "true");
    r.badgeText = el("span", "env-status");
    r.badge.appendChild(r.badgeIcon);
    r.badge.appendChild(r.spinner);
    r.badge.appendChild(r.badgeText);
    r.elapsed = el("span", "env-elapsed");
    r.elapsed.setAttribute("title", "Time since the deploy started");
    r.badge.appendChild(r.elapsed);
    head.appendChild(r.badge);

    var actions = el("div", "env-actions");
    r.deploy = el("button", "button deploy");
    r.deploy.type = "button";
    r.deploy.addEventListener("click", function () { rowAction(card, env, r.deploy, deploy); });
    r.retry = el("button", "button button-primary retry");
    r.retry.type = "button";
    r.retry.addEventListener("click", function () { rowAction(card, env, r.retry, deploy); });
    r.cancel = el("button", "button button-danger cancel");
    r.cancel.type = "button";
    r.cancel.addEventListener("click", function () { rowAction(card, env, r.cancel, cancel); });
    r.extend = el("button", "button extend");
    r.extend.type = "button";
    r.extend.addEventListener("click", function () { extend(card, env); });
    r.destroy = el("button", "button button-danger destroy");
    r.destroy.type = "button";
    r.destroy.addEventListener("click", function () { askDestroy(card, env); });
    [r.deploy, r.retry, r.cancel, r.extend, r.destroy].forEach(function (b) { actions.appendChild(b); });
    head.appendChild(actions);
    r.root.appendChild(head);
    r.confirm = buildConfirm(card, function () { return env; });
    r.root.appendChild(r.confirm.root);

    r.deployed = el("p", "env-detail env-deployed");
    var check = el("span", "check", "\u2713");
    check.setAttribute("aria-hidden", "true");
    r.deployed.appendChild(check);
    r.link = el("a", "preview-link");
    r.link.target = "_blank";
    r.link.rel = "noopener noreferrer";
    r.deployed.appendChild(r.link);
    r.failed = el("div", "env-detail env-failed");
    r.failed.appendChild(el("p", "visually-hidden", "Deploy failed:"));
    r.error = el("pre", "error-text");
    r.failed.appendChild(r.error);
    r.idle = el("p", "env-detail env-idle muted");
    r.outcome = el("span", "outcome");
    r.idle.appendChild(r.outcome);
    r.idleText = el("span", "idle-text");
    r.idle.appendChild(r.idleText);
    [r.deployed, r.failed, r.idle].forEach(function (node) { r.root.appendChild(node); });
    r.details = buildDetails();
    r.root.appendChild(r.details.root);

    r.message = el("p", "card-message env-message");
    r.message.setAttribute("role", "status");
    r.root.appendChild(r.message);
    r.links = buildLinks(card, function () { return env; }, id + "-history");
    r.root.appendChild(r.links.root);
    r.root.appendChild(r.links.history.root);
    return r;
  }

  function rowAction(card, env, button, action) {
    env.keepFocus = document.activeElement === button;
    action(card, env);
  }

  /* The card's accent: the state most worth a look among its environments. */
  function overallStatus(card) {
    var rank = { failed: 3, deploying: 2, deployed: 1, idle: 0 };
    var worst = "idle";
    eachEnvironment(card, function (env) { if (rank[env.status] > rank[worst]) worst = env.status; });
    return worst;
  }

  function updateCard(card) {
    var n = card.nodes;
    var rows = hasRows(card);
    var main = card.envs.get(DEFAULT_ENVIRONMENT) || card.envs.get(card.order[0]);
    var status = rows ? overallStatus(card) : main.status;
    n.root.dataset.status = status;
    n.root.classList.toggle("has-environments", rows);
    n.repo.textContent = card.repository;
    n.number.textContent = "#" + card.prNumber;
    // The badge says the one environment's state; rows carry their own.
    n.badge.hidden = rows;
    n.badge.dataset.status = main.status;
    n.badgeIcon.textContent = STATUS_ICON[main.status];
    n.badgeText.textContent = STATUS_LABEL[main.status];

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

    n.single.hidden = rows;
    n.envSection.hidden = !rows;
    if (rows) {
      card.order.forEach(function (name, index) {
        var env = card.envs.get(name);
        if (!env.row) env.row = buildRow(card, env);
        var list = n.envList;
        if (list.children[index] !== env.row.root) list.insertBefore(env.row.root, list.children[index] || null);
        updateRow(card, env);
      });
    } else {
      updateSingle(card, main);
    }
  }

  function updateSingle(card, env) {
    var n = card.nodes;
    var status = env.status;
    n.idle.hidden = status !== "idle";
    n.outcome.textContent = env.outcome ? OUTCOME_LABEL[env.outcome] : "";
    n.outcome.dataset.outcome = env.outcome || "";
    n.outcome.hidden = !env.outcome;
    n.idleText.textContent = env.outcome ? OUTCOME_TEXT[env.outcome] : "No preview deployed yet.";
    n.deploying.hidden = status !== "deploying";
    n.deployed.hidden = status !== "deployed";
    n.failed.hidden = status !== "failed";
    updateElapsed(card, env);

    if (status === "deployed" && env.previewUrl) {
      n.link.textContent = env.previewUrl;
      if (isHttpUrl(env.previewUrl)) n.link.href = env.previewUrl;
      else n.link.removeAttribute("href");
    } else {
      n.link.textContent = status === "deployed" ? "(no preview URL reported)" : "";
      n.link.removeAttribute("href");
    }
    n.error.textContent = env.error || "";
    updateDetails(n.details, env);

    n.message.textContent = env.message || "";
    n.message.dataset.kind = env.messageKind || "";
    n.message.hidden = !env.message;

    var busy = status === "deploying" || env.pending;
    n.toggle.hidden = status === "failed";
    n.toggle.classList.toggle("is-deployed", status === "deployed");
    n.check.hidden = status !== "deployed";
    n.checkLabel.hidden = status !== "deployed";
    n.toggle.setAttribute("aria-expanded", String(env.expanded && status !== "failed"));
    n.panel.hidden = !env.expanded || status === "failed";

    n.retry.hidden = status !== "failed" || !env.writable;
    n.retry.disabled = env.pending;
    n.retry.textContent = env.pending && status === "failed" ? "Retrying\u2026" : "Retry";

    var cancelling = env.cancelPending || (env.cancelRequested !== null && env.cancelRequested === env.deploymentId);
    n.cancel.hidden = !actionsFor(env).cancel;
    n.cancel.disabled = cancelling;
    n.cancel.textContent = cancelling ? "Cancelling\u2026" : "Cancel deploy";
    updateExtend(env, n.extend, "preview");
    updateDestroy(env, n.destroy, n.confirm, "Destroy", "preview");
    updateLinks(card, env, n.links);
    keepExtendFocus(env, n.extend, n.toggle);
    if (env.keepFocus && (n.cancel.hidden || !cancelling)) {
      // Disabling or hiding the focused Cancel button drops the keyboard focus to the page:
      // give it back to this card (Cancel again after an error, else Preview or Retry).
      env.keepFocus = false;
      var active = document.activeElement;
      if (!active || active === document.body || active === n.cancel) {
        (!n.cancel.hidden ? n.cancel : n.toggle.hidden ? n.retry : n.toggle).focus();
      }
    }

    n.deploy.hidden = !env.writable;
    n.deploy.disabled = busy;
    if (env.pending) n.deploy.textContent = "Starting deploy\u2026";
    else if (status === "deploying") n.deploy.textContent = "Deploy in progress\u2026";
    else if (status === "deployed") n.deploy.textContent = "Redeploy Preview";
    else n.deploy.textContent = "Deploy Preview for " + (card.branchName || "this branch");
    n.panelNote.textContent =
      !env.writable ? "You can read " + card.repository + " on GitHub but not push to it, so you cannot deploy it." :
      status === "deploying" ? "A deploy of this branch is running; wait for it to finish or cancel it." :
      status === "deployed" ? "Rebuilds the preview of " + (card.branchName || "this branch") + " at its latest commit." :
      "Builds an environment for this branch and links it here.";
  }

  /* A button's visible text, and an accessible name that starts with it and says which
   * environment it acts on ("Retry staging"). */
  function label(button, text, name, spoken) {
    button.textContent = text;
    button.setAttribute("aria-label", (spoken || text.replace(/\u2026$/, "")) + " " + name);
  }

  function updateRow(card, env) {
    var r = env.row;
    var status = env.status;
    var branch = card.branchName || "this branch";
    r.root.dataset.status = status;
    r.badge.dataset.status = status;
    r.badgeIcon.textContent = STATUS_ICON[status];
    r.badgeIcon.hidden = status === "deploying";
    r.spinner.hidden = status !== "deploying";
    r.badgeText.textContent = STATUS_LABEL[status];
    updateElapsed(card, env);

    r.deployed.hidden = status !== "deployed";
    if (status === "deployed" && env.previewUrl) {
      r.link.textContent = env.previewUrl;
      if (isHttpUrl(env.previewUrl)) r.link.href = env.previewUrl;
      else r.link.removeAttribute("href");
    } else {
      r.link.textContent = status === "deployed" ? "(no URL reported)" : "";
      r.link.removeAttribute("href");
    }
    r.failed.hidden = status !== "failed";
    r.error.textContent = env.error || "";
    updateDetails(r.details, env);
    r.idle.hidden = status !== "idle" || !env.outcome;
    r.outcome.textContent = env.outcome ? OUTCOME_LABEL[env.outcome] : "";
    r.outcome.dataset.outcome = env.outcome || "";
    r.idleText.textContent = env.outcome ? ROW_OUTCOME_TEXT[env.outcome] : "";

    r.message.textContent = env.message || "";
    r.message.dataset.kind = env.messageKind || "";
    r.message.hidden = !env.message;

    // One button at a time: Deploy (idle), Redeploy (deployed), Retry (failed), Cancel (deploying).
    r.deploy.hidden = !actionsFor(env).deploy;
    r.deploy.disabled = env.pending;
    if (env.pending) label(r.deploy, "Starting\u2026", env.name, "Starting the deploy to");
    else label(r.deploy, status === "deployed" ? "Redeploy" : "Deploy", env.name);
    r.deploy.title = status === "deployed"
      ? "Rebuilds " + env.name + " from " + branch + " at its latest commit."
      : "Builds " + env.name + " from " + branch + ".";
    r.retry.hidden = !actionsFor(env).retry;
    r.retry.disabled = env.pending;
    if (env.pending) label(r.retry, "Retrying\u2026", env.name, "Retrying the deploy to");
    else label(r.retry, "Retry", env.name);
    r.retry.title = "Deploys " + branch + " to " + env.name + " again.";
    var cancelling = env.cancelPending || (env.cancelRequested !== null && env.cancelRequested === env.deploymentId);
    r.cancel.hidden = !actionsFor(env).cancel;
    r.cancel.disabled = cancelling;
    label(r.cancel, cancelling ? "Cancelling\u2026" : "Cancel", env.name, cancelling ? "Cancelling the deploy to" : "Cancel the deploy to");
    updateExtend(env, r.extend, env.name);
    updateDestroy(env, r.destroy, r.confirm, "Destroy", env.name);
    updateLinks(card, env, r.links);
    keepExtendFocus(env, r.extend, r.deploy);

    if (env.keepFocus) {
      // Hiding or disabling the focused button drops the keyboard focus to the page: give it
      // to this row's button that is there now (Cancel once deploying, Deploy or Retry after).
      var active = document.activeElement;
      var usable = function (b) { return !b.hidden && !b.disabled; };
      var lost = !active || active === document.body || (r.root.contains(active) && !usable(active));
      if (!lost) {
        env.keepFocus = false;
      } else {
        var target = [r.cancel, r.retry, r.deploy, r.destroy].filter(usable)[0];
        if (target) {
          env.keepFocus = false;
          target.focus();
        }
      }
    }
  }

  /* A deployed environment's time left before it expires, its resources, and its cost so far
   * and hourly cost, when the API gave them. */
  function buildDetails() {
    var d = { root: el("div", "deployment-details"), resources: el("ul", "resources"), shown: "" };
    d.expiry = el("p", "expiry");
    d.expiryText = el("span", "expiry-text");
    d.expiryTime = el("time", "expiry-time");
    d.expiry.appendChild(d.expiryText);
    d.expiry.appendChild(d.expiryTime);
    d.costs = el("p", "costs");
    d.spent = el("span", "cost-so-far");
    d.separator = el("span", "cost-separator", " \u00B7 ");
    d.separator.setAttribute("aria-hidden", "true");
    d.cost = el("span", "hourly-cost");
    d.costs.appendChild(d.spent);
    d.costs.appendChild(d.separator);
    d.costs.appendChild(d.cost);
    d.root.appendChild(d.expiry);
    d.root.appendChild(d.resources);
    d.root.appendChild(d.costs);
    return d;
  }

  function setText(node, text) {
    if (node.textContent !== text) node.textContent = text;
  }

  function updateDetails(details, env) {
    var deployed = env.status === "deployed";
    var resources = deployed && env.resources ? env.resources : [];
    var shown = JSON.stringify(resources);
    if (shown !== details.shown) {
      details.shown = shown;
      details.resources.replaceChildren.apply(details.resources, resources.map(function (text) { return el("li", "resource", text); }));
      details.resources.hidden = !resources.length;
    }
    var hourly = deployed ? env.hourlyCost : null;
    var spent = deployed ? costSoFar(env) : null;
    setText(details.cost, hourly === null ? "" : formatHourlyCost(hourly));
    details.cost.hidden = hourly === null;
    setText(details.spent, spent === null ? "" : formatCost(spent) + " so far");
    details.spent.hidden = spent === null;
    details.separator.hidden = spent === null || hourly === null;
    details.costs.hidden = hourly === null && spent === null;
    var expiring = updateExpiry(details, env);
    details.root.hidden = !resources.length && details.costs.hidden && !expiring;
  }

  /* USD so far: the API's figure, plus the hourly cost since it was given while the preview runs. */
  function costSoFar(env) {
    if (env.cost === null || env.cost === undefined) return null;
    if (env.status !== "deployed" || !env.hourlyCost || !env.costAt) return env.cost;
    return env.cost + env.hourlyCost * Math.max(0, Date.now() - env.costAt) / 3600000;
  }

  /* "Expires in 1 h 59 min", the exact time (UTC) in the title, as a warning under two hours. */
  function updateExpiry(details, env) {
    var expires = env.status === "deployed" && env.expiresAt ? Date.parse(env.expiresAt) : NaN;
    if (isNaN(expires)) {
      details.expiry.hidden = true;
      details.expiry.classList.remove("is-warning");
      return false;
    }
    var left = expires - Date.now();
    setText(details.expiryText, left > 0 ? "Expires in " : "Expiring now");
    setText(details.expiryTime, left > 0 ? formatTimeLeft(left) : "");
    if (details.expiryTime.dateTime !== env.expiresAt) {
      details.expiryTime.dateTime = env.expiresAt;
      details.expiry.title = "Expires at " + utcText(env.expiresAt) + " unless extended";
    }
    details.expiry.classList.toggle("is-warning", left < EXPIRY_WARNING_MS);
    details.expiry.hidden = false;
    return true;
  }

  function detailsOf(card, env) {
    if (hasRows(card)) return env.row ? env.row.details : null;
    return env.name === DEFAULT_ENVIRONMENT || card.order[0] === env.name ? card.nodes.details : null;
  }

  function updateElapsed(card, env) {
    var node = env.row && hasRows(card) ? env.row.elapsed : env.name === DEFAULT_ENVIRONMENT ? card.nodes.elapsed : null;
    if (!node) return;
    if (env.status !== "deploying") {
      node.textContent = "";
      node.hidden = true;
      return;
    }
    var started = Date.parse(env.startedAt);
    node.textContent = isNaN(started) ? "" : formatElapsed(Date.now() - started);
    node.hidden = !node.textContent;
  }

  function describe(card, env) {
    var name = card.repository + " #" + card.prNumber;
    if (!hasRows(card)) {
      if (env.status === "deploying") return name + ": deploying a preview of " + card.branchName + ".";
      if (env.status === "deployed") return name + ": preview deployed" + (env.previewUrl ? " at " + env.previewUrl : "") + ".";
      if (env.status === "failed") return name + ": deploy failed. " + (env.error || "");
      if (env.outcome === "cancelled") return name + ": deploy cancelled.";
      if (env.outcome === "expired") return name + ": preview expired and torn down.";
      return name + ": no preview.";
    }
    var e = env.name;
    if (env.status === "deploying") return name + ": deploying " + card.branchName + " to " + e + ".";
    if (env.status === "deployed") return name + ": " + e + " deployed" + (env.previewUrl ? " at " + env.previewUrl : "") + ".";
    if (env.status === "failed") return name + ": " + e + " deploy failed. " + (env.error || "");
    if (env.outcome === "cancelled") return name + ": " + e + " deploy cancelled.";
    if (env.outcome) return name + ": " + e + " " + OUTCOME_LABEL[env.outcome].toLowerCase() + ".";
    return name + ": " + e + " not deployed.";
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
        card.title = pull.title;
        card.branchName = pull.branchName;
        card.author = pull.author;
        card.createdAt = pull.createdAt;
        card.canWrite = pull.canWrite !== false;
        syncEnvironments(card, environmentsOf(pull), state.loaded);
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

  function pullRequestPath(card, rest, env) {
    var parts = card.repository.split("/");
    var path = "/api/repos/" + encodeURIComponent(parts[0]) + "/" + encodeURIComponent(parts[1] || "") +
      "/pull-requests/" + encodeURIComponent(String(card.prNumber)) + rest;
    // The API's default environment needs no query.
    if (env && env.name !== DEFAULT_ENVIRONMENT) path += "?environment=" + encodeURIComponent(env.name);
    return path;
  }

  function deploy(card, env) {
    if (env.pending || env.status === "deploying" || !state.token) return;
    var generation = state.generation;
    env.pending = true;
    env.message = "";
    updateCard(card);
    var body = { branchName: card.branchName, trigger: "dashboard", environment: env.name };
    api(pullRequestPath(card, "/deploy"), { method: "POST", body: body }).then(
      function (deployment) {
        if (generation !== state.generation) return;
        env.pending = false;
        if (deployment) {
          applyDeployment(env, {
            deploymentId: deployment.id || deployment.deploymentId,
            status: deployment.status || "deploying",
            previewUrl: deployment.previewUrl,
            error: deployment.error,
            startedAt: deployment.createdAt,
            updatedAt: deployment.updatedAt,
          });
        }
        announce(describe(card, env));
        updateCard(card);
        ensureTicking();
      },
      function (error) {
        if (generation !== state.generation) return;
        env.pending = false;
        if (error.status === 401) {
          signOut("Your sign-in is no longer accepted (" + error.message + "). Sign in again.", "error");
          return;
        }
        if (error.status === 409) {
          // Someone else started one: show it as running and let the list fill in the details.
          env.message = hasRows(card)
            ? "A deploy to " + env.name + " is already in progress."
            : "A deploy of this branch is already in progress.";
          env.messageKind = "info";
          if (error.body && error.body.deploymentId && env.status !== "deploying") {
            env.deploymentId = error.body.deploymentId;
            env.status = "deploying";
            env.startedAt = null;
            env.updatedAt = "";
          }
          scheduleRefetch();
        } else if (error.status === 429) {
          env.message = error.message;
          env.messageKind = "error";
        } else {
          env.message = "Could not start the deploy: " + error.message;
          env.messageKind = "error";
        }
        updateCard(card);
        ensureTicking();
      }
    );
  }

  /* Ask for the running (or queued) deploy to be cancelled. The 202 only says the request is
   * taken: the environment stays "deploying" (its button disabled) until the WebSocket, or the
   * list, says it went back to idle with the outcome "cancelled". */
  function cancel(card, env) {
    if (env.cancelPending || env.status !== "deploying" || !state.token) return;
    var generation = state.generation;
    var deploymentId = env.deploymentId;
    var rows = hasRows(card);
    var who = card.repository + " #" + card.prNumber + (rows ? " " + env.name : "");
    env.cancelPending = true;
    if (!rows) env.keepFocus = document.activeElement === card.nodes.cancel;
    env.message = "";
    updateCard(card);
    api(pullRequestPath(card, "/deployment/cancel", env), { method: "POST" }).then(
      function (deployment) {
        if (generation !== state.generation) return;
        env.cancelPending = false;
        if (env.status === "deploying") {
          env.cancelRequested = (deployment && (deployment.id || deployment.deploymentId)) || deploymentId;
          announce(who + ": cancelling the deploy.");
        }
        updateCard(card);
      },
      function (error) {
        if (generation !== state.generation) return;
        env.cancelPending = false;
        if (error.status === 401) {
          signOut("Your sign-in is no longer accepted (" + error.message + "). Sign in again.", "error");
          return;
        }
        env.message = error.status === 429 ? error.message : "Could not cancel the deploy: " + error.message;
        env.messageKind = "error";
        // A 409 means nothing is running any more: the list tells what happened instead.
        if (error.status === 409) scheduleRefetch();
        updateCard(card);
        announce(who + ": " + env.message);
      }
    );
  }

  // -- destroy, logs and history ------------------------------------------------------------

  /* The buttons an environment offers in its state. */
  function actionsFor(env) {
    var status = env.status;
    if (!env.writable) return { deploy: false, retry: false, cancel: false, destroy: false, extend: false };
    return {
      deploy: env.deployable !== false && (status === "idle" || status === "deployed"),
      retry: env.deployable !== false && status === "failed",
      cancel: status === "deploying",
      // A failed deploy may have left an environment behind: it can be torn down too.
      destroy: status === "deployed" || status === "failed",
      // A deployed preview that expires can be kept for its whole time again, from now.
      extend: status === "deployed" && !!env.expiresAt,
    };
  }

  function destroying(env) {
    return env.destroyPending || (env.destroyRequested !== null && env.destroyRequested === env.deploymentId);
  }

  /* Extend: offered while the preview is deployed with an expiry, and not being torn down. */
  function updateExtend(env, button, name) {
    button.hidden = !actionsFor(env).extend || destroying(env);
    button.disabled = env.extendPending;
    label(button, env.extendPending ? "Extending\u2026" : "Extend", name, env.extendPending ? "Extending" : "Extend");
    button.title = "Keeps " + name + " for its whole time again, from now, instead of tearing it down when it expires.";
  }

  /* A disabled button loses the keyboard focus: once the extend is answered, give it back to
   * Extend (or, if Extend went away, to `fallback`). */
  function keepExtendFocus(env, button, fallback) {
    if (!env.extendFocus || env.extendPending) return;
    env.extendFocus = false;
    var active = document.activeElement;
    if (active && active !== document.body && active !== button) return;
    if (!button.hidden && !button.disabled) button.focus();
    else if (fallback && !fallback.hidden && !fallback.disabled) fallback.focus();
  }

  /* POST .../deployment/extend: 200 with the new expiresAt (now + the TTL), shown at once; 409
   * when nothing is deployed any more (the list then tells what happened). */
  function extend(card, env) {
    if (env.extendPending || !actionsFor(env).extend || !state.token) return;
    var generation = state.generation;
    var deploymentId = env.deploymentId;
    var rows = hasRows(card);
    var who = card.repository + " #" + card.prNumber + (rows ? " " + env.name : "");
    env.extendFocus = document.activeElement === (rows ? env.row && env.row.extend : card.nodes.extend);
    env.extendPending = true;
    env.message = "";
    updateCard(card);
    api(pullRequestPath(card, "/deployment/extend", env), { method: "POST" }).then(
      function (body) {
        if (generation !== state.generation) return;
        env.extendPending = false;
        if (env.status === "deployed" && env.deploymentId === deploymentId && body && body.expiresAt !== undefined) {
          env.expiresAt = isTimestamp(body.expiresAt) ? body.expiresAt : null;
          announce(who + ": extended; " + (env.expiresAt ? "expires in " + formatTimeLeft(Date.parse(env.expiresAt) - Date.now()) : "never expires") + ".");
        }
        updateCard(card);
      },
      function (error) {
        if (generation !== state.generation) return;
        env.extendPending = false;
        if (error.status === 401) {
          signOut("Your sign-in is no longer accepted (" + error.message + "). Sign in again.", "error");
          return;
        }
        env.message = error.status === 429 ? error.message : "Could not extend the preview: " + error.message;
        env.messageKind = "error";
        // A 409 means nothing is deployed any more: the list tells what happened instead.
        if (error.status === 409) scheduleRefetch();
        updateCard(card);
        announce(who + ": " + env.message);
      }
    );
  }

  /* Destroy asks first: a line under the buttons with the real button and "Keep". */
  function buildConfirm(card, envOf) {
    var c = {};
    c.root = el("div", "confirm");
    c.root.setAttribute("role", "group");
    c.text = el("p", "confirm-text");
    c.yes = el("button", "button button-danger-solid confirm-destroy");
    c.yes.type = "button";
    c.yes.addEventListener("click", function () { destroy(card, envOf()); });
    c.no = el("button", "button button-quiet confirm-keep", "Keep it");
    c.no.type = "button";
    c.no.addEventListener("click", function () {
      var env = envOf();
      env.confirmingDestroy = false;
      updateCard(card);
      (hasRows(card) ? env.row.destroy : card.nodes.destroy).focus();
    });
    c.root.appendChild(c.text);
    c.root.appendChild(c.yes);
    c.root.appendChild(c.no);
    c.root.hidden = true;
    return c;
  }

  function askDestroy(card, env) {
    if (!actionsFor(env).destroy || env.destroyPending) return;
    env.confirmingDestroy = true;
    env.message = "";
    updateCard(card);
    (hasRows(card) ? env.row.confirm : card.nodes.confirm).yes.focus();
  }

  function updateDestroy(env, button, confirm, text, name) {
    // Not while a deploy (a Retry, a Redeploy) is on its way: that one decides what runs next.
    var offered = actionsFor(env).destroy && !env.pending;
    var tearingDown = destroying(env);
    if (!offered) env.confirmingDestroy = false;
    button.hidden = !offered || env.confirmingDestroy;
    button.disabled = tearingDown;
    label(button, tearingDown ? "Destroying\u2026" : text, name, tearingDown ? "Tearing down" : "Destroy");
    confirm.root.hidden = !offered || !env.confirmingDestroy;
    confirm.root.setAttribute("aria-label", "Confirm destroying " + name);
    confirm.text.textContent = "Tear down " + name + "? Its environment and everything on it go away.";
    confirm.yes.textContent = "Destroy " + name;
    confirm.yes.setAttribute("aria-label", "Yes, destroy " + name);
  }

  /* DELETE .../deployment: 202 when the teardown is started or queued; the environment goes
   * idle, with the outcome "destroyed", when the WebSocket (or the list) says it is done. */
  function destroy(card, env) {
    if (env.destroyPending || !state.token) return;
    var generation = state.generation;
    var deploymentId = env.deploymentId;
    var who = card.repository + " #" + card.prNumber + (hasRows(card) ? " " + env.name : "");
    env.confirmingDestroy = false;
    env.destroyPending = true;
    env.message = "";
    updateCard(card);
    api(pullRequestPath(card, "/deployment", env), { method: "DELETE" }).then(
      function (deployment) {
        if (generation !== state.generation) return;
        env.destroyPending = false;
        if (env.status !== "idle") {
          env.destroyRequested = (deployment && (deployment.id || deployment.deploymentId)) || deploymentId;
          env.message = "Tearing down\u2026";
          env.messageKind = "info";
          announce(who + ": tearing the preview down.");
        }
        updateCard(card);
      },
      function (error) {
        if (generation !== state.generation) return;
        env.destroyPending = false;
        if (error.status === 401) {
          signOut("Your sign-in is no longer accepted (" + error.message + "). Sign in again.", "error");
          return;
        }
        env.message = error.status === 429 ? error.message : "Could not destroy the preview: " + error.message;
        env.messageKind = "error";
        // A 404 means nothing is live any more: the list tells what happened instead.
        if (error.status === 404) scheduleRefetch();
        updateCard(card);
        announce(who + ": " + env.message);
      }
    );
  }

  function logPageHref(deploymentId) {
    // Relative, so the page works behind a proxy's path prefix too.
    return "deployments/" + encodeURIComponent(deploymentId) + "/logs";
  }

  /* A line under an environment: its current deployment's log, and its history. */
  function buildLinks(card, envOf, historyId) {
    var l = {};
    l.root = el("div", "env-links");
    l.logs = el("a", "logs-link", "Logs");
    l.root.appendChild(l.logs);
    l.toggle = el("button", "button button-quiet history-toggle");
    l.toggle.type = "button";
    l.toggle.setAttribute("aria-expanded", "false");
    l.toggle.setAttribute("aria-controls", historyId);
    l.toggle.appendChild(el("span", null, "History"));
    var chevron = el("span", "chevron", "\u25BE");
    chevron.setAttribute("aria-hidden", "true");
    l.toggle.appendChild(chevron);
    l.toggle.addEventListener("click", function () { toggleHistory(card, envOf()); });
    l.root.appendChild(l.toggle);

    var h = {};
    h.root = el("section", "history");
    h.root.id = historyId;
    h.root.hidden = true;
    h.list = el("ol", "history-list");
    h.status = el("p", "history-status muted");
    h.status.setAttribute("role", "status");
    h.more = el("button", "button history-more", "More");
    h.more.type = "button";
    h.more.addEventListener("click", function () { loadHistory(card, envOf(), false); });
    h.root.appendChild(h.list);
    h.root.appendChild(h.status);
    h.root.appendChild(h.more);
    l.history = h;
    return l;
  }

  function updateLinks(card, env, links) {
    var name = hasRows(card) ? env.name : "preview";
    links.logs.hidden = !env.deploymentId;
    if (env.deploymentId) {
      links.logs.href = logPageHref(env.deploymentId);
      links.logs.setAttribute("aria-label", "Logs of the " + (env.status === "deploying" ? "running" : "latest") + " deploy to " + name);
    }
    var history = env.history;
    var open = !!(history && history.open);
    links.toggle.setAttribute("aria-expanded", String(open));
    links.toggle.setAttribute("aria-label", "History of " + name);
    links.history.root.hidden = !open;
    links.history.root.setAttribute("aria-label", "Deployments of " + name + ", newest first");
    if (!open) return;
    var h = links.history;
    h.more.hidden = !history.next;
    h.more.disabled = history.loading;
    h.more.textContent = history.loading && history.items.length ? "Loading\u2026" : "More";
    h.status.hidden = !history.loading && !history.error && history.items.length !== 0;
    h.status.dataset.kind = history.error ? "error" : "";
    h.status.textContent = history.error ? "Could not load the history: " + history.error
      : history.loading && !history.items.length ? "Loading\u2026" : "No deployments yet.";
    renderHistory(h.list, history.items);
  }

  function toggleHistory(card, env) {
    if (!env.history) env.history = { open: false, items: [], next: null, loading: false, error: "", generation: 0, timer: null };
    env.history.open = !env.history.open;
    if (env.history.open) loadHistory(card, env, true);
    updateCard(card);
  }

  function historyPath(card, env, before, limit) {
    var query = new URLSearchParams();
    if (env.name !== DEFAULT_ENVIRONMENT) query.set("environment", env.name);
    query.set("limit", String(limit));
    if (before) query.set("before", before);
    return pullRequestPath(card, "/deployments") + "?" + query.toString();
  }

  /* The newest page again (`fresh`: merged into what is shown, so what "More" loaded stays),
   * or the next page after the last record shown. */
  function loadHistory(card, env, fresh) {
    var history = env.history;
    if (!history || !state.token) return;
    var generation = state.generation;
    var mine = ++history.generation; // a later load wins over one still on its way
    var before = fresh ? null : history.next;
    history.loading = true;
    history.error = "";
    api(historyPath(card, env, before, HISTORY_PAGE)).then(
      function (page) {
        if (generation !== state.generation || mine !== history.generation) return;
        var items = page && Array.isArray(page.deployments) ? page.deployments : [];
        var next = page && typeof page.next === "string" ? page.next : null;
        if (!fresh) {
          history.items = history.items.concat(items);
          history.next = next;
        } else if (!history.items.length) {
          history.items = items;
          history.next = next;
        } else {
          history.items = mergeNewest(history.items, items);
        }
        history.loading = false;
        updateCard(card);
      },
      function (error) {
        if (generation !== state.generation || mine !== history.generation) return;
        history.loading = false;
        if (error.status === 401) {
          signOut("Your sign-in is no longer accepted (" + error.message + "). Sign in again.", "error");
          return;
        }
        history.error = error.message;
        updateCard(card);
      }
    );
    updateCard(card);
  }

  /* The newest page over the records shown: those it has are replaced, newer ones go first. */
  function mergeNewest(shown, newest) {
    var byId = new Map();
    newest.forEach(function (d) { if (d && typeof d.id === "string") byId.set(d.id, d); });
    var known = new Set(shown.map(function (d) { return d.id; }));
    var added = newest.filter(function (d) { return d && !known.has(d.id); });
    return added.concat(shown.map(function (d) { return byId.get(d.id) || d; }));
  }

  function scheduleHistoryRefresh(card, env) {
    var history = env.history;
    if (history.timer) return;
    history.timer = window.setTimeout(function () {
      history.timer = null;
      if (history.open) loadHistory(card, env, true);
    }, REFETCH_DEBOUNCE_MS);
  }

  function shortSha(sha) {
    return typeof sha === "string" && /^[0-9a-f]{7,64}$/i.test(sha) ? sha.slice(0, 7) : "";
  }

  /* Built from the records each time (a page is small), text only, and put in place only when
   * it differs: an update of something else (the list refetched) keeps the entries, a focused
   * link among them included. */
  function renderHistory(list, items) {
    var fragment = document.createDocumentFragment();
    items.forEach(function (d) {
      if (!d || typeof d.id !== "string") return;
      var item = el("li", "history-item");
      var status = d.status in RECORD_LABEL ? d.status : "";
      // A preview torn down because it expired says so.
      if (status === "destroyed" && d.expired === true) status = "expired";
      item.dataset.status = status;
      item.dataset.deploymentId = d.id;
      var head = el("div", "history-head");
      var badge = el("span", "badge history-badge", RECORD_LABEL[status] || String(d.status));
      badge.dataset.status = status === "deployed" || status === "failed" || status === "deploying" ? status : "idle";
      head.appendChild(badge);
      var sha = shortSha(d.headSha);
      if (sha) {
        var commit = el("code", "history-commit", sha);
        commit.title = d.headSha;
        head.appendChild(commit);
      }
      var when = el("time", "history-when", ago(d.createdAt));
      if (d.createdAt) {
        when.dateTime = d.createdAt;
        when.title = new Date(d.createdAt).toLocaleString();
      }
      head.appendChild(when);
      var logs = el("a", "history-logs", "Logs");
      logs.href = logPageHref(d.id);
      logs.setAttribute("aria-label", "Logs of the deploy " + (sha || d.id.slice(0, 7)) + " " + ago(d.createdAt));
      head.appendChild(logs);
      item.appendChild(head);

      var facts = [];
      if (d.trigger) facts.push(["history-trigger", "by " + d.trigger]);
      if (d.requestedBy) facts.push(["history-who", String(d.requestedBy)]);
      var started = Date.parse(d.createdAt);
      var ended = Date.parse(d.finishedAt);
      if (!isNaN(started) && !isNaN(ended)) facts.push(["history-duration", "took " + formatElapsed(ended - started)]);
      else if (!isNaN(started) && status === "deploying") facts.push(["history-duration", "running " + formatElapsed(Date.now() - started)]);
      if (typeof d.cost === "number" && isFinite(d.cost) && d.cost >= 0) facts.push(["history-cost", formatCost(d.cost) + (status === "deployed" ? " so far" : "")]);
      if (facts.length) {
        var line = el("p", "history-facts muted");
        facts.forEach(function (fact) { line.appendChild(el("span", fact[0], fact[1])); });
        item.appendChild(line);
      }
      fragment.appendChild(item);
    });
    var shown = list.children;
    var same = shown.length === fragment.children.length &&
      Array.prototype.every.call(fragment.children, function (node, i) { return node.isEqualNode(shown[i]); });
    if (!same) list.replaceChildren(fragment);
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
      ws = new WebSocket(WS_BASE + "/ws");
    } catch (e) {
      scheduleReconnect();
      return;
    }
    state.ws = ws;
    ws.onopen = function () {
      if (state.ws !== ws) return;
      sendAuth(ws);
    };
    ws.onmessage = function (event) {
      if (state.ws !== ws) return;
      var message;
      try { message = JSON.parse(event.data); } catch (e) { return; }
      if (!message || typeof message !== "object") return;
      if (message.type === "auth" && message.ok === true) sendPing(ws);
      else if (message.type === "pong") onPong(ws);
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
        // The server refused the token, or stopped accepting it (revoked, expired).
        signOut("Your sign-in is no longer accepted: its token was revoked or has expired. Sign in again.", "error");
        return;
      }
      scheduleReconnect();
    };
  }

  /* The token goes in the first message, never in the URL (which servers and proxies log);
   * the answer {"type": "auth", "ok": true} leads to the first ping. */
  function sendAuth(ws) {
    send(ws, JSON.stringify({ type: "auth", token: state.token }));
  }

  function sendPing(ws) {
    send(ws, "ping");
  }

  /* Send, and start over unless an answer comes in time: a connection can be dead before the
   * socket notices. */
  function send(ws, text) {
    try {
      ws.send(text);
    } catch (e) {
      return;
    }
    window.clearTimeout(state.pongTimer);
    state.pongTimer = window.setTimeout(function () {
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

  function matchesFilters(message, environment) {
    if (state.filters.repository && message.repository !== state.filters.repository) return false;
    // The status filter is on the default environment's state: another environment's update
    // says nothing about it.
    if (state.filters.status && environment === DEFAULT_ENVIRONMENT && message.status !== state.filters.status) return false;
    return true;
  }

  function onUpdate(message) {
    if (typeof message.repository !== "string") return;
    if (!state.repositories.has(message.repository)) {
      state.repositories.add(message.repository);
      renderRepositories();
    }
    var environment = message.environment === undefined || message.environment === null ? DEFAULT_ENVIRONMENT : message.environment;
    if (!isEnvironmentName(environment)) return;
    var card = state.cards.get(keyOf(message.repository, message.prNumber));
    if (!card) {
      // A pull request the page has not shown yet: the list knows its title and author.
      if (matchesFilters(message, environment)) scheduleRefetch();
      return;
    }
    var env = card.envs.get(environment);
    if (!env) {
      // An environment the card does not show yet: a row for it now, and the list for its place.
      env = environmentOf(card, environment);
      scheduleRefetch();
    }
    // Any record of the environment may have changed, the current one or not.
    if (env.history && env.history.open) scheduleHistoryRefresh(card, env);
    var changed = applyDeployment(env, {
      deploymentId: message.deploymentId,
      status: message.status,
      previewUrl: message.previewUrl,
      error: message.error,
      startedAt: null,
      updatedAt: message.updatedAt,
      outcome: message.outcome,
      // Messages carry the cost when it is known, and the expiry of a deployed preview.
      hourlyCost: hourlyCostOf(message.hourlyCost),
      cost: hourlyCostOf(message.cost),
      expiresAt: message.expiresAt === undefined ? undefined : isTimestamp(message.expiresAt) ? message.expiresAt : null,
    });
    if (!changed) {
      // Another deployment finished while this card shows a newer one running: let the list,
      // which knows which deployment is the latest, decide.
      if (message.deploymentId !== env.deploymentId) scheduleRefetch();
      return;
    }
    if (message.branchName) card.branchName = message.branchName;
    if (env.messageKind === "info") env.message = "";
    // Messages carry no resources: the list has those of a deployment that just ended.
    if (env.status === "deployed" && env.resources === null) scheduleRefetch();
    updateCard(card);
    announce(describe(card, env));
    ensureTicking();
  }

  // -- timers: elapsed time and periodic resync ---------------------------------------------

  function anyDeploying() {
    var found = false;
    state.cards.forEach(function (card) {
      eachEnvironment(card, function (env) { if (env.status === "deploying") found = true; });
    });
    return found;
  }

  function ensureTicking() {
    if (state.tickTimer || !state.token) return;
    state.tickTimer = window.setInterval(tick, 1000);
  }

  function tick() {
    if (!state.token) return;
    var deploying = anyDeploying();
    state.cards.forEach(function (card) {
      eachEnvironment(card, function (env) {
        if (env.status === "deploying") updateElapsed(card, env);
        // The time left and the cost so far go on (only text that changed is written).
        if (env.status === "deployed") {
          var details = detailsOf(card, env);
          if (details) updateDetails(details, env);
        }
      });
    });
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

  /* "Sign in with GitHub" is offered when the server has the App's OAuth pair: asked once, and
   * only of a page that shows the sign-in form. Unanswered, the button stays hidden. */
  function offerGitHubSignIn() {
    if (state.githubAsked) return;
    state.githubAsked = true;
    els.signInGitHub.href = API + "/auth/github";
    api("/api/auth", { anonymous: true }).then(
      function (body) { els.signInGitHub.hidden = !(body && body.github === true); },
      function () { els.signInGitHub.hidden = true; }
    );
  }

  function showSignIn(message, kind) {
    offerGitHubSignIn();
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

  /* Trade a sign-in link's one-time code for a session token, then sign in with that. A GitHub
   * sign-in started on a log page comes back with `next`, that page: it opens once signed in. */
  function signInWithCode(code, next) {
    resetSession();
    var generation = state.generation;
    els.signInSubmit.disabled = true;
    els.signInSubmit.textContent = "Signing in\u2026";
    return api("/api/sessions", { method: "POST", body: { code: code }, anonymous: true }).then(
      function (session) {
        if (generation !== state.generation) return;
        if (!session || typeof session.token !== "string" || !session.token) {
          showSignIn("Could not sign in: the server's answer had no token. Paste an API token instead.", "error");
          return;
        }
        signIn(session.token).then(function () {
          if (next && state.token === session.token) window.location.replace(next);
        });
      },
      function (error) {
        if (generation !== state.generation) return;
        if (error.status === 401) {
          showSignIn("This sign-in link is not valid: it was already used, has expired (links last 10 minutes) " +
            "or is mistyped. Ask for a new one (make signin on the server) or paste an API token.", "error");
        } else {
          showSignIn("Could not sign in with this link: " + error.message + ". Open the link again to retry.", "error");
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
      ["signInGitHub", "sign-in-github"],
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

    // A sign-in link's code leaves the address bar at once (and so history and bookmarks), before
    // it is used. A token there (an old link) is removed too, and not used: tokens stay out of URLs.
    var params = new URLSearchParams(window.location.search);
    var code = params.get("code");
    var urlToken = params.get("token");
    var next = params.get("next");
    if (code !== null || urlToken !== null || next !== null) {
      params.delete("code");
      params.delete("token");
      params.delete("next");
      var qs = params.toString();
      window.history.replaceState(null, "", window.location.pathname + (qs ? "?" + qs : "") + window.location.hash);
    }
    readFiltersFromUrl(params);

    var token = storage("get");
    if (code !== null && code.trim()) signInWithCode(code.trim(), next !== null && RETURN_PATH.test(next) ? next : null);
    else if (token) signIn(token);
    else if (urlToken !== null) {
      showSignIn("The dashboard no longer takes a token from its address. Paste the token below, " +
        "or open a sign-in link (make signin on the server).", "error");
    } else showSignIn("");
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", init);
  else init();
})();
