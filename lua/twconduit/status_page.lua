--- twconduit.status_page: the status page served at "/" by client:serve_metrics, as one
-- luacheck: max string line length 140
-- self-contained HTML document (no build step, no external assets). It polls /status
-- every second (passing on a ?token= it was opened with) and redraws.
return [==[<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>twconduit status</title>
<style>
  :root { --bg:#0f1115; --panel:#171a21; --line:#272b35; --fg:#e6e6e6; --dim:#9aa0aa;
          --ok:#3fb950; --warn:#d29922; --bad:#f85149; --info:#58a6ff; }
  * { box-sizing: border-box; }
  body { margin:0; background:var(--bg); color:var(--fg); font:14px/1.4 system-ui, sans-serif; }
  header { display:flex; gap:16px; align-items:baseline; padding:12px 20px; border-bottom:1px solid var(--line); }
  header h1 { font-size:18px; margin:0; }
  header .dim { color:var(--dim); }
  main { padding:12px 20px; display:grid; gap:16px; }
  section { background:var(--panel); border:1px solid var(--line); border-radius:8px; padding:12px 14px; }
  h2 { font-size:15px; margin:0 0 8px; }
  h3 { font-size:13px; margin:12px 0 6px; color:var(--dim); font-weight:600; }
  table { border-collapse:collapse; width:100%; font-variant-numeric:tabular-nums; }
  th, td { text-align:left; padding:4px 8px; border-bottom:1px solid var(--line); white-space:nowrap; }
  th { color:var(--dim); font-weight:500; font-size:12px; }
  td.mono, span.mono { font-family:ui-monospace, monospace; font-size:12px; }
  .badge { display:inline-block; padding:1px 8px; border-radius:10px; font-size:12px; font-weight:600; }
  .up { background:rgba(63,185,80,.15); color:var(--ok); }
  .down { background:rgba(248,81,73,.15); color:var(--bad); }
  .busy { background:rgba(210,153,34,.15); color:var(--warn); }
  .other { background:rgba(88,166,255,.12); color:var(--info); }
  .grid { display:grid; grid-template-columns:repeat(auto-fit, minmax(260px, 1fr)); gap:16px; }
  .kv { display:grid; grid-template-columns:auto 1fr; gap:2px 12px; }
  .kv div:nth-child(odd) { color:var(--dim); }
  .bar { height:6px; background:var(--line); border-radius:3px; overflow:hidden; margin-top:4px; }
  .bar > i { display:block; height:100%; background:var(--ok); }
  #err { color:var(--bad); }
  .empty { color:var(--dim); }
</style>
</head>
<body>
<header><h1>twconduit</h1><span class="dim" id="meta">loading…</span><span id="err"></span></header>
<main>
  <div id="conduits"></div>
  <div class="grid">
    <section><h2>Subscriptions</h2><div id="subs" class="kv"></div></section>
    <section><h2>Helix</h2><div id="helix" class="kv"></div></section>
    <section><h2>Operations in progress</h2><div id="ops"></div></section>
    <section><h2>Recent alerts</h2><div id="alerts"></div></section>
  </div>
</main>
<script>
"use strict";
const token = new URLSearchParams(location.search).get("token");
const statusUrl = "status" + (token ? "?token=" + encodeURIComponent(token) : "");
const el = (tag, attrs, ...kids) => {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") e.className = v; else e.setAttribute(k, v);
  }
  for (const k of kids) e.append(k instanceof Node ? k : document.createTextNode(k == null ? "—" : String(k)));
  return e;
};
const badgeClass = s => s === "enabled" ? "up"
  : (s === "connecting" || s === "welcomed" || s === "assigning" || s === "releasing"
     || s === "webhook_callback_verification_pending") ? "busy" : "down";
const badge = (s, attrs) => el("span", Object.assign({ class: "badge " + badgeClass(s) }, attrs || {}), s);
const ago = t => {
  if (t == null) return "—";
  const s = Math.max(0, Date.now() / 1000 - t);
  if (s < 60) return Math.floor(s) + " s";
  if (s < 3600) return Math.floor(s / 60) + " min";
  return (s / 3600).toFixed(1) + " h";
};
const when = t => t == null ? "—" : new Date(t * 1000).toLocaleTimeString() + " (" + ago(t) + ")";
const num = (v, d) => v == null ? "—" : Number(v).toFixed(d);
const lag = v => v == null ? "—" : v < 1 ? Math.round(v * 1000) + " ms" : v.toFixed(1) + " s";
const short = s => s == null ? "—" : (s.length > 24 ? s.slice(0, 10) + "…" + s.slice(-8) : s);
function row(cells, attrs) { return el("tr", attrs, ...cells.map(c => c instanceof Node && c.tagName === "TD" ? c : el("td", {}, c))); }
function table(head, rows) {
  return el("table", {}, el("thead", {}, el("tr", {}, ...head.map(h => el("th", {}, h)))), el("tbody", {}, ...rows));
}
function kv(box, pairs) {
  box.replaceChildren(...pairs.flatMap(([k, v]) => [el("div", {}, k), el("div", {}, v)]));
}
const arr = v => Array.isArray(v) ? v : []; // an empty list may come as {}
function conduit(c) {
  c.shards = arr(c.shards); c.twitch = arr(c.twitch);
  const here = new Set(c.shards.map(s => s.id));
  const sec = el("section", { class: "conduit", "data-conduit": c.id || "" },
    el("h2", {}, "Conduit ", el("span", { class: "mono" }, c.id || "(starting)"), "  ",
      el("span", { class: "badge " + (c.state === "ready" ? "up" : badgeClass(c.state)), "data-conduit-state": c.state },
        c.state),
      el("span", { class: "dim" }, "  " + c.shard_count + " shards on Twitch, " + c.shards.length + " run here")));
  sec.append(el("h3", {}, "Shards run here"));
  sec.append(c.shards.length ? table(
    ["shard", "state", "status (Twitch)", "transport", "session / callback", "connected since", "events/s", "lag p50",
     "reconnects", "last close"],
    c.shards.map(s => row([
      el("td", { class: "mono" }, s.id),
      el("td", {}, badge(s.state, { class: "badge state " + badgeClass(s.state) })),
      s.status, s.transport,
      el("td", { class: "mono" }, short(s.transport === "webhook" ? s.callback : s.session_id)),
      when(s.connected_at), num(s.events_per_s, 1), lag(s.lag_s), s.reconnects + s.outages,
      s.last_close_code || "—"],
      { class: "shard", "data-shard": s.id, "data-state": s.state, "data-up": s.state === "enabled" ? "1" : "0" })))
    : el("p", { class: "empty" }, "none"));
  sec.append(el("h3", {}, "Twitch's view of the whole conduit" +
    (c.twitch_at ? " (read " + ago(c.twitch_at) + " ago)" : " (not read yet)") +
    (c.twitch_error ? " — last read failed: " + c.twitch_error.message : "")));
  sec.append(c.twitch.length ? table(["shard", "status", "method", "session / callback", "run here"],
    c.twitch.map(t => row([el("td", { class: "mono" }, t.id), el("td", {}, badge(t.status)), t.method,
      el("td", { class: "mono" }, short(t.method === "webhook" ? t.callback : t.session_id)),
      here.has(t.id) ? "yes" : "elsewhere"], { class: "twitch-shard", "data-shard": t.id, "data-status": t.status })))
    : el("p", { class: "empty" }, "no data"));
  return sec;
}
function render(st) {
  st.conduits = arr(st.conduits); st.operations = arr(st.operations); st.alerts = arr(st.alerts);
  document.getElementById("meta").textContent =
    "v" + st.version + " · " + st.conduits.length + " conduit(s) · updated " + new Date().toLocaleTimeString();
  document.getElementById("conduits").replaceChildren(...st.conduits.map(conduit));
  const s = st.subscriptions || {};
  const used = s.max_total_cost ? Math.min(100, 100 * (s.total_cost || 0) / s.max_total_cost) : 0;
  const bar = el("div", { class: "bar" }, el("i", { style: "width:" + used.toFixed(1) + "%" }));
  kv(document.getElementById("subs"), [
    ["total", s.total], ...Object.entries(s.by_status || {}).map(([k, v]) => [k, v]),
    ["cost", s.total_cost == null ? "—" : s.total_cost + " / " + s.max_total_cost],
    ["headroom", el("div", {}, s.max_total_cost == null ? "—" : String(s.max_total_cost - s.total_cost), bar)],
    ["read", s.at ? ago(s.at) + " ago" : "—"]]);
  const h = st.helix || {};
  kv(document.getElementById("helix"), [["rate limit left", h.ratelimit_remaining < 0 ? "unknown" : h.ratelimit_remaining],
    ["requests", h.requests], ["retries", h.retries], ["rate-limit waits", h.rate_waits]]);
  const ops = document.getElementById("ops");
  ops.replaceChildren(st.operations.length ? table(["conduit", "operation", "phase", "step"],
    st.operations.map(o => row([short(o.conduit), o.name, o.phase, o.message]))) : el("p", { class: "empty" }, "none"));
  const al = document.getElementById("alerts");
  al.replaceChildren(st.alerts.length ? table(["when", "kind", "shard", "message"],
    st.alerts.slice().reverse().map(a => row([when(a.at), a.kind, a.shard, a.message])))
    : el("p", { class: "empty" }, "none"));
}
async function poll() {
  try {
    const r = await fetch(statusUrl, { cache: "no-store" });
    if (!r.ok) throw new Error("status " + r.status);
    render(await r.json());
    document.getElementById("err").textContent = "";
    document.body.dataset.loaded = "1";
  } catch (e) {
    document.getElementById("err").textContent = "cannot read /status: " + e.message;
  }
  setTimeout(poll, 1000);
}
poll();
</script>
</body>
</html>
]==]
