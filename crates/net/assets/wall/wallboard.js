// The supervisors' wallboard: queues and campaigns pushed by the node
// (the queues' WebSocket), operators by state. A supervisor's API token
// opens a session kept as an HttpOnly cookie; the token is not kept by
// the page. Every value is written as text, never as markup.
"use strict";

const T = {
  it: {
    title: "Sala supervisori", skip: "Vai al contenuto", logout: "Esci",
    login: "Accesso con il token del supervisore", token: "Token", enter: "Entra",
    queues: "Code", campaigns: "Campagne in corso", agents: "Operatori",
    "q-name": "Coda", "q-tenant": "Ente", "q-waiting": "In attesa", "q-oldest": "Attesa più lunga (s)",
    "q-expected": "Attesa prevista (s)", "q-available": "Liberi", "q-busy": "Occupati",
    "q-paused": "In pausa", "q-out": "Non registrati",
    "q-sl": "Livello di servizio oggi", "q-abandon": "Abbandoni oggi", "q-short": "Operatori mancanti",
    "q-callbacks": "Richiamate da fare",
    "c-name": "Campagna", "c-queue": "Coda", "c-ringing": "Squillano", "c-talking": "In conversazione",
    "c-answered": "Risposte", "c-abandon": "Abbandono",
    "a-name": "Operatore", "a-tenant": "Ente", "a-state": "Stato", "a-reason": "Motivo",
    "a-since": "Nello stato da", alarm: "Allarme personale", "alarm-short": "mancano {n} operatori",
    "a-actions": "Azioni", "do-pause": "Metti in pausa", "do-resume": "Rendi disponibile",
    "done-paused": "in pausa", "done-available": "disponibile",
    "do-signout": "Fine turno", "done-logged_out": "fuori servizio", "done-logging_out": "fuori servizio dopo la chiamata",
    r_signed_out: "fuori servizio", r_manual: "manuale", r_no_answer: "chiamate non risposte", r_media_lost: "audio perso",
    "do-listen": "Ascolta", monitor: "In ascolto:", "m-listen": "Solo ascolto",
    "m-whisper": "Parla all'operatore", "m-barge": "Intervieni", "m-end": "Chiudi ascolto",
    "m-on": "in ascolto", "m-ended": "la conversazione è finita", "m-nomic": "senza microfono: solo ascolto",
    connected: "Aggiornato in tempo reale", reconnecting: "Connessione persa: nuovo tentativo…",
    "bad-token": "Token non valido", "not-supervisor": "Serve un token da supervisore",
    "too-many": "Troppi tentativi: riprova più tardi", failed: "Operazione non riuscita", lang: "English",
    s_logged_out: "Non registrato", s_available: "Disponibile", s_reserved: "Riservato",
    s_ringing: "Squilla", s_on_call: "In chiamata", s_wrap_up: "Post-chiamata", s_paused: "In pausa",
  },
  en: {
    title: "Supervisors' wallboard", skip: "Skip to content", logout: "Log out",
    login: "Sign in with the supervisor's token", token: "Token", enter: "Sign in",
    queues: "Queues", campaigns: "Running campaigns", agents: "Operators",
    "q-name": "Queue", "q-tenant": "Firm", "q-waiting": "Waiting", "q-oldest": "Oldest wait (s)",
    "q-expected": "Expected wait (s)", "q-available": "Free", "q-busy": "Busy",
    "q-paused": "On a break", "q-out": "Not registered",
    "q-sl": "Service level today", "q-abandon": "Abandoned today", "q-short": "Operators short",
    "q-callbacks": "Callbacks to make",
    "c-name": "Campaign", "c-queue": "Queue", "c-ringing": "Ringing", "c-talking": "Talking",
    "c-answered": "Answered", "c-abandon": "Abandon rate",
    "a-name": "Operator", "a-tenant": "Firm", "a-state": "State", "a-reason": "Reason",
    "a-since": "Time in state", alarm: "Staffing alarm", "alarm-short": "{n} operators short",
    "a-actions": "Actions", "do-pause": "Put on a break", "do-resume": "Make available",
    "done-paused": "on a break", "done-available": "available",
    "do-signout": "Sign out", "done-logged_out": "signed out", "done-logging_out": "signed out after the call",
    r_signed_out: "signed out", r_manual: "manual", r_no_answer: "missed calls", r_media_lost: "audio lost",
    "do-listen": "Listen", monitor: "Listening to:", "m-listen": "Listen only",
    "m-whisper": "Talk to the operator", "m-barge": "Join the call", "m-end": "Stop listening",
    "m-on": "listening", "m-ended": "the conversation ended", "m-nomic": "no microphone: listening only",
    connected: "Live", reconnecting: "Connection lost: retrying…",
    "bad-token": "Unknown token", "not-supervisor": "A supervisor's token is needed",
    "too-many": "Too many attempts: try again later", failed: "That did not work", lang: "Italiano",
    s_logged_out: "Not registered", s_available: "Available", s_reserved: "Reserved",
    s_ringing: "Ringing", s_on_call: "On a call", s_wrap_up: "Wrap-up", s_paused: "On a break",
  },
};

let lang = localStorage.getItem("centralino.lang") === "en" ? "en" : "it";
const t = (k) => T[lang][k] ?? T.it[k] ?? k;
const board = { on: false, socket: null, retry: 0, poll: null, view: null, agents: [], link: "", today: {}, todayPoll: null, backlog: {} };

// A ratio as the wallboard shows it ("—" without calls).
const percent = (v) => (v === null || v === undefined ? null : (100 * v).toFixed(1) + " %");

// Queues the staffing advisor finds short of operators: a line each above
// the table, and the cell marked (colour and a sign, not colour alone).
function alarms(queues) {
  const lines = queues
    .filter((q) => q.agents_needed !== null && q.agents_needed !== undefined && q.agents_short > 0)
    .map((q) => "⚠ " + t("alarm") + " — " + q.name + ": " + t("alarm-short").replace("{n}", q.agents_short));
  // A live region: rewritten only when what it says changes, so a screen
  // reader announces a new alarm once, not at every refresh.
  const box = $("alarms");
  if (box.dataset.said === lines.join("\n")) return;
  box.dataset.said = lines.join("\n");
  box.replaceChildren(...lines.map((text) => {
    const p = document.createElement("p");
    p.className = "alarm";
    p.textContent = text;
    return p;
  }));
}

function translate() {
  document.documentElement.lang = lang;
  for (const el of document.querySelectorAll("[data-t]")) el.textContent = t(el.dataset.t);
  $("lang").textContent = t("lang");
  $("lang").lang = lang === "it" ? "en" : "it";
  document.title = "Centralino — " + t("title");
  $("link").textContent = board.link ? t(board.link) : "";
  render();
}

function cells(tbody, rows) {
  tbody.replaceChildren();
  for (const row of rows) {
    const tr = document.createElement("tr");
    row.forEach((v, i) => {
      const cell = document.createElement(i === 0 ? "th" : "td");
      if (i === 0) cell.scope = "row";
      cell.textContent = v === null || v === undefined ? "—" : String(v);
      tr.append(cell);
    });
    tbody.append(tr);
  }
}

function render() {
  // Live updates rebuild the tables: a keyboard user's focus stays on the
  // same control (or its row's first) instead of falling to the page.
  const focused = document.activeElement && document.activeElement.closest("#agents") ? document.activeElement.id : null;
  const v = board.view || { queues: [], campaigns: [] };
  cells($("queues").tBodies[0], (v.queues || []).map((q) => [
    q.name, q.tenant, q.waiting, q.oldest_wait_seconds, q.expected_wait_seconds,
    q.agents && q.agents.available, q.agents && q.agents.busy,
    q.agents && q.agents.paused, q.agents && q.agents.logged_out,
    q.agents_needed === null || q.agents_needed === undefined ? null : q.agents_short,
    board.today[q.name] && percent(board.today[q.name].service_level),
    board.today[q.name] && percent(board.today[q.name].abandon_rate),
    board.backlog[q.name],
  ]));
  alarms(v.queues || []);
  (v.queues || []).forEach((q, i) => {
    const row = $("queues").tBodies[0].rows[i];
    if (row && q.agents_needed !== null && q.agents_needed !== undefined && q.agents_short > 0) {
      row.cells[9].classList.add("alarm");
      row.cells[9].textContent = "⚠ " + q.agents_short;
    }
  });
  cells($("campaigns").tBodies[0], (v.campaigns || []).map((c) => [
    c.name, c.queue, c.ringing, c.talking, c.answered,
    c.abandon_rate === null || c.abandon_rate === undefined ? null : (100 * c.abandon_rate).toFixed(1) + " %",
  ]));
  const tbody = $("agents").tBodies[0];
  cells(tbody, board.agents.map((a) => [
    a.agent, a.tenant, T[lang]["s_" + a.state] ?? a.state, a.reason && (T[lang]["r_" + a.reason] ?? a.reason),
    clock(a.seconds_in_state),
  ]));
  // A break forced or lifted by the supervisor (audited on the node).
  board.agents.forEach((a, i) => {
    const td = document.createElement("td");
    for (const [key, state, when] of [
      ["do-pause", "paused", ["available", "wrap_up"]],
      ["do-resume", "available", ["paused", "wrap_up"]],
      ["do-signout", "logged_out", ["available", "paused", "wrap_up", "ringing", "on_call"]],
    ]) {
      // Signed out with a phone registered: Rendi disponibile brings them back.
      const out = a.state === "logged_out" && a.reason === "signed_out" && state === "available";
      if (!when.includes(a.state) && !out) continue;
      const b = document.createElement("button");
      b.type = "button";
      b.id = key + "-" + a.agent;
      b.textContent = t(key);
      b.setAttribute("aria-label", t(key) + " " + a.agent);
      b.addEventListener("click", () => setState(a.agent, state));
      td.append(b);
    }
    // Listen in (then whisper or barge) to a conversation, one at a time.
    if (a.state === "on_call" && monitor.agent !== a.agent) {
      const b = document.createElement("button");
      b.type = "button";
      b.id = "listen-" + a.agent;
      b.textContent = t("do-listen");
      b.setAttribute("aria-label", t("do-listen") + " " + a.agent);
      b.addEventListener("click", () => listen(a.agent));
      td.append(b);
    }
    tbody.rows[i].append(td);
  });
  if (focused) {
    const again = document.getElementById(focused);
    if (again) again.focus();
  }
}

async function setState(agent, state) {
  const body = state === "available" ? { state } : { state, reason: "supervisore" };
  const r = await api("POST", "/api/v1/agents/" + encodeURIComponent(agent) + "/state", body);
  $("action-status").textContent = r.status === 200
    ? agent + ": " + (T[lang]["done-" + r.json.state] ?? T[lang]["s_" + r.json.state] ?? r.json.state)
    : agent + ": " + ((r.json && r.json.error) || t("failed"));
  agents();
}

// The supervisor on an operator's call: their browser is a WebRTC peer of
// the node (ICE-lite, on a port of its own); the microphone travels muted
// while listening, so whispering or barging needs no new offer.
const monitor = { agent: null, call: null, pc: null, stream: null, mode: null, ended: null };
window.centralinoMonitor = monitor;

function monitorPath(agent) {
  return "/api/v1/agents/" + encodeURIComponent(agent) + "/monitor";
}

function closeMonitor(why) {
  if (monitor.pc) monitor.pc.close();
  if (monitor.stream) for (const track of monitor.stream.getTracks()) track.stop();
  Object.assign(monitor, { agent: null, call: null, pc: null, stream: null, mode: null, ended: why || null });
  $("monitor-audio").srcObject = null;
  $("monitor").hidden = true;
  render();
}

function showMode() {
  for (const m of ["listen", "whisper", "barge"]) {
    const b = $("mode-" + m);
    b.setAttribute("aria-pressed", String(monitor.mode === m));
    b.disabled = m !== "listen" && !monitor.stream;
  }
  if (monitor.stream) for (const track of monitor.stream.getAudioTracks()) track.enabled = monitor.mode !== "listen";
}

async function listen(agent) {
  if (monitor.pc) await leave();
  $("monitor-status").textContent = "";
  let stream = null;
  try {
    stream = await navigator.mediaDevices.getUserMedia({ audio: true });
  } catch (_) {
    stream = null;
  }
  const pc = new RTCPeerConnection({ iceServers: [] });
  if (stream) for (const track of stream.getTracks()) { track.enabled = false; pc.addTrack(track, stream); }
  else pc.addTransceiver("audio", { direction: "recvonly" });
  pc.ontrack = (ev) => { $("monitor-audio").srcObject = ev.streams[0] || new MediaStream([ev.track]); };
  // No candidates to wait for: the node is ICE-lite.
  await pc.setLocalDescription(await pc.createOffer());
  const r = await api("POST", monitorPath(agent), { mode: "listen", sdp: pc.localDescription.sdp });
  if (r.status !== 200 || !r.json || !r.json.sdp) {
    pc.close();
    if (stream) for (const track of stream.getTracks()) track.stop();
    $("action-status").textContent = agent + ": " + ((r.json && r.json.error) || t("failed"));
    return;
  }
  await pc.setRemoteDescription({ type: "answer", sdp: r.json.sdp });
  Object.assign(monitor, { agent, call: r.json.call, pc, stream, mode: "listen", ended: null });
  $("monitor-agent").textContent = agent;
  $("monitor").hidden = false;
  $("monitor-status").textContent = agent + ": " + t(stream ? "m-on" : "m-nomic");
  showMode();
  render();
  $("mode-listen").focus();
}

async function setMode(mode) {
  if (!monitor.agent || monitor.mode === mode) return;
  const r = await api("PATCH", monitorPath(monitor.agent), { mode });
  if (r.status === 200) {
    monitor.mode = mode;
    showMode();
    $("monitor-status").textContent = monitor.agent + ": " + t("m-" + mode);
  } else if (r.status === 409) {
    closeMonitor("ended");
    $("monitor-status").textContent = t("m-ended");
  } else {
    $("monitor-status").textContent = (r.json && r.json.error) || t("failed");
  }
}

async function leave() {
  if (!monitor.agent) return;
  const agent = monitor.agent;
  closeMonitor("left");
  await api("DELETE", monitorPath(agent));
}

function showLogin() {
  closeMonitor();
  board.on = false;
  if (board.socket) { board.socket.onclose = null; board.socket.close(); board.socket = null; }
  clearInterval(board.poll);
  clearInterval(board.todayPoll);
  board.today = {};
  board.view = null;
  board.agents = [];
  render();
  $("login").hidden = false;
  $("board").hidden = true;
  $("logout").hidden = true;
  $("who").textContent = "";
  $("token").focus();
}

function showBoard(name) {
  board.on = true;
  $("login").hidden = true;
  $("board").hidden = false;
  $("logout").hidden = false;
  $("who").textContent = name;
  connect();
  agents();
  board.poll = setInterval(agents, 3000);
  today();
  board.todayPoll = setInterval(today, 60000);
  $("main").focus();
}

// Today's service level and abandon rate per queue (the node's report,
// README "Service figures"), once a minute.
async function today() {
  const r = await api("GET", "/api/v1/reports/queues?interval=1d");
  if (r.status !== 200 || !r.json) return;
  board.today = {};
  for (const row of r.json.intervals || []) board.today[row.queue] = row;
  // Callbacks not done yet, per queue.
  const q = await api("GET", "/api/v1/queues");
  board.backlog = {};
  if (q.status === 200 && q.json) {
    for (const row of q.json.queues || []) board.backlog[row.name] = row.callbacks_open;
  }
  render();
}

async function agents() {
  const r = await api("GET", "/api/v1/agents");
  if (r.status === 401) { showLogin(); return; }
  if (r.status === 200 && r.json) {
    board.agents = r.json.agents || [];
    // The operator's conversation ended: so did the supervisor's place.
    if (monitor.agent && !board.agents.some((a) => a.agent === monitor.agent && a.state === "on_call")) {
      closeMonitor("ended");
      $("action-status").textContent = t("m-ended");
    }
    render();
  }
}

function connect() {
  const scheme = location.protocol === "https:" ? "wss://" : "ws://";
  const ws = new WebSocket(scheme + location.host + "/api/v1/queues/events");
  board.socket = ws;
  ws.onopen = () => { board.retry = 0; board.link = "connected"; $("link").textContent = t("connected"); };
  ws.onmessage = (m) => {
    try { board.view = JSON.parse(m.data); } catch (_) { return; }
    render();
  };
  ws.onclose = async () => {
    board.socket = null;
    if (!board.on) return;
    const who = await api("GET", "/api/v1/login");
    if (who.status === 401) { showLogin(); return; }
    board.link = "reconnecting";
    $("link").textContent = t("reconnecting");
    board.retry = Math.min(board.retry + 1, 6);
    setTimeout(connect, 250 * 2 ** board.retry);
  };
}

async function login(ev) {
  ev.preventDefault();
  $("login-error").textContent = "";
  const token = $("token").value.trim();
  $("token").value = "";
  if (!token) { $("login-error").textContent = t("bad-token"); return; }
  const r = await api("POST", "/api/v1/login", { token, cookie_only: true });
  if (r.status === 200 && r.json) showBoard(r.json.name);
  else if (r.status === 401) $("login-error").textContent = t("bad-token");
  else if (r.status === 403) $("login-error").textContent = t("not-supervisor");
  else if (r.status === 429) $("login-error").textContent = t("too-many");
  else $("login-error").textContent = (r.json && r.json.error) || t("failed");
}

async function boot() {
  $("login-form").addEventListener("submit", login);
  for (const m of ["listen", "whisper", "barge"]) $("mode-" + m).addEventListener("click", () => setMode(m));
  $("monitor-end").addEventListener("click", leave);
  // Leaving the page or logging out leaves the call first (the node ends
  // a gone browser's leg by itself too, within 30 s).
  $("logout").addEventListener("click", async () => { await leave(); await api("DELETE", "/api/v1/login"); showLogin(); });
  window.addEventListener("pagehide", () => {
    if (monitor.agent) fetch(monitorPath(monitor.agent), { method: "DELETE", keepalive: true, credentials: "same-origin" });
  });
  $("lang").addEventListener("click", () => {
    lang = lang === "it" ? "en" : "it";
    localStorage.setItem("centralino.lang", lang);
    translate();
  });
  translate();
  const who = await api("GET", "/api/v1/login");
  if (who.status === 200 && who.json && (who.json.role === "supervisor" || who.json.role === "admin")) showBoard(who.json.name);
  else showLogin();
}

document.addEventListener("DOMContentLoaded", boot);
