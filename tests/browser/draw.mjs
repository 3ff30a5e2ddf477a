// Drives the drawing page in a real headless Chromium: draws digits as
// pointer strokes, checks the answer and the 28x28 preview, uploads a photo,
// and saves a screenshot for the README.
//
// Usage: node tests/browser/draw.mjs [path/to/mnister-server]
// Env: CHROMIUM (default /usr/bin/chromium), SCREENSHOT (default docs/screenshot.png).
import { chromium } from "playwright-core";
import { spawn } from "node:child_process";
import { mkdtempSync, existsSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../..");
const serverBin = process.argv[2] || path.join(root, "target/debug/mnister-server");
const chromiumPath = process.env.CHROMIUM || "/usr/bin/chromium";
const screenshot = process.env.SCREENSHOT || path.join(root, "docs/screenshot.png");
for (const [what, p] of [["server binary", serverBin], ["Chromium", chromiumPath]]) {
  if (!existsSync(p)) {
    console.error(`browser test: ${what} not found at ${p}` +
      (what === "Chromium" ? " (install Debian's chromium package, or set CHROMIUM)" : " (cargo build first)"));
    process.exit(2);
  }
}

// Strokes on the 280x280 pad, in pad pixels. Each digit is a list of strokes.
const ellipse = (cx, cy, rx, ry, n = 48) =>
  Array.from({ length: n + 1 }, (_, i) => [cx + rx * Math.sin(2 * Math.PI * i / n), cy - ry * Math.cos(2 * Math.PI * i / n)]);
const DIGITS = {
  0: [ellipse(140, 140, 62, 92)],
  1: [[[150, 45], [146, 100], [142, 160], [138, 235]]],
  2: [[[88, 100], [98, 66], [138, 48], [180, 62], [195, 98], [182, 135], [145, 172], [90, 228], [150, 228], [208, 226]]],
  3: [[[85, 72], [125, 48], [175, 58], [188, 95], [160, 128], [122, 138], [165, 146], [195, 180], [185, 218], [140, 236], [95, 228], [78, 210]]],
  4: [[[118, 45], [95, 110], [78, 165], [150, 165], [212, 163]], [[172, 80], [170, 160], [168, 240]]],
  7: [[[78, 58], [140, 56], [205, 56], [170, 120], [140, 180], [118, 240]]],
};

function startServer() {
  return new Promise((resolve, reject) => {
    const p = spawn(serverBin, ["--grpc-addr", "127.0.0.1:0", "--metrics-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0",
      "--model", path.join(root, "models/mnist-cnn.onnx")], { env: { ...process.env, RUST_LOG: "info,ort=warn" } });
    let log = "";
    const timer = setTimeout(() => reject(new Error("server did not become ready:\n" + log)), 30000);
    p.stderr.on("data", chunk => {
      log += chunk;
      const m = log.match(/serving.*http_addr=(\S+)/) || log.match(/http_addr=(\S+)[^\n]*\n[^\n]*serving/);
      if (/\bserving\b/.test(log) && /http_addr=(\S+)/.test(log)) {
        clearTimeout(timer);
        resolve({ proc: p, url: "http://" + log.match(/http_addr=(\S+)/)[1] });
      }
    });
    p.on("exit", code => reject(new Error(`server exited with ${code}:\n${log}`)));
  });
}

async function draw(page, strokes) {
  const box = await page.locator("#pad").boundingBox();
  const sx = box.width / 280, sy = box.height / 280;
  for (const stroke of strokes) {
    const [x0, y0] = stroke[0];
    await page.mouse.move(box.x + x0 * sx, box.y + y0 * sy);
    await page.mouse.down();
    for (let i = 1; i < stroke.length; i++) {
      await page.mouse.move(box.x + stroke[i][0] * sx, box.y + stroke[i][1] * sy, { steps: 6 });
    }
    await page.mouse.up();
  }
}

async function expectAnswer(page, digit, what) {
  await page.waitForFunction(d => document.querySelector("#answer").textContent === String(d)
    && document.querySelector("#preview").dataset.drawn === "true", digit, { timeout: 10000 })
    .catch(async () => {
      const got = await page.locator("#answer").textContent();
      const err = await page.locator("#error").textContent();
      throw new Error(`${what}: expected ${digit}, page shows "${got}" ${err}`);
    });
  // The preview really holds ink: some bright pixels in the 28x28 canvas.
  const bright = await page.evaluate(() => {
    const d = document.querySelector("#preview").getContext("2d").getImageData(0, 0, 28, 28).data;
    let n = 0; for (let i = 0; i < d.length; i += 4) if (d[i] > 128) n++; return n;
  });
  if (bright < 10) throw new Error(`${what}: the 28x28 preview is empty`);
  console.log(`ok  ${what}: ${digit}, confidence ${await page.locator("#confidence").textContent()}, preview ${bright} ink pixels`);
}

const { proc, url } = await startServer();
// A fresh profile every run (playwright passes it as --user-data-dir).
const browser = await chromium.launchPersistentContext(mkdtempSync(path.join(tmpdir(), "chromium-")), {
  executablePath: chromiumPath,
  headless: true,
  viewport: { width: 900, height: 620 },
  args: ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--disable-quic"],
});
let failed = false;
try {
  const page = browser.pages()[0] || await browser.newPage();
  const external = [];
  page.on("request", r => { if (!r.url().startsWith(url) && !r.url().startsWith("data:") && !r.url().startsWith("blob:")) external.push(r.url()); });
  await page.goto(url + "/");
  for (const [digit, strokes] of Object.entries(DIGITS)) {
    await page.click("#clear");
    await draw(page, strokes);
    await expectAnswer(page, Number(digit), `drawn ${digit}`);
  }
  await page.click("#clear");
  await draw(page, DIGITS[7]);
  await expectAnswer(page, 7, "drawn 7 before the screenshot");
  await page.waitForTimeout(400); // let the bars finish their transition
  await page.screenshot({ path: screenshot, fullPage: true });
  console.log(`ok  screenshot: ${screenshot}`);
  await page.click("#undo");
  await page.waitForFunction(() => document.querySelector("#answer").textContent === "–");
  console.log("ok  undo of the only stroke clears the answer");
  // Upload a phone-photo-like image: dark digit on uneven grey paper.
  await page.setInputFiles("#file", path.join(root, "tests/data/photo-3.png"));
  await expectAnswer(page, 3, "uploaded photo-3.png");
  // An answer below the request's min_confidence is shown as a question
  // with the two best guesses (the real server marks it; the route only
  // raises the threshold the page asks with).
  if (await page.locator("#hint").textContent()) throw new Error("a confident answer shows a hint");
  await page.route("**/v1/classify*", r => r.continue({ url: r.request().url() + "&min_confidence=0.9999" }));
  await page.setInputFiles("#file", []);
  await page.setInputFiles("#file", path.join(root, "tests/data/photo-3.png"));
  await page.waitForFunction(() => document.querySelector("#hint").textContent.startsWith("not sure"), null, { timeout: 10000 });
  const hint = await page.locator("#hint").textContent();
  if (!/is this a digit\? Best guesses: 3 \(\d+%\) or \d \(\d+%\)/.test(hint)) throw new Error("abstain hint: " + hint);
  console.log(`ok  abstained answer shown as a question: ${hint}`);
  await page.unroute("**/v1/classify*");
  // The version and the server time are shown.
  const meta = await page.locator("#meta").textContent();
  if (!/reference|fp32|[0-9a-f]{6}/.test(meta) || !/ms/.test(meta)) throw new Error("model version / latency missing: " + meta);
  // A phone-sized screen still shows the pad and the answer without scrolling sideways.
  await page.setViewportSize({ width: 390, height: 844 });
  const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
  if (overflow > 1) throw new Error(`page is ${overflow}px wider than a phone screen`);
  console.log("ok  fits a 390px-wide screen");
  if (external.length) throw new Error("the page fetched external resources: " + external.join(", "));
  console.log("ok  no external requests");
} catch (e) {
  failed = true;
  console.error("FAIL " + e.message);
} finally {
  await browser.close();
  proc.kill("SIGTERM");
}
process.exit(failed ? 1 : 0);
