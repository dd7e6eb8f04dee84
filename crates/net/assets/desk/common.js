// What both pages share: the API call (same-origin, the session cookie
// travels by itself), the element lookup and how a duration reads.
"use strict";

const $ = (id) => document.getElementById(id);

// Seconds as h:mm:ss or m:ss (time in state, talk time); null stays null.
function clock(s) {
  if (s === null || s === undefined) return null;
  const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60), r = String(s % 60).padStart(2, "0");
  return h > 0 ? h + ":" + String(m).padStart(2, "0") + ":" + r : m + ":" + r;
}

async function api(method, path, body) {
  const init = { method, credentials: "same-origin", headers: {} };
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  let r;
  try {
    r = await fetch(path, init);
  } catch (e) {
    return { status: 0, json: { error: String(e) } };
  }
  let json = null;
  try { json = await r.json(); } catch (_) { json = null; }
  return { status: r.status, json };
}
