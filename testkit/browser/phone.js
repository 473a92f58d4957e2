// The test softphone (phone.html). Query parameters:
//   ws        WebSocket URL of Kamailio (wss://127.0.0.1:PORT or ws://...)
//   user, password, domain    the AoR and its digest password
//   instance  the +sip.instance UUID (kept across page loads, as an app keeps it)
//   prid      the push subscription URI (RFC 8599 pn-prid for pn-provider=webpush)
//   answer    "1": answer incoming calls (default), "0": only ring
"use strict";
const q = new URLSearchParams(location.search);
const phone = { events: [], registered: false, featureCaps: null, sessions: [] };
window.phone = phone;

function note(event, detail) {
  const at = performance.timeOrigin + performance.now();
  phone.events.push({ event, at, detail: detail || "" });
  document.getElementById("log").textContent += `${at.toFixed(1)} ${event} ${detail || ""}\n`;
}

const socket = new JsSIP.WebSocketInterface(q.get("ws"));
// RFC 8599 push parameters are Contact *URI* parameters: JsSIP takes them in contact_uri
// (its setExtraContactParams would make them header parameters).
const token = () => Math.random().toString(36).slice(2, 10);
let contact = `sip:${token()}@${token()}.invalid;transport=ws`;
if (q.get("prid")) {
  contact += `;pn-provider=webpush;pn-prid=${q.get("prid")}`;
}
const ua = new JsSIP.UA({
  sockets: [socket],
  uri: `sip:${q.get("user")}@${q.get("domain")}`,
  password: q.get("password"),
  realm: q.get("domain"),
  instance_id: q.get("instance"),
  contact_uri: contact,
  register: false,
  register_expires: 600,
  session_timers: false,
  user_agent: "Pushgate test softphone (JsSIP)",
});

ua.on("connected", () => note("ws_connected"));
ua.on("disconnected", () => note("ws_disconnected"));
ua.on("registered", (e) => {
  phone.registered = true;
  phone.featureCaps = e.response.getHeaders("Feature-Caps");
  note("registered", e.response.status_code);
});
ua.on("registrationFailed", (e) => note("registration_failed", e.cause));
ua.on("newRTCSession", (e) => {
  if (e.originator !== "remote") return;
  const session = e.session;
  phone.sessions.push(session);
  note("invite_in", e.request.call_id);
  session.on("accepted", () => note("answered", e.request.call_id));
  session.on("confirmed", () => note("confirmed", e.request.call_id));
  session.on("ended", (ev) => note("ended", `${e.request.call_id} ${ev.cause}`));
  session.on("failed", (ev) => note("failed", `${e.request.call_id} ${ev.cause}`));
  if (q.get("answer") !== "0") {
    session.answer({ mediaConstraints: { audio: true, video: false } });
  }
});
note("page_loaded");
ua.start();
ua.register();
