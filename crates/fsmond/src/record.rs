//! The pure parser of fanotify's record stream (what `read(2)` of a group
//! in FID mode returns): bytes in, records out, any bytes an error rather
//! than a panic.
//!
//! Each record is a `fanotify_event_metadata` (24 bytes: `event_len`,
//! `vers`, `reserved`, `metadata_len`, `mask`, `fd`, `pid`) followed by
//! information records, each a 4-byte header (`info_type`, `pad`, `len`)
//! and its body. fsmond reads the file-handle kinds (`FID`, `DFID`,
//! `DFID_NAME`, `OLD_DFID_NAME`, `NEW_DFID_NAME`: `fsid`, a `file_handle`
//! and, for the named kinds, a NUL-terminated name) and skips the others
//! by their length.
//!
//! ```
//! use fsmond::record::{parse_records, FidKind};
//!
//! let mut bytes = Vec::new();
//! let info_len: u16 = 4 + 8 + 8 + 8 + 4; // header, fsid, handle header, handle, "ab\0" padded
//! bytes.extend_from_slice(&(24 + u32::from(info_len)).to_ne_bytes()); // event_len
//! bytes.extend_from_slice(&[3, 0]); // vers, reserved
//! bytes.extend_from_slice(&24u16.to_ne_bytes()); // metadata_len
//! bytes.extend_from_slice(&0x100u64.to_ne_bytes()); // FAN_CREATE
//! bytes.extend_from_slice(&(-1i32).to_ne_bytes()); // FAN_NOFD
//! bytes.extend_from_slice(&42i32.to_ne_bytes()); // pid
//! bytes.extend_from_slice(&[2, 0]); // FAN_EVENT_INFO_TYPE_DFID_NAME
//! bytes.extend_from_slice(&info_len.to_ne_bytes());
//! bytes.extend_from_slice(&[1, 0, 0, 0, 2, 0, 0, 0]); // fsid
//! bytes.extend_from_slice(&8u32.to_ne_bytes()); // handle_bytes
//! bytes.extend_from_slice(&1i32.to_ne_bytes()); // handle_type
//! bytes.extend_from_slice(&[9; 8]); // the handle
//! bytes.extend_from_slice(b"ab\0\0");
//!
//! let records = parse_records(&bytes)?;
//! assert_eq!((records[0].mask, records[0].pid), (0x100, 42));
//! let fid = records[0].fid(FidKind::DirName).unwrap();
//! assert_eq!((fid.handle, fid.name), (&[9u8; 8][..], Some(&b"ab"[..])));
//! # Ok::<(), fsmond::record::ParseError>(())
//! ```

use std::fmt;

/// The size of `fanotify_event_metadata`.
pub const METADATA_LEN: usize = 24;
/// `FANOTIFY_METADATA_VERSION`.
pub const METADATA_VERSION: u8 = 3;
/// `FAN_NOFD`: the record carries no descriptor.
pub const NOFD: i32 = -1;

/// What was wrong with the bytes, and at which offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("bad fanotify record at byte {offset}: {what}")]
pub struct ParseError {
    /// Offset into the buffer.
    pub offset: usize,
    /// What was wrong.
    pub what: &'static str,
}

/// Which file-handle information record (`FAN_EVENT_INFO_TYPE_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FidKind {
    /// `FID` (1): the object itself.
    Object,
    /// `DFID_NAME` (2): the directory and the entry's name.
    DirName,
    /// `DFID` (3): the directory.
    Dir,
    /// `OLD_DFID_NAME` (10): a rename's source directory and name.
    OldDirName,
    /// `NEW_DFID_NAME` (12): a rename's target directory and name.
    NewDirName,
}

impl FidKind {
    fn from_info_type(t: u8) -> Option<Self> {
        Some(match t {
            1 => Self::Object,
            2 => Self::DirName,
            3 => Self::Dir,
            10 => Self::OldDirName,
            12 => Self::NewDirName,
            _ => return None,
        })
    }

    /// The `info_type` byte.
    pub const fn info_type(self) -> u8 {
        match self {
            Self::Object => 1,
            Self::DirName => 2,
            Self::Dir => 3,
            Self::OldDirName => 10,
            Self::NewDirName => 12,
        }
    }

    const fn named(self) -> bool {
        matches!(self, Self::DirName | Self::OldDirName | Self::NewDirName)
    }
}

/// A file-handle information record, borrowing the buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fid<'a> {
    /// Which one.
    pub kind: FidKind,
    /// The filesystem's id (`__kernel_fsid_t`, its two words as read).
    pub fsid: [i32; 2],
    /// `file_handle.handle_type`.
    pub handle_type: i32,
    /// `file_handle.f_handle`, `handle_bytes` long.
    pub handle: &'a [u8],
    /// The entry's name, without its NUL (named kinds only).
    pub name: Option<&'a [u8]>,
}

/// One event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record<'a> {
    /// `FAN_*` bits; the kernel merges queued events on one object, so
    /// several may be set.
    pub mask: u64,
    /// A descriptor of the object ([`NOFD`] in FID mode).
    pub fd: i32,
    /// The process (thread group) that caused it; `0` when unknown.
    pub pid: i32,
    /// Its file-handle records, in order.
    pub fids: Vec<Fid<'a>>,
}

impl<'a> Record<'a> {
    /// The first file-handle record of `kind`.
    pub fn fid(&self, kind: FidKind) -> Option<&Fid<'a>> {
        self.fids.iter().find(|f| f.kind == kind)
    }
}

impl fmt::Display for Fid<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:?} fsid {:?} type {}",
            self.kind, self.fsid, self.handle_type
        )
    }
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(b.get(at..at + 2)?.try_into().ok()?))
}
fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(at..at + 4)?.try_into().ok()?))
}
fn i32_at(b: &[u8], at: usize) -> Option<i32> {
    Some(i32::from_ne_bytes(b.get(at..at + 4)?.try_into().ok()?))
}
fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_ne_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

/// Parses every record in `bytes` (what one `read` returned).
///
/// # Errors
/// [`ParseError`] for a record shorter than its header, longer than the
/// buffer, of another metadata version, or with an information record
/// that does not fit or is malformed.
pub fn parse_records(bytes: &[u8]) -> Result<Vec<Record<'_>>, ParseError> {
    let mut out = Vec::new();
    let mut at = 0;
    while at < bytes.len() {
        let err = |what| ParseError { offset: at, what };
        let rest = &bytes[at..];
        if rest.len() < METADATA_LEN {
            return Err(err("truncated metadata"));
        }
        let event_len = u32_at(rest, 0).ok_or(err("truncated metadata"))? as usize;
        if rest[4] != METADATA_VERSION {
            return Err(err("unknown metadata version"));
        }
        let metadata_len = usize::from(u16_at(rest, 6).ok_or(err("truncated metadata"))?);
        if metadata_len < METADATA_LEN || metadata_len > event_len {
            return Err(err("bad metadata_len"));
        }
        if event_len > rest.len() {
            return Err(err("event_len beyond the buffer"));
        }
        let event = &rest[..event_len];
        let mask = u64_at(event, 8).ok_or(err("truncated metadata"))?;
        let fd = i32_at(event, 16).ok_or(err("truncated metadata"))?;
        let pid = i32_at(event, 20).ok_or(err("truncated metadata"))?;
        let fids = parse_infos(&event[metadata_len..]).map_err(|(off, what)| ParseError {
            offset: at + metadata_len + off,
            what,
        })?;
        out.push(Record {
            mask,
            fd,
            pid,
            fids,
        });
        at += event_len;
    }
    Ok(out)
}

fn parse_infos(mut b: &[u8]) -> Result<Vec<Fid<'_>>, (usize, &'static str)> {
    let mut fids = Vec::new();
    let mut off = 0;
    while !b.is_empty() {
        if b.len() < 4 {
            return Err((off, "truncated info header"));
        }
        let info_type = b[0];
        let len = usize::from(u16_at(b, 2).ok_or((off, "truncated info header"))?);
        if len < 4 || len > b.len() {
            return Err((off, "bad info len"));
        }
        let info = &b[..len];
        if let Some(kind) = FidKind::from_info_type(info_type) {
            fids.push(parse_fid(kind, info).map_err(|what| (off, what))?);
        }
        b = &b[len..];
        off += len;
    }
    Ok(fids)
}

fn parse_fid(kind: FidKind, info: &[u8]) -> Result<Fid<'_>, &'static str> {
    const HANDLE_AT: usize = 4 + 8 + 8;
    if info.len() < HANDLE_AT {
        return Err("truncated fid");
    }
    let fsid = [
        i32_at(info, 4).ok_or("truncated fid")?,
        i32_at(info, 8).ok_or("truncated fid")?,
    ];
    let handle_bytes = u32_at(info, 12).ok_or("truncated fid")? as usize;
    let handle_type = i32_at(info, 16).ok_or("truncated fid")?;
    let end = HANDLE_AT
        .checked_add(handle_bytes)
        .filter(|&e| e <= info.len())
        .ok_or("file handle beyond its info record")?;
    let handle = &info[HANDLE_AT..end];
    let name = if kind.named() {
        let tail = &info[end..];
        let nul = tail
            .iter()
            .position(|&c| c == 0)
            .ok_or("name without its NUL")?;
        Some(&tail[..nul])
    } else {
        None
    };
    Ok(Fid {
        kind,
        fsid,
        handle_type,
        handle,
        name,
    })
}

/// Encodes records as the kernel lays them out (names NUL-terminated,
/// information records padded to 4 bytes): the inverse of
/// [`parse_records`], for tests and benches.
pub fn encode_records(records: &[Record<'_>]) -> Vec<u8> {
    let mut out = Vec::new();
    for r in records {
        let mut infos = Vec::new();
        for f in &r.fids {
            let mut body = Vec::new();
            body.extend_from_slice(&f.fsid[0].to_ne_bytes());
            body.extend_from_slice(&f.fsid[1].to_ne_bytes());
            body.extend_from_slice(&u32::try_from(f.handle.len()).unwrap_or(0).to_ne_bytes());
            body.extend_from_slice(&f.handle_type.to_ne_bytes());
            body.extend_from_slice(f.handle);
            if let Some(name) = f.name {
                body.extend_from_slice(name);
                body.push(0);
            }
            let len = (4 + body.len()).div_ceil(4) * 4;
            infos.push(f.kind.info_type());
            infos.push(0);
            infos.extend_from_slice(&u16::try_from(len).unwrap_or(0).to_ne_bytes());
            infos.extend_from_slice(&body);
            infos.resize(infos.len() + len - 4 - body.len(), 0);
        }
        let event_len = u32::try_from(METADATA_LEN + infos.len()).unwrap_or(0);
        out.extend_from_slice(&event_len.to_ne_bytes());
        out.extend_from_slice(&[METADATA_VERSION, 0]);
        out.extend_from_slice(&24u16.to_ne_bytes());
        out.extend_from_slice(&r.mask.to_ne_bytes());
        out.extend_from_slice(&r.fd.to_ne_bytes());
        out.extend_from_slice(&r.pid.to_ne_bytes());
        out.extend_from_slice(&infos);
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use proptest::prelude::*;

    use super::*;

    fn fid(kind: FidKind, name: Option<&'static [u8]>) -> Fid<'static> {
        Fid {
            kind,
            fsid: [0x1234, -7],
            handle_type: 1,
            handle: &[1, 2, 3, 4, 5, 6, 7, 8],
            name,
        }
    }

    #[test]
    fn a_rename_carries_both_names() {
        let r = Record {
            mask: 0x1000_0000,
            fd: NOFD,
            pid: 77,
            fids: vec![
                fid(FidKind::OldDirName, Some(b"old")),
                fid(FidKind::NewDirName, Some(b"new.conf")),
            ],
        };
        let bytes = encode_records(std::slice::from_ref(&r));
        let parsed = parse_records(&bytes).unwrap();
        assert_eq!(parsed, [r]);
        assert_eq!(
            parsed[0].fid(FidKind::OldDirName).unwrap().name,
            Some(&b"old"[..])
        );
    }

    #[test]
    fn an_overflow_record_has_no_fid() {
        let r = Record {
            mask: 0x4000,
            fd: NOFD,
            pid: 0,
            fids: vec![],
        };
        assert_eq!(
            parse_records(&encode_records(std::slice::from_ref(&r))).unwrap(),
            [r]
        );
    }

    #[test]
    fn unknown_info_records_are_skipped_and_bad_ones_refused() {
        let r = Record {
            mask: 0x100,
            fd: NOFD,
            pid: 1,
            fids: vec![fid(FidKind::DirName, Some(b"x"))],
        };
        let mut bytes = encode_records(std::slice::from_ref(&r));
        // A pidfd record (type 4, 8 bytes) appended, event_len grown.
        bytes.extend_from_slice(&[4, 0, 8, 0, 5, 0, 0, 0]);
        let len = u32::try_from(bytes.len()).unwrap();
        bytes[..4].copy_from_slice(&len.to_ne_bytes());
        assert_eq!(parse_records(&bytes).unwrap(), std::slice::from_ref(&r));

        let good = encode_records(&[r]);
        let mut short = good.clone();
        short.truncate(good.len() - 1);
        assert_eq!(
            parse_records(&short).unwrap_err().what,
            "event_len beyond the buffer"
        );
        let mut version = good.clone();
        version[4] = 2;
        assert_eq!(
            parse_records(&version).unwrap_err().what,
            "unknown metadata version"
        );
        let mut no_nul = good.clone();
        let n = no_nul.len();
        no_nul[n - 4..].copy_from_slice(b"xxxx");
        assert_eq!(
            parse_records(&no_nul).unwrap_err().what,
            "name without its NUL"
        );
        let mut huge_handle = good;
        huge_handle[24 + 12..24 + 16].copy_from_slice(&u32::MAX.to_ne_bytes());
        assert_eq!(
            parse_records(&huge_handle).unwrap_err().what,
            "file handle beyond its info record"
        );
    }

    fn arb_kind() -> impl Strategy<Value = FidKind> {
        prop_oneof![
            Just(FidKind::Object),
            Just(FidKind::DirName),
            Just(FidKind::Dir),
            Just(FidKind::OldDirName),
            Just(FidKind::NewDirName),
        ]
    }

    type OwnedFid = (FidKind, [i32; 2], i32, Vec<u8>, Vec<u8>);
    type OwnedRecord = (u64, i32, i32, Vec<OwnedFid>);

    /// The records `records` holds the bytes of (a name only where the
    /// kind carries one).
    fn borrowed(records: &[OwnedRecord]) -> Vec<Record<'_>> {
        records
            .iter()
            .map(|(mask, fd, pid, fids)| Record {
                mask: *mask,
                fd: *fd,
                pid: *pid,
                fids: fids
                    .iter()
                    .map(|(kind, fsid, handle_type, handle, name)| Fid {
                        kind: *kind,
                        fsid: *fsid,
                        handle_type: *handle_type,
                        handle,
                        name: kind.named().then_some(name.as_slice()),
                    })
                    .collect(),
            })
            .collect()
    }

    fn arb_records() -> impl Strategy<Value = Vec<OwnedRecord>> {
        let fid = (
            arb_kind(),
            any::<[i32; 2]>(),
            any::<i32>(),
            proptest::collection::vec(any::<u8>(), 0..=MAX_HANDLE),
            proptest::collection::vec(1u8.., 0..40),
        );
        proptest::collection::vec(
            (
                any::<u64>(),
                any::<i32>(),
                any::<i32>(),
                proptest::collection::vec(fid, 0..3),
            ),
            0..5,
        )
    }
    const MAX_HANDLE: usize = 128;

    proptest! {
        #[test]
        fn any_bytes_parse_or_fail_without_panicking(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            let _ = parse_records(&bytes);
        }

        #[test]
        fn encoded_records_parse_back(records in arb_records()) {
            let records = borrowed(&records);
            let bytes = encode_records(&records);
            prop_assert_eq!(parse_records(&bytes).unwrap(), records);
        }

        #[test]
        fn a_corrupted_stream_parses_or_fails_without_panicking(
            records in arb_records(),
            at in any::<prop::sample::Index>(),
            byte in any::<u8>(),
            cut in any::<prop::sample::Index>(),
        ) {
            let records = borrowed(&records);
            let mut bytes = encode_records(&records);
            if !bytes.is_empty() {
                let i = at.index(bytes.len());
                bytes[i] = byte;
                bytes.truncate(cut.index(bytes.len() + 1));
            }
            let _ = parse_records(&bytes);
        }
    }
}
