// Herald's inbox page. Text from notifications is only ever set with textContent.
"use strict";
(function () {
  const CHANNELS = ["EMAIL", "PUSH", "SMS", "INAPP", "WEBSOCKET"];
  const TYPES = ["TASK_DEADLINE", "HABIT_REMINDER", "COMMENT", "PROJECT_MILESTONE"];
  const DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"];
  const $ = (id) => document.getElementById(id);
  const el = (tag, props, ...children) => {
    const node = document.createElement(tag);
    Object.assign(node, props || {});
    for (const child of children) node.append(child);
    return node;
  };

  // The token: from the fragment once, then from this tab's storage; never left in the address bar.
  const fragment = new URLSearchParams(location.hash.slice(1));
  if (fragment.get("token")) {
    sessionStorage.setItem("herald.token", fragment.get("token"));
    history.replaceState(null, "", location.pathname + location.search);
  }
  const token = sessionStorage.getItem("herald.token");
  let user = null;
  try {
    const payload = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
    user = JSON.parse(atob(payload)).sub;
  } catch (e) { user = null; }
  if (!token || !user) { $("signin").hidden = false; return; }
  $("app").hidden = false;
  $("who").textContent = user;
  const base = "/v1/users/" + encodeURIComponent(user);

  function status(text) { $("status").textContent = text || ""; }

  async function api(method, path, body) {
    const response = await fetch(base + path, {
      method, headers: Object.assign({ "Authorization": "Bearer " + token },
                                     body === undefined ? {} : { "Content-Type": "application/json" }),
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    const data = await response.json().catch(() => ({}));
    if (!response.ok) {
      const err = new Error((data.error && data.error.message) || response.statusText);
      err.status = response.status; err.data = data; throw err;
    }
    return data;
  }

  // The bell.
  function counts(c) {
    $("unread").textContent = String(c.unread);
    $("unseen").textContent = String(c.unseen);
    document.title = (c.unread ? "(" + c.unread + ") " : "") + "Herald inbox";
  }

  // The list.
  const shown = new Map();
  let cursor = null;

  function render(n) {
    const li = el("li", { className: "item" + (n.read ? "" : " unread") });
    li.dataset.id = n.notification_id;
    const title = el("div", { className: "title" });
    title.textContent = n.title;
    const body = el("div", { className: "body" });
    body.textContent = n.body;
    const meta = el("div", { className: "meta" });
    meta.textContent = [n.priority, n.type, n.kind !== "SINGLE" ? n.kind : "", new Date(n.created_at).toLocaleString()]
      .filter(Boolean).join(" · ");
    const read = el("button", { type: "button", className: "read", textContent: "Mark read", hidden: !!n.read });
    read.addEventListener("click", () => act(n.notification_id, "read"));
    const archive = el("button", { type: "button", className: "archive", textContent: "Archive" });
    archive.addEventListener("click", () => act(n.notification_id, "archive"));
    li.append(title, el("div", { className: "actions" }, read, archive), body, meta);
    return li;
  }

  function place(n, atTop) {
    const old = shown.get(n.notification_id);
    const li = render(n);
    shown.set(n.notification_id, li);
    if (old) old.replaceWith(li);
    else if (atTop) $("list").prepend(li);
    else $("list").append(li);
    $("empty").hidden = shown.size > 0;
  }

  async function load(more) {
    show(await api("GET", "/notifications?limit=20" + (more && cursor ? "&cursor=" + encodeURIComponent(cursor) : "")));
  }

  function show(page) {  // a page appended to the list; "More" goes on from its end
    for (const n of page.notifications) place(n, false);
    cursor = page.next_cursor;
    $("more").hidden = !cursor;
    $("empty").hidden = shown.size > 0;
  }

  async function act(id, action) {
    try {
      counts(await api("POST", "/notifications/" + encodeURIComponent(id) + "/" + action));
      const li = shown.get(id);
      if (li && action === "archive") { li.remove(); shown.delete(id); }
      if (li && action === "read") { li.classList.remove("unread"); li.querySelector("button.read").hidden = true; }
      $("empty").hidden = shown.size > 0;
    } catch (e) { status("Could not " + action + ": " + e.message); }
  }

  $("read-all").addEventListener("click", async () => {
    try {
      counts(await api("POST", "/notifications/read-all"));
      for (const li of shown.values()) { li.classList.remove("unread"); li.querySelector("button.read").hidden = true; }
    } catch (e) { status("Could not mark all read: " + e.message); }
  });
  $("more").addEventListener("click", () => load(true).catch((e) => status(e.message)));

  // The newest page again, placing at the top what the list lacks: a notification that arrived after the
  // list was read but before the socket was registered reaches the page through neither of them. When the
  // page shares nothing with a list that shows some, more came meanwhile than a page holds (or what it
  // showed was archived elsewhere): the list starts again from that page, so "More" pages on through the
  // ones in between rather than past them.
  async function catchUp() {
    const page = await api("GET", "/notifications?limit=20");
    const gap = shown.size > 0 && !page.notifications.some((n) => shown.has(n.notification_id));
    if (gap) {
      shown.clear();
      $("list").replaceChildren();
      show(page);
      return;
    }
    for (const n of [...page.notifications].reverse()) if (!shown.has(n.notification_id)) place(n, true);
    $("empty").hidden = shown.size > 0;
  }

  // Live: the WebSocket, reconnecting with a growing pause. The counts come first on each connect, sent
  // once the server has registered the socket: from then on every new row is pushed, so the list catches
  // up with what came before.
  let pause = 1000;
  function connect() {
    const scheme = location.protocol === "https:" ? "wss://" : "ws://";
    const ws = new WebSocket(scheme + location.host + base + "/stream?access_token=" + encodeURIComponent(token));
    let registered = false;
    ws.addEventListener("open", () => { pause = 1000; $("live").textContent = "live"; status(""); });
    ws.addEventListener("message", (event) => {
      let frame;
      try { frame = JSON.parse(event.data); } catch (e) { return; }
      if (frame.type === "unread") counts(frame);
      else if (frame.type === "notification") place(frame.notification, true);
      if (frame.type === "unread" && !registered) {
        registered = true;
        catchUp().catch((e) => status(e.message));
      }
    });
    ws.addEventListener("close", (event) => {
      $("live").textContent = "offline";
      if (event.code === 1008 && event.reason && event.reason.indexOf("token") >= 0) return;
      setTimeout(connect, pause);
      pause = Math.min(pause * 2, 30000);
    });
  }

  // Preferences.
  function flag(container, name, on) {
    const id = container.id + "-" + name;
    const box = el("input", { type: "checkbox", id, checked: on });
    box.dataset.name = name;
    container.append(el("label", {}, box, " " + name));
  }

  function dndRow(w) {
    const day = el("select", { className: "dnd-day" });
    DAYS.forEach((d, i) => day.append(el("option", { value: String(i), textContent: d, selected: w.day === i })));
    const start = el("input", { type: "text", className: "dnd-start", value: w.start || "", size: 5, placeholder: "09:00" });
    const end = el("input", { type: "text", className: "dnd-end", value: w.end || "", size: 5, placeholder: "17:00" });
    const remove = el("button", { type: "button", textContent: "Remove" });
    const li = el("li", { className: "row" }, day, start, " to ", end, remove);
    remove.addEventListener("click", () => li.remove());
    $("dnd").append(li);
  }

  function fill(p) {
    $("channels").replaceChildren(); $("types").replaceChildren(); $("dnd").replaceChildren();
    for (const c of CHANNELS) flag($("channels"), c, p.channels[c] !== false);
    for (const t of new Set([...TYPES, ...Object.keys(p.types)])) flag($("types"), t, p.types[t] !== false);
    $("minimum_priority").value = p.minimum_priority;
    $("timezone").value = p.timezone;
    $("quiet-on").checked = !!p.quiet_hours;
    $("quiet-start").value = p.quiet_hours ? p.quiet_hours.start : "";
    $("quiet-end").value = p.quiet_hours ? p.quiet_hours.end : "";
    for (const w of p.dnd) dndRow(w);
    $("digest_mode").value = p.digest_mode;
    $("digest_time").value = p.digest_time || "";
    $("digest_day").value = p.digest_day === null ? "" : String(p.digest_day);
    $("batching").checked = p.batching;
    $("batch_window_s").value = p.batch_window_s;
    $("max_batch_size").value = p.max_batch_size;
    $("max_per_hour").value = p.max_per_hour === null ? "" : p.max_per_hour;
  }

  function number(id) {
    const v = $(id).value.trim();
    return v === "" ? null : Number(v);
  }

  function collect() {
    const flags = (id) => Object.fromEntries([...$(id).querySelectorAll("input")].map((b) => [b.dataset.name, b.checked]));
    return {
      channels: flags("channels"), types: flags("types"),
      minimum_priority: $("minimum_priority").value, timezone: $("timezone").value.trim(),
      quiet_hours: $("quiet-on").checked ? { start: $("quiet-start").value.trim(), end: $("quiet-end").value.trim() } : null,
      dnd: [...$("dnd").children].map((li) => ({
        day: Number(li.querySelector(".dnd-day").value), start: li.querySelector(".dnd-start").value.trim(),
        end: li.querySelector(".dnd-end").value.trim() })),
      digest_mode: $("digest_mode").value,
      digest_time: $("digest_time").value.trim() || null,
      digest_day: $("digest_day").value === "" ? null : Number($("digest_day").value),
      batching: $("batching").checked,
      batch_window_s: number("batch_window_s"), max_batch_size: number("max_batch_size"),
      max_per_hour: number("max_per_hour"),
    };
  }

  $("add-type").addEventListener("click", () => {
    const name = $("new-type").value.trim().toUpperCase();
    if (name && !$("types").querySelector('input[data-name="' + CSS.escape(name) + '"]')) flag($("types"), name, true);
    $("new-type").value = "";
  });
  $("add-dnd").addEventListener("click", () => dndRow({ day: 0, start: "", end: "" }));
  $("prefs").addEventListener("submit", async (event) => {
    event.preventDefault();
    $("problems").replaceChildren(); $("saved").textContent = "";
    const body = collect();
    for (const key of ["batch_window_s", "max_batch_size"]) if (body[key] === null) delete body[key];
    try {
      fill(await api("PUT", "/preferences", body));
      $("saved").textContent = "Saved " + new Date().toLocaleTimeString();
    } catch (e) {
      const fields = (e.data && e.data.error && e.data.error.fields) || {};
      const keys = Object.keys(fields);
      if (!keys.length) $("problems").append(el("li", { textContent: e.message }));
      for (const k of keys) $("problems").append(el("li", { textContent: k + ": " + fields[k] }));
    }
  });

  DAYS.forEach((d, i) => $("digest_day").append(el("option", { value: String(i), textContent: d })));
  try {
    for (const z of Intl.supportedValuesOf("timeZone")) $("zones").append(el("option", { value: z }));
  } catch (e) { /* an older browser: the field still takes any name */ }

  Promise.all([
    api("GET", "/unread-count").then(counts),
    load(false),
    api("GET", "/preferences").then(fill),
  ]).catch((e) => status(e.status === 401 || e.status === 403 ? "Sign-in failed: " + e.message : e.message));
  connect();
})();
