// The chargebridge dashboard: an MQTT client of the bridge's topics (docs/dashboard.md).
// Everything shown comes from retained state and events; every button publishes a request
// (API.md sections 5 and 6) and shows the response that carries its request_id.
"use strict";

const { MqttClient, reasonText } = window.ChargebridgeMqtt;

const RESPONSE_TIMEOUT_MS = 45000; // the service waits up to 35 s for the gateway
const RECENT_SESSIONS = 30;
const KEEP_SESSIONS = 500; // memory bound: the oldest finished sessions are forgotten
const LIVE = new Set(["starting", "charging", "stopping"]);

const state = {
  base: "chargebridge",
  devices: new Map(), // device_id -> device state
  ports: new Map(), // device_id -> Map(port -> port state)
  sessions: new Map(), // session_id -> session
  gateways: new Map(), // gateway_id -> {state, gateway_id, since}: every gateway on the base topic
  service: null, // {state, instances}: the charging service's presence
  stats: null,
  results: new Map(), // device_id -> {text, kind}
  pending: new Map(), // request_id -> {deviceId, label, timer}
  armed: new Map(), // device_id -> until when a second Reboot press confirms
  canCommand: true,
  user: "",
};

let client = null;
let credentials = { username: "", password: "" };
let version = 5;
let retryMs = 1000;
let renderQueued = false;

const $ = (id) => document.getElementById(id);

function esc(v) {
  return String(v ?? "").replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
}

function num(v, digits) {
  return v === null || v === undefined || Number.isNaN(Number(v)) ? "–" : Number(v).toFixed(digits);
}

function duration(s) {
  if (s === null || s === undefined) return "–";
  s = Math.max(0, Math.round(s));
  const h = Math.floor(s / 3600);
  const m = Math.floor((s % 3600) / 60);
  return h ? `${h} h ${String(m).padStart(2, "0")} min` : m ? `${m} min ${s % 60} s` : `${s} s`;
}

function requestId() {
  const rnd = crypto.getRandomValues(new Uint32Array(2));
  return `web-${rnd[0].toString(16)}${rnd[1].toString(16)}`;
}

// ------------------------------------------------------------------ MQTT in

function topicParts(topic) {
  const prefix = state.base + "/";
  return topic.startsWith(prefix) ? topic.slice(prefix.length).split("/") : null;
}

function onMessage(topic, bytes) {
  const parts = topicParts(topic);
  if (!parts) return;
  let data = null;
  if (bytes.length) {
    try {
      data = JSON.parse(new TextDecoder().decode(bytes));
    } catch (e) {
      return; // not ours to judge; the contract says JSON
    }
  }
  const [head, id, sub, key] = parts;
  if (head === "devices" && parts.length === 2) {
    data ? state.devices.set(id, data) : (state.devices.delete(id), state.ports.delete(id));
  } else if (head === "devices" && sub === "ports" && parts.length === 4) {
    if (!state.ports.has(id)) state.ports.set(id, new Map());
    data ? state.ports.get(id).set(Number(key), data) : state.ports.get(id).delete(Number(key));
  } else if (head === "devices" && sub === "event" && key === "port" && data) {
    if (data.type === "power") livePower(id, data);
  } else if (head === "sessions" && parts.length === 2) {
    if (!data) state.sessions.delete(id);
    else {
      const old = state.sessions.get(id);
      if (!old || (data.version ?? 0) >= (old.version ?? 0)) state.sessions.set(id, data);
      boundSessions();
    }
  } else if (head === "charging" && id === "stats") {
    state.stats = data;
  } else if (head === "charging" && id === "state") {
    state.service = data;
  } else if (head === "gateways" && sub === "state" && parts.length === 3) {
    data ? state.gateways.set(id, data) : state.gateways.delete(id); // cleared: gone for good
  } else if ((head === "devices" && sub === "response") || (head === "charging" && id === "response")) {
    if (data) onResponse(data);
    return;
  }
  queueRender();
}

function livePower(deviceId, ev) {
  // 0x06 reports arrive as events before the retained port state is republished.
  if (!state.ports.has(deviceId)) state.ports.set(deviceId, new Map());
  const ports = state.ports.get(deviceId);
  const p = Object.assign({ port: ev.port }, ports.get(ev.port) || {});
  p.power_w = ev.power_w;
  if (ev.status) p.status = ev.status;
  ports.set(ev.port, p);
}

function boundSessions() {
  if (state.sessions.size <= KEEP_SESSIONS) return;
  const done = [...state.sessions.values()].filter((s) => !LIVE.has(s.status));
  done.sort((a, b) => String(a.end_time || a.last_update).localeCompare(String(b.end_time || b.last_update)));
  for (const s of done.slice(0, state.sessions.size - KEEP_SESSIONS)) state.sessions.delete(s.session_id);
}

function onResponse(data) {
  const req = state.pending.get(data.request_id);
  if (!req) return;
  state.pending.delete(data.request_id);
  clearTimeout(req.timer);
  const verdict = data.ok ? "ok" : "failed";
  const detail = [data.result, data.message].filter((x) => x && x !== verdict).join(": ");
  setResult(req.deviceId, `${req.label}: ${verdict}${detail ? " — " + detail : ""}`, data.ok ? "ok" : "error");
}

function setResult(deviceId, text, kind) {
  state.results.set(deviceId, { text, kind });
  queueRender();
}

// ----------------------------------------------------------------- MQTT out

async function command(deviceId, label, topic, body) {
  if (!client || !client.connected) {
    setResult(deviceId, `${label}: not connected to the broker`, "error");
    return;
  }
  const rid = requestId();
  body.request_id = rid;
  setResult(deviceId, `${label}: sent, waiting for the response…`, "pending");
  const timer = setTimeout(() => {
    state.pending.delete(rid);
    const hint = version === 5 ? "" : " (the broker may have refused the request: MQTT 3.1.1 cannot tell)";
    setResult(deviceId, `${label}: no response${hint}`, "error");
  }, RESPONSE_TIMEOUT_MS);
  state.pending.set(rid, { deviceId, label, timer });
  try {
    const code = await client.publish(topic, JSON.stringify(body), 1);
    if (code >= 0x80) {
      clearTimeout(timer);
      state.pending.delete(rid);
      setResult(deviceId, `${label}: refused by the broker — ${reasonText(code)} (user ${state.user || "anonymous"} may not command)`, "error");
    }
  } catch (err) {
    clearTimeout(timer);
    state.pending.delete(rid);
    setResult(deviceId, `${label}: ${err.message}`, "error");
  }
}

function onAction(ev) {
  const btn = ev.target.closest("button[data-action]");
  if (!btn || btn.disabled) return;
  const deviceId = btn.closest("[data-device]").dataset.device;
  const port = Number(btn.dataset.port);
  const b = state.base;
  switch (btn.dataset.action) {
    case "start":
      command(deviceId, `start port ${port}`, `${b}/charging/request/start`,
        { device_id: deviceId, port, mode: "full" });
      break;
    case "stop":
      command(deviceId, `stop port ${port}`, `${b}/charging/request/stop`, { device_id: deviceId, port });
      break;
    case "locate":
      command(deviceId, "locate", `${b}/devices/${deviceId}/request/locate`, { seconds: 10 });
      break;
    case "reboot":
      if (!((state.armed.get(deviceId) || 0) > Date.now())) {
        // A second press within 5 s confirms: a reboot ends every session on the charger.
        state.armed.set(deviceId, Date.now() + 5000);
        setTimeout(queueRender, 5100);
        queueRender();
        return;
      }
      state.armed.delete(deviceId);
      command(deviceId, "reboot", `${b}/devices/${deviceId}/request/reboot`, {});
      break;
  }
}

// MQTT 5 tells a refused publish in its PUBACK. A read-only query on the charging service's
// request topic (which the shipped ACL lets `operator` write and `monitor` not) shows
// whether this user may command, before any button is pressed.
async function probeCommandRights() {
  if (version !== 5) return;
  const body = { request_id: requestId(), session_id: "0".repeat(32) };
  try {
    const code = await client.publish(`${state.base}/charging/request/query`, JSON.stringify(body), 1);
    state.canCommand = code < 0x80;
  } catch (err) {
    state.canCommand = true; // unknown: let presses show their own result
  }
  const note = $("readonly");
  note.hidden = state.canCommand;
  note.textContent = state.canCommand ? "" :
    `User ${state.user || "anonymous"} may watch but not command chargers (the broker refuses its requests). Log in as an operator to use the buttons.`;
  queueRender();
}

// --------------------------------------------------------------- connection

function setConn(text, st) {
  $("conn").textContent = text;
  $("conn").dataset.state = st;
}

async function connect() {
  const url = `${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/mqtt`;
  const c = new MqttClient({
    url, version, username: credentials.username, password: credentials.password,
    clientId: `chargebridge-web-${requestId().slice(4)}`,
  });
  setConn("connecting…", "connecting");
  try {
    await c.connect();
  } catch (err) {
    if (version === 5 && (err.code === 0x01 || err.code === 0x84 || err.code === -2)) {
      version = 4; // a broker without MQTT 5 (the embedded one): speak 3.1.1
      return connect();
    }
    if ([0x04, 0x05, 0x86, 0x87, 0x8c].includes(err.code)) {
      showLogin(credentials.username ? `Login refused: ${err.message}` : "");
      setConn("login needed", "offline");
      return;
    }
    setConn(`broker unreachable: ${err.message}`, "offline");
    setTimeout(connect, retryMs);
    retryMs = Math.min(retryMs * 2, 30000);
    return;
  }
  retryMs = 1000;
  client = c;
  state.user = credentials.username;
  c.onmessage = onMessage;
  c.onclose = () => {
    setConn("disconnected, reconnecting…", "offline");
    setTimeout(connect, retryMs);
  };
  state.devices.clear();
  state.ports.clear();
  state.gateways.clear();
  state.service = null;
  const b = state.base;
  await c.subscribe([
    `${b}/devices/+`, `${b}/devices/+/ports/+`, `${b}/devices/+/event/port`,
    `${b}/devices/+/response/+`, `${b}/sessions/+`, `${b}/charging/stats`,
    `${b}/charging/response/+`, `${b}/gateways/+/state`, `${b}/charging/state`,
  ]);
  $("login").hidden = true;
  $("main").hidden = false;
  $("logout").hidden = !credentials.username;
  setConn(`connected${state.user ? " as " + state.user : ""} (MQTT ${version === 5 ? "5" : "3.1.1"})`, "online");
  probeCommandRights();
  queueRender();
}

function showLogin(error) {
  $("main").hidden = true;
  $("login").hidden = false;
  $("login-error").textContent = error || "";
  $("user").focus();
}

// ------------------------------------------------------------------- render

function queueRender() {
  if (renderQueued) return;
  renderQueued = true;
  setTimeout(() => {
    renderQueued = false;
    render();
  }, 150);
}

function render() {
  renderGateways();
  renderStats();
  renderChargers();
  renderSessions();
}

function renderGateways() {
  const parts = [...state.gateways.entries()]
    .sort(([a], [b]) => a.localeCompare(b))
    .map(([id, g]) => `<span class="${g.state === "online" ? "online" : "offline"}">` +
      `gateway ${esc(id)}: ${esc(g.state)}</span>`);
  const s = state.service;
  if (s) {
    const n = Array.isArray(s.instances) ? s.instances.length : 0;
    parts.push(`<span class="${s.state === "online" ? "online" : "offline"}">` +
      `charging service: ${esc(s.state)}${n > 1 ? ` (${n} instances)` : ""}</span>`);
  }
  $("gateways").innerHTML = parts.join(" · ");
}

function tile(value, label) {
  return `<div class="tile"><b>${esc(value)}</b><span>${esc(label)}</span></div>`;
}

function renderStats() {
  const s = state.stats || {};
  const devices = [...state.devices.values()];
  const online = devices.filter((d) => d.online).length;
  const live = [...state.sessions.values()].filter((x) => LIVE.has(x.status)).length;
  $("stats").innerHTML = [
    tile(`${online}/${devices.length}`, "chargers online"),
    tile(s.active_sessions ?? live, "active sessions"),
    tile(s.sessions_created ?? "–", "sessions started"),
    tile(s.sessions_completed ?? "–", "sessions completed"),
    tile(`${num(s.total_energy_delivered_kwh, 2)} kWh`, "energy delivered"),
    tile(duration(s.average_session_duration_s), "average session"),
    tile(s.sessions_timeout ?? "–", "sessions timed out"),
  ].join("");
}

function statusClass(status) {
  if (!status) return "unknown";
  if (status === "charging" || status === "floating_charge") return "charging";
  if (status === "idle") return "idle";
  return /fault|error|unknown/.test(status) ? "fault" : "other";
}

function renderChargers() {
  const ids = [...state.devices.keys()].sort();
  if (!ids.length) {
    $("chargers").innerHTML = '<p class="empty">No charger has reported yet.</p>';
    return;
  }
  const dis = state.canCommand ? "" : ' disabled title="this user may not command chargers"';
  $("chargers").innerHTML = ids.map((id) => {
    const d = state.devices.get(id);
    const ports = state.ports.get(id) || new Map();
    const count = Math.max(d.port_count || 0, ...ports.keys(), 0);
    const rows = [];
    for (let n = 1; n <= count; n++) {
      const p = ports.get(n) || {};
      const st = p.status || "unknown";
      rows.push(`<tr data-port="${n}"><td class="num">${n}</td>` +
        `<td><span class="status ${statusClass(st)}">${esc(st.replace(/_/g, " "))}</span></td>` +
        `<td class="power">${p.power_w ? num(p.power_w, 0) + " W" : ""}</td>` +
        `<td class="act"><button class="small" data-action="start" data-port="${n}"${dis}>Start</button> ` +
        `<button class="small secondary" data-action="stop" data-port="${n}"${dis}>Stop</button></td></tr>`);
    }
    const r = state.results.get(id);
    return `<article class="card ${d.online ? "online" : "offline"}" data-device="${esc(id)}">` +
      `<h3>${esc(id)} <span class="badge ${d.online ? "online" : "offline"}">${d.online ? "online" : "offline"}</span></h3>` +
      `<div class="meta">${esc((d.device_kind || "").replace(/_/g, " "))} · no. ${esc(d.device_number)} · gateway ${esc(d.gateway_id)}<br>` +
      `signal ${esc(d.signal ?? "–")} · ${num(d.temperature_c, 0)} °C · ${num(d.voltage_v, 0)} V</div>` +
      `<table class="ports">${rows.join("")}</table>` +
      `<div class="actions"><button class="secondary" data-action="locate"${dis}>Locate</button>` +
      `<button class="secondary" data-action="reboot"${dis}>${(state.armed.get(id) || 0) > Date.now() ? "Confirm reboot" : "Reboot"}</button></div>` +
      `<div class="result ${r ? r.kind : ""}" data-role="result">${r ? esc(r.text) : ""}</div></article>`;
  }).join("");
}

function energyCell(s) {
  const est = s.energy_kwh_estimated;
  const shown = est !== null && est !== undefined && !s.energy_kwh ?
    `<span class="est">≈ ${num(est, 3)} est.</span>` : num(s.energy_kwh, 3);
  const extra = est !== null && est !== undefined && s.energy_kwh ? ` <span class="est">(≈ ${num(est, 3)} est.)</span>` : "";
  return shown + extra;
}

function sessionDuration(s) {
  if (s.duration_s) return s.duration_s;
  if (LIVE.has(s.status) && s.start_time) return (Date.now() - Date.parse(s.start_time)) / 1000;
  return s.duration_s;
}

function sessionRows(list, live) {
  const head = live ?
    "<tr><th>Charger</th><th>Port</th><th>Status</th><th class=\"n\">Power W</th><th class=\"n\">kWh</th><th>Duration</th><th class=\"hide-narrow\">Session</th></tr>" :
    "<tr><th>Charger</th><th>Port</th><th>Status</th><th class=\"n\">kWh</th><th>Duration</th><th>Stop reason</th><th class=\"hide-narrow\">Ended</th></tr>";
  const rows = list.map((s) => live ?
    `<tr data-session="${esc(s.session_id)}"><td>${esc(s.device_id)}</td><td>${esc(s.port)}</td>` +
      `<td><span class="status ${statusClass(s.status)}">${esc(s.status)}</span></td>` +
      `<td class="n">${num(s.power_w, 0)}</td><td class="n">${energyCell(s)}</td>` +
      `<td>${duration(sessionDuration(s))}</td><td class="hide-narrow">${esc(String(s.session_id).slice(0, 12))}…</td></tr>` :
    `<tr data-session="${esc(s.session_id)}"><td>${esc(s.device_id)}</td><td>${esc(s.port)}</td>` +
      `<td><span class="status ${statusClass(s.status)}">${esc(s.status)}</span></td>` +
      `<td class="n">${energyCell(s)}</td><td>${duration(s.duration_s)}</td>` +
      `<td>${esc((s.stop_reason || "–").replace(/_/g, " "))}</td>` +
      `<td class="hide-narrow">${esc((s.end_time || "").replace("T", " ").slice(0, 19))}</td></tr>`);
  return `<table class="sessions"><thead>${head}</thead><tbody>${rows.join("")}</tbody></table>`;
}

function renderSessions() {
  const all = [...state.sessions.values()];
  const live = all.filter((s) => LIVE.has(s.status))
    .sort((a, b) => `${a.device_id}/${a.port}`.localeCompare(`${b.device_id}/${b.port}`));
  const recent = all.filter((s) => !LIVE.has(s.status))
    .sort((a, b) => String(b.end_time || b.last_update).localeCompare(String(a.end_time || a.last_update)))
    .slice(0, RECENT_SESSIONS);
  $("live").outerHTML = live.length ?
    sessionRows(live, true).replace("<table", '<table id="live"') :
    '<table id="live"><tbody><tr><td class="empty">No session is running.</td></tr></tbody></table>';
  $("recent").outerHTML = recent.length ?
    sessionRows(recent, false).replace("<table", '<table id="recent"') :
    '<table id="recent"><tbody><tr><td class="empty">No finished session yet.</td></tr></tbody></table>';
}

// --------------------------------------------------------------------- boot

async function boot() {
  try {
    const cfg = await (await fetch("config.json", { cache: "no-store" })).json();
    state.base = cfg.base_topic || state.base;
  } catch (err) {
    // keep the default base topic
  }
  $("chargers").addEventListener("click", onAction);
  $("login").addEventListener("submit", (ev) => {
    ev.preventDefault();
    credentials = { username: $("user").value.trim(), password: $("password").value };
    version = 5;
    connect();
  });
  $("logout").addEventListener("click", () => {
    credentials = { username: "", password: "" };
    const c = client;
    client = null;
    if (c) {
      c.onclose = () => {};
      c.close();
    }
    showLogin("");
    setConn("logged out", "offline");
  });
  setInterval(() => { if (client && client.connected) renderSessions(); }, 1000); // durations
  connect();
}

boot();
