// The browser console of mailframe: captured mail, live sessions, the
// decisions, the queue, statistics and settings, over the JSON API at
// /api/v1 (docs/webapi.rst).
//
// Plain ES2020, no library, no build step; the page runs under a strict CSP
// (script-src 'self', style-src 'self'): no inline script or style, and
// every piece of data goes into the page through textContent or an
// attribute, never innerHTML.  A message's HTML is shown only in an
// <iframe sandbox=""> whose src is the API's sanitised /html URL.
"use strict";

(() => {
  const API = "/api/v1";
  const MAIL_POLL = 1500;
  const SESSIONS_POLL = 2000;
  const QUEUE_POLL = 3000;
  const STATS_POLL = 5000;
  const DECISIONS_WAIT = 25;
  const DECISIONS_KEPT = 500;
  const SVG = "http://www.w3.org/2000/svg";

  const state = {
    info: null,
    csrf: null,
    page: null,
    timer: null,
    generation: 0, // bumped on every page change: stale loops stop
    mail: { signature: "", selected: null, tab: "text", detail: null, remote: null },
    decisions: { last: null, rows: [], abort: null },
    queue: { selected: null },
    confirm: null,
    settings: null,
  };

  // -- small helpers ---------------------------------------------------------

  const $ = (id) => document.getElementById(id);

  function el(tag, props, ...children) {
    const node = document.createElement(tag);
    if (props) {
      for (const [key, value] of Object.entries(props)) {
        if (value === undefined || value === null || value === false) continue;
        if (key === "class") node.className = value;
        else if (key === "text") node.textContent = String(value);
        else if (key === "testid") node.dataset.testid = value;
        else if (key === "data") Object.assign(node.dataset, value);
        else if (key === "on") {
          for (const [event, handler] of Object.entries(value)) node.addEventListener(event, handler);
        } else node.setAttribute(key, value === true ? "" : String(value));
      }
    }
    append(node, children);
    return node;
  }

  function append(node, children) {
    for (const child of children) {
      if (child === undefined || child === null || child === false) continue;
      if (Array.isArray(child)) append(node, child);
      else node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  function svg(tag, attrs, ...children) {
    const node = document.createElementNS(SVG, tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (key === "text") node.textContent = String(value);
      else node.setAttribute(key, String(value));
    }
    for (const child of children) if (child) node.append(child);
    return node;
  }

  function clear(node) {
    while (node.firstChild) node.removeChild(node.firstChild);
    return node;
  }

  function show(node, visible) {
    node.hidden = !visible;
  }

  function pad(n) {
    return String(n).padStart(2, "0");
  }

  function formatTime(seconds, withDate = true) {
    if (typeof seconds !== "number" || !isFinite(seconds)) return seconds == null ? "" : String(seconds);
    const d = new Date(seconds * 1000);
    const time = `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
    if (!withDate) return time;
    const today = new Date();
    if (d.toDateString() === today.toDateString()) return time;
    return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${time}`;
  }

  function formatAge(seconds) {
    if (typeof seconds !== "number" || !isFinite(seconds)) return "";
    seconds = Math.max(0, Math.round(seconds));
    if (seconds < 60) return `${seconds} s`;
    if (seconds < 3600) return `${Math.floor(seconds / 60)} min`;
    if (seconds < 86400) return `${Math.floor(seconds / 3600)} h ${Math.floor((seconds % 3600) / 60)} min`;
    return `${Math.floor(seconds / 86400)} d ${Math.floor((seconds % 86400) / 3600)} h`;
  }

  function now() {
    return Date.now() / 1000;
  }

  function formatSize(n) {
    if (typeof n !== "number") return n == null ? "" : String(n);
    if (n < 1024) return `${n} B`;
    if (n < 1024 * 1024) return `${(n / 1024).toFixed(1)} KB`;
    return `${(n / 1024 / 1024).toFixed(1)} MB`;
  }

  function formatNumber(n) {
    return typeof n === "number" ? n.toLocaleString() : n == null ? "" : String(n);
  }

  // A value of unknown shape, as short text (for the queue's entries and the settings).
  function plain(value) {
    if (value === null || value === undefined) return "";
    if (typeof value === "string") return value;
    if (typeof value === "number" || typeof value === "boolean") return String(value);
    if (Array.isArray(value)) return value.map(plain).join(", ");
    const pairs = Object.entries(value);
    if (!pairs.length) return "";
    return pairs.map(([k, v]) => (v === null || v === undefined ? k : `${k}=${typeof v === "object" ? JSON.stringify(v) : v}`)).join(" ");
  }

  // An SMTP reply as the queue or the decisions give it: [code, "x.y.z", [lines]],
  // {code, enhanced, text}, or a string.
  function replyText(reply) {
    if (reply === null || reply === undefined) return "";
    if (typeof reply === "string") return reply;
    if (Array.isArray(reply)) {
      const [code, enhanced, lines] = reply;
      return [code, enhanced, Array.isArray(lines) ? lines.join(" ") : lines].filter((x) => x !== null && x !== undefined && x !== "").join(" ");
    }
    if (typeof reply === "object") {
      const text = Array.isArray(reply.lines) ? reply.lines.join(" ") : reply.text;
      return [reply.code, reply.enhanced, text].filter((x) => x !== null && x !== undefined && x !== "").join(" ");
    }
    return String(reply);
  }

  // An SMTP reply as a node: its code coloured, then the rest.
  function replyNode(reply, code) {
    const text = replyText(reply);
    if (code === undefined || code === null) code = codeOf(reply);
    const rest = code !== null && code !== undefined && text.startsWith(String(code)) ? text.slice(String(code).length).trim() : text;
    return el("span", { class: "reply-text" }, code !== null && code !== undefined ? el("span", { class: `code ${replyClass(code)}`, text: code }) : null, code !== null && code !== undefined && rest ? " " : null, rest);
  }

  function replyClass(code) {
    const c = String(code == null ? "" : code).trim()[0];
    return c === "2" ? "ok" : c === "4" ? "temp" : c === "5" ? "perm" : "";
  }

  function codeOf(reply) {
    if (Array.isArray(reply)) return reply[0];
    if (reply && typeof reply === "object") return reply.code;
    if (typeof reply === "string") return reply.slice(0, 3);
    return null;
  }

  function mono(text, cls = "") {
    return el("span", { class: `mono ${cls}`.trim(), text: text == null ? "" : text });
  }

  // -- the API ---------------------------------------------------------------

  class ApiError extends Error {
    constructor(status, message) {
      super(message);
      this.status = status;
    }
  }

  async function request(path, { method = "GET", body, signal, as = "json" } = {}) {
    const headers = { Accept: as === "json" ? "application/json" : "*/*" };
    if (method !== "GET" && method !== "HEAD") {
      headers["X-Mailframe-Request"] = "1";
      if (state.csrf) headers["X-CSRF-Token"] = state.csrf;
    }
    const init = { method, headers, credentials: "same-origin", signal, cache: "no-store" };
    if (body !== undefined) {
      headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    const response = await fetch(path, init);
    if (response.status === 401 && path !== `${API}/login`) {
      needLogin();
      throw new ApiError(401, "login needed");
    }
    if (as === "text" && response.ok) return response.text();
    let data = null;
    try {
      data = await response.json();
    } catch (e) {
      data = null;
    }
    if (!response.ok) {
      throw new ApiError(response.status, (data && data.error) || `${response.status} ${response.statusText}`);
    }
    return data;
  }

  const api = (path, options) => request(API + path, options);

  function query(params) {
    const search = new URLSearchParams();
    for (const [key, value] of Object.entries(params)) {
      if (value !== undefined && value !== null && value !== "") search.set(key, String(value));
    }
    const text = search.toString();
    return text ? `?${text}` : "";
  }

  let errorTimer = null;
  function showError(error, sticky = false) {
    if (error && error.name === "AbortError") return;
    if (error instanceof ApiError && error.status === 401) return;
    const banner = $("error");
    banner.textContent = error instanceof Error ? error.message : String(error);
    show(banner, true);
    clearTimeout(errorTimer);
    if (!sticky) errorTimer = setTimeout(() => show(banner, false), 6000);
  }

  function clearError() {
    show($("error"), false);
  }

  // -- the confirmation dialog (not window.confirm, so that tests can answer it) --

  function confirmAction(text, label = "Confirm") {
    return new Promise((resolve) => {
      if (state.confirm) state.confirm(false);
      $("confirm-text").textContent = text;
      $("confirm-ok").textContent = label;
      show($("confirm"), true);
      state.confirm = (answer) => {
        state.confirm = null;
        show($("confirm"), false);
        resolve(answer);
      };
      $("confirm-cancel").focus();
    });
  }

  function wireConfirm() {
    $("confirm-ok").addEventListener("click", () => state.confirm && state.confirm(true));
    $("confirm-cancel").addEventListener("click", () => state.confirm && state.confirm(false));
    $("confirm").addEventListener("click", (e) => {
      if (e.target === $("confirm") && state.confirm) state.confirm(false);
    });
    document.addEventListener("keydown", (e) => {
      if (e.key === "Escape" && state.confirm) state.confirm(false);
    });
  }

  // -- start, login, pages ---------------------------------------------------

  async function start() {
    wireConfirm();
    wireLogin();
    wireMail();
    wireDecisions();
    wireQueue();
    $("settings-search").addEventListener("input", () => renderSettings(state.settings));
    window.addEventListener("hashchange", route);
    await loadInfo();
  }

  async function loadInfo() {
    let info;
    try {
      info = await api("/info");
    } catch (error) {
      if (error instanceof ApiError && error.status === 401) return; // needLogin ran
      showError(`Cannot reach the API (${error.message}); trying again…`, true);
      setTimeout(() => loadInfo().catch(showError), 3000);
      return;
    }
    clearError();
    state.info = info;
    state.csrf = info.csrf || null;
    $("hostname").textContent = info.hostname || "";
    $("version").textContent = info.version ? `v${info.version}` : "";
    const badges = clear($("mode"));
    if (info.capture) badges.append(el("span", { class: "badge", text: "capture" }));
    if (info.queue) badges.append(el("span", { class: "badge", text: "queue" }));
    show($("tab-mail"), !!info.capture);
    show($("tab-queue"), !!info.queue);
    show($("user"), !!info.user);
    $("user").textContent = info.user || "";
    show($("logout"), !!(info.login && info.user));
    if (info.login && !info.user) {
      needLogin();
      return;
    }
    show($("tabs"), true);
    route();
  }

  function needLogin() {
    leavePage();
    if (state.info) state.info.user = null;
    state.page = "login";
    for (const page of document.querySelectorAll("main > .page")) show(page, page.id === "page-login");
    show($("tabs"), false);
    show($("user"), false);
    show($("logout"), false);
    const user = $("login-username");
    if (!user.value) user.focus();
    else $("login-password").focus();
  }

  function wireLogin() {
    $("login-form").addEventListener("submit", async (e) => {
      e.preventDefault();
      const error = $("login-error");
      show(error, false);
      $("login-submit").disabled = true;
      try {
        const answer = await api("/login", {
          method: "POST",
          body: { username: $("login-username").value, password: $("login-password").value },
        });
        state.csrf = answer.csrf || null;
        $("login-password").value = "";
        await loadInfo();
      } catch (err) {
        error.textContent = err.status === 401 ? err.message || "Wrong user or password." : `Login failed: ${err.message}`;
        if (!error.textContent) error.textContent = "Wrong user or password.";
        show(error, true);
      } finally {
        $("login-submit").disabled = false;
      }
    });
    $("logout").addEventListener("click", async () => {
      try {
        await api("/logout", { method: "POST" });
      } catch (err) {
        showError(err);
      }
      state.csrf = null;
      await loadInfo();
    });
  }

  const PAGES = {
    mail: { enter: enterMail, available: () => state.info && state.info.capture },
    sessions: { enter: enterSessions },
    decisions: { enter: enterDecisions },
    queue: { enter: enterQueue, available: () => state.info && state.info.queue },
    stats: { enter: enterStats },
    settings: { enter: enterSettings },
  };

  function route() {
    if (!state.info || (state.info.login && !state.info.user)) return;
    const hash = decodeURIComponent(location.hash.replace(/^#/, ""));
    let [name, ...rest] = hash.split("/");
    const usable = (n) => PAGES[n] && (!PAGES[n].available || PAGES[n].available());
    if (!usable(name)) name = usable("mail") ? "mail" : "sessions";
    const argument = rest.join("/") || null;
    if (state.page !== name) {
      leavePage();
      state.page = name;
      for (const page of document.querySelectorAll("main > .page")) show(page, page.id === `page-${name}`);
      for (const tab of document.querySelectorAll("#tabs .tab")) {
        const active = tab.dataset.page === name;
        tab.classList.toggle("active", active);
        tab.setAttribute("aria-selected", active ? "true" : "false");
      }
      clearError();
      PAGES[name].enter(argument);
    } else if (name === "mail") {
      openMessage(argument);
    }
  }

  function leavePage() {
    state.generation += 1;
    clearTimeout(state.timer);
    state.timer = null;
    if (state.decisions.abort) state.decisions.abort.abort();
    state.decisions.abort = null;
  }

  // Run load() now and every `every` ms while this page stays open.
  function poll(load, every) {
    const generation = state.generation;
    const tick = async () => {
      if (generation !== state.generation) return;
      try {
        await load();
        setLive(true);
      } catch (err) {
        setLive(false);
        showError(err);
      }
      if (generation === state.generation) state.timer = setTimeout(tick, every);
    };
    tick();
  }

  function setLive(ok) {
    $("live").classList.toggle("stale", !ok);
  }

  // -- Mail ------------------------------------------------------------------

  function wireMail() {
    let typing = null;
    $("mail-search").addEventListener("input", () => {
      clearTimeout(typing);
      typing = setTimeout(() => {
        state.mail.signature = "";
        refreshMail().catch(showError);
      }, 250);
    });
    $("mail-mailbox").addEventListener("change", () => {
      state.mail.signature = "";
      refreshMail().catch(showError);
    });
    $("mail-delete-all").addEventListener("click", async () => {
      const box = $("mail-mailbox").value;
      const ok = await confirmAction(box ? `Delete every message of mailbox ${box}?` : "Delete every captured message?", "Delete");
      if (!ok) return;
      try {
        await api(`/messages${query({ mailbox: box })}`, { method: "DELETE" });
        state.mail.signature = "";
        if (location.hash.startsWith("#mail/")) location.hash = "#mail";
        await refreshMail();
      } catch (err) {
        showError(err);
      }
    });
  }

  function enterMail(argument) {
    state.mail.signature = "";
    poll(refreshMail, MAIL_POLL);
    openMessage(argument);
  }

  async function refreshMail() {
    const q = $("mail-search").value.trim();
    const mailbox = $("mail-mailbox").value;
    const [list, boxes] = await Promise.all([
      api(`/messages${query({ q, mailbox, limit: 500 })}`),
      api("/mailboxes"),
    ]);
    renderMailboxes(boxes.mailboxes || []);
    const messages = list.messages || [];
    const signature = JSON.stringify([q, mailbox, list.total, messages.map((m) => m.id)]);
    $("mail-count").textContent =
      list.total === messages.length ? `${messages.length} message${messages.length === 1 ? "" : "s"}` : `${messages.length} of ${list.total}`;
    if (signature === state.mail.signature) {
      markSelected();
      return;
    }
    state.mail.signature = signature;
    const rows = clear($("mail-rows"));
    for (const m of messages) {
      const to = Array.isArray(m.to) ? m.to : [];
      const row = el(
        "tr",
        { class: "row", data: { id: m.id }, testid: "mail-row", tabindex: "0" },
        el(
          "td",
          { class: "envelope-cell" },
          el(
            "div",
            { class: "line addresses", title: `${m.from || "<>"} → ${to.join(", ")}` },
            mono(m.from || "<>", "address from"),
            el("span", { class: "arrow", text: "→" }),
            mono(to[0] || "", "address to"),
            to.length > 1 ? el("span", { class: "muted more", text: `+${to.length - 1}` }) : null
          ),
          el(
            "div",
            { class: "line", title: m.subject || "" },
            el("span", { class: m.subject ? "subject-text" : "subject-text muted", text: m.subject || "(no subject)" }),
            el("span", { class: "tag", text: m.mailbox })
          )
        ),
        el(
          "td",
          { class: "when", title: new Date(m.received * 1000).toString() },
          el("div", { class: "time", text: formatTime(m.received) }),
          el("div", { class: "muted small", text: formatSize(m.size) })
        )
      );
      row.addEventListener("click", () => {
        location.hash = `#mail/${encodeURIComponent(m.id)}`;
      });
      row.addEventListener("keydown", (e) => {
        if (e.key === "Enter") location.hash = `#mail/${encodeURIComponent(m.id)}`;
      });
      rows.append(row);
    }
    show($("mail-empty"), messages.length === 0);
    markSelected();
  }

  function renderMailboxes(boxes) {
    const select = $("mail-mailbox");
    const current = select.value;
    const wanted = JSON.stringify(boxes.map((b) => [b.name, b.count]));
    if (select.dataset.boxes === wanted) return;
    select.dataset.boxes = wanted;
    clear(select);
    select.append(el("option", { value: "", text: "All mailboxes" }));
    let found = current === "";
    for (const box of boxes) {
      select.append(el("option", { value: box.name, text: `${box.name} (${box.count})` }));
      if (box.name === current) found = true;
    }
    if (!found) select.append(el("option", { value: current, text: `${current} (0)` }));
    select.value = current;
  }

  function markSelected() {
    for (const row of $("mail-rows").children) row.classList.toggle("selected", row.dataset.id === state.mail.selected);
  }

  async function openMessage(id) {
    state.mail.selected = id;
    markSelected();
    const pane = $("message");
    if (!id) {
      state.mail.detail = null;
      clear(pane).append(el("p", { class: "empty", text: "Select a message." }));
      return;
    }
    let m;
    try {
      m = await api(`/messages/${encodeURIComponent(id)}`);
    } catch (err) {
      if (state.mail.selected !== id) return;
      clear(pane).append(el("p", { class: "empty", text: err.status === 404 ? "This message is gone." : err.message }));
      return;
    }
    if (state.mail.selected !== id) return;
    state.mail.detail = m;
    renderMessage(m);
  }

  const MESSAGE_TABS = [
    ["text", "Text"],
    ["html", "HTML"],
    ["headers", "Headers"],
    ["raw", "Raw"],
    ["attachments", "Attachments"],
    ["envelope", "Envelope"],
  ];

  function renderMessage(m) {
    const pane = clear($("message"));
    const base = `${API}/messages/${encodeURIComponent(m.id)}`;
    const to = Array.isArray(m.to) ? m.to : [];
    const head = el(
      "div",
      { class: "message-head" },
      el("h2", { id: "message-subject", testid: "message-subject", text: m.subject || "(no subject)" }),
      el(
        "dl",
        { class: "facts" },
        el("dt", { text: "From" }),
        el("dd", null, mono(m.from || "<>", "address")),
        el("dt", { text: "To" }),
        el("dd", null, to.map((a, i) => [i ? ", " : "", mono(a, "address")])),
        el("dt", { text: "Received" }),
        el("dd", { text: `${formatTime(m.received)} · ${formatSize(m.size)} · mailbox ${m.mailbox}` })
      ),
      el(
        "div",
        { class: "message-actions" },
        el("a", { class: "button small", href: `${base}/raw`, download: `${m.id}.eml`, testid: "message-download", text: "Download .eml" }),
        el("button", {
          class: "button small danger",
          type: "button",
          testid: "message-delete",
          id: "message-delete",
          text: "Delete",
          on: {
            click: async () => {
              if (!(await confirmAction(`Delete the message “${m.subject || m.id}”?`, "Delete"))) return;
              try {
                await api(`/messages/${encodeURIComponent(m.id)}`, { method: "DELETE" });
                location.hash = "#mail";
                state.mail.signature = "";
                await refreshMail();
              } catch (err) {
                showError(err);
              }
            },
          },
        })
      )
    );
    const tabs = el("div", { class: "subtabs", role: "tablist", id: "message-tabs" });
    const body = el("div", { class: "message-body", id: "message-body", testid: "message-body" });
    let tab = state.mail.tab;
    if (tab === "html" && !m.html) tab = "text";
    if (tab === "text" && !m.text && m.html) tab = "html";
    for (const [key, label] of MESSAGE_TABS) {
      let count = "";
      if (key === "attachments") count = (m.attachments || []).length ? ` (${m.attachments.length})` : "";
      const button = el("button", {
        type: "button",
        class: "subtab",
        id: `message-tab-${key}`,
        testid: `message-tab-${key}`,
        role: "tab",
        text: label + count,
        data: { tab: key },
        on: {
          click: () => {
            state.mail.tab = key;
            selectMessageTab(m, key, tabs, body);
          },
        },
      });
      if ((key === "html" && !m.html) || (key === "text" && m.text === null)) button.classList.add("dim");
      tabs.append(button);
    }
    append(pane, [head, tabs, body]);
    selectMessageTab(m, tab, tabs, body);
  }

  function selectMessageTab(m, key, tabs, body) {
    for (const button of tabs.children) button.classList.toggle("active", button.dataset.tab === key);
    clear(body);
    const base = `${API}/messages/${encodeURIComponent(m.id)}`;
    if (key === "text") {
      body.append(m.text === null || m.text === undefined ? el("p", { class: "empty", text: "No plain-text part." }) : el("pre", { class: "text", id: "message-text", testid: "message-text", text: m.text }));
    } else if (key === "html") {
      if (!m.html) {
        body.append(el("p", { class: "empty", text: "No HTML part." }));
        return;
      }
      // Empty sandbox: no scripts, no same origin, no forms, no popups, no top navigation.
      const frame = document.createElement("iframe");
      frame.setAttribute("sandbox", "");
      frame.setAttribute("referrerpolicy", "no-referrer");
      frame.setAttribute("title", "The message's HTML (sanitised, sandboxed)");
      frame.id = "message-html";
      frame.dataset.testid = "message-html";
      frame.className = "html-frame";
      frame.src = state.mail.remote === m.id ? `${base}/html?remote=1` : `${base}/html`;
      const remote = el("button", {
        type: "button",
        class: "button small",
        id: "message-remote-images",
        testid: "message-remote-images",
        text: state.mail.remote === m.id ? "Block remote images" : "Load remote images",
        on: {
          click: () => {
            state.mail.remote = state.mail.remote === m.id ? null : m.id;
            selectMessageTab(m, "html", tabs, body);
          },
        },
      });
      body.append(
        el("div", { class: "frame-bar" }, el("span", { class: "muted", text: "Sanitised HTML; scripts never run." }), el("span", { class: "spacer" }), remote),
        frame
      );
    } else if (key === "headers") {
      const table = el("table", { class: "table compact headers", id: "message-headers", testid: "message-headers" });
      const rows = el("tbody");
      for (const [name, value] of m.headers || []) rows.append(el("tr", null, el("th", { text: name }), el("td", { class: "mono wrap", text: value })));
      table.append(rows);
      body.append(table);
    } else if (key === "raw") {
      const pre = el("pre", { class: "raw", id: "message-raw", testid: "message-raw", text: "Loading…" });
      body.append(pre);
      request(`${base}/raw`, { as: "text" }).then(
        (text) => {
          pre.textContent = text;
        },
        (err) => {
          pre.textContent = `Cannot load the source: ${err.message}`;
        }
      );
    } else if (key === "attachments") {
      const attachments = m.attachments || [];
      if (!attachments.length) {
        body.append(el("p", { class: "empty", text: "No attachments." }));
        return;
      }
      const rows = el("tbody");
      for (const a of attachments) {
        rows.append(
          el(
            "tr",
            { testid: "attachment" },
            el("td", null, el("a", { href: `${base}/parts/${encodeURIComponent(a.part)}`, download: a.filename || `part-${a.part}`, text: a.filename || `part ${a.part}` })),
            el("td", { class: "mono", text: a.contentType }),
            el("td", { class: "num", text: formatSize(a.size) })
          )
        );
      }
      body.append(el("table", { class: "table compact", id: "message-attachments" }, el("thead", null, el("tr", null, el("th", { text: "File" }), el("th", { text: "Type" }), el("th", { class: "num", text: "Size" }))), rows));
    } else if (key === "envelope") {
      body.append(envelopeView(m));
    }
  }

  function envelopeView(m) {
    const env = m.envelope || {};
    const session = m.session || {};
    const facts = el("dl", { class: "facts wide", id: "message-envelope" });
    const add = (name, value, isMono = true) => {
      if (value === undefined || value === null || value === "") return;
      facts.append(el("dt", { text: name }), el("dd", null, isMono ? mono(plain(value)) : plain(value)));
    };
    add("MAIL FROM", env.mailFrom || "<>");
    const params = env.mailParams && Object.entries(env.mailParams).map(([k, v]) => (v === null ? k : `${k}=${v}`)).join(" ");
    add("MAIL parameters", params);
    for (const r of env.recipients || []) {
      const p = r.params && Object.entries(r.params).map(([k, v]) => (v === null ? k : `${k}=${v}`)).join(" ");
      add("RCPT TO", p ? `${r.address} ${p}` : r.address);
    }
    add("Queue ID", env.queueID);
    add("Client", session.client ? `${session.clientName || session.client} [${session.client}]:${session.clientPort ?? ""}` : null);
    add("HELO", session.helo);
    add("Protocol", session.protocol);
    add("Listener", session.listener);
    add("TLS", session.tls ? `${session.tls.version} ${session.tls.cipher}` : "none", false);
    add("User", session.user);
    return facts;
  }

  // -- Sessions --------------------------------------------------------------

  function enterSessions() {
    poll(refreshSessions, SESSIONS_POLL);
  }

  async function refreshSessions() {
    const data = await api("/sessions");
    const sessions = data.sessions || [];
    const rows = clear($("sessions-rows"));
    for (const s of sessions) {
      const address = s.clientPort != null ? (String(s.client).includes(":") ? `[${s.client}]:${s.clientPort}` : `${s.client}:${s.clientPort}`) : s.client;
      const name = s.clientName && s.clientName !== s.client ? s.clientName : null;
      rows.append(
        el(
          "tr",
          { testid: "session-row", data: { id: s.id } },
          el("td", null, mono(s.id)),
          el("td", { text: s.listener }),
          el("td", { class: "session-client" }, mono(address), name ? el("div", { class: "muted small", text: name }) : null),
          el("td", null, mono(s.helo || "")),
          el("td", null, el("span", { class: "tag", text: s.stage || "" })),
          el("td", { text: s.tls ? `${s.tls.version || ""} ${s.tls.cipher || ""}`.trim() : "—" }),
          el("td", null, mono(s.user || "")),
          el("td", { class: "time", title: s.frontEnd ? `via XCLIENT front end ${s.frontEnd}` : "" }, formatTime(s.started), el("div", { class: "muted small", text: formatAge(typeof s.duration === "number" ? s.duration : now() - s.started) })),
          el("td", { class: "num", text: formatNumber(s.messages) }),
          el("td", { class: "num", text: formatSize(s.bytes) })
        )
      );
    }
    $("sessions-count").textContent = `${sessions.length} open`;
    show($("sessions-empty"), sessions.length === 0);
  }

  // -- Decisions -------------------------------------------------------------

  function decisionFilters() {
    return {
      q: $("decisions-q").value.trim(),
      code: $("decisions-code").value.trim(),
      client: $("decisions-client").value.trim(),
      address: $("decisions-address").value.trim(),
    };
  }

  function wireDecisions() {
    $("decisions-filter").addEventListener("submit", (e) => {
      e.preventDefault();
      if (state.page === "decisions") {
        leavePage();
        enterDecisions();
      }
    });
  }

  function enterDecisions() {
    const generation = state.generation;
    state.decisions.last = null;
    state.decisions.rows = [];
    renderDecisions();
    const loop = async () => {
      let failures = 0;
      while (generation === state.generation) {
        const controller = new AbortController();
        state.decisions.abort = controller;
        const first = state.decisions.last === null;
        const params = { ...decisionFilters(), limit: first ? 100 : 500 };
        if (!first) {
          params.after = state.decisions.last;
          params.wait = DECISIONS_WAIT;
        }
        try {
          const data = await api(`/decisions${query(params)}`, { signal: controller.signal });
          if (generation !== state.generation) return;
          failures = 0;
          setLive(true);
          const fresh = data.decisions || [];
          if (typeof data.last === "number") state.decisions.last = data.last;
          else if (fresh.length) state.decisions.last = Math.max(...fresh.map((d) => d.seq || 0));
          else if (first) state.decisions.last = 0;
          if (fresh.length || first) {
            state.decisions.rows = fresh.concat(state.decisions.rows).slice(0, DECISIONS_KEPT);
            renderDecisions();
          }
        } catch (err) {
          if (generation !== state.generation || (err && err.name === "AbortError")) return;
          setLive(false);
          showError(err);
          failures += 1;
          await new Promise((resolve) => setTimeout(resolve, Math.min(30000, 1000 * 2 ** failures)));
        }
      }
    };
    loop();
  }

  function renderDecisions() {
    const rows = clear($("decisions-rows"));
    for (const d of state.decisions.rows) {
      const code = d.code ?? codeOf(d.reply);
      rows.append(
        el(
          "tr",
          { testid: "decision-row", data: { seq: d.seq }, class: `decision ${replyClass(code)}` },
          el("td", { class: "time", text: formatTime(d.time) }),
          el("td", null, el("span", { class: "tag", text: d.event || "" })),
          el("td", null, mono(d.clientAddress || "")),
          el("td", null, mono(d.sender ?? "", "address")),
          el("td", null, mono(d.recipient ?? "", "address")),
          el("td", { class: "reply", title: d.text || "" }, d.reply ? replyNode(d.reply, code) : el("span", { text: d.text || "" })),
          el("td", null, mono(d.decider || "")),
          el("td", null, mono([d.sessionID, d.queueID].filter(Boolean).join(" / ")))
        )
      );
    }
    $("decisions-count").textContent = state.decisions.rows.length ? `${state.decisions.rows.length} shown` : "";
    show($("decisions-empty"), state.decisions.rows.length === 0);
  }

  // -- Queue -----------------------------------------------------------------

  function wireQueue() {
    let typing = null;
    $("queue-search").addEventListener("input", () => {
      clearTimeout(typing);
      typing = setTimeout(() => refreshQueue().catch(showError), 250);
    });
    $("queue-flush").addEventListener("click", () =>
      queueAction("Try every deferred message now (flush the queue)?", "Flush", "POST", "/queue/flush")
    );
  }

  function enterQueue() {
    poll(refreshQueue, QUEUE_POLL);
  }

  async function queueAction(text, label, method, path) {
    if (!(await confirmAction(text, label))) return;
    try {
      await api(path, { method });
      await refreshQueue();
      if (state.queue.selected) await showQueueEntry(state.queue.selected);
    } catch (err) {
      showError(err);
      refreshQueue().catch(() => {});
    }
  }

  // The queue's entries are rendered defensively: whatever fields the entry holds.
  const entryID = (e) => e.id ?? e.queueID ?? e.entry ?? "";
  const entrySender = (e) => e.sender ?? e.mailFrom ?? e.from ?? "";
  function entryRecipients(e) {
    const list = e.recipients ?? e.to ?? [];
    if (!Array.isArray(list)) return [{ address: plain(list) }];
    return list.map((r) => (typeof r === "string" ? { address: r } : r || {}));
  }
  function entryAge(e, serverNow) {
    if (typeof e.age === "number") return e.age;
    const arrived = e.arrived ?? e.arrival;
    return typeof arrived === "number" ? (serverNow ?? now()) - arrived : null;
  }
  function entryLastReply(e) {
    if (e.lastReply !== undefined && e.lastReply !== null) return e.lastReply;
    for (const r of entryRecipients(e)) if (r.reply) return r.reply;
    return null;
  }
  function entryHeld(e) {
    return e.held === true || e.state === "held" || e.status === "held";
  }

  async function refreshQueue() {
    const data = await api(`/queue${query({ q: $("queue-search").value.trim(), limit: 500 })}`);
    const messages = data.messages || data.entries || [];
    const destinations = clear($("queue-destination-rows"));
    for (const d of data.byDestination || []) {
      const oldest = typeof d.oldest === "number" ? (d.oldest > 1e9 ? (data.now ?? now()) - d.oldest : d.oldest) : null;
      destinations.append(
        el("tr", { testid: "queue-destination" }, el("td", null, mono(d.domain)), el("td", { class: "num", text: formatNumber(d.count) }), el("td", { text: oldest === null ? plain(d.oldest) : formatAge(oldest) }))
      );
    }
    const rows = clear($("queue-rows"));
    for (const e of messages) {
      const id = entryID(e);
      const held = entryHeld(e);
      const reply = entryLastReply(e);
      const recipients = entryRecipients(e);
      const status = held ? "held" : e.underWay ? "sending" : e.state || e.status || (e.attempts || reply ? "deferred" : "queued");
      const actions = el(
        "td",
        { class: "actions" },
        held
          ? el("button", { type: "button", class: "button small", testid: "queue-release", text: "Release", on: { click: (ev) => { ev.stopPropagation(); queueAction(`Release message ${id}?`, "Release", "POST", `/queue/${encodeURIComponent(id)}/release`); } } })
          : el("button", { type: "button", class: "button small", testid: "queue-hold", text: "Hold", on: { click: (ev) => { ev.stopPropagation(); queueAction(`Hold message ${id}? It will not be tried until released.`, "Hold", "POST", `/queue/${encodeURIComponent(id)}/hold`); } } }),
        el("button", { type: "button", class: "button small danger", testid: "queue-delete", text: "Delete", on: { click: (ev) => { ev.stopPropagation(); queueAction(`Delete message ${id} from the queue? It will not be delivered and no bounce is sent.`, "Delete", "DELETE", `/queue/${encodeURIComponent(id)}`); } } })
      );
      const row = el(
        "tr",
        { class: `row${held ? " held" : ""}${state.queue.selected === id ? " selected" : ""}`, testid: "queue-row", data: { id, held: held ? "true" : "false" } },
        el("td", null, mono(id)),
        el("td", null, mono(entrySender(e) || "<>", "address")),
        el("td", { title: recipients.map((r) => r.address).join(", ") }, mono(recipients[0] ? recipients[0].address : "", "address"), recipients.length > 1 ? el("span", { class: "muted", text: ` +${recipients.length - 1}` }) : null),
        el("td", { text: formatAge(entryAge(e, data.now)) }),
        el("td", { class: "num", text: formatSize(e.size) }),
        el("td", { class: "num", text: formatNumber(e.attempts ?? "") }),
        el("td", { class: "reply" }, replyNode(reply)),
        el("td", null, el("span", { class: `tag status-${status}`, testid: "queue-status", text: status })),
        actions
      );
      row.addEventListener("click", () => showQueueEntry(id).catch(showError));
      rows.append(row);
    }
    const total = data.total ?? messages.length;
    $("queue-count").textContent = `${total} message${total === 1 ? "" : "s"}`;
    show($("queue-empty"), messages.length === 0);
  }

  async function showQueueEntry(id) {
    state.queue.selected = id;
    for (const row of $("queue-rows").children) row.classList.toggle("selected", row.dataset.id === id);
    const box = $("queue-detail");
    let data;
    try {
      data = await api(`/queue/${encodeURIComponent(id)}`);
    } catch (err) {
      if (err.status === 404) {
        clear(box).append(el("p", { class: "empty", text: `Message ${id} is no longer in the queue.` }));
        show(box, true);
        return;
      }
      throw err;
    }
    const e = data.entry || data.message || data;
    clear(box);
    box.append(
      el("div", { class: "toolbar" }, el("h3", { text: `Message ${entryID(e) || id}` }), el("span", { class: "spacer" }), el("button", { type: "button", class: "button small ghost", text: "Close", on: { click: () => { state.queue.selected = null; show(box, false); } } }))
    );
    const facts = el("dl", { class: "facts wide", testid: "queue-facts" });
    const skip = new Set(["recipients", "head", "headers", "version"]);
    for (const [key, value] of Object.entries(e)) {
      if (skip.has(key) || value === null || value === undefined || value === "") continue;
      let text = plain(value);
      if (["arrival", "arrived", "nextAttempt", "lastAttempt", "scheduled", "received"].includes(key) && typeof value === "number") {
        text = `${formatTime(value)} (${value > now() ? "in " + formatAge(value - now()) : formatAge(now() - value) + " ago"})`;
      } else if (key === "lastReply") text = replyText(value);
      facts.append(el("dt", { text: key }), el("dd", null, mono(text)));
    }
    box.append(facts);
    const recipients = entryRecipients(e);
    if (recipients.length) {
      const rows = el("tbody");
      for (const r of recipients) {
        rows.append(el("tr", null, el("td", null, mono(r.address || plain(r))), el("td", { text: r.state || "" }), el("td", null, replyNode(r.reply)), el("td", { text: r.remote || "" }), el("td", { text: r.lastAttempt ? formatTime(r.lastAttempt) : "" })));
      }
      box.append(el("table", { class: "table compact" }, el("thead", null, el("tr", null, ["Recipient", "State", "Last reply", "Remote", "Last attempt"].map((h) => el("th", { text: h })))), rows));
    }
    const head = data.head ?? e.head;
    if (head) box.append(el("h3", { text: "Header" }), el("pre", { class: "raw", text: typeof head === "string" ? head : plain(head) }));
    show(box, true);
  }

  // -- Stats -----------------------------------------------------------------

  function enterStats() {
    poll(refreshStats, STATS_POLL);
  }

  const SERIES = [
    ["connections", "Connections"],
    ["accepted", "Messages accepted"],
    ["refused", "Refused"],
    ["queue", "Queue size"],
  ];

  async function refreshStats() {
    const data = await api("/stats");
    $("stats-interval").textContent = data.interval ? `one point every ${data.interval} s` : "";
    const totals = clear($("stats-totals"));
    for (const [key, value] of Object.entries(data.totals || {})) {
      totals.append(el("div", { class: "card stat", testid: `stat-${key}` }, el("div", { class: "stat-value", text: typeof value === "number" ? formatNumber(value) : plain(value) }), el("div", { class: "stat-label", text: humanize(key) })));
    }
    const charts = clear($("stats-charts"));
    const series = Array.isArray(data.series) ? data.series : [];
    for (const [key, label] of SERIES) {
      if (key === "queue" && state.info && !state.info.queue) continue;
      if (series.length && !series.some((p) => typeof p[key] === "number")) continue;
      charts.append(el("figure", { class: "card chart", testid: `chart-${key}` }, el("figcaption", { text: label }), lineChart(series, key, `series-${key}`)));
    }
    if (!charts.children.length) charts.append(el("p", { class: "empty", text: "No data yet." }));
    const reasons = Object.entries(data.refusedByReason || {}).sort((a, b) => b[1] - a[1]);
    const box = clear($("stats-reasons"));
    if (reasons.length) box.append(barChart(reasons, "Refused, by reason"));
    else box.append(el("p", { class: "empty", text: "Nothing refused." }));
    const codes = Object.entries(data.refusedByCode || {}).sort((a, b) => b[1] - a[1]);
    if (codes.length) box.append(el("h3", { text: "Refused, by reply code" }), barChart(codes, "Refused, by reply code"));
  }

  function humanize(key) {
    return key.replace(/([a-z])([A-Z])/g, "$1 $2").replace(/[_-]/g, " ").replace(/^./, (c) => c.toUpperCase());
  }

  function lineChart(points, key, cls) {
    const width = 560;
    const height = 160;
    const left = 44;
    const right = 8;
    const top = 10;
    const bottom = 22;
    const values = points.map((p) => (typeof p[key] === "number" ? p[key] : 0));
    const times = points.map((p) => p.time);
    const max = Math.max(1, ...values);
    const t0 = times.length ? Math.min(...times) : 0;
    const t1 = times.length ? Math.max(...times) : 1;
    const span = t1 - t0 || 1;
    const x = (t) => left + ((t - t0) / span) * (width - left - right);
    const y = (v) => top + (1 - v / max) * (height - top - bottom);
    const chart = svg("svg", { viewBox: `0 0 ${width} ${height}`, class: `chart-svg ${cls}`, role: "img", "aria-label": `${key}: latest ${values[values.length - 1] ?? 0}, peak ${max}` });
    for (const fraction of [0, 0.5, 1]) {
      const v = max * fraction;
      chart.append(svg("line", { x1: left, x2: width - right, y1: y(v), y2: y(v), class: "grid" }));
      chart.append(svg("text", { x: left - 6, y: y(v) + 4, class: "axis", "text-anchor": "end", text: Number.isInteger(v) ? v : v.toFixed(1) }));
    }
    if (points.length) {
      chart.append(svg("text", { x: left, y: height - 6, class: "axis", text: formatTime(t0, false) }));
      chart.append(svg("text", { x: width - right, y: height - 6, class: "axis", "text-anchor": "end", text: formatTime(t1, false) }));
    }
    if (points.length > 1) {
      const line = points.map((p, i) => `${i ? "L" : "M"}${x(p.time).toFixed(1)},${y(values[i]).toFixed(1)}`).join(" ");
      const area = `${line} L${x(t1).toFixed(1)},${y(0)} L${x(t0).toFixed(1)},${y(0)} Z`;
      chart.append(svg("path", { d: area, class: "area" }));
      chart.append(svg("path", { d: line, class: "line" }));
    } else if (points.length === 1) {
      chart.append(svg("circle", { cx: x(times[0]), cy: y(values[0]), r: 3, class: "dot" }));
    } else {
      chart.append(svg("text", { x: (left + width - right) / 2, y: height / 2, class: "axis", "text-anchor": "middle", text: "Waiting for the first sample…" }));
    }
    return chart;
  }

  function barChart(entries, title) {
    const width = 560;
    const bar = 18;
    const gap = 6;
    const left = 200;
    const height = entries.length * (bar + gap) + gap;
    const max = Math.max(1, ...entries.map(([, v]) => v));
    const chart = svg("svg", { viewBox: `0 0 ${width} ${height}`, class: "chart-svg bars", role: "img", "aria-label": title });
    entries.forEach(([name, value], i) => {
      const yTop = gap + i * (bar + gap);
      const w = Math.max(1, (value / max) * (width - left - 60));
      chart.append(svg("text", { x: left - 8, y: yTop + bar - 5, class: "axis", "text-anchor": "end", text: name.length > 32 ? `${name.slice(0, 31)}…` : name }));
      chart.append(svg("rect", { x: left, y: yTop, width: w, height: bar, rx: 2, class: "bar" }));
      chart.append(svg("text", { x: left + w + 6, y: yTop + bar - 5, class: "axis", text: formatNumber(value) }));
    });
    return chart;
  }

  // -- Settings --------------------------------------------------------------

  async function enterSettings() {
    const generation = state.generation;
    try {
      const data = await api("/settings");
      if (generation !== state.generation) return;
      state.settings = data;
      renderSettings(data);
    } catch (err) {
      showError(err);
    }
  }

  function settingRows(settings, filter) {
    const rows = el("tbody");
    for (const s of settings || []) {
      const name = s.name ?? "";
      const value = plain(s.value);
      if (filter && !`${name} ${value}`.toLowerCase().includes(filter)) continue;
      rows.append(el("tr", { testid: "setting-row", data: { name } }, el("th", null, mono(name)), el("td", null, mono(value === "" ? "—" : value, "wrap"))));
    }
    return rows;
  }

  function renderSettings(data) {
    if (!data) return;
    const filter = $("settings-search").value.trim().toLowerCase();
    const table = $("settings-table");
    table.replaceChild(settingRows(data.settings, filter), $("settings-rows") || table.tBodies[0]);
    table.tBodies[0].id = "settings-rows";
    const listeners = clear($("settings-listeners"));
    for (const l of data.listeners || []) {
      listeners.append(
        el("h3", null, "Listener ", mono(l.name), " ", el("span", { class: "muted mono", text: plain(l.endpoints && l.endpoints.length ? l.endpoints : l.endpoint) })),
        el("table", { class: "table compact", testid: "listener-settings" }, el("thead", null, el("tr", null, el("th", { text: "Setting" }), el("th", { text: "Value" }))), settingRows(l.settings, filter))
      );
    }
  }

  document.addEventListener("DOMContentLoaded", () => {
    start().catch(showError);
  });
})();
