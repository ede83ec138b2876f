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

const handlers = {
  async open() {
    return JSON.parse(await amad.open_gpu());
  },

  // Fetches a bundled checkpoint (www/models/<dir>) and loads it as model `name`.
  async loadBundled(name, dir) {
    const base = new URL(`models/${dir}/`, self.location.href);
    const get = async (file) => {
      const r = await fetch(new URL(file, base));
      if (!r.ok) throw new Error(`models/${dir}/${file}: HTTP ${r.status}`);
      return r;
    };
    const [config, weights, pre, tok] = await Promise.all([
      get('config.json').then((r) => r.text()),
      get('model.safetensors').then((r) => r.arrayBuffer()),
      get('preprocessor_config.json').then((r) => r.text()),
      get('tokenizer.json').then((r) => r.text()),
    ]);
    return JSON.parse(amad.load_model(name, config, new Uint8Array(weights), pre, tok));
  },

  // Loads a checkpoint from the user's files: {config, weights (ArrayBuffer), preprocessor, tokenizer}.
  async loadFiles(name, f) {
    return JSON.parse(amad.load_model(name, f.config, new Uint8Array(f.weights), f.preprocessor, f.tokenizer));
  },

  async caption(name, bytes, file) {
    return JSON.parse(await amad.caption(name, new Uint8Array(bytes), file));
  },

  async scene(index) {
    return { png: amad.scene_png(index), references: JSON.parse(amad.scene_references(index)) };
  },

  // Starts a run (or continues the saved one with `resume`); with `images` ([[name, ArrayBuffer]])
  // the teacher captions them and the run trains on them.
  async distillStart(options, images, resume) {
    let saved = null;
    if (resume) {
      saved = await db('get');
      if (!saved) throw new Error('there is no saved run to resume');
      options = JSON.parse(saved.options);
    }
    const student = JSON.parse(amad.distill_start(
      JSON.stringify(options),
      saved ? saved.config : undefined,
      saved ? new Uint8Array(saved.weights) : undefined,
      saved ? new Uint8Array(saved.state) : undefined,
    ));
    let targets = null;
    if (images && images.length) {
      targets = JSON.parse(await amad.distill_images(images.map(([n, b]) => [n, new Uint8Array(b)])));
    }
    return { student, targets, step: saved ? saved.step : 0, options };
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
        if (r.step % options.checkpoint_every === 0 || r.step === r.steps) {
          await saveCheckpoint();
          self.postMessage({ event: 'checkpoint', step: r.step });
        }
        if (options.eval_every > 0 && (r.step % options.eval_every === 0 || r.step === r.steps)) {
          self.postMessage({ event: 'eval', ...JSON.parse(await amad.distill_eval(options.eval_n || 20)) });
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
      throw e;
    }
  },

  async distillPause() {
    if (control === 'running') control = 'pausing';
  },

  async distillStop() {
    if (control === 'running') control = 'stopping';
  },

  // The student's four files (for a download), from the run in memory.
  async checkpoint() {
    const c = await amad.checkpoint();
    return { config: c.config, weights: c.weights, preprocessor: c.preprocessor, tokenizer: c.tokenizer, step: c.step };
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
  },

  // Destroys the device (tests of the recovery path; see the page's amadDebug).
  async loseDevice() {
    amad.lose_device();
  },
};

async function saveCheckpoint() {
  const c = await amad.checkpoint();
  await db('put', {
    step: c.step,
    options: c.options,
    config: c.config,
    weights: c.weights.buffer,
    state: c.state.buffer,
    saved: Date.now(),
  });
}

// One record in IndexedDB: the current run's latest checkpoint.
function db(op, value) {
  return new Promise((resolve, reject) => {
    const open = indexedDB.open('amad', 1);
    open.onupgradeneeded = () => open.result.createObjectStore('runs');
    open.onerror = () => reject(new Error(`IndexedDB: ${open.error}`));
    open.onsuccess = () => {
      const tx = open.result.transaction('runs', op === 'get' ? 'readonly' : 'readwrite');
      const store = tx.objectStore('runs');
      const req = op === 'get' ? store.get('current') : op === 'put' ? store.put(value, 'current') : store.delete('current');
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
    const error = String((err && err.message) || err);
    self.postMessage({ id, ok: false, error, lost: /lost|destroyed/i.test(error) });
  }
};
