//! A small tar codec for `docker cp`, which streams tar both ways: reading copies out of the
//! state volume (works on a stopped container too), writing root-owned files into it. Only what
//! the state directory holds: files, folders, symlinks, short ASCII names.

use anyhow::{bail, Context, Result};

use crate::util::now_secs;

/// What a tar entry is (only what the state directory holds).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TarKind {
    File,
    Dir,
    Symlink,
    Other,
}

/// One entry of a tar stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TarEntry {
    /// The path inside the archive, without a trailing `/`.
    pub path: String,
    pub kind: TarKind,
    /// A symlink's target.
    pub link: String,
    pub data: Vec<u8>,
}

/// Parses a (ustar/GNU/PAX) tar stream as `docker cp … -` writes it. GNU long names are
/// followed; PAX headers are skipped (the state directory's names are short and ASCII).
pub fn parse_tar(bytes: &[u8]) -> Result<Vec<TarEntry>> {
    let field = |block: &[u8], range: std::ops::Range<usize>| {
        let raw = &block[range];
        let end = raw.iter().position(|&b| b == 0).unwrap_or(raw.len());
        String::from_utf8_lossy(&raw[..end]).into_owned()
    };
    let mut entries = Vec::new();
    let mut offset = 0;
    let mut long_name: Option<String> = None;
    while offset + 512 <= bytes.len() {
        let block = &bytes[offset..offset + 512];
        if block.iter().all(|&b| b == 0) {
            break;
        }
        let size_text = field(block, 124..136);
        let size = u64::from_str_radix(size_text.trim(), 8)
            .with_context(|| format!("bad tar size field {size_text:?}"))?
            as usize;
        let data_start = offset + 512;
        let data_end = data_start + size;
        if data_end > bytes.len() {
            bail!("the tar stream ends inside an entry");
        }
        let data = &bytes[data_start..data_end];
        let typeflag = block[156];
        let mut path = field(block, 0..100);
        if &block[257..262] == b"ustar" {
            let prefix = field(block, 345..500);
            if !prefix.is_empty() {
                path = format!("{prefix}/{path}");
            }
        }
        offset = data_start + size.div_ceil(512) * 512;
        match typeflag {
            b'L' => {
                let end = data.iter().position(|&b| b == 0).unwrap_or(data.len());
                long_name = Some(String::from_utf8_lossy(&data[..end]).into_owned());
                continue;
            }
            b'x' | b'g' => continue,
            _ => {}
        }
        if let Some(name) = long_name.take() {
            path = name;
        }
        let kind = match typeflag {
            b'0' | 0 | b'7' => TarKind::File,
            b'5' => TarKind::Dir,
            b'2' => TarKind::Symlink,
            _ => TarKind::Other,
        };
        entries.push(TarEntry {
            path: path.trim_end_matches('/').to_owned(),
            kind,
            link: field(block, 157..257),
            data: if kind == TarKind::File {
                data.to_vec()
            } else {
                Vec::new()
            },
        });
    }
    Ok(entries)
}

/// A tar stream of `entries` (folders 0755, files 0644, owned by root), readable by nginx's
/// workers.
pub fn tar_archive(entries: &[(String, TarKind, &str)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (path, kind, contents) in entries {
        let (mode, typeflag, data): (&str, u8, &[u8]) = match kind {
            TarKind::Dir => ("0000755", b'5', b""),
            _ => ("0000644", b'0', contents.as_bytes()),
        };
        let name = if *kind == TarKind::Dir {
            format!("{path}/")
        } else {
            path.clone()
        };
        push_entry(&mut out, &name, mode, typeflag, data);
    }
    out.extend_from_slice(&[0u8; 1024]);
    out
}

/// A stream holding folder `dir` and in it the executable `name` with `data` (root-owned,
/// mode 0755): a program copied into the state volume.
pub fn tar_program(dir: &str, name: &str, data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    push_entry(&mut out, &format!("{dir}/"), "0000755", b'5', b"");
    push_entry(&mut out, &format!("{dir}/{name}"), "0000755", b'0', data);
    out.extend_from_slice(&[0u8; 1024]);
    out
}

/// Appends one ustar header and its data, padded to the block size.
fn push_entry(out: &mut Vec<u8>, name: &str, mode: &str, typeflag: u8, data: &[u8]) {
    {
        let mut block = [0u8; 512];
        let name = name.as_bytes();
        block[..name.len().min(100)].copy_from_slice(&name[..name.len().min(100)]);
        block[100..107].copy_from_slice(mode.as_bytes());
        block[108..115].copy_from_slice(b"0000000");
        block[116..123].copy_from_slice(b"0000000");
        block[124..135].copy_from_slice(format!("{:011o}", data.len()).as_bytes());
        let mtime = format!("{:011o}", now_secs());
        block[136..147].copy_from_slice(mtime.as_bytes());
        block[156] = typeflag;
        block[257..263].copy_from_slice(b"ustar\0");
        block[263..265].copy_from_slice(b"00");
        block[148..156].copy_from_slice(b"        ");
        let checksum: u32 = block.iter().map(|&b| u32::from(b)).sum();
        block[148..155].copy_from_slice(format!("{checksum:06o}\0").as_bytes());
        out.extend_from_slice(&block);
        out.extend_from_slice(data);
        out.resize(out.len().div_ceil(512) * 512, 0);
    }
}

#[cfg(test)]
pub mod tests {
    use super::*;

    /// A minimal tar writer for the tests (no checksum: the parser does not need one).
    pub fn tar(entries: &[(&str, u8, &str, &[u8])]) -> Vec<u8> {
        let mut out = Vec::new();
        for (name, typeflag, link, data) in entries {
            let mut block = [0u8; 512];
            block[..name.len()].copy_from_slice(name.as_bytes());
            let size = format!("{:011o}", data.len());
            block[124..135].copy_from_slice(size.as_bytes());
            block[156] = *typeflag;
            block[157..157 + link.len()].copy_from_slice(link.as_bytes());
            block[257..262].copy_from_slice(b"ustar");
            out.extend_from_slice(&block);
            out.extend_from_slice(data);
            out.resize(out.len().div_ceil(512) * 512, 0);
        }
        out.extend_from_slice(&[0u8; 1024]);
        out
    }

    #[test]
    fn archives_made_here_read_back() {
        let entries = [
            ("gen-3".to_owned(), TarKind::Dir, ""),
            ("gen-3/17".to_owned(), TarKind::File, ""),
            ("nginx.conf".to_owned(), TarKind::File, "events {}\n"),
        ];
        let bytes = tar_archive(&entries);
        assert_eq!(bytes.len() % 512, 0);
        let back = parse_tar(&bytes).unwrap();
        let summary: Vec<(&str, TarKind, &[u8])> = back
            .iter()
            .map(|e| (e.path.as_str(), e.kind, e.data.as_slice()))
            .collect();
        assert_eq!(
            summary,
            vec![
                ("gen-3", TarKind::Dir, &b""[..]),
                ("gen-3/17", TarKind::File, &b""[..]),
                ("nginx.conf", TarKind::File, &b"events {}\n"[..]),
            ]
        );
        // The checksum is the one tar(1) verifies: the header's bytes, the field as spaces.
        let header = &bytes[..512];
        let mut sum: u32 = header.iter().map(|&b| u32::from(b)).sum();
        sum -= header[148..156].iter().map(|&b| u32::from(b)).sum::<u32>();
        sum += 8 * u32::from(b' ');
        let field = String::from_utf8_lossy(&header[148..154]).into_owned();
        assert_eq!(u32::from_str_radix(&field, 8).unwrap(), sum);
    }

    #[test]
    fn a_copied_file_keeps_its_contents() {
        let body = vec![b'x'; 700];
        let entries = parse_tar(&tar(&[("state.json", b'0', "", &body)])).unwrap();
        assert_eq!(entries.len(), 1);
        assert_eq!(entries[0].data, body);
        assert_eq!(entries[0].kind, TarKind::File);
    }
}
