//! What the package checks read from an ELF64 file (machine, kind, exported symbols, the glibc
//! it needs), through the `object` crate's bounds-checked ELF reader.

use anyhow::{Context, Result, bail, ensure};
use object::LittleEndian;
use object::elf::{self, FileHeader64};
use object::read::elf::{FileHeader, ProgramHeader, SectionTable, Sym};
use std::fmt;

pub const EM_X86_64: u16 = elf::EM_X86_64;
pub const EM_AARCH64: u16 = elf::EM_AARCH64;

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
        elf::EM_386 => "i386".to_owned(),
        elf::EM_ARM => "arm".to_owned(),
        elf::EM_RISCV => "riscv".to_owned(),
        other => format!("machine {other}"),
    }
}

type Header = FileHeader64<LittleEndian>;

#[derive(Debug)]
pub struct Elf<'a> {
    data: &'a [u8],
    sections: SectionTable<'a, Header>,
    pub e_type: u16,
    pub machine: u16,
    has_interp: bool,
}

impl<'a> Elf<'a> {
    pub fn parse(data: &'a [u8]) -> Result<Self> {
        ensure!(data.get(..4) == Some(elf::ELFMAG.as_slice()), "no ELF magic number");
        ensure!(data.get(4) == Some(&elf::ELFCLASS64), "not a 64-bit ELF file");
        ensure!(data.get(5) == Some(&elf::ELFDATA2LSB), "not a little-endian ELF file");
        let header = Header::parse(data).context("reading the ELF header")?;
        let endian = LittleEndian;
        let has_interp = header
            .program_headers(endian, data)
            .context("reading the ELF program headers")?
            .iter()
            .any(|ph| ph.p_type(endian) == elf::PT_INTERP);
        let sections = header
            .sections(endian, data)
            .context("reading the ELF section headers")?;
        Ok(Elf {
            data,
            sections,
            e_type: header.e_type(endian),
            machine: header.e_machine(endian),
            has_interp,
        })
    }

    pub fn kind(&self) -> Result<Kind> {
        match self.e_type {
            elf::ET_EXEC => Ok(Kind::Executable),
            // A PIE executable is ET_DYN too; only it asks for a program interpreter.
            elf::ET_DYN if self.has_interp => Ok(Kind::Executable),
            elf::ET_DYN => Ok(Kind::SharedLibrary),
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

    /// Whether a defined dynamic symbol `name` exists.
    pub fn exports(&self, name: &str) -> Result<bool> {
        let endian = LittleEndian;
        let symbols = self
            .sections
            .symbols(endian, self.data, elf::SHT_DYNSYM)
            .context("reading the ELF dynamic symbols")?;
        for sym in symbols.iter() {
            if sym.st_shndx(endian) != elf::SHN_UNDEF
                && sym.name(endian, symbols.strings()).is_ok_and(|n| n == name.as_bytes())
            {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// The newest `GLIBC_x.y` among the file's version needs.
    pub fn max_glibc(&self) -> Result<Option<(u32, u32)>> {
        let endian = LittleEndian;
        let context = "reading the ELF version needs";
        let Some((mut needs, link)) = self.sections.gnu_verneed(endian, self.data).context(context)? else {
            return Ok(None);
        };
        let strings = self.sections.strings(endian, self.data, link).context(context)?;
        let mut newest = None;
        while let Some((_, mut versions)) = needs.next().context(context)? {
            while let Some(version) = versions.next().context(context)? {
                let name = version.name(endian, strings).context(context)?;
                let parsed = std::str::from_utf8(name).ok().and_then(parse_glibc);
                newest = newest.max(parsed);
            }
        }
        Ok(newest)
    }
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
