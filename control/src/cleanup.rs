//! `nodeplane cleanup`: removes what an agent put on the node when it could
//! not (SIGKILL, a crash, a node drained without the DaemonSet's stop), like
//! `kube-proxy --cleanup`: nodeplane's XDP programs on every interface of this
//! network namespace (only programs named `nodeplane_steer`; any other is left
//! alone), its loopback tc filter (`nodeplane_local` at its own handle and
//! priority; the clsact qdisc stays), the host interface with its routes and neighbour entry, and the
//! agent's pod-CIDR file. The CNI plugin's pod registrations stay (its DEL
//! calls read them). Owns nothing at run time; it may not touch an interface
//! beyond detaching nodeplane's own program, or delete another file.

use std::path::Path;

use dataplane::io::Steering;

/// What `cleanup` removed.
#[derive(Debug, Default)]
pub struct Removed {
    /// (interface, XDP modes detached from).
    pub programs: Vec<(String, Vec<String>)>,
    /// Interfaces whose egress had the loopback program.
    pub tc_filters: Vec<String>,
    pub host_interface: bool,
    pub pod_cidr_file: bool,
}

/// Every interface of this network namespace (index, name).
fn interfaces() -> Vec<(u32, String)> {
    let mut out = Vec::new();
    if let Ok(dir) = std::fs::read_dir("/sys/class/net") {
        for e in dir.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if let Ok(i) = dataplane::io::netif::ifindex(&name) {
                out.push((i, name));
            }
        }
    }
    out.sort();
    out
}

/// Runs the clean-up in the calling thread's network namespace, unless an
/// agent answers on `status_addr` (it would lose its program mid-flight).
pub fn run(state_dir: &Path, status_addr: std::net::SocketAddr) -> anyhow::Result<Removed> {
    if std::net::TcpStream::connect_timeout(&status_addr, std::time::Duration::from_millis(300))
        .is_ok()
    {
        anyhow::bail!(
            "an agent is running (its status endpoint answers on {status_addr}); stop it first"
        );
    }
    let mut removed = Removed::default();
    let steering = Steering::load()
        .map_err(|e| anyhow::anyhow!("loading the steering program to find its kin: {e}"))?;
    for (ifindex, name) in interfaces() {
        let modes = steering.detach_stale(ifindex);
        if !modes.is_empty() {
            removed
                .programs
                .push((name.clone(), modes.iter().map(|m| format!("{m}")).collect()));
        }
        if steering.detach_stale_local(ifindex) {
            removed.tc_filters.push(name);
        }
    }
    let had_host = dataplane::io::netif::ifindex(crate::hostif::KERNEL_END).is_ok();
    crate::hostif::HostInterface::remove()
        .map_err(|e| anyhow::anyhow!("removing the host interface: {e}"))?;
    removed.host_interface = had_host;
    let file = state_dir.join(crate::podstate::POD_CIDR_FILE);
    removed.pod_cidr_file = std::fs::remove_file(&file).is_ok();
    Ok(removed)
}
