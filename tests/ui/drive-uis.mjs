// Drives Headplane and headscale-ui (built from their own checkouts, outside this repository)
// in headless Chromium against a running tinyscale. Started by tests/ui/drive-uis.sh, which
// sets the environment below; not part of CI. Every step is done through the UI's own pages,
// then checked through tinyscale's REST API (so a PASS means the server really changed), and
// ends with a screenshot OUT/<ui>-<nn>-<step>.png. Prints `PASS|FAIL|N/A <ui> <step>: detail`.
//
// Env: TS_URL (tinyscale, e.g. http://198.18.77.1:18480), API_KEY, NODE_NAME (the real node's
// hostname), ROUTER_NAME + ROUTE (the node advertising ROUTE), OUT, CHROMIUM,
// HSUI_DIR (headscale-ui checkout, built), HSUI_PORT, HP_URL (running Headplane, or empty),
// ONLY ("hsui" or "headplane" to drive one).
import { createRequire } from "node:module";
import http from "node:http";
import fs from "node:fs";
import path from "node:path";

const require = createRequire(process.env.DRIVER_NODE_MODULES + "/");
const { chromium } = require("playwright-core");

const env = (k, d) => process.env[k] ?? d;
const TS = env("TS_URL");
const KEY = env("API_KEY");
const OUT = env("OUT");
const NODE = env("NODE_NAME", "");
const ROUTER = env("ROUTER_NAME", "");
const ROUTE = env("ROUTE", "");
const ONLY = env("ONLY", "");
const results = [];

function report(ui, step, status, detail = "") {
  results.push({ ui, step, status, detail });
  console.log(`${status.padEnd(4)} ${ui} ${step}${detail ? ": " + detail : ""}`);
}

async function api(method, p, body) {
  const r = await fetch(TS + "/api/v1/" + p, {
    method,
    headers: { Authorization: `Bearer ${KEY}`, "Content-Type": "application/json" },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await r.text();
  try {
    return { status: r.status, json: JSON.parse(text) };
  } catch {
    return { status: r.status, json: null, text };
  }
}
const nodes = async () => (await api("GET", "node")).json.nodes;
const nodeByName = async (n) => (await nodes()).find((x) => x.name === n || x.givenName === n);

async function until(what, fn, ms = 15000) {
  const end = Date.now() + ms;
  let last;
  while (Date.now() < end) {
    try {
      last = await fn();
      if (last) return last;
    } catch (e) {
      last = e;
    }
    await new Promise((r) => setTimeout(r, 250));
  }
  throw new Error(`${what}: not within ${ms / 1000}s (last: ${last})`);
}

// One step: run fn(), screenshot, report. fn returns a detail string, or throws.
async function step(ui, n, name, page, fn) {
  const shot = path.join(OUT, `${ui}-${String(n).padStart(2, "0")}-${name}.png`);
  try {
    const detail = await fn();
    await page.screenshot({ path: shot, fullPage: true }).catch(() => {});
    report(ui, name, "PASS", `${detail ?? ""} [${path.basename(shot)}]`);
  } catch (e) {
    await page.screenshot({ path: shot, fullPage: true }).catch(() => {});
    report(ui, name, "FAIL", `${String(e.message ?? e).split("\n")[0]} [${path.basename(shot)}]`);
  }
}

// headscale-ui is a static site that must share its origin with the API: serve its build under
// /web and proxy everything else to tinyscale (what its README's Caddy example does).
function serveHsui(dir, port) {
  const types = { ".html": "text/html", ".js": "text/javascript", ".css": "text/css", ".png": "image/png", ".svg": "image/svg+xml", ".json": "application/json", ".ico": "image/x-icon", ".webmanifest": "application/manifest+json" };
  const root = path.join(dir, "build");
  const srv = http.createServer((req, res) => {
    const u = new URL(req.url, "http://x");
    if (u.pathname === "/web" || u.pathname.startsWith("/web/")) {
      let f = path.normalize(path.join(root, decodeURIComponent(u.pathname.slice(4)) || "/"));
      if (!f.startsWith(root)) return res.writeHead(403).end();
      if (fs.existsSync(f) && fs.statSync(f).isDirectory()) f = path.join(f, "index.html");
      if (!fs.existsSync(f)) f = path.join(root, "index.html"); // the SPA fallback
      res.writeHead(200, { "Content-Type": types[path.extname(f)] ?? "application/octet-stream" });
      return fs.createReadStream(f).pipe(res);
    }
    const t = new URL(TS);
    const up = http.request(
      { host: t.hostname, port: t.port, method: req.method, path: req.url, headers: { ...req.headers, host: t.host } },
      (r) => {
        res.writeHead(r.statusCode, r.headers);
        r.pipe(res);
      },
    );
    up.on("error", (e) => res.writeHead(502).end(String(e)));
    req.pipe(up);
  });
  return new Promise((ok) => srv.listen(port, "127.0.0.1", () => ok(srv)));
}

async function driveHsui(browser) {
  const ui = "headscale-ui";
  const port = Number(env("HSUI_PORT", "18482"));
  const srv = await serveHsui(env("HSUI_DIR"), port);
  const origin = `http://127.0.0.1:${port}`;
  const ctx = await browser.newContext({ viewport: { width: 1280, height: 900 } });
  const page = await ctx.newPage();
  const alerts = [];
  page.on("response", (r) => r.status() >= 400 && alerts.push(`${r.status()} ${r.request().method()} ${new URL(r.url()).pathname}`));
  let n = 0;

  await step(ui, ++n, "login-api-key", page, async () => {
    await page.goto(origin + "/web/settings.html");
    await page.locator('input[type="url"]').fill(origin);
    await page.locator('input[type="password"]').fill(KEY);
    await page.getByRole("button", { name: "Save API Key" }).click();
    await page.locator('svg[stroke="green"]').waitFor({ timeout: 10000 });
    return "settings page: key accepted (green check), `GET /api/v1/apikey` answered";
  });

  await step(ui, ++n, "list-users", page, async () => {
    await page.goto(origin + "/web/users.html");
    await page.getByText("alice", { exact: false }).first().waitFor({ timeout: 10000 });
    return "user alice shown";
  });

  await step(ui, ++n, "list-nodes", page, async () => {
    await page.goto(origin + "/web/devices.html");
    const want = [NODE, ROUTER].filter(Boolean);
    for (const w of want) await page.getByText(new RegExp(`\\d+: ${w}\\b`)).first().waitFor({ timeout: 10000 });
    return `nodes ${want.join(", ")} shown`;
  });

  await step(ui, ++n, "list-keys", page, async () => {
    // pre-auth keys: in each user's card (headscale-ui lists no API keys; it only reads them for
    // the expiry tooltip next to its key field, matching the stored key against `prefix`)
    await page.goto(origin + "/web/users.html");
    await page.getByText("alice").first().click();
    const keys = (await api("GET", "preauthkey")).json.preAuthKeys.filter((k) => k.user?.name === "alice");
    await page.locator("code", { hasText: keys[0].key.slice(0, 16) }).first().waitFor({ timeout: 10000 });
    return `alice's pre-auth key ${keys[0].key.slice(0, 16)}… listed in her card`;
  });

  await step(ui, ++n, "create-user", page, async () => {
    await page.goto(origin + "/web/users.html");
    await page.getByRole("button", { name: "+ New User" }).click();
    await page.locator('input[placeholder="name"]').fill("carol-hsui");
    await page.locator('input[placeholder="name"]').press("Enter");
    await until("user carol-hsui in the API", async () => (await api("GET", "user?name=carol-hsui")).json.users?.length === 1);
    await page.getByText("carol-hsui").first().waitFor();
    return "carol-hsui created and listed";
  });

  await step(ui, ++n, "create-preauth-key", page, async () => {
    const before = (await api("GET", "preauthkey")).json.preAuthKeys.length;
    await page.goto(origin + "/web/users.html");
    const card = page.locator(".card-primary", { hasText: "carol-hsui" });
    await card.getByText("carol-hsui").first().click();
    await card.locator("th", { hasText: "Preauth Keys" }).locator("button").first().click();
    await card.getByRole("button", { name: "Create Preauth Key" }).click();
    const k = await until("a new pre-auth key for carol-hsui", async () => {
      const all = (await api("GET", "preauthkey")).json.preAuthKeys;
      return all.length > before && all.find((x) => x.user?.name === "carol-hsui");
    });
    await card.locator("code", { hasText: k.key.slice(0, 16) }).first().waitFor({ timeout: 10000 });
    return `key ${k.key.slice(0, 16)}… (expires ${k.expiration}) shown in carol-hsui's card`;
  });

  await step(ui, ++n, "expire-preauth-key", page, async () => {
    // headscale-ui sends the pre-0.28 form {user, key}
    const k = (await api("GET", "preauthkey")).json.preAuthKeys.find((x) => x.user?.name === "carol-hsui");
    await page.goto(origin + "/web/users.html");
    const card = page.locator(".card-primary", { hasText: "carol-hsui" });
    await card.getByText("carol-hsui").first().click();
    const row = card.locator("tr", { has: page.locator("code", { hasText: k.key.slice(0, 16) }) });
    await row.locator("button.mr-2").click();
    await until("carol-hsui's key expired", async () => {
      const x = (await api("GET", "preauthkey")).json.preAuthKeys.find((y) => y.id === k.id);
      return new Date(x.expiration).getTime() <= Date.now();
    });
    await row.getByText("expired", { exact: true }).first().waitFor({ timeout: 10000 });
    return `key ${k.id} expired (badge "expired")`;
  });

  await step(ui, ++n, "rename-node", page, async () => {
    const nd = await nodeByName(NODE);
    await page.goto(origin + "/web/devices.html");
    const card = page.locator(".card-primary", { hasText: `${nd.id}: ${nd.givenName}` });
    await card.locator("span.font-bold button").first().click();
    const input = page.locator('input[placeholder="name"]').first(); // the card loses its title while editing
    await input.fill("renamed-by-hsui");
    await input.press("Enter");
    await until("givenName renamed-by-hsui", async () => (await api("GET", `node/${nd.id}`)).json.node.givenName === "renamed-by-hsui");
    await page.getByText(`${nd.id}: renamed-by-hsui`).waitFor();
    await api("POST", `node/${nd.id}/rename/${NODE}`); // back, so Headplane finds it by name
    return `node ${nd.id} renamed to renamed-by-hsui (then back through the API)`;
  });

  report(ui, "expire-node", "N/A", "headscale-ui has no node-expiry action (its API functions have none)");

  await step(ui, ++n, "approve-route", page, async () => {
    const r = await nodeByName(ROUTER);
    if (!r) throw new Error("no router node");
    await page.goto(origin + "/web/devices.html");
    const card = page.locator(".card-primary", { hasText: `${r.id}: ${r.givenName}` });
    await card.getByText(`${r.id}: ${r.givenName}`).click();
    await card.getByRole("button", { name: "pending" }).first().click();
    await until(`${ROUTE} approved`, async () => (await api("GET", `node/${r.id}`)).json.node.approvedRoutes.includes(ROUTE));
    await card.getByRole("button", { name: "active" }).first().waitFor();
    return `${ROUTE} on ${ROUTER} approved (button turned "active"); approvedRoutes=${JSON.stringify((await api("GET", `node/${r.id}`)).json.node.approvedRoutes)}`;
  });
  // leave it unapproved for Headplane
  const r = await nodeByName(ROUTER);
  if (r) await api("POST", `node/${r.id}/approve_routes`, { routes: [] });

  await step(ui, ++n, "delete-user", page, async () => {
    await page.goto(origin + "/web/users.html");
    const card = page.locator(".card-primary", { hasText: "carol-hsui" });
    await card.locator("button.mr-4").first().click();
    await card.locator('span:has-text("Confirm") + button').click();
    await until("carol-hsui gone from the API", async () => (await api("GET", "user?name=carol-hsui")).json.users?.length === 0);
    await page.getByText("carol-hsui").waitFor({ state: "detached", timeout: 10000 });
    return "carol-hsui (with an expired pre-auth key) deleted, gone from the list";
  });

  report(ui, "edit-policy", "N/A", "headscale-ui has no policy editor (its Groups page is an empty placeholder)");
  if (alerts.length) console.log(`  (${ui} HTTP errors the browser saw: ${alerts.slice(0, 10).join(" | ")})`);
  await ctx.close();
  srv.close();
}

async function driveHeadplane(browser) {
  const ui = "headplane";
  const base = env("HP_URL") + "/admin";
  const ctx = await browser.newContext({ viewport: { width: 1280, height: 900 } });
  const page = await ctx.newPage();
  let n = 0;
  const errs = [];
  page.on("response", async (r) => {
    if (r.status() < 400) return;
    let body = "";
    if (process.env.DEBUG_BODIES) {
      const t = await r.text().catch(() => "");
      const f = path.join(OUT, `http-${errs.length}-${r.status()}.txt`);
      fs.writeFileSync(f, t);
      body = ` (body: ${path.basename(f)})`;
    }
    errs.push(`${r.status()} ${r.request().method()} ${new URL(r.url()).pathname}${body}`);
  });

  await step(ui, ++n, "login-api-key", page, async () => {
    await page.goto(base + "/login");
    await page.locator('input[name="api_key"]').fill(KEY);
    await page.locator('button[type="submit"]').click();
    await page.waitForURL(/\/admin\/machines/, { timeout: 20000 });
    return "login form accepted the key, landed on /admin/machines";
  });

  await step(ui, ++n, "list-nodes", page, async () => {
    await page.goto(base + "/machines");
    for (const w of [NODE, ROUTER].filter(Boolean)) await page.getByText(w, { exact: true }).first().waitFor({ timeout: 15000 });
    return `machines page lists ${[NODE, ROUTER].filter(Boolean).join(", ")}`;
  });

  await step(ui, ++n, "list-users", page, async () => {
    await page.goto(base + "/users");
    await page.getByText("alice").first().waitFor({ timeout: 15000 });
    return "users page lists alice";
  });

  await step(ui, ++n, "list-keys", page, async () => {
    await page.goto(base + "/settings/auth-keys");
    const keys = (await api("GET", "preauthkey")).json.preAuthKeys;
    await page.getByText(/alice/).first().waitFor({ timeout: 15000 });
    return `auth-keys page shows alice's keys (${keys.length} keys on the server)`;
  });

  const dialog = () => page.locator('[role="dialog"]:visible, [role="alertdialog"]:visible').last();
  await step(ui, ++n, "create-user", page, async () => {
    await page.goto(base + "/users");
    await page.getByRole("button", { name: "Add user" }).first().click();
    await dialog().locator('input[name="username"]').fill("dave-hp");
    await dialog().getByRole("button", { name: "Confirm" }).click();
    await until("user dave-hp in the API", async () => (await api("GET", "user?name=dave-hp")).json.users?.length === 1);
    await page.getByText("dave-hp").first().waitFor();
    return "dave-hp created (Add user dialog) and listed";
  });

  await step(ui, ++n, "create-preauth-key", page, async () => {
    const before = (await api("GET", "preauthkey")).json.preAuthKeys.length;
    await page.goto(base + "/settings/auth-keys");
    await page.getByRole("button", { name: "Create pre-auth key" }).first().click();
    const d = dialog();
    await d.getByRole("combobox").first().click();
    await page.getByRole("option", { name: /dave-hp/ }).first().click();
    await d.getByRole("button", { name: /Confirm|Create|Generate/ }).last().click();
    const k = await until("a new pre-auth key", async () => {
      const all = (await api("GET", "preauthkey")).json.preAuthKeys;
      return all.length > before && all.find((x) => x.user?.name === "dave-hp");
    });
    await page.getByText(k.key.slice(0, 12)).first().waitFor({ timeout: 10000 });
    return `key for ${k.user?.name} (reusable=${k.reusable}, expires ${k.expiration}) shown once in the dialog`;
  });

  const machineMenu = async (name, item) => {
    const nd = await nodeByName(name);
    await page.goto(`${base}/machines/${nd.id}`);
    await page.getByText(nd.givenName).first().waitFor({ timeout: 15000 });
    await page.getByRole("button", { name: "Machine Settings" }).first().click();
    await page.getByRole("menuitem", { name: item }).first().click();
    return nd;
  };

  await step(ui, ++n, "rename-node", page, async () => {
    const nd = await machineMenu(NODE, "Edit machine name");
    await dialog().locator('input[name="name"]').fill("renamed-by-headplane");
    await dialog().getByRole("button", { name: "Confirm" }).click();
    await until("givenName renamed-by-headplane", async () => (await api("GET", `node/${nd.id}`)).json.node.givenName === "renamed-by-headplane");
    await page.getByText("renamed-by-headplane").first().waitFor();
    return `node ${nd.id} renamed to renamed-by-headplane`;
  });

  await step(ui, ++n, "approve-route", page, async () => {
    const nd = await machineMenu(ROUTER, "Edit route settings");
    await dialog().getByText(ROUTE).first().waitFor();
    await dialog().getByRole("switch").first().click();
    await until(`${ROUTE} approved`, async () => (await api("GET", `node/${nd.id}`)).json.node.approvedRoutes.includes(ROUTE));
    return `${ROUTE} switched on for ${ROUTER}; approvedRoutes=${JSON.stringify((await api("GET", `node/${nd.id}`)).json.node.approvedRoutes)}`;
  });
  await page.keyboard.press("Escape");

  await step(ui, ++n, "expire-node", page, async () => {
    const nd = await machineMenu("renamed-by-headplane", "Expire");
    await dialog().getByRole("button", { name: "Confirm" }).click();
    const e = await until("node expired", async () => {
      const x = (await api("GET", `node/${nd.id}`)).json.node.expiry;
      return x && new Date(x).getTime() <= Date.now() + 1000 && x;
    });
    await page.reload();
    await page.getByText(/expired/i).first().waitFor({ timeout: 10000 });
    return `node ${nd.id} expiry now ${e}; page shows it expired`;
  });

  const setEditor = async (text) => {
    await page.goto(base + "/acls");
    const editor = page.locator(".cm-content").first();
    await editor.waitFor({ timeout: 15000 });
    await editor.click();
    await page.keyboard.press("Control+A");
    await page.keyboard.press("Delete");
    await page.keyboard.insertText(text);
    await page.getByRole("button", { name: "Save" }).first().click();
  };
  await step(ui, ++n, "edit-policy", page, async () => {
    await setEditor('{\n  "groups": {"group:ops": ["alice@"]},\n  "acls": [\n    {"action": "accept", "src": ["group:ops"], "dst": ["*:*"]}\n  ]\n}\n');
    await until("policy saved", async () => (await api("GET", "policy")).json.policy.includes("group:ops"));
    return "policy with group:ops saved from the ACL editor (GET /api/v1/policy returns it)";
  });

  await step(ui, ++n, "rejected-policy", page, async () => {
    await setEditor('{\n  "acls": [\n    {"action": "accept", "src": ["*"], "dst": ["*:*"]}\n    {"missing": "comma"}\n  ]\n}\n');
    const msg = page.getByText(/syntax error|parsing|error/i).first();
    await msg.waitFor({ timeout: 15000 });
    const still = (await api("GET", "policy")).json.policy.includes("group:ops");
    if (!still) throw new Error("the rejected policy replaced the saved one");
    const notice = await page.locator("main").innerText().catch(() => "");
    const line = notice.split("\n").filter((l) => /error|parsing|expected/i.test(l)).slice(0, 2).join(" / ");
    return `message shown: "${line.slice(0, 200)}"; the saved policy stays`;
  });
  await step(ui, ++n, "expire-preauth-key", page, async () => {
    // Headplane sends {id} to a server at 0.28 or later
    const live = async () => (await api("GET", "preauthkey")).json.preAuthKeys.filter((x) => !x.expiration || new Date(x.expiration).getTime() > Date.now());
    const before = await live();
    await page.goto(base + "/settings/auth-keys");
    await page.getByRole("button", { name: "Expire Key" }).first().click();
    await dialog().getByRole("button", { name: "Confirm" }).click();
    const gone = await until("a key expired", async () => {
      const now = (await live()).map((x) => x.id);
      return before.find((x) => !now.includes(x.id));
    });
    return `key ${gone.id} of ${gone.user?.name} expired`;
  });
  await step(ui, ++n, "remove-node", page, async () => {
    const nd = await machineMenu(ROUTER, "Remove");
    await dialog().getByRole("button", { name: /Confirm|Remove/ }).last().click();
    await until(`${ROUTER} gone from the API`, async () => !(await nodeByName(ROUTER)));
    await page.waitForURL(/\/admin\/machines\/?$/, { timeout: 10000 }).catch(() => {});
    return `node ${nd.id} (${ROUTER}) removed`;
  });
  if (errs.length) console.log(`  (${ui} HTTP errors the browser saw: ${errs.slice(0, 10).join(" | ")})`);
  await ctx.close();
}

const browser = await chromium.launch({
  executablePath: env("CHROMIUM", "/usr/bin/chromium"),
  args: ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run"],
});
try {
  if (ONLY !== "headplane") await driveHsui(browser);
  if (ONLY !== "hsui" && env("HP_URL")) await driveHeadplane(browser);
  else if (ONLY !== "hsui") report("headplane", "all", "FAIL", "Headplane did not start (see its log)");
} finally {
  await browser.close();
}
const failed = results.filter((r) => r.status === "FAIL").length;
console.log(`\n${results.filter((r) => r.status === "PASS").length} PASS, ${failed} FAIL, ${results.filter((r) => r.status === "N/A").length} N/A`);
fs.writeFileSync(path.join(OUT, "results.json"), JSON.stringify(results, null, 2));
process.exit(failed ? 1 : 0);
