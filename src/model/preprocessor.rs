//! preprocessor_config.json, as ViTImageProcessor writes and reads it.

use crate::error::{Error, Result};
use crate::ops::image::{Preprocess, Resample};
use serde_json::{json, Value};

/// ViTImageProcessor's defaults for `size` × `size` images.
pub fn default_for(size: usize, patch: usize) -> Preprocess {
    Preprocess {
        size: (size, size),
        resize: true,
        resample: Resample::Bilinear,
        patch,
        rescale: 1.0 / 255.0,
        mean: [0.5; 3],
        std: [0.5; 3],
    }
}

pub fn to_json(p: &Preprocess) -> String {
    let v = json!({
        "image_processor_type": "ViTImageProcessor",
        "do_resize": p.resize,
        "size": {"height": p.size.0, "width": p.size.1},
        "resample": match p.resample {
            Resample::Bilinear => 2,
            Resample::Bicubic => 3,
        },
        "do_rescale": true,
        "rescale_factor": p.rescale,
        "do_normalize": true,
        "image_mean": p.mean,
        "image_std": p.std,
    });
    serde_json::to_string_pretty(&v).expect("a JSON value serialises")
}

/// Reads preprocessor_config.json as ViTImageProcessor does; `patch` comes from the model config.
/// size as an integer (square) or {height, width}; resample 2 (bilinear, the default) or 3
/// (bicubic); do_resize, do_rescale and do_normalize may each be off. What ViTImageProcessor
/// reads differently (shortest_edge sizes, other filters) is refused by name.
pub fn from_json(text: &str, patch: usize) -> Result<Preprocess> {
    let bad = |m: String| Error::Invalid(format!("preprocessor_config.json: {m}"));
    let v: Value = serde_json::from_str(text).map_err(|e| bad(format!("not valid JSON ({e})")))?;
    let flag = |key: &str| -> Result<bool> {
        match v.get(key) {
            None | Some(Value::Null) => Ok(true),
            Some(Value::Bool(b)) => Ok(*b),
            Some(x) => Err(bad(format!("{key} is {x}, not true or false"))),
        }
    };
    let resample = match v.get("resample") {
        None | Some(Value::Null) => Resample::Bilinear,
        Some(r) => match r.as_u64() {
            Some(2) => Resample::Bilinear,
            Some(3) => Resample::Bicubic,
            _ => {
                return Err(bad(format!(
                    "resample {r} is not supported (2, bilinear, and 3, bicubic, are)"
                )))
            }
        },
    };
    let size = v.get("size").ok_or_else(|| bad("no \"size\"".into()))?;
    let size = match size {
        Value::Number(n) => {
            let s = n
                .as_u64()
                .ok_or_else(|| bad(format!("size {n} is not a size")))?
                as usize;
            (s, s)
        }
        _ => {
            let dim = |k: &str| {
                size.get(k)
                    .and_then(Value::as_u64)
                    .map(|x| x as usize)
                    .ok_or_else(|| {
                        bad(format!(
                            "size {size} has no {k}; amad reads sizes as ViTImageProcessor \
                             writes them, an integer or {{height, width}}"
                        ))
                    })
            };
            (dim("height")?, dim("width")?)
        }
    };
    let triple = |k: &str, default: f32| -> Result<[f32; 3]> {
        match v.get(k) {
            None | Some(Value::Null) => Ok([default; 3]),
            Some(Value::Number(n)) => Ok([n.as_f64().unwrap_or(0.0) as f32; 3]),
            Some(Value::Array(a)) => match a
                .iter()
                .map(|x| x.as_f64().map(|x| x as f32))
                .collect::<Option<Vec<f32>>>()
            {
                Some(x) if x.len() == 3 => Ok([x[0], x[1], x[2]]),
                _ => Err(bad(format!("{k} must be three numbers"))),
            },
            Some(_) => Err(bad(format!("{k} must be three numbers"))),
        }
    };
    let rescale = if flag("do_rescale")? {
        v.get("rescale_factor")
            .and_then(Value::as_f64)
            .unwrap_or(1.0 / 255.0) as f32
    } else {
        1.0
    };
    // ViTImageProcessor's defaults (IMAGENET_STANDARD_MEAN and _STD) are 0.5.
    let (mean, std) = if flag("do_normalize")? {
        (triple("image_mean", 0.5)?, triple("image_std", 0.5)?)
    } else {
        ([0.0; 3], [1.0; 3])
    };
    Ok(Preprocess {
        size,
        resize: flag("do_resize")?,
        resample,
        patch,
        rescale,
        mean,
        std,
    })
}
