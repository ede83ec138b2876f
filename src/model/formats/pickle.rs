//! A restricted unpickler for torch state dicts (pytorch_model.bin). Pickles are programs: a
//! general unpickler imports and calls whatever the file names. This one runs no code. It knows
//! the opcodes of protocols 2 to 5 that hold data, and exactly the globals a state dict names:
//! `collections.OrderedDict`, `torch._utils._rebuild_tensor_v2`, `torch._utils._rebuild_parameter`
//! and the typed `torch.*Storage` classes. It builds them as plain values; any other global is
//! refused, never imported or executed.

use super::Dtype;
use crate::error::{Error, Result};
use std::collections::HashMap;

/// A tensor as a state dict describes it: a view into a storage (an entry of the archive).
#[derive(Clone, Debug, PartialEq)]
pub struct TensorRef {
    pub storage: String,
    pub dtype: Dtype,
    /// Elements the storage holds, as the pickle claims.
    pub storage_len: u64,
    pub offset: u64,
    pub shape: Vec<usize>,
    pub stride: Vec<u64>,
}

#[derive(Clone, Debug)]
enum Value {
    /// None, booleans, floats and bytes: data a state dict holds only where amad needs none
    /// (requires_grad flags, GPT-2's masked_bias is a tensor).
    Opaque,
    Int(i64),
    Str(String),
    Tuple(Vec<Value>),
    List(Vec<Value>),
    Dict(Vec<(Value, Value)>),
    /// One of the allowed globals.
    Global(Global),
    /// A storage, from a persistent id ('storage', type, key, location, numel).
    Storage {
        dtype: Dtype,
        key: String,
        len: u64,
    },
    Tensor(TensorRef),
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Global {
    OrderedDict,
    RebuildTensor,
    RebuildParameter,
    Storage(Dtype),
}

fn global(module: &str, name: &str) -> Option<Global> {
    let storage = |d| Some(Global::Storage(d));
    match (module, name) {
        ("collections", "OrderedDict") => Some(Global::OrderedDict),
        ("torch._utils", "_rebuild_tensor_v2") => Some(Global::RebuildTensor),
        ("torch._utils", "_rebuild_parameter") => Some(Global::RebuildParameter),
        ("torch", "FloatStorage") => storage(Dtype::F32),
        ("torch", "HalfStorage") => storage(Dtype::F16),
        ("torch", "BFloat16Storage") => storage(Dtype::BF16),
        ("torch", "DoubleStorage") => storage(Dtype::F64),
        ("torch", "LongStorage") => storage(Dtype::I64),
        ("torch", "IntStorage") => storage(Dtype::I32),
        ("torch", "ByteStorage") => storage(Dtype::U8),
        ("torch", "BoolStorage") => storage(Dtype::Bool),
        _ => None,
    }
}

struct Machine<'a> {
    code: &'a [u8],
    at: usize,
    stack: Vec<Value>,
    marks: Vec<usize>,
    memo: HashMap<u64, Value>,
    /// Values that copies (DUP, the memo) may still create: each copies its whole value, so a
    /// few hundred bytes of DUPs could otherwise build gigabytes (the fuzzer's first find). A
    /// state dict copies a few values per tensor.
    budget: usize,
    file: &'a str,
}

/// Values copies may create in one pickle: thousands of times what GPT-2's state dict needs.
const COPY_BUDGET: usize = 1 << 22;

impl Value {
    /// How many values `self` holds, itself included, counting no further than `cap`.
    fn count(&self, cap: usize) -> usize {
        let children: Box<dyn Iterator<Item = &Value>> = match self {
            Value::Tuple(v) | Value::List(v) => Box::new(v.iter()),
            Value::Dict(pairs) => Box::new(pairs.iter().flat_map(|(k, v)| [k, v])),
            _ => Box::new(std::iter::empty()),
        };
        let mut n = 1;
        for c in children {
            if n > cap {
                break;
            }
            n += c.count(cap);
        }
        n
    }
}

impl<'a> Machine<'a> {
    /// Spends `n` values of the copy budget, or refuses the pickle.
    fn spend(&mut self, n: usize) -> Result<()> {
        if n > self.budget {
            return Err(self.err(format!(
                "its copies would build more than {COPY_BUDGET} values, far past any state dict"
            )));
        }
        self.budget -= n;
        Ok(())
    }

    /// A copy of the top of the stack, within the copy budget (counted before copying).
    fn copy_top(&mut self) -> Result<Value> {
        let cap = self.budget;
        let n = self.top()?.count(cap);
        self.spend(n)?;
        Ok(self.top()?.clone())
    }

    fn err(&self, m: impl std::fmt::Display) -> Error {
        Error::Invalid(format!(
            "{}: unreadable pickle at byte {}: {m}",
            self.file, self.at
        ))
    }
    /// One of the allowed globals; any other is refused by name.
    fn global(&self, module: &str, name: &str) -> Result<Value> {
        global(module, name).map(Value::Global).ok_or_else(|| {
            Error::Invalid(format!(
                "{}: refused: the pickle names the global {module}.{name}, which is not one a \
                 torch state dict uses. amad never imports or runs code from a pickle; convert \
                 the checkpoint to safetensors with tools you trust",
                self.file
            ))
        })
    }
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        let end = self
            .at
            .checked_add(n)
            .filter(|&e| e <= self.code.len())
            .ok_or_else(|| self.err("it ends early; is the file truncated?"))?;
        let s = &self.code[self.at..end];
        self.at = end;
        Ok(s)
    }
    fn uint(&mut self, n: usize) -> Result<u64> {
        let b = self.take(n)?;
        Ok(b.iter().rev().fold(0u64, |acc, &x| (acc << 8) | x as u64))
    }
    fn line(&mut self) -> Result<String> {
        let rest = &self.code[self.at..];
        let n = rest
            .iter()
            .position(|&b| b == b'\n')
            .ok_or_else(|| self.err("a GLOBAL has no end of line"))?;
        let s = String::from_utf8_lossy(&rest[..n]).into_owned();
        self.at += n + 1;
        Ok(s)
    }
    fn text(&mut self, n: usize) -> Result<Value> {
        let b = self.take(n)?;
        Ok(Value::Str(
            std::str::from_utf8(b)
                .map_err(|_| self.err("a string is not UTF-8"))?
                .to_string(),
        ))
    }
    fn pop(&mut self) -> Result<Value> {
        if self.marks.last().is_some_and(|&m| m >= self.stack.len()) {
            return Err(self.err("pop past a mark"));
        }
        self.stack
            .pop()
            .ok_or_else(|| self.err("the stack is empty"))
    }
    fn top(&mut self) -> Result<&mut Value> {
        let at = self.at;
        let file = self.file;
        self.stack.last_mut().ok_or_else(|| {
            Error::Invalid(format!(
                "{file}: unreadable pickle at byte {at}: the stack is empty"
            ))
        })
    }
    /// The items above the last mark, removing the mark.
    fn pop_mark(&mut self) -> Result<Vec<Value>> {
        let m = self
            .marks
            .pop()
            .ok_or_else(|| self.err("no mark to pop to"))?;
        Ok(self.stack.split_off(m.min(self.stack.len())))
    }
    fn count(&self, n: u64) -> Result<usize> {
        // No length in a pickle may exceed what the pickle's own bytes could hold.
        usize::try_from(n)
            .ok()
            .filter(|&n| n <= self.code.len())
            .ok_or_else(|| self.err(format!("a length of {n} is longer than the file")))
    }

    fn run(&mut self) -> Result<Value> {
        loop {
            let op = self.take(1)?[0];
            match op {
                0x80 => {
                    let v = self.uint(1)?;
                    if v > 5 {
                        return Err(self.err(format!("pickle protocol {v} is unknown")));
                    }
                }
                0x95 => {
                    self.uint(8)?; // FRAME: a length hint only
                }
                b'.' => return self.pop(),
                b'(' => self.marks.push(self.stack.len()),
                b'0' => {
                    self.pop()?;
                }
                b'1' => {
                    self.pop_mark()?;
                }
                b'2' => {
                    let v = self.copy_top()?;
                    self.stack.push(v);
                }
                b')' => self.stack.push(Value::Tuple(vec![])),
                b't' => {
                    let items = self.pop_mark()?;
                    self.stack.push(Value::Tuple(items));
                }
                0x85..=0x87 => {
                    let n = (op - 0x84) as usize;
                    if self.stack.len() < n + self.marks.last().copied().unwrap_or(0) {
                        return Err(self.err("a tuple takes more items than the stack holds"));
                    }
                    let items = self.stack.split_off(self.stack.len() - n);
                    self.stack.push(Value::Tuple(items));
                }
                b']' => self.stack.push(Value::List(vec![])),
                b'l' => {
                    let items = self.pop_mark()?;
                    self.stack.push(Value::List(items));
                }
                b'a' => {
                    let v = self.pop()?;
                    self.append(vec![v])?;
                }
                b'e' => {
                    let items = self.pop_mark()?;
                    self.append(items)?;
                }
                b'}' => self.stack.push(Value::Dict(vec![])),
                b'd' => {
                    let items = self.pop_mark()?;
                    let d = pairs(items).ok_or_else(|| self.err("a dict has an odd item"))?;
                    self.stack.push(Value::Dict(d));
                }
                b's' => {
                    let v = self.pop()?;
                    let k = self.pop()?;
                    self.set_items(vec![(k, v)])?;
                }
                b'u' => {
                    let items = self.pop_mark()?;
                    let d = pairs(items).ok_or_else(|| self.err("SETITEMS has an odd item"))?;
                    self.set_items(d)?;
                }
                b'N' => self.stack.push(Value::Opaque),
                0x88 | 0x89 => self.stack.push(Value::Opaque),
                b'J' => {
                    let v = self.uint(4)? as u32 as i32;
                    self.stack.push(Value::Int(v as i64));
                }
                b'K' => {
                    let v = self.uint(1)?;
                    self.stack.push(Value::Int(v as i64));
                }
                b'M' => {
                    let v = self.uint(2)?;
                    self.stack.push(Value::Int(v as i64));
                }
                0x8a => {
                    let n = self.uint(1)? as usize;
                    let b = self.take(n)?;
                    if n > 8 {
                        return Err(self.err("an integer wider than 64 bits"));
                    }
                    let mut v: i64 = 0;
                    for (i, &x) in b.iter().enumerate() {
                        v |= (x as i64) << (8 * i);
                    }
                    if n > 0 && n < 8 && b[n - 1] & 0x80 != 0 {
                        v -= 1i64 << (8 * n); // two's complement of n bytes
                    }
                    self.stack.push(Value::Int(v));
                }
                b'G' => {
                    self.take(8)?;
                    self.stack.push(Value::Opaque);
                }
                b'X' => {
                    let n = self.uint(4)?;
                    let n = self.count(n)?;
                    let v = self.text(n)?;
                    self.stack.push(v);
                }
                0x8c => {
                    let n = self.uint(1)? as usize;
                    let v = self.text(n)?;
                    self.stack.push(v);
                }
                0x8d => {
                    let n = self.uint(8)?;
                    let n = self.count(n)?;
                    let v = self.text(n)?;
                    self.stack.push(v);
                }
                b'B' | b'C' | 0x8e | b'T' | b'U' => {
                    let n = match op {
                        b'C' | b'U' => self.uint(1)?,
                        0x8e => self.uint(8)?,
                        _ => self.uint(4)?,
                    };
                    let n = self.count(n)?;
                    self.take(n)?;
                    self.stack.push(Value::Opaque);
                }
                b'c' => {
                    let module = self.line()?;
                    let name = self.line()?;
                    let g = self.global(&module, &name)?;
                    self.stack.push(g);
                }
                0x93 => {
                    let name = self.pop()?;
                    let module = self.pop()?;
                    match (module, name) {
                        (Value::Str(m), Value::Str(n)) => {
                            let g = self.global(&m, &n)?;
                            self.stack.push(g);
                        }
                        _ => return Err(self.err("STACK_GLOBAL takes two strings")),
                    }
                }
                b'R' => {
                    let args = self.pop()?;
                    let f = self.pop()?;
                    let v = self.reduce(f, args)?;
                    self.stack.push(v);
                }
                b'b' => {
                    // BUILD sets attributes; an OrderedDict's only one is state_dict's _metadata.
                    self.pop()?;
                    if !matches!(self.top()?, Value::Dict(_)) {
                        return Err(self.err("BUILD on something other than a dict"));
                    }
                }
                b'Q' => {
                    let pid = self.pop()?;
                    let v = self.persistent(pid)?;
                    self.stack.push(v);
                }
                b'q' | b'r' => {
                    let key = if op == b'q' {
                        self.uint(1)?
                    } else {
                        self.uint(4)?
                    };
                    let v = self.copy_top()?;
                    self.memo.insert(key, v);
                }
                0x94 => {
                    let v = self.copy_top()?;
                    self.memo.insert(self.memo.len() as u64, v);
                }
                b'h' | b'j' => {
                    let key = if op == b'h' {
                        self.uint(1)?
                    } else {
                        self.uint(4)?
                    };
                    let n = self
                        .memo
                        .get(&key)
                        .ok_or_else(|| self.err(format!("memo {key} was never stored")))?
                        .count(self.budget);
                    self.spend(n)?;
                    let v = self.memo[&key].clone();
                    self.stack.push(v);
                }
                other => {
                    return Err(self.err(format!(
                        "opcode 0x{other:02x} is not one a torch state dict uses"
                    )))
                }
            }
        }
    }

    fn append(&mut self, items: Vec<Value>) -> Result<()> {
        match self.top()? {
            Value::List(l) => {
                l.extend(items);
                Ok(())
            }
            _ => Err(self.err("APPEND to something other than a list")),
        }
    }

    fn set_items(&mut self, items: Vec<(Value, Value)>) -> Result<()> {
        match self.top()? {
            Value::Dict(d) => {
                d.extend(items);
                Ok(())
            }
            _ => Err(self.err("SETITEM on something other than a dict")),
        }
    }

    fn persistent(&self, pid: Value) -> Result<Value> {
        match pid {
            Value::Tuple(t) => match t.as_slice() {
                [Value::Str(kind), Value::Global(Global::Storage(dtype)), Value::Str(key), _, Value::Int(len)]
                    if kind == "storage" && *len >= 0 =>
                {
                    Ok(Value::Storage {
                        dtype: *dtype,
                        key: key.clone(),
                        len: *len as u64,
                    })
                }
                _ => Err(self.err("a persistent id that is not a torch storage")),
            },
            _ => Err(self.err("a persistent id that is not a tuple")),
        }
    }

    fn reduce(&self, f: Value, args: Value) -> Result<Value> {
        let Value::Tuple(args) = args else {
            return Err(self.err("REDUCE without an argument tuple"));
        };
        let ints = |v: &Value| -> Option<Vec<i64>> {
            match v {
                Value::Tuple(t) => t
                    .iter()
                    .map(|x| match x {
                        Value::Int(i) => Some(*i),
                        _ => None,
                    })
                    .collect(),
                _ => None,
            }
        };
        match f {
            Value::Global(Global::OrderedDict) => Ok(Value::Dict(vec![])),
            Value::Global(Global::RebuildParameter) => match args.into_iter().next() {
                Some(t @ Value::Tensor(_)) => Ok(t),
                _ => Err(self.err("_rebuild_parameter of something other than a tensor")),
            },
            Value::Global(Global::RebuildTensor) => {
                let (Some(Value::Storage { dtype, key, len }), Some(Value::Int(offset))) =
                    (args.first(), args.get(1))
                else {
                    return Err(self.err("_rebuild_tensor_v2 without a storage and an offset"));
                };
                let (Some(shape), Some(stride)) =
                    (args.get(2).and_then(ints), args.get(3).and_then(ints))
                else {
                    return Err(self.err("_rebuild_tensor_v2 without integer size and stride"));
                };
                if shape.len() != stride.len()
                    || *offset < 0
                    || shape.iter().chain(&stride).any(|&x| x < 0)
                {
                    return Err(self.err("a tensor with a negative or mismatched size or stride"));
                }
                Ok(Value::Tensor(TensorRef {
                    storage: key.clone(),
                    dtype: *dtype,
                    storage_len: *len,
                    offset: *offset as u64,
                    shape: shape.iter().map(|&x| x as usize).collect(),
                    stride: stride.iter().map(|&x| x as u64).collect(),
                }))
            }
            _ => Err(self.err("REDUCE of something that is not an allowed callable")),
        }
    }
}

fn pairs(items: Vec<Value>) -> Option<Vec<(Value, Value)>> {
    if !items.len().is_multiple_of(2) {
        return None;
    }
    let mut it = items.into_iter();
    let mut out = vec![];
    while let (Some(k), Some(v)) = (it.next(), it.next()) {
        out.push((k, v));
    }
    Some(out)
}

/// The tensors of a pickled state dict: name → view into a storage. Entries that are not tensors
/// (GPT-2's old `masked_bias` scalars are tensors too; anything else) are an error.
pub fn state_dict(code: &[u8], file: &str) -> Result<Vec<(String, TensorRef)>> {
    let mut m = Machine {
        code,
        at: 0,
        stack: vec![],
        marks: vec![],
        memo: HashMap::new(),
        budget: COPY_BUDGET,
        file,
    };
    let root = m.run()?;
    let Value::Dict(items) = root else {
        return Err(Error::Invalid(format!(
            "{file}: the pickle holds no state dict (a dict of tensors)"
        )));
    };
    items
        .into_iter()
        .map(|(k, v)| match (k, v) {
            (Value::Str(k), Value::Tensor(t)) => Ok((k, t)),
            (k, _) => Err(Error::Invalid(format!(
                "{file}: state dict entry {k:?} is not a named tensor"
            ))),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unused_value_kinds_still_parse() {
        // A dict holding a float, bytes, a list and None beside nothing else: refused as a state
        // dict only at the end, after every opcode ran.
        let code = b"\x80\x02}(X\x01\x00\x00\x00aG?\xf0\x00\x00\x00\x00\x00\x00X\x01\x00\x00\x00bC\x02hiX\x01\x00\x00\x00c](N\x88\x89\x8a\x01\xffeu.";
        let err = state_dict(code, "t").unwrap_err().to_string();
        assert!(err.contains("is not a named tensor"), "{err}");
    }
}
