//! What the kernel's TCP stack went through during a point. `hey` runs on the server's machine,
//! so its send queues (up to `net.ipv4.tcp_wmem`'s maximum for each of its c connections while
//! they wait for admission) count against the same `net.ipv4.tcp_mem` as the server's sockets.
//! Past that limit's middle value the kernel is under TCP memory pressure: it prunes receive
//! queues, drops arriving segments (which are then sent again) and keeps `hey`'s queues from
//! growing, which changes how much of the shared CPU `hey` takes. On a real network the clients'
//! send queues are on their own machines, so these counters say how far a point measured the
//! shared kernel rather than the server.

use std::collections::BTreeMap;

use anyhow::{Context, Result};
use serde::Serialize;

/// Counters of /proc/net/snmp and /proc/net/netstat, as "Group.Name" -> value.
#[derive(Debug)]
pub(super) struct Counters(BTreeMap<String, u64>);

/// The counters read: memory pressure, what it dropped, and the segments sent again.
const PRESSURE_MS: &str = "TcpExt.TCPMemoryPressuresChrono";
const PRUNED: &str = "TcpExt.PruneCalled";
const DROPPED: &str = "TcpExt.TCPRcvQDrop";
const RETRANSMITTED: &str = "Tcp.RetransSegs";

impl Counters {
    /// The counters now (Linux only: elsewhere, none).
    pub(super) fn read() -> Result<Self> {
        let mut counters = BTreeMap::new();
        for file in ["/proc/net/snmp", "/proc/net/netstat"] {
            let text = match std::fs::read_to_string(file) {
                Ok(text) => text,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e).with_context(|| format!("reading {file}")),
            };
            parse(&text, &mut counters).with_context(|| format!("parsing {file}"))?;
        }
        Ok(Self(counters))
    }

    fn since(&self, before: &Self, name: &str) -> Option<u64> {
        Some(self.0.get(name)?.saturating_sub(*before.0.get(name)?))
    }
}

/// Lines come in pairs, "Group: name name ..." then "Group: value value ...".
fn parse(text: &str, into: &mut BTreeMap<String, u64>) -> Result<()> {
    let mut lines = text.lines();
    while let Some(names) = lines.next() {
        let values = lines.next().with_context(|| format!("no values after {names:?}"))?;
        let (group, names) = names
            .split_once(':')
            .with_context(|| format!("no group in {names:?}"))?;
        let (_, values) = values
            .split_once(':')
            .with_context(|| format!("no group in {values:?}"))?;
        for (name, value) in names.split_whitespace().zip(values.split_whitespace()) {
            // Tcp.MaxConn is -1: not a counter.
            if let Ok(value) = value.parse() {
                into.insert(format!("{group}.{name}"), value);
            }
        }
    }
    Ok(())
}

/// The kernel's TCP stack over one point; None where the counter is not there.
#[derive(Serialize, Debug)]
pub(super) struct TcpStack {
    /// Seconds under TCP memory pressure.
    memory_pressure_s: Option<f64>,
    /// Times a receive queue was pruned for memory, and segments dropped for it.
    pruned: Option<u64>,
    dropped: Option<u64>,
    /// Segments sent again.
    retransmitted: Option<u64>,
}

impl TcpStack {
    pub(super) fn between(before: &Counters, after: &Counters) -> Self {
        Self {
            memory_pressure_s: after.since(before, PRESSURE_MS).map(|ms| ms as f64 / 1000.0),
            pruned: after.since(before, PRUNED),
            dropped: after.since(before, DROPPED),
            retransmitted: after.since(before, RETRANSMITTED),
        }
    }
}
