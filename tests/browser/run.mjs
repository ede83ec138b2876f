// The page in headless Chromium (WebGPU on SwiftShader), against the built dist/ served here on
// 127.0.0.1. Run by scripts/test.sh after `trunk build`; prints one line per check and
// "browser: N passed, M failed", and saves screenshots under the directory it names at the end.
//   node tests/browser/run.mjs [dist]
import { chromium } from 'playwright-core';
import http from 'node:http';
import fs from 'node:fs';
import path from 'node:path';
import os from 'node:os';
import { fileURLToPath } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));
const dist = path.resolve(process.argv[2] || path.join(here, '../../dist'));
const shots = path.join(here, 'screenshots');
fs.mkdirSync(shots, { recursive: true });
const fixture = (name) => path.join(here, 'fixtures', name);

const TYPES = { '.html': 'text/html', '.js': 'text/javascript', '.wasm': 'application/wasm', '.css': 'text/css', '.json': 'application/json' };
const server = http.createServer((req, res) => {
  const url = decodeURIComponent(new URL(req.url, 'http://x').pathname);
  const file = path.join(dist, url.endsWith('/') ? url + 'index.html' : url);
  if (!file.startsWith(dist) || !fs.existsSync(file) || fs.statSync(file).isDirectory()) {
    res.writeHead(404);
    return res.end('not found');
  }
  res.writeHead(200, { 'content-type': TYPES[path.extname(file)] || 'application/octet-stream' });
  fs.createReadStream(file).pipe(res);
});
await new Promise((r) => server.listen(0, '127.0.0.1', r));
const base = `http://127.0.0.1:${server.address().port}/`;

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  headless: true,
  args: ['--no-sandbox', '--enable-unsafe-webgpu', '--enable-unsafe-swiftshader', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync'],
});
const context = await browser.newContext({ acceptDownloads: true });
const page = await context.newPage();
const problems = [];
page.on('console', (m) => {
  if (m.type() === 'error') problems.push(`console: ${m.text()}`);
});
page.on('pageerror', (e) => problems.push(`page error: ${e.message}`));
// Playwright starts intercepting file choosers when the first 'filechooser' listener is added, in
// a call that races the action that opens one (a key press sent at once can win, and then the
// chooser is never reported): a listener from the start keeps interception on throughout.
page.on('filechooser', () => {});

let passed = 0;
let failed = 0;
// The failures again at the end, where a CI log's tail shows them.
const failures = [];
async function check(name, f) {
  const t0 = Date.now();
  try {
    await f();
    passed++;
    console.log(`ok   ${name} (${((Date.now() - t0) / 1000).toFixed(1)} s)`);
  } catch (e) {
    failed++;
    failures.push(`FAIL ${name}: ${e.message.split('\n')[0]}`);
    console.log(failures[failures.length - 1]);
    await page.screenshot({ path: path.join(shots, `failed-${name.replace(/\W+/g, '-')}.png`), fullPage: true }).catch(() => {});
  }
}
function assert(cond, msg) {
  if (!cond) throw new Error(msg);
}

// Drops files on the drop zone as a user's drag and drop does (a DataTransfer of Files).
async function drop(files) {
  const payload = files.map((f) => ({ name: path.basename(f.as || f.path), type: f.type, b64: (f.bytes || fs.readFileSync(f.path)).toString('base64') }));
  await page.evaluate((payload) => {
    const dt = new DataTransfer();
    for (const f of payload) {
      const bytes = Uint8Array.from(atob(f.b64), (c) => c.charCodeAt(0));
      dt.items.add(new File([bytes], f.name, { type: f.type }));
    }
    document.getElementById('drop-zone').dispatchEvent(new DragEvent('drop', { dataTransfer: dt, bubbles: true, cancelable: true }));
  }, payload);
}

const cards = () => page.$$eval('#cards [data-testid=caption-card]', (cs) => cs.map((c) => ({
  name: c.querySelector('.file-name').textContent,
  student: c.querySelector('[data-testid=caption-student]')?.dataset.caption ?? null,
  teacher: c.querySelector('[data-testid=caption-teacher]')?.dataset.caption ?? null,
  error: c.querySelector('[data-testid=caption-error]')?.textContent ?? null,
})));
const settled = (n) => page.waitForFunction((n) => {
  const cs = [...document.querySelectorAll('#cards [data-testid=caption-card]')];
  return cs.length >= n && cs.every((c) => c.querySelector('[data-testid=caption-error]') || c.querySelector('[data-testid=caption-teacher]')?.dataset.caption !== undefined);
}, n, { timeout: 180000 });

// Runs `act` (which adds one caption card), waits until that card is done, and returns it.
async function newCard(act) {
  const before = (await cards()).length;
  await act();
  await settled(before + 1);
  return (await cards())[0];
}
const chooseFile = (name) => () => page.setInputFiles('[data-testid=file-input]', [fixture(name)]);

await check('the page loads, finds an adapter and loads both models', async () => {
  await page.goto(base);
  await page.waitForFunction(() => document.getElementById('models-status').dataset.ready === 'true' || !document.getElementById('webgpu-missing').hidden || !document.getElementById('notice').hidden, null, { timeout: 120000 });
  assert(await page.$eval('#webgpu-missing', (e) => e.hidden), `WebGPU missing: ${await page.textContent('#webgpu-missing')}`);
  assert(await page.$eval('#notice', (e) => e.hidden), await page.textContent('#notice'));
  const adapter = await page.textContent('#adapter');
  assert(adapter.startsWith('GPU: '), adapter);
  // The Distill form shows the worker's defaults (RunOptions::PAGE and the rest), sizes empty.
  const form = await page.$eval('#distill-form', (f) => Object.fromEntries(['steps', 'batch', 'lr', 'tau', 'method', 'layers'].map((n) => [n, f.elements[n].value])));
  assert(JSON.stringify(form) === JSON.stringify({ steps: '300', batch: '8', lr: '0.002', tau: '1', method: 'amad-kl', layers: '' }), JSON.stringify(form));
  console.log(`     ${adapter}`);
});

await check('a dropped PNG and a dropped JPEG get non-empty captions from both models', async () => {
  await drop([{ path: fixture('scene.png'), type: 'image/png' }, { path: fixture('photo.jpg'), type: 'image/jpeg' }]);
  await settled(2);
  const got = await cards();
  for (const c of got) {
    assert(!c.error, `${c.name}: ${c.error}`);
    assert(c.student && c.teacher, `${c.name}: student ${JSON.stringify(c.student)}, teacher ${JSON.stringify(c.teacher)}`);
    console.log(`     ${c.name}: student "${c.student}", teacher "${c.teacher}"`);
  }
  const times = await page.$$eval('#cards [data-testid=caption-card]', (cs) => cs.map((c) => [...c.querySelectorAll('.time')].map((t) => t.textContent)));
  // A model's first caption is labelled as including its setup.
  assert(times.every((t) => t.length === 2 && t.every((x) => /^\d+ ms( \(first: includes setup\))?$/.test(x))), `times: ${JSON.stringify(times)}`);
  await page.screenshot({ path: path.join(shots, 'captions.png'), fullPage: true });
});

await check('a text file named .png gets an error card while another image still captions', async () => {
  await page.setInputFiles('[data-testid=file-input]', [fixture('notes.png'), fixture('scene.png')]);
  await settled(4);
  const got = (await cards()).slice(0, 2);
  const bad = got.find((c) => c.name === 'notes.png');
  const good = got.find((c) => c.name === 'scene.png');
  assert(bad && bad.error && bad.error.includes('notes.png'), `notes.png: ${JSON.stringify(bad)}`);
  assert(good && good.student && good.teacher && !good.error, `scene.png: ${JSON.stringify(good)}`);
  console.log(`     notes.png: ${bad.error}`);
});

// A 24-bit BMP of w × h pixels: red across, green down.
function bmp(w, h) {
  const stride = Math.ceil((w * 3) / 4) * 4;
  const b = Buffer.alloc(54 + stride * h);
  b.write('BM', 0);
  b.writeUInt32LE(b.length, 2);
  b.writeUInt32LE(54, 10);
  b.writeUInt32LE(40, 14);
  b.writeInt32LE(w, 18);
  b.writeInt32LE(h, 22);
  b.writeUInt16LE(1, 26);
  b.writeUInt16LE(24, 28);
  b.writeUInt32LE(stride * h, 34);
  for (let y = 0; y < h; y++) {
    for (let x = 0; x < w; x++) b.set([64, (y * 255) / h, (x * 255) / w], 54 + y * stride + x * 3);
  }
  return b;
}

await check('a BMP captions, and a JPEG cut short captions with a warning', async () => {
  const photo = fs.readFileSync(fixture('photo.jpg'));
  const before = (await cards()).length;
  await drop([{ path: 'shapes.bmp', bytes: bmp(48, 32), type: 'image/bmp' }, { path: 'cut.jpg', bytes: photo.subarray(0, Math.floor(photo.length * 0.75)), type: 'image/jpeg' }]);
  await settled(before + 2);
  const got = (await cards()).slice(0, 2);
  const bmpCard = got.find((c) => c.name === 'shapes.bmp');
  const cut = got.find((c) => c.name === 'cut.jpg');
  assert(bmpCard && bmpCard.student && bmpCard.teacher && !bmpCard.error, JSON.stringify(bmpCard));
  assert(cut && cut.teacher && !cut.error, JSON.stringify(cut));
  const warning = await page.$$eval('#cards [data-testid=caption-card]', (cs) => cs.map((c) => c.querySelector('[data-testid=caption-warning]')?.textContent ?? null));
  assert(/cut\.jpg: the JPEG file ends early/.test(warning[got.indexOf(cut)]) && warning[got.indexOf(bmpCard)] === null, JSON.stringify(warning));
  console.log(`     ${warning[got.indexOf(cut)].slice(0, 90)}…`);
});

await check('a pasted image captions', async () => {
  const before = (await cards()).length;
  const b64 = fs.readFileSync(fixture('scene.png')).toString('base64');
  await page.evaluate((b64) => {
    const dt = new DataTransfer();
    dt.items.add(new File([Uint8Array.from(atob(b64), (c) => c.charCodeAt(0))], 'pasted.png', { type: 'image/png' }));
    document.dispatchEvent(new ClipboardEvent('paste', { clipboardData: dt, bubbles: true }));
  }, b64);
  await settled(before + 1);
  const c = (await cards())[0];
  assert(c.name === 'pasted.png' && c.student && c.teacher && !c.error, JSON.stringify(c));
});

await check('a huge image is resized, not refused', async () => {
  const before = (await cards()).length;
  await page.evaluate(async () => {
    const c = document.createElement('canvas');
    c.width = 4000;
    c.height = 3000;
    const g = c.getContext('2d');
    g.fillStyle = '#4a8';
    g.fillRect(0, 0, c.width, c.height);
    g.fillStyle = '#c22';
    g.beginPath();
    g.arc(2000, 1500, 900, 0, 2 * Math.PI);
    g.fill();
    const blob = await new Promise((r) => c.toBlob(r, 'image/png'));
    const dt = new DataTransfer();
    dt.items.add(new File([blob], 'huge.png', { type: 'image/png' }));
    document.getElementById('drop-zone').dispatchEvent(new DragEvent('drop', { dataTransfer: dt, bubbles: true, cancelable: true }));
  });
  await settled(before + 1);
  const c = (await cards())[0];
  assert(c.name === 'huge.png' && c.teacher && !c.error, JSON.stringify(c));
  console.log(`     4000×3000 PNG: teacher "${c.teacher}"`);
});

await check('hovering a word shows its cross-attention over the image', async () => {
  await page.hover('[data-testid=caption-card] [data-testid=caption-teacher] .word');
  const painted = await page.$eval('[data-testid=caption-card] canvas', (c) => {
    const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
    let n = 0;
    for (let i = 3; i < d.length; i += 4) n += d[i] > 0;
    return n;
  });
  assert(painted > 0, 'the overlay stayed empty');
});

await check('the keyboard reaches everything: the drop zone opens the file chooser, words show attention on focus, tabs move with arrows', async () => {
  await page.focus('[data-testid=drop-zone]');
  await newCard(async () => {
    const [chooser] = await Promise.all([page.waitForEvent('filechooser', { timeout: 10000 }), page.keyboard.press('Enter')]);
    await chooser.setFiles([fixture('scene.png')]);
  });
  await page.focus('#cards .word');
  const painted = await page.$eval('#cards .card canvas', (c) => {
    const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
    return d.some((v, i) => i % 4 === 3 && v > 0);
  });
  assert(painted, 'focusing a word paints no attention');
  await page.focus('#tab-caption');
  await page.keyboard.press('ArrowRight');
  assert(!(await page.isHidden('#distill')) && (await page.getAttribute('#tab-distill', 'aria-selected')) === 'true', 'ArrowRight did not open Distill');
  await page.keyboard.press('ArrowLeft');
  assert(!(await page.isHidden('#caption')), 'ArrowLeft did not open Caption');
});

await check('at 400 px wide neither tab scrolls sideways', async () => {
  const size = page.viewportSize();
  await page.setViewportSize({ width: 400, height: 800 });
  for (const tab of ['#tab-distill', '#tab-caption']) {
    await page.click(tab);
    const [scroll, width] = await page.evaluate(() => [document.documentElement.scrollWidth, document.documentElement.clientWidth]);
    assert(scroll <= width, `${tab}: ${scroll} px of content in ${width}`);
  }
  await page.setViewportSize(size);
});

await check('"New scene" makes a scene from the training domain and captions it', async () => {
  const c = await newCard(() => page.click('[data-testid=new-scene]'));
  assert(c.name.startsWith('scene ') && c.student && c.teacher && !c.error, JSON.stringify(c));
  console.log(`     ${c.name}: teacher "${c.teacher}"`);
});

await check('a batch over the adapter\'s limits is refused with a message', async () => {
  await page.click('#tab-distill');
  const limit = Number(await page.$eval('#adapter', (e) => e.dataset.maxBinding));
  const batch = Math.ceil(limit / (8 * 65 * 65 * 4)) + 1;
  await page.fill('#distill-form [name=batch]', String(batch));
  await page.click('[data-testid=distill-start]');
  await page.waitForFunction(() => !document.getElementById('distill-error').hidden, null, { timeout: 60000 });
  const err = await page.textContent('#distill-error');
  assert(/does not fit/.test(err) && /max_storage_buffer_binding_size/.test(err) && /a batch of \d+ or less fits/.test(err), err);
  console.log(`     batch ${batch}: ${err.slice(0, 160)}`);
});

await check('20 distillation steps run and the loss goes down, and the page stays responsive', async () => {
  const set = async (name, v) => page.fill(`#distill-form [name=${name}]`, String(v));
  await set('steps', 20);
  await set('batch', 4);
  await set('lr', 0.005);
  await set('checkpoint_every', 10);
  await set('eval_every', 0);
  await page.click('[data-testid=distill-start]');
  // While it trains, the main thread's timers keep firing on time (the work is in the worker).
  // Steps on the main thread would stall them for a step's length (about a second here) at every
  // step; one short stall is allowed, since a busy 2-core machine can deschedule the page once.
  const stalls = await page.evaluate(() => new Promise((resolve) => {
    let last = performance.now();
    const late = [];
    const t = setInterval(() => {
      const now = performance.now();
      if (now - last - 20 > 250) late.push(Math.round(now - last - 20));
      last = now;
    }, 20);
    setTimeout(() => { clearInterval(t); resolve(late); }, 3000);
  }));
  console.log(`     main-thread timers over 250 ms late during training: ${stalls.length ? stalls.join(', ') + ' ms' : 'none'}`);
  assert(stalls.length <= 1 && stalls.every((ms) => ms < 1000), `the page stalled: ${stalls.join(', ')} ms`);
  await page.waitForFunction(() => document.querySelector('[data-testid=distill-step]').textContent === '20' && document.getElementById('distill-state').textContent === 'complete', null, { timeout: 600000 });
  const rate = await page.textContent('#distill-rate');
  assert(/^[\d.]+ steps\/s, ETA \d+m\d+s$/.test(rate), rate);
  const total = JSON.parse(await page.$eval('#loss-plot', (c) => c.dataset.total));
  assert(total.length === 20, `${total.length} losses`);
  const mean = (xs) => xs.reduce((a, b) => a + b, 0) / xs.length;
  const [first, last] = [mean(total.slice(0, 5)), mean(total.slice(-5))];
  console.log(`     total loss: first five ${first.toFixed(3)}, last five ${last.toFixed(3)}; shown ${await page.textContent('[data-testid=distill-loss]')}`);
  assert(last < first, `the loss did not go down: ${total.map((x) => x.toFixed(3)).join(' ')}`);
  assert((await page.$$('#alignment canvas')).length > 0, 'no alignment heatmaps');
  await page.waitForFunction(() => document.querySelector('[data-testid=distill-example] [data-testid=caption-teacher]')?.dataset.caption !== undefined, null, { timeout: 60000 });
  await page.screenshot({ path: path.join(shots, 'distill.png'), fullPage: true });
});

await check('settings out of range are named before anything starts, and a failed start keeps the finished student', async () => {
  const finished = await page.evaluate(() => window.amadDebug.runStep());
  assert(finished === 20, `the finished run is at step ${finished}`);
  // An empty weight and a batch over the form's maximum: named in the form's words, nothing starts.
  await page.fill('#distill-form [name=alpha]', '');
  await page.fill('#distill-form [name=layers]', '13');
  await page.click('[data-testid=distill-start]');
  let err = await page.textContent('#distill-error');
  assert(/α \(caption CE\): give a number/.test(err) && /Student layers: /.test(err), err);
  assert(await page.$eval('#distill-form [name=alpha]', (e) => e.classList.contains('invalid')), 'the field is not marked');
  await page.fill('#distill-form [name=alpha]', '1');
  await page.fill('#distill-form [name=layers]', '');
  // A zero temperature is refused by the worker's check, before the run is replaced.
  await page.fill('#distill-form [name=temperature]', '0');
  await page.click('[data-testid=distill-start]');
  await page.waitForFunction(() => /temperature/.test(document.getElementById('distill-error').textContent), null, { timeout: 60000 });
  err = await page.textContent('#distill-error');
  await page.fill('#distill-form [name=temperature]', '2');
  // A student the page could not save (one layer 4096 wide): refused before it is built.
  for (const [name, v] of [['layers', 1], ['width', 4096], ['heads', 2]]) await page.fill(`#distill-form [name=${name}]`, String(v));
  await page.click('[data-testid=distill-start]');
  await page.waitForFunction(() => /too large for the page/.test(document.getElementById('distill-error').textContent), null, { timeout: 60000 });
  const big = await page.textContent('#distill-error');
  assert(/471\.2 M parameters/.test(big) && /Up to \d+ M parameters fit/.test(big), big);
  for (const name of ['layers', 'width', 'heads']) await page.fill(`#distill-form [name=${name}]`, '');
  // Only unreadable images: the new run fails after it replaced the finished one, which comes back.
  await drop([{ path: fixture('notes.png'), type: 'image/png' }]);
  await page.click('[data-testid=distill-start]');
  await page.waitForFunction(() => /none of the 1 files/.test(document.getElementById('distill-error').textContent), null, { timeout: 60000 });
  const after = await page.evaluate(() => window.amadDebug.runStep());
  assert(after === 20, `after a failed start the run is at step ${after}, not the finished one's 20`);
  // Images chosen and dropped make one list, shown, that Clear empties.
  await page.setInputFiles('[data-testid=distill-images]', [fixture('scene.png')]);
  const list = await page.textContent('[data-testid=distill-list]');
  assert(/^2 images for distillation: notes\.png, scene\.png$/.test(list), list);
  await page.click('[data-testid=distill-clear]');
  assert((await page.textContent('[data-testid=distill-list]')) === 'No images chosen.', 'the list was not cleared');
  await page.selectOption('#distill-form [name=data]', 'scenes');
  console.log(`     ${err.slice(0, 100)}`);
  console.log(`     ${big.slice(0, 120)}…`);
});

await check('distilling a 1-head one-to-one student from the user\'s own dropped images: the teacher\'s captions as targets, validation at intervals', async () => {
  // Dropped on the page while the Distill tab is open.
  await drop([{ path: fixture('scene.png'), type: 'image/png' }, { path: fixture('photo.jpg'), type: 'image/jpeg' }, { path: fixture('notes.png'), type: 'image/png' }]);
  assert(await page.$eval('#distill-form [name=data]', (e) => e.value) === 'images', 'dropping did not choose "my images"');
  await page.fill('#distill-form [name=steps]', '3');
  await page.fill('#distill-form [name=eval_every]', '3');
  // A student of another shape, with another method.
  await page.fill('#distill-form [name=heads]', '1');
  await page.fill('#distill-form [name=width]', '32');
  await page.selectOption('#distill-form [name=method]', 'one-to-one');
  await page.click('[data-testid=distill-start]');
  await page.waitForFunction(() => (document.getElementById('distill-steps').textContent === '3' && document.getElementById('distill-state').textContent === 'complete') || !document.getElementById('distill-error').hidden, null, { timeout: 300000 });
  assert(await page.$eval('#distill-error', (e) => e.hidden), await page.textContent('#distill-error'));
  const targets = await page.textContent('#targets');
  assert(/captions of 2 images/.test(targets) && /notes\.png/.test(targets), targets);
  assert(/2\/32\/1 encoder, 2\/32\/1 decoder/.test(targets), targets);
  const rows = await page.$$eval('[data-testid=eval-table] tbody tr', (rs) => rs.map((r) => r.textContent));
  assert(rows.length === 1, `validation rows: ${rows}`);
  console.log(`     ${targets.slice(targets.indexOf('Targets'))}`);
  await page.selectOption('#distill-form [name=data]', 'scenes');
  await page.fill('#distill-form [name=eval_every]', '0');
  await page.fill('#distill-form [name=heads]', '2');
  await page.fill('#distill-form [name=width]', '64');
  await page.selectOption('#distill-form [name=method]', 'amad-kl');
});

await check('a reload offers to resume an unfinished run', async () => {
  // A longer run, paused after its first checkpoint, then the page is reloaded.
  await page.fill('#distill-form [name=steps]', '40');
  await page.fill('#distill-form [name=checkpoint_every]', '2');
  await page.click('[data-testid=distill-start]');
  await page.waitForFunction(() => document.getElementById('distill-steps').textContent === '40' && Number(document.querySelector('[data-testid=distill-step]').textContent) >= 3, null, { timeout: 300000 });
  await page.click('[data-testid=distill-pause]');
  await page.waitForFunction(() => document.getElementById('distill-state').textContent === 'paused', null, { timeout: 120000 });
  await page.reload();
  await page.waitForFunction(() => !document.querySelector('[data-testid=distill-resume]').hidden, null, { timeout: 120000 });
  const offer = await page.textContent('[data-testid=resume-offer]');
  assert(/saved at step \d+ of 40/.test(offer), offer);
  console.log(`     ${offer}`);
  await page.click('#tab-distill');
  // A resume takes the learning rate from the form (it may be lowered after a bad run).
  await page.fill('#distill-form [name=lr]', '0.0001');
  await page.click('[data-testid=distill-resume]');
  const resumedAt = Number(offer.match(/step (\d+)/)[1]);
  await page.waitForFunction((n) => Number(document.querySelector('[data-testid=distill-step]').textContent) > n, resumedAt, { timeout: 300000 });
  const lr = Number(await page.textContent('[data-testid=distill-lr]'));
  assert(lr > 0 && lr <= 1e-4, `the resumed run's learning rate is ${lr}, not the form's 1e-4 schedule`);
  // The loss curve keeps the steps before the resume.
  const shown = JSON.parse(await page.$eval('#loss-plot', (c) => c.dataset.total)).length;
  assert(shown > resumedAt, `the loss plot shows ${shown} steps after resuming at step ${resumedAt}`);
  await page.click('[data-testid=distill-pause]');
  await page.waitForFunction(() => document.getElementById('distill-state').textContent === 'paused', null, { timeout: 120000 });
});

await check('a downloaded student loads back and captions', async () => {
  const downloads = [];
  page.on('download', (d) => downloads.push(d));
  await page.click('[data-testid=distill-download]');
  const t0 = Date.now();
  while (downloads.length < 5 && Date.now() - t0 < 60000) await page.waitForTimeout(200);
  assert(downloads.length === 5, `${downloads.length} downloads`);
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'amad-download-'));
  const files = [];
  for (const d of downloads) {
    const p = path.join(dir, d.suggestedFilename());
    await d.saveAs(p);
    files.push(p);
  }
  const names = files.map((f) => path.basename(f)).sort().join(' ');
  assert(names === 'config.json generation_config.json model.safetensors preprocessor_config.json tokenizer.json', names);
  await page.setInputFiles('[data-testid=load-checkpoint]', files);
  await page.waitForFunction(() => document.getElementById('models-status').dataset.loaded === 'true' || !document.getElementById('distill-error').hidden, null, { timeout: 60000 });
  assert(await page.$eval('#distill-error', (e) => e.hidden), await page.textContent('#distill-error'));
  await page.click('#tab-caption');
  const c = await newCard(chooseFile('scene.png'));
  assert(c.student !== null && !c.error, JSON.stringify(c));
  console.log(`     downloaded to ${dir}; the loaded student says "${c.student}"`);
  fs.rmSync(dir, { recursive: true, force: true });
});

await check('the distilled student is used by the Caption tab at once', async () => {
  await page.click('#tab-distill');
  await page.click('[data-testid=distill-use]');
  await page.waitForFunction(() => document.getElementById('models-status').textContent.startsWith('The Caption tab now uses your distilled student'), null, { timeout: 60000 });
  // Said where the user is looking too, and each caption says which student wrote it.
  const note = await page.textContent('[data-testid=distill-note]');
  assert(/now uses your distilled student/.test(note), note);
  await page.click('#tab-caption');
  const c = await newCard(chooseFile('scene.png'));
  assert(c.student !== null && !c.error, JSON.stringify(c));
  const label = await page.textContent('#cards [data-testid=caption-card] [data-testid=caption-student] .who');
  assert(/^student \(distilled here\)/.test(label), label);
});

await check('a paused run resumes and stops', async () => {
  await page.click('#tab-distill');
  const at = Number(await page.textContent('[data-testid=distill-step]'));
  assert((await page.textContent('[data-testid=distill-start]')) === 'Resume', 'the start button does not offer Resume');
  await page.click('[data-testid=distill-start]');
  await page.waitForFunction((n) => Number(document.querySelector('[data-testid=distill-step]').textContent) > n, at, { timeout: 300000 });
  await page.click('[data-testid=distill-stop]');
  await page.waitForFunction(() => document.getElementById('distill-state').textContent === 'stopped', null, { timeout: 120000 });
  await page.click('#tab-caption');
});

await check('a loss that turns NaN stops the run, its student is not offered, and it resumes from the last good checkpoint with a lower learning rate', async () => {
  await page.click('#tab-distill');
  for (const [name, v] of [['steps', 30], ['batch', 2], ['lr', 0.002], ['checkpoint_every', 2], ['eval_every', 0]]) {
    await page.fill(`#distill-form [name=${name}]`, String(v));
  }
  await page.click('[data-testid=distill-start]');
  // This run's fifth step (the run before it showed more steps than that).
  await page.waitForFunction(() => document.getElementById('distill-steps').textContent === '30' && Number(document.querySelector('[data-testid=distill-step]').textContent) >= 5, null, { timeout: 300000 });
  await page.evaluate(() => window.amadDebug.poison());
  await page.waitForFunction(() => /the loss is/.test(document.getElementById('distill-error').textContent), null, { timeout: 300000 });
  const err = await page.textContent('#distill-error');
  const m = /^step (\d+): the loss is NaN; the run stopped\. Resume from its checkpoint of step (\d+) with a lower learning rate\.$/.exec(err);
  // The loss of step s comes from the weights after s - 1 steps: only a checkpoint of s - 2 or before is good.
  assert(m && Number(m[2]) <= Number(m[1]) - 2 && Number(m[2]) >= 2, err);
  assert(await page.$eval('#distill-use', (b) => b.disabled), '"Use this student" is offered for the student that gave NaN');
  await page.waitForFunction(() => !document.querySelector('[data-testid=distill-resume]').hidden, null, { timeout: 60000 });
  await page.fill('#distill-form [name=lr]', '0.0005');
  await page.click('[data-testid=distill-resume]');
  // Past the step that went bad (the counter shows that step until the resumed run moves on).
  await page.waitForFunction((n) => Number(document.querySelector('[data-testid=distill-step]').textContent) > n, Number(m[1]), { timeout: 300000 });
  const lr = Number(await page.textContent('[data-testid=distill-lr]'));
  const total = JSON.parse(await page.$eval('#loss-plot', (c) => c.dataset.total));
  assert(lr > 0 && lr <= 5e-4 && total.slice(-2).every(Number.isFinite), `resumed at lr ${lr}, losses ${total.slice(-3)}`);
  await page.click('[data-testid=distill-stop]');
  await page.waitForFunction(() => document.getElementById('distill-state').textContent === 'stopped', null, { timeout: 120000 });
  console.log(`     ${err}`);
  await page.click('#tab-caption');
});

await check('a lost device gives a message and a recovery that works', async () => {
  await page.evaluate(() => window.amadDebug.loseDevice());
  await page.setInputFiles('[data-testid=file-input]', [fixture('scene.png')]);
  await page.waitForFunction(() => !document.getElementById('notice').hidden, null, { timeout: 60000 });
  const notice = await page.textContent('#notice');
  assert(/lost/.test(notice), notice);
  console.log(`     ${notice.slice(0, 110)}…`);
  await page.click('#notice button');
  await page.waitForFunction(() => document.getElementById('models-status').dataset.ready === 'true', null, { timeout: 120000 });
  // The run saved before the loss (stopped at its last checkpoint) is offered again.
  await page.waitForFunction(() => !document.querySelector('[data-testid=distill-resume]').hidden, null, { timeout: 60000 });
  const c = await newCard(chooseFile('photo.jpg'));
  assert(c.teacher && !c.error, JSON.stringify(c));
});

await check('no console errors', async () => {
  assert(problems.length === 0, problems.join(' | '));
});

await check('a panic in the worker gives its message, a failed card, and a recovery that works', async () => {
  // After the console check: the panic hook logs the message as an error, as it should.
  await page.evaluate(() => window.amadDebug.panic().catch(() => {}));
  await page.waitForFunction(() => !document.getElementById('notice').hidden, null, { timeout: 60000 });
  const notice = await page.textContent('#notice');
  assert(/a test panic, on purpose/.test(notice) && /Recover/.test(notice), notice);
  const status = await page.textContent('#models-status');
  assert(/^Stopped: /.test(status), status);
  await page.click('#notice button');
  await page.waitForFunction(() => document.getElementById('models-status').dataset.ready === 'true', null, { timeout: 120000 });
  const c = await newCard(chooseFile('photo.jpg'));
  assert(c.teacher && !c.error, JSON.stringify(c));
  console.log(`     ${notice.slice(0, 110)}…`);
});

await page.screenshot({ path: path.join(shots, 'final.png'), fullPage: true });

// A mock of the Hugging Face Hub on 127.0.0.1: {repo}/resolve/{revision}/{file} answers with the
// tiny Hub checkpoint's files (tests/fixtures/hub_tiny) and CORS headers, as the Hub does; a
// file the repository lacks is a 404. (After the console check: the page's probes for optional
// files that are absent log 404s, as they would against the real Hub.)
const hubFiles = path.join(here, '../fixtures/hub_tiny');
const golden = JSON.parse(fs.readFileSync(path.join(here, '../fixtures/hub_tiny_golden.json'), 'utf8'));
const hubLog = [];
// amad-test/hub-tiny-slow serves the same files slowly (64 KB every 50 ms), so that a download
// is still running when the test presses Cancel.
const hub = http.createServer((req, res) => {
  const m = new URL(req.url, 'http://x').pathname.match(/^\/amad-test\/hub-tiny(-slow)?\/resolve\/main\/([\w.-]+)$/);
  const file = m && path.join(hubFiles, m[2]);
  const cors = { 'access-control-allow-origin': '*', 'access-control-expose-headers': 'content-length' };
  hubLog.push(`${req.method} ${req.url}`);
  if (!file || !fs.existsSync(file)) {
    res.writeHead(404, cors);
    return res.end();
  }
  res.writeHead(200, { ...cors, 'content-length': fs.statSync(file).size, 'content-type': 'application/octet-stream' });
  if (req.method === 'HEAD') return res.end();
  if (!m[1]) return fs.createReadStream(file).pipe(res);
  const bytes = fs.readFileSync(file);
  let at = 0;
  const tick = setInterval(() => {
    if (res.destroyed || at >= bytes.length) {
      clearInterval(tick);
      return res.end();
    }
    res.write(bytes.subarray(at, at + 65536));
    at += 65536;
  }, 50);
  res.on('close', () => clearInterval(tick));
});
await new Promise((r) => hub.listen(0, '127.0.0.1', r));
// The tiny model is 10 MB: asking over 1 MB makes the page ask first, as it does for real models.
const hubUrl = `${base}?hub=${encodeURIComponent(`http://127.0.0.1:${hub.address().port}`)}&ask-over=1000000`;

// Loads the tiny Hub model by repo id (with `half`, its linear maps' weights in f16); returns the
// teacher-status texts seen on the way.
async function loadHubTeacher(half = false) {
  await page.goto(hubUrl);
  await page.waitForFunction(() => document.getElementById('models-status').dataset.ready === 'true', null, { timeout: 120000 });
  await page.setChecked('[data-testid=teacher-half]', half);
  await page.evaluate(() => {
    window.teacherStatuses = [];
    new MutationObserver(() => window.teacherStatuses.push(document.querySelector('[data-testid=teacher-status]').textContent))
      .observe(document.querySelector('[data-testid=teacher-status]'), { childList: true, characterData: true, subtree: true });
  });
  await page.fill('[data-testid=teacher-repo]', 'amad-test/hub-tiny');
  await page.click('[data-testid=teacher-load]');
  await page.waitForFunction(() => /ready|Could not|Press Load again/.test(document.querySelector('[data-testid=teacher-status]').textContent), null, { timeout: 120000 });
  const asked = await page.textContent('[data-testid=teacher-status]');
  const getsWhenAsked = hubLog.filter((l) => l.startsWith('GET ')).length;
  if (/Press Load again/.test(asked)) {
    asked.match(/is ([\d.]+) MB to download/) || assert(false, asked);
    await page.click('[data-testid=teacher-load]');
    await page.waitForFunction(() => /ready|Could not/.test(document.querySelector('[data-testid=teacher-status]').textContent), null, { timeout: 120000 });
  }
  const status = await page.textContent('[data-testid=teacher-status]');
  assert(/Teacher ready/.test(status), status);
  return { seen: await page.evaluate(() => window.teacherStatuses), asked, getsWhenAsked };
}

// The three photos of tests/fixtures/photos, dropped on the Distill tab.
async function dropPhotos() {
  await page.click('#tab-distill');
  const photo = (n) => ({ path: path.join(here, `../fixtures/photos/${n}.png`), type: 'image/png' });
  await drop([photo('astronaut'), photo('chelsea'), photo('coffee')]);
}

// Runs `steps` steps on the dropped photos, validating every `evalEvery`, a third held out, into
// the teacher's default student (sizes left empty: a reload may have filled them in from a saved
// run); returns the targets line once the run completes.
async function distillPhotos(steps, evalEvery) {
  await page.selectOption('#distill-form [name=data]', 'images');
  await page.fill('#distill-form [name=steps]', String(steps));
  await page.fill('#distill-form [name=eval_every]', String(evalEvery));
  await page.fill('#distill-form [name=val_fraction]', '0.34');
  for (const k of ['layers', 'width', 'heads']) await page.fill(`#distill-form [name=${k}]`, '');
  await page.click('[data-testid=distill-start]');
  await page.waitForFunction((n) => (document.getElementById('distill-steps').textContent === n && document.getElementById('distill-state').textContent === 'complete') || !document.getElementById('distill-error').hidden, String(steps), { timeout: 300000 });
  assert(await page.$eval('#distill-error', (e) => e.hidden), await page.textContent('#distill-error'));
  return page.textContent('#targets');
}

await check('a Hub captioner loads by repo id from a mock Hub, with progress, and captions a photo as transformers does', async () => {
  const gets = () => hubLog.filter((l) => l.startsWith('GET ')).length;
  const { seen, asked, getsWhenAsked } = await loadHubTeacher();
  // Over the limit, the page asked first, and fetched nothing until Load was pressed again.
  assert(/is 10\.\d MB to download/.test(asked) && getsWhenAsked === 0, `${asked} (${getsWhenAsked} GETs)`);
  assert(seen.some((t) => /model\.safetensors: [\d.]+ of [\d.]+ MB/.test(t)), `no progress shown: ${JSON.stringify(seen.slice(0, 5))}`);
  assert(gets() > 0, hubLog.join(', '));
  assert(hubLog.some((l) => l.startsWith('GET ') && l.endsWith('/model.safetensors')), hubLog.join(', '));
  const c = await newCard(() => page.setInputFiles('[data-testid=file-input]', [path.join(here, '../fixtures/photos/coffee.png')]));
  // The page decodes with the checkpoint's defaults (transformers': up to 19 new tokens); the
  // golden is transformers' greedy caption of 15, which it must begin with.
  assert(!c.error && c.teacher.startsWith(golden.coffee.greedy_text), `teacher: ${JSON.stringify(c.teacher)}, want ${JSON.stringify(golden.coffee.greedy_text)}…`);
  assert(c.student === '', `student line: ${JSON.stringify(c.student)}`);
  console.log(`     coffee.png: "${c.teacher}"`);
  await page.screenshot({ path: path.join(shots, 'hub-teacher.png'), fullPage: true });
});

await check('a student distils from the Hub teacher on dropped photos, then captions beside it with its speed-up', async () => {
  await dropPhotos();
  // Generated scenes are refused for this teacher: they speak the bundled vocabulary.
  await page.selectOption('#distill-form [name=data]', 'scenes');
  await page.click('[data-testid=distill-start]');
  const refused = await page.textContent('#distill-error');
  assert(/distils on your photos/.test(refused), refused);
  const targets = await distillPhotos(3, 3);
  // The sizes left empty take the teacher's default student: fewer heads than its 3 and 4.
  assert(/captions of 3 images/.test(targets) && /2\/48\/2 encoder, 2\/32\/2 decoder/.test(targets), targets);
  const rows = await page.$$eval('[data-testid=eval-table] tbody tr', (rs) => rs.map((r) => [...r.cells].map((c) => c.textContent)));
  assert(rows.length === 1 && rows[0][3] === '—', `validation rows: ${JSON.stringify(rows)}`);
  await page.waitForFunction(() => document.querySelector('[data-testid=distill-example] [data-testid=caption-teacher]')?.dataset.caption !== undefined, null, { timeout: 60000 });
  const example = await page.textContent('[data-testid=distill-example] .file-name');
  assert(/^astronaut\.png, step 3$/.test(example), example);
  await page.click('[data-testid=distill-use]');
  await page.waitForFunction(() => document.getElementById('models-status').textContent.startsWith('The Caption tab now uses your distilled student'), null, { timeout: 60000 });
  await page.click('#tab-caption');
  // The first caption from each model also builds its pipelines, so the speed-up shows from the
  // second on.
  await newCard(() => page.setInputFiles('[data-testid=file-input]', [path.join(here, '../fixtures/photos/chelsea.png')]));
  const c = await newCard(() => page.setInputFiles('[data-testid=file-input]', [path.join(here, '../fixtures/photos/coffee.png')]));
  assert(!c.error && c.student && c.teacher.startsWith(golden.coffee.greedy_text), JSON.stringify(c));
  const speed = await page.textContent('#cards [data-testid=caption-card] [data-testid=speedup]');
  assert(/^[\d.]+× the teacher's speed$/.test(speed), speed);
  console.log(`     ${targets.slice(targets.indexOf('Targets'))} Student: "${c.student}" (${speed})`);
  // A second run on the same photos takes the teacher's captions from IndexedDB.
  await page.click('#tab-distill');
  const again = await distillPhotos(1, 3);
  assert(/captions of 3 images \(3 kept from an earlier run\)/.test(again), again);
  await page.selectOption('#distill-form [name=data]', 'scenes');
  await page.fill('#distill-form [name=eval_every]', '0');
  await page.click('#tab-caption');
});

await check('an unknown repository gets a message that names it', async () => {
  await page.fill('[data-testid=teacher-repo]', 'amad-test/no-such-model');
  await page.click('[data-testid=teacher-load]');
  await page.waitForFunction(() => /Could not/.test(document.querySelector('[data-testid=teacher-status]').textContent), null, { timeout: 60000 });
  const status = await page.textContent('[data-testid=teacher-status]');
  assert(/amad-test\/no-such-model/.test(status) && /no config\.json/.test(status), status);
  console.log(`     ${status.slice(0, 120)}`);
});
await check('a Hub download in progress can be cancelled, and the teacher stays as it was', async () => {
  const status = () => page.textContent('[data-testid=teacher-status]');
  await page.fill('[data-testid=teacher-repo]', 'amad-test/hub-tiny-slow');
  await page.click('[data-testid=teacher-load]');
  await page.waitForFunction(() => /Press Load again/.test(document.querySelector('[data-testid=teacher-status]').textContent), null, { timeout: 60000 });
  await page.click('[data-testid=teacher-load]');
  await page.waitForFunction(() => /model\.safetensors: [\d.]+ of/.test(document.querySelector('[data-testid=teacher-status]').textContent), null, { timeout: 60000 });
  assert(await page.isVisible('[data-testid=teacher-cancel]'), 'no Cancel button while downloading');
  await page.click('[data-testid=teacher-cancel]');
  await page.waitForFunction(() => /cancelled/.test(document.querySelector('[data-testid=teacher-status]').textContent), null, { timeout: 60000 });
  const text = await status();
  assert(/Could not load amad-test\/hub-tiny-slow: the download was cancelled/.test(text), text);
  assert(!(await page.isVisible('[data-testid=teacher-cancel]')), 'Cancel still shown');
  // The teacher loaded before (hub-tiny) still captions.
  const c = await newCard(() => page.setInputFiles('[data-testid=file-input]', [path.join(here, '../fixtures/photos/coffee.png')]));
  assert(!c.error && c.teacher.startsWith(golden.coffee.greedy_text), JSON.stringify(c));
});

await check('after a reload the Hub captioner loads from the browser cache with the mock Hub stopped', async () => {
  await new Promise((r) => hub.close(r));
  hubLog.length = 0;
  const { asked } = await loadHubTeacher();
  assert(!/Press Load again/.test(asked), `a cached model needs no download, yet: ${asked}`);
  const c = await newCard(() => page.setInputFiles('[data-testid=file-input]', [path.join(here, '../fixtures/photos/coffee.png')]));
  assert(!c.error && c.teacher.startsWith(golden.coffee.greedy_text), JSON.stringify(c));
});

await check('with half-precision weights the Hub captioner takes less GPU memory and captions as before', async () => {
  const full = await page.textContent('[data-testid=teacher-status]');
  await loadHubTeacher(true);
  const half = await page.textContent('[data-testid=teacher-status]');
  const mb = (t) => Number((t.match(/\(([\d.]+) MB of weights on the GPU/) || [])[1]);
  assert(/half precision/.test(half) && !/half precision/.test(full), `${full} / ${half}`);
  assert(mb(half) > 0 && mb(half) < mb(full), `${full} / ${half}`);
  const c = await newCard(() => page.setInputFiles('[data-testid=file-input]', [path.join(here, '../fixtures/photos/coffee.png')]));
  assert(!c.error && c.teacher.startsWith(golden.coffee.greedy_text), JSON.stringify(c));
  console.log(`     weights ${mb(full)} MB in f32, ${mb(half)} MB with half precision: "${c.teacher}"`);
  // The captions kept from the f32 teacher's runs on these photos are not this teacher's.
  await dropPhotos();
  const targets = await distillPhotos(1, 0);
  assert(/captions of 3 images/.test(targets) && !/kept from an earlier run/.test(targets), targets);
  // A run stopped with this teacher is not resumed with the f32 one of the same name.
  await page.fill('#distill-form [name=steps]', '50');
  await page.fill('#distill-form [name=checkpoint_every]', '1');
  await page.click('[data-testid=distill-start]');
  await page.waitForFunction(() => Number(document.querySelector('[data-testid=distill-step]').textContent) >= 1, null, { timeout: 300000 });
  await page.click('[data-testid=distill-stop]');
  await page.waitForFunction(() => document.getElementById('distill-state').textContent === 'stopped', null, { timeout: 120000 });
  await loadHubTeacher();
  await page.click('#tab-distill');
  await page.waitForFunction(() => !document.querySelector('[data-testid=distill-resume]').hidden, null, { timeout: 60000 });
  await page.click('[data-testid=distill-resume]');
  await page.waitForFunction(() => document.getElementById('distill-error').textContent !== '' || document.getElementById('distill-state').textContent === 'running', null, { timeout: 60000 });
  const refused = await page.textContent('#distill-error');
  assert(/another teacher than the one loaded now/.test(refused), `${refused} (state ${await page.textContent('#distill-state')})`);
  await page.click('[data-testid=distill-forget]');
});

await browser.close();

await check('without WebGPU the page says what works', async () => {
  const plain = await chromium.launch({ executablePath: process.env.CHROMIUM || '/usr/bin/chromium', headless: true, args: ['--no-sandbox', '--disable-gpu'] });
  const p = await plain.newPage();
  await p.goto(base);
  await p.waitForFunction(() => !document.querySelector('[data-testid=webgpu-missing]').hidden, null, { timeout: 60000 });
  const text = await p.textContent('[data-testid=webgpu-missing]');
  assert(/Chrome/.test(text) && /WebGPU/.test(text), text);
  await p.screenshot({ path: path.join(shots, 'no-webgpu.png'), fullPage: true });
  await plain.close();
  console.log(`     ${text.slice(0, 100)}…`);
});

server.close();
for (const f of failures) console.log(f);
console.log(`browser: ${passed} passed, ${failed} failed; screenshots in ${shots}`);
process.exit(failed ? 1 : 0);
