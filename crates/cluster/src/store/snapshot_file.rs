//! Snapshot files in `<data_dir>/snapshots/`. A file is written whole to a temporary name,
//! fsynced, renamed into place and the directory fsynced, so a crash leaves either the old
//! snapshot or the new one, never half of one.
//!
//! Format: the magic `TERNSNP1`, the snapshot's metadata (u32 little-endian length, then
//! named MessagePack), then the state bytes (u64 little-endian length, then the bytes
//! exactly as openraft ships them to followers). The lengths catch a truncated file.
//!
//! Names are `snapshot-{n:020}.snap` with `n` = last included log index + 1 (0 for an
//! empty snapshot), so the newest sorts last. Two snapshots of the same index hold the
//! same state, so replacing one with the other is harmless.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use crate::raft_types::SnapshotMeta;

const MAGIC: &[u8; 8] = b"TERNSNP1";
const PREFIX: &str = "snapshot-";
const SUFFIX: &str = ".snap";
const TMP: &str = ".tmp";

pub(super) struct SnapshotDir {
    dir: PathBuf,
}

fn invalid(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("snapshot file: {what}"))
}

/// Splits `n` bytes off the front of `buf`.
fn take<'a>(buf: &mut &'a [u8], n: usize, what: &str) -> io::Result<&'a [u8]> {
    if buf.len() < n {
        return Err(invalid(what));
    }
    let (head, tail) = buf.split_at(n);
    *buf = tail;
    Ok(head)
}

/// A finished snapshot file's name (not a temporary file, not a stranger's file).
fn is_snapshot_file(path: &Path) -> bool {
    path.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with(PREFIX) && n.ends_with(SUFFIX))
}

impl SnapshotDir {
    /// Opens `<data_dir>/snapshots`, creating it, and deletes temporary files a crash
    /// left behind.
    pub fn open(data_dir: &Path) -> io::Result<Self> {
        let dir = data_dir.join("snapshots");
        fs::create_dir_all(&dir)?;
        for entry in fs::read_dir(&dir)? {
            let path = entry?.path();
            if path.extension().is_some_and(|e| e == &TMP[1..]) {
                fs::remove_file(&path)?;
            }
        }
        Ok(Self { dir })
    }

    fn path_for(&self, meta: &SnapshotMeta) -> PathBuf {
        let n = meta.last_log_id.map_or(0, |l| l.index.saturating_add(1));
        self.dir.join(format!("{PREFIX}{n:020}{SUFFIX}"))
    }

    /// Writes a snapshot durably and returns its path.
    pub fn write(&self, meta: &SnapshotMeta, data: &[u8]) -> io::Result<PathBuf> {
        let meta_bytes = rmp_serde::to_vec_named(meta).map_err(io::Error::other)?;
        let meta_len =
            u32::try_from(meta_bytes.len()).map_err(|_| invalid("metadata too large"))?;
        let path = self.path_for(meta);
        let mut tmp = path.clone().into_os_string();
        tmp.push(TMP);
        let tmp = PathBuf::from(tmp);
        {
            let mut file = io::BufWriter::new(File::create(&tmp)?);
            file.write_all(MAGIC)?;
            file.write_all(&meta_len.to_le_bytes())?;
            file.write_all(&meta_bytes)?;
            file.write_all(&(data.len() as u64).to_le_bytes())?;
            file.write_all(data)?;
            let file = file.into_inner().map_err(|e| e.into_error())?;
            file.sync_all()?;
        }
        fs::rename(&tmp, &path)?;
        File::open(&self.dir)?.sync_all()?;
        Ok(path)
    }

    /// Reads a snapshot file back: its metadata and state bytes.
    pub fn read(path: &Path) -> io::Result<(SnapshotMeta, Vec<u8>)> {
        let bytes = fs::read(path)?;
        let mut buf = bytes.as_slice();
        if take(&mut buf, MAGIC.len(), "too short")? != MAGIC {
            return Err(invalid("not a Tern snapshot"));
        }
        let mut len4 = [0u8; 4];
        len4.copy_from_slice(take(&mut buf, 4, "truncated header")?);
        let meta_len = u32::from_le_bytes(len4) as usize;
        let meta: SnapshotMeta =
            rmp_serde::from_slice(take(&mut buf, meta_len, "truncated metadata")?)
                .map_err(|e| invalid(&e.to_string()))?;
        let mut len8 = [0u8; 8];
        len8.copy_from_slice(take(&mut buf, 8, "truncated header")?);
        let data_len =
            usize::try_from(u64::from_le_bytes(len8)).map_err(|_| invalid("too large"))?;
        if buf.len() != data_len {
            return Err(invalid("length does not match"));
        }
        Ok((meta, buf.to_vec()))
    }

    /// The newest snapshot file, if any.
    pub fn latest(&self) -> io::Result<Option<PathBuf>> {
        let mut best: Option<PathBuf> = None;
        for entry in fs::read_dir(&self.dir)? {
            let path = entry?.path();
            let is_snapshot = is_snapshot_file(&path);
            let newer = match &best {
                Some(b) => path > *b,
                None => true,
            };
            if is_snapshot && newer {
                best = Some(path);
            }
        }
        Ok(best)
    }

    /// Deletes every snapshot file but `keep`.
    pub fn remove_others(&self, keep: &Path) -> io::Result<()> {
        for entry in fs::read_dir(&self.dir)? {
            let path = entry?.path();
            let is_snapshot = is_snapshot_file(&path);
            if is_snapshot && path != keep {
                fs::remove_file(&path)?;
            }
        }
        Ok(())
    }
}
