// Reference echo server on Node's `ws` (from tests/node/node_modules), for comparison runs of
// scripts/autobahn.sh. Usage: node ws_echo.mjs PORT [--no-compression]. Messages up to 32 MiB;
// permessage-deflate offered unless --no-compression.
import { createRequire } from 'node:module';

const require = createRequire(new URL('../../node/package.json', import.meta.url));
const { WebSocketServer } = require('ws');

const port = Number(process.argv[2]);
const perMessageDeflate = !process.argv.slice(3).includes('--no-compression');
const server = new WebSocketServer({ host: '127.0.0.1', port, perMessageDeflate, maxPayload: 32 << 20 });
server.on('connection', (ws) => {
  ws.on('message', (data, isBinary) => ws.send(data, { binary: isBinary }));
  ws.on('error', () => {});
});
