//! Container logs in the CRI format the kubelet reads (`<RFC3339Nano> <stream> <P|F>
//! <content>`): one line per line the container wrote, `P` for a partial line (longer
//! than the buffer, or cut by the end of the stream), `F` for the line that ends it.
//! Files rotate by size: `<path>` → `<path>.1` → … up to `max_files`, as the kubelet's
//! containerLogMaxSize/containerLogMaxFiles do.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// Longest line kept as one record (containerd's default buffer size).
pub const MAX_LINE: usize = 16 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

impl Stream {
    fn name(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }
}

/// Rotation limits.
#[derive(Debug, Clone, Copy)]
pub struct Rotation {
    pub max_size: u64,
    pub max_files: usize,
}

impl Default for Rotation {
    /// The kubelet's defaults: 10 MiB, 5 files.
    fn default() -> Self {
        Self {
            max_size: 10 * 1024 * 1024,
            max_files: 5,
        }
    }
}

/// Writes CRI records for both streams of one container.
#[derive(Debug)]
pub struct LogWriter {
    path: PathBuf,
    file: File,
    size: u64,
    rotation: Rotation,
    pending: [Vec<u8>; 2],
}

fn timestamp() -> String {
    // RFC 3339 with nanoseconds, UTC, as the CRI format wants.
    jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%S.%9fZ")
        .to_string()
}

impl LogWriter {
    pub fn open(path: &Path, rotation: Rotation) -> io::Result<Self> {
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent)?;
        }
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        let size = file.metadata()?.len();
        Ok(Self {
            path: path.to_path_buf(),
            file,
            size,
            rotation,
            pending: [Vec::new(), Vec::new()],
        })
    }

    fn record(&mut self, stream: Stream, tag: char, content: &[u8]) -> io::Result<()> {
        let mut line = Vec::with_capacity(content.len() + 48);
        line.extend_from_slice(timestamp().as_bytes());
        line.push(b' ');
        line.extend_from_slice(stream.name().as_bytes());
        line.push(b' ');
        line.push(tag as u8);
        line.push(b' ');
        line.extend_from_slice(content);
        line.push(b'\n');
        if self.size > 0 && self.size + line.len() as u64 > self.rotation.max_size {
            self.rotate()?;
        }
        self.file.write_all(&line)?;
        self.size += line.len() as u64;
        Ok(())
    }

    fn rotate(&mut self) -> io::Result<()> {
        let keep = self.rotation.max_files.max(1);
        let name = |i: usize| PathBuf::from(format!("{}.{i}", self.path.display()));
        // The oldest falls off; the rest shift up by one.
        let _ = fs::remove_file(name(keep - 1));
        for i in (1..keep.saturating_sub(1)).rev() {
            let _ = fs::rename(name(i), name(i + 1));
        }
        if keep > 1 {
            fs::rename(&self.path, name(1))?;
        } else {
            fs::remove_file(&self.path)?;
        }
        self.file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)?;
        self.size = 0;
        Ok(())
    }

    /// Takes bytes the container wrote to `stream`.
    pub fn write(&mut self, stream: Stream, bytes: &[u8]) -> io::Result<()> {
        let idx = stream as usize;
        let mut buf = std::mem::take(&mut self.pending[idx]);
        buf.extend_from_slice(bytes);
        let mut start = 0;
        while let Some(nl) = buf[start..].iter().position(|b| *b == b'\n') {
            let end = start + nl;
            let mut line_start = start;
            while end - line_start > MAX_LINE {
                self.record(stream, 'P', &buf[line_start..line_start + MAX_LINE])?;
                line_start += MAX_LINE;
            }
            self.record(stream, 'F', &buf[line_start..end])?;
            start = end + 1;
        }
        let mut rest = buf.split_off(start);
        while rest.len() > MAX_LINE {
            let tail = rest.split_off(MAX_LINE);
            self.record(stream, 'P', &rest)?;
            rest = tail;
        }
        self.pending[idx] = rest;
        Ok(())
    }

    /// At the end of the streams: whatever is left without a newline is a partial line.
    pub fn flush(&mut self) -> io::Result<()> {
        for stream in [Stream::Stdout, Stream::Stderr] {
            let rest = std::mem::take(&mut self.pending[stream as usize]);
            if !rest.is_empty() {
                self.record(stream, 'P', &rest)?;
            }
        }
        self.file.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(path: &Path) -> Vec<(String, String, String)> {
        fs::read_to_string(path)
            .expect("read log")
            .lines()
            .map(|l| {
                let mut p = l.splitn(4, ' ');
                let _ts = p.next();
                (
                    p.next().unwrap_or_default().to_string(),
                    p.next().unwrap_or_default().to_string(),
                    p.next().unwrap_or_default().to_string(),
                )
            })
            .collect()
    }

    #[test]
    fn lines_partials_and_streams() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("c.log");
        let mut w = LogWriter::open(&path, Rotation::default()).expect("open");
        w.write(Stream::Stdout, b"hello\nwor").expect("write");
        w.write(Stream::Stderr, b"oops\n").expect("write");
        w.write(Stream::Stdout, b"ld\ntail").expect("write");
        w.flush().expect("flush");
        let got = lines(&path);
        let want = [
            ("stdout", "F", "hello"),
            ("stderr", "F", "oops"),
            ("stdout", "F", "world"),
            ("stdout", "P", "tail"),
        ];
        assert_eq!(got.len(), want.len(), "{got:?}");
        for (g, w) in got.iter().zip(want) {
            assert_eq!((g.0.as_str(), g.1.as_str(), g.2.as_str()), w);
        }
        let first = fs::read_to_string(&path).expect("read");
        let ts = first.split(' ').next().expect("ts");
        assert!(ts.ends_with('Z') && ts.len() == 30, "RFC3339Nano: {ts}");
    }

    #[test]
    fn long_lines_split_and_files_rotate() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("c.log");
        let rotation = Rotation {
            max_size: 4096,
            max_files: 3,
        };
        let mut w = LogWriter::open(&path, rotation).expect("open");
        let long = vec![b'x'; MAX_LINE + 10];
        w.write(Stream::Stdout, &long).expect("write");
        w.write(Stream::Stdout, b"\n").expect("write");
        for i in 0..400 {
            w.write(Stream::Stdout, format!("line {i}\n").as_bytes())
                .expect("write");
        }
        w.flush().expect("flush");
        assert!(path.exists());
        assert!(PathBuf::from(format!("{}.1", path.display())).exists());
        assert!(PathBuf::from(format!("{}.2", path.display())).exists());
        assert!(!PathBuf::from(format!("{}.3", path.display())).exists());
        assert!(fs::metadata(&path).expect("meta").len() <= 4096);
        let last = lines(&path);
        assert_eq!(last.last().map(|l| l.2.as_str()), Some("line 399"));
    }
}
