//! A minimal protobuf wire reader: the top-level fields of a message, without decoding them
//! (the SotW ACK check compares a request's names in place).

/// One field: its number, its bytes as they stand in the message (key included), and its
/// payload (for length-delimited fields, the bytes after the length).
pub struct Field<'a> {
    pub tag: u32,
    /// 0 varint, 1 fixed 64-bit, 2 length-delimited ([`LEN`]), 5 fixed 32-bit.
    pub wire_type: u8,
    pub whole: &'a [u8],
    pub payload: &'a [u8],
}

/// The wire type of strings, bytes and messages.
pub const LEN: u8 = 2;

/// The fields of `msg` in order; `None` (and the end) at the first malformed field. (The
/// server reads one field at a time with [`field_at`]; the tests read whole messages.)
#[cfg(test)]
pub fn fields(msg: &[u8]) -> impl Iterator<Item = Option<Field<'_>>> {
    let mut rest = msg;
    let mut failed = false;
    std::iter::from_fn(move || {
        if rest.is_empty() || failed {
            return None;
        }
        let field = next(rest);
        match field {
            Some((f, after)) => {
                rest = after;
                Some(Some(f))
            }
            None => {
                failed = true;
                Some(None)
            }
        }
    })
}

/// The field at the start of `buf`; `None` if it is malformed (or `buf` is empty).
pub fn field_at(buf: &[u8]) -> Option<Field<'_>> {
    next(buf).map(|(f, _)| f)
}

fn next(buf: &[u8]) -> Option<(Field<'_>, &[u8])> {
    let (key, mut at) = varint(buf)?;
    // As prost: a key over 32 bits, or field number 0, is malformed.
    let key = u32::try_from(key).ok()?;
    let tag = Some(key >> 3).filter(|t| *t > 0)?;
    let wire_type = (key & 7) as u8;
    let payload = match wire_type {
        0 => {
            let (_, n) = varint(&buf[at..])?;
            let p = &buf[at..at + n];
            at += n;
            p
        }
        1 | 5 => {
            let n = if wire_type == 1 { 8 } else { 4 };
            let p = buf.get(at..at.checked_add(n)?)?;
            at += n;
            p
        }
        2 => {
            let (len, n) = varint(&buf[at..])?;
            let start = at + n;
            let end = start.checked_add(usize::try_from(len).ok()?)?;
            let p = buf.get(start..end)?;
            at = end;
            p
        }
        _ => return None,
    };
    Some((
        Field {
            tag,
            wire_type,
            whole: &buf[..at],
            payload,
        },
        &buf[at..],
    ))
}

/// A base-128 varint: its value and how many bytes it took. As prost: at most 10 bytes, and
/// a 10th byte over 1 (bits past 64) is malformed.
fn varint(buf: &[u8]) -> Option<(u64, usize)> {
    let mut v: u64 = 0;
    for (i, b) in buf.iter().take(10).enumerate() {
        if i == 9 && *b > 1 {
            return None;
        }
        v |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return Some((v, i + 1));
        }
    }
    None
}
