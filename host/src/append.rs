//! An append-only JSON-lines file that never glues or repeats a record.
//!
//! Used by the audit sink and the dead-letter store. On open, a torn tail (no
//! final newline after a crash, or an unreadable last line) is cut, loudly, so the
//! next record starts on a line of its own. An append that fails part-way (a short
//! write or ENOSPC mid-batch, a failed fsync) is rolled back to the last length
//! known good before the error is returned, so a retry writes the batch once.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

pub struct AppendFile {
    path: PathBuf,
    file: File,
    /// Length up to which the file holds whole, fsynced lines.
    good: u64,
    /// A rollback failed: the tail past `good` must be cut before the next write.
    dirty: bool,
}

impl AppendFile {
    /// Opens or creates `path` (`what` names it in errors), cutting a torn tail.
    pub fn open(path: &Path, what: &str) -> anyhow::Result<AppendFile> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| anyhow::anyhow!("cannot create the folder of {what} {}: {e}", dir.display()))?;
        }
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .read(true)
            .append(true)
            .open(path)
            .map_err(|e| anyhow::anyhow!("cannot open {what} {}: {e}", path.display()))?;
        let len = file.metadata().map_err(|e| anyhow::anyhow!("cannot read {what} {}: {e}", path.display()))?.len();
        let good = whole_lines_len(&mut file, len).map_err(|e| anyhow::anyhow!("cannot read {what} {}: {e}", path.display()))?;
        if good < len {
            tracing::error!(
                path = %path.display(),
                bytes_cut = len - good,
                "{what}: cutting a torn last line ({} bytes from offset {good}) left by a crash or a full disk; its events were never checkpointed and are replayed",
                len - good
            );
            file.set_len(good).and_then(|_| file.sync_all()).map_err(|e| anyhow::anyhow!("cannot cut the torn tail of {what} {}: {e}", path.display()))?;
        }
        Ok(AppendFile { path: path.to_path_buf(), file, good, dirty: false })
    }

    /// Appends `bytes` (whole lines) and fsyncs; on any error the file is cut
    /// back to its last good length before the error is returned.
    pub fn append(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        if self.dirty {
            self.rollback()?;
        }
        let res = self.file.write_all(bytes).and_then(|_| self.file.sync_data());
        match res {
            Ok(()) => {
                self.good += bytes.len() as u64;
                Ok(())
            }
            Err(e) => {
                // A failed rollback is retried before the next write: never append
                // after a fragment.
                self.dirty = self.rollback().is_err();
                Err(e)
            }
        }
    }

    fn rollback(&mut self) -> std::io::Result<()> {
        self.file.set_len(self.good)?;
        self.file.sync_data()?;
        self.dirty = false;
        Ok(())
    }

    /// Length of the whole, durable lines.
    pub fn len(&self) -> u64 {
        self.good
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// The length of `file` without a torn tail: up to the last newline, and without
/// the last line if it is not JSON. Reads only the last line.
fn whole_lines_len(file: &mut File, len: u64) -> std::io::Result<u64> {
    let Some(end) = last_newline_before(file, len)? else { return Ok(0) };
    let end = end + 1;
    if end < len {
        return Ok(end); // no final newline: the fragment after it is torn
    }
    // The last line is whole; is it a record? (A crash can leave zeros or junk.)
    let start = last_newline_before(file, end - 1)?.map_or(0, |n| n + 1);
    let mut line = vec![0; (end - start) as usize];
    file.seek(SeekFrom::Start(start))?;
    file.read_exact(&mut line)?;
    if is_json(&line) {
        Ok(end)
    } else {
        Ok(start)
    }
}

/// The offset of the last `\n` before `before`, reading backwards in blocks.
fn last_newline_before(file: &mut File, before: u64) -> std::io::Result<Option<u64>> {
    let mut end = before;
    let mut buf = vec![0u8; 64 * 1024];
    while end > 0 {
        let start = end.saturating_sub(buf.len() as u64);
        let chunk = &mut buf[..(end - start) as usize];
        file.seek(SeekFrom::Start(start))?;
        file.read_exact(chunk)?;
        if let Some(i) = chunk.iter().rposition(|&b| b == b'\n') {
            return Ok(Some(start + i as u64));
        }
        end = start;
    }
    Ok(None)
}

/// Whether `line` is one JSON value. Records nested deeper than serde_json's
/// recursion limit are ones this host wrote whole: they count as JSON.
fn is_json(line: &[u8]) -> bool {
    match serde_json::from_slice::<serde::de::IgnoredAny>(line) {
        Ok(_) => true,
        Err(e) => e.to_string().starts_with("recursion limit exceeded"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("oplet-append-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir.join("f.jsonl")
    }

    #[test]
    fn a_line_without_its_newline_is_cut_and_the_next_record_starts_clean() {
        let path = temp("torn");
        std::fs::write(&path, "{\"a\":1}\n{\"a\":2}\n{\"a\":").unwrap();
        let mut f = AppendFile::open(&path, "test file").unwrap();
        assert_eq!(f.len(), 16);
        f.append(b"{\"a\":3}\n").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "{\"a\":1}\n{\"a\":2}\n{\"a\":3}\n");
    }

    #[test]
    fn an_unreadable_last_line_is_cut_but_a_deep_record_is_kept() {
        let path = temp("junk");
        std::fs::write(&path, "{\"a\":1}\n\0\0\0\0\n").unwrap();
        assert_eq!(AppendFile::open(&path, "test file").unwrap().len(), 8);
        let deep = format!("{}{}\n", "[".repeat(1000), "]".repeat(1000));
        std::fs::write(&path, format!("{{\"a\":1}}\n{deep}")).unwrap();
        assert_eq!(AppendFile::open(&path, "test file").unwrap().len(), 8 + deep.len() as u64);
    }

    #[test]
    fn a_file_of_one_fragment_is_emptied_and_an_empty_one_is_left_alone() {
        let path = temp("frag");
        std::fs::write(&path, "{\"a\"").unwrap();
        assert_eq!(AppendFile::open(&path, "test file").unwrap().len(), 0);
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 0);
        assert_eq!(AppendFile::open(&path, "test file").unwrap().len(), 0);
    }
}
