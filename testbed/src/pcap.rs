//! Classic libpcap capture files (not pcapng): microsecond timestamps,
//! `LINKTYPE_ETHERNET`, as Wireshark, tshark and tcpdump read them.
//!
//! The writer writes the little-endian form; the reader accepts both byte
//! orders and nanosecond-resolution files too.

use std::fs::File;
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::Path;
use std::time::Duration;

use thiserror::Error;

/// The magic number of microsecond-resolution files.
pub const MAGIC_MICROS: u32 = 0xa1b2_c3d4;
/// The magic number of nanosecond-resolution files.
pub const MAGIC_NANOS: u32 = 0xa1b2_3c4d;
/// `LINKTYPE_ETHERNET`.
pub const LINKTYPE_ETHERNET: u32 = 1;
/// The snapshot length written (the largest frame kept whole).
pub const SNAPLEN: u32 = 65535;

const GLOBAL_HEADER_LEN: usize = 24;
const RECORD_HEADER_LEN: usize = 16;
/// Records larger than this are refused on read: a corrupt length field
/// must not make the reader allocate gigabytes.
const MAX_RECORD: u32 = 256 * 1024;

#[derive(Debug, Error)]
pub enum PcapError {
    #[error("pcap I/O error: {0}")]
    Io(#[from] io::Error),
    #[error(
        "not a classic pcap file (magic {0:#010x}); convert pcapng files with `editcap -F pcap`"
    )]
    BadMagic(u32),
    #[error("pcap link type {0} is not Ethernet (1); capture on an Ethernet interface")]
    LinkType(u32),
    #[error("pcap file truncated inside {what}; the capture was cut short, re-capture or trim it with editcap")]
    Truncated { what: &'static str },
    #[error("pcap record of {len} bytes is larger than the {max}-byte limit; the file is corrupt")]
    RecordTooBig { len: u32, max: u32 },
    #[error("frame of {len} bytes is larger than the snapshot length {SNAPLEN}")]
    FrameTooBig { len: usize },
}

/// One captured frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    /// Time since the Unix epoch.
    pub ts: Duration,
    /// The frame's length on the wire (≥ `data.len()` when cut by the
    /// snapshot length).
    pub orig_len: u32,
    pub data: Vec<u8>,
}

/// Writes a pcap stream.
pub struct PcapWriter<W: Write> {
    out: W,
}

impl PcapWriter<BufWriter<File>> {
    /// Creates (or truncates) the file at `path` and writes its header.
    pub fn create(path: impl AsRef<Path>) -> Result<Self, PcapError> {
        PcapWriter::new(BufWriter::new(File::create(path)?))
    }
}

impl<W: Write> PcapWriter<W> {
    /// Writes the global header to `out`.
    pub fn new(mut out: W) -> Result<Self, PcapError> {
        let mut h = [0u8; GLOBAL_HEADER_LEN];
        h[0..4].copy_from_slice(&MAGIC_MICROS.to_le_bytes());
        h[4..6].copy_from_slice(&2u16.to_le_bytes());
        h[6..8].copy_from_slice(&4u16.to_le_bytes());
        // thiszone and sigfigs stay 0.
        h[16..20].copy_from_slice(&SNAPLEN.to_le_bytes());
        h[20..24].copy_from_slice(&LINKTYPE_ETHERNET.to_le_bytes());
        out.write_all(&h)?;
        Ok(PcapWriter { out })
    }

    /// Appends one frame captured at `ts` (since the Unix epoch).
    pub fn write(&mut self, ts: Duration, frame: &[u8]) -> Result<(), PcapError> {
        let len = u32::try_from(frame.len())
            .ok()
            .filter(|l| *l <= SNAPLEN)
            .ok_or(PcapError::FrameTooBig { len: frame.len() })?;
        let secs = u32::try_from(ts.as_secs()).unwrap_or(u32::MAX);
        let mut h = [0u8; RECORD_HEADER_LEN];
        h[0..4].copy_from_slice(&secs.to_le_bytes());
        h[4..8].copy_from_slice(&ts.subsec_micros().to_le_bytes());
        h[8..12].copy_from_slice(&len.to_le_bytes());
        h[12..16].copy_from_slice(&len.to_le_bytes());
        self.out.write_all(&h)?;
        self.out.write_all(frame)?;
        Ok(())
    }

    /// Flushes and returns the underlying writer.
    pub fn finish(mut self) -> Result<W, PcapError> {
        self.out.flush()?;
        Ok(self.out)
    }
}

/// Reads a pcap stream record by record (an iterator of records).
pub struct PcapReader<R: Read> {
    input: R,
    big_endian: bool,
    nanos: bool,
    snaplen: u32,
}

impl PcapReader<BufReader<File>> {
    pub fn open(path: impl AsRef<Path>) -> Result<Self, PcapError> {
        PcapReader::new(BufReader::new(File::open(path)?))
    }
}

/// Fills `buf`; `Ok(false)` at a clean end of input (nothing read).
fn read_exact_or_eof(
    r: &mut impl Read,
    buf: &mut [u8],
    what: &'static str,
) -> Result<bool, PcapError> {
    let mut filled = 0;
    while filled < buf.len() {
        match r.read(&mut buf[filled..]) {
            Ok(0) if filled == 0 => return Ok(false),
            Ok(0) => return Err(PcapError::Truncated { what }),
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(true)
}

impl<R: Read> PcapReader<R> {
    /// Reads and checks the global header.
    pub fn new(mut input: R) -> Result<Self, PcapError> {
        let mut h = [0u8; GLOBAL_HEADER_LEN];
        if !read_exact_or_eof(&mut input, &mut h, "the file header")? {
            return Err(PcapError::Truncated {
                what: "the file header",
            });
        }
        let le = u32::from_le_bytes([h[0], h[1], h[2], h[3]]);
        let be = u32::from_be_bytes([h[0], h[1], h[2], h[3]]);
        let (big_endian, nanos) = match (le, be) {
            (MAGIC_MICROS, _) => (false, false),
            (MAGIC_NANOS, _) => (false, true),
            (_, MAGIC_MICROS) => (true, false),
            (_, MAGIC_NANOS) => (true, true),
            _ => return Err(PcapError::BadMagic(le)),
        };
        let word = |b: &[u8]| {
            let a = [b[0], b[1], b[2], b[3]];
            if big_endian {
                u32::from_be_bytes(a)
            } else {
                u32::from_le_bytes(a)
            }
        };
        let snaplen = word(&h[16..20]);
        let linktype = word(&h[20..24]) & 0x0fff_ffff; // high bits: FCS info
        if linktype != LINKTYPE_ETHERNET {
            return Err(PcapError::LinkType(linktype));
        }
        Ok(PcapReader {
            input,
            big_endian,
            nanos,
            snaplen,
        })
    }

    /// The file's snapshot length.
    pub fn snaplen(&self) -> u32 {
        self.snaplen
    }

    fn word(&self, b: &[u8]) -> u32 {
        let a = [b[0], b[1], b[2], b[3]];
        if self.big_endian {
            u32::from_be_bytes(a)
        } else {
            u32::from_le_bytes(a)
        }
    }

    /// The next record, `None` at the end of the file.
    pub fn next_record(&mut self) -> Result<Option<Record>, PcapError> {
        let mut h = [0u8; RECORD_HEADER_LEN];
        if !read_exact_or_eof(&mut self.input, &mut h, "a record header")? {
            return Ok(None);
        }
        let secs = self.word(&h[0..4]);
        let frac = self.word(&h[4..8]);
        let incl = self.word(&h[8..12]);
        let orig_len = self.word(&h[12..16]);
        if incl > MAX_RECORD {
            return Err(PcapError::RecordTooBig {
                len: incl,
                max: MAX_RECORD,
            });
        }
        let mut data = vec![0u8; incl as usize];
        if !read_exact_or_eof(&mut self.input, &mut data, "a record")? && incl > 0 {
            return Err(PcapError::Truncated { what: "a record" });
        }
        let nanos = if self.nanos {
            frac
        } else {
            frac.saturating_mul(1000)
        };
        let ts = Duration::new(u64::from(secs), 0) + Duration::from_nanos(u64::from(nanos));
        Ok(Some(Record { ts, orig_len, data }))
    }
}

impl<R: Read> Iterator for PcapReader<R> {
    type Item = Result<Record, PcapError>;
    fn next(&mut self) -> Option<Self::Item> {
        self.next_record().transpose()
    }
}

/// Writes `frames` to a new file at `path`, one microsecond apart from
/// `start`.
pub fn write_file<'a>(
    path: impl AsRef<Path>,
    start: Duration,
    frames: impl IntoIterator<Item = &'a [u8]>,
) -> Result<usize, PcapError> {
    let mut w = PcapWriter::create(path)?;
    let mut n = 0u64;
    for f in frames {
        w.write(start + Duration::from_micros(n), f)?;
        n += 1;
    }
    w.finish()?;
    Ok(n as usize)
}

/// Every frame of the file at `path`.
pub fn read_file(path: impl AsRef<Path>) -> Result<Vec<Vec<u8>>, PcapError> {
    PcapReader::open(path)?
        .map(|r| r.map(|rec| rec.data))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_env;
    use std::io::Cursor;

    fn frames() -> Vec<Vec<u8>> {
        vec![vec![0xaa; 60], (0..=255).collect(), vec![1, 2, 3]]
    }

    #[test]
    fn write_then_read_back() {
        let mut w = PcapWriter::new(Vec::new()).unwrap();
        let t0 = Duration::new(1_700_000_000, 123_456_000);
        for (i, f) in frames().iter().enumerate() {
            w.write(t0 + Duration::from_micros(i as u64), f).unwrap();
        }
        let bytes = w.finish().unwrap();
        assert_eq!(&bytes[..4], &[0xd4, 0xc3, 0xb2, 0xa1]);
        assert_eq!(bytes.len(), 24 + 3 * 16 + 60 + 256 + 3);
        let records: Vec<Record> = PcapReader::new(Cursor::new(bytes))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(records.len(), 3);
        for (i, (r, f)) in records.iter().zip(frames()).enumerate() {
            assert_eq!(r.data, f);
            assert_eq!(r.orig_len as usize, f.len());
            assert_eq!(r.ts, t0 + Duration::from_micros(i as u64));
        }
    }

    #[test]
    fn reads_big_endian_nanosecond_files() {
        let mut b = Vec::new();
        b.extend_from_slice(&MAGIC_NANOS.to_be_bytes());
        b.extend_from_slice(&2u16.to_be_bytes());
        b.extend_from_slice(&4u16.to_be_bytes());
        b.extend_from_slice(&[0; 8]);
        b.extend_from_slice(&SNAPLEN.to_be_bytes());
        b.extend_from_slice(&1u32.to_be_bytes());
        b.extend_from_slice(&5u32.to_be_bytes());
        b.extend_from_slice(&7u32.to_be_bytes());
        b.extend_from_slice(&2u32.to_be_bytes());
        b.extend_from_slice(&64u32.to_be_bytes());
        b.extend_from_slice(&[9, 8]);
        let mut r = PcapReader::new(Cursor::new(b)).unwrap();
        let rec = r.next_record().unwrap().unwrap();
        assert_eq!(rec.ts, Duration::new(5, 7));
        assert_eq!(rec.orig_len, 64);
        assert_eq!(rec.data, vec![9, 8]);
        assert!(r.next_record().unwrap().is_none());
    }

    #[test]
    fn refuses_garbage_and_truncation() {
        assert!(matches!(
            PcapReader::new(Cursor::new(vec![0u8; 24])),
            Err(PcapError::BadMagic(0))
        ));
        assert!(matches!(
            PcapReader::new(Cursor::new(vec![0xd4, 0xc3])),
            Err(PcapError::Truncated { .. })
        ));
        let mut w = PcapWriter::new(Vec::new()).unwrap();
        w.write(Duration::ZERO, &[1; 40]).unwrap();
        let mut bytes = w.finish().unwrap();
        bytes.truncate(bytes.len() - 1);
        let mut r = PcapReader::new(Cursor::new(bytes)).unwrap();
        assert!(matches!(r.next_record(), Err(PcapError::Truncated { .. })));
        let mut other_link = PcapWriter::new(Vec::new()).unwrap().finish().unwrap();
        other_link[20] = 113; // Linux cooked capture
        assert!(matches!(
            PcapReader::new(Cursor::new(other_link)),
            Err(PcapError::LinkType(113))
        ));
    }

    #[test]
    fn files_round_trip_and_tcpdump_reads_them() {
        use crate::build;
        use std::net::Ipv4Addr;
        let dir = std::env::temp_dir().join(format!("flowmark-pcap-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("t.pcap");
        let (a, b) = (Ipv4Addr::new(10, 1, 0, 1), Ipv4Addr::new(192, 168, 200, 3));
        let fs = vec![
            build::udp4(a, b, 2152, 2152, &[0; 20]),
            build::tcp4(a, b, 40000, 80),
            build::push_tag(&build::udp4(b, a, 53, 5353, &[1; 4]), 0x8100, 100),
        ];
        let n = write_file(
            &path,
            Duration::new(1_000, 0),
            fs.iter().map(|f| f.as_slice()),
        )
        .unwrap();
        assert_eq!(n, 3);
        assert_eq!(read_file(&path).unwrap(), fs);
        // Cross-check with a real reader (scripts/test installs tcpdump and
        // requires it); a tcpdump that runs but fails to read is a failure.
        if test_env::oracle("tcpdump", "--version", "tcpdump") {
            let out = std::process::Command::new("tcpdump")
                .args(["-nn", "-e", "-r"])
                .arg(&path)
                .output()
                .expect("run tcpdump");
            let text = String::from_utf8_lossy(&out.stdout);
            assert!(
                out.status.success(),
                "tcpdump could not read the file: {}{text}",
                String::from_utf8_lossy(&out.stderr)
            );
            let records: Vec<&str> = text
                .lines()
                .filter(|l| !l.starts_with(char::is_whitespace))
                .collect();
            assert_eq!(records.len(), 3, "tcpdump read: {text}");
            assert!(
                records[0].contains("10.1.0.1.2152 > 192.168.200.3.2152: UDP"),
                "{text}"
            );
            assert!(records[1].contains("Flags [S]"), "{text}");
            assert!(records[2].contains("vlan 100"), "{text}");
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
