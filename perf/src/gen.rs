//! `nodeplane-perf gen`: an AF_XDP traffic generator. It binds a copy-mode
//! AF_XDP socket to one queue of an interface (transmit needs no XDP program),
//! writes each frame into a UMEM chunk with a fresh probe (sequence number and
//! send time), and sends at a set rate or flat out. Bounded in packets and
//! seconds; prints what it offered. It may not touch any namespace but the one
//! it runs in.

use std::net::Ipv4Addr;
use std::time::Duration;

use dataplane::io::afxdp::{FramePool, RingSizes, UmemRegion, XskSocket, FRAME_SIZE};
use dataplane::io::netif;
use serde::Serialize;

use crate::traffic::{parse_mac, Kind, Probe, Spec};

#[derive(Clone, Debug, clap::Args)]
pub struct GenArgs {
    /// Interface to send on (in this namespace).
    #[arg(long)]
    pub iface: String,
    /// Its queue to bind.
    #[arg(long, default_value_t = 0)]
    pub queue: u32,
    #[arg(long, value_enum, default_value = "udp")]
    pub kind: Kind,
    /// Destination MAC (the next hop's).
    #[arg(long)]
    pub dst_mac: String,
    /// Source MAC (default: the interface's).
    #[arg(long)]
    pub src_mac: Option<String>,
    /// (Inner) source IP.
    #[arg(long)]
    pub src: Ipv4Addr,
    /// (Inner) destination IP.
    #[arg(long)]
    pub dst: Ipv4Addr,
    #[arg(long, default_value_t = 5353)]
    pub dport: u16,
    /// Source port of flow 0; flow i uses sport-base + i.
    #[arg(long, default_value_t = 20000)]
    pub sport_base: u16,
    /// Flows (distinct source ports), sent round-robin.
    #[arg(long, default_value_t = 64)]
    pub flows: u16,
    /// (Inner) frame length in bytes.
    #[arg(long, default_value_t = 64)]
    pub size: usize,
    /// VXLAN: outer source and destination (the remote and this node).
    #[arg(long)]
    pub outer_src: Option<Ipv4Addr>,
    #[arg(long)]
    pub outer_dst: Option<Ipv4Addr>,
    #[arg(long, default_value_t = 8472)]
    pub vxlan_port: u16,
    #[arg(long, default_value_t = 1)]
    pub vni: u32,
    /// VXLAN: inner source MAC (the remote VTEP) and destination (this node's VTEP).
    #[arg(long)]
    pub inner_src_mac: Option<String>,
    #[arg(long)]
    pub inner_dst_mac: Option<String>,
    /// Packets per second; 0 = as fast as possible.
    #[arg(long, default_value_t = 0)]
    pub rate: u64,
    /// Stop after this many packets.
    #[arg(long, default_value_t = 1_000_000)]
    pub packets: u64,
    /// Stop after this many seconds.
    #[arg(long, default_value_t = 10.0)]
    pub seconds: f64,
    /// Core to pin to.
    #[arg(long)]
    pub core: Option<usize>,
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Serialize)]
pub struct GenResult {
    pub kind: Kind,
    pub flows: u16,
    pub frame_bytes: usize,
    pub sent: u64,
    pub elapsed_s: f64,
    pub offered_pps: f64,
    pub rate_target_pps: u64,
    /// Descriptors the kernel rejected (XDP_STATISTICS tx_invalid_descs).
    pub tx_invalid: u64,
    /// Times the tx ring was full when a frame was ready.
    pub tx_ring_full: u64,
    pub pinned_core: Option<usize>,
}

fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec to write.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    (ts.tv_sec as u64)
        .wrapping_mul(1_000_000_000)
        .wrapping_add(ts.tv_nsec as u64)
}

/// The clock probes carry (CLOCK_MONOTONIC, shared by every namespace).
pub fn now_ns() -> u64 {
    monotonic_ns()
}

const UMEM_FRAMES: u32 = 4096;
const BATCH: usize = 64;
const FRAME_OFFSET: usize = 256;

pub fn spec_of(a: &GenArgs) -> anyhow::Result<Spec> {
    let iface_mac = netif::mac(&a.iface).ok();
    let src_mac = match &a.src_mac {
        Some(m) => parse_mac(m)?,
        None => iface_mac.ok_or_else(|| anyhow::anyhow!("cannot read the MAC of {}", a.iface))?,
    };
    let spec = Spec {
        kind: a.kind,
        src_mac,
        dst_mac: parse_mac(&a.dst_mac)?,
        src: a.src,
        dst: a.dst,
        sport_base: a.sport_base,
        dport: a.dport,
        outer_src: a.outer_src.unwrap_or(Ipv4Addr::UNSPECIFIED),
        outer_dst: a.outer_dst.unwrap_or(Ipv4Addr::UNSPECIFIED),
        vxlan_port: a.vxlan_port,
        vni: a.vni,
        inner_src_mac: a
            .inner_src_mac
            .as_deref()
            .map(parse_mac)
            .transpose()?
            .unwrap_or(src_mac),
        inner_dst_mac: a
            .inner_dst_mac
            .as_deref()
            .map(parse_mac)
            .transpose()?
            .unwrap_or([0; 6]),
        size: a.size,
    };
    if a.kind == Kind::Vxlan {
        anyhow::ensure!(
            a.outer_src.is_some() && a.outer_dst.is_some() && a.inner_dst_mac.is_some(),
            "--kind vxlan needs --outer-src, --outer-dst and --inner-dst-mac"
        );
        anyhow::ensure!(a.vni < 1 << 24, "--vni is 24 bits");
    }
    anyhow::ensure!(a.flows >= 1, "--flows must be ≥ 1");
    anyhow::ensure!(
        spec.wire_len() + FRAME_OFFSET <= FRAME_SIZE,
        "--size {} is too large for a {FRAME_SIZE}-byte UMEM chunk",
        a.size
    );
    anyhow::ensure!(
        a.seconds > 0.0 && a.seconds <= 3600.0,
        "--seconds must be in (0, 3600]"
    );
    Ok(spec)
}

pub fn run(a: &GenArgs) -> anyhow::Result<GenResult> {
    let spec = spec_of(a)?;
    let ifindex = netif::ifindex(&a.iface)?;
    let pinned = a.core.and_then(|c| {
        core_affinity::get_core_ids()
            .and_then(|ids| ids.into_iter().find(|x| x.id == c))
            .filter(|x| core_affinity::set_for_current(*x))
            .map(|x| x.id)
    });
    if a.rate > 0 {
        // Pacing sleeps are tens of µs; the default 50 µs timer slack would
        // stretch each of them and turn a steady rate into bursts.
        // SAFETY: PR_SET_TIMERSLACK takes a plain integer and only affects
        // this thread.
        unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1_000 as libc::c_ulong) };
    }
    let region = UmemRegion::new(UMEM_FRAMES)?;
    let mut pool = FramePool::new(region.frames());
    let sizes = RingSizes {
        rx: 64,
        tx: 2048,
        fill: 64,
        comp: 2048,
    };
    let mut xsk = XskSocket::create(&region, None, 0, ifindex, a.queue, sizes, 0)?;
    let t0 = monotonic_ns();
    let limit_ns = (a.seconds * 1e9) as u64;
    let mut sent = 0u64;
    let mut ring_full = 0u64;
    let mut flow = 0u16;
    while sent < a.packets {
        let now = monotonic_ns();
        let elapsed = now - t0;
        if elapsed >= limit_ns {
            break;
        }
        xsk.reap_completions(&mut pool);
        // How many may go now: all (flat out) or what the rate allows so far.
        let allowed = if a.rate == 0 {
            BATCH as u64
        } else {
            // Batches of at most ~50 µs of traffic keep the pacing smooth.
            let per_batch = (a.rate / 20_000).clamp(1, BATCH as u64);
            let due = (u128::from(elapsed) * u128::from(a.rate) / 1_000_000_000) as u64 + 1;
            due.saturating_sub(sent).min(per_batch)
        };
        let want = allowed.min(a.packets - sent);
        let mut queued = 0u64;
        for _ in 0..want {
            let Some(base) = pool.alloc() else {
                break;
            };
            // SAFETY: `alloc` handed us this chunk; nothing else references it
            // until it is queued for transmission below.
            let buf = unsafe { region.chunk(base) };
            let probe = Probe {
                flow,
                seq: (sent + queued) as u32,
                sent_ns: monotonic_ns(),
            };
            let len = spec.write(&probe, &mut buf[FRAME_OFFSET..]);
            if !xsk.queue_tx(&mut pool, base, FRAME_OFFSET, len) {
                pool.recycle(base);
                ring_full += 1;
                break;
            }
            queued += 1;
            flow = (flow + 1) % a.flows;
        }
        sent += queued;
        xsk.flush_tx();
        if queued == 0 {
            if a.rate > 0 {
                // Sleep until the next packet is due (a sink or a node sharing
                // this core gets it meanwhile); the timer's slack only delays
                // the start of the next batch, the rate still holds.
                let next_due = (sent + 1) as u128 * 1_000_000_000 / u128::from(a.rate);
                let wait = (next_due as u64).saturating_sub(monotonic_ns() - t0);
                if wait > 20_000 {
                    std::thread::sleep(Duration::from_nanos(wait.min(1_000_000)));
                }
            } else {
                std::hint::spin_loop();
            }
        }
    }
    let elapsed_ns = monotonic_ns() - t0;
    // Let the kernel finish what is queued (bounded).
    let drain_until = monotonic_ns() + 200_000_000;
    while xsk.tx_unsent() > 0 && monotonic_ns() < drain_until {
        xsk.flush_tx();
        xsk.reap_completions(&mut pool);
        std::thread::sleep(Duration::from_micros(50));
    }
    let stats = xsk.stats();
    let elapsed_s = elapsed_ns as f64 / 1e9;
    Ok(GenResult {
        kind: a.kind,
        flows: a.flows,
        frame_bytes: spec.wire_len(),
        sent,
        elapsed_s,
        offered_pps: sent as f64 / elapsed_s.max(1e-9),
        rate_target_pps: a.rate,
        tx_invalid: stats.tx_invalid_descs,
        tx_ring_full: ring_full,
        pinned_core: pinned,
    })
}

pub fn print(r: &GenResult, json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string(r)?);
    } else {
        println!(
            "sent {} {:?} frames of {} bytes over {} flows in {:.3} s: {:.0} pps offered",
            r.sent, r.kind, r.frame_bytes, r.flows, r.elapsed_s, r.offered_pps
        );
    }
    Ok(())
}
