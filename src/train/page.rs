//! A distillation run as the page describes it: its options as JSON, parsed with the page's
//! defaults. Here rather than in src/web so that it compiles natively too, where the fuzzer
//! reads the options of saved runs (the page keeps them in IndexedDB).

use super::{batch, RunOptions};
use crate::distill::DistillConfig;
use crate::error::{Error, Result};

/// A run as the page describes it.
pub struct PageOptions {
    pub opts: RunOptions,
    pub cfg: DistillConfig,
    /// The student's (layers, width, heads) where the page gives them, for both sides; the rest
    /// take the teacher's default student (`StudentShape::default_for`).
    pub shape: [Option<(usize, usize)>; 3],
    /// The share of the user's images held out for validation.
    pub val_fraction: f64,
    pub seed: u64,
}

/// The page's defaults, as the form shows them (`distill_defaults`) and as `parse_options` takes
/// a missing field: `RunOptions::PAGE`, `DistillConfig::default()` and the defaults of the rest.
/// The student's sizes are absent: they come from the teacher (`StudentShape::default_for`).
pub fn page_defaults() -> serde_json::Value {
    let (o, d) = (RunOptions::PAGE, DistillConfig::default());
    // An f32 as the decimal it was written as (0.002, not 0.0020000000949949026).
    let dec = |x: f32| x.to_string().parse::<f64>().unwrap_or(x as f64);
    serde_json::json!({
        "steps": o.steps, "batch": o.batch, "lr": dec(o.lr), "decay_to": dec(o.decay_to),
        "checkpoint_every": o.checkpoint_every, "eval_every": o.eval_every, "eval_n": o.eval_n,
        "alpha": dec(d.alpha), "beta": dec(d.beta), "gamma": dec(d.gamma),
        "temperature": dec(d.temperature), "tau": dec(crate::distill::DEFAULT_TAU),
        "detach": false, "method": crate::distill::DEFAULT_METHOD,
        "seed": crate::distill::DEFAULT_SEED, "val_fraction": batch::VAL_FRACTION,
    })
}

/// The options of a run, from the page's JSON; missing fields take `page_defaults`, and the
/// warmup `RunOptions::page_warmup` of the steps.
pub fn parse_options(json: &str) -> Result<PageOptions> {
    let v: serde_json::Value = serde_json::from_str(json)
        .map_err(|e| Error::Invalid(format!("distillation options: {e}")))?;
    let defaults = page_defaults();
    let num = |k: &str| {
        v.get(k)
            .and_then(|x| x.as_f64())
            .or_else(|| defaults[k].as_f64())
            .unwrap_or(0.0)
    };
    let int = |k: &str| -> Result<u64> {
        let x = num(k);
        if x < 0.0 || x.fract() != 0.0 {
            return Err(Error::Invalid(format!(
                "{k} must be a whole number, got {x}"
            )));
        }
        Ok(x as u64)
    };
    let steps = int("steps")?;
    let opts = RunOptions {
        steps,
        until: None,
        batch: int("batch")? as usize,
        lr: num("lr") as f32,
        warmup: match v.get("warmup") {
            Some(_) => int("warmup")?,
            None => RunOptions::page_warmup(steps),
        },
        decay_to: num("decay_to") as f32,
        checkpoint_every: int("checkpoint_every")?,
        max_norm: RunOptions::PAGE.max_norm,
        eval_every: int("eval_every")?,
        eval_n: int("eval_n")? as usize,
    };
    opts.check()?;
    let cfg = DistillConfig {
        alpha: num("alpha") as f32,
        beta: num("beta") as f32,
        gamma: num("gamma") as f32,
        temperature: num("temperature") as f32,
        ..DistillConfig::default()
    }
    .with_method(
        v.get("method")
            .and_then(|m| m.as_str())
            .unwrap_or(crate::distill::DEFAULT_METHOD),
        num("tau") as f32,
        v.get("detach").and_then(|x| x.as_bool()).unwrap_or(false),
    )?;
    let side = |k: &str| -> Result<Option<(usize, usize)>> {
        Ok(match v.get(k) {
            None | Some(serde_json::Value::Null) => None,
            Some(_) => Some((int(k)? as usize, int(k)? as usize)),
        })
    };
    let shape = [side("layers")?, side("width")?, side("heads")?];
    Ok(PageOptions {
        opts,
        cfg,
        shape,
        val_fraction: num("val_fraction"),
        seed: int("seed")?,
    })
}

/// The WebAssembly memory the page gives a run's checkpoint. A wasm32 page has at most 4 GiB of
/// memory in all; the remaining GiB holds the models' host-side files, the user's images and the
/// runtime.
pub const CHECKPOINT_BUDGET: u64 = 3 << 30;

/// Bytes of WebAssembly memory per student parameter while the page builds a checkpoint
/// (`checkpoint` in src/web): the weights' safetensors (4) stay while AdamW's two moments are
/// read back (8), copied per tensor (8) and serialised (8).
const CHECKPOINT_BYTES_PER_PARAM: u64 = 28;

/// Refuses a student the page could not checkpoint, before anything is allocated for it: every
/// checkpoint of a run is built in the page's memory, and a run that cannot save cannot be
/// resumed or downloaded.
pub fn check_student_size(student: &crate::model::Config) -> Result<()> {
    let params = crate::model::weights::Layout::new(student).param_count() as u64;
    let most = CHECKPOINT_BUDGET / CHECKPOINT_BYTES_PER_PARAM;
    if params <= most {
        return Ok(());
    }
    Err(Error::Invalid(format!(
        "a student of {:.1} M parameters is too large for the page: saving its checkpoint takes \
         about {:.1} GB of the page's memory, and a page has at most 4 GB. Up to {:.0} M \
         parameters fit: choose a smaller width or fewer layers, or distil it with the command \
         line (amad distill)",
        params as f64 / 1e6,
        (params * CHECKPOINT_BYTES_PER_PARAM) as f64 / 1e9,
        most as f64 / 1e6
    )))
}
