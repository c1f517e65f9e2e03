// Node clients against tether's diagnostic /echo: the `ws` package and Node's built-in
// WebSocket (undici; Node 20 needs --experimental-websocket).
//
//   TETHER_ECHO_URL=ws://127.0.0.1:PORT/echo node --experimental-websocket --test echo.test.mjs
//
// scripts/tests/30-interop.sh starts a tether node and sets TETHER_ECHO_URL. Without it every
// test fails: this suite never skips.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { once } from 'node:events';
import WebSocket from 'ws';

const TIMEOUT_MS = 10_000;
const url = process.env.TETHER_ECHO_URL;

function echoUrl() {
  assert.ok(url, 'TETHER_ECHO_URL is not set: run scripts/tests/30-interop.sh');
  return url;
}

// Resolves with the next event of `name`, rejects on 'error' or after TIMEOUT_MS.
function next(emitter, name) {
  return once(emitter, name, { signal: AbortSignal.timeout(TIMEOUT_MS) });
}

async function openWs(options = {}) {
  const ws = new WebSocket(echoUrl(), { perMessageDeflate: false, ...options });
  await next(ws, 'open');
  return ws;
}

async function roundTrip(ws, data, options = {}) {
  const reply = next(ws, 'message');
  ws.send(data, options);
  const [message, isBinary] = await reply;
  return { message, isBinary };
}

// A masked client frame built by hand, for violations `ws` refuses to send.
function maskedFrame(opcode, payload, { fin = true, rsv = 0 } = {}) {
  const mask = Buffer.from([0x37, 0xfa, 0x21, 0x3d]);
  const head = Buffer.from([(fin ? 0x80 : 0) | (rsv << 4) | opcode, 0x80 | payload.length]);
  const masked = Buffer.from(payload.map((b, i) => b ^ mask[i % 4]));
  return Buffer.concat([head, mask, masked]);
}

async function closeCodeAfterRaw(frame) {
  const ws = await openWs();
  const closed = next(ws, 'close');
  // Errors from ws's own parser are not expected here; surface them as failures.
  ws.on('error', (err) => assert.fail(`client error: ${err.message}`));
  ws._socket.write(frame);
  const [code] = await closed;
  return code;
}

test('ws: text messages echo as text', async () => {
  const ws = await openWs();
  for (const text of ['hello', '', 'ünïcødé ✓ 𝄞', 'x'.repeat(126), 'y'.repeat(65536)]) {
    const { message, isBinary } = await roundTrip(ws, text);
    assert.equal(isBinary, false);
    assert.equal(message.toString('utf8'), text);
  }
  ws.close(1000);
  await next(ws, 'close');
});

test('ws: binary messages echo as binary', async () => {
  const ws = await openWs();
  for (const data of [Buffer.from(Array.from({ length: 256 }, (_, i) => i)), Buffer.alloc(0), randomBytes(70000)]) {
    const { message, isBinary } = await roundTrip(ws, data);
    assert.equal(isBinary, true);
    assert.deepEqual(message, data);
  }
  ws.close(1000);
  await next(ws, 'close');
});

test('ws: a fragmented message echoes as one message', async () => {
  const ws = await openWs();
  const reply = next(ws, 'message');
  ws.send('frag', { fin: false });
  ws.send('ment', { fin: false });
  ws.send('', { fin: false });
  ws.send('ed ü', { fin: true });
  const [message, isBinary] = await reply;
  assert.equal(isBinary, false);
  assert.equal(message.toString('utf8'), 'fragmented ü');

  const binReply = next(ws, 'message');
  ws.send(Buffer.from([1, 2]), { binary: true, fin: false });
  ws.ping(Buffer.from('between fragments'));
  ws.send(Buffer.from([3]), { binary: true, fin: true });
  const [binMessage, binIsBinary] = await binReply;
  assert.equal(binIsBinary, true);
  assert.deepEqual(binMessage, Buffer.from([1, 2, 3]));
  ws.close(1000);
  await next(ws, 'close');
});

test('ws: a 512 KiB message echoes intact', async () => {
  const ws = await openWs();
  const data = randomBytes(1 << 19); // half the default message limit
  const { message } = await roundTrip(ws, data);
  assert.ok(message.equals(data));
  ws.close(1000);
  await next(ws, 'close');
});

test('ws: ping is answered with a pong carrying the same payload', async () => {
  const ws = await openWs();
  for (const payload of [Buffer.alloc(0), Buffer.from('ping-1'), randomBytes(125)]) {
    const pong = next(ws, 'pong');
    ws.ping(payload);
    const [data] = await pong;
    assert.deepEqual(data, payload);
  }
  ws.close(1000);
  await next(ws, 'close');
});

for (const [code, reason] of [[1000, ''], [1001, 'going away'], [4000, 'app code']]) {
  test(`ws: close ${code} completes the close handshake`, async () => {
    const ws = await openWs();
    const closed = next(ws, 'close');
    ws.close(code, reason);
    const [got] = await closed;
    assert.ok(got === code || got === 1000, `server answered ${got} to ${code}`);
  });
}

test('ws: reserved opcode is closed with 1002', async () => {
  assert.equal(await closeCodeAfterRaw(maskedFrame(0x3, [0x78])), 1002);
});

test('ws: unmasked client frame is closed with 1002', async () => {
  const ws = await openWs();
  const closed = next(ws, 'close');
  ws._socket.write(Buffer.from([0x81, 0x01, 0x78]));
  const [code] = await closed;
  assert.equal(code, 1002);
});

test('ws: invalid UTF-8 in a text message is closed with 1007', async () => {
  assert.equal(await closeCodeAfterRaw(maskedFrame(0x1, [0xce, 0xba, 0xed, 0xa0, 0x80])), 1007);
});

test('ws: unknown path is refused with 404 before the upgrade', async () => {
  const target = new URL(echoUrl());
  target.pathname = '/no-such-endpoint';
  const ws = new WebSocket(target.href);
  const [, response] = await next(ws, 'unexpected-response');
  assert.equal(response.statusCode, 404);
  // Handling 'unexpected-response' leaves the aborting to us; the abort reports an error.
  ws.on('error', () => {});
  const closed = new Promise((resolve) => ws.once('close', resolve));
  ws.terminate();
  await closed;
});

// Node's built-in WebSocket (WHATWG API), a second independent client implementation.
function builtin() {
  assert.equal(typeof globalThis.WebSocket, 'function',
    'no global WebSocket: run node with --experimental-websocket (Node 20) or Node >= 22');
  const ws = new globalThis.WebSocket(echoUrl());
  ws.binaryType = 'arraybuffer';
  return ws;
}

function event(target, name) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`no ${name} within ${TIMEOUT_MS} ms`)), TIMEOUT_MS);
    target.addEventListener(name, (ev) => { clearTimeout(timer); resolve(ev); }, { once: true });
    if (name !== 'error') {
      target.addEventListener('error', () => { clearTimeout(timer); reject(new Error(`error before ${name}`)); }, { once: true });
    }
  });
}

test('built-in WebSocket: text, binary and large messages echo', async () => {
  const ws = builtin();
  await event(ws, 'open');
  ws.send('hello from undici ✓');
  assert.equal((await event(ws, 'message')).data, 'hello from undici ✓');

  const bytes = new Uint8Array(Array.from({ length: 256 }, (_, i) => i));
  ws.send(bytes);
  const echoed = (await event(ws, 'message')).data;
  assert.ok(echoed instanceof ArrayBuffer);
  assert.deepEqual(new Uint8Array(echoed), bytes);

  const large = randomBytes(1 << 19);
  ws.send(large);
  assert.ok(Buffer.from((await event(ws, 'message')).data).equals(large));

  const closed = event(ws, 'close');
  ws.close(1000, 'done');
  const ev = await closed;
  assert.equal(ev.code, 1000);
  assert.equal(ev.wasClean, true);
});

test('built-in WebSocket: an application close code completes cleanly', async () => {
  const ws = builtin();
  await event(ws, 'open');
  const closed = event(ws, 'close');
  ws.close(4001, 'bye');
  const ev = await closed;
  assert.ok(ev.code === 4001 || ev.code === 1000, `server answered ${ev.code} to 4001`);
  assert.equal(ev.wasClean, true);
});
