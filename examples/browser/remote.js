// tether demo client (protocol tether.v1, see docs/protocol.md). No dependencies.
"use strict";

const $ = (id) => document.getElementById(id);
let ws = null;
let nextId = 1;
// Durable messages (docs/protocol.md, section 9): the highest seq processed, kept per device
// across page loads, presented on reconnect (?last_seq=) and used to drop redeliveries.
let seqKey = null;
let lastSeq = 0;
let ackTimer = null;
// Reconnect with exponential backoff and full jitter, so that a node restart does not bring
// every page back in the same second: a random delay in [0, min(30 s, 0.5 s * 2^attempt)).
let attempt = 0;
let reconnectTimer = null;
let wanted = false;

function log(line) {
  const div = document.createElement("div");
  div.textContent = `${new Date().toLocaleTimeString()}  ${line}`;
  $("log").prepend(div);
}

function setStatus(state, text) {
  $("status").dataset.state = state;
  $("status").textContent = text;
}

function ackDurable() {
  // Cumulative: one ack covers every durable message up to lastSeq; sent at most every 200 ms.
  if (ackTimer) return;
  ackTimer = setTimeout(() => {
    ackTimer = null;
    if (ws && ws.readyState === WebSocket.OPEN && lastSeq > 0) ws.send(JSON.stringify({ op: "ack", seq: lastSeq }));
  }, 200);
}

function scheduleReconnect() {
  if (!wanted || reconnectTimer) return;
  const delayMs = Math.random() * Math.min(30000, 500 * 2 ** attempt);
  attempt += 1;
  setStatus("closed", `reconnecting in ${(delayMs / 1000).toFixed(1)} s`);
  reconnectTimer = setTimeout(() => {
    reconnectTimer = null;
    open();
  }, delayMs);
}

function connect() {
  wanted = true;
  attempt = 0;
  open();
}

function open() {
  if (ws) {
    ws.onclose = null;
    ws.close();
  }
  const token = $("token").value.trim();
  // The device id is the token's `sub` (docs/protocol.md, section 2).
  try {
    const claims = JSON.parse(atob(token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/")));
    seqKey = `tether.lastSeq.${claims.sub}`;
    lastSeq = Number(localStorage.getItem(seqKey) || 0);
  } catch {
    seqKey = null;
    lastSeq = 0;
  }
  const url = new URL($("url").value.trim());
  if (lastSeq > 0) url.searchParams.set("last_seq", String(lastSeq));
  // Browsers cannot set headers: the token rides in a subprotocol entry; the server answers
  // with "tether.v1" and never echoes the token.
  ws = new WebSocket(url.toString(), ["tether.v1", "tether.token." + token]);
  setStatus("connecting", "connecting…");
  ws.onmessage = (event) => {
    const msg = JSON.parse(event.data);
    switch (msg.op) {
      case "hello":
        // Routable from now on: messages to this device reach this page.
        attempt = 0;
        setStatus("ready", `ready as ${msg.device} (node ${msg.node}, shard ${msg.shard})`);
        break;
      case "msg":
        if (msg.seq !== undefined) {
          // Durable: at least once, so drop what was already processed, then acknowledge.
          if (msg.seq <= lastSeq) break;
          lastSeq = msg.seq;
          if (seqKey) localStorage.setItem(seqKey, String(lastSeq));
          ackDurable();
          log(`${msg.from} (durable #${msg.seq}): ${JSON.stringify(msg.data ?? msg.b64)}`);
          break;
        }
        // `from` is set by the server: the authenticated sender, never what a client claimed.
        if (msg.data && msg.data.key) log(`${msg.from} pressed ${msg.data.key}`);
        else log(`${msg.from}${msg.topic ? " on " + msg.topic : ""}: ${JSON.stringify(msg.data ?? msg.b64)}`);
        // The sender waits for this: acknowledge once the message is handled.
        if (msg.ack_id) ws.send(JSON.stringify({ op: "ack", ack_id: msg.ack_id }));
        break;
      case "request":
        // A backend asks; this demo answers with what it knows about itself.
        ws.send(JSON.stringify({ op: "reply", rid: msg.rid, data: { page: "remote", ua: navigator.userAgent } }));
        log(`${msg.from} asked ${JSON.stringify(msg.data)}; replied`);
        break;
      case "ack":
        if (msg.delivered === false) log(`${msg.id} not delivered: ${msg.reason}`);
        else if (msg.delivered) log(`delivered (${msg.id})`);
        break;
      case "error":
        if (msg.code === "durable_unavailable") {
          // This node keeps no durable messages: stop presenting a seq.
          lastSeq = 0;
          if (seqKey) localStorage.removeItem(seqKey);
        }
        log(`error ${msg.code}${msg.id ? " (" + msg.id + ")" : ""}: ${msg.message}`);
        break;
      default:
        log(`? ${event.data}`);
    }
  };
  ws.onclose = (event) => {
    setStatus("closed", `closed (${event.code || "refused"})`);
    // 4409: a newer session of this device took the place; 1008: policy (e.g. token): a retry
    // would not help. Anything else (network loss, node restart or drain 1001): come back.
    if (event.code === 4409 || event.code === 1008) wanted = false;
    else scheduleReconnect();
  };
}

function press(key) {
  const to = $("to").value.trim();
  if (!ws || ws.readyState !== WebSocket.OPEN || !to) {
    log("connect and choose a device first");
    return;
  }
  ws.send(JSON.stringify({ op: "send", to, data: { key }, id: `k${nextId++}`, ack: true }));
}

$("connect").addEventListener("click", connect);
document.querySelectorAll("button[data-key]").forEach((b) => b.addEventListener("click", () => press(b.dataset.key)));

const params = new URLSearchParams(location.search);
for (const field of ["url", "token", "to"]) if (params.has(field)) $(field).value = params.get(field);
if (params.get("connect") === "1") connect();
