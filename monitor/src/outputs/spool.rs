//! A network output's spool: the events it has not delivered yet, on disk,
//! in order, bounded. Segment files of length-prefixed, checksummed records
//! are appended to; a cursor file says how far the receiver has taken them.
//! A restart (a kill -9 too) finds both and goes on from the cursor: what
//! was sent but not yet acknowledged is sent again (at-least-once, the
//! event `id` tells duplicates). When the bound is reached the oldest
//! segment is dropped and its undelivered events counted.

use std::{
    collections::VecDeque,
    fs::{self, File, OpenOptions},
    io::{self, Read as _, Seek as _, SeekFrom, Write as _},
    os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _},
    path::{Path, PathBuf},
};

/// The smallest bound a spool can have: a few segments of a few events.
pub const MIN_BYTES: u64 = 64 * 1024;
/// Bytes before a record's payload: its length and CRC-32, little-endian.
const HEADER: u64 = 8;
const CURSOR: &str = "cursor";
const SEGMENT_EXT: &str = "seg";

/// A place in the spool: a segment, a byte offset in it, and how many
/// records come before that offset in the segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Position {
    seq: u64,
    offset: u64,
    index: u64,
}

#[derive(Debug)]
struct Segment {
    seq: u64,
    bytes: u64,
    records: u64,
}

/// Records read for sending, and where the spool stands once they are
/// delivered.
#[derive(Debug, Default)]
pub struct Batch {
    pub records: Vec<Vec<u8>>,
    pub end: Position,
}

pub struct Spool {
    dir: PathBuf,
    max_bytes: u64,
    segment_bytes: u64,
    /// Oldest first; the last one is appended to.
    segments: VecDeque<Segment>,
    writer: File,
    /// Delivered up to here.
    cursor: Position,
    /// Open on the segment being read, with its sequence number.
    reader: Option<(u64, File)>,
    bytes: u64,
}

impl Spool {
    /// Open the spool in `dir` (made 0700 when missing), recover what a
    /// previous run left, and cut a record that a crash tore in half.
    pub fn open(dir: &Path, max_bytes: u64) -> io::Result<Self> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
        let segment_bytes = (max_bytes / 8).clamp(4096, 16 * 1024 * 1024);
        let mut seqs: Vec<u64> = fs::read_dir(dir)?
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let name = e.file_name();
                let name = name.to_str()?;
                name.strip_suffix(&format!(".{SEGMENT_EXT}"))?.parse().ok()
            })
            .collect();
        seqs.sort_unstable();
        let mut cursor = read_cursor(dir).unwrap_or_default();
        let mut segments = VecDeque::new();
        for seq in seqs {
            let path = segment_path(dir, seq);
            if seq < cursor.seq {
                fs::remove_file(&path)?;
                continue;
            }
            let (bytes, records) = recover_segment(&path)?;
            segments.push_back(Segment {
                seq,
                bytes,
                records,
            });
        }
        // The cursor's segment is gone (dropped while full): start at the
        // oldest that is left.
        match segments.front() {
            Some(first) if first.seq != cursor.seq => {
                cursor = Position {
                    seq: first.seq,
                    ..Position::default()
                }
            }
            Some(first) if cursor.offset > first.bytes => {
                cursor = Position {
                    seq: first.seq,
                    ..Position::default()
                }
            }
            _ => {}
        }
        let next = segments
            .back()
            .map_or(cursor.seq.max(1), |s: &Segment| s.seq);
        if segments.back().is_none_or(|s| s.seq != next) {
            segments.push_back(Segment {
                seq: next,
                bytes: 0,
                records: 0,
            });
            if cursor.seq < next && segments.len() == 1 {
                cursor = Position {
                    seq: next,
                    ..Position::default()
                };
            }
        }
        let writer = open_segment(dir, next)?;
        let bytes = segments.iter().map(|s| s.bytes).sum();
        Ok(Self {
            dir: dir.to_path_buf(),
            max_bytes,
            segment_bytes,
            segments,
            writer,
            cursor,
            reader: None,
            bytes,
        })
    }

    /// Bytes on disk.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Records not delivered yet.
    pub fn pending(&self) -> u64 {
        let mut n: u64 = self.segments.iter().map(|s| s.records).sum();
        n -= self.cursor.index.min(n);
        n
    }

    /// Append `records` in one write. Returns how many undelivered records
    /// were dropped to make room (the oldest), or the new ones themselves
    /// when one alone is larger than the spool.
    pub fn append(&mut self, records: &[Vec<u8>]) -> io::Result<u64> {
        let mut dropped = 0;
        let mut buf = Vec::new();
        let mut count = 0;
        for r in records {
            let size = HEADER + r.len() as u64;
            if size > self.max_bytes / 4 {
                dropped += 1;
                continue;
            }
            if self.tail().bytes + buf.len() as u64 + size > self.segment_bytes
                && self.tail().bytes + buf.len() as u64 > 0
            {
                dropped += self.write(&buf, count)?;
                buf.clear();
                count = 0;
                self.roll()?;
            }
            buf.extend_from_slice(&(r.len() as u32).to_le_bytes());
            buf.extend_from_slice(&crc32fast::hash(r).to_le_bytes());
            buf.extend_from_slice(r);
            count += 1;
        }
        dropped += self.write(&buf, count)?;
        Ok(dropped)
    }

    fn tail(&self) -> &Segment {
        self.segments.back().expect("a spool always has a segment")
    }

    /// Make room for `buf`, then write it to the last segment.
    fn write(&mut self, buf: &[u8], count: u64) -> io::Result<u64> {
        if buf.is_empty() {
            return Ok(0);
        }
        let mut dropped = 0;
        while self.bytes + buf.len() as u64 > self.max_bytes && self.segments.len() > 1 {
            dropped += self.drop_oldest()?;
        }
        self.writer.write_all(buf)?;
        let tail = self
            .segments
            .back_mut()
            .expect("a spool always has a segment");
        tail.bytes += buf.len() as u64;
        tail.records += count;
        self.bytes += buf.len() as u64;
        Ok(dropped)
    }

    fn roll(&mut self) -> io::Result<()> {
        let seq = self.tail().seq + 1;
        self.writer = open_segment(&self.dir, seq)?;
        self.segments.push_back(Segment {
            seq,
            bytes: 0,
            records: 0,
        });
        Ok(())
    }

    /// Delete the oldest segment; returns its undelivered records.
    fn drop_oldest(&mut self) -> io::Result<u64> {
        let Some(old) = self.segments.pop_front() else {
            return Ok(0);
        };
        fs::remove_file(segment_path(&self.dir, old.seq))?;
        self.bytes -= old.bytes;
        let mut lost = old.records;
        if self.cursor.seq == old.seq {
            lost -= self.cursor.index.min(lost);
            let next = self.segments.front().map_or(old.seq + 1, |s| s.seq);
            self.cursor = Position {
                seq: next,
                ..Position::default()
            };
            self.reader = None;
            write_cursor(&self.dir, self.cursor)?;
        }
        Ok(lost)
    }

    /// Up to `max_records` records (and about `max_bytes`) from the cursor
    /// on, without taking them: [`Spool::ack`] does once they are delivered.
    pub fn peek(&mut self, max_records: usize, max_bytes: usize) -> io::Result<Batch> {
        let mut batch = Batch {
            records: Vec::new(),
            end: self.cursor,
        };
        let mut pos = self.cursor;
        let mut taken = 0;
        while batch.records.len() < max_records && taken < max_bytes {
            let Some(seg) = self.segments.iter().find(|s| s.seq == pos.seq) else {
                break;
            };
            if pos.offset >= seg.bytes {
                // Read to its end: on to the next segment, if there is one.
                match self.segments.iter().find(|s| s.seq > pos.seq) {
                    Some(next) => {
                        pos = Position {
                            seq: next.seq,
                            ..Position::default()
                        };
                        continue;
                    }
                    None => break,
                }
            }
            let file = self.reader_at(pos.seq)?;
            file.seek(SeekFrom::Start(pos.offset))?;
            let mut header = [0u8; HEADER as usize];
            file.read_exact(&mut header)?;
            let len = u32::from_le_bytes(header[..4].try_into().expect("4 bytes")) as usize;
            let mut record = vec![0; len];
            file.read_exact(&mut record)?;
            pos.offset += HEADER + len as u64;
            pos.index += 1;
            taken += len;
            batch.records.push(record);
            batch.end = pos;
        }
        Ok(batch)
    }

    fn reader_at(&mut self, seq: u64) -> io::Result<&mut File> {
        if self.reader.as_ref().is_none_or(|(s, _)| *s != seq) {
            self.reader = Some((seq, File::open(segment_path(&self.dir, seq))?));
        }
        Ok(&mut self.reader.as_mut().expect("just opened").1)
    }

    /// The records up to `end` were delivered: move the cursor there, save
    /// it, and delete the segments read to their end.
    pub fn ack(&mut self, end: Position) -> io::Result<()> {
        // Its segment was dropped while the batch was out: the cursor has
        // moved past it already.
        if end.seq < self.cursor.seq || !self.segments.iter().any(|s| s.seq == end.seq) {
            return Ok(());
        }
        self.cursor = end;
        while self.segments.len() > 1 && self.segments[0].seq < end.seq {
            let old = self.segments.pop_front().expect("checked");
            fs::remove_file(segment_path(&self.dir, old.seq))?;
            self.bytes -= old.bytes;
        }
        // Everything delivered: start afresh, so the disk use drops to 0.
        let tail = self.tail();
        if self.segments.len() == 1
            && end.seq == tail.seq
            && end.offset == tail.bytes
            && end.offset > 0
        {
            self.roll()?;
            let old = self.segments.pop_front().expect("two segments");
            fs::remove_file(segment_path(&self.dir, old.seq))?;
            self.bytes -= old.bytes;
            self.cursor = Position {
                seq: self.tail().seq,
                ..Position::default()
            };
            self.reader = None;
        }
        write_cursor(&self.dir, self.cursor)
    }
}

fn segment_path(dir: &Path, seq: u64) -> PathBuf {
    dir.join(format!("{seq:020}.{SEGMENT_EXT}"))
}

fn open_segment(dir: &Path, seq: u64) -> io::Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(segment_path(dir, seq))
}

/// The valid length and record count of a segment; a torn or corrupt
/// record and everything after it are cut off.
fn recover_segment(path: &Path) -> io::Result<(u64, u64)> {
    let data = fs::read(path)?;
    let mut offset = 0usize;
    let mut records = 0;
    while offset + HEADER as usize <= data.len() {
        let len = u32::from_le_bytes(data[offset..offset + 4].try_into().expect("4")) as usize;
        let crc = u32::from_le_bytes(data[offset + 4..offset + 8].try_into().expect("4"));
        let start = offset + HEADER as usize;
        let Some(payload) = data.get(start..start + len) else {
            break;
        };
        if crc32fast::hash(payload) != crc {
            break;
        }
        offset = start + len;
        records += 1;
    }
    if offset < data.len() {
        tracing::warn!(
            "spool {}: {} bytes after the last whole record cut off",
            path.display(),
            data.len() - offset
        );
        OpenOptions::new()
            .write(true)
            .open(path)?
            .set_len(offset as u64)?;
    }
    Ok((offset as u64, records))
}

fn read_cursor(dir: &Path) -> Option<Position> {
    let text = fs::read_to_string(dir.join(CURSOR)).ok()?;
    let mut parts = text.split_whitespace().map(|p| p.parse::<u64>());
    Some(Position {
        seq: parts.next()?.ok()?,
        offset: parts.next()?.ok()?,
        index: parts.next()?.ok()?,
    })
}

/// Replace the cursor file in one rename, so a crash leaves the old one
/// or the new one.
fn write_cursor(dir: &Path, p: Position) -> io::Result<()> {
    let tmp = dir.join(format!("{CURSOR}.tmp"));
    let _ = fs::remove_file(&tmp);
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(&tmp)?;
    writeln!(f, "{} {} {}", p.seq, p.offset, p.index)?;
    fs::rename(&tmp, dir.join(CURSOR))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(i: usize) -> Vec<u8> {
        format!(
            "{{\"id\":\"event-{i:05}\",\"pad\":\"{}\"}}",
            "x".repeat(200)
        )
        .into_bytes()
    }

    fn drain(s: &mut Spool) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        loop {
            let b = s.peek(7, 1 << 20).unwrap();
            if b.records.is_empty() {
                return out;
            }
            out.extend(b.records);
            s.ack(b.end).unwrap();
        }
    }

    #[test]
    fn in_order_across_segments_and_restarts() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Spool::open(dir.path(), MIN_BYTES * 4).unwrap();
        let all: Vec<_> = (0..300).map(rec).collect();
        assert_eq!(s.append(&all[..150]).unwrap(), 0);
        assert_eq!(s.pending(), 150);
        // Half delivered, the rest not acknowledged yet.
        let b = s.peek(100, 1 << 20).unwrap();
        assert_eq!(b.records, all[..100]);
        s.ack(b.end).unwrap();
        let unacked = s.peek(20, 1 << 20).unwrap();
        assert_eq!(unacked.records, all[100..120]);
        drop(s);

        // A restart sends the unacknowledged again, then the rest.
        let mut s = Spool::open(dir.path(), MIN_BYTES * 4).unwrap();
        assert_eq!(s.pending(), 50);
        s.append(&all[150..]).unwrap();
        assert_eq!(drain(&mut s), all[100..]);
        assert_eq!(s.pending(), 0);
        assert_eq!(s.bytes(), 0, "a delivered spool takes no room");
        let left: Vec<_> = fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(left.len(), 2, "one empty segment and the cursor");
    }

    #[test]
    fn full_drops_the_oldest_and_counts_them() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Spool::open(dir.path(), MIN_BYTES).unwrap();
        let all: Vec<_> = (0..1000).map(rec).collect();
        let mut dropped = 0;
        for chunk in all.chunks(10) {
            dropped += s.append(chunk).unwrap();
            assert!(s.bytes() <= MIN_BYTES, "{} bytes", s.bytes());
        }
        assert!(dropped > 0);
        let got = drain(&mut s);
        assert_eq!(
            got.len() as u64 + dropped,
            1000,
            "every event delivered or counted"
        );
        assert_eq!(got.last(), all.last(), "the newest are kept");
        assert_eq!(got, all[all.len() - got.len()..], "in order");
    }

    #[test]
    fn a_drop_while_a_batch_is_out_keeps_the_count_and_order() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Spool::open(dir.path(), MIN_BYTES).unwrap();
        let all: Vec<_> = (0..2000).map(rec).collect();
        s.append(&all[..100]).unwrap();
        let out = s.peek(10, 1 << 20).unwrap();
        let mut dropped = 0;
        for chunk in all[100..].chunks(50) {
            dropped += s.append(chunk).unwrap();
        }
        s.ack(out.end).unwrap();
        let got = drain(&mut s);
        assert!(got.len() as u64 + dropped >= 1990);
        assert_eq!(got, all[all.len() - got.len()..]);
    }

    #[test]
    fn a_torn_record_is_cut_and_the_rest_survives() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Spool::open(dir.path(), MIN_BYTES * 4).unwrap();
        let all: Vec<_> = (0..5).map(rec).collect();
        s.append(&all).unwrap();
        drop(s);
        // A crash in the middle of a write.
        let seg = segment_path(dir.path(), 1);
        let mut f = OpenOptions::new().append(true).open(&seg).unwrap();
        f.write_all(&[200, 0, 0, 0, 1, 2]).unwrap();
        let mut s = Spool::open(dir.path(), MIN_BYTES * 4).unwrap();
        assert_eq!(s.pending(), 5);
        s.append(&[rec(5)]).unwrap();
        let got = drain(&mut s);
        assert_eq!(got.len(), 6);
        assert_eq!(got[5], rec(5));
    }
}
