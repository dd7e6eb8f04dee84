// The operator's desktop: served by the node itself, no framework, no
// build step. Everything it shows comes from the node's API; every value
// from a call (IVR answers, contact data) is written as text, never as
// markup. The session is an HttpOnly cookie this script never sees.
"use strict";

const T = {
  it: {
    title: "Postazione operatore", skip: "Vai al contenuto", logout: "Esci",
    login: "Accesso", username: "Utente", password: "Password", enter: "Entra",
    state: "Stato", now: "Ora", available: "Disponibile", reason: "Motivo della pausa",
    pause: "Metti in pausa", connecting: "Connessione…", connected: "Collegato",
    reconnecting: "Connessione persa: nuovo tentativo…",
    "r-pausa": "Pausa", "r-pranzo": "Pranzo", "r-formazione": "Formazione",
    "r-riunione": "Riunione", "r-back_office": "Back office",
    call: "Chiamata", "no-call": "Nessuna chiamata", offered: "Squilla: rispondi al telefono",
    ended: "Chiamata terminata: completa script ed esito",
    connected_call: "In conversazione", preview: "Contatto da chiamare: decidi",
    accept: "Chiama il contatto", "skip-contact": "Salta",
    queue: "Coda", flow: "Percorso IVR", campaign: "Campagna", callback: "Richiamata",
    contact: "Contatto", script: "Script", next: "Avanti", end: "Script completato",
    saved: "Risposta registrata", disposition: "Esito del contatto", code: "Esito",
    note: "Nota", save: "Registra esito", "disposition-saved": "Esito registrato",
    "d-booked": "Appuntamento preso", "d-refused": "Rifiuta", "d-call_later": "Richiamare",
    "d-no_contact": "Non raggiunto", "d-wrong_number": "Numero errato",
    "disposition-call": "Esito della chiamata", "d-resolved": "Risolta", "d-information": "Informazioni date",
    "d-callback": "Da richiamare", "d-unresolved": "Non risolta",
    "bad-login": "Utente o password errati", "too-many": "Troppi tentativi: riprova più tardi",
    "logins-off": "Accesso da browser disattivato su questo nodo",
    failed: "Operazione non riuscita", lang: "English",
    s_logged_out: "Non registrato (telefono spento?)", s_available: "Disponibile",
    s_reserved: "Riservato per una chiamata", s_ringing: "Squilla", s_on_call: "In chiamata",
    s_wrap_up: "Post-chiamata", s_paused: "In pausa",
    m_manual: "manuale", m_no_answer: "chiamate non risposte", m_media_lost: "audio perso",
    m_signed_out: "fuori servizio: Disponibile per rientrare", signout: "Fine turno",
    s_logging_out: "Fine turno dopo la chiamata",
    "phone-on": "Rispondi dal browser (cuffie)", "phone-ready": "pronto",
    "phone-off": "spento", "phone-refused": "non disponibile", pickup: "Rispondi",
    decline: "Rifiuta", mute: "Microfono", hangup: "Riaggancia", hold: "Attesa",
    ringing_here: "Squilla qui: rispondi con il pulsante", "no-mic": "Microfono non disponibile",
    "transfer-to": "Trasferisci a una coda, un collega o un numero",
    figures: "Le mie code", "f-queue": "Coda", "f-waiting": "In attesa", "f-oldest": "Attesa max (s)",
    "f-expected": "Prevista (s)", "f-free": "Liberi", "f-today": "Oggi",
    "f-calls": "chiamate", "f-call": "chiamata", "f-talk": "in conversazione", transfer: "Trasferisci", transferred: "Chiamata trasferita",
    "consult-to": "Consulta un collega o una coda", consult: "Consulta",
    complete: "Passa la chiamata", "consult-cancel": "Torna al cittadino",
    "consult-calling": "Chiamata di consulenza in corso: il cittadino è in attesa",
    "consult-talking": "In consulenza: il cittadino è in attesa",
    "consult-ended": "Consulenza terminata: sei di nuovo con il cittadino",
  },
  en: {
    title: "Operator desktop", skip: "Skip to content", logout: "Log out",
    login: "Sign in", username: "User", password: "Password", enter: "Sign in",
    state: "State", now: "Now", available: "Available", reason: "Break reason",
    pause: "Take a break", connecting: "Connecting…", connected: "Connected",
    reconnecting: "Connection lost: retrying…",
    "r-pausa": "Break", "r-pranzo": "Lunch", "r-formazione": "Training",
    "r-riunione": "Meeting", "r-back_office": "Back office",
    call: "Call", "no-call": "No call", offered: "Ringing: answer your phone",
    ended: "Call ended: finish the script and the outcome",
    connected_call: "On the call", preview: "Contact to call: decide",
    accept: "Call the contact", "skip-contact": "Skip",
    queue: "Queue", flow: "IVR path", campaign: "Campaign", callback: "Callback",
    contact: "Contact", script: "Script", next: "Next", end: "Script complete",
    saved: "Answer saved", disposition: "Contact outcome", code: "Outcome",
    note: "Note", save: "Save outcome", "disposition-saved": "Outcome saved",
    "d-booked": "Appointment booked", "d-refused": "Refused", "d-call_later": "Call later",
    "d-no_contact": "Not reached", "d-wrong_number": "Wrong number",
    "disposition-call": "Call outcome", "d-resolved": "Resolved", "d-information": "Information given",
    "d-callback": "To call back", "d-unresolved": "Not resolved",
    "bad-login": "Wrong user or password", "too-many": "Too many attempts: try again later",
    "logins-off": "Browser sign-in is off on this node",
    failed: "That did not work", lang: "Italiano",
    s_logged_out: "Not registered (phone off?)", s_available: "Available",
    s_reserved: "Reserved for a call", s_ringing: "Ringing", s_on_call: "On a call",
    s_wrap_up: "Wrap-up", s_paused: "On a break",
    m_manual: "manual", m_no_answer: "missed calls", m_media_lost: "audio lost",
    m_signed_out: "signed out: Available to come back", signout: "End of shift",
    s_logging_out: "Signing out after the call",
    "phone-on": "Answer in the browser (headset)", "phone-ready": "ready",
    "phone-off": "off", "phone-refused": "not available", pickup: "Answer",
    decline: "Decline", mute: "Microphone", hangup: "Hang up", hold: "Hold",
    ringing_here: "Ringing here: answer with the button", "no-mic": "No microphone",
    "transfer-to": "Transfer to a queue, a colleague or a number",
    figures: "My queues", "f-queue": "Queue", "f-waiting": "Waiting", "f-oldest": "Longest (s)",
    "f-expected": "Expected (s)", "f-free": "Free", "f-today": "Today",
    "f-calls": "calls", "f-call": "call", "f-talk": "talking for", transfer: "Transfer", transferred: "Call transferred",
    "consult-to": "Consult a colleague or a queue", consult: "Consult",
    complete: "Hand the call over", "consult-cancel": "Back to the caller",
    "consult-calling": "Calling for a consultation: the caller is on hold",
    "consult-talking": "Consulting: the caller is on hold",
    "consult-ended": "Consultation over: you are back with the caller",
  },
};

let lang = localStorage.getItem("centralino.lang") === "en" ? "en" : "it";
const t = (k) => T[lang][k] ?? T.it[k] ?? k;

// `call`: the call on the desk now; `work`: the call the script and the
// outcome belong to (kept after it ends, until another call arrives: the
// node accepts both during wrap-up). `link`: the connection's state.
const desk = { agent: null, socket: null, retry: 0, call: null, work: null, script: null, question: null, shownScript: null, link: "connecting" };

function translate() {
  document.documentElement.lang = lang;
  for (const el of document.querySelectorAll("[data-t]")) {
    el.textContent = t(el.dataset.t);
  }
  const other = lang === "it" ? "en" : "it";
  $("lang").textContent = t("lang");
  $("lang").lang = other;
  document.title = "Centralino — " + t("title");
  if (desk.agentState) showState(desk.agentState);
  $("link").textContent = t(desk.link);
  renderCall(desk.call);
}

function setLink(key) {
  desk.link = key;
  $("link").textContent = t(key);
}

function problem(r) {
  return (r.json && r.json.error) ? r.json.error : t("failed") + " (" + r.status + ")";
}

function showLogin() {
  desk.agent = null;
  clearInterval(desk.figuresPoll);
  $("figures").tBodies[0].replaceChildren();
  // Signed out (or the session expired): no call's audio goes on here;
  // the node requeues a caller whose browser is gone.
  endConsult();
  endPhone();
  if (desk.socket) { desk.socket.onclose = null; desk.socket.close(); desk.socket = null; }
  // Nothing of the last citizen stays on a shared computer's screen.
  desk.work = null;
  desk.agentState = null;
  renderCall(null);
  resetWork();
  $("login").hidden = false;
  $("desk").hidden = true;
  $("logout").hidden = true;
  $("who").textContent = "";
  $("username").focus();
}

// The operator's queues now and their own calls today, every 5 s (the
// node answers from memory: no store read).
async function figures() {
  if (!desk.agent) return;
  const r = await api("GET", "/api/v1/agents/" + encodeURIComponent(desk.agent) + "/figures");
  if (r.status !== 200 || !r.json) return;
  const tbody = $("figures").tBodies[0];
  tbody.replaceChildren();
  for (const q of r.json.queues || []) {
    const tr = document.createElement("tr");
    [q.name, q.waiting, q.oldest_wait_seconds, q.expected_wait_seconds, q.available].forEach((v, i) => {
      const cell = document.createElement(i === 0 ? "th" : "td");
      if (i === 0) cell.scope = "row";
      cell.textContent = String(v);
      tr.append(cell);
    });
    tbody.append(tr);
  }
  const today = r.json.today || { calls: 0, talk_seconds: 0 };
  $("today-calls").textContent = String(today.calls);
  const unit = $("today-calls").nextElementSibling;
  unit.dataset.t = today.calls === 1 ? "f-call" : "f-calls";
  unit.textContent = t(unit.dataset.t);
  $("today-talk").textContent = clock(today.talk_seconds);
}

function showDesk(agent) {
  desk.agent = agent;
  $("login").hidden = true;
  $("desk").hidden = false;
  $("logout").hidden = false;
  $("who").textContent = agent;
  connect();
  figures();
  clearInterval(desk.figuresPoll);
  desk.figuresPoll = setInterval(figures, 5000);
  // Never disabled, unlike the state buttons.
  $("reason").focus();
}

async function login(ev) {
  ev.preventDefault();
  $("login-error").textContent = "";
  const username = $("username").value.trim();
  const password = $("password").value;
  if (!username || !password) {
    $("login-error").textContent = t("bad-login");
    return;
  }
  // The session as a cookie only: no token ever reaches this script.
  const r = await api("POST", "/api/v1/login", { username, password, cookie_only: true });
  $("password").value = "";
  if (r.status === 200 && r.json && r.json.agent) {
    showDesk(r.json.agent);
  } else if (r.status === 401) {
    $("login-error").textContent = t("bad-login");
  } else if (r.status === 429) {
    $("login-error").textContent = t("too-many");
  } else if (r.status === 404) {
    $("login-error").textContent = t("logins-off");
  } else {
    $("login-error").textContent = problem(r);
  }
}

async function logout() {
  endPhone();
  await api("DELETE", "/api/v1/login");
  showLogin();
}

function connect() {
  if (!desk.agent) return;
  const scheme = location.protocol === "https:" ? "wss://" : "ws://";
  const ws = new WebSocket(scheme + location.host + "/api/v1/agents/" + encodeURIComponent(desk.agent) + "/events");
  desk.socket = ws;
  setLink("connecting");
  ws.onopen = () => {
    desk.retry = 0;
    setLink("connected");
    // A reconnected desk is a phone again if it was one (first: the node
    // takes nothing from a desk that is not). A consultation ended with
    // the lost connection (the node let it go): back to the caller.
    if (phone.on) sendWs({ type: "phone", on: true });
    if (consult.about) endConsult(true);
  };
  ws.onmessage = (m) => {
    let e;
    try { e = JSON.parse(m.data); } catch (_) { return; }
    if (e.event === "agent") {
      showState(e);
      // Their own state changed their queue's figures (and their count);
      // the node publishes its queues' view within a second or so.
      figures();
      setTimeout(figures, 1500);
    } else if (e.event === "idle") {
      renderCall(null);
    } else if (e.event === "offered" || e.event === "connected") {
      renderCall(e);
    } else if (["phone", "ring", "talking", "held", "consulting", "consult_refused", "move", "sdp", "hangup", "phone_error"].includes(e.event)) {
      phoneEvent(e);
    }
  };
  ws.onclose = async () => {
    desk.socket = null;
    if (!desk.agent) return;
    // The session may have ended (expired, password changed): the login
    // form only then; a node restarting or unreachable is retried.
    const who = await api("GET", "/api/v1/login");
    if (who.status === 401) { showLogin(); return; }
    setLink("reconnecting");
    desk.retry = Math.min(desk.retry + 1, 6);
    setTimeout(connect, 250 * 2 ** desk.retry);
  };
}

function showState(e) {
  desk.agentState = e;
  $("state").textContent = t("s_" + e.state);
  $("state").dataset.state = e.state;
  $("state-reason").textContent = e.reason ? "(" + (T[lang]["m_" + e.reason] ?? e.reason) + ")" : "";
  // What the node allows now: a break from available or wrap-up, back
  // from a break or wrap-up (never while the phone rings or talks).
  // Signed out (the phone still registered): Available signs back in.
  $("available").disabled = !["paused", "wrap_up", "logged_out"].includes(e.state);
  $("pause").disabled = !["available", "wrap_up"].includes(e.state);
  $("signout").disabled = e.state === "logged_out" || e.state === "logging_out";
}

async function setState(state) {
  $("state-error").textContent = "";
  const body = state === "paused" ? { state, reason: $("reason").value }
    : state === "logged_out" ? { state, reason: "fine_turno" } : { state };
  const r = await api("POST", "/api/v1/agents/" + encodeURIComponent(desk.agent) + "/state", body);
  if (r.status === 200) {
    showState({ state: r.json.state, reason: state === "paused" ? body.reason : state === "logged_out" ? "signed_out" : null });
  } else {
    $("state-error").textContent = problem(r);
  }
}

function row(dl, name, value) {
  if (value === null || value === undefined || value === "") return;
  const dt = document.createElement("dt");
  dt.textContent = name;
  const dd = document.createElement("dd");
  dd.textContent = String(value);
  dl.append(dt, dd);
}

/// The script and the outcome start empty for each call.
function resetWork() {
  $("disposition-form").reset();
  $("disposition-status").textContent = "";
  $("script-form").replaceChildren();
  $("script-status").textContent = "";
  $("script-panel").hidden = true;
  $("disposition-panel").hidden = true;
  desk.shownScript = null;
}

function renderCall(c) {
  desk.call = c;
  const dl = $("call-info");
  dl.replaceChildren();
  $("call-error").textContent = "";
  const st = $("call-state");
  st.classList.remove("ringing");
  if (!c) {
    // The call ended: its script and outcome stay until another call.
    st.textContent = desk.work && desk.work.state === "connected" ? t("ended") : t("no-call");
    $("preview").hidden = true;
    return;
  }
  if (!desk.work || desk.work.call !== c.call) resetWork();
  desk.work = c;
  st.textContent = c.state === "preview" ? t("preview") : c.state === "offered" ? t("offered") : t("connected_call");
  if (c.state !== "connected") st.classList.add("ringing");
  row(dl, t("queue"), c.queue);
  row(dl, t("flow"), c.flow);
  row(dl, t("campaign"), c.campaign);
  row(dl, t("callback"), c.callback);
  for (const [k, v] of Object.entries(c.variables || {})) row(dl, k, v);
  $("preview").hidden = c.state !== "preview";
  // A campaign's contact or a citizen who called: each its outcomes.
  // A colleague's consultation has no outcome.
  const outcome = c.state === "connected" && !c.consultation;
  if (outcome) dispositionCodes(c.campaign ? "campaign" : "inbound");
  $("disposition-panel").hidden = !outcome;
  if (c.script && c.state === "connected") {
    showScript(c.script, c.call);
  } else {
    $("script-panel").hidden = true;
  }
}

async function preview(action) {
  const c = desk.call;
  if (!c) return;
  const r = await api("POST", "/api/v1/agents/" + encodeURIComponent(desk.agent) + "/preview", { contact: c.contact, action });
  if (r.status !== 200) $("call-error").textContent = problem(r);
}

async function showScript(name, call) {
  const key = name + "|" + call;
  if (desk.shownScript === key) return;
  desk.shownScript = key;
  const r = await api("GET", "/api/v1/scripts/" + encodeURIComponent(name));
  if (r.status !== 200 || !r.json) { $("script-panel").hidden = true; return; }
  desk.script = r.json;
  $("script-panel").hidden = false;
  ask(r.json.start);
}

function ask(id) {
  const form = $("script-form");
  form.replaceChildren();
  desk.question = id;
  const q = desk.script && desk.script.questions ? desk.script.questions[id] : null;
  if (!q || id === "end") {
    $("script-status").textContent = t("end");
    return;
  }
  const set = document.createElement("fieldset");
  const legend = document.createElement("legend");
  legend.textContent = q.text;
  set.append(legend);
  if (q.answers) {
    // Nothing chosen for the operator: an answer about a citizen's
    // health is never one Enter away.
    for (const answer of Object.keys(q.answers)) {
      const label = document.createElement("label");
      const input = document.createElement("input");
      input.type = "radio";
      input.name = "answer";
      input.value = answer;
      input.required = true;
      label.append(input, " " + answer);
      set.append(label);
    }
  } else {
    const label = document.createElement("label");
    label.htmlFor = "answer";
    label.textContent = q.text;
    const input = document.createElement("input");
    input.id = "answer";
    input.name = "answer";
    input.type = q.kind === "date" ? "date" : "text";
    input.required = true;
    input.maxLength = 500;
    // An earlier citizen's answer is never offered as a suggestion.
    input.autocomplete = "off";
    set.append(label, input);
  }
  const next = document.createElement("button");
  next.id = "next";
  next.type = "submit";
  next.textContent = t("next");
  form.append(set, next);
  // The focus follows the question (the button pressed is gone).
  const first = form.querySelector("input");
  if (first) first.focus();
}

async function answer(ev) {
  ev.preventDefault();
  const q = desk.script.questions[desk.question];
  const data = new FormData($("script-form"));
  const value = String(data.get("answer") || "").trim();
  if (!value) return;
  const call = desk.work && desk.work.call;
  const r = await api("POST", "/api/v1/calls/" + encodeURIComponent(call) + "/answers", { answers: { [desk.question]: value } });
  if (r.status !== 201) { $("script-status").textContent = problem(r); return; }
  $("script-status").textContent = t("saved");
  ask(q.answers ? q.answers[value] : (q.next || "end"));
}

// The outcomes the node takes for each kind of call.
const CODES = {
  campaign: ["booked", "refused", "call_later", "no_contact", "wrong_number"],
  inbound: ["resolved", "booked", "information", "callback", "unresolved"],
};

function dispositionCodes(kind) {
  const h = $("disposition-h");
  h.dataset.t = kind === "campaign" ? "disposition" : "disposition-call";
  h.textContent = t(h.dataset.t);
  const select = $("code");
  if (select.dataset.kind === kind) return;
  select.dataset.kind = kind;
  select.replaceChildren();
  for (const code of CODES[kind]) {
    const o = document.createElement("option");
    o.value = code;
    o.dataset.t = "d-" + code;
    o.textContent = t("d-" + code);
    select.append(o);
  }
}

async function dispose(ev) {
  ev.preventDefault();
  // The call the form was shown for, even after it ended.
  const c = desk.work;
  if (!c) return;
  const body = { code: $("code").value };
  const note = $("note").value.trim();
  if (note) body.note = note;
  const r = await api("POST", "/api/v1/calls/" + encodeURIComponent(c.call) + "/disposition", body);
  $("disposition-status").textContent = (r.status >= 200 && r.status < 300) ? t("disposition-saved") : problem(r);
}

// The browser as a phone: WebRTC audio to the node (which answers as an
// ICE-lite peer on the call's own media port), signalled over the desk's
// WebSocket. `call`: the call ringing or talked here.
const phone = { on: false, call: null, pc: null, stream: null, muted: false };
window.centralinoPhone = phone;

// An attended transfer: the browser's second call (a consultation), with
// its own WebRTC connection, while the caller waits on hold. `about`: the
// caller's call; `call`: the consultation's id once the node placed it.
const consult = { about: null, call: null, pc: null, stream: null, answered: false };
window.centralinoConsult = consult;

function sendWs(obj) {
  if (desk.socket && desk.socket.readyState === WebSocket.OPEN) desk.socket.send(JSON.stringify(obj));
}

function phoneToggle() {
  phone.on = $("phone-on").checked;
  sendWs({ type: "phone", on: phone.on });
  if (!phone.on) $("phone-state").textContent = t("phone-off");
}

function phoneEvent(e) {
  if (e.event === "phone") {
    $("phone-state").textContent = t(e.on ? "phone-ready" : "phone-refused");
    if (e.on) {
      phone.on = true;
      $("phone-on").checked = true;
    }
    // Refused, or another page of this operator took the phone over: a
    // call's audio goes on here, its controls are the other page's, and
    // the node ended the consultation.
    if (!e.on) {
      phone.on = false;
      $("phone-on").checked = false;
      endConsult();
    }
  } else if (e.event === "talking") {
    // A call this operator's browser phone talks (this page reconnected,
    // or took the phone over): it can be held, transferred, hung up here.
    if (phone.call === e.call) return;
    phone.call = e.call;
    phone.record = e.record;
    $("talk").hidden = false;
  } else if (e.event === "ring") {
    // Already answered here (a reconnect): nothing new.
    if (phone.pc && phone.call === e.call) return;
    // One call at a time here: another while talking is refused.
    if (phone.pc && phone.call !== e.call) { sendWs({ type: "hangup", call: e.call }); return; }
    phone.call = e.call;
    phone.record = e.record;
    $("ring").hidden = false;
    $("call-state").textContent = t("ringing_here");
    $("pickup").focus();
  } else if (e.event === "held") {
    // The node's word on the hold (taken, refused, or on a takeover).
    if (e.call === phone.call) {
      phone.held = e.on;
      $("hold").setAttribute("aria-pressed", String(e.on));
    }
  } else if (e.event === "move") {
    moveCall(e.call);
  } else if (consultEvent(e)) {
    // The consultation's own events.
  } else if (e.event === "sdp" && phone.pc && e.call === phone.call) {
    phone.pc.setRemoteDescription({ type: "answer", sdp: e.sdp }).catch(() => {
      $("call-error").textContent = t("failed");
    });
  } else if (e.event === "hangup" && e.call === phone.call) {
    endConsult();
    endPhone();
    phone.ended = e.reason;
    if (e.reason === "transferred") $("call-state").textContent = t("transferred");
  } else if (e.event === "phone_error") {
    $("call-error").textContent = e.message || t("failed");
  }
}

async function pickup() {
  const call = phone.call;
  $("ring").hidden = true;
  $("call-error").textContent = "";
  let stream;
  try {
    stream = await navigator.mediaDevices.getUserMedia({ audio: true });
  } catch (_) {
    $("call-error").textContent = t("no-mic");
    sendWs({ type: "hangup", call });
    return;
  }
  // The call may have stopped ringing meanwhile.
  if (phone.call !== call) {
    for (const track of stream.getTracks()) track.stop();
    return;
  }
  phone.stream = stream;
  await offer(call);
  $("talk").hidden = false;
  $("hangup").focus();
}

// A WebRTC connection for `call` with the microphone, its offer sent as
// the answer to the node's call.
async function offer(call) {
  const pc = new RTCPeerConnection({ iceServers: [] });
  phone.pc = pc;
  for (const track of phone.stream.getTracks()) pc.addTrack(track, phone.stream);
  pc.ontrack = (ev) => { $("remote-audio").srcObject = ev.streams[0] || new MediaStream([ev.track]); };
  // No candidates to wait for: the node is ICE-lite and learns the
  // browser's address from its connectivity checks.
  await pc.setLocalDescription(await pc.createOffer());
  sendWs({ type: "answer", call, sdp: pc.localDescription.sdp });
}

// The node moved the call to another of its ports (a colleague handed
// this operator their caller): a new connection there, the same call. One
// that cannot be made is hung up: the node puts the caller back in queue.
async function moveCall(call) {
  if (call !== phone.call) return;
  try {
    if (!phone.stream) {
      const stream = await navigator.mediaDevices.getUserMedia({ audio: true });
      if (call !== phone.call) {
        // Over meanwhile.
        for (const track of stream.getTracks()) track.stop();
        return;
      }
      phone.stream = stream;
    }
    if (phone.pc) phone.pc.close();
    setMic();
    await offer(call);
  } catch (_) {
    $("call-error").textContent = t("no-mic");
    sendWs({ type: "hangup", call });
    endPhone();
  }
}

function endPhone() {
  if (phone.pc) phone.pc.close();
  if (phone.stream) for (const track of phone.stream.getTracks()) track.stop();
  Object.assign(phone, { call: null, pc: null, stream: null, muted: false, held: false });
  $("hold").setAttribute("aria-pressed", "false");
  $("remote-audio").srcObject = null;
  $("ring").hidden = true;
  $("talk").hidden = true;
  $("mute").setAttribute("aria-pressed", "false");
}

function hangup() {
  if (consult.call) sendWs({ type: "hangup", call: consult.call });
  endConsult();
  if (phone.call) sendWs({ type: "hangup", call: phone.call });
  endPhone();
}

// The caller on hold with the music, the browser calls a colleague or a
// queue of the firm on a second connection. The caller's connection sends
// nothing meanwhile, whatever becomes of the hold: they never hear the
// consultation.
async function startConsult(ev) {
  ev.preventDefault();
  const to = $("consult-to").value.trim();
  const about = phone.call;
  if (!about || !phone.pc || !to || consult.about) return;
  consult.about = about;
  setMic();
  if (!phone.held) hold();
  try {
    const stream = await navigator.mediaDevices.getUserMedia({ audio: true });
    if (consult.about !== about || phone.call !== about) {
      // Hung up or ended meanwhile.
      for (const track of stream.getTracks()) track.stop();
      return;
    }
    const pc = new RTCPeerConnection({ iceServers: [] });
    Object.assign(consult, { pc, stream, to });
    for (const track of stream.getTracks()) pc.addTrack(track, stream);
    pc.ontrack = (e) => { $("consult-audio").srcObject = e.streams[0] || new MediaStream([e.track]); };
    await pc.setLocalDescription(await pc.createOffer());
    if (consult.about !== about || phone.call !== about) return;
    $("call-error").textContent = "";
    sendWs({ type: "consult", call: about, to, sdp: pc.localDescription.sdp });
  } catch (_) {
    $("call-error").textContent = t("no-mic");
    if (consult.about === about) endConsult(true);
    return;
  }
  // One transfer at a time: the blind one waits for the consultation.
  $("consult-form").hidden = true;
  $("transfer-form").hidden = true;
  $("consulting").hidden = false;
  $("complete").disabled = true;
  $("consult-state").textContent = `${t("consult-calling")} (${to})`;
  $("consult-cancel").focus();
}

// The microphone towards the caller: off while consulting or muted.
function setMic() {
  const on = !phone.muted && !consult.about;
  if (phone.stream) for (const track of phone.stream.getAudioTracks()) track.enabled = on;
}

// Handles the consultation's events; false for the others.
function consultEvent(e) {
  if (e.event === "consulting" && e.about === consult.about) {
    consult.call = e.call;
  } else if (e.event === "sdp" && consult.pc && e.call === consult.call) {
    consult.pc.setRemoteDescription({ type: "answer", sdp: e.sdp }).then(() => {
      consult.answered = true;
      $("complete").disabled = false;
      $("consult-state").textContent = `${t("consult-talking")} (${consult.to})`;
      $("complete").focus();
    }).catch(() => { $("call-error").textContent = t("failed"); });
  } else if (e.event === "hangup" && consult.call && e.call === consult.call) {
    // Over (or handed over): back with the caller if they are still here.
    const back = !!phone.call;
    endConsult(back);
    if (back) $("call-state").textContent = t("consult-ended");
  } else if (e.event === "consult_refused" && e.about === consult.about && !consult.call) {
    // Refused before it was placed: back to the caller.
    $("call-error").textContent = e.message || t("failed");
    endConsult(true);
  } else if (e.event === "phone_error" && consult.call && (e.call === consult.about || e.call === consult.call)) {
    // The hand-over refused: the consultation goes on, the operator may
    // try again or go back.
    $("call-error").textContent = e.message || t("failed");
    $("complete").disabled = !consult.answered;
  } else {
    return false;
  }
  return true;
}

// Ends the consultation here; `resume`: the operator is back with the
// caller, who leaves the hold.
function endConsult(resume) {
  const focused = $("consulting").contains(document.activeElement);
  if (consult.pc) consult.pc.close();
  if (consult.stream) for (const track of consult.stream.getTracks()) track.stop();
  Object.assign(consult, { about: null, call: null, pc: null, stream: null, answered: false, to: null });
  $("consult-audio").srcObject = null;
  $("consulting").hidden = true;
  $("consult-form").hidden = false;
  $("transfer-form").hidden = false;
  setMic();
  if (resume && phone.call && phone.held) hold();
  // The keyboard goes on from the call's controls, not from the page's top.
  if (focused && !$("talk").hidden) $("hold").focus();
}

function completeConsult() {
  if (!phone.call || !consult.answered) return;
  // Once: the node's answer ends both calls, or a refusal enables it again.
  $("complete").disabled = true;
  sendWs({ type: "complete", call: phone.call });
}

function cancelConsult() {
  if (consult.call) sendWs({ type: "hangup", call: consult.call });
  endConsult(true);
  $("call-state").textContent = t("consult-ended");
  $("hold").focus();
}

function transfer(ev) {
  ev.preventDefault();
  const to = $("transfer-to").value.trim();
  if (phone.call && to) sendWs({ type: "transfer", call: phone.call, to });
}

// Hold: the caller hears the queue's music until the operator resumes.
function hold() {
  if (!phone.call) return;
  phone.held = !phone.held;
  sendWs({ type: "hold", call: phone.call, on: phone.held });
  $("hold").setAttribute("aria-pressed", String(phone.held));
}

function mute() {
  phone.muted = !phone.muted;
  setMic();
  $("mute").setAttribute("aria-pressed", String(phone.muted));
}

async function boot() {
  $("login-form").addEventListener("submit", login);
  $("logout").addEventListener("click", logout);
  $("available").addEventListener("click", () => setState("available"));
  $("pause").addEventListener("click", () => setState("paused"));
  $("signout").addEventListener("click", () => setState("logged_out"));
  $("accept").addEventListener("click", () => preview("accept"));
  $("skip").addEventListener("click", () => preview("skip"));
  $("script-form").addEventListener("submit", answer);
  $("phone-on").addEventListener("change", phoneToggle);
  $("pickup").addEventListener("click", pickup);
  $("decline").addEventListener("click", hangup);
  $("hangup").addEventListener("click", hangup);
  $("mute").addEventListener("click", mute);
  $("hold").addEventListener("click", hold);
  $("transfer-form").addEventListener("submit", transfer);
  $("consult-form").addEventListener("submit", startConsult);
  $("complete").addEventListener("click", completeConsult);
  $("consult-cancel").addEventListener("click", cancelConsult);
  // Not kept across page loads: a duplicated tab never takes the phone
  // (and its call) from the page the operator uses.
  $("phone-on").checked = false;
  $("disposition-form").addEventListener("submit", dispose);
  $("lang").addEventListener("click", () => {
    lang = lang === "it" ? "en" : "it";
    localStorage.setItem("centralino.lang", lang);
    translate();
  });
  translate();
  const who = await api("GET", "/api/v1/login");
  if (who.status === 200 && who.json && who.json.agent) showDesk(who.json.agent);
  else showLogin();
}

document.addEventListener("DOMContentLoaded", boot);
