//! The backup file written by `pgwctl backup` and read by `pgwctl restore`.
//!
//! Format version 1, all integers big-endian:
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 8 | magic `PGWBACK\n` |
//! | 8 | 1 | format version (1) |
//! | 9 | 8 | applied log index: the backup holds every write up to it |
//! | 17 | 8 | term of the node that served it |
//! | 25 | 8 | id of the node that served it (the leader, unless taken with `--local`) |
//! | 33 | 8 | creation time, milliseconds since the Unix epoch |
//! | 41 | 8 | group count |
//! | 49 | 8 | data length `n` |
//! | 57 | n | data: the store snapshot (pgw-core `GroupStore::encode_snapshot`, which starts with its own format-version byte) |
//! | 57+n | 4 | CRC-32 (IEEE) of every byte before it |
//!
//! The file is written to `FILE.tmp` in the same directory, fsynced, renamed over `FILE`, and
//! the directory is fsynced: a crash leaves either the old file or the complete new one.

use std::io::Write;
use std::path::{Path, PathBuf};

/// The file's first bytes.
pub const MAGIC: &[u8; 8] = b"PGWBACK\n";
/// The format version this build writes and reads.
pub const VERSION: u8 = 1;
/// Bytes before the data.
pub const HEADER_LEN: usize = 57;

/// The header fields of a backup.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Header {
    /// The backup holds every write up to this log index.
    pub applied_index: u64,
    /// The serving node's term when the backup was taken.
    pub term: u64,
    /// The serving node's id (the leader, unless the backup was local).
    pub node_id: u64,
    /// Creation time, ms since the Unix epoch.
    pub created_ms: u64,
    /// Number of groups.
    pub groups: u64,
    /// Length of the data.
    pub data_len: u64,
}

impl Header {
    /// The encoded header.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER_LEN);
        out.extend_from_slice(MAGIC);
        out.push(VERSION);
        for v in [
            self.applied_index,
            self.term,
            self.node_id,
            self.created_ms,
            self.groups,
            self.data_len,
        ] {
            out.extend_from_slice(&v.to_be_bytes());
        }
        out
    }
}

/// A backup read back and verified.
#[derive(Debug)]
pub struct Backup {
    /// Its header.
    pub header: Header,
    /// The store snapshot.
    pub data: Vec<u8>,
}

/// Decodes and verifies a whole backup file's bytes.
pub fn decode(bytes: &[u8]) -> Result<Backup, String> {
    if bytes.len() < MAGIC.len() || &bytes[..MAGIC.len()] != MAGIC {
        return Err("not a pgw backup (it does not start with the PGWBACK magic)".into());
    }
    if bytes.len() < HEADER_LEN + 4 {
        return Err(format!(
            "truncated: {} bytes, shorter than the header",
            bytes.len()
        ));
    }
    if bytes[8] != VERSION {
        return Err(format!(
            "backup format version {} is not supported by this pgwctl (it reads version {VERSION}); \
             use the pgwctl release that wrote it",
            bytes[8]
        ));
    }
    let field = |i: usize| {
        let at = 9 + 8 * i;
        let mut b = [0u8; 8];
        b.copy_from_slice(&bytes[at..at + 8]);
        u64::from_be_bytes(b)
    };
    let header = Header {
        applied_index: field(0),
        term: field(1),
        node_id: field(2),
        created_ms: field(3),
        groups: field(4),
        data_len: field(5),
    };
    let expected = (HEADER_LEN as u64)
        .checked_add(header.data_len)
        .and_then(|n| n.checked_add(4));
    if expected != Some(bytes.len() as u64) {
        return Err(format!(
            "truncated or padded: the header announces {} data bytes, the file has {} bytes in all",
            header.data_len,
            bytes.len()
        ));
    }
    let (body, crc) = bytes.split_at(bytes.len() - 4);
    let mut c = [0u8; 4];
    c.copy_from_slice(crc);
    if crc32fast::hash(body) != u32::from_be_bytes(c) {
        return Err("corrupt: the CRC-32 does not match the content".into());
    }
    Ok(Backup {
        header,
        data: body[HEADER_LEN..].to_vec(),
    })
}

/// Writes a backup to `path` atomically: into `path.tmp`, fsynced, renamed, directory fsynced.
/// `data` is fed piece by piece (so a large backup needs no second copy in memory); the
/// writer returns the temporary file on failure, and removes it.
pub struct AtomicWriter {
    path: PathBuf,
    tmp: PathBuf,
    file: Option<std::io::BufWriter<std::fs::File>>,
    crc: crc32fast::Hasher,
}

impl AtomicWriter {
    /// Creates `path.tmp` and writes the header.
    pub fn create(path: &Path, header: &Header) -> Result<AtomicWriter, String> {
        let mut name = path
            .file_name()
            .ok_or_else(|| format!("{} is not a file name", path.display()))?
            .to_os_string();
        name.push(".tmp");
        let tmp = path.with_file_name(name);
        let file = std::fs::File::create(&tmp)
            .map_err(|e| format!("cannot create {}: {e}", tmp.display()))?;
        let mut w = AtomicWriter {
            path: path.to_path_buf(),
            tmp,
            file: Some(std::io::BufWriter::with_capacity(1 << 20, file)),
            crc: crc32fast::Hasher::new(),
        };
        w.write(&header.encode())?;
        Ok(w)
    }

    /// Appends `data`.
    pub fn write(&mut self, data: &[u8]) -> Result<(), String> {
        self.crc.update(data);
        let tmp = self.tmp.display().to_string();
        match self.file.as_mut() {
            Some(f) => f
                .write_all(data)
                .map_err(|e| format!("cannot write {tmp}: {e}")),
            None => Err(format!("{tmp} is already closed")),
        }
    }

    /// Writes the CRC, fsyncs, renames over the target and fsyncs the directory.
    pub fn finish(mut self) -> Result<(), String> {
        let crc = self.crc.clone().finalize();
        let tmp = self.tmp.display().to_string();
        let mut f = self
            .file
            .take()
            .ok_or_else(|| format!("{tmp} is already closed"))?;
        f.write_all(&crc.to_be_bytes())
            .map_err(|e| format!("cannot write {tmp}: {e}"))?;
        let file = f
            .into_inner()
            .map_err(|e| format!("cannot write {tmp}: {}", e.error()))?;
        file.sync_all()
            .map_err(|e| format!("cannot fsync {tmp}: {e}"))?;
        drop(file);
        std::fs::rename(&self.tmp, &self.path)
            .map_err(|e| format!("cannot rename {tmp} to {}: {e}", self.path.display()))?;
        let dir = match self.path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        if let Ok(d) = std::fs::File::open(&dir) {
            d.sync_all()
                .map_err(|e| format!("cannot fsync directory {}: {e}", dir.display()))?;
        }
        Ok(())
    }
}

impl Drop for AtomicWriter {
    fn drop(&mut self) {
        // Not finished: leave no partial file behind.
        if self.file.take().is_some() {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header() -> Header {
        Header {
            applied_index: 42,
            term: 3,
            node_id: 2,
            created_ms: 1_700_000_000_000,
            groups: 7,
            data_len: 5,
        }
    }

    #[test]
    fn round_trip_and_atomic_write() {
        let dir = std::env::temp_dir().join(format!("pgwctl-backup-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("b.bin");
        let mut w = AtomicWriter::create(&path, &header()).unwrap();
        w.write(b"ab").unwrap();
        w.write(b"cde").unwrap();
        assert!(!path.exists(), "nothing at the target before finish");
        w.finish().unwrap();
        assert!(!dir.join("b.bin.tmp").exists());
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(bytes.len(), HEADER_LEN + 5 + 4);
        let b = decode(&bytes).unwrap();
        assert_eq!(b.header, header());
        assert_eq!(b.data, b"abcde");

        // Every kind of damage is detected.
        let mut flipped = bytes.clone();
        flipped[HEADER_LEN + 1] ^= 1;
        assert!(decode(&flipped).unwrap_err().contains("CRC"));
        assert!(
            decode(&bytes[..bytes.len() - 1])
                .unwrap_err()
                .contains("truncated")
        );
        assert!(decode(b"hello").unwrap_err().contains("not a pgw backup"));
        let mut v2 = bytes.clone();
        v2[8] = 2;
        assert!(decode(&v2).unwrap_err().contains("version 2"));

        // An abandoned writer leaves nothing behind.
        let other = dir.join("c.bin");
        let w = AtomicWriter::create(&other, &header()).unwrap();
        drop(w);
        assert!(!dir.join("c.bin.tmp").exists());
        assert!(!other.exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
