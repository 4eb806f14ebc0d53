"use strict";
// The admin page: renders from the same /api/v1/* routes as the REST API.
// Every text from the server goes in through textContent (node names come
// from clients), and every state-changing request carries the session's
// CSRF token.
let csrf = "", users = [], nodesSeen = "", timer = 0, serverUrl = "";
const $ = (id) => document.getElementById(id);
// The page the address asks for.
const here = () => {
  const p = (location.hash.slice(1) || "tailnet").split("/")[0];
  return PAGES[p] ? p : "tailnet";
};
// Replaces the content with page `page`'s (lists flattened, blanks
// dropped), unless the user has moved on while it loaded (null: always).
function show(page, ...k) {
  if (page && page !== here()) return;
  $("main").replaceChildren(...k.flat().filter((x) => x != null && x !== ""));
}

// h("tag.class", {attr: v, onclick: f}, child...): a DOM element.
function h(spec, attrs, ...kids) {
  const [tag, cls] = spec.split(".");
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  Object.entries(attrs || {}).forEach(([k, v]) => {
    if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else if (v !== false && v != null) e.setAttribute(k, v === true ? "" : v);
  });
  kids.flat().forEach((k) => { if (k != null) e.append(k.nodeType ? k : String(k)); });
  return e;
}

function say(text, bad) {
  const m = $("msg");
  m.textContent = text || "";
  m.className = text ? (bad ? "err" : "ok") : "";
}

async function api(method, path, body) {
  const opt = { method, headers: {}, credentials: "same-origin" };
  if (method !== "GET") opt.headers["X-CSRF-Token"] = csrf;
  if (body !== undefined) {
    opt.headers["Content-Type"] = "application/json";
    opt.body = JSON.stringify(body);
  }
  const r = await fetch(path, opt);
  const t = await r.text();
  let j = {};
  try { j = t ? JSON.parse(t) : {}; } catch (e) { j = { message: t }; }
  if (r.status === 401) loggedOut(j.message);
  if (!r.ok) throw new Error(j.message || r.status + " " + r.statusText);
  return j;
}

function loggedOut(why) {
  clearInterval(timer);
  show(null, h("h1", {}, "Not logged in"),
    h("p", {}, why || "This browser has no session."),
    h("p", {}, "On the server, run ", h("code", {}, "tinyscale web login"), " and open the link it prints."));
}

// Runs an action, then reports and re-renders.
async function act(what, f) {
  try {
    await f();
    say(what + ": done");
    nodesSeen = "";
    route();
  } catch (e) {
    say(what + ": " + e.message, true);
  }
}

const ago = (t) => {
  if (!t) return "never";
  const s = Math.round((Date.now() - Date.parse(t)) / 1000);
  if (s < 60) return "just now";
  if (s < 3600) return Math.round(s / 60) + " min ago";
  if (s < 86400) return Math.round(s / 3600) + " h ago";
  return Math.round(s / 86400) + " d ago";
};
const isExit = (r) => r === "0.0.0.0/0" || r === "::/0";

// A small inline form: fields [{name, label, value}], then submit(values).
function ask(card, title, fields, submit) {
  const old = card.querySelector("form");
  if (old) old.remove();
  const inputs = fields.map((f) => h("input", { name: f.name, value: f.value || "", "aria-label": f.label, placeholder: f.label }));
  const form = h("form.inline", {
    onsubmit: (e) => {
      e.preventDefault();
      const v = {};
      inputs.forEach((i) => { v[i.name] = i.value.trim(); });
      submit(v);
    },
  }, h("span", {}, title), inputs, h("button.p", { type: "submit" }, "Save"),
  h("button", { type: "button", onclick: () => form.remove() }, "Cancel"));
  card.append(form);
  inputs[0].focus();
}

// ----- Tailnet
function nodeCard(n) {
  const card = h("div.card", { "data-node": n.id });
  const owner = n.tags && n.tags.length ? n.tags.map((t) => h("span.tag", {}, t)) : (n.user ? n.user.name : "");
  const adv = n.availableRoutes || [], ok = n.approvedRoutes || [];
  const routes = adv.map((r) => {
    const on = ok.includes(r);
    return h("label", {}, h("input", {
      type: "checkbox", checked: on, "data-route": r,
      onchange: (e) => {
        const want = ok.filter((x) => x !== r);
        if (e.target.checked) want.push(r);
        act("Routes of " + n.givenName, () => api("POST", `/api/v1/node/${n.id}/approve_routes`, { routes: want }));
      },
    }), " ", isExit(r) ? "exit node (" + r + ")" : r, " ");
  });
  card.append(...[
    h("h3", {}, h("span", { class: "dot" + (n.online ? " on" : ""), title: n.online ? "online" : "offline" }), n.givenName,
      h("span.muted", {}, " ", n.online ? "online" : "offline, last seen " + ago(n.lastSeen))),
    h("div.row", {}, h("span", {}, owner), h("span.muted", {}, (n.ipAddresses || []).join(" · "))),
    h("div.muted", {}, "hostname ", n.name, " · client ", n.clientVersion || "?", " · key expiry ",
      n.expiry && !n.expiry.startsWith("0001") ? n.expiry : "none"),
    adv.length ? h("div", {}, h("span.muted", {}, "Routes (checked = approved): "), routes) : null,
    h("div.row", {},
      h("button", { onclick: () => ask(card, "Rename", [{ name: "n", label: "new name", value: n.givenName }],
        (v) => act("Rename", () => api("POST", `/api/v1/node/${n.id}/rename/${encodeURIComponent(v.n)}`))) }, "Rename"),
      h("button", { onclick: () => ask(card, "Tags", [{ name: "t", label: "tag:a, tag:b", value: (n.tags || []).join(", ") }],
        (v) => act("Tags", () => api("POST", `/api/v1/node/${n.id}/tags`, { tags: v.t ? v.t.split(/[\s,]+/).filter(Boolean) : [] }))) }, "Tags"),
      h("button", { onclick: () => act("Expire " + n.givenName, () => api("POST", `/api/v1/node/${n.id}/expire`)) }, "Expire key"),
      h("button.d", { onclick: () => ask(card, "Delete " + n.givenName + "? Type its name:", [{ name: "c", label: "name" }],
        (v) => v.c === n.givenName ? act("Delete", () => api("DELETE", `/api/v1/node/${n.id}`)) : say("name does not match", true)) }, "Delete"))].filter(Boolean));
  return card;
}

async function tailnet(quiet) {
  const r = await api("GET", "/api/v1/node");
  const nodes = r.nodes || [];
  const sig = JSON.stringify(nodes.map((n) => [n.id, n.online, n.givenName, n.tags, n.approvedRoutes, n.availableRoutes, n.expiry, n.lastSeen]));
  if (quiet && sig === nodesSeen) return; // unchanged: keep focus and open forms
  nodesSeen = sig;
  const on = nodes.filter((n) => n.online).length;
  show("tailnet", h("h1", {}, "Tailnet"),
    h("p.muted", { id: "summary" }, `${nodes.length} nodes, ${on} online (updates live)`),
    nodes.length ? nodes.map(nodeCard) : h("p", {}, "No nodes yet: create a key under Users & keys, or approve a pending login."));
}

// ----- Pending logins
async function pending(focus) {
  const [p, u] = await Promise.all([api("GET", "/api/v1/web/pending"), api("GET", "/api/v1/user")]);
  users = u.users || [];
  const list = p.pending || [];
  show("pending", h("h1", {}, "Pending logins"),
    h("p.muted", {}, "Machines that ran ", h("code", {}, "tailscale up --login-server …"), " without a key wait here."),
    list.length ? "" : h("p", { id: "nopending" }, "Nobody is waiting."),
    list.map((x) => {
      const sel = h("select", { "aria-label": "user" }, users.map((us) => h("option", { value: us.name }, us.name)));
      const card = h("div.card", { "data-auth": x.authId },
        h("h3", {}, x.hostname || "(no hostname)", h("span.muted", {}, " ", x.os, " · expires in ", Math.ceil(x.expiresInSeconds / 60), " min")),
        h("div.muted", {}, "ID ", x.authId),
        users.length ? h("div.row", {}, h("label", {}, "Approve as user ", sel),
          h("button.p", { onclick: () => act("Approve " + x.hostname, () => api("POST", "/api/v1/auth/register", { authId: x.authId, user: sel.value })) }, "Approve"),
          h("button.d", { onclick: () => act("Reject", () => api("POST", "/api/v1/auth/reject", { authId: x.authId })) }, "Reject"))
          : h("p", {}, "Create a user first (Users & keys)."));
      if (x.authId === focus) card.classList.add("focus");
      return card;
    }));
}

// ----- Users and keys
function showKey(box, k) {
  const line = `tailscale up --login-server ${serverUrl} --authkey ${k.key}`;
  const c = h("canvas", { id: "qr", "aria-label": "QR code of the command line" });
  const rows = window.qrEncode ? qrEncode(line) : null;
  if (rows) qrDraw(c, rows, 4);
  box.replaceChildren(h("h3", {}, "New key (shown once)"),
    h("div.key", { id: "newkey" }, k.key),
    h("button", { onclick: () => navigator.clipboard.writeText(k.key).then(() => say("copied"), () => say("copy failed: select the key", true)) }, "Copy key"),
    h("p", {}, "On the machine:"), h("div.key", { id: "upline" }, line),
    h("button", { onclick: () => navigator.clipboard.writeText(line).then(() => say("copied"), () => say("copy failed", true)) }, "Copy command"),
    rows ? h("div", {}, c) : h("p", {}, "(too long for a QR code)"));
}

async function usersPage() {
  const [u, k] = await Promise.all([api("GET", "/api/v1/user"), api("GET", "/api/v1/preauthkey")]);
  users = u.users || [];
  const keys = k.preAuthKeys || [];
  const newKey = h("div.card", { id: "keybox", hidden: true });
  const uname = h("input", { name: "user", placeholder: "name", "aria-label": "new user name", required: true });
  const kuser = h("select", { "aria-label": "key owner" }, h("option", { value: "" }, "(tagged)"), users.map((x) => h("option", { value: x.name }, x.name)));
  const reusable = h("input", { type: "checkbox", "aria-label": "reusable" });
  const ephemeral = h("input", { type: "checkbox", "aria-label": "ephemeral" });
  const hours = h("input", { type: "number", min: 1, value: 24, class: "num", "aria-label": "hours valid" });
  const tags = h("input", { placeholder: "tag:x (optional)", "aria-label": "tags" });
  show("users", h("h1", {}, "Users"),
    h("form.inline", {
      id: "newuser",
      onsubmit: (e) => { e.preventDefault(); act("Create user", () => api("POST", "/api/v1/user", { name: uname.value.trim() })); },
    }, uname, h("button.p", { type: "submit" }, "Create user")),
    users.map((x) => {
      const card = h("div.card", { "data-user": x.name }, h("h3", {}, x.name, h("span.muted", {}, " id ", x.id)),
        h("button", { onclick: () => ask(card, "Rename", [{ name: "n", label: "new name", value: x.name }],
          (v) => act("Rename user", () => api("POST", `/api/v1/user/${x.id}/rename/${encodeURIComponent(v.n)}`))) }, "Rename"),
        h("button.d", { onclick: () => act("Delete user " + x.name, () => api("DELETE", `/api/v1/user/${x.id}`)) }, "Delete"));
      return card;
    }),
    h("h1", {}, "Pre-auth keys"),
    h("form.inline", {
      id: "newkeyform",
      onsubmit: async (e) => {
        e.preventDefault();
        try {
          const exp = new Date(Date.now() + Number(hours.value || 24) * 3600e3).toISOString();
          const t = tags.value.trim() ? tags.value.trim().split(/[\s,]+/) : [];
          const r = await api("POST", "/api/v1/preauthkey", { user: kuser.value, reusable: reusable.checked, ephemeral: ephemeral.checked, expiration: exp, aclTags: t });
          newKey.hidden = false;
          showKey(newKey, r.preAuthKey);
          say("Key created");
        } catch (err) { say("Create key: " + err.message, true); }
      },
    }, h("label", {}, "owner ", kuser), h("label", {}, reusable, " reusable"), h("label", {}, ephemeral, " ephemeral"),
    h("label", {}, "valid ", hours, " h"), tags, h("button.p", { type: "submit" }, "Create key")),
    newKey,
    keys.map((x) => h("div.card", { "data-key": x.id },
      h("div", {}, h("code", {}, x.key), " ", x.user ? x.user.name : (x.aclTags || []).join(" "),
        x.reusable ? " · reusable" : "", x.ephemeral ? " · ephemeral" : "", x.used ? " · used" : "", " · expires ", x.expiration || "never"),
      h("button", { onclick: () => act("Expire key", () => api("POST", "/api/v1/preauthkey/expire", { id: x.id })) }, "Expire"),
      h("button.d", { onclick: () => act("Delete key", () => api("DELETE", "/api/v1/preauthkey?id=" + encodeURIComponent(x.id))) }, "Delete"))));
}

// ----- Policy
async function policyPage() {
  const p = await api("GET", "/api/v1/policy");
  const nums = h("pre", { "aria-hidden": "true" });
  const ta = h("textarea", { id: "policy", spellcheck: "false", "aria-label": "policy (HuJSON)" });
  ta.value = p.policy || "";
  const out = h("pre", { id: "policyresult", role: "status" });
  const when = (t) => (t && !t.startsWith("0001") ? t : "-");
  const last = h("span", { id: "policyset" }, when(p.updatedAt));
  let bad = 0;
  const draw = () => {
    const n = ta.value.split("\n").length;
    nums.replaceChildren(...Array.from({ length: n }, (_, i) => i + 1 === bad ? h("b", { id: "errline" }, i + 1) : (i + 1) + "\n"));
    nums.scrollTop = ta.scrollTop;
  };
  ta.addEventListener("input", () => { bad = 0; draw(); });
  ta.addEventListener("scroll", () => { nums.scrollTop = ta.scrollTop; });
  const run = async (what, f) => {
    try {
      const r = await f();
      if (r.updatedAt) last.textContent = when(r.updatedAt);
      bad = 0;
      out.textContent = what === "check" ? "Valid; the policy's tests passed." : "Saved and in force.";
      out.className = "ok";
    } catch (e) {
      const m = /at (\d+):(\d+)/.exec(e.message);
      bad = m ? Number(m[1]) : 0;
      out.textContent = (bad ? "Line " + bad + ": " : "") + e.message;
      out.className = "err";
    }
    draw();
    if (bad) $("errline").scrollIntoView({ block: "center" });
  };
  show("policy", h("h1", {}, "Policy"),
    h("p.muted", {}, "Last set: ", last),
    h("div.editor", {}, nums, ta),
    h("div.row", {},
      h("button", { id: "check", onclick: () => run("check", () => api("POST", "/api/v1/policy/check", { policy: ta.value })) }, "Check"),
      h("button.p", { id: "save", onclick: () => run("save", () => api("PUT", "/api/v1/policy", { policy: ta.value })) }, "Save")),
    out);
  draw();
}

// ----- Status
async function statusPage() {
  const s = await api("GET", "/api/v1/web/status");
  const mb = (b) => (b / 1048576).toFixed(2) + " MiB";
  const up = (t) => Math.floor(t / 86400) + " d " + Math.floor((t % 86400) / 3600) + " h " + Math.floor((t % 3600) / 60) + " min";
  const item = (k, v) => [h("dt", {}, k), h("dd", {}, v)];
  show("status", h("h1", {}, "Status"),
    h("dl", { id: "status" },
      item("Version", "tinyscale " + s.version), item("Uptime", up(s.uptimeSeconds)), item("Server URL", s.serverUrl),
      item("Database", mb(s.databaseBytes) + (s.databaseHealthy ? ", healthy" : ", NOT HEALTHY")),
      item("Nodes", s.nodes + " (" + s.online + " connected)"),
      item("DERP relay", s.derp ? s.derp.clients + " clients, " + s.derp.packetsRelayed + " packets relayed, " + s.derp.packetsDropped + " dropped" + (s.derp.served ? "" : " (not offered: TLS listener not bound)") : "off"),
      item("DERP regions", s.derpRegions.map((r) => r.code + " (" + r.id + ", " + r.nodes + " nodes)").join(", ") || "none"),
      item("STUN", s.stun || "off"), item("Policy", s.policyMode), item("Browser sessions", String(s.sessions)),
      item("Memory", s.residentBytes != null ? mb(s.residentBytes) + " resident" : "?"),
      item("Open files", s.openFiles != null ? String(s.openFiles) : "?")));
}

// ----- Router
const PAGES = { tailnet, pending, users: usersPage, policy: policyPage, status: statusPage };
async function route() {
  const page = here(), arg = location.hash.split("/")[1];
  document.querySelectorAll("nav a").forEach((a) => a.classList.toggle("on", a.getAttribute("href") === "#" + page));
  clearInterval(timer);
  try {
    await PAGES[page](arg);
  } catch (e) {
    if (csrf) say(e.message, true);
    return;
  }
  // Live updates while the Tailnet page is shown (one timer, however
  // many renders overlapped).
  if (page === "tailnet" && here() === "tailnet") {
    clearInterval(timer);
    timer = setInterval(() => tailnet(true).catch((e) => say(e.message, true)), 2000);
  }
  countPending();
}

async function countPending() {
  try {
    const p = await api("GET", "/api/v1/web/pending");
    $("npending").textContent = p.pending.length ? "(" + p.pending.length + ")" : "";
  } catch (e) { /* shown elsewhere */ }
}

window.addEventListener("hashchange", () => { say(""); nodesSeen = ""; route(); });
$("logout").addEventListener("click", async () => {
  try { await api("POST", "/api/v1/web/logout"); } catch (e) { /* gone already */ }
  csrf = "";
  loggedOut("Logged out.");
});

(async () => {
  try {
    const s = await api("GET", "/api/v1/web/session");
    csrf = s.csrf;
    serverUrl = (await api("GET", "/api/v1/web/status")).serverUrl;
  } catch (e) {
    loggedOut(e.message);
    return;
  }
  route();
})();
