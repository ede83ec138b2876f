//! Weight files as the Hugging Face Hub holds them: model.safetensors, sharded safetensors
//! (model.safetensors.index.json and its shards) and torch's pytorch_model.bin (a zip archive of
//! a pickled state dict and raw storages). Each is parsed into one map of named tensors, borrowed
//! from the file's bytes where it can be; nothing in a file is ever executed.

pub mod pickle;
pub mod zip;

use crate::error::{Error, Result};
use serde_json::Value;
use std::borrow::Cow;
use std::collections::HashMap;

/// Element types a checkpoint may hold. Weights are read from F32, F16 and BF16; the others
/// appear in old checkpoints' buffers (GPT-2's uint8 causal masks), which amad skips.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dtype {
    F32,
    F16,
    BF16,
    F64,
    I64,
    I32,
    U8,
    Bool,
}

impl Dtype {
    pub fn size(self) -> usize {
        match self {
            Dtype::F64 | Dtype::I64 => 8,
            Dtype::F32 | Dtype::I32 => 4,
            Dtype::F16 | Dtype::BF16 => 2,
            Dtype::U8 | Dtype::Bool => 1,
        }
    }
}

/// One tensor of a checkpoint: contiguous, row-major, little-endian bytes.
#[derive(Clone, Debug)]
pub struct RawTensor<'a> {
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    pub data: Cow<'a, [u8]>,
}

impl RawTensor<'_> {
    /// The values as f32 (F16 and BF16 widen exactly). `name` and `file` go into errors.
    pub fn to_f32(&self, name: &str, file: &str) -> Result<Vec<f32>> {
        let d = &self.data;
        Ok(match self.dtype {
            Dtype::F32 => d
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
            Dtype::F16 => d
                .chunks_exact(2)
                .map(|c| crate::half::f16_to_f32(u16::from_le_bytes([c[0], c[1]])))
                .collect(),
            Dtype::BF16 => d
                .chunks_exact(2)
                .map(|c| f32::from_bits((u16::from_le_bytes([c[0], c[1]]) as u32) << 16))
                .collect(),
            other => {
                return Err(Error::Invalid(format!(
                    "{file}: tensor {name} is {other:?}; amad reads F32, F16 and BF16 weights"
                )))
            }
        })
    }
}

/// A checkpoint's tensors by name.
pub type Tensors<'a> = HashMap<String, RawTensor<'a>>;

/// A checkpoint's weights as the Hub holds them, in one of three formats.
pub enum WeightFiles<'a> {
    /// model.safetensors
    Safetensors(&'a [u8]),
    /// model.safetensors.index.json and its shards: (file name, bytes).
    Sharded {
        index: &'a str,
        shards: &'a [(String, Vec<u8>)],
    },
    /// pytorch_model.bin
    TorchBin(&'a [u8]),
}

impl WeightFiles<'_> {
    /// The file name the format is known by.
    pub fn name(&self) -> &'static str {
        match self {
            WeightFiles::Safetensors(_) => "model.safetensors",
            WeightFiles::Sharded { .. } => "model.safetensors.index.json",
            WeightFiles::TorchBin(_) => "pytorch_model.bin",
        }
    }

    /// The named tensors; `file` names the source in errors.
    pub fn tensors(&self, file: &str) -> Result<Tensors<'_>> {
        match self {
            WeightFiles::Safetensors(b) => safetensors(b, file),
            WeightFiles::Sharded { index, shards } => sharded(index, shards, file),
            WeightFiles::TorchBin(b) => torch_bin(b, file),
        }
    }
}

/// model.safetensors bytes.
pub fn safetensors<'a>(bytes: &'a [u8], file: &str) -> Result<Tensors<'a>> {
    let st = safetensors::SafeTensors::deserialize(bytes).map_err(|e| {
        Error::Invalid(format!(
            "{file}: not a readable safetensors file ({e}); is it truncated?"
        ))
    })?;
    st.tensors()
        .into_iter()
        .map(|(name, view)| {
            use safetensors::Dtype as S;
            let dtype = match view.dtype() {
                S::F32 => Dtype::F32,
                S::F16 => Dtype::F16,
                S::BF16 => Dtype::BF16,
                S::F64 => Dtype::F64,
                S::I64 => Dtype::I64,
                S::I32 => Dtype::I32,
                S::U8 => Dtype::U8,
                S::BOOL => Dtype::Bool,
                other => {
                    return Err(Error::Invalid(format!(
                        "{file}: tensor {name} has dtype {other:?}, which amad does not read"
                    )))
                }
            };
            Ok((
                name,
                RawTensor {
                    dtype,
                    shape: view.shape().to_vec(),
                    data: Cow::Borrowed(view.data()),
                },
            ))
        })
        .collect()
}

/// The shard files a model.safetensors.index.json names, in a stable order.
pub fn shard_names(index_json: &str, file: &str) -> Result<Vec<String>> {
    let map = weight_map(index_json, file)?;
    let mut names: Vec<String> = map.into_values().collect();
    names.sort();
    names.dedup();
    for n in &names {
        if n.contains('/') || n.contains('\\') || n.starts_with('.') {
            return Err(Error::Invalid(format!(
                "{file}: shard name {n:?} is not a plain file name"
            )));
        }
    }
    Ok(names)
}

fn weight_map(index_json: &str, file: &str) -> Result<HashMap<String, String>> {
    let v: Value = serde_json::from_str(index_json)
        .map_err(|e| Error::Invalid(format!("{file}: not valid JSON ({e})")))?;
    let map = v
        .get("weight_map")
        .and_then(Value::as_object)
        .ok_or_else(|| Error::Invalid(format!("{file}: no \"weight_map\" object")))?;
    map.iter()
        .map(|(k, v)| match v.as_str() {
            Some(s) => Ok((k.clone(), s.to_string())),
            None => Err(Error::Invalid(format!(
                "{file}: weight_map[{k:?}] is not a file name"
            ))),
        })
        .collect()
}

/// Sharded safetensors: the index and each shard's (file name, bytes). Every tensor must be in
/// the shard the index names, and only there.
pub fn sharded<'a>(
    index_json: &str,
    shards: &'a [(String, Vec<u8>)],
    file: &str,
) -> Result<Tensors<'a>> {
    let map = weight_map(index_json, file)?;
    let mut out = Tensors::new();
    for (shard, bytes) in shards {
        for (name, t) in safetensors(bytes, shard)? {
            if map.get(&name) != Some(shard) {
                return Err(Error::Invalid(format!(
                    "{shard}: holds {name}, which {file} places in {:?}",
                    map.get(&name)
                )));
            }
            out.insert(name, t);
        }
    }
    if let Some((name, shard)) = map.iter().find(|(n, _)| !out.contains_key(*n)) {
        return Err(Error::Invalid(format!(
            "{file}: {name} should be in {shard}, which does not hold it"
        )));
    }
    Ok(out)
}

/// torch.save's zip archive of a state dict (pytorch_model.bin), read by the restricted
/// unpickler. Tensors that are contiguous views are borrowed; others are gathered.
pub fn torch_bin<'a>(bytes: &'a [u8], file: &str) -> Result<Tensors<'a>> {
    if bytes.starts_with(&[0x80]) {
        return Err(Error::Invalid(format!(
            "{file}: a legacy (pre-1.6) torch pickle without a zip archive; amad reads the zip \
             format torch has written since 2020, and safetensors"
        )));
    }
    let entries = zip::entries(bytes, file)?;
    let pkl = entries
        .keys()
        .filter(|k| k.ends_with("/data.pkl") && k.matches('/').count() == 1)
        .min()
        .ok_or_else(|| Error::Invalid(format!("{file}: the archive holds no data.pkl")))?
        .clone();
    let root = pkl.trim_end_matches("data.pkl");
    if let Some(order) = entries.get(&format!("{root}byteorder")) {
        if order.trim_ascii() != b"little" {
            return Err(Error::Invalid(format!(
                "{file}: big-endian storages are not supported"
            )));
        }
    }
    let mut out = Tensors::new();
    for (name, t) in pickle::state_dict(entries[&pkl], file)? {
        let storage = entries
            .get(&format!("{root}data/{}", t.storage))
            .ok_or_else(|| {
                Error::Invalid(format!(
                    "{file}: tensor {name}'s storage {} is not in the archive",
                    t.storage
                ))
            })?;
        let es = t.dtype.size() as u64;
        let lie = |m: String| Error::Invalid(format!("{file}: tensor {name}: {m}"));
        if (storage.len() as u64) < t.storage_len.saturating_mul(es) {
            return Err(lie(format!(
                "its storage claims {} elements but holds {} bytes",
                t.storage_len,
                storage.len()
            )));
        }
        // The last element the view reaches must lie inside the storage.
        let numel = t
            .shape
            .iter()
            .try_fold(1u64, |a, &d| a.checked_mul(d as u64))
            .ok_or_else(|| lie("its size overflows".into()))?;
        if numel > 0 {
            let reach = t
                .shape
                .iter()
                .zip(&t.stride)
                .try_fold(t.offset, |a, (&d, &s)| {
                    a.checked_add((d as u64 - 1).checked_mul(s)?)
                })
                .ok_or_else(|| lie("its view overflows".into()))?;
            if reach >= t.storage_len {
                return Err(lie(format!(
                    "its view reaches element {reach} of a storage of {}",
                    t.storage_len
                )));
            }
        }
        let contiguous = {
            let mut want = 1u64;
            let mut ok = true;
            for (&d, &s) in t.shape.iter().zip(&t.stride).rev() {
                ok &= d == 1 || s == want;
                want *= d as u64;
            }
            ok
        };
        let es = es as usize;
        let data = if numel == 0 {
            Cow::Borrowed(&storage[..0])
        } else if contiguous {
            let start = t.offset as usize * es;
            Cow::Borrowed(&storage[start..start + numel as usize * es])
        } else {
            let mut v = Vec::with_capacity(numel as usize * es);
            let mut index = vec![0usize; t.shape.len()];
            for _ in 0..numel {
                let at = t.offset as usize
                    + index
                        .iter()
                        .zip(&t.stride)
                        .map(|(&i, &s)| i * s as usize)
                        .sum::<usize>();
                v.extend_from_slice(&storage[at * es..(at + 1) * es]);
                for k in (0..index.len()).rev() {
                    index[k] += 1;
                    if index[k] < t.shape[k] {
                        break;
                    }
                    index[k] = 0;
                }
            }
            Cow::Owned(v)
        };
        out.insert(
            name,
            RawTensor {
                dtype: t.dtype,
                shape: t.shape,
                data,
            },
        );
    }
    Ok(out)
}
