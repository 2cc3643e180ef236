// berth's dashboard: follows the daemon's event stream and acts through its API. No build
// step, no dependencies. Everything the daemon says is shown as text, never as HTML.
"use strict";

const $ = (sel, root = document) => root.querySelector(sel);
const services = new Map(); // name -> status
const cards = new Map(); // name -> card element
const pulls = new Map(); // service -> last progress line
let daemon = null;
let usage = { available: true, reason: null, services: {} };
let logsAbort = null;

const STATE_ORDER = ["failed", "unhealthy", "starting", "waiting", "stopping", "running", "idle", "stopped", "off"];

function toast(text, ms = 5000) {
  const t = $("#toast");
  t.textContent = text;
  t.hidden = false;
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => { t.hidden = true; }, ms);
}

function mib(bytes) {
  return bytes >= 1 << 30 ? (bytes / (1 << 30)).toFixed(1) + " GiB" : Math.round(bytes / (1 << 20)) + " MiB";
}

function ago(unix) {
  const s = Math.max(0, Math.round(Date.now() / 1000 - unix));
  if (s < 60) return s + " s";
  if (s < 3600) return Math.floor(s / 60) + " min";
  if (s < 86400) return Math.floor(s / 3600) + " h";
  return Math.floor(s / 86400) + " d";
}

async function act(name, verb) {
  try {
    const r = await fetch(`/api/services/${encodeURIComponent(name)}/${verb}`, { method: "POST" });
    const body = await r.json().catch(() => ({}));
    if (!r.ok) {
      toast(`${name}: ${body.error || r.statusText}`);
    } else if (body.errors && body.errors.length) {
      toast(`${name}: ${body.errors.join("; ")}`);
    }
  } catch (e) {
    toast(`${name}: ${verb} failed: ${e}`);
  }
}

function card(name) {
  let c = cards.get(name);
  if (c) return c;
  c = $("#card").content.firstElementChild.cloneNode(true);
  c.dataset.name = name;
  $(".name", c).textContent = name;
  $(".toggle", c).addEventListener("change", (e) => {
    e.target.disabled = true;
    act(name, e.target.checked ? "enable" : "disable");
  });
  $(".restart", c).addEventListener("click", () => act(name, "restart"));
  $(".retry", c).addEventListener("click", () => act(name, "start"));
  $(".show-logs", c).addEventListener("click", () => openLogs(name));
  cards.set(name, c);
  return c;
}

function renderCard(st) {
  const c = card(st.name);
  c.className = "card " + st.state;
  $(".badge", c).className = "badge " + st.state;
  $(".badge", c).textContent = st.state;
  $(".badge", c).title = st.since ? `${st.state} for ${ago(st.since)}` : st.state;
  $(".desc", c).textContent = st.description;
  let reason = st.reason || "";
  if (st.hint) reason += (reason ? " — " : "") + `to retry: ${st.hint}`;
  if (st.note) reason += (reason ? " — " : "") + st.note;
  $(".reason", c).textContent = reason;
  const pull = pulls.get(st.name);
  $(".pull", c).hidden = !pull || st.state !== "waiting";
  $(".pull", c).textContent = pull || "";
  const ports = $(".ports", c);
  ports.replaceChildren();
  if (["running", "unhealthy", "starting", "idle"].includes(st.state)) {
    for (const p of st.ports) {
      const a = document.createElement("a");
      a.href = p.url;
      a.target = "_blank";
      a.rel = "noopener noreferrer";
      a.textContent = `Open ${p.name} :${p.port}`;
      ports.append(a);
    }
  }
  const u = usage.services[st.name];
  $(".use", c).textContent = u ? `CPU ${u.cpu_percent.toFixed(1)} % · memory ${mib(u.mem_bytes)}` : "";
  const on = st.choice !== "off";
  const toggle = $(".toggle", c);
  toggle.checked = on;
  toggle.disabled = !!st.locked;
  toggle.closest(".switch").title = st.locked ? "required by your administrator's policy: it stays on" : "on or off";
  $(".toggle-text", c).textContent = st.locked ? "required by your administrator" : on ? "on" : "off";
  $(".restart", c).disabled = !on;
  $(".retry", c).hidden = st.state !== "failed";
  return c;
}

function visible(st) {
  const f = $("#filter").value.trim().toLowerCase();
  if ($("#only-on").checked && st.choice === "off") return false;
  return !f || st.name.includes(f) || (st.description || "").toLowerCase().includes(f);
}

function render() {
  const list = [...services.values()].sort((a, b) => {
    const on = (s) => (s.choice === "off" ? 1 : 0);
    return on(a) - on(b) || STATE_ORDER.indexOf(a.state) - STATE_ORDER.indexOf(b.state) || a.name.localeCompare(b.name);
  });
  const grid = $("#services");
  const wanted = list.filter(visible).map(renderCard);
  grid.replaceChildren(...wanted);
  for (const name of cards.keys()) if (!services.has(name)) cards.delete(name);
  const counts = {};
  for (const s of services.values()) if (s.choice !== "off") counts[s.state] = (counts[s.state] || 0) + 1;
  const sum = $("#summary");
  sum.replaceChildren(
    ...STATE_ORDER.filter((s) => counts[s]).map((s) => {
      const e = document.createElement("span");
      e.className = "badge " + s;
      e.textContent = `${counts[s]} ${s}`;
      return e;
    }),
  );
  document.title = counts.failed ? `berth — ${counts.failed} failed` : "berth";
  renderBanners();
}

function renderBanners() {
  const b = $("#banners");
  b.replaceChildren();
  const add = (text, bad) => {
    const d = document.createElement("div");
    d.className = "banner" + (bad ? " bad" : "");
    d.textContent = text;
    b.append(d);
  };
  if (!daemon) return;
  if (daemon.catalog_error) add(`A catalog file is broken:\n${daemon.catalog_error}\nIn force meanwhile: ${daemon.catalog_in_force || "the catalog in force before"}`, true);
  if (daemon.podman_error) add(`${daemon.podman_error}. Services keep running; details may be old.`, false);
  if (!usage.available && usage.reason) $("#stats-note").textContent = `CPU and memory: ${usage.reason}`;
  else $("#stats-note").textContent = "";
}

function onEvent(ev) {
  switch (ev.type) {
    case "snapshot":
      daemon = ev.daemon;
      services.clear();
      for (const s of ev.services) services.set(s.name, s);
      render();
      routeLogs();
      break;
    case "service": {
      services.set(ev.status.name, ev.status);
      if (ev.status.state !== "waiting") pulls.delete(ev.status.name);
      render();
      // When this state reached the page (benchmarks compare it with the unit's change).
      const c = cards.get(ev.status.name);
      if (c) c.dataset.seen = `${ev.status.state}@${Date.now()}`;
      break;
    }
    case "removed":
      services.delete(ev.service);
      render();
      break;
    case "daemon":
      daemon = ev.daemon;
      renderBanners();
      break;
    case "pull": {
      const p = ev.progress;
      const text = p.stage === "line" ? p.text : p.stage === "failed" ? `pull failed: ${p.error}` : `pull ${p.stage}`;
      for (const s of ev.services) pulls.set(s, `${ev.image}: ${text}`);
      render();
      break;
    }
    case "pass_error":
      if (ev.service) toast(`${ev.service}: ${ev.error}`);
      break;
  }
}

function connect() {
  const conn = $("#conn");
  const es = new EventSource("/api/events");
  es.onopen = () => { conn.className = "conn live"; conn.textContent = "live"; };
  es.onerror = () => {
    conn.className = "conn wait";
    conn.textContent = "berth is not answering; reconnecting…";
  };
  for (const kind of ["snapshot", "service", "removed", "daemon", "pull", "pass_error"]) {
    es.addEventListener(kind, (m) => onEvent(JSON.parse(m.data)));
  }
}

async function pollUsage() {
  if (document.visibilityState === "visible") {
    try {
      const r = await fetch("/api/stats");
      if (r.ok) {
        usage = await r.json();
        render();
      }
    } catch (_) { /* the event stream shows the connection's state */ }
  }
  setTimeout(pollUsage, usage.available ? 5000 : 60000);
}

async function openLogs(name) {
  closeLogs();
  const panel = $("#logs");
  const body = $("#logs-body");
  $("#logs-title").textContent = `Logs of ${name}`;
  body.textContent = "";
  panel.hidden = false;
  history.replaceState(null, "", `/services/${encodeURIComponent(name)}/logs`);
  logsAbort = new AbortController();
  try {
    const r = await fetch(`/api/services/${encodeURIComponent(name)}/logs?follow=true&tail=200`, { signal: logsAbort.signal });
    if (!r.ok) {
      body.textContent = (await r.text()) || r.statusText;
      return;
    }
    const reader = r.body.pipeThrough(new TextDecoderStream()).getReader();
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      body.append(value);
      // Keep the last 5000 lines or so.
      if (body.textContent.length > 600000) body.textContent = body.textContent.slice(-400000);
      if ($("#logs-follow").checked) body.scrollTop = body.scrollHeight;
    }
    body.append("\n— end of the log stream —\n");
  } catch (e) {
    if (e.name !== "AbortError") body.append(`\n— ${e} —\n`);
  }
}

function closeLogs() {
  if (logsAbort) logsAbort.abort();
  logsAbort = null;
  $("#logs").hidden = true;
  if (location.pathname !== "/") history.replaceState(null, "", "/");
}

function routeLogs() {
  const m = location.pathname.match(/^\/services\/([a-z0-9-]+)\/logs$/);
  if (m && services.has(m[1]) && !logsAbort) openLogs(m[1]);
}

$("#logs-close").addEventListener("click", closeLogs);
$("#filter").addEventListener("input", render);
$("#only-on").addEventListener("change", render);
document.addEventListener("keydown", (e) => { if (e.key === "Escape") closeLogs(); });
connect();
pollUsage();
