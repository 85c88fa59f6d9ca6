//! The snapshot format: the vault's tables as a stream of checksummed frames, written
//! from a read transaction and read back into a new vault generation a frame at a time,
//! so neither side ever holds the whole vault.
//!
//! ```text
//! stream := "KVS1" frame* end
//! frame  := kind u8 (1) | len u32 LE | crc32 u32 LE | records (len bytes)
//! record := table u8 | key len u32 LE | key | value len u32 LE | value
//! end    := kind u8 (2) | len u32 LE (40) | crc32 u32 LE | records u64 LE | sha256
//! ```
//!
//! The end frame counts the records and hashes every record frame's bytes, so a stream
//! cut between frames, or with a frame dropped or repeated, is refused too.

use crate::vault::TableId;
use sha2::{Digest, Sha256};
use std::io;

const MAGIC: &[u8; 4] = b"KVS1";
const KIND_RECORDS: u8 = 1;
const KIND_END: u8 = 2;
const FRAME_HEAD: usize = 9;
/// A frame is cut once its records pass this size.
pub(crate) const FRAME_BYTES: usize = 1 << 20;
/// Largest frame accepted (a single record larger than [`FRAME_BYTES`] gets a frame of
/// its own, up to this).
const FRAME_BYTES_MAX: usize = 64 << 20;

fn bad(why: impl Into<String>) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("snapshot stream: {}", why.into()),
    )
}

/// Writes the stream through `out`, a frame at a time.
pub(crate) struct Encoder<W: FnMut(&[u8]) -> io::Result<()>> {
    out: W,
    frame: Vec<u8>,
    records: u64,
    hash: Sha256,
}

impl<W: FnMut(&[u8]) -> io::Result<()>> Encoder<W> {
    pub(crate) fn new(mut out: W) -> io::Result<Encoder<W>> {
        out(MAGIC)?;
        Ok(Encoder {
            out,
            frame: Vec::with_capacity(FRAME_BYTES + 1024),
            records: 0,
            hash: Sha256::new(),
        })
    }

    /// Adds one record.
    pub(crate) fn push(&mut self, table: TableId, key: &[u8], value: &[u8]) -> io::Result<()> {
        self.frame.push(table as u8);
        self.frame
            .extend_from_slice(&(key.len() as u32).to_le_bytes());
        self.frame.extend_from_slice(key);
        self.frame
            .extend_from_slice(&(value.len() as u32).to_le_bytes());
        self.frame.extend_from_slice(value);
        self.records += 1;
        if self.frame.len() >= FRAME_BYTES {
            self.flush()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        if self.frame.is_empty() {
            return Ok(());
        }
        self.hash.update(&self.frame);
        write_frame(&mut self.out, KIND_RECORDS, &self.frame)?;
        self.frame.clear();
        Ok(())
    }

    /// Ends the stream; returns how many records it holds.
    pub(crate) fn finish(mut self) -> io::Result<u64> {
        self.flush()?;
        let mut end = Vec::with_capacity(40);
        end.extend_from_slice(&self.records.to_le_bytes());
        end.extend_from_slice(&self.hash.finalize());
        write_frame(&mut self.out, KIND_END, &end)?;
        Ok(self.records)
    }
}

fn write_frame(
    out: &mut impl FnMut(&[u8]) -> io::Result<()>,
    kind: u8,
    body: &[u8],
) -> io::Result<()> {
    let mut head = [0u8; FRAME_HEAD];
    head[0] = kind;
    head[1..5].copy_from_slice(&(body.len() as u32).to_le_bytes());
    head[5..9].copy_from_slice(&crc32fast::hash(body).to_le_bytes());
    out(&head)?;
    out(body)
}

/// Reads a stream from `read` (which fills the buffer it is given, or fails), a frame at
/// a time, handing each record to `record`. Returns the number of records once the end
/// frame has checked them all.
pub(crate) fn decode(
    mut read: impl FnMut(&mut [u8]) -> io::Result<()>,
    mut record: impl FnMut(TableId, &[u8], &[u8]) -> io::Result<()>,
) -> io::Result<u64> {
    let mut magic = [0u8; 4];
    read(&mut magic)?;
    if &magic != MAGIC {
        return Err(bad("not a snapshot stream"));
    }
    let (mut records, mut hash) = (0u64, Sha256::new());
    let mut body = Vec::new();
    loop {
        let mut head = [0u8; FRAME_HEAD];
        read(&mut head)?;
        let len = u32::from_le_bytes(head[1..5].try_into().expect("4 bytes")) as usize;
        let crc = u32::from_le_bytes(head[5..9].try_into().expect("4 bytes"));
        if len > FRAME_BYTES_MAX {
            return Err(bad(format!("a frame of {len} bytes")));
        }
        body.resize(len, 0);
        read(&mut body)?;
        if crc32fast::hash(&body) != crc {
            return Err(bad("checksum mismatch"));
        }
        match head[0] {
            KIND_RECORDS => {
                hash.update(&body);
                records += parse_records(&body, &mut record)?;
            }
            KIND_END => {
                let want = body
                    .get(..8)
                    .map(|b| u64::from_le_bytes(b.try_into().expect("8")));
                if len != 40 || want != Some(records) {
                    return Err(bad(format!(
                        "{records} records, the end frame says {want:?}"
                    )));
                }
                if body[8..] != hash.finalize()[..] {
                    return Err(bad("the records do not hash to the end frame's"));
                }
                return Ok(records);
            }
            k => return Err(bad(format!("unknown frame kind {k}"))),
        }
    }
}

fn parse_records(
    mut body: &[u8],
    record: &mut impl FnMut(TableId, &[u8], &[u8]) -> io::Result<()>,
) -> io::Result<u64> {
    fn take<'a>(b: &mut &'a [u8], n: usize) -> io::Result<&'a [u8]> {
        if b.len() < n {
            return Err(bad("a record runs past its frame"));
        }
        let (head, rest) = b.split_at(n);
        *b = rest;
        Ok(head)
    }
    fn len(b: &mut &[u8]) -> io::Result<usize> {
        Ok(u32::from_le_bytes(take(b, 4)?.try_into().expect("4 bytes")) as usize)
    }
    let mut n = 0;
    while !body.is_empty() {
        let id = take(&mut body, 1)?[0];
        let table = TableId::from_id(id).ok_or_else(|| bad(format!("unknown table {id}")))?;
        let klen = len(&mut body)?;
        let key = take(&mut body, klen)?;
        let vlen = len(&mut body)?;
        let value = take(&mut body, vlen)?;
        record(table, key, value)?;
        n += 1;
    }
    Ok(n)
}

/// The stream of every record in `s`, in memory (tests and small vaults).
#[cfg(test)]
pub(crate) fn encode_tables(s: &dyn crate::vault::Tables) -> Vec<u8> {
    use std::ops::Bound;
    let mut out = Vec::new();
    let mut e = Encoder::new(|b: &[u8]| {
        out.extend_from_slice(b);
        Ok(())
    })
    .expect("in memory");
    for t in TableId::ALL {
        s.scan(t, Bound::Unbounded, Bound::Unbounded, false, &mut |k, v| {
            e.push(t, k, v).expect("in memory");
            true
        });
    }
    e.finish().expect("in memory");
    out
}

/// A reader over a byte slice for [`decode`].
#[cfg(test)]
pub(crate) fn slice_reader(mut data: &[u8]) -> impl FnMut(&mut [u8]) -> io::Result<()> + '_ {
    move |out: &mut [u8]| {
        if data.len() < out.len() {
            return Err(bad("the stream ends early"));
        }
        let (head, rest) = data.split_at(out.len());
        out.copy_from_slice(head);
        data = rest;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type Records = Vec<(TableId, Vec<u8>, Vec<u8>)>;

    fn stream(records: &[(TableId, Vec<u8>, Vec<u8>)]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut e = Encoder::new(|b: &[u8]| {
            out.extend_from_slice(b);
            Ok(())
        })
        .unwrap();
        for (t, k, v) in records {
            e.push(*t, k, v).unwrap();
        }
        e.finish().unwrap();
        out
    }

    fn records(n: usize) -> Records {
        (0..n)
            .map(|i| {
                let t = if i % 2 == 0 {
                    TableId::Tokens
                } else {
                    TableId::Audit
                };
                (t, format!("k{i}").into_bytes(), vec![i as u8; 3000])
            })
            .collect()
    }

    fn read_all(data: &[u8]) -> io::Result<Records> {
        let mut out = Vec::new();
        decode(slice_reader(data), |t, k, v| {
            out.push((t, k.to_vec(), v.to_vec()));
            Ok(())
        })?;
        Ok(out)
    }

    #[test]
    fn records_round_trip_across_many_frames() {
        let want = records(1000);
        let data = stream(&want);
        assert!(data.len() > 2 * FRAME_BYTES, "several frames");
        assert_eq!(read_all(&data).unwrap(), want);
        assert_eq!(read_all(&stream(&[])).unwrap(), vec![]);
    }

    #[test]
    fn a_flipped_byte_a_cut_or_a_dropped_frame_is_refused() {
        let data = stream(&records(1000));
        let mut flipped = data.clone();
        flipped[FRAME_BYTES / 2] ^= 1;
        assert!(read_all(&flipped)
            .unwrap_err()
            .to_string()
            .contains("checksum"));
        assert!(read_all(&data[..data.len() - 10]).is_err());
        // Cut exactly after the first frame, and the end frame of the full stream
        // appended: counted and hashed records disagree.
        let first_len = u32::from_le_bytes(data[5..9].try_into().unwrap()) as usize;
        let first_end = 4 + FRAME_HEAD + first_len;
        let mut dropped = data[..first_end].to_vec();
        dropped.extend_from_slice(&data[data.len() - (FRAME_HEAD + 40)..]);
        assert!(read_all(&dropped)
            .unwrap_err()
            .to_string()
            .contains("end frame"));
    }
}
