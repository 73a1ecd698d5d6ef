//! `nodeplane-perf sink`: receives the generator's UDP probes on a socket (in
//! the destination pod's namespace), and measures what arrived: count, loss
//! against the sequence numbers seen (or against `--expect`), reordering,
//! duplicates, and one-way latency (probe send time to receipt, both
//! CLOCK_MONOTONIC on this machine) into an hdrhistogram. Bounded in packets
//! and seconds, and stops after `--idle` seconds without a probe. Receive only:
//! it never sends.

use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::gen::now_ns;
use crate::traffic::Probe;

#[derive(Clone, Debug, clap::Args)]
pub struct SinkArgs {
    /// UDP port to receive on.
    #[arg(long, default_value_t = 5353)]
    pub port: u16,
    /// Address to bind.
    #[arg(long, default_value = "0.0.0.0")]
    pub bind: Ipv4Addr,
    /// Packets the generator sent (for loss); default: judged from the
    /// highest sequence number seen per flow.
    #[arg(long)]
    pub expect: Option<u64>,
    /// Stop after this many probes.
    #[arg(long, default_value_t = u64::MAX)]
    pub packets: u64,
    /// Stop after this many seconds.
    #[arg(long, default_value_t = 30.0)]
    pub seconds: f64,
    /// Stop this long after the last probe (once one has arrived).
    #[arg(long, default_value_t = 1.0)]
    pub idle: f64,
    /// Write a line "ready" to stderr once listening (for scripts).
    #[arg(long)]
    pub announce: bool,
    /// Core to pin to.
    #[arg(long)]
    pub core: Option<usize>,
    /// Include the latency CDF (percentile, µs) in the report.
    #[arg(long)]
    pub cdf: bool,
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Default, Serialize)]
pub struct SinkResult {
    pub received: u64,
    /// Datagrams without a probe (counted, otherwise ignored).
    pub foreign: u64,
    pub expected: u64,
    pub lost: u64,
    pub loss_ratio: f64,
    pub reordered: u64,
    pub duplicates: u64,
    /// First to last probe received.
    pub elapsed_s: f64,
    pub delivered_pps: f64,
    pub latency_us_p50: f64,
    pub latency_us_p99: f64,
    pub latency_us_p999: f64,
    pub latency_us_max: f64,
    pub latency_samples: u64,
    /// (percentile, latency µs) points, with `--cdf`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub cdf: Vec<(f64, f64)>,
}

/// Per-flow sequence tracking: one past the highest sequence seen (a repeat
/// of the highest is a duplicate; anything lower arrived out of order).
#[derive(Clone, Default)]
pub struct FlowTrack {
    next: u64,
    seen_any: bool,
}

/// Sequence accounting over all flows (pure; unit-tested).
#[derive(Default)]
pub struct Accounting {
    flows: Vec<FlowTrack>,
    pub received: u64,
    pub reordered: u64,
    pub duplicates: u64,
}

impl Accounting {
    pub fn new() -> Self {
        Accounting {
            flows: vec![FlowTrack::default(); 1 << 16],
            ..Accounting::default()
        }
    }

    /// Records one probe's sequence number. The generator numbers packets
    /// globally and sends flows round-robin, so within a flow numbers rise.
    pub fn record(&mut self, flow: u16, seq: u32) {
        let f = &mut self.flows[usize::from(flow)];
        let s = u64::from(seq);
        self.received += 1;
        if f.seen_any && s + 1 == f.next {
            self.duplicates += 1;
            self.received -= 1;
        } else if f.seen_any && s < f.next {
            self.reordered += 1;
        } else {
            f.next = s + 1;
        }
        f.seen_any = true;
    }

    /// Packets the generator must have sent up to the highest number seen.
    pub fn expected(&self) -> u64 {
        self.flows
            .iter()
            .filter(|f| f.seen_any)
            .map(|f| f.next)
            .max()
            .unwrap_or(0)
    }
}

/// Percentiles reported with `--cdf`.
const CDF_POINTS: [f64; 16] = [
    1.0, 5.0, 10.0, 25.0, 50.0, 75.0, 90.0, 95.0, 99.0, 99.5, 99.9, 99.95, 99.99, 99.995, 99.999,
    100.0,
];

pub fn run(a: &SinkArgs) -> anyhow::Result<SinkResult> {
    anyhow::ensure!(
        a.seconds > 0.0 && a.seconds <= 3600.0,
        "--seconds must be in (0, 3600]"
    );
    if let Some(c) = a.core {
        if let Some(id) =
            core_affinity::get_core_ids().and_then(|ids| ids.into_iter().find(|x| x.id == c))
        {
            core_affinity::set_for_current(id);
        }
    }
    let sock = UdpSocket::bind(SocketAddr::from((a.bind, a.port)))
        .map_err(|e| anyhow::anyhow!("binding UDP {}:{}: {e}", a.bind, a.port))?;
    let size: libc::c_int = 16 << 20;
    // SAFETY: setsockopt with a valid int option value; failure is harmless
    // (the default buffer is used).
    unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUFFORCE,
            (&size as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
    sock.set_read_timeout(Some(Duration::from_millis(50)))?;
    if a.announce {
        eprintln!("ready");
    }
    let mut acc = Accounting::new();
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3)?;
    let mut foreign = 0u64;
    let start = now_ns();
    let limit = (a.seconds * 1e9) as u64;
    let idle = (a.idle * 1e9) as u64;
    let (mut first, mut last) = (0u64, 0u64);
    const BATCH: usize = 64;
    let mut bufs = vec![[0u8; 2048]; BATCH];
    while acc.received < a.packets {
        let now = now_ns();
        if now - start >= limit || (last != 0 && now - last >= idle) {
            break;
        }
        let n = recv_batch(&sock, &mut bufs)?;
        if n.is_empty() {
            continue;
        }
        let t = now_ns();
        for (i, len) in n.iter().enumerate() {
            match Probe::read(&bufs[i][..*len]) {
                Some(p) => {
                    acc.record(p.flow, p.seq);
                    let _ = hist.record(t.saturating_sub(p.sent_ns).max(1));
                    if first == 0 {
                        first = t;
                    }
                    last = t;
                }
                None => foreign += 1,
            }
        }
    }
    let expected = a.expect.unwrap_or_else(|| acc.expected());
    let lost = expected.saturating_sub(acc.received);
    let elapsed_s = last.saturating_sub(first) as f64 / 1e9;
    let q = |x: f64| hist.value_at_quantile(x) as f64 / 1000.0;
    Ok(SinkResult {
        received: acc.received,
        foreign,
        expected,
        lost,
        loss_ratio: if expected == 0 {
            0.0
        } else {
            lost as f64 / expected as f64
        },
        reordered: acc.reordered,
        duplicates: acc.duplicates,
        elapsed_s,
        delivered_pps: if elapsed_s > 0.0 {
            acc.received as f64 / elapsed_s
        } else {
            0.0
        },
        latency_us_p50: q(0.5),
        latency_us_p99: q(0.99),
        latency_us_p999: q(0.999),
        latency_us_max: hist.max() as f64 / 1000.0,
        latency_samples: hist.len(),
        cdf: if a.cdf && !hist.is_empty() {
            CDF_POINTS
                .iter()
                .map(|&p| (p, hist.value_at_quantile(p / 100.0) as f64 / 1000.0))
                .collect()
        } else {
            Vec::new()
        },
    })
}

/// One recvmmsg of up to `bufs.len()` datagrams (blocking up to the socket's
/// read timeout for the first); returns their lengths.
fn recv_batch(sock: &UdpSocket, bufs: &mut [[u8; 2048]]) -> anyhow::Result<Vec<usize>> {
    let n = bufs.len();
    let mut iov: Vec<libc::iovec> = bufs
        .iter_mut()
        .map(|b| libc::iovec {
            iov_base: b.as_mut_ptr().cast(),
            iov_len: b.len(),
        })
        .collect();
    // SAFETY: zero is a valid bit pattern for mmsghdr.
    let mut msgs: Vec<libc::mmsghdr> = (0..n).map(|_| unsafe { std::mem::zeroed() }).collect();
    for (m, v) in msgs.iter_mut().zip(iov.iter_mut()) {
        m.msg_hdr.msg_iov = v;
        m.msg_hdr.msg_iovlen = 1;
    }
    // SAFETY: `msgs` points at `n` initialised headers whose iovecs point into
    // `bufs`, which outlive the call.
    let r = unsafe {
        libc::recvmmsg(
            sock.as_raw_fd(),
            msgs.as_mut_ptr(),
            n as libc::c_uint,
            libc::MSG_WAITFORONE,
            std::ptr::null_mut(),
        )
    };
    if r < 0 {
        let e = std::io::Error::last_os_error();
        return match e.kind() {
            std::io::ErrorKind::WouldBlock
            | std::io::ErrorKind::TimedOut
            | std::io::ErrorKind::Interrupted => Ok(Vec::new()),
            _ => Err(e.into()),
        };
    }
    Ok(msgs[..r as usize]
        .iter()
        .map(|m| m.msg_len as usize)
        .collect())
}

pub fn print(r: &SinkResult, json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string(r)?);
    } else {
        println!(
            "received {} of {} ({} lost, {:.3}%), {} reordered, {} duplicates, {:.0} pps; \
             latency p50 {:.1} µs p99 {:.1} µs p99.9 {:.1} µs",
            r.received,
            r.expected,
            r.lost,
            r.loss_ratio * 100.0,
            r.reordered,
            r.duplicates,
            r.delivered_pps,
            r.latency_us_p50,
            r.latency_us_p99,
            r.latency_us_p999
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accounting_counts_loss_reorder_and_duplicates() {
        let mut a = Accounting::new();
        // Two flows round-robin: seq 0..10, flow = seq % 2; 4 lost, 7 before 6.
        for (flow, seq) in [
            (0, 0),
            (1, 1),
            (0, 2),
            (1, 3),
            (1, 5),
            (1, 7),
            (0, 6),
            (0, 8),
            (0, 8),
            (1, 9),
        ] {
            a.record(flow, seq);
        }
        assert_eq!(a.received, 9, "the duplicate 8 is not counted");
        assert_eq!(a.duplicates, 1);
        assert_eq!(a.reordered, 0, "6 after 7 is another flow: in order");
        assert_eq!(a.expected(), 10);
        a.record(1, 4);
        assert_eq!(a.reordered, 1, "4 after 9 in flow 1");
    }
}
