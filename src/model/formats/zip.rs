//! The little of the zip format that torch.save's archives use: the central directory (with its
//! zip64 forms) and stored, uncompressed entries, borrowed from the file's bytes without a copy.
//! Every offset and size is checked against the file before use; a file that lies gets an error
//! that says what was wrong.

use crate::error::{Error, Result};
use std::collections::HashMap;

const EOCD: u32 = 0x0605_4b50;
const ZIP64_LOCATOR: u32 = 0x0706_4b50;
const ZIP64_EOCD: u32 = 0x0606_4b50;
const CENTRAL: u32 = 0x0201_4b50;
const LOCAL: u32 = 0x0403_4b50;

/// A bounds-checked little-endian reader over a byte slice.
struct Cursor<'a, 'f> {
    bytes: &'a [u8],
    at: usize,
    file: &'f str,
}

impl<'a, 'f> Cursor<'a, 'f> {
    fn new(bytes: &'a [u8], at: usize, file: &'f str) -> Self {
        Cursor { bytes, at, file }
    }
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        let end = self.at.checked_add(n).filter(|&e| e <= self.bytes.len());
        let Some(end) = end else {
            return Err(truncated(self.file, self.at));
        };
        let s = &self.bytes[self.at..end];
        self.at = end;
        Ok(s)
    }
    fn u16(&mut self) -> Result<u16> {
        Ok(u16::from_le_bytes(
            self.take(2)?.try_into().expect("2 bytes"),
        ))
    }
    fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(
            self.take(4)?.try_into().expect("4 bytes"),
        ))
    }
    fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_le_bytes(
            self.take(8)?.try_into().expect("8 bytes"),
        ))
    }
}

fn truncated(file: &str, at: usize) -> Error {
    Error::Invalid(format!(
        "{file}: the zip archive ends early (at byte {at}); is the download truncated?"
    ))
}

fn bad(file: &str, m: impl std::fmt::Display) -> Error {
    Error::Invalid(format!("{file}: not a readable torch zip archive: {m}"))
}

/// The stored entries of a zip archive: name → bytes.
pub fn entries<'a>(bytes: &'a [u8], file: &str) -> Result<HashMap<String, &'a [u8]>> {
    // The end-of-central-directory record: 22 bytes plus a comment of at most 65,535.
    let lowest = bytes.len().saturating_sub(22 + 65_535);
    let eocd = (lowest..bytes.len().saturating_sub(21))
        .rev()
        .find(|&i| bytes[i..i + 4] == EOCD.to_le_bytes())
        .ok_or_else(|| {
            bad(
                file,
                "no end-of-central-directory record (truncated, or not a zip file)",
            )
        })?;
    let mut c = Cursor::new(bytes, eocd + 10, file);
    let mut count = c.u16()? as u64;
    c.u32()?; // size of the central directory
    let mut dir_at = c.u32()? as u64;
    if count == 0xffff || dir_at == 0xffff_ffff {
        // zip64: the locator sits just before the end record and points at the zip64 record.
        let loc = eocd
            .checked_sub(20)
            .ok_or_else(|| bad(file, "zip64 locator missing"))?;
        let mut l = Cursor::new(bytes, loc, file);
        if l.u32()? != ZIP64_LOCATOR {
            return Err(bad(file, "zip64 locator missing"));
        }
        l.u32()?;
        let rec = usize::try_from(l.u64()?).map_err(|_| bad(file, "zip64 record out of range"))?;
        let mut r = Cursor::new(bytes, rec, file);
        if r.u32()? != ZIP64_EOCD {
            return Err(bad(file, "zip64 end record missing"));
        }
        r.take(20)?; // size, versions, disk numbers
        r.u64()?; // entries on this disk
        count = r.u64()?;
        r.u64()?; // directory size
        dir_at = r.u64()?;
    }
    let dir_at = usize::try_from(dir_at).map_err(|_| bad(file, "directory out of range"))?;
    if count > bytes.len() as u64 / 46 {
        return Err(bad(
            file,
            format!("it claims {count} entries, more than its size can hold"),
        ));
    }
    let mut out = HashMap::new();
    let mut c = Cursor::new(bytes, dir_at, file);
    for _ in 0..count {
        if c.u32()? != CENTRAL {
            return Err(bad(file, "a central directory entry is corrupt"));
        }
        c.take(6)?; // versions, flags
        let method = c.u16()?;
        c.take(8)?; // time, date, crc
        let mut size = c.u32()? as u64;
        let mut stored = c.u32()? as u64;
        let name_len = c.u16()? as usize;
        let extra_len = c.u16()? as usize;
        let comment_len = c.u16()? as usize;
        c.take(8)?; // disk, attributes
        let mut local = c.u32()? as u64;
        let name = String::from_utf8_lossy(c.take(name_len)?).into_owned();
        let mut extra = Cursor::new(c.take(extra_len)?, 0, file);
        c.take(comment_len)?;
        // The zip64 extra field holds, in order, whichever of the sizes and offset overflowed.
        while extra.at + 4 <= extra.bytes.len() {
            let (id, len) = (extra.u16()?, extra.u16()? as usize);
            let body = extra.take(len)?;
            if id == 1 {
                let mut z = Cursor::new(body, 0, file);
                if stored == 0xffff_ffff {
                    stored = z.u64()?;
                }
                if size == 0xffff_ffff {
                    size = z.u64()?;
                }
                if local == 0xffff_ffff {
                    local = z.u64()?;
                }
            }
        }
        if method != 0 || size != stored {
            return Err(bad(
                file,
                format!(
                    "entry {name} is compressed (method {method}); torch.save stores entries \
                     uncompressed"
                ),
            ));
        }
        let local = usize::try_from(local).map_err(|_| bad(file, "entry out of range"))?;
        let mut h = Cursor::new(bytes, local, file);
        if h.u32()? != LOCAL {
            return Err(bad(file, format!("entry {name}'s local header is corrupt")));
        }
        h.take(22)?;
        let (n, e) = (h.u16()? as usize, h.u16()? as usize);
        h.take(n + e)?;
        let len = usize::try_from(size).map_err(|_| truncated(file, h.at))?;
        out.insert(name, h.take(len)?);
    }
    Ok(out)
}
