//! Minimal ELF64 reading: just what the package checks need, bounds-checked throughout.

use anyhow::{Context, Result, bail, ensure};
use std::fmt;

pub const EM_X86_64: u16 = 62;
pub const EM_AARCH64: u16 = 183;
const ET_EXEC: u16 = 2;
const ET_DYN: u16 = 3;
const PT_INTERP: u32 = 3;
const SHT_DYNSYM: u32 = 11;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Executable,
    SharedLibrary,
}

impl Kind {
    fn with_article(self) -> &'static str {
        match self {
            Kind::Executable => "an executable",
            Kind::SharedLibrary => "a shared library",
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Kind::Executable => "executable",
            Kind::SharedLibrary => "shared library",
        })
    }
}

pub fn machine_name(machine: u16) -> String {
    match machine {
        EM_X86_64 => "x86_64".to_owned(),
        EM_AARCH64 => "aarch64".to_owned(),
        3 => "i386".to_owned(),
        40 => "arm".to_owned(),
        243 => "riscv".to_owned(),
        other => format!("machine {other}"),
    }
}

#[derive(Debug)]
pub struct Elf<'a> {
    data: &'a [u8],
    pub e_type: u16,
    pub machine: u16,
    has_interp: bool,
}

fn u16_at(d: &[u8], off: usize) -> Result<u16> {
    let b = d.get(off..off + 2).context("truncated ELF file")?;
    Ok(u16::from_le_bytes([b[0], b[1]]))
}
fn u32_at(d: &[u8], off: usize) -> Result<u32> {
    let b = d.get(off..off + 4).context("truncated ELF file")?;
    Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
}
fn u64_at(d: &[u8], off: usize) -> Result<u64> {
    let b = d.get(off..off + 8).context("truncated ELF file")?;
    let mut a = [0u8; 8];
    a.copy_from_slice(b);
    Ok(u64::from_le_bytes(a))
}
fn usize_at(d: &[u8], off: usize) -> Result<usize> {
    usize::try_from(u64_at(d, off)?).context("ELF offset out of range")
}

impl<'a> Elf<'a> {
    pub fn parse(data: &'a [u8]) -> Result<Self> {
        ensure!(data.get(..4) == Some(b"\x7fELF".as_slice()), "no ELF magic number");
        ensure!(data.get(4) == Some(&2), "not a 64-bit ELF file");
        ensure!(data.get(5) == Some(&1), "not a little-endian ELF file");
        let e_type = u16_at(data, 16)?;
        let machine = u16_at(data, 18)?;
        let phoff = usize_at(data, 32)?;
        let phentsize = usize::from(u16_at(data, 54)?);
        let phnum = usize::from(u16_at(data, 56)?);
        let mut has_interp = false;
        for i in 0..phnum {
            if u32_at(data, phoff + i * phentsize)? == PT_INTERP {
                has_interp = true;
            }
        }
        Ok(Elf {
            data,
            e_type,
            machine,
            has_interp,
        })
    }

    pub fn kind(&self) -> Result<Kind> {
        match self.e_type {
            ET_EXEC => Ok(Kind::Executable),
            // A PIE executable is ET_DYN too; only it asks for a program interpreter.
            ET_DYN if self.has_interp => Ok(Kind::Executable),
            ET_DYN => Ok(Kind::SharedLibrary),
            other => bail!("ELF type {other} is neither an executable nor a shared library"),
        }
    }

    pub fn expect(&self, kind: Kind, machine: u16) -> Result<()> {
        ensure!(
            self.machine == machine,
            "it is built for {}, not {}",
            machine_name(self.machine),
            machine_name(machine)
        );
        let got = self.kind()?;
        ensure!(got == kind, "it is {}, not {}", got.with_article(), kind.with_article());
        Ok(())
    }

    /// The dynamic symbol table and its string table, if the file has them.
    fn dynsym(&self) -> Result<Option<(&'a [u8], &'a [u8])>> {
        let d = self.data;
        let shoff = usize_at(d, 40)?;
        let shentsize = usize::from(u16_at(d, 58)?);
        let shnum = usize::from(u16_at(d, 60)?);
        let section = |i: usize| -> Result<(u32, &'a [u8], u32)> {
            let h = shoff + i * shentsize;
            let (off, size) = (usize_at(d, h + 24)?, usize_at(d, h + 32)?);
            let body = d
                .get(off..off.saturating_add(size))
                .context("ELF section out of bounds")?;
            Ok((u32_at(d, h + 4)?, body, u32_at(d, h + 40)?))
        };
        for i in 0..shnum {
            let (kind, body, link) = section(i)?;
            if kind == SHT_DYNSYM {
                let (_, strings, _) = section(usize::try_from(link)?)?;
                return Ok(Some((body, strings)));
            }
        }
        Ok(None)
    }

    /// Whether a defined dynamic symbol `name` exists.
    pub fn exports(&self, name: &str) -> Result<bool> {
        let Some((symbols, strings)) = self.dynsym()? else {
            return Ok(false);
        };
        for sym in symbols.chunks_exact(24) {
            let name_off = usize::try_from(u32_at(sym, 0)?)?;
            let defined = u16_at(sym, 6)? != 0;
            if defined && c_str(strings, name_off) == Some(name.as_bytes()) {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// The newest `GLIBC_x.y` version among the dynamic strings (where version needs live).
    pub fn max_glibc(&self) -> Result<Option<(u32, u32)>> {
        let Some((_, strings)) = self.dynsym()? else {
            return Ok(None);
        };
        Ok(strings
            .split(|&b| b == 0)
            .filter_map(|s| std::str::from_utf8(s).ok())
            .filter_map(parse_glibc)
            .max())
    }
}

fn c_str(strings: &[u8], off: usize) -> Option<&[u8]> {
    let rest = strings.get(off..)?;
    let end = rest.iter().position(|&b| b == 0)?;
    Some(&rest[..end])
}

/// `GLIBC_2.34` -> (2, 34); `GLIBC_2.2.5` -> (2, 2); anything else -> None.
pub fn parse_glibc(s: &str) -> Option<(u32, u32)> {
    let mut parts = s.strip_prefix("GLIBC_")?.split('.');
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A header-only ELF64 file: enough for the architecture and kind checks.
    pub(crate) fn elf_header(machine: u16, e_type: u16) -> Vec<u8> {
        let mut h = vec![0u8; 64];
        h[..4].copy_from_slice(b"\x7fELF");
        h[4] = 2; // 64-bit
        h[5] = 1; // little-endian
        h[6] = 1; // version
        h[16..18].copy_from_slice(&e_type.to_le_bytes());
        h[18..20].copy_from_slice(&machine.to_le_bytes());
        h[20..24].copy_from_slice(&1u32.to_le_bytes());
        h[52..54].copy_from_slice(&64u16.to_le_bytes());
        h[54..56].copy_from_slice(&56u16.to_le_bytes());
        h[58..60].copy_from_slice(&64u16.to_le_bytes());
        h
    }

    #[test]
    fn garbage_and_truncated_elf_files_are_rejected() {
        assert!(Elf::parse(b"#!/bin/sh\necho hi\n").is_err());
        let header = elf_header(EM_AARCH64, 2);
        assert!(Elf::parse(&header[..40]).is_err());
        let mut bad = header.clone();
        bad[56..58].copy_from_slice(&3u16.to_le_bytes()); // three program headers past the end
        bad[32..40].copy_from_slice(&64u64.to_le_bytes());
        assert!(Elf::parse(&bad).is_err());
    }
}
