// The GPU side of the page. Every call into the wasm module (src/web) happens in this worker, so
// the page stays responsive while a student trains. Messages: {id, op, args} in, {id, ok, result
// | error} out; a running distillation also posts {event: ...} messages with its progress.
import init, * as amad from './amad.js';

const ready = init({ module_or_path: './amad_bg.wasm' });

// The distillation loop's control: 'idle' | 'running' | 'pausing' | 'stopping'.
let control = 'idle';
let started = null; // {step, time} of the current stretch, for steps/s
let stepsRun = 0;
const WEIGHTS_EVERY = 5;
// The run's loss terms per step and its validation scores, saved with its checkpoints, so that a
// resumed run shows its whole history.
let history = { steps: [], evals: [] };
// The run whose checkpoints are saved: a new one's id at each start, a resumed one's own.
let runId = null;

// The Hub download in progress.
let download = null;
const MANIFEST = '.amad-files.json';

// The browser's store of Hub files: a directory of the origin private file system (OPFS) per
// hub, repository and revision, or null where the browser has none. Cache Storage, used before,
// refused files of 300 MB and more in Chromium ("Unexpected internal error"); OPFS stored and read
// back 957 MB (nlpconnect's pytorch_model.bin) in about 11 s.
async function openStore(hub, repo, revision) {
  try {
    let dir = await navigator.storage.getDirectory();
    for (const part of ['amad-hub', hub, ...repo.split('/'), revision]) {
      dir = await dir.getDirectoryHandle(part.replace(/[^\w.-]+/g, '_'), { create: true });
    }
    return dir;
  } catch {
    return null;
  }
}

// The stored file `name` in `dir`, or null.
async function storedFile(dir, name) {
  try {
    return await (await dir.getFileHandle(name)).getFile();
  } catch {
    return null;
  }
}

// Writes `bytes` as file `name` in `dir`, through a synchronous handle (workers only), in chunks.
async function storeFile(dir, name, bytes) {
  const handle = await (await dir.getFileHandle(name, { create: true })).createSyncAccessHandle();
  try {
    handle.truncate(0);
    const chunk = 64 << 20;
    for (let at = 0; at < bytes.length; at += chunk) handle.write(bytes.subarray(at, at + chunk), { at });
    handle.flush();
  } finally {
    handle.close();
  }
}

const handlers = {
  async open() {
    return JSON.parse(await amad.open_gpu());
  },

  // Fetches a bundled checkpoint (www/models/<dir>) and loads it as model `name` (`half`: its
  // linear maps' weights in f16, here and below).
  async loadBundled(name, dir, half = false) {
    const base = new URL(`models/${dir}/`, self.location.href);
    const files = await Promise.all(['config.json', 'model.safetensors', 'preprocessor_config.json', 'tokenizer.json']
      .map(async (file) => {
        const r = await fetch(new URL(file, base));
        if (!r.ok) throw new Error(`models/${dir}/${file}: HTTP ${r.status}`);
        return [file, new Uint8Array(await r.arrayBuffer())];
      }));
    return JSON.parse(amad.load_checkpoint(name, `models/${dir}`, new Map(files), half));
  },

  // Loads a checkpoint from the user's files: [[file name, ArrayBuffer]], as a folder holds them.
  async loadFiles(name, files, half = false) {
    return JSON.parse(amad.load_checkpoint(name, 'your files', new Map(files.map(([n, b]) => [n, new Uint8Array(b)])), half));
  },

  // Loads a captioner from the Hugging Face Hub (or a mirror: `hub`) as model `name`, in the
  // formats and the order amad reads a folder (src/model/captioner.rs): safetensors, then sharded
  // safetensors, then pytorch_model.bin. Files come from the browser's store (OPFS) where an
  // earlier load left them. Downloads over `askOver` bytes wait for the page to confirm them: without
  // `confirmedBytes` equal to the size, the answer is {confirm: bytes, files} and nothing is
  // fetched. Progress goes to the page as {event: 'download'} messages.
  async loadHub(name, hub, repo, revision, askOver, confirmedBytes, half = false) {
    const base = `${hub.replace(/\/+$/, '')}/${repo}/resolve/${encodeURIComponent(revision)}/`;
    const where = `${repo}@${revision}`;
    download = new AbortController();
    const { signal } = download;
    const store = await openStore(hub, repo, revision);
    const reach = async (url, init) => {
      try {
        return await fetch(url, { ...init, signal });
      } catch (e) {
        if (signal.aborted) throw new Error('the download was cancelled');
        throw new Error(`could not reach ${hub} (${e.message}): the network is offline, or that server does not let this page fetch from it (CORS)`);
      }
    };
    // A stored file counts only at the size the Hub (or the manifest) gives it, so a file whose
    // writing was cut short is fetched again.
    const isStored = async (file, bytes) => {
      const hit = store && bytes > 0 && await storedFile(store, file);
      return !!hit && hit.size === bytes;
    };
    // A file's size, from a HEAD request; null where the repository has no such file.
    const size = async (file) => {
      const r = await reach(base + file, { method: 'HEAD' });
      if (r.status === 404 || r.status === 401 || r.status === 403) return null;
      if (!r.ok) throw new Error(`${where}/${file}: HTTP ${r.status} from ${hub}`);
      const bytes = Number(r.headers.get('x-linked-size') || r.headers.get('content-length')) || 0;
      return { file, bytes, cached: await isStored(file, bytes) };
    };
    const get = async (f, onBytes) => {
      if (f.cached) return new Uint8Array(await (await storedFile(store, f.file)).arrayBuffer());
      const r = await reach(base + f.file);
      if (!r.ok) throw new Error(`${where}/${f.file}: HTTP ${r.status} from ${hub}`);
      const total = Number(r.headers.get('content-length')) || f.bytes;
      const reader = r.body.getReader();
      const parts = [];
      let got = 0;
      for (;;) {
        let part;
        try {
          part = await reader.read();
        } catch (e) {
          throw signal.aborted ? new Error('the download was cancelled') : e;
        }
        const { done, value } = part;
        if (done) break;
        parts.push(value);
        got += value.length;
        onBytes(got, total);
      }
      const bytes = new Uint8Array(got);
      let at = 0;
      for (const p of parts) {
        bytes.set(p, at);
        at += p.length;
      }
      if (store) {
        try {
          await storeFile(store, f.file, bytes);
        } catch (e) {
          notCached.push(`${f.file} (${e.name === 'QuotaExceededError' ? "the browser's storage quota is full" : e.message})`);
        }
      }
      f.bytes = got;
      return bytes;
    };
    const notCached = [];
    // A load that completed left a list of the repository's files and sizes in the store: with it,
    // a load needs no network at all (no probes for the files the repository lacks).
    const manifest = store && await storedFile(store, MANIFEST);
    let listed = null;
    try {
      listed = manifest && JSON.parse(await manifest.text());
    } catch {
      listed = null; // a manifest that does not parse: probe the Hub again
    }
    let wanted;
    const files = new Map();
    if (Array.isArray(listed) && listed.every((f) => f && typeof f.file === 'string' && f.bytes > 0)) {
      wanted = [];
      for (const f of listed) wanted.push({ file: f.file, bytes: f.bytes, cached: await isStored(f.file, f.bytes) });
    } else {
      listed = null;
      const config = await size('config.json');
      if (!config) throw new Error(`${where}: no config.json on ${hub} (HTTP 404): is the repository id right, and is it public?`);
      let weights = null;
      for (const file of ['model.safetensors', 'model.safetensors.index.json', 'pytorch_model.bin']) {
        weights = await size(file);
        if (weights) break;
      }
      if (!weights) throw new Error(`${where}: no model.safetensors, sharded safetensors or pytorch_model.bin on ${hub}`);
      wanted = [config, weights];
      for (const file of ['preprocessor_config.json', 'tokenizer.json', 'vocab.json', 'merges.txt', 'special_tokens_map.json', 'generation_config.json']) {
        const f = await size(file);
        if (f) wanted.push(f);
      }
      if (!wanted.some((f) => f.file === 'preprocessor_config.json')) throw new Error(`${where}: no preprocessor_config.json on ${hub}`);
      if (weights.file === 'model.safetensors.index.json') {
        const index = JSON.parse(new TextDecoder().decode(await get(weights, () => {})));
        for (const shard of [...new Set(Object.values(index.weight_map || {}))].sort()) wanted.push(await size(shard) || { file: shard, bytes: 0, cached: false });
      }
    }
    const toFetch = wanted.filter((f) => !f.cached).reduce((a, f) => a + f.bytes, 0);
    if (toFetch > askOver && confirmedBytes !== toFetch) return { confirm: toFetch, files: wanted.map((f) => f.file) };
    const all = wanted.reduce((a, f) => a + f.bytes, 0);
    let before = 0;
    for (const [i, f] of wanted.entries()) {
      const progress = (loaded, total) => self.postMessage({ event: 'download', repo: where, file: f.file, index: i + 1, files: wanted.length, loaded, total, done: before + loaded, all });
      progress(0, f.bytes);
      files.set(f.file, await get(f, progress));
      before += f.bytes;
    }
    download = null;
    if (store && !listed && !notCached.length) {
      const list = JSON.stringify(wanted.map((f) => ({ file: f.file, bytes: f.bytes })));
      await storeFile(store, MANIFEST, new TextEncoder().encode(list)).catch(() => {});
    }
    self.postMessage({ event: 'download', repo: where, loading: true });
    const summary = JSON.parse(amad.load_checkpoint(name, where, files, half));
    return { ...summary, notCached, bytes: all };
  },

  async cancelDownload() {
    if (download) download.abort();
  },

  async caption(name, bytes, file) {
    return JSON.parse(await amad.caption(name, new Uint8Array(bytes), file));
  },

  // The defaults of a distillation run, for the page's form.
  async distillDefaults() {
    return JSON.parse(amad.distill_defaults());
  },

  async scene(index) {
    return { png: amad.scene_png(index), references: JSON.parse(amad.scene_references(index)) };
  },

  // Starts a run (or continues the saved one with `resume`); with `images` ([[name, ArrayBuffer]])
  // the teacher captions them and the run trains on them.
  // `changes` (with `resume`): options that may differ from the saved run's (the learning rate,
  // steps, intervals), as the page's form gives them.
  async distillStart(options, images, resume, changes) {
    let saved = null;
    if (resume) {
      saved = await db('get');
      if (!saved) throw new Error('there is no saved run to resume');
      options = { ...JSON.parse(saved.options), ...(changes || {}) };
    }
    const student = JSON.parse(amad.distill_start(
      JSON.stringify(options),
      saved ? saved.config : undefined,
      saved ? new Uint8Array(saved.weights) : undefined,
      saved ? new Uint8Array(saved.state) : undefined,
    ));
    let targets = null;
    if (images && images.length) {
      // The teacher's captions are kept per teacher (by its key, which the run's options carry:
      // its files and precision), by each image's bytes, so a run on the same photos (a resume,
      // another method) captions nothing again, and another teacher never reuses them.
      const teacherKey = options.teacher_key;
      const cached = (teacherKey && await db('get', undefined, 'captions', teacherKey)) || {};
      targets = JSON.parse(await amad.distill_images(
        images.map(([n, b]) => [n, new Uint8Array(b)]),
        JSON.stringify(cached),
        (done, total) => self.postMessage({ event: 'captioning', done, total }),
      ));
      if (teacherKey) {
        for (const t of targets.images) cached[t.key] = t.caption;
        await db('put', cached, 'captions', teacherKey);
      }
    }
    // A resumed run continues the history it saved, up to its checkpoint's step.
    const h = (saved && saved.history) || { steps: [], evals: [] };
    const upTo = saved ? saved.step : 0;
    history = historyUpTo(h, upTo);
    runId = (saved && saved.run) || `${Date.now()}-${Math.random()}`;
    return { student, targets, step: upTo, options, history };
  },

  // Runs steps until the run completes, or is paused or stopped. Checkpoints go to IndexedDB.
  async distillRun(options) {
    control = 'running';
    started = null;
    try {
      for (;;) {
        if (control !== 'running') break;
        const first = started === null;
        // The alignment weights are read back for the heatmaps every few steps, not every step.
        const r = JSON.parse(await amad.distill_step(first || stepsRun % WEIGHTS_EVERY === 0));
        stepsRun++;
        const now = performance.now();
        if (first) started = { step: r.step, time: now };
        const rate = r.step > started.step ? (r.step - started.step) / ((now - started.time) / 1000) : null;
        self.postMessage({ event: 'step', ...r, rate });
        history.steps.push({ step: r.step, terms: r.terms });
        if (r.step % options.checkpoint_every === 0 || r.step === r.steps) {
          await saveCheckpoint();
          self.postMessage({ event: 'checkpoint', step: r.step });
        }
        if (options.eval_every > 0 && (r.step % options.eval_every === 0 || r.step === r.steps)) {
          // Null where nothing is held out to validate on.
          const scores = JSON.parse(await amad.distill_eval(options.eval_n || 20));
          if (scores) {
            self.postMessage({ event: 'eval', ...scores });
            history.evals.push(scores);
          }
        }
        if (r.step >= r.steps) {
          control = 'idle';
          return 'complete';
        }
      }
      // Paused or stopped: keep every step done so far, so a reload loses nothing.
      await saveCheckpoint();
      const how = control === 'pausing' ? 'paused' : 'stopped';
      control = 'idle';
      return how;
    } catch (e) {
      control = 'idle';
      const bad = /^step (\d+): the loss is /.exec(e.message);
      if (bad) throw new Error(`${e.message} ${await keepGoodCheckpoint(Number(bad[1]))}`);
      throw e;
    }
  },

  async distillPause() {
    if (control === 'running') control = 'pausing';
  },

  async distillStop() {
    if (control === 'running') control = 'stopping';
  },

  // The student's five files (for a download), from the run in memory.
  async checkpoint() {
    const c = await amad.checkpoint();
    return { config: c.config, weights: c.weights, preprocessor: c.preprocessor, tokenizer: c.tokenizer, generation: c.generation, step: c.step };
  },

  async useStudent(name) {
    return JSON.parse(amad.use_student(name));
  },

  // The saved run's step and options, or null.
  async savedRun() {
    const s = await db('get');
    return s ? { step: s.step, options: JSON.parse(s.options) } : null;
  },

  async forgetSavedRun() {
    await db('delete');
    await db('delete', undefined, 'runs', 'previous');
  },

  // Destroys the device (tests of the recovery path; see the page's amadDebug).
  async panicForTest() {
    amad.panic_for_test();
  },

  async loseDevice() {
    amad.lose_device();
  },

  async poisonForTest() {
    amad.poison_student_for_test();
  },
};

// After a non-finite loss at step `s`: the loss of step s comes from the weights after s - 1
// steps, so a checkpoint of step s - 1 holds the weights that gave it, and only one of step s - 2
// or before is known good (the loss after it was finite). Keeps this run's newest such checkpoint
// as the saved run, or none of this run's; returns what the user can do.
async function keepGoodCheckpoint(s) {
  const [current, previous] = [await db('get'), await db('get', undefined, 'runs', 'previous')];
  const good = [current, previous].find((c) => c && c.run === runId && c.step <= s - 2);
  await db('delete', undefined, 'runs', 'previous');
  if (good) {
    if (good !== current) await db('put', good);
    return `Resume from its checkpoint of step ${good.step} with a lower learning rate.`;
  }
  if (current && current.run === runId) await db('delete');
  return 'No checkpoint of this run comes before the loss went bad: start it again with a lower learning rate.';
}

// The part of a run's history up to its step `step` (what a checkpoint of that step holds).
function historyUpTo(h, step) {
  return { steps: h.steps.filter((x) => x.step <= step), evals: h.evals.filter((x) => x.step <= step) };
}

// Saves the run's checkpoint as the saved run ('current'), keeping the one it replaces as
// 'previous' when it is of the same run: see keepGoodCheckpoint.
async function saveCheckpoint() {
  const c = await amad.checkpoint();
  const last = await db('get');
  if (!last || last.run !== runId) await db('delete', undefined, 'runs', 'previous');
  else if (last.step < c.step) await db('put', last, 'runs', 'previous');
  await db('put', {
    run: runId,
    step: c.step,
    options: c.options,
    config: c.config,
    weights: c.weights.buffer,
    state: c.state.buffer,
    history: historyUpTo(history, c.step),
    saved: Date.now(),
  });
}

// IndexedDB: in 'runs', the current run's latest checkpoint (key 'current'); in 'captions', per
// teacher key (its files and precision), the captions it made of the user's images, by image key.
function db(op, value, storeName = 'runs', key = 'current') {
  return new Promise((resolve, reject) => {
    const open = indexedDB.open('amad', 2);
    open.onupgradeneeded = () => {
      for (const name of ['runs', 'captions']) {
        if (!open.result.objectStoreNames.contains(name)) open.result.createObjectStore(name);
      }
    };
    open.onerror = () => reject(new Error(`IndexedDB: ${open.error}`));
    open.onsuccess = () => {
      const tx = open.result.transaction(storeName, op === 'get' ? 'readonly' : 'readwrite');
      const store = tx.objectStore(storeName);
      const req = op === 'get' ? store.get(key) : op === 'put' ? store.put(value, key) : store.delete(key);
      req.onsuccess = () => resolve(req.result);
      req.onerror = () => reject(new Error(`IndexedDB: ${req.error}`));
    };
  });
}

self.onmessage = async (e) => {
  const { id, op, args } = e.data;
  try {
    await ready;
    if (!handlers[op]) throw new Error(`unknown operation ${op}`);
    const result = await handlers[op](...(args || []));
    self.postMessage({ id, ok: true, result });
  } catch (err) {
    // A Rust panic (its message left by the panic hook) or any other trap leaves the module
    // unusable: the page must start a new worker, as after a lost device.
    const trapped = self.amadPanic || err instanceof WebAssembly.RuntimeError;
    const error = self.amadPanic ? `amad stopped on a bug: ${self.amadPanic}` : String((err && err.message) || err);
    self.postMessage({ id, ok: false, error, lost: trapped || /lost|destroyed/i.test(error) });
  }
};
