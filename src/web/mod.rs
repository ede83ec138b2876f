//! The browser side. All GPU work runs in a Web Worker (www/worker.js) that calls these exports;
//! the page (www/app.js) only draws, so it stays responsive while a student trains.
//!
//! wasm-bindgen's async exports cannot borrow, so the state (device, loaded models, the
//! distillation run) lives in a thread-local; each export takes what it needs as `Rc`s and lets go
//! of the `RefCell` before it awaits.

use crate::data::scenes::{Scene, Split};
use crate::distill::DistillConfig;
use crate::model::captioner::Captioner;
use crate::model::WeightFiles;
use crate::model::{Config, Model, Optimizer, Precision, StudentShape};
use crate::ops::optim::AdamW;
use crate::train::{batch, learning_rate, RunOptions, Source};
use crate::{Error, Gpu, Result};
use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use wasm_bindgen::prelude::*;

/// A distillation in progress.
struct Run {
    teacher: Rc<Captioner>,
    student: Rc<Captioner>,
    opt: Optimizer,
    opts: RunOptions,
    cfg: DistillConfig,
    /// The options as the page sent them, kept with checkpoints so a resumed run is the same run.
    options_json: String,
    step: u64,
    /// Steps this run has taken since it started or resumed (a run that fails before its first
    /// gives way to the run it replaced).
    steps_taken: u64,
    /// The share of the user's images held out for validation.
    val_fraction: f64,
    /// Generated scenes, or the user's own images with the teacher's captions.
    source: Source,
}

#[derive(Default)]
struct State {
    gpu: Option<Rc<Gpu>>,
    models: HashMap<String, Rc<Captioner>>,
    run: Option<Rc<RefCell<Run>>>,
    /// The run a new one replaced, kept until the new one has taken its first step: a start that
    /// fails (unusable images, a first step that fails) gives it back, so a finished student is
    /// never lost to a bad start.
    previous: Option<Rc<RefCell<Run>>>,
}

/// A new run failed before its first step: the run it replaced is the current one again.
fn restore_previous() {
    STATE.with(|s| {
        let mut s = s.borrow_mut();
        s.run = s.previous.take();
    });
}

thread_local! {
    static STATE: RefCell<State> = RefCell::new(State::default());
}

fn js(e: Error) -> JsError {
    JsError::new(&e.to_string())
}

fn gpu() -> Result<Rc<Gpu>> {
    STATE
        .with(|s| s.borrow().gpu.clone())
        .ok_or_else(|| Error::Gpu("the GPU is not open yet".into()))
}

fn model(name: &str) -> Result<Rc<Captioner>> {
    STATE
        .with(|s| s.borrow().models.get(name).cloned())
        .ok_or_else(|| Error::Invalid(format!("no model named {name:?} is loaded")))
}

fn run() -> Result<Rc<RefCell<Run>>> {
    STATE
        .with(|s| s.borrow().run.clone())
        .ok_or_else(|| Error::Invalid("no distillation run: start one first".into()))
}

/// Opens the GPU and proves it computes (a small matmul read back); returns JSON with the
/// adapter's description and the limits that bound model sizes. A browser without WebGPU, or
/// with no adapter behind it, gets an error that says so.
#[wasm_bindgen]
pub async fn open_gpu() -> std::result::Result<String, JsError> {
    let gpu = Gpu::new().await.map_err(js)?;
    self_test(&gpu).await.map_err(js)?;
    let out = serde_json::json!({
        "adapter": gpu.describe(),
        "max_binding_bytes": gpu.max_binding(),
    });
    STATE.with(|s| s.borrow_mut().gpu = Some(Rc::new(gpu)));
    Ok(out.to_string())
}

/// [[1 2 3] [4 5 6]] · [[7 8] [9 10] [11 12]] on the GPU, read back without blocking.
async fn self_test(gpu: &Gpu) -> Result<()> {
    use crate::Tensor;
    let a = Tensor::from_slice(gpu, &[2, 3], &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0])?;
    let b = Tensor::from_slice(gpu, &[3, 2], &[7.0, 8.0, 9.0, 10.0, 11.0, 12.0])?;
    let mut step = gpu.step();
    let c = crate::ops::matmul::matmul(&mut step, &a, &b, false, false, None)?;
    step.submit()?;
    let got = c.read(gpu).await?;
    if got != [58.0, 64.0, 139.0, 154.0] {
        return Err(Error::Gpu(format!(
            "the GPU self-test computed {got:?} instead of [58, 64, 139, 154]"
        )));
    }
    Ok(())
}

fn summary(c: &Captioner) -> serde_json::Value {
    let (e, d) = (&c.model.cfg.encoder, &c.model.cfg.decoder);
    serde_json::json!({
        "parameters": c.model.layout.param_count(),
        "weight_bytes": c.model.weights.device_bytes(),
        "half_weights": c.model.precision() == Precision::HalfWeights,
        "encoder": [e.num_hidden_layers, e.hidden_size, e.num_attention_heads],
        "decoder": [d.n_layer, d.n_embd, d.n_head],
        "image_size": e.image_size,
        "patch_size": e.patch_size,
        "vocab_size": d.vocab_size,
    })
}

/// Loads a checkpoint from its files, a Map of file name → Uint8Array (a bundled model, a Hub
/// download or the user's own files, in any of the formats `Captioner::from_file_map` reads), as
/// model `name`, with its linear maps' weights in f16 where `half_weights` (`Precision`);
/// `source` names it in errors. Returns a JSON summary of its sizes, with `key`: the checkpoint's
/// key in the caption cache (`batch::teacher_key`), for the captions it makes as a teacher.
#[wasm_bindgen]
pub fn load_checkpoint(
    name: &str,
    source: &str,
    files: js_sys::Map,
    half_weights: bool,
) -> std::result::Result<String, JsError> {
    let gpu = gpu().map_err(js)?;
    let mut map = HashMap::new();
    for entry in files.entries() {
        let pair = js_sys::Array::from(&entry.map_err(|_| JsError::new("unreadable file list"))?);
        let file = pair
            .get(0)
            .as_string()
            .ok_or_else(|| JsError::new("a file without a name"))?;
        map.insert(file, js_sys::Uint8Array::new(&pair.get(1)).to_vec());
    }
    let precision = Precision::forward(half_weights);
    let c = Captioner::from_file_map(&gpu, &map, source, precision).map_err(js)?;
    let key = batch::teacher_key(&map, precision);
    drop(map);
    let mut out = summary(&c);
    out["key"] = key.into();
    let out = out.to_string();
    STATE.with(|s| s.borrow_mut().models.insert(name.to_string(), Rc::new(c)));
    Ok(out)
}

/// Captions an image file's bytes with model `name`. Returns JSON: the caption, its words, per
/// word the cross-attention over the image patches (mean over layers and heads, at the position
/// that produced the word) as a grid × grid map, and a warning where the image is incomplete.
#[wasm_bindgen]
pub async fn caption(name: &str, image: &[u8], file: &str) -> std::result::Result<String, JsError> {
    caption_inner(name, image, file).await.map_err(js)
}

async fn caption_inner(name: &str, image: &[u8], file: &str) -> Result<String> {
    let gpu = gpu()?;
    let c = model(name)?;
    let pixels = crate::data::image::decode(image, file)?;
    let patches = c.patches(&gpu, &pixels)?;
    let ids = c
        .model
        .generate(&gpu, &patches, c.generation)
        .await?
        .remove(0);
    let words = c.tokenizer.pieces(&ids);
    let heat = c.word_attention(&gpu, &patches, &ids).await?;
    Ok(serde_json::json!({
        "caption": c.tokenizer.decode(&ids),
        "words": words,
        "grid": c.model.cfg.encoder.image_size / c.model.cfg.encoder.patch_size,
        "heat": heat,
        "warning": crate::data::image::warning(image, file),
    })
    .to_string())
}

/// A random scene from the models' training domain (test split, scene `index`) as PNG bytes.
#[wasm_bindgen]
pub fn scene_png(index: u32) -> std::result::Result<Vec<u8>, JsError> {
    let s = Scene::generate(Split::Test, index as u64);
    let size = crate::data::scenes::SIZE as u32;
    let img = image::RgbImage::from_raw(size, size, s.render())
        .ok_or_else(|| JsError::new("scene render has the wrong size"))?;
    let mut out = std::io::Cursor::new(vec![]);
    img.write_to(&mut out, image::ImageFormat::Png)
        .map_err(|e| JsError::new(&e.to_string()))?;
    Ok(out.into_inner())
}

/// The reference captions of that scene, as a JSON list.
#[wasm_bindgen]
pub fn scene_references(index: u32) -> String {
    let s = Scene::generate(Split::Test, index as u64);
    serde_json::json!(crate::data::captions::references(&s)).to_string()
}

/// The defaults of a distillation run in the page (JSON), for its form: one home for them.
#[wasm_bindgen]
pub fn distill_defaults() -> String {
    crate::train::page::page_defaults().to_string()
}

/// Starts a distillation run from model "teacher" with the page's options (JSON: layers, width,
/// heads, method, steps, batch, lr, warmup, decay_to, alpha, beta, gamma, temperature, tau, detach, seed,
/// checkpoint_every). With `resume` (a checkpoint from `checkpoint`: the student's files and the
/// optimiser state) it continues that run instead. Returns a JSON summary of the student.
#[wasm_bindgen]
pub fn distill_start(
    options: &str,
    resume_config: Option<String>,
    resume_weights: Option<Vec<u8>>,
    resume_state: Option<Vec<u8>>,
) -> std::result::Result<String, JsError> {
    distill_start_inner(options, resume_config, resume_weights, resume_state).map_err(js)
}

fn distill_start_inner(
    options: &str,
    resume_config: Option<String>,
    resume_weights: Option<Vec<u8>>,
    resume_state: Option<Vec<u8>>,
) -> Result<String> {
    let gpu = gpu()?;
    let teacher = model("teacher")?;
    let crate::train::page::PageOptions {
        opts,
        cfg,
        shape,
        val_fraction,
        seed,
    } = crate::train::page::parse_options(options)?;
    let model = match (&resume_config, &resume_weights) {
        (Some(c), Some(w)) => {
            let files = WeightFiles::Safetensors(w);
            Model::from_files(&gpu, c, &files, "the saved run", Precision::F32)?
        }
        _ => {
            let [layers, width, heads] = shape;
            let shape =
                StudentShape::default_for(&teacher.model.cfg).overridden(layers, width, heads);
            shape.check()?;
            let scfg = Config::student_of(&teacher.model.cfg, &shape);
            crate::train::page::check_student_size(&scfg)?;
            Model::new(&gpu, scfg, seed)?
        }
    };
    let student = Captioner {
        model,
        tokenizer: teacher.tokenizer.clone(),
        preprocess: teacher.preprocess.clone(),
        generation: teacher.generation,
    };
    let mut opt = Optimizer::new(
        &gpu,
        &student.model.layout,
        AdamW {
            lr: opts.lr,
            ..AdamW::default()
        },
        opts.max_norm,
    )?;
    let step = match &resume_state {
        Some(bytes) => {
            crate::train::restore_state(&gpu, &student, &mut opt, None, bytes, "the saved run")?
        }
        None => 0,
    };
    // Would a step fit this device? On generated scenes captions take the whole n_positions; the
    // user's images are checked again at their captions' length once the teacher has them.
    let positions = student.model.cfg.decoder.n_positions;
    crate::distill::memory::check(
        (&teacher.model.cfg, teacher.model.precision()),
        &student.model.cfg,
        &cfg,
        opts.batch,
        positions,
        gpu.max_binding(),
        gpu.available_memory(),
    )?;
    let out = summary(&student).to_string();
    let r = Run {
        teacher,
        student: Rc::new(student),
        opt,
        opts,
        cfg,
        options_json: options.to_string(),
        step,
        steps_taken: 0,
        val_fraction,
        source: Source::Scenes,
    };
    STATE.with(|s| {
        let mut s = s.borrow_mut();
        let replaced = s.run.replace(Rc::new(RefCell::new(r)));
        // A run that had not yet stepped gives way to the one it replaced.
        if replaced
            .as_ref()
            .is_some_and(|p| p.borrow().steps_taken > 0)
        {
            s.previous = replaced;
        }
    });
    Ok(out)
}

/// Uses the user's own images for the current run: the teacher captions each (the targets).
/// `files` is an array of [name, Uint8Array]; `cached` a JSON object of captions this teacher
/// already made, by image key (see `image_key`), which are reused; `progress(done, total)` follows
/// the captioning. Returns JSON: per image its file, key and caption, the skipped files, and how
/// many captions came from `cached`.
#[wasm_bindgen]
pub async fn distill_images(
    files: js_sys::Array,
    cached: &str,
    progress: &js_sys::Function,
) -> std::result::Result<String, JsError> {
    // A run whose images cannot be used (none readable, too few, too large a batch) is no run:
    // nothing may step it on scenes instead, and the run it replaced comes back.
    distill_images_inner(files, cached, progress)
        .await
        .inspect_err(|_| restore_previous())
        .map_err(js)
}

async fn distill_images_inner(
    files: js_sys::Array,
    cached: &str,
    progress: &js_sys::Function,
) -> Result<String> {
    let gpu = gpu()?;
    let teacher = model("teacher")?;
    let mut list = vec![];
    for f in files.iter() {
        let pair = js_sys::Array::from(&f);
        let name = pair.get(0).as_string().unwrap_or_default();
        let bytes = js_sys::Uint8Array::new(&pair.get(1)).to_vec();
        list.push((name, bytes));
    }
    // A cache that does not parse is ignored: the teacher captions again.
    let cached: HashMap<String, String> = serde_json::from_str(cached).unwrap_or_default();
    let (t, skipped) =
        batch::ImageTargets::caption(&gpu, &teacher, &list, &cached, |done, total| {
            // The page's progress line; a failing callback must not stop the captioning.
            let _ = progress.call2(
                &JsValue::NULL,
                &(done as f64).into(),
                &(total as f64).into(),
            );
        })
        .await?;
    let images: Vec<_> = (0..t.names.len())
        .map(
            |i| serde_json::json!({"file": t.names[i], "key": t.keys[i], "caption": t.captions[i]}),
        )
        .collect();
    let reused = t.keys.iter().filter(|k| cached.contains_key(*k)).count();
    let out = serde_json::json!({"images": images, "skipped": skipped, "reused": reused});
    let r = run()?;
    let (train, held_out) = {
        let run = r.borrow();
        crate::distill::memory::check(
            (&run.teacher.model.cfg, run.teacher.model.precision()),
            &run.student.model.cfg,
            &run.cfg,
            run.opts.batch,
            t.len,
            gpu.max_binding(),
            gpu.available_memory(),
        )?;
        t.split(run.val_fraction)?
    };
    r.borrow_mut().source = Source::Images {
        train: Box::new(train),
        held_out: Box::new(held_out),
    };
    Ok(out.to_string())
}

/// One distillation step. Returns JSON: step, steps, lr, the loss terms, and with `weights` the
/// alignment weights (teacher heads × student heads, mean over the batch) of every paired layer.
#[wasm_bindgen]
pub async fn distill_step(weights: bool) -> std::result::Result<String, JsError> {
    let first = run().is_ok_and(|r| r.borrow().steps_taken == 0);
    match distill_step_inner(weights).await {
        Ok(out) => {
            if let Ok(r) = run() {
                r.borrow_mut().steps_taken += 1;
            }
            if first {
                STATE.with(|s| s.borrow_mut().previous = None);
            }
            Ok(out)
        }
        Err(e) => {
            // A new run that cannot take its first step gives back the run it replaced.
            if first {
                restore_previous();
            }
            Err(js(e))
        }
    }
}

async fn distill_step_inner(with_weights: bool) -> Result<String> {
    let gpu = gpu()?;
    let r = run()?;
    // Record and submit under the borrow; read back after letting it go.
    let (out, step, steps, lr) = {
        let mut guard = r.borrow_mut();
        let run = &mut *guard;
        if run.step >= run.opts.steps {
            return Err(Error::Invalid(format!(
                "the run is complete ({} steps)",
                run.opts.steps
            )));
        }
        let step = run.step;
        run.opt.cfg.lr = learning_rate(&run.opts, step);
        let c = &run.student;
        let b = run.source.batch(&gpu, c, step, run.opts.batch)?;
        let mut s = gpu.step();
        let out = crate::distill::distill_step(
            &mut s,
            &run.teacher.model,
            &c.model,
            &mut run.opt,
            &b,
            &run.cfg,
        )?;
        s.submit()?;
        run.step += 1;
        (out, run.step, run.opts.steps, run.opt.cfg.lr)
    };
    let terms = out.terms.read(&gpu).await?;
    if let Some(bad) = terms.iter().find(|v| !v.is_finite()) {
        return Err(Error::Invalid(format!(
            "step {step}: the loss is {bad}; the run stopped."
        )));
    }
    let mut pairs = vec![];
    if with_weights {
        for p in &out.weights {
            pairs.push(p.to_json(&gpu).await?);
        }
    }
    Ok(serde_json::json!({
        "step": step,
        "steps": steps,
        "lr": lr,
        "terms": crate::distill::step::term::NAMES
            .iter()
            .zip(&terms)
            .map(|(name, v)| (name.to_string(), serde_json::json!(v)))
            .collect::<serde_json::Map<_, _>>(),
        "alignment": pairs,
    })
    .to_string())
}

/// The run's student validated (JSON: step, n, bleu4, cider_d, rouge_l, and truth on scenes): on
/// `n` validation scenes, or with the user's images on those held out, against the teacher's
/// captions. Null where there is nothing to validate on.
#[wasm_bindgen]
pub async fn distill_eval(n: u32) -> std::result::Result<String, JsError> {
    let gpu = gpu().map_err(js)?;
    let r = run().map_err(js)?;
    let (student, step) = {
        let r = r.borrow();
        (r.student.clone(), r.step)
    };
    let source = std::mem::replace(&mut r.borrow_mut().source, Source::Scenes);
    let e = source.validate(&gpu, &student, n.max(1) as usize).await;
    r.borrow_mut().source = source;
    Ok(match e.map_err(js)? {
        Some((mut eval, _)) => {
            eval["step"] = step.into();
            eval.to_string()
        }
        None => "null".into(),
    })
}

/// The run's student checkpoint: an object with config, weights (model.safetensors bytes),
/// preprocessor, tokenizer (the four files the CLI and transformers read), plus state (the
/// optimiser's moments), step and options, for resuming.
#[wasm_bindgen]
pub async fn checkpoint() -> std::result::Result<js_sys::Object, JsError> {
    let gpu = gpu().map_err(js)?;
    let r = run().map_err(js)?;
    let (student, step, options) = {
        let r = r.borrow();
        (r.student.clone(), r.step, r.options_json.clone())
    };
    let weights = student
        .model
        .weights
        .to_safetensors(&gpu, &student.model.layout)
        .await
        .map_err(js)?;
    // The moments are cloned handles, taken under a short borrow.
    let (m, v) = {
        let guard = r.borrow();
        let (m, v) = guard.opt.moments();
        (m.clone(), v.clone())
    };
    let state = crate::train::optimizer_state(&gpu, &student, (&m, &v), step, None)
        .await
        .map_err(js)?;
    let o = js_sys::Object::new();
    let set = |k: &str, v: JsValue| js_sys::Reflect::set(&o, &k.into(), &v).map(|_| ());
    let bytes = |b: &[u8]| JsValue::from(js_sys::Uint8Array::from(b));
    (|| -> std::result::Result<(), JsValue> {
        set("config", student.model.cfg.to_json().into())?;
        set("weights", bytes(&weights))?;
        set(
            "preprocessor",
            crate::model::preprocessor::to_json(&student.preprocess).into(),
        )?;
        set("tokenizer", student.tokenizer.to_json().into())?;
        set(
            "generation",
            student.generation.to_json(&student.model.cfg).into(),
        )?;
        set("state", bytes(&state))?;
        set("step", (step as f64).into())?;
        set("options", options.into())
    })()
    .map_err(|_| JsError::new("could not build the checkpoint object"))?;
    Ok(o)
}

/// Makes the run's student available to `caption` as model `name`.
#[wasm_bindgen]
pub fn use_student(name: &str) -> std::result::Result<String, JsError> {
    let r = run().map_err(js)?;
    let student = r.borrow().student.clone();
    let out = summary(&student).to_string();
    STATE.with(|s| s.borrow_mut().models.insert(name.to_string(), student));
    Ok(out)
}

/// Installed when the module starts: a panic's message goes to `self.amadPanic` (and the console)
/// before the module traps, so the worker can say what went wrong instead of WebAssembly's
/// "unreachable", and the page can offer a fresh worker.
#[wasm_bindgen(start)]
pub fn start() {
    std::panic::set_hook(Box::new(|info| {
        let message = info.to_string();
        let global = js_sys::global();
        let _ = js_sys::Reflect::set(&global, &"amadPanic".into(), &message.clone().into());
        if let Ok(console) = js_sys::Reflect::get(&global, &"console".into()) {
            if let Ok(error) = js_sys::Reflect::get(&console, &"error".into()) {
                let _ = js_sys::Function::from(error).call1(&console, &message.into());
            }
        }
    }));
}

/// Panics, as a bug would: the page's tests use it to check that the message reaches the page
/// and that Recover gives a working worker.
#[wasm_bindgen]
pub fn panic_for_test() {
    panic!("a test panic, on purpose");
}

/// Fills the running student's first weight tensor with NaN, as a learning rate far too high does
/// within a few steps: its next loss is not finite. The page's tests use it for the way back from
/// a non-finite loss to the last good checkpoint.
#[wasm_bindgen]
pub fn poison_student_for_test() -> std::result::Result<(), JsError> {
    let gpu = gpu().map_err(js)?;
    let r = run().map_err(js)?;
    let r = r.borrow();
    let w = &r.student.model.weights.tensors[0];
    let nan = crate::Tensor::from_slice(&gpu, w.shape(), &vec![f32::NAN; w.numel()]).map_err(js)?;
    let mut s = gpu.step();
    s.copy_into(&nan, w, 0).map_err(js)?;
    s.submit().map_err(js)
}

/// Destroys the GPU device, as a driver reset or the browser would: what follows reports the
/// device as lost. The page's tests use it to check the recovery path.
#[wasm_bindgen]
pub fn lose_device() -> std::result::Result<(), JsError> {
    gpu().map_err(js)?.device.destroy();
    Ok(())
}
