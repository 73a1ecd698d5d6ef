//! The pipeline micro-benchmark (docs/design.md §8): synthetic VXLAN frames from a
//! remote node carrying 64-byte inner UDP packets from remote pods to ClusterIPs
//! whose backends are local pods, so each packet is decap → conntrack (or
//! service + DNAT on the new-flow path) → route → rewrite. Batches of 32–64 on
//! one pinned core. Frames are rewritten in place, so each packet's bytes are
//! restored from a template first; that preparation is timed on its own and
//! reported as `copy_ns_per_packet` (AF_XDP copy mode pays a similar copy).
//! In memory only: no sockets, no namespaces.

use std::net::Ipv4Addr;
use std::time::Instant;

use dataplane::flow::FlowTable;
use dataplane::{process_batch, Frame, Verdict, WorkerState};
use serde::{Deserialize, Serialize};
use shared::snapshot::{
    EndpointSpec, NodeInfo, OverlayConfig, PodRoute, RemoteNode, ServicePortSpec, ServiceSpec,
    Snapshot, TableSpec,
};
use shared::wire::checksum;
use shared::{Counters, L4Proto};

const HEADROOM: usize = 128;
/// The outer headers of the benchmark's VXLAN frames.
const OUTER: usize = 50;
/// The largest inner frame that fits a 1,514-byte outer frame.
pub const MAX_FRAME_BYTES: usize = 1464;
const POD_IFINDEX_BASE: u32 = 100;
const LOCAL_PODS: u32 = 200;

/// Which path to measure.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum PathKind {
    /// Every packet belongs to a flow already in the table.
    Established,
    /// Every packet starts a new flow.
    New,
}

#[derive(Clone, Debug, clap::Args)]
pub struct PipelineArgs {
    /// Distinct flows cycled through (established path).
    #[arg(long, default_value_t = 100_000)]
    pub flows: usize,
    /// Number of Services (each with 3 local backends).
    #[arg(long, default_value_t = 10)]
    pub services: usize,
    #[arg(long, value_enum, default_value = "established")]
    pub path: PathKind,
    /// Frames per batch (32–64).
    #[arg(long, default_value_t = 64)]
    pub batch: usize,
    /// Packets to time (after warm-up).
    #[arg(long, default_value_t = 20_000_000)]
    pub packets: u64,
    /// Stop after this many seconds even if fewer packets were sent.
    #[arg(long, default_value_t = 20.0)]
    pub seconds: f64,
    /// Core to pin to.
    #[arg(long, default_value_t = 1)]
    pub core: usize,
    /// Flow-table capacity (flows). Default: 2 × --flows (established), or
    /// room for every packet's flow (new: creation without eviction). The
    /// agent's default is 262144.
    #[arg(long)]
    pub capacity: Option<usize>,
    /// Inner frame size in bytes (Ethernet to the end of the UDP payload),
    /// 64–1464; the outer VXLAN frame is 50 bytes more.
    #[arg(long, default_value_t = 64)]
    pub frame_bytes: usize,
    /// Model an AF_XDP adapter whose tx descriptors must start where the rx
    /// descriptor did (xsk-rs): after the pipeline, every transmitted frame
    /// whose start moved (decapsulation) is moved back with `copy_within`.
    #[arg(long)]
    pub fixed_start: bool,
    /// Also count the instructions per packet inside `process_batch` with
    /// `valgrind --tool=callgrind`: two runs of this binary under valgrind (N
    /// and 2N packets, same flows), the difference of their counts over the
    /// difference of their packets, so set-up and warm-up cancel out. The same
    /// binary and input give the same count on any machine.
    #[arg(long)]
    pub instructions: bool,
    /// The flow table's hash seed (the agent's is random). Runs with one seed
    /// place every flow in the same set; `--instructions` uses this one for
    /// both of its runs (default 1), so its count repeats exactly.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Also measure the 1,000-flow, 10-Service established path (everything in
    /// cache) in the same run and report this run's ns/packet against it.
    #[arg(long)]
    pub baseline: bool,
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct PipelineResult {
    pub path: PathKind,
    pub flows: usize,
    pub services: usize,
    pub batch: usize,
    pub packets: u64,
    pub elapsed_s: f64,
    pub ns_per_packet: f64,
    pub mpps: f64,
    pub copy_ns_per_packet: f64,
    pub pipeline_only_ns_per_packet: f64,
    /// Inner frame bytes (`--frame-bytes`).
    pub frame_bytes: usize,
    /// Frames moved back to their rx start after the pipeline (`--fixed-start`).
    pub fixed_start: bool,
    /// Instructions per packet inside `process_batch` (`--instructions`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub instructions_per_packet: Option<f64>,
    /// The 1,000-flow established path's ns/packet, measured in the same run
    /// (`--baseline`), and this run's figure over it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub baseline_ns_per_packet: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ratio_to_baseline: Option<f64>,
    pub tx: u64,
    pub drops: u64,
    pub flows_created: u64,
    pub flow_evictions: u64,
    pub flow_table_capacity: usize,
    pub snapshot_build_s: f64,
    /// Rebuilding the snapshot after one Service lost an endpoint (the
    /// control thread's work for one EndpointSlice change).
    pub snapshot_rebuild_s: f64,
    pub pinned_core: Option<usize>,
}

/// The node-a world with `services` ClusterIPs (in 198.18.96.0/20, more ports
/// when there are over 4000) each backed by 3 of 200 local pods.
pub fn build_snapshot(services: usize) -> Snapshot {
    let local_pods: Vec<PodRoute> = (0..LOCAL_PODS)
        .map(|i| PodRoute {
            ip: Ipv4Addr::from(u32::from(Ipv4Addr::new(198, 19, 1, 0)) + 2 + i),
            mac: [2, 0xaa, 0, 0, (i >> 8) as u8, i as u8],
            host_ifindex: POD_IFINDEX_BASE + i,
            host_mac: [2, 0xbb, 0, 0, (i >> 8) as u8, i as u8],
            name: format!("bench/pod-{i}"),
        })
        .collect();
    let svcs = (0..services)
        .map(|i| {
            let (ip, port) = service_addr(i);
            let eps = (0..3u32)
                .map(|k| {
                    let pod = (i as u32 * 3 + k) % LOCAL_PODS;
                    EndpointSpec::ready(local_pods[pod as usize].ip, 8080, Some("node-a"))
                })
                .collect();
            ServiceSpec {
                namespace: "bench".into(),
                name: format!("svc-{i}"),
                cluster_ips: vec![ip],
                ports: vec![ServicePortSpec {
                    name: "p".into(),
                    proto: L4Proto::Udp,
                    port,
                    node_port: None,
                    endpoints: eps,
                }],
                ..ServiceSpec::default()
            }
        })
        .collect();
    let spec = TableSpec {
        node: NodeInfo {
            name: "node-a".into(),
            zone: None,
            underlay_ip: Some(Ipv4Addr::new(198, 18, 0, 2)),
            node_ips: vec![Ipv4Addr::new(198, 18, 0, 2)],
            nodeport_cidrs: Vec::new(),
            localhost_nodeports: false,
            host_if: None,
            pod_cidrs: vec!["198.19.1.0/24".parse().expect("static CIDR")],
            uplink_ifindex: 2,
            uplink_mtu: 1500,
            uplink_mac: [2, 0, 0, 0, 0, 2],
            vtep_mac: [2, 0, 0, 0, 1, 1],
        },
        overlay: OverlayConfig { vni: 1, port: 8472 },
        service_cidrs: vec!["198.18.96.0/20".parse().expect("static CIDR")],
        services: svcs,
        local_pods,
        remote_nodes: vec![RemoteNode {
            name: "node-b".into(),
            underlay_ip: Ipv4Addr::new(198, 18, 0, 3),
            vtep_mac: [2, 0, 0, 0, 3, 1],
            pod_cidrs: vec!["198.19.3.0/24".parse().expect("static CIDR")],
        }],
        neighbors: vec![(Ipv4Addr::new(198, 18, 0, 3), [2, 0, 0, 0, 0, 3])],
        gateway: None,
        masquerade_ports: (61000, 65535),
        masquerade: Default::default(),
        maglev_size: 0,
        dns: None,
        headless: Vec::new(),
    };
    Snapshot::build(spec, 1)
}

fn service_addr(i: usize) -> (Ipv4Addr, u16) {
    let base = u32::from(Ipv4Addr::new(198, 18, 96, 1));
    let ip = Ipv4Addr::from(base + (i % 4000) as u32);
    (ip, 53 + (i / 4000) as u16)
}

/// A VXLAN frame (50 outer bytes + a `frame_bytes` inner frame, 64 by default)
/// from node-b.
pub fn template(frame_bytes: usize) -> Vec<u8> {
    let inner = frame_bytes.clamp(64, MAX_FRAME_BYTES);
    let be = |n: usize| u16::try_from(n).unwrap_or(u16::MAX).to_be_bytes();
    let mut f = vec![0u8; OUTER + inner];
    // outer Ethernet
    f[0..6].copy_from_slice(&[2, 0, 0, 0, 0, 2]);
    f[6..12].copy_from_slice(&[2, 0, 0, 0, 0, 3]);
    f[12..14].copy_from_slice(&[0x08, 0x00]);
    // outer IPv4
    let ip = 14;
    f[ip] = 0x45;
    f[ip + 2..ip + 4].copy_from_slice(&be(OUTER + inner - 14));
    f[ip + 8] = 64;
    f[ip + 9] = 17;
    f[ip + 12..ip + 16].copy_from_slice(&[198, 18, 0, 3]);
    f[ip + 16..ip + 20].copy_from_slice(&[198, 18, 0, 2]);
    let cs = checksum::checksum(&f[ip..ip + 20]);
    f[ip + 10..ip + 12].copy_from_slice(&cs.to_be_bytes());
    // outer UDP
    let u = 34;
    f[u..u + 2].copy_from_slice(&49152u16.to_be_bytes());
    f[u + 2..u + 4].copy_from_slice(&8472u16.to_be_bytes());
    f[u + 4..u + 6].copy_from_slice(&be(OUTER + inner - 34));
    // VXLAN
    f[42] = 0x08;
    f[48] = 1; // VNI 1 (bytes 46..49)
               // inner Ethernet
    let e = 50;
    f[e..e + 6].copy_from_slice(&[2, 0, 0, 0, 1, 1]);
    f[e + 6..e + 12].copy_from_slice(&[2, 0, 0, 0, 3, 1]);
    f[e + 12..e + 14].copy_from_slice(&[0x08, 0x00]);
    // inner IPv4 (20 + 8 + payload: 50 bytes for a 64-byte frame)
    let i = 64;
    f[i] = 0x45;
    f[i + 2..i + 4].copy_from_slice(&be(inner - 14));
    f[i + 8] = 64;
    f[i + 9] = 17;
    f[i + 12..i + 16].copy_from_slice(&[198, 19, 3, 10]);
    f[i + 16..i + 20].copy_from_slice(&[198, 18, 96, 1]);
    let cs = checksum::checksum(&f[i..i + 20]);
    f[i + 10..i + 12].copy_from_slice(&cs.to_be_bytes());
    // inner UDP
    let iu = 84;
    f[iu..iu + 2].copy_from_slice(&1024u16.to_be_bytes());
    f[iu + 2..iu + 4].copy_from_slice(&53u16.to_be_bytes());
    f[iu + 4..iu + 6].copy_from_slice(&be(inner - 34));
    f
}

/// The inner addresses and ports of one benchmark flow, as the frame carries them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct FlowFields {
    src: [u8; 4],
    dst: [u8; 4],
    sport: [u8; 2],
    dport: [u8; 2],
}

const SRC_HOSTS: u64 = 250;
const SRC_PORTS: u64 = 64_000;

/// Flow `n`: a distinct (source IP, source port, service) triple.
fn flow_fields(n: u64, services: usize) -> FlowFields {
    let src = u32::from(Ipv4Addr::new(198, 19, 3, 0)) + 1 + (n % SRC_HOSTS) as u32;
    let sport = 1024 + ((n / SRC_HOSTS) % SRC_PORTS) as u16;
    let hi = (n / (SRC_HOSTS * SRC_PORTS)) as u32;
    let src = src ^ (hi << 8 & 0x0000_ff00);
    let (dst, dport) = service_addr((n % services as u64) as usize);
    FlowFields {
        src: src.to_be_bytes(),
        dst: dst.octets(),
        sport: sport.to_be_bytes(),
        dport: dport.to_be_bytes(),
    }
}

/// `flow_fields(n)`, `flow_fields(n + 1)`, … computed by counting instead of
/// dividing, so the timed loop pays for the packet and not for the harness.
struct FlowSeq {
    host: u64,
    port: u64,
    hi: u64,
    svc: usize,
    services: Vec<([u8; 4], [u8; 2])>,
}

impl FlowSeq {
    fn starting_at(n: u64, services: usize) -> FlowSeq {
        FlowSeq {
            host: n % SRC_HOSTS,
            port: (n / SRC_HOSTS) % SRC_PORTS,
            hi: n / (SRC_HOSTS * SRC_PORTS),
            svc: (n % services as u64) as usize,
            services: (0..services)
                .map(|i| {
                    let (ip, port) = service_addr(i);
                    (ip.octets(), port.to_be_bytes())
                })
                .collect(),
        }
    }

    #[inline]
    fn next_fields(&mut self) -> FlowFields {
        let src = u32::from(Ipv4Addr::new(198, 19, 3, 0)) + 1 + self.host as u32;
        let src = src ^ ((self.hi as u32) << 8 & 0x0000_ff00);
        let (dst, dport) = self.services[self.svc];
        let f = FlowFields {
            src: src.to_be_bytes(),
            dst,
            sport: (1024 + self.port as u16).to_be_bytes(),
            dport,
        };
        self.host += 1;
        if self.host == SRC_HOSTS {
            self.host = 0;
            self.port += 1;
            if self.port == SRC_PORTS {
                self.port = 0;
                self.hi += 1;
            }
        }
        self.svc += 1;
        if self.svc == self.services.len() {
            self.svc = 0;
        }
        f
    }
}

/// Where the timed loop takes its flows from: a precomputed cycle (established
/// path, in shuffled order) or an endless sequence of new ones.
enum FlowSource {
    Cycle {
        fields: Vec<FlowFields>,
        next: usize,
    },
    Fresh(FlowSeq),
}

impl FlowSource {
    #[inline]
    fn next_fields(&mut self) -> FlowFields {
        match self {
            FlowSource::Cycle { fields, next } => {
                let f = fields[*next];
                *next += 1;
                if *next == fields.len() {
                    *next = 0;
                }
                f
            }
            FlowSource::Fresh(seq) => seq.next_fields(),
        }
    }
}

/// Copies the template into a frame slot and writes the flow's inner addresses
/// and ports.
#[inline]
fn prepare(slot: &mut [u8], tmpl: &[u8], flow: &FlowFields) {
    let f = &mut slot[HEADROOM..HEADROOM + tmpl.len()];
    f.copy_from_slice(tmpl);
    f[76..80].copy_from_slice(&flow.src);
    f[80..84].copy_from_slice(&flow.dst);
    f[84..86].copy_from_slice(&flow.sport);
    f[86..88].copy_from_slice(&flow.dport);
}

/// A permutation of 0..n from a fixed-seed xorshift (so runs are comparable).
fn shuffled(n: usize) -> Vec<u32> {
    let mut v: Vec<u32> = (0..n as u32).collect();
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for i in (1..v.len()).rev() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.swap(i, (x % (i as u64 + 1)) as usize);
    }
    v
}

fn monotonic_ns(start: Instant) -> u64 {
    u64::try_from(start.elapsed().as_nanos()).unwrap_or(u64::MAX)
}

/// Runs the benchmark.
pub fn run(args: &PipelineArgs) -> anyhow::Result<PipelineResult> {
    anyhow::ensure!((32..=64).contains(&args.batch), "--batch must be 32..=64");
    anyhow::ensure!(
        args.flows >= 1 && args.services >= 1,
        "--flows and --services must be ≥ 1"
    );
    anyhow::ensure!(args.services <= 60_000, "--services must be ≤ 60000");
    let pinned = core_affinity::get_core_ids()
        .and_then(|ids| ids.into_iter().find(|c| c.id == args.core))
        .filter(|c| core_affinity::set_for_current(*c))
        .map(|c| c.id);
    let t = Instant::now();
    let snap = build_snapshot(args.services);
    let snapshot_build_s = t.elapsed().as_secs_f64();
    let mut changed = snap.spec.clone();
    if let Some(p) = changed
        .services
        .first_mut()
        .and_then(|s| s.ports.first_mut())
    {
        p.endpoints.pop();
    }
    let t = Instant::now();
    let rebuilt = Snapshot::build_after(changed, 2, Some(&snap));
    let snapshot_rebuild_s = t.elapsed().as_secs_f64();
    drop(rebuilt);
    let capacity = match (args.capacity, args.path) {
        (Some(c), _) => c.max(1024),
        (None, PathKind::Established) => (2 * args.flows).max(1024),
        (None, PathKind::New) => (args.packets.min(4_000_000) as usize + 1024).max(args.flows),
    };
    let table = FlowTable::new(capacity);
    let table = match args.seed {
        Some(seed) => table.with_seed((seed, seed.rotate_left(32) ^ 0x9e37_79b9_7f4a_7c15)),
        None => table,
    };
    let mut flows = WorkerState::from(table);
    let mut counters = Counters::default();
    anyhow::ensure!(
        (64..=MAX_FRAME_BYTES).contains(&args.frame_bytes),
        "--frame-bytes must be 64..={MAX_FRAME_BYTES}"
    );
    let tmpl = template(args.frame_bytes);
    let batch = args.batch;
    // One slot per frame: headroom, the frame, room to spare, in 256-byte steps.
    let slot = (HEADROOM + tmpl.len() + 64).next_multiple_of(256);
    let mut bufs = Bufs {
        bytes: vec![0u8; slot * batch],
        slot,
        fixed_start: args.fixed_start,
    };
    let mut verdicts = vec![Verdict::Pass; batch];
    let clock = Instant::now();
    let order = match args.path {
        PathKind::Established => shuffled(args.flows),
        PathKind::New => Vec::new(),
    };
    // Warm-up: create every flow once (established), or a table's worth (new).
    if args.path == PathKind::Established {
        let mut n = 0u64;
        while (n as usize) < args.flows {
            let k = batch.min(args.flows - n as usize);
            run_batch(
                &mut bufs,
                &mut verdicts[..k],
                &tmpl,
                n,
                1,
                args.services,
                &snap,
                &mut flows,
                &mut counters,
                &clock,
            );
            n += k as u64;
        }
    }
    let warm = counters.clone();
    // New flows start at 2^32, so they never repeat warm-up ones.
    let source = || match args.path {
        PathKind::Established => FlowSource::Cycle {
            fields: order
                .iter()
                .map(|&n| flow_fields(u64::from(n), args.services))
                .collect(),
            next: 0,
        },
        PathKind::New => FlowSource::Fresh(FlowSeq::starting_at(1u64 << 32, args.services)),
    };
    let mut flows_in = source();
    let deadline = args.seconds;
    let mut sent = 0u64;
    let t = Instant::now();
    while sent < args.packets {
        for _ in 0..64 {
            for slot in bufs.slots() {
                prepare(slot, &tmpl, &flows_in.next_fields());
            }
            let now = monotonic_ns(clock);
            process_slots(
                &mut bufs,
                &mut verdicts,
                &tmpl,
                &snap,
                &mut flows,
                &mut counters,
                now,
            );
            sent += batch as u64;
        }
        if t.elapsed().as_secs_f64() > deadline {
            break;
        }
    }
    let elapsed = t.elapsed().as_secs_f64();
    // The preparation alone, for the same number of packets from the same source.
    let mut flows_in = source();
    let tc = Instant::now();
    let mut sink = 0u8;
    let mut m = 0u64;
    while m < sent {
        for slot in bufs.slots() {
            prepare(slot, &tmpl, &flows_in.next_fields());
            sink ^= slot[HEADROOM + 77];
        }
        m += batch as u64;
    }
    std::hint::black_box(sink);
    let copy_s = tc.elapsed().as_secs_f64();
    let tx = counters.forwarded - warm.forwarded;
    let drops = counters.total_drops() - warm.total_drops();
    if (tx as f64) < 0.99 * sent as f64 {
        let reasons: Vec<String> = shared::DropReason::ALL
            .iter()
            .filter(|r| counters.dropped(**r) > 0)
            .map(|r| format!("{}={}", r.name(), counters.dropped(*r)))
            .collect();
        anyhow::bail!(
            "only {tx} of {sent} packets were forwarded (drops: {}); the benchmark is not measuring the intended path",
            reasons.join(", ")
        );
    }
    let ns = elapsed * 1e9 / sent as f64;
    let copy_ns = copy_s * 1e9 / sent as f64;
    Ok(PipelineResult {
        path: args.path,
        flows: args.flows,
        services: args.services,
        batch,
        packets: sent,
        elapsed_s: elapsed,
        ns_per_packet: ns,
        mpps: sent as f64 / elapsed / 1e6,
        copy_ns_per_packet: copy_ns,
        pipeline_only_ns_per_packet: (ns - copy_ns).max(0.0),
        frame_bytes: args.frame_bytes,
        fixed_start: args.fixed_start,
        instructions_per_packet: None,
        baseline_ns_per_packet: None,
        ratio_to_baseline: None,
        tx,
        drops,
        flows_created: counters.flows_created - warm.flows_created,
        flow_evictions: flows.flows.evictions(),
        flow_table_capacity: capacity,
        snapshot_build_s,
        snapshot_rebuild_s,
        pinned_core: pinned,
    })
}

#[allow(clippy::too_many_arguments)]
fn run_batch(
    bufs: &mut Bufs,
    verdicts: &mut [Verdict],
    tmpl: &[u8],
    first: u64,
    step: u64,
    services: usize,
    snap: &Snapshot,
    flows: &mut WorkerState,
    counters: &mut Counters,
    clock: &Instant,
) {
    for (i, slot) in bufs.slots().enumerate().take(verdicts.len()) {
        prepare(slot, tmpl, &flow_fields(first + i as u64 * step, services));
    }
    process_slots(
        bufs,
        verdicts,
        tmpl,
        snap,
        flows,
        counters,
        monotonic_ns(*clock),
    );
}

/// The frame slots of one batch, in one buffer.
struct Bufs {
    bytes: Vec<u8>,
    slot: usize,
    fixed_start: bool,
}

impl Bufs {
    fn slots(&mut self) -> impl Iterator<Item = &mut [u8]> {
        self.bytes.chunks_exact_mut(self.slot)
    }
}

/// Wraps the slots as frames (on the stack, no allocation) and runs the
/// pipeline; with `fixed_start`, then moves every transmitted frame whose start
/// moved back to where it was received.
fn process_slots(
    bufs: &mut Bufs,
    verdicts: &mut [Verdict],
    tmpl: &[u8],
    snap: &Snapshot,
    flows: &mut WorkerState,
    counters: &mut Counters,
    now: u64,
) {
    let len = tmpl.len();
    let fixed = bufs.fixed_start;
    let n = verdicts.len().min(64);
    let mut moved = [(HEADROOM, 0usize); 64];
    {
        let mut it = bufs.slots();
        let mut frames: [Frame<'_>; 64] = std::array::from_fn(|_| match it.next() {
            Some(b) => Frame::new(b, HEADROOM, len, 2),
            None => Frame::new(&mut [], 0, 0, 2),
        });
        process_batch(
            &mut frames[..n],
            &mut verdicts[..n],
            snap,
            flows,
            counters,
            now,
        );
        if fixed {
            for (m, f) in moved.iter_mut().zip(&frames[..n]) {
                *m = (f.offset(), f.len());
            }
        }
    }
    if fixed {
        for ((slot, &(off, l)), v) in bufs.slots().zip(&moved[..n]).zip(&verdicts[..n]) {
            if matches!(v, Verdict::Tx { .. }) && off != HEADROOM {
                slot.copy_within(off..off + l, HEADROOM);
            }
        }
    }
}

/// `run`, with the instruction count and the in-run baseline when asked for.
pub fn run_all(args: &PipelineArgs) -> anyhow::Result<PipelineResult> {
    let baseline = if args.baseline {
        let b = run(&PipelineArgs {
            flows: 1000,
            services: 10,
            path: PathKind::Established,
            frame_bytes: 64,
            fixed_start: false,
            capacity: None,
            packets: args.packets.min(10_000_000),
            ..args.clone()
        })?;
        Some(b.ns_per_packet)
    } else {
        None
    };
    let mut r = run(args)?;
    if let Some(b) = baseline {
        r.baseline_ns_per_packet = Some(b);
        r.ratio_to_baseline = Some(r.ns_per_packet / b);
    }
    if args.instructions {
        r.instructions_per_packet = Some(instructions_per_packet(args)?);
    }
    Ok(r)
}

/// Instructions per packet inside `process_batch`, counted by callgrind: this
/// binary run twice under valgrind with the same arguments, N and 2N packets.
fn instructions_per_packet(args: &PipelineArgs) -> anyhow::Result<f64> {
    let exe = std::env::current_exe()?;
    // Enough packets that the batch loop dominates; the test suite asks for fewer.
    let n = std::env::var("NODEPLANE_CALLGRIND_PACKETS")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(match args.path {
            PathKind::Established => 200_000,
            PathKind::New => 100_000,
        });
    let mut counts = Vec::new();
    for packets in [n, 2 * n] {
        let out_file = std::env::temp_dir().join(format!(
            "nodeplane-callgrind-{}-{packets}.out",
            std::process::id()
        ));
        let mut cmd = std::process::Command::new("valgrind");
        cmd.arg("--tool=callgrind")
            .arg("--toggle-collect=*process_batch*")
            .arg(format!("--callgrind-out-file={}", out_file.display()))
            .arg(&exe)
            .arg("pipeline")
            .args(["--flows", &args.flows.to_string()])
            .args(["--services", &args.services.to_string()])
            .args(["--batch", &args.batch.to_string()])
            .args(["--packets", &packets.to_string()])
            .args(["--seconds", "600"])
            .args(["--core", &args.core.to_string()])
            .args(["--frame-bytes", &args.frame_bytes.to_string()])
            .args(["--seed", &args.seed.unwrap_or(1).to_string()])
            .args([
                "--path",
                match args.path {
                    PathKind::Established => "established",
                    PathKind::New => "new",
                },
            ])
            .arg("--json");
        if let Some(c) = args.capacity {
            cmd.args(["--capacity", &c.to_string()]);
        }
        if args.fixed_start {
            cmd.arg("--fixed-start");
        }
        let out = cmd.output().map_err(|e| {
            anyhow::anyhow!("--instructions needs valgrind (apt-get install valgrind): {e}")
        })?;
        let _ = std::fs::remove_file(&out_file);
        anyhow::ensure!(
            out.status.success(),
            "valgrind run failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        let collected = stderr
            .lines()
            .find_map(|l| l.split("Collected :").nth(1))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .ok_or_else(|| anyhow::anyhow!("no 'Collected' line in callgrind's output"))?;
        let sent: PipelineResult = serde_json::from_slice(&out.stdout)
            .map_err(|e| anyhow::anyhow!("the run under valgrind printed no result: {e}"))?;
        counts.push((collected, sent.packets));
    }
    let (i1, p1) = counts[0];
    let (i2, p2) = counts[1];
    anyhow::ensure!(
        p2 > p1 && i2 >= i1,
        "callgrind counts do not grow with packets"
    );
    Ok((i2 - i1) as f64 / (p2 - p1) as f64)
}

/// Prints a result as JSON or as a readable line.
pub fn print(r: &PipelineResult, json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string(r)?);
    } else {
        println!(
            "pipeline {:?}: {:.1} ns/packet ({:.2} Mpps) incl. {:.1} ns frame preparation; {} flows, {} services, batch {}, {} packets in {:.2} s, {} drops, {} evictions",
            r.path,
            r.ns_per_packet,
            r.mpps,
            r.copy_ns_per_packet,
            r.flows,
            r.services,
            r.batch,
            r.packets,
            r.elapsed_s,
            r.drops,
            r.flow_evictions
        );
        if let Some(i) = r.instructions_per_packet {
            println!("  {i:.0} instructions per packet (callgrind, process_batch only)");
        }
        if let (Some(b), Some(x)) = (r.baseline_ns_per_packet, r.ratio_to_baseline) {
            println!("  {x:.2}x the 1,000-flow baseline of this run ({b:.1} ns/packet)");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counted_flow_sequence_matches_the_formula_across_every_wrap() {
        // Starts near each wrap: source hosts, source ports, the high byte, services.
        let starts = [
            0,
            SRC_HOSTS - 2,
            SRC_HOSTS * SRC_PORTS - 3,
            (1 << 32) - 1,
            1 << 32,
        ];
        for services in [1, 7, 4001] {
            for &start in &starts {
                let mut seq = FlowSeq::starting_at(start, services);
                for n in start..start + 600 {
                    assert_eq!(
                        seq.next_fields(),
                        flow_fields(n, services),
                        "flow {n} with {services} services"
                    );
                }
            }
        }
    }

    fn args(path: PathKind) -> PipelineArgs {
        PipelineArgs {
            flows: 500,
            services: 3,
            path,
            batch: 64,
            packets: 20_000,
            seconds: 10.0,
            core: 0,
            capacity: None,
            frame_bytes: 64,
            fixed_start: false,
            instructions: false,
            seed: None,
            baseline: false,
            json: true,
        }
    }

    #[test]
    fn large_frames_and_fixed_starts_forward_every_packet() {
        for (bytes, fixed) in [(1464, false), (1464, true), (64, true)] {
            let r = run(&PipelineArgs {
                frame_bytes: bytes,
                fixed_start: fixed,
                ..args(PathKind::Established)
            })
            .expect("benchmark run");
            assert_eq!(r.drops, 0, "{bytes} bytes");
            assert!(
                r.tx >= r.packets,
                "{bytes} bytes: {} of {}",
                r.tx,
                r.packets
            );
        }
        let t = template(1464);
        assert_eq!(t.len(), 1514);
        let ip = shared::wire::Ipv4Packet::new_checked(&t[64..]).expect("inner IPv4");
        assert_eq!(usize::from(ip.total_len()), 1450);
        assert!(ip.verify_checksum());
        let outer = shared::wire::Ipv4Packet::new_checked(&t[14..]).expect("outer IPv4");
        assert_eq!(usize::from(outer.total_len()), 1500);
        assert!(outer.verify_checksum());
    }

    #[test]
    fn a_short_run_forwards_every_packet_on_both_paths() {
        for path in [PathKind::Established, PathKind::New] {
            let r = run(&args(path)).expect("benchmark run");
            assert_eq!(r.drops, 0, "{path:?}");
            assert!(
                r.tx >= r.packets,
                "{path:?}: {} of {} forwarded",
                r.tx,
                r.packets
            );
            if path == PathKind::New {
                assert!(r.flows_created >= r.packets, "every packet is a new flow");
            } else {
                // Warm flows are hits; one only comes back as new after a set
                // overflowed and evicted it (unreplied UDP is evictable).
                assert!(
                    r.flows_created <= r.flow_evictions,
                    "{} flows created, {} evictions",
                    r.flows_created,
                    r.flow_evictions
                );
            }
        }
    }
}
