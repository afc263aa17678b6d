//! The initramfs: a `newc` cpio archive holding only the agent as `/init` and the few nodes the
//! kernel needs before the agent runs. Written uncompressed: decompressing costs more than
//! reading under emulation.

use std::io::{self, Write};

const S_IFDIR: u32 = 0o040000;
const S_IFREG: u32 = 0o100000;
const S_IFCHR: u32 = 0o020000;

/// Writes the archive for `agent` (the static agent binary's bytes).
pub fn write(out: &mut impl Write, agent: &[u8]) -> io::Result<()> {
    let mut ino = 1;
    let mut entry = |out: &mut dyn Write, name: &str, mode: u32, rdev: (u32, u32), data: &[u8]| -> io::Result<()> {
        let header = format!(
            "070701{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}",
            ino,
            mode,
            0,
            0,
            if mode & S_IFDIR != 0 { 2 } else { 1 },
            0,
            data.len(),
            0,
            0,
            rdev.0,
            rdev.1,
            name.len() + 1,
            0
        );
        ino += 1;
        out.write_all(header.as_bytes())?;
        out.write_all(name.as_bytes())?;
        out.write_all(&[0])?;
        out.write_all(&[0; 4][..pad(110 + name.len() + 1)])?;
        out.write_all(data)?;
        out.write_all(&[0; 4][..pad(data.len())])
    };
    for dir in ["dev", "proc", "sys", "newroot", "lower", "scratch"] {
        entry(out, dir, S_IFDIR | 0o755, (0, 0), &[])?;
    }
    entry(out, "dev/console", S_IFCHR | 0o600, (5, 1), &[])?;
    entry(out, "init", S_IFREG | 0o755, (0, 0), agent)?;
    entry(out, "TRAILER!!!", 0, (0, 0), &[])
}

fn pad(len: usize) -> usize {
    (4 - len % 4) % 4
}

#[cfg(test)]
mod tests {
    #[test]
    fn archive_is_aligned_and_lists_init() {
        let mut buf = Vec::new();
        super::write(&mut buf, b"\x7fELF-agent").unwrap();
        assert_eq!(buf.len() % 4, 0);
        let text = String::from_utf8_lossy(&buf);
        assert!(text.starts_with("070701"));
        assert!(text.contains("init\0"));
        assert!(text.contains("\x7fELF-agent"));
        assert!(text.contains("TRAILER!!!"));
    }
}
