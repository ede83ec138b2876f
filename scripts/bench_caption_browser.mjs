// Caption latency of a full-size Hub captioner in the page, in headless Chromium (WebGPU on
// SwiftShader where there is no GPU): serves dist/ and a local stand-in for the Hub holding
// target/bench/nlpconnect-random (scripts/make_random_hub_model.py), loads it by repo id as a user
// does, then captions photos and prints JSON lines with the times the page shows.
//   node scripts/bench_caption_browser.mjs [dist] [model dir]
// (run from the repository root after `trunk build --release`; playwright-core comes from
// tests/browser's node_modules.)
import { createRequire } from 'node:module';
import http from 'node:http';
import fs from 'node:fs';
import path from 'node:path';

const require = createRequire(path.resolve('tests/browser/package.json'));
const { chromium } = require('playwright-core');
const dist = path.resolve(process.argv[2] || 'dist');
const model = path.resolve(process.argv[3] || 'target/bench/nlpconnect-random');
const photos = ['astronaut', 'coffee'].map((p) => path.resolve(`tests/fixtures/photos/${p}.png`));

const serve = (handler) => new Promise((r) => {
  const s = http.createServer(handler);
  s.listen(0, '127.0.0.1', () => r(s));
});
const TYPES = { '.html': 'text/html', '.js': 'text/javascript', '.wasm': 'application/wasm', '.css': 'text/css' };
const page_ = await serve((req, res) => {
  const url = decodeURIComponent(new URL(req.url, 'http://x').pathname);
  const file = path.join(dist, url.endsWith('/') ? `${url}index.html` : url);
  if (!file.startsWith(dist) || !fs.existsSync(file) || fs.statSync(file).isDirectory()) {
    res.writeHead(404);
    return res.end();
  }
  res.writeHead(200, { 'content-type': TYPES[path.extname(file)] || 'application/octet-stream' });
  fs.createReadStream(file).pipe(res);
});
const hub = await serve((req, res) => {
  const m = new URL(req.url, 'http://x').pathname.match(/^\/bench\/model\/resolve\/main\/([\w.-]+)$/);
  const file = m && path.join(model, m[1]);
  const cors = { 'access-control-allow-origin': '*', 'access-control-expose-headers': 'content-length' };
  if (!file || !fs.existsSync(file)) {
    res.writeHead(404, cors);
    return res.end();
  }
  res.writeHead(200, { ...cors, 'content-length': fs.statSync(file).size });
  if (req.method === 'HEAD') return res.end();
  fs.createReadStream(file).pipe(res);
});

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  headless: true,
  args: ['--no-sandbox', '--enable-unsafe-webgpu', '--enable-unsafe-swiftshader', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync'],
});
const page = await browser.newPage();
const t0 = Date.now();
await page.goto(`http://127.0.0.1:${page_.address().port}/?hub=${encodeURIComponent(`http://127.0.0.1:${hub.address().port}`)}`);
await page.waitForFunction(() => document.getElementById('models-status').dataset.ready === 'true', null, { timeout: 300000 });
const adapter = await page.textContent('#adapter');
await page.fill('[data-testid=teacher-repo]', 'bench/model');
const status = () => page.textContent('[data-testid=teacher-status]');
const loadStart = Date.now();
await page.click('[data-testid=teacher-load]');
await page.waitForFunction(() => /ready|Could not|Press Load again/.test(document.querySelector('[data-testid=teacher-status]').textContent), null, { timeout: 1800000 });
if (/Press Load again/.test(await status())) {
  await page.click('[data-testid=teacher-load]');
  await page.waitForFunction(() => /ready|Could not/.test(document.querySelector('[data-testid=teacher-status]').textContent), null, { timeout: 1800000 });
}
const loaded = await status();
console.log(JSON.stringify({ adapter, load_s: (Date.now() - loadStart) / 1000, status: loaded }));
if (!/ready/.test(loaded)) process.exit(1);
for (const photo of [...photos, ...photos]) {
  const before = await page.$$eval('#cards [data-testid=caption-card]', (c) => c.length);
  const start = Date.now();
  await page.setInputFiles('[data-testid=file-input]', [photo]);
  await page.waitForFunction((n) => {
    const cs = document.querySelectorAll('#cards [data-testid=caption-card]');
    return cs.length > n && (cs[0].querySelector('[data-testid=caption-teacher]')?.dataset.caption !== undefined || cs[0].querySelector('[data-testid=caption-error]'));
  }, before, { timeout: 1800000 });
  const card = await page.$eval('#cards [data-testid=caption-card]', (c) => ({
    caption: c.querySelector('[data-testid=caption-teacher]')?.dataset.caption ?? null,
    shown: c.querySelector('[data-testid=caption-teacher] .time')?.textContent ?? null,
    error: c.querySelector('[data-testid=caption-error]')?.textContent ?? null,
  }));
  console.log(JSON.stringify({ image: path.basename(photo), wall_s: (Date.now() - start) / 1000, ...card }));
}
console.log(JSON.stringify({ total_s: (Date.now() - t0) / 1000 }));
await browser.close();
page_.close();
hub.close();
