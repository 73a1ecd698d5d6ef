//! Fuzz target: arbitrary bytes as the payload of a UDP query from pod a2 to
//! the cluster DNS ClusterIP:53 (its source port from the first byte),
//! through the pipeline.
//! The frame must end in a verdict; an answer must go back to the sender from
//! the DNS address, parse as a DNS response with the query's id and fit 512
//! bytes; anything else must be the query unchanged on its way to the DNS
//! backend. Run with `cargo fuzz run dns` (see fuzz/README.md).
#![no_main]

use dataplane::{process_batch, Frame, Verdict, WorkerState};
use domain::base::Message;
use libfuzzer_sys::fuzz_target;
use nodeplane_fuzz::snapshot;
use shared::Counters;

const HEADROOM: usize = 128;

fn udp_frame(payload: &[u8], sport: u16) -> Vec<u8> {
    let mut f = vec![0u8; 14 + 20 + 8];
    f[0..6].copy_from_slice(&[2, 2, 0, 0, 0, 2]); // to a2's host end
    f[6..12].copy_from_slice(&[2, 2, 0, 0, 0, 1]); // from a2
    f[12..14].copy_from_slice(&[0x08, 0x00]);
    let total = u16::try_from(20 + 8 + payload.len()).unwrap();
    let ip = &mut f[14..34];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&total.to_be_bytes());
    ip[8] = 64;
    ip[9] = 17;
    ip[12..16].copy_from_slice(&[198, 19, 1, 11]);
    ip[16..20].copy_from_slice(&[198, 18, 96, 53]);
    let c = shared::wire::checksum::checksum(ip);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    let udp = &mut f[34..42];
    udp[0..2].copy_from_slice(&sport.to_be_bytes());
    udp[2..4].copy_from_slice(&53u16.to_be_bytes());
    udp[4..6].copy_from_slice(&u16::try_from(8 + payload.len()).unwrap().to_be_bytes());
    f.extend_from_slice(payload);
    f
}

fuzz_target!(|data: &[u8]| {
    let Some((&b0, payload)) = data.split_first() else {
        return;
    };
    let payload = &payload[..payload.len().min(1400)];
    let snap = snapshot();
    let mut flows = WorkerState::new(64);
    let mut counters = Counters::default();
    let sport = 40000 + u16::from(b0);
    let query = udp_frame(payload, sport);
    let mut buf = vec![0u8; 2048];
    buf[HEADROOM..HEADROOM + query.len()].copy_from_slice(&query);
    let mut frames = [Frame::new(&mut buf, HEADROOM, query.len(), 11)];
    let mut verdicts = [Verdict::Tx { ifindex: u32::MAX }];
    process_batch(&mut frames, &mut verdicts, snap, &mut flows, &mut counters, 1_000_000_000);
    let out = frames[0].data().to_vec();
    let answered = counters.dns_answered + counters.dns_nodata + counters.dns_nxdomain;
    match verdicts[0] {
        Verdict::Tx { ifindex: 11 } if answered == 1 => {
            assert_eq!(&out[26..30], &[198, 18, 96, 53], "from the DNS address");
            assert_eq!(&out[30..34], &[198, 19, 1, 11]);
            assert_eq!(&out[34..36], &53u16.to_be_bytes());
            assert_eq!(&out[36..38], &sport.to_be_bytes());
            let dns = &out[42..];
            assert!(dns.len() <= 512);
            let m = Message::from_octets(dns).expect("the answer parses");
            assert!(m.header().qr());
            assert_eq!(&dns[..2], &payload[..2], "the query's id");
            assert_eq!(shared::wire::checksum::checksum(&out[14..34]), 0, "IPv4 checksum");
            let ip_len = usize::from(u16::from_be_bytes([out[16], out[17]]));
            assert_eq!(ip_len, out.len() - 14, "IPv4 total length");
            let udp_len = usize::from(u16::from_be_bytes([out[38], out[39]]));
            assert_eq!(udp_len, out.len() - 34, "UDP length");
            let c = shared::wire::checksum::l4_checksum(
                [198, 18, 96, 53],
                [198, 19, 1, 11],
                17,
                &out[34..],
            );
            assert_eq!(c, 0, "UDP checksum");
        }
        Verdict::Tx { ifindex: u32::MAX } => panic!("no verdict"),
        Verdict::Tx { ifindex: 11 } => panic!("back to the pod, yet no answer counted"),
        Verdict::Tx { .. } => {
            // On to the DNS backend (b1, over the overlay): not answered.
            assert_eq!(answered, 0);
            assert!(out.len() >= query.len());
            assert!(out.ends_with(payload), "the query unchanged");
        }
        Verdict::Drop(_) | Verdict::Pass | Verdict::Handoff { .. } | Verdict::Held => {
            assert_eq!(answered, 0)
        }
    }
});
