//! preprocessor_config.json, as ViTImageProcessor writes and reads it.

use crate::error::{Error, Result};
use crate::ops::image::Preprocess;
use serde_json::{json, Value};

/// ViTImageProcessor's defaults for `size` × `size` images.
pub fn default_for(size: usize, patch: usize) -> Preprocess {
    Preprocess {
        size: (size, size),
        patch,
        rescale: 1.0 / 255.0,
        mean: [0.5; 3],
        std: [0.5; 3],
    }
}

pub fn to_json(p: &Preprocess) -> String {
    let v = json!({
        "image_processor_type": "ViTImageProcessor",
        "do_resize": true,
        "size": {"height": p.size.0, "width": p.size.1},
        "resample": 2,
        "do_rescale": true,
        "rescale_factor": p.rescale,
        "do_normalize": true,
        "image_mean": p.mean,
        "image_std": p.std,
    });
    serde_json::to_string_pretty(&v).expect("a JSON value serialises")
}

/// Reads preprocessor_config.json; `patch` comes from the model config. Only the PIL-bilinear
/// resize that ViTImageProcessor uses by default (resample 2) is implemented.
pub fn from_json(text: &str, patch: usize) -> Result<Preprocess> {
    let bad = |m: String| Error::Invalid(format!("preprocessor_config.json: {m}"));
    let v: Value = serde_json::from_str(text).map_err(|e| bad(format!("not valid JSON ({e})")))?;
    for key in ["do_resize", "do_rescale", "do_normalize"] {
        if v.get(key).and_then(Value::as_bool) == Some(false) {
            return Err(bad(format!("{key} = false is not supported")));
        }
    }
    if let Some(r) = v.get("resample").and_then(Value::as_u64) {
        if r != 2 {
            return Err(bad(format!(
                "resample {r} is not supported (only 2, bilinear)"
            )));
        }
    }
    let size = v.get("size").ok_or_else(|| bad("no \"size\"".into()))?;
    let dim = |k: &str| {
        size.get(k)
            .and_then(Value::as_u64)
            .map(|x| x as usize)
            .ok_or_else(|| bad(format!("size.{k} is missing")))
    };
    let triple = |k: &str| -> Result<[f32; 3]> {
        let a = v
            .get(k)
            .and_then(Value::as_array)
            .ok_or_else(|| bad(format!("{k} is missing")))?;
        match a
            .iter()
            .map(|x| x.as_f64().map(|x| x as f32))
            .collect::<Option<Vec<f32>>>()
        {
            Some(x) if x.len() == 3 => Ok([x[0], x[1], x[2]]),
            _ => Err(bad(format!("{k} must be three numbers"))),
        }
    };
    let rescale = v
        .get("rescale_factor")
        .and_then(Value::as_f64)
        .unwrap_or(1.0 / 255.0) as f32;
    Ok(Preprocess {
        size: (dim("height")?, dim("width")?),
        patch,
        rescale,
        mean: triple("image_mean")?,
        std: triple("image_std")?,
    })
}
