// tether demo client (protocol tether.v1, see docs/protocol.md). No dependencies.
"use strict";

const $ = (id) => document.getElementById(id);
let ws = null;
let nextId = 1;

function log(line) {
  const div = document.createElement("div");
  div.textContent = `${new Date().toLocaleTimeString()}  ${line}`;
  $("log").prepend(div);
}

function setStatus(state, text) {
  $("status").dataset.state = state;
  $("status").textContent = text;
}

function connect() {
  if (ws) ws.close();
  const token = $("token").value.trim();
  // Browsers cannot set headers: the token rides in a subprotocol entry; the server answers
  // with "tether.v1" and never echoes the token.
  ws = new WebSocket($("url").value.trim(), ["tether.v1", "tether.token." + token]);
  setStatus("connecting", "connecting…");
  ws.onmessage = (event) => {
    const msg = JSON.parse(event.data);
    switch (msg.op) {
      case "hello":
        // Routable from now on: messages to this device reach this page.
        setStatus("ready", `ready as ${msg.device} (node ${msg.node}, shard ${msg.shard})`);
        break;
      case "msg":
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
        log(`error ${msg.code}${msg.id ? " (" + msg.id + ")" : ""}: ${msg.message}`);
        break;
      default:
        log(`? ${event.data}`);
    }
  };
  ws.onclose = (event) => setStatus("closed", `closed (${event.code || "refused"})`);
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
