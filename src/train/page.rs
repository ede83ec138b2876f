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
