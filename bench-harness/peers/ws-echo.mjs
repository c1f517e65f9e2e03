// Peer server: Node `ws` echo (one Node process, one thread), permessage-deflate off as for every
// other server in the comparison. Echoes text and binary messages; ws answers pings by itself.
//
// Usage: node ws-echo.mjs --listen HOST:PORT --ws-module /path/to/node_modules/ws
// `tether-bench` finds the module (tests/node/node_modules/ws or the global one) and passes it.
// Prints nothing but errors. The open-files limit is inherited from the runner, which raised it.
import { createRequire } from 'node:module';

function arg(name) {
  const i = process.argv.indexOf(name);
  if (i < 0 || i + 1 >= process.argv.length) {
    console.error(`usage: node ws-echo.mjs --listen HOST:PORT --ws-module DIR (missing ${name})`);
    process.exit(2);
  }
  return process.argv[i + 1];
}

const listen = arg('--listen');
const sep = listen.lastIndexOf(':');
const host = listen.slice(0, sep).replace(/^\[|\]$/g, '');
const port = Number(listen.slice(sep + 1));
const require = createRequire(import.meta.url);
const { WebSocketServer } = require(arg('--ws-module'));

const wss = new WebSocketServer({ host, port, backlog: 65535, perMessageDeflate: false });
wss.on('error', (err) => {
  console.error(`ws-echo: ${err.message}`);
  process.exit(1);
});
wss.on('connection', (ws) => {
  ws.on('error', () => {});
  ws.on('message', (data, isBinary) => ws.send(data, { binary: isBinary }));
});
