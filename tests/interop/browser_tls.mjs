// Headless Chromium (Debian's /usr/bin/chromium via playwright-core, which downloads no browser)
// against tether's wss:// echo: the browser trusts the run's test certificate only through
// --ignore-certificate-errors-spki-list (the SHA-256 of the certificate's public key), never
// through Playwright's ignoreHTTPSErrors. Checks a text and a 70,000-byte binary message (more
// than four TLS records) come back intact and the close handshake ends with 1000; then, as a
// control, that the same browser without the flag cannot open the connection.
// Usage: node browser_tls.mjs WSS_URL SPKI_SHA256_BASE64
import { createRequire } from "node:module";
import { join } from "node:path";
import { fileURLToPath } from "node:url";

const here = fileURLToPath(new URL(".", import.meta.url));
const require = createRequire(join(here, "..", "node", "package.json"));
const { chromium } = require("playwright-core");

const [wsUrl, spki] = process.argv.slice(2);
if (!wsUrl || !spki) {
  console.error("usage: node browser_tls.mjs WSS_URL SPKI_SHA256_BASE64");
  process.exit(2);
}

async function inBrowser(extraArgs, body) {
  const browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
    headless: true,
    args: ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
           "--disable-component-update", "--no-first-run",
           "--disable-features=LocalNetworkAccessChecks", ...extraArgs],
  });
  try {
    const page = await browser.newPage();
    return await page.evaluate(body, wsUrl);
  } finally {
    await browser.close();
  }
}

// Runs in the page: open, echo a text and a binary message, close with 1000.
async function echo(url) {
  const deadline = (ms, what) => new Promise((_, fail) => setTimeout(() => fail(new Error(`timeout: ${what}`)), ms));
  const ws = new WebSocket(url);
  ws.binaryType = "arraybuffer";
  const opened = await Promise.race([
    new Promise((ok) => { ws.onopen = () => ok(true); ws.onclose = () => ok(false); }),
    deadline(10000, "open"),
  ]);
  if (!opened) return { opened };
  const got = [];
  const both = new Promise((ok) => { ws.onmessage = (e) => { got.push(e.data); if (got.length === 2) ok(); }; });
  const big = new Uint8Array(70000);
  for (let i = 0; i < big.length; i++) big[i] = i % 251;
  ws.send("héllo over wss");
  ws.send(big);
  await Promise.race([both, deadline(10000, "echoes")]);
  const back = new Uint8Array(got[1]);
  const closed = new Promise((ok) => { ws.onclose = (e) => ok(e.code); });
  ws.close(1000);
  const code = await Promise.race([closed, deadline(10000, "close")]);
  return {
    opened,
    text: got[0],
    binaryBytes: back.length,
    binaryIntact: back.length === big.length && back.every((b, i) => b === i % 251),
    closeCode: code,
  };
}

const trusted = await inBrowser([`--ignore-certificate-errors-spki-list=${spki}`], echo);
const untrusted = await inBrowser([], echo);
console.log(JSON.stringify({ trusted, untrusted }));
const ok = trusted.opened && trusted.text === "héllo over wss" && trusted.binaryIntact &&
  trusted.closeCode === 1000 && untrusted.opened === false;
if (!ok) {
  console.error("browser_tls: FAILED");
  process.exit(1);
}
console.log("browser_tls: ok");
