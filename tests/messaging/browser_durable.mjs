// Drives examples/browser in headless Chromium (Debian's /usr/bin/chromium via playwright-core)
// for test_examples.py::test_browser_acknowledges_and_reconnects_by_itself: one set-top-box page
// stays open while the test pushes to it and restarts its node. The test sends one JSON command
// per line on stdin and gets one JSON line back on stdout for each:
//   {"wait": TEXT}    until the page's log contains TEXT (30 s at most) -> {"ok": true}
//   {"ready": true}   until the page's status is "ready" again          -> {"ok": true}
//   {"dump": true}    -> {"status", "log", "lastSeq" (localStorage), "sockets" (URLs opened)}
// A wait that times out answers {"ok": false, "error": ...}; end of stdin closes the browser.
// Usage: node browser_durable.mjs PAGE_URL WS_URL TOKEN DEVICE
import { createRequire } from "node:module";
import { join } from "node:path";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";

const here = fileURLToPath(new URL(".", import.meta.url));
const require = createRequire(join(here, "..", "node", "package.json"));
const { chromium } = require("playwright-core");

const [pageUrl, wsUrl, token, device] = process.argv.slice(2);
const WAIT_MS = 30000;
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  headless: true,
  args: ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--no-first-run",
         "--disable-features=LocalNetworkAccessChecks"],
});
try {
  const page = await browser.newPage();
  const sockets = [];
  page.on("websocket", (ws) => sockets.push(ws.url()));
  const q = new URLSearchParams({ url: wsUrl, token, connect: "1" }).toString();
  await page.goto(`${pageUrl}?${q}`);
  const answer = (o) => process.stdout.write(JSON.stringify(o) + "\n");
  for await (const line of createInterface({ input: process.stdin })) {
    if (!line.trim()) continue;
    const cmd = JSON.parse(line);
    try {
      if (cmd.wait !== undefined) {
        await page.waitForFunction((t) => document.querySelector("#log").textContent.includes(t), cmd.wait, { timeout: WAIT_MS });
        answer({ ok: true });
      } else if (cmd.ready) {
        await page.waitForSelector('#status[data-state="ready"]', { timeout: WAIT_MS });
        answer({ ok: true });
      } else if (cmd.dump) {
        answer({
          status: await page.$eval("#status", (e) => e.textContent),
          log: await page.$eval("#log", (e) => e.textContent),
          lastSeq: await page.evaluate((d) => localStorage.getItem(`tether.lastSeq.${d}`), device),
          sockets,
        });
      } else {
        answer({ ok: false, error: `unknown command ${line}` });
      }
    } catch (e) {
      answer({ ok: false, error: String(e) });
    }
  }
} finally {
  await browser.close();
}
