// The page: drawing and input only. All GPU work goes to the worker (worker.js) by message.
import { linePlot, heatmap, attentionOverlay } from './plot.js';

const $ = (id) => document.getElementById(id);

const HOW_TO_GET_WEBGPU =
  'amad needs WebGPU: Chrome or Edge 113+ (Windows, macOS, ChromeOS, Android 12+), Safari 26+, ' +
  'or Firefox 141+ on Windows. On Linux, start Chrome with --enable-unsafe-webgpu (or enable ' +
  'chrome://flags/#enable-unsafe-webgpu) and make sure a Vulkan driver is installed.';

// ---------- the worker and its calls ----------

let worker = null;
let nextId = 1;
const pending = new Map();
let gpuReady = null; // resolves when the GPU is open and both bundled models are loaded

function startWorker() {
  worker = new Worker(new URL('./worker.js', import.meta.url), { type: 'module' });
  worker.onmessage = (e) => {
    const m = e.data;
    if (m.event === 'download') return onDownload(m);
    if (m.event) return onDistillEvent(m);
    const p = pending.get(m.id);
    if (!p) return;
    pending.delete(m.id);
    if (m.ok) p.resolve(m.result);
    else {
      if (m.lost) onDeviceLost(m.error);
      p.reject(new Error(m.error));
    }
  };
  worker.onerror = (e) => onDeviceLost(`The GPU worker failed: ${e.message || 'unknown error'}`);
}

function call(op, ...args) {
  return new Promise((resolve, reject) => {
    const id = nextId++;
    pending.set(id, { resolve, reject });
    worker.postMessage({ id, op, args });
  });
}

function showNotice(text, action) {
  const n = $('notice');
  n.textContent = text;
  if (action) {
    const b = document.createElement('button');
    b.textContent = action.label;
    b.onclick = action.run;
    n.append(' ', b);
  }
  n.hidden = false;
}

async function boot() {
  startWorker();
  // A new worker has the bundled models and no pipelines yet.
  teacherKind = 'bundled';
  studentTeacher = 'bundled';
  studentName = 'bundled';
  captioned.clear();
  $('models-status').textContent = 'Loading the bundled teacher and student…';
  delete $('models-status').dataset.ready;
  gpuReady = (async () => {
    let gpu;
    try {
      gpu = await call('open');
    } catch (e) {
      $('adapter').textContent = 'No usable WebGPU adapter.';
      const m = $('webgpu-missing');
      m.textContent = `${e.message}. ${HOW_TO_GET_WEBGPU}`;
      m.hidden = false;
      throw e;
    }
    $('adapter').textContent = `GPU: ${gpu.adapter}`;
    $('adapter').dataset.maxBinding = gpu.max_binding_bytes;
    const [teacher, student] = await Promise.all([
      call('loadBundled', 'teacher', 'teacher'),
      call('loadBundled', 'student', 'student'),
    ]);
    teacherKey = teacher.key;
    $('models-status').textContent =
      `Ready: student ${fmtParams(student.parameters)} parameters, teacher ${fmtParams(teacher.parameters)}.`;
    // The form shows the worker's defaults: one home for them (src/web, page_defaults).
    fillForm(await call('distillDefaults'));
    $('models-status').dataset.ready = 'true';
    await offerResume();
  })();
  gpuReady.catch((e) => {
    if ($('webgpu-missing').hidden) showNotice(`Could not load the models: ${e.message}`);
  });
}

function onDeviceLost(error) {
  $('models-status').textContent = `Stopped: ${error}`;
  showNotice(`${error}. Recover opens a new device, reloads the models and offers to resume a saved run.`, {
    label: 'Recover',
    run: () => {
      worker.terminate();
      for (const p of pending.values()) p.reject(new Error('the GPU worker was restarted'));
      pending.clear();
      $('notice').hidden = true;
      setDistillState('idle');
      boot();
    },
  });
}

const fmtParams = (n) => (n >= 1e6 ? `${(n / 1e6).toFixed(2)} M` : `${(n / 1e3).toFixed(0)} k`);

// ---------- tabs ----------

const tabs = [...document.querySelectorAll('.tab')];
function selectTab(b) {
  for (const t of tabs) {
    t.classList.toggle('active', t === b);
    t.setAttribute('aria-selected', String(t === b));
    t.tabIndex = t === b ? 0 : -1;
  }
  for (const p of document.querySelectorAll('.panel')) p.hidden = p.id !== b.dataset.tab;
}
for (const b of tabs) {
  b.onclick = () => selectTab(b);
  // Arrow keys move between the tabs, as a tab list's do.
  b.onkeydown = (e) => {
    const step = { ArrowRight: 1, ArrowLeft: -1 }[e.key];
    if (!step) return;
    const next = tabs[(tabs.indexOf(b) + step + tabs.length) % tabs.length];
    selectTab(next);
    next.focus();
    e.preventDefault();
  };
}

// ---------- caption ----------

let captionQueue = Promise.resolve();

function captionFiles(files) {
  for (const f of files) {
    const card = makeCard(f.name, f);
    captionQueue = captionQueue.then(() => captionCard(card, f)).catch(() => {});
  }
}

function makeCard(name, blob, container = $('cards')) {
  const card = document.createElement('div');
  card.className = 'card';
  card.dataset.testid = 'caption-card';
  card.setAttribute('data-testid', 'caption-card');
  const fig = document.createElement('div');
  fig.className = 'figure';
  const img = document.createElement('img');
  img.alt = name;
  img.src = URL.createObjectURL(blob);
  img.onerror = () => img.remove();
  const overlay = document.createElement('canvas');
  overlay.width = overlay.height = 128;
  fig.append(img, overlay);
  const body = document.createElement('div');
  body.className = 'card-body';
  const title = document.createElement('div');
  title.className = 'file-name';
  title.textContent = name;
  body.append(title);
  card.append(fig, body);
  container.prepend(card);
  const waiting = document.createElement('div');
  waiting.className = 'waiting';
  waiting.textContent = 'waiting…';
  body.append(waiting);
  card.overlay = overlay;
  card.body = body;
  card.waiting = waiting;
  return card;
}

// The models that have captioned once since they were loaded (see captionCard's speed-up).
const captioned = new Set();

// Captions `file` into `card` with each model in `models` ([model name, label]).
async function captionCard(card, file, models = [['student', 'student'], ['teacher', 'teacher']]) {
  card.waiting.remove();
  const bytes = await file.arrayBuffer();
  try {
    await gpuReady;
  } catch (e) {
    return cardError(card, `no GPU: ${e.message}`);
  }
  if (studentTeacher !== teacherKind && models.some(([m]) => m === 'student')) {
    const none = document.createElement('div');
    none.className = 'caption-line muted';
    none.setAttribute('data-testid', 'caption-student');
    none.dataset.caption = '';
    none.textContent = `student: none distilled for this teacher (${teacherKind}) yet`;
    card.body.append(none);
    models = models.filter(([m]) => m !== 'student');
  }
  let warning = null;
  for (const [model, who] of models) {
    const line = document.createElement('div');
    line.className = 'caption-line';
    line.setAttribute('data-testid', `caption-${who}`);
    line.textContent = `${who}: …`;
    card.body.append(line);
    const t0 = performance.now();
    let r;
    try {
      r = await call('caption', model, bytes, file.name);
    } catch (e) {
      line.remove();
      return cardError(card, e.message);
    }
    const ms = performance.now() - t0;
    line.textContent = '';
    const label = document.createElement('span');
    label.className = 'who';
    // Which student wrote it: the bundled one, one distilled here, or a loaded checkpoint.
    label.textContent = who === 'student' ? `student (${studentName}) ` : `${who} `;
    line.append(label);
    r.words.forEach((w, i) => {
      const s = document.createElement('span');
      s.className = 'word';
      s.textContent = w;
      s.tabIndex = 0;
      s.onmouseenter = s.onfocus = () => attentionOverlay(card.overlay, r.heat[i], r.grid);
      s.onmouseleave = s.onblur = () => attentionOverlay(card.overlay, null, r.grid);
      line.append(s); // each piece carries the space before it, as the tokenizer has it
    });
    if (r.words.length === 0) line.append('(empty caption)');
    const time = document.createElement('span');
    time.className = 'time';
    // A model's first caption also builds its GPU pipelines: say so beside its time.
    time.textContent = captioned.has(model) ? `${ms.toFixed(0)} ms` : `${ms.toFixed(0)} ms (first: includes setup)`;
    line.append(time);
    line.dataset.caption = r.caption;
    // A model's first caption also builds its pipelines: its time says nothing of its speed.
    line.ms = captioned.has(model) ? ms : null;
    captioned.add(model);
    warning = r.warning;
  }
  // An image that decoded only in part (a truncated JPEG): its captions describe what decoded.
  if (warning) {
    const w = document.createElement('div');
    w.className = 'caption-warning';
    w.setAttribute('data-testid', 'caption-warning');
    w.textContent = warning;
    card.body.append(w);
  }
  // The student's time beside the teacher's: what distilling bought.
  const [student, teacher] = ['student', 'teacher'].map((w) => card.body.querySelector(`[data-testid=caption-${w}]`));
  if (student && teacher && student.ms && teacher.ms) {
    const s = document.createElement('span');
    s.className = 'speedup';
    s.setAttribute('data-testid', 'speedup');
    s.textContent = `${(teacher.ms / student.ms).toFixed(1)}× the teacher's speed`;
    student.append(s);
  }
}

function cardError(card, text) {
  card.classList.add('bad');
  const e = document.createElement('div');
  e.className = 'caption-error';
  e.setAttribute('data-testid', 'caption-error');
  e.textContent = text;
  card.body.append(e);
}

document.addEventListener('dragover', (e) => {
  e.preventDefault();
  $('drop-zone').classList.add('over');
});
document.addEventListener('dragleave', () => $('drop-zone').classList.remove('over'));
// The images a distillation will train on: one list, that choosing files, choosing a folder and
// dropping images on the Distill tab all add to, shown, with a button that clears it.
let distillList = [];
function addDistillImages(files) {
  if (!files.length) return;
  distillList = [...distillList, ...files];
  $('distill-form').elements.data.value = 'images';
  showDistillList();
}
function showDistillList() {
  const names = distillList.map((f) => f.name);
  $('distill-dropped').textContent = names.length
    ? `${names.length} image${names.length === 1 ? '' : 's'} for distillation: ${names.slice(0, 8).join(', ')}${names.length > 8 ? ', …' : ''}`
    : 'No images chosen.';
  $('distill-clear').hidden = !names.length;
}
$('distill-clear').onclick = () => {
  distillList = [];
  showDistillList();
};
// Images dropped while the Distill tab is open join its list; elsewhere they caption.
document.addEventListener('drop', (e) => {
  e.preventDefault();
  $('drop-zone').classList.remove('over');
  const files = e.dataTransfer ? [...e.dataTransfer.files] : [];
  if (!files.length) return;
  if ($('distill').hidden) return captionFiles(files);
  addDistillImages(files);
});
document.addEventListener('paste', (e) => {
  const files = [...(e.clipboardData ? e.clipboardData.files : [])];
  if (files.length) captionFiles(files);
});
$('file-input').onchange = (e) => {
  captionFiles([...e.target.files]);
  e.target.value = '';
};
$('drop-zone').onclick = (e) => {
  if (e.target === $('drop-zone')) $('file-input').click();
};
$('drop-zone').onkeydown = (e) => {
  if (e.target === $('drop-zone') && (e.key === 'Enter' || e.key === ' ')) {
    e.preventDefault();
    $('file-input').click();
  }
};
$('clear-cards').onclick = () => {
  $('cards').innerHTML = '';
};
$('new-scene').onclick = async () => {
  try {
    await gpuReady;
    const index = Math.floor(Math.random() * 1e6);
    const s = await call('scene', index);
    const file = new File([s.png], `scene ${index}.png`, { type: 'image/png' });
    const card = makeCard(file.name, file);
    const refs = document.createElement('div');
    refs.className = 'muted';
    refs.textContent = `references: ${s.references.slice(0, 3).join(' · ')}`;
    card.body.append(refs);
    captionQueue = captionQueue.then(() => captionCard(card, file)).catch(() => {});
  } catch (e) {
    showNotice(`Could not make a scene: ${e.message}`);
  }
};

// ---------- the teacher: bundled, from the Hub, or the user's files ----------

// 'bundled', or what else the teacher is (a Hub repo, "your files"): a student distilled from the
// bundled teacher does not belong to another teacher, so captions then show none.
let teacherKind = 'bundled';
// The loaded teacher's key (its files and the precision of its weights; src/train/batch.rs
// teacher_key): which teacher a run distils from, where a name ('your files') cannot tell.
let teacherKey = null;
// The teacher the Caption tab's student was distilled from (the bundled student's is the bundled
// teacher); a student shows in caption cards only beside its own teacher.
let studentTeacher = 'bundled';
let studentName = 'bundled';
const params = new URLSearchParams(location.search);
const HUB = params.get('hub') || 'https://huggingface.co';
// Downloads over this many bytes ask first (?ask-over=BYTES; 100 MB by default).
const ASK_OVER = Number(params.get('ask-over')) || 100e6;
let confirmed = null; // {key, bytes}: a large download the user agreed to by pressing Load again
const MB = (n) => (n / 1e6).toFixed(1);

function teacherStatus(text, state) {
  const t = $('teacher-status');
  t.textContent = text;
  t.dataset.state = state || '';
  t.classList.toggle('error', state === 'error');
}

function onDownload(m) {
  if (m.loading) return teacherStatus(`${m.repo}: loading onto the GPU…`, 'loading');
  teacherStatus(`${m.repo}: file ${m.index} of ${m.files}, ${m.file}: ${MB(m.loaded)} of ${MB(m.total)} MB ` +
    `(${MB(m.done)} of ${MB(m.all)} MB in all)`, 'loading');
}

function teacherReady(what, s) {
  teacherKind = what;
  teacherKey = s.key;
  const note = s.notCached && s.notCached.length ? ` Not cached: ${s.notCached.join(', ')}.` : '';
  const weights = `${MB(s.weight_bytes)} MB of weights on the GPU${s.half_weights ? ', half precision' : ''}`;
  teacherStatus(`Teacher ready: ${what}, ${fmtParams(s.parameters)} parameters (${weights}), ${s.image_size}×${s.image_size} images, ` +
    `${s.vocab_size} tokens.${note}`, 'ready');
  $('models-status').textContent = what === 'bundled' ? $('models-status').textContent
    : `The teacher is ${what}; no student has been distilled for it yet, so captions come from the teacher alone.`;
}

async function loadTeacher(op, what, ...args) {
  $('teacher-load').disabled = true;
  $('teacher-cancel').hidden = op !== 'loadHub';
  try {
    await gpuReady;
    // Last of every load's arguments: the linear maps' weights in f16, as the box says.
    const s = await call(op, 'teacher', ...args, $('teacher-half').checked);
    if (s.confirm) {
      confirmed = { key: args.slice(0, 3).join(' '), bytes: s.confirm };
      return teacherStatus(`${what} is ${MB(s.confirm)} MB to download (${s.files.join(', ')}); it is kept in this ` +
        'browser afterwards. Press Load again to download it.', 'confirm');
    }
    confirmed = null;
    teacherReady(what, s);
  } catch (e) {
    teacherStatus(`Could not load ${what}: ${e.message}`, 'error');
  } finally {
    $('teacher-load').disabled = false;
    $('teacher-cancel').hidden = true;
  }
}

$('teacher-load').onclick = () => {
  const text = $('teacher-repo').value.trim();
  if (!/^[\w.-]+\/[\w.-]+(@\S+)?$/.test(text)) {
    return teacherStatus('Give a Hub repository as owner/name, optionally @revision (e.g. nlpconnect/vit-gpt2-image-captioning).', 'error');
  }
  const [repo, revision = 'main'] = text.split('@');
  const key = [HUB, repo, revision].join(' ');
  loadTeacher('loadHub', text.includes('@') ? text : repo, HUB, repo, revision, ASK_OVER,
    confirmed && confirmed.key === key ? confirmed.bytes : undefined);
};
$('teacher-cancel').onclick = () => call('cancelDownload');
$('teacher-bundled').onclick = () => loadTeacher('loadBundled', 'bundled', 'teacher');
$('teacher-files').onchange = async (e) => {
  const files = [...e.target.files];
  e.target.value = '';
  loadTeacher('loadFiles', 'your files', await Promise.all(files.map(async (f) => [f.name, await f.arrayBuffer()])));
};

// ---------- distill ----------

let distillState = 'idle'; // idle | running | paused | stopped | complete
let runOptions = null;
let brokenStudent = false; // the run stopped on a non-finite loss
// What a resume takes from the form rather than from the saved run: what can change mid-run.
const RESUMABLE = ['lr', 'steps', 'checkpoint_every', 'eval_every'];
const losses = { ce: [], kd: [], attn: [], total: [] };

function setDistillState(s) {
  distillState = s;
  $('distill-state').textContent = s;
  $('distill-start').textContent = s === 'paused' ? 'Resume' : 'Start';
  $('distill-start').disabled = s === 'running';
  $('distill-pause').disabled = s !== 'running';
  $('distill-stop').disabled = s !== 'running' && s !== 'paused';
  // What a run was started with cannot change under it: the form is locked while it runs or is
  // paused (a saved run resumes with the learning rate, steps and intervals set here).
  const locked = s === 'running' || s === 'paused';
  $('distill-form').classList.toggle('locked', locked);
  for (const el of $('distill-form').elements) el.disabled = locked;
  const haveRun = s !== 'idle' || runOptions !== null;
  $('distill-use').disabled = !haveRun || s === 'running' || brokenStudent;
  $('distill-download').disabled = !haveRun || s === 'running';
}

// The sizes that may be left empty: the teacher's default student (StudentShape::default_for).
const AUTO = ['layers', 'width', 'heads'];

// The form's options, or an Error that names each field out of range in the form's own words
// (those fields are marked), before anything starts.
function formOptions() {
  const f = $('distill-form');
  const o = {};
  const problems = [];
  for (const el of f.elements) {
    if (!el.name) continue;
    el.classList.remove('invalid');
    if (el.type === 'checkbox') o[el.name] = el.checked;
    else if (el.type === 'number') {
      const label = el.closest('label').firstChild.textContent.trim();
      if (el.value === '' && AUTO.includes(el.name) && !el.validity.badInput) continue;
      if (el.value === '' || !el.checkValidity()) {
        el.classList.add('invalid');
        problems.push(`${label}: ${el.value === '' && !el.validity.badInput ? 'give a number' : el.validationMessage}`);
        continue;
      }
      o[el.name] = Number(el.value);
    } else o[el.name] = el.value;
  }
  if (problems.length) {
    // The first field to fix takes the focus, beside the message under the buttons.
    f.querySelector('input.invalid').focus();
    throw new Error(`Check these settings: ${problems.join('; ')}`);
  }
  // The validation size and the warmup are the worker's (RunOptions::PAGE, page_warmup).
  // The run belongs to the teacher it distils from: a resume needs the same one.
  o.teacher = teacherKind;
  o.teacher_key = teacherKey;
  return o;
}

function fillForm(o) {
  for (const el of $('distill-form').elements) {
    if (!el.name) continue;
    if (!(el.name in o)) {
      if (AUTO.includes(el.name)) el.value = '';
      continue;
    }
    if (el.type === 'checkbox') el.checked = !!o[el.name];
    else el.value = o[el.name];
  }
}

function showError(text) {
  $('distill-error').textContent = text;
  $('distill-error').hidden = !text;
}

async function runLoop() {
  setDistillState('running');
  try {
    const how = await call('distillRun', runOptions);
    setDistillState(how);
    if (how === 'complete' || how === 'stopped') $('distill-resume').hidden = $('distill-forget').hidden = true;
  } catch (e) {
    showError(e.message);
    // A non-finite loss: the student that produced it is not offered for captions, and the last
    // checkpoint is offered to resume, with a lower learning rate.
    brokenStudent = /the loss is/.test(e.message);
    setDistillState('stopped');
    if (brokenStudent && /Resume from its checkpoint/.test(e.message)) await offerResume(true);
  }
}

// The chosen images as [name, bytes] when the data is "my images" (null for scenes); false, after
// showing `missing`, when there are none.
async function chosenImages(missing) {
  if ($('distill-form').elements.data.value !== 'images') return null;
  const files = distillList;
  if (!files.length) {
    showError(missing);
    return false;
  }
  return Promise.all(files.map(async (f) => [f.name, await f.arrayBuffer()]));
}

// Chosen files and a chosen folder's images (other files in it are left out, by their type or
// extension) join the list, and pick "my images" as the data.
for (const id of ['distill-images', 'distill-folder']) {
  $(id).addEventListener('change', () => {
    const files = [...$(id).files];
    $(id).value = '';
    addDistillImages(id === 'distill-folder'
      ? files.filter((f) => f.type.startsWith('image/') || /\.(png|jpe?g|webp|gif)$/i.test(f.name))
      : files);
  });
}

$('distill-start').onclick = async () => {
  showError('');
  if (teacherKind !== 'bundled' && $('distill-form').elements.data.value !== 'images' && distillState !== 'paused') {
    return showError(`Generated scenes are captioned in the bundled teacher's words; ${teacherKind} distils on your photos: choose "my images" and add some.`);
  }
  if (distillState === 'paused') return runLoop();
  let options;
  try {
    options = formOptions();
  } catch (e) {
    return showError(e.message);
  }
  startRun(options, 'Choose some images first (or pick generated scenes).');
};

// Starts a run with `options`, or with null the saved one, and runs it.
// Starts a run with `options`, or with null the saved one (with `changes` to its options), and
// runs it.
async function startRun(options, noImages, changes) {
  try {
    await gpuReady;
    const images = await chosenImages(noImages);
    if (images === false) return;
    exampleImage = images ? images[0] : null;
    const started = await call('distillStart', options, images, options === null, changes);
    beginRun(started);
    runLoop();
  } catch (e) {
    showError(e.message);
  }
}

function beginRun(started) {
  runOptions = started.options;
  brokenStudent = false;
  for (const k of Object.keys(losses)) losses[k].length = 0;
  $('eval-table').tBodies[0].innerHTML = '';
  // A resumed run shows the history it saved: its loss curves and validation rows so far.
  for (const h of (started.history && started.history.steps) || []) {
    for (const k of Object.keys(losses)) losses[k].push([h.step, h.terms[k]]);
  }
  if (losses.total.length) {
    $('loss-plot').dataset.total = JSON.stringify(losses.total.map((p) => p[1]));
    linePlot($('loss-plot'), losses);
  }
  for (const e of (started.history && started.history.evals) || []) addEvalRow(e);
  $('eval-caption').textContent = started.targets
    ? 'Validation: agreement with the teacher on held-out images'
    : 'Validation (generated scenes)';
  $('alignment').innerHTML = '';
  $('distill-steps').textContent = runOptions.steps;
  $('distill-step').textContent = started.step;
  $('resume-offer').hidden = true;
  $('distill-resume').hidden = $('distill-forget').hidden = true;
  const s = started.student;
  let text = `Student: ${fmtParams(s.parameters)} parameters (${s.encoder.join('/')} encoder, ${s.decoder.join('/')} decoder: layers/width/heads).`;
  if (started.targets) {
    text += ` Targets: the teacher's captions of ${started.targets.images.length} images`;
    if (started.targets.reused) text += ` (${started.targets.reused} kept from an earlier run)`;
    if (started.targets.skipped.length) text += `; skipped: ${started.targets.skipped.join('; ')}`;
    text += '.';
  }
  $('targets').textContent = text;
}

$('distill-pause').onclick = () => call('distillPause');
$('distill-stop').onclick = () => {
  if (distillState === 'paused') {
    setDistillState('stopped');
    $('distill-resume').hidden = $('distill-forget').hidden = true;
  } else call('distillStop');
};

function addEvalRow(m) {
  const row = $('eval-table').tBodies[0].insertRow();
  // Truth is a scene score; held-out photos are scored against the teacher's captions only.
  const truth = m.truth === undefined ? '—' : m.truth.toFixed(3);
  for (const v of [m.step, m.bleu4.toFixed(3), m.cider_d.toFixed(3), truth]) row.insertCell().textContent = v;
}

function onDistillEvent(m) {
  if (m.event === 'step') {
    $('distill-step').textContent = m.step;
    $('distill-steps').textContent = m.steps;
    $('distill-loss').textContent = m.terms.total.toFixed(4);
    $('distill-lr').textContent = m.lr.toExponential(2);
    for (const k of Object.keys(losses)) losses[k].push([m.step, m.terms[k]]);
    $('loss-plot').dataset.total = JSON.stringify(losses.total.map((p) => p[1]));
    linePlot($('loss-plot'), losses);
    $('progress-bar').style.width = `${(100 * m.step) / m.steps}%`;
    if (m.rate) {
      const eta = (m.steps - m.step) / m.rate;
      $('distill-rate').textContent = `${m.rate.toFixed(2)} steps/s, ETA ${Math.floor(eta / 60)}m${String(Math.round(eta % 60)).padStart(2, '0')}s`;
    }
    if (m.alignment.length) drawAlignment(m.alignment);
  } else if (m.event === 'eval') {
    addEvalRow(m);
  } else if (m.event === 'captioning') {
    $('targets').textContent = m.done < m.total
      ? `The teacher is captioning your images: ${m.done} of ${m.total}…`
      : `The teacher captioned ${m.total} images.`;
  } else if (m.event === 'checkpoint') {
    $('distill-state').textContent = `running (checkpoint saved at step ${m.step})`;
    showExample(m.step);
  }
}

// One example captioned by the run's student and the teacher, with their cross-attention per word
// (hover), refreshed at each checkpoint: a validation-domain scene, or the first of the user's
// images when the run trains on them.
const EXAMPLE_SCENE = 7;
let examplePng = null;
let exampleImage = null; // [name, bytes] of the run's first image, when it trains on images
async function showExample(step) {
  try {
    if (!exampleImage && !examplePng) examplePng = (await call('scene', EXAMPLE_SCENE)).png;
    await call('useStudent', 'run');
    const file = exampleImage
      ? new File([exampleImage[1]], `${exampleImage[0]}, step ${step}`)
      : new File([examplePng], `example scene, step ${step}`, { type: 'image/png' });
    const box = $('example');
    const card = makeCard(file.name, file, box);
    await captionCard(card, file, [['run', 'student'], ['teacher', 'teacher']]);
    while (box.children.length > 1) box.lastChild.remove();
  } catch (e) {
    // The example is a view; the run goes on without it.
  }
}

function drawAlignment(pairs) {
  const box = $('alignment');
  while (box.children.length > pairs.length) box.lastChild.remove();
  pairs.forEach((p, i) => {
    let c = box.children[i];
    if (!c) {
      c = document.createElement('canvas');
      box.append(c);
    }
    heatmap(c, p.weights, `${p.kind} s${p.student_layer}←t${p.teacher_layer}`);
  });
}

// Offers the saved run, if unfinished, for resuming; `keepForm` leaves the form as it is (after a
// non-finite loss, where the user is to lower the learning rate), else it shows the run's options.
async function offerResume(keepForm = false) {
  const s = await call('savedRun');
  if (!s || s.step >= s.options.steps) return;
  $('resume-offer').textContent = `A run saved at step ${s.step} of ${s.options.steps} (${s.options.method}) can be resumed` +
    ` (with the learning rate, steps and intervals set here).`;
  $('resume-offer').hidden = false;
  $('distill-resume').hidden = false;
  $('distill-forget').hidden = false;
  if (!keepForm) fillForm(s.options);
  // The page opens on Caption: say there too that a run waits.
  if (!/Distill tab/.test($('models-status').textContent)) {
    $('models-status').textContent += ` A saved run (step ${s.step} of ${s.options.steps}) can be resumed on the Distill tab.`;
  }
}

$('distill-forget').onclick = async () => {
  await call('forgetSavedRun');
  for (const id of ['resume-offer', 'distill-resume', 'distill-forget']) $(id).hidden = true;
};

$('distill-resume').onclick = async () => {
  showError('');
  const saved = await call('savedRun');
  const from = (saved && saved.options.teacher) || 'bundled';
  if (saved && from !== teacherKind) {
    return showError(`The saved run distils from ${from}; load that teacher in the Caption tab first (the teacher now is ${teacherKind}).`);
  }
  // The same name, another teacher: other files, or its weights at another precision.
  if (saved && saved.options.teacher_key && saved.options.teacher_key !== teacherKey) {
    return showError(`The saved run distils from another teacher than the one loaded now (${teacherKind}: other files, or the half-precision box set otherwise); load the run's teacher in the Caption tab first.`);
  }
  let changes;
  try {
    const o = formOptions();
    changes = Object.fromEntries(RESUMABLE.map((k) => [k, o[k]]));
  } catch (e) {
    return showError(e.message);
  }
  // A run on the user's images needs them again: they are not kept in the browser's storage.
  startRun(null, 'This run trained on your images: choose them again, then resume.', changes);
};

$('distill-use').onclick = async () => {
  try {
    const s = await call('useStudent', 'student');
    studentTeacher = (runOptions && runOptions.teacher) || 'bundled';
    studentName = 'distilled here';
    // Said on both tabs: the user is on Distill, the captions are on Caption.
    const text = `The Caption tab now uses your distilled student (${fmtParams(s.parameters)} parameters).`;
    $('models-status').textContent = text;
    $('distill-note').textContent = text;
  } catch (e) {
    showError(e.message);
  }
};

$('distill-download').onclick = async () => {
  try {
    const c = await call('checkpoint');
    const files = [
      ['model.safetensors', c.weights, 'application/octet-stream'],
      ['config.json', c.config, 'application/json'],
      ['preprocessor_config.json', c.preprocessor, 'application/json'],
      ['tokenizer.json', c.tokenizer, 'application/json'],
      ['generation_config.json', c.generation, 'application/json'],
    ];
    for (const [name, data, type] of files) {
      const a = document.createElement('a');
      a.href = URL.createObjectURL(new Blob([data], { type }));
      a.download = name;
      document.body.append(a);
      a.click();
      a.remove();
    }
  } catch (e) {
    showError(e.message);
  }
};

$('load-checkpoint').onchange = async (e) => {
  const byName = Object.fromEntries([...e.target.files].map((f) => [f.name.replace(/ \(\d+\)(?=\.)/, ''), f]));
  e.target.value = '';
  const need = ['model.safetensors', 'config.json', 'preprocessor_config.json', 'tokenizer.json'];
  const missing = need.filter((n) => !byName[n]);
  if (missing.length) return showError(`A checkpoint is four files (and generation_config.json, if it has one); missing: ${missing.join(', ')}.`);
  const given = byName['generation_config.json'] ? [...need, 'generation_config.json'] : need;
  try {
    await gpuReady;
    const s = await call('loadFiles', 'student', await Promise.all(given.map(async (n) => [n, await byName[n].arrayBuffer()])));
    showError('');
    studentName = 'your checkpoint';
    studentTeacher = teacherKind;
    const text = `Loaded your checkpoint as the student (${fmtParams(s.parameters)} parameters); the Caption tab uses it.`;
    $('models-status').textContent = text;
    $('distill-note').textContent = text;
    $('models-status').dataset.loaded = 'true';
  } catch (err) {
    showError(`Could not load that checkpoint: ${err.message}`);
  }
};

// ---------- start ----------

// For tests and the curious: lose the GPU device on purpose, to see the recovery.
window.amadDebug = {
  loseDevice: () => call('loseDevice'),
  panic: () => call('panicForTest'),
  // Makes the running student's next loss NaN.
  poison: () => call('poisonForTest'),
  // The step of the run the worker holds (what Download student would save).
  runStep: async () => (await call('checkpoint')).step,
};

if (!navigator.gpu) {
  $('adapter').textContent = 'This browser has no WebGPU.';
  const m = $('webgpu-missing');
  m.textContent = HOW_TO_GET_WEBGPU;
  m.hidden = false;
} else {
  boot();
}
setDistillState('idle');
