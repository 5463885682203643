//! System packages from Debian, for tools PyPI does not carry (an emulator, a cross C library,
//! a browser). Installed with `apt-get` when missing; a host without `apt-get` gets an error
//! that names the packages, so its owner can install the equivalents by hand.

use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};

/// Makes sure every package in `packages` is installed, installing the missing ones with
/// `apt-get update` then `apt-get install -y`. Costs one `dpkg -s` when nothing is missing.
pub fn ensure(packages: &[&str]) -> Result<()> {
    let missing = missing(packages)?;
    if missing.is_empty() {
        return Ok(());
    }
    if !on_path("apt-get") {
        bail!(
            "these Debian packages are missing and there is no apt-get to install them: {} \
             (install them, or your system's equivalents, by hand)",
            missing.join(" ")
        );
    }
    eprintln!("xtask: installing Debian packages: {}", missing.join(" "));
    // Root needs no sudo (containers, CI images often lack it); anyone else needs it.
    let sudo = !is_root();
    apt(sudo, &["update"])?;
    let mut install = vec!["install", "-y", "--no-install-recommends"];
    install.extend(missing.iter().map(String::as_str));
    apt(sudo, &install)?;
    let still = self::missing(packages)?;
    if !still.is_empty() {
        bail!(
            "apt-get finished but these Debian packages are still not installed: {}",
            still.join(" ")
        );
    }
    Ok(())
}

/// The packages of `packages` that dpkg does not report as installed.
fn missing(packages: &[&str]) -> Result<Vec<String>> {
    if !on_path("dpkg") {
        // No dpkg at all: not a Debian-like host, so every package counts as missing.
        return Ok(packages.iter().map(|p| (*p).to_owned()).collect());
    }
    let mut missing = Vec::new();
    for package in packages {
        // `dpkg -s` exits 0 for a package that was removed but left its configuration behind,
        // so read the status line rather than trusting the exit status alone.
        let out = Command::new("dpkg")
            .args(["-s", package])
            .stderr(Stdio::null())
            .output()
            .context("running dpkg -s")?;
        let installed = out.status.success()
            && String::from_utf8_lossy(&out.stdout)
                .lines()
                .any(|line| line.starts_with("Status:") && line.trim_end().ends_with(" installed"));
        if !installed {
            missing.push((*package).to_owned());
        }
    }
    Ok(missing)
}

fn apt(sudo: bool, args: &[&str]) -> Result<()> {
    let mut cmd = if sudo {
        let mut cmd = Command::new("sudo");
        cmd.arg("apt-get");
        cmd
    } else {
        Command::new("apt-get")
    };
    // Another apt-get (unattended upgrades, a parallel set-up) may hold dpkg's lock: wait for it.
    cmd.args(["-o", "DPkg::Lock::Timeout=300"])
        .args(args)
        .env("DEBIAN_FRONTEND", "noninteractive");
    let status = cmd
        .status()
        .with_context(|| format!("could not start apt-get {}", args.join(" ")))?;
    if !status.success() {
        bail!("apt-get {} failed ({status})", args.join(" "));
    }
    Ok(())
}

fn on_path(program: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(program).is_file()))
}

/// Whether xtask runs as root, which needs no sudo to install or mount.
pub fn is_root() -> bool {
    // `id -u` rather than a libc dependency for one number.
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|out| String::from_utf8_lossy(&out.stdout).trim() == "0")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn installed_and_unknown_packages_are_told_apart() -> Result<()> {
        let missing = missing(&["dpkg", "xtask-no-such-package"])?;
        if on_path("dpkg") {
            assert_eq!(missing, ["xtask-no-such-package"]);
        } else {
            assert_eq!(missing, ["dpkg", "xtask-no-such-package"]);
        }
        Ok(())
    }
}
