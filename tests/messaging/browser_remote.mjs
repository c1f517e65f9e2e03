// Drives examples/browser in headless Chromium (Debian's /usr/bin/chromium via playwright-core,
// which downloads no browser): a set-top-box page and a remote page; the remote presses
// "Vol +" and the box must show it, from the remote's server-set identity.
// Usage: node browser_remote.mjs PAGE_URL WS_URL TV_TOKEN PHONE_TOKEN SCREENSHOT_PATH
import { createRequire } from "node:module";
import { join } from "node:path";
import { fileURLToPath } from "node:url";

const here = fileURLToPath(new URL(".", import.meta.url));
const require = createRequire(join(here, "..", "node", "package.json"));
const { chromium } = require("playwright-core");

const [pageUrl, wsUrl, tvToken, phoneToken, shot] = process.argv.slice(2);
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  // playwright adds --headless and its own throw-away --user-data-dir.
  headless: true,
  args: ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--no-first-run",
         "--disable-features=LocalNetworkAccessChecks"],
});
try {
  const q = (o) => new URLSearchParams(o).toString();
  const tv = await browser.newPage();
  await tv.goto(`${pageUrl}?${q({ url: wsUrl, token: tvToken, connect: "1" })}`);
  await tv.waitForSelector('#status[data-state="ready"]', { timeout: 10000 });
  const phone = await browser.newPage();
  await phone.goto(`${pageUrl}?${q({ url: wsUrl, token: phoneToken, to: "tv-browser", connect: "1" })}`);
  await phone.waitForSelector('#status[data-state="ready"]', { timeout: 10000 });
  await phone.click('button[data-key="volume_up"]');
  await tv.waitForFunction(() => document.querySelector("#log").textContent.includes("volume_up"), null, { timeout: 10000 });
  await phone.waitForFunction(() => document.querySelector("#log").textContent.includes("delivered ("), null, { timeout: 10000 });
  if (shot) await tv.screenshot({ path: shot, fullPage: true });
  const result = {
    tvStatus: await tv.$eval("#status", (e) => e.textContent),
    phoneStatus: await phone.$eval("#status", (e) => e.textContent),
    tvLog: await tv.$eval("#log", (e) => e.textContent),
    phoneLog: await phone.$eval("#log", (e) => e.textContent),
  };
  console.log(JSON.stringify(result));
} finally {
  await browser.close();
}
