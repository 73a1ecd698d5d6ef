//! `nodeplane-perf dns`: in-memory cluster DNS answers per second on one core
//! (issue 16). Batches of 64 UDP queries from a local pod to the cluster DNS
//! ClusterIP, the mix a pod's resolver sends for Service names (`ndots:5`:
//! A for the names, NXDOMAIN for the search-path forms tried before them,
//! AAAA without data, SRV), over a table of `--services` Services, through
//! `process_batch`; the copy of the queries into the frames is timed on its
//! own and reported apart. No I/O.

use std::net::Ipv4Addr;
use std::time::Instant;

use dataplane::{process_batch, Frame, Verdict, WorkerState};
use serde::Serialize;
use shared::dns::DnsSpec;
use shared::snapshot::{EndpointSpec, ServicePortSpec, ServiceSpec, Snapshot};
use shared::wire::checksum;
use shared::{Counters, L4Proto};

const HEADROOM: usize = 128;
const BATCH: usize = 64;
const DNS_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 111, 250);

#[derive(clap::Args, Debug, Clone)]
pub struct DnsArgs {
    /// Services in the name table.
    #[arg(long, default_value_t = 1000)]
    pub services: usize,
    /// Queries to time (after warm-up).
    #[arg(long, default_value_t = 20_000_000)]
    pub packets: u64,
    /// Stop after this many seconds even if fewer queries were answered.
    #[arg(long, default_value_t = 20.0)]
    pub seconds: f64,
    /// Core to pin to.
    #[arg(long, default_value_t = 1)]
    pub core: usize,
    #[arg(long)]
    pub json: bool,
}

#[derive(Serialize, Debug)]
pub struct DnsResult {
    pub services: usize,
    pub queries: u64,
    pub answers_per_sec: f64,
    pub ns_per_answer: f64,
    /// Of which copying the queries into the frames (what an rx ring does).
    pub copy_ns_per_answer: f64,
    pub answers_per_sec_without_copy: f64,
    pub answered: u64,
    pub nodata: u64,
    pub nxdomain: u64,
    pub forwarded: u64,
    pub pinned_core: Option<usize>,
}

/// A DNS query for `name` of type `qtype` with an EDNS0 OPT, in a UDP frame
/// from the pod `client` (ip, mac, host mac).
fn query(name: &str, qtype: u16, client: (Ipv4Addr, [u8; 6], [u8; 6]), id: u16) -> Vec<u8> {
    let mut dns = Vec::new();
    dns.extend_from_slice(&id.to_be_bytes());
    dns.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 1]);
    for l in name.split('.') {
        dns.push(u8::try_from(l.len()).expect("label"));
        dns.extend_from_slice(l.as_bytes());
    }
    dns.push(0);
    dns.extend_from_slice(&qtype.to_be_bytes());
    dns.extend_from_slice(&[0, 1]);
    dns.extend_from_slice(&[0, 0, 41, 0x04, 0xd0, 0, 0, 0, 0, 0, 0]);
    let mut f = Vec::with_capacity(42 + dns.len());
    f.extend_from_slice(&client.2); // to the pod's host end
    f.extend_from_slice(&client.1);
    f.extend_from_slice(&[0x08, 0x00]);
    let total = u16::try_from(28 + dns.len()).expect("length");
    let mut ip = [0u8; 20];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&total.to_be_bytes());
    ip[8] = 64;
    ip[9] = 17;
    ip[12..16].copy_from_slice(&client.0.octets());
    ip[16..20].copy_from_slice(&DNS_IP.octets());
    let c = checksum::checksum(&ip);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    f.extend_from_slice(&ip);
    let mut udp = Vec::with_capacity(8 + dns.len());
    udp.extend_from_slice(&(40000 + id % 20000).to_be_bytes());
    udp.extend_from_slice(&53u16.to_be_bytes());
    udp.extend_from_slice(&(total - 20).to_be_bytes());
    udp.extend_from_slice(&[0, 0]);
    udp.extend_from_slice(&dns);
    let c = checksum::l4_checksum(client.0.octets(), DNS_IP.octets(), 17, &udp);
    udp[6..8].copy_from_slice(&checksum::udp_nonzero(c).to_be_bytes());
    f.extend_from_slice(&udp);
    f
}

pub fn run(args: &DnsArgs) -> anyhow::Result<DnsResult> {
    anyhow::ensure!(args.services >= 1, "--services must be ≥ 1");
    let pinned = core_affinity::get_core_ids()
        .and_then(|ids| ids.into_iter().find(|c| c.id == args.core))
        .filter(|c| core_affinity::set_for_current(*c))
        .map(|c| c.id);
    let base = crate::pipeline_bench::build_snapshot(args.services);
    let mut spec = base.spec.clone();
    let pod = spec.local_pods[0].clone();
    spec.services.push(ServiceSpec {
        namespace: "kube-system".into(),
        name: "kube-dns".into(),
        cluster_ips: vec![DNS_IP],
        ports: vec![ServicePortSpec {
            name: "dns".into(),
            proto: L4Proto::Udp,
            port: 53,
            node_port: None,
            endpoints: vec![EndpointSpec::ready(
                spec.local_pods[1].ip,
                5353,
                Some("node-a"),
            )],
        }],
        ..ServiceSpec::default()
    });
    spec.dns = Some(DnsSpec {
        domain: "cluster.local".into(),
        server: DNS_IP,
        ttl: 5,
    });
    let snap = Snapshot::build(spec, 1);
    let client = (pod.ip, pod.mac, pod.host_mac);
    // Per Service name: the search form first (NXDOMAIN), then A, AAAA, and
    // every fourth an SRV for its port.
    let mut queries = Vec::new();
    for i in 0..BATCH * 16 {
        let svc = format!("svc-{}.bench.svc.cluster.local", i % args.services);
        let id = u16::try_from(i % 65536).unwrap_or(0);
        queries.push(match i % 4 {
            0 => query(&format!("{svc}.bench.svc.cluster.local"), 1, client, id),
            1 => query(&svc, 1, client, id),
            2 => query(&svc, 28, client, id),
            _ if i % 8 == 3 => query(&format!("_p._udp.{svc}"), 33, client, id),
            _ => query(&svc, 1, client, id),
        });
    }
    let mut bufs: Vec<u8> = vec![0u8; 2048 * BATCH];
    let mut verdicts = vec![Verdict::Pass; BATCH];
    let mut state = WorkerState::new(1024);
    let mut counters = Counters::default();
    let rounds = (args.packets / BATCH as u64).max(1);
    let copy = |bufs: &mut [u8], r: usize| {
        let group = r % 16;
        for (k, b) in bufs.chunks_mut(2048).enumerate() {
            let q = &queries[group * BATCH + k];
            b[HEADROOM..HEADROOM + q.len()].copy_from_slice(q);
        }
    };
    let run_round = |bufs: &mut [u8],
                     verdicts: &mut Vec<Verdict>,
                     state: &mut WorkerState,
                     counters: &mut Counters,
                     r: usize| {
        copy(bufs, r);
        let group = r % 16;
        let mut chunks = bufs.chunks_mut(2048);
        let mut frames: [Frame<'_>; BATCH] = std::array::from_fn(|k| {
            let n = queries[group * BATCH + k].len();
            Frame::new(
                chunks.next().unwrap_or_default(),
                HEADROOM,
                n,
                pod.host_ifindex,
            )
        });
        process_batch(&mut frames, verdicts, &snap, state, counters, 1_000_000_000);
    };
    for r in 0..16 {
        run_round(&mut bufs, &mut verdicts, &mut state, &mut counters, r);
    }
    anyhow::ensure!(
        verdicts.iter().all(|v| *v
            == Verdict::Tx {
                ifindex: pod.host_ifindex
            }),
        "every query answered back to the pod: {verdicts:?}"
    );
    counters = Counters::default();
    let start = Instant::now();
    let mut done = 0u64;
    for r in 0..rounds {
        run_round(
            &mut bufs,
            &mut verdicts,
            &mut state,
            &mut counters,
            r as usize,
        );
        done += 1;
        if r % 1024 == 0 && start.elapsed().as_secs_f64() > args.seconds {
            break;
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    let t = Instant::now();
    for r in 0..done {
        copy(&mut bufs, r as usize);
        std::hint::black_box(&bufs);
    }
    let copy_s = t.elapsed().as_secs_f64();
    let n = done * BATCH as u64;
    let ns = elapsed * 1e9 / n as f64;
    let copy_ns = copy_s * 1e9 / n as f64;
    Ok(DnsResult {
        services: args.services,
        queries: n,
        answers_per_sec: n as f64 / elapsed,
        ns_per_answer: ns,
        copy_ns_per_answer: copy_ns,
        answers_per_sec_without_copy: 1e9 / (ns - copy_ns).max(1e-3),
        answered: counters.dns_answered,
        nodata: counters.dns_nodata,
        nxdomain: counters.dns_nxdomain,
        forwarded: counters.dns_forwarded,
        pinned_core: pinned,
    })
}

pub fn print(r: &DnsResult, json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(r)?);
    } else {
        println!(
            "{} queries over {} Services: {:.2} M answers/s ({:.1} ns each, {:.1} ns of it the copy; {:.2} M/s without it); answered {} nodata {} nxdomain {} forwarded {}",
            r.queries,
            r.services,
            r.answers_per_sec / 1e6,
            r.ns_per_answer,
            r.copy_ns_per_answer,
            r.answers_per_sec_without_copy / 1e6,
            r.answered,
            r.nodata,
            r.nxdomain,
            r.forwarded
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_query_of_the_mix_is_answered() {
        let r = run(&DnsArgs {
            services: 10,
            packets: 6400,
            seconds: 5.0,
            core: 0,
            json: false,
        })
        .unwrap();
        assert_eq!(r.queries, 6400);
        assert_eq!(r.answered + r.nodata + r.nxdomain, r.queries);
        assert_eq!(r.forwarded, 0);
        assert_eq!(r.nxdomain * 4, r.queries, "the search forms");
        assert_eq!(r.nodata * 4, r.queries, "AAAA");
    }
}
