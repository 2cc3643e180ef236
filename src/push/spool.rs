//! The on-disk spool of reports not yet accepted by the receiver, and the report sequence
//! number that survives restarts.
//!
//! One file per report, `<seq as 20 digits>.json`, holding exactly the bytes that are POSTed,
//! so a re-send is byte-for-byte the same report. `last-seq` holds the last number handed out.
//! Every file is written atomically (0600); a crash leaves at worst a stray temporary file,
//! which is ignored. The spool is bounded: making room deletes the oldest reports (never the
//! one being sent) and the next report counts them in `spool.dropped_before_this`.
//!
//! Blocking file I/O: callers run these methods on a blocking thread.

use std::collections::BTreeSet;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};

use crate::fsutil::{create_dir, write_atomic};

const SEQ_FILE: &str = "last-seq";

#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("cannot create the spool directory {}", path.display())]
    CreateDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot read {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write {}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot remove {}", path.display())]
    Remove {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{} does not hold a sequence number ({text:?}); fix or remove it", path.display())]
    BadSeq { path: PathBuf, text: String },
    #[error("cannot encode the report")]
    Encode(#[source] serde_json::Error),
}

/// The name of the spool file of `seq`.
pub fn file_name(seq: u64) -> String {
    format!("{seq:020}.json")
}

fn parse_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(".json")?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// What [`Spool::append`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    pub seq: u64,
    /// Reports deleted unsent to make room, counted into this report.
    pub dropped_before_this: u64,
    /// Reports deleted by this call (the rest of `dropped_before_this` came from before).
    pub dropped_now: u64,
}

#[derive(Debug)]
pub struct Spool {
    dir: PathBuf,
    max: usize,
    seqs: BTreeSet<u64>,
    last_seq: u64,
    /// The report the sender is delivering; making room never deletes it.
    in_flight: Option<u64>,
    /// Drops not yet counted in a spooled report.
    unreported_drops: u64,
}

impl Spool {
    /// Opens (creating, 0700) the spool in `dir`, holding at most `max` reports. A new spool
    /// (no `last-seq`, no reports) numbers its first report `start_after + 1`.
    pub fn open(dir: &Path, max: usize, start_after: u64) -> Result<Spool, SpoolError> {
        create_dir(dir, 0o700).map_err(|source| SpoolError::CreateDir {
            path: dir.into(),
            source,
        })?;
        let seq_path = dir.join(SEQ_FILE);
        let recorded = match std::fs::read_to_string(&seq_path) {
            Ok(text) => Some(text.trim().parse::<u64>().map_err(|_| SpoolError::BadSeq {
                path: seq_path.clone(),
                text: text.chars().take(40).collect(),
            })?),
            Err(e) if e.kind() == ErrorKind::NotFound => None,
            Err(source) => {
                return Err(SpoolError::Read {
                    path: seq_path,
                    source,
                })
            }
        };
        let read_dir = |source| SpoolError::Read {
            path: dir.into(),
            source,
        };
        let mut seqs = BTreeSet::new();
        for entry in std::fs::read_dir(dir).map_err(read_dir)? {
            let entry = entry.map_err(read_dir)?;
            if let Some(seq) = entry.file_name().to_str().and_then(parse_name) {
                seqs.insert(seq);
            }
        }
        // A crash between writing a report and `last-seq` leaves the report as the newest
        // record of the sequence: never hand its number out again.
        let last_seq = match (seqs.last().copied(), recorded) {
            (None, None) => start_after,
            (newest, recorded) => newest.unwrap_or(0).max(recorded.unwrap_or(0)),
        };
        Ok(Spool {
            dir: dir.into(),
            max: max.max(1),
            seqs,
            last_seq,
            in_flight: None,
            unreported_drops: 0,
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Reports waiting in the spool.
    pub fn len(&self) -> usize {
        self.seqs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.seqs.is_empty()
    }

    pub fn last_seq(&self) -> u64 {
        self.last_seq
    }

    /// The spooled sequence numbers, oldest first.
    pub fn seqs(&self) -> impl Iterator<Item = u64> + '_ {
        self.seqs.iter().copied()
    }

    fn path(&self, seq: u64) -> PathBuf {
        self.dir.join(file_name(seq))
    }

    fn remove_file(&self, seq: u64) -> Result<(), SpoolError> {
        let path = self.path(seq);
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
            Err(source) => Err(SpoolError::Remove { path, source }),
        }
    }

    /// Spools the report `build(seq, dropped_before_this)` under the next sequence number,
    /// deleting the oldest reports first if the spool is full.
    pub fn append(
        &mut self,
        build: impl FnOnce(u64, u64) -> serde_json::Result<Vec<u8>>,
    ) -> Result<Appended, SpoolError> {
        let mut dropped_now = 0;
        while self.seqs.len() >= self.max {
            let Some(victim) = self
                .seqs
                .iter()
                .copied()
                .find(|s| Some(*s) != self.in_flight)
            else {
                break;
            };
            self.remove_file(victim)?;
            self.seqs.remove(&victim);
            self.unreported_drops += 1;
            dropped_now += 1;
        }
        let seq = self.last_seq + 1;
        let body = build(seq, self.unreported_drops).map_err(SpoolError::Encode)?;
        let path = self.path(seq);
        write_atomic(&path, &body, 0o600).map_err(|source| SpoolError::Write { path, source })?;
        self.seqs.insert(seq);
        self.last_seq = seq;
        let dropped_before_this = std::mem::take(&mut self.unreported_drops);
        let seq_path = self.dir.join(SEQ_FILE);
        if let Err(err) = write_atomic(&seq_path, format!("{seq}\n").as_bytes(), 0o600) {
            // The report file itself records the number (see `open`), so this is not fatal.
            tracing::warn!(path = %seq_path.display(), %err, "cannot record the report sequence number");
        }
        Ok(Appended {
            seq,
            dropped_before_this,
            dropped_now,
        })
    }

    /// The oldest report and its bytes, marked in flight until [`Spool::delivered`] or
    /// [`Spool::release`]. A report that cannot be read is deleted and counted as dropped
    /// (the error says which), so one bad file cannot stop delivery.
    pub fn take_oldest(&mut self) -> Result<Option<(u64, Vec<u8>)>, SpoolError> {
        while let Some(seq) = self.seqs.first().copied() {
            let path = self.path(seq);
            match std::fs::read(&path) {
                Ok(body) => {
                    self.in_flight = Some(seq);
                    return Ok(Some((seq, body)));
                }
                Err(e) if e.kind() == ErrorKind::NotFound => {
                    self.seqs.remove(&seq);
                    self.unreported_drops += 1;
                }
                Err(source) => {
                    self.seqs.remove(&seq);
                    self.unreported_drops += 1;
                    let _counted_as_dropped = std::fs::remove_file(&path);
                    return Err(SpoolError::Read { path, source });
                }
            }
        }
        Ok(None)
    }

    /// The receiver accepted `seq`: forget it.
    pub fn delivered(&mut self, seq: u64) -> Result<(), SpoolError> {
        self.in_flight = None;
        self.seqs.remove(&seq);
        self.remove_file(seq)
    }

    /// Sending failed; the report stays (and may be deleted to make room again).
    pub fn release(&mut self) {
        self.in_flight = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt as _;

    fn body(seq: u64, dropped: u64) -> serde_json::Result<Vec<u8>> {
        serde_json::to_vec(&serde_json::json!({ "seq": seq, "dropped": dropped }))
    }

    fn files(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .expect("ls")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn delivers_oldest_first_and_keeps_failed_reports() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut s = Spool::open(dir.path(), 10, 0).expect("open");
        for want in 1..=3 {
            assert_eq!(s.append(body).expect("append").seq, want);
        }
        assert_eq!(
            files(dir.path()),
            [file_name(1), file_name(2), file_name(3), "last-seq".into()]
        );
        let meta = std::fs::metadata(dir.path().join(file_name(1))).expect("meta");
        assert_eq!(meta.mode() & 0o777, 0o600);

        let (seq, bytes) = s.take_oldest().expect("read").expect("one");
        assert_eq!(seq, 1);
        assert_eq!(bytes, body(1, 0).expect("json"));
        s.release();
        assert_eq!(s.take_oldest().expect("read").expect("again").0, 1, "kept");
        s.delivered(1).expect("delivered");
        assert_eq!(s.take_oldest().expect("read").expect("next").0, 2);
        s.delivered(2).expect("delivered");
        s.delivered(3).expect("delivered");
        assert!(s.take_oldest().expect("read").is_none());
        assert_eq!(files(dir.path()), ["last-seq"]);
    }

    #[test]
    fn full_spool_drops_the_oldest_and_counts_them_into_the_next_report() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut s = Spool::open(dir.path(), 3, 0).expect("open");
        for _ in 0..3 {
            s.append(body).expect("append");
        }
        let a = s.append(body).expect("append");
        assert_eq!(
            a,
            Appended {
                seq: 4,
                dropped_before_this: 1,
                dropped_now: 1
            }
        );
        assert_eq!(s.seqs().collect::<Vec<_>>(), [2, 3, 4]);
        let stored: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.path().join(file_name(4))).expect("read"))
                .expect("json");
        assert_eq!(stored["dropped"], 1, "the count is inside the report");
        assert_eq!(
            s.append(body).expect("append").dropped_before_this,
            1,
            "each report counts only its own drops"
        );

        // The report being sent is never dropped: the oldest other one goes.
        assert_eq!(s.take_oldest().expect("read").expect("oldest").0, 3);
        s.append(body).expect("append");
        assert_eq!(s.seqs().collect::<Vec<_>>(), [3, 5, 6]);
        s.delivered(3).expect("delivered");
        assert_eq!(s.seqs().collect::<Vec<_>>(), [5, 6]);
    }

    #[test]
    fn seq_survives_restart_and_a_lost_seq_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let mut s = Spool::open(dir.path(), 10, 0).expect("open");
            for _ in 0..5 {
                s.append(body).expect("append");
            }
            for seq in 1..=5 {
                s.take_oldest().expect("read");
                s.delivered(seq).expect("delivered");
            }
        }
        let mut s = Spool::open(dir.path(), 10, 0).expect("reopen");
        assert!(s.is_empty());
        assert_eq!(
            s.append(body).expect("append").seq,
            6,
            "empty spool, seq kept"
        );
        s.append(body).expect("append");
        drop(s);

        // A crash after writing a report but before `last-seq`: the report's name wins.
        std::fs::write(dir.path().join("last-seq"), "5\n").expect("write");
        let mut s = Spool::open(dir.path(), 10, 0).expect("reopen");
        assert_eq!(s.seqs().collect::<Vec<_>>(), [6, 7]);
        assert_eq!(s.append(body).expect("append").seq, 8);

        // Stray temporary files and strangers are ignored.
        std::fs::write(dir.path().join(".00000000000000000009.json.tmp-1"), "x").expect("tmp");
        std::fs::write(dir.path().join("notes.txt"), "x").expect("other");
        assert_eq!(Spool::open(dir.path(), 10, 0).expect("reopen").len(), 3);
    }

    #[test]
    fn a_new_spool_starts_after_the_given_number_an_old_one_goes_on() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut s = Spool::open(dir.path(), 10, 1_000).expect("open");
        assert_eq!(s.append(body).expect("append").seq, 1_001);
        s.take_oldest().expect("read");
        s.delivered(1_001).expect("delivered");
        drop(s);
        let mut s = Spool::open(dir.path(), 10, 5_000).expect("reopen");
        assert_eq!(
            s.append(body).expect("append").seq,
            1_002,
            "the hint is for new spools"
        );
    }

    #[test]
    fn a_broken_seq_file_is_an_error_not_a_reset() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("last-seq"), "garbage").expect("write");
        let err = Spool::open(dir.path(), 10, 0).expect_err("bad seq");
        assert!(err.to_string().contains("last-seq"), "{err}");
    }

    #[test]
    fn an_unreadable_report_is_dropped_and_counted() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut s = Spool::open(dir.path(), 10, 0).expect("open");
        s.append(body).expect("append");
        s.append(body).expect("append");
        std::fs::remove_file(dir.path().join(file_name(1))).expect("rm");
        assert_eq!(s.take_oldest().expect("read").expect("next").0, 2);
        s.delivered(2).expect("delivered");
        assert_eq!(s.append(body).expect("append").dropped_before_this, 1);
    }
}
