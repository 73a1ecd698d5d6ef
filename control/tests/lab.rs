//! Root lab tests (issue 3): real sockets through nodeplane agents running on
//! node-a and node-b of the namespace lab, next to a flannel-style kernel node.
//! Each test builds its own lab (scripts/testbed, per-test prefix) and removes it.

mod lab_support;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::process::Command;

use lab_support::*;

fn sa(ip: std::net::Ipv4Addr, port: u16) -> SocketAddr {
    SocketAddr::from((ip, port))
}

fn pod_of(answer: &str) -> String {
    answer
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string()
}

fn client_of(answer: &str) -> String {
    answer
        .split_whitespace()
        .nth(1)
        .unwrap_or_default()
        .to_string()
}

fn both_agents(tag: &str) -> Option<Lab> {
    let mut lab = Lab::up(tag)?;
    lab.start_agent("a", &[]);
    lab.start_agent("b", &[]);
    Some(lab)
}

#[test]
fn lab_pod_to_pod_same_node_across_nodes_and_with_the_kernel_node() {
    let Some(lab) = both_agents("p") else { return };
    // (from, to): same node, across nodeplane nodes, to and from the kernel node.
    for (from, to) in [
        ("a1", "a2"),
        ("a1", "b1"),
        ("b2", "a2"),
        ("a1", "k1"),
        ("k1", "a1"),
        ("k1", "b2"),
    ] {
        let dst = lab.ip(to);
        let answer = eventually(5, || tcp_line(&lab.ns(from), sa(dst, 8080), "hello"))
            .unwrap_or_else(|e| panic!("TCP {from} → {to}: {e}\n{}", lab.agent_log("a")));
        assert!(answer.ends_with("hello"), "{from} → {to}: {answer}");
        assert_eq!(
            client_of(&answer).split(':').next(),
            Some(lab.ip(from).to_string().as_str()),
            "no NAT between pods"
        );
        let u = eventually(5, || udp_roundtrip(&lab.ns(from), sa(dst, 5353), "ping"))
            .unwrap_or_else(|e| panic!("UDP {from} → {to}: {e}"));
        assert!(u.ends_with("ping"), "{u}");
    }
    let st = lab.status("a");
    assert!(
        st.to_string().contains("decap") || st.to_string().contains("rx"),
        "{st}"
    );
}

#[test]
fn lab_clusterip_spreads_over_backends_on_all_nodes_and_replies_come_from_the_clusterip() {
    let Some(lab) = both_agents("c") else { return };
    let web: std::net::Ipv4Addr = lab.var("NP_WEB_IP").parse().unwrap();
    let dns: std::net::Ipv4Addr = lab.var("NP_DNS_IP").parse().unwrap();
    let mut pods = BTreeSet::new();
    for i in 0..40 {
        // A connected TCP socket only completes if the replies come from the ClusterIP.
        let answer = eventually(5, || {
            tcp_line(&lab.ns("a2"), sa(web, 80), &format!("req{i}"))
        })
        .unwrap_or_else(|e| panic!("ClusterIP connection {i}: {e}\n{}", lab.agent_log("a")));
        assert_eq!(
            client_of(&answer).split(':').next(),
            Some(lab.ip("a2").to_string().as_str()),
            "client IP kept"
        );
        pods.insert(pod_of(&answer));
    }
    assert_eq!(
        pods,
        BTreeSet::from(["a1".to_string(), "b1".to_string(), "k1".to_string()]),
        "new connections spread"
    );
    let mut udp_pods = BTreeSet::new();
    for i in 0..30 {
        let a = eventually(5, || {
            udp_roundtrip(&lab.ns("b2"), sa(dns, 53), &format!("q{i}"))
        })
        .expect("UDP via ClusterIP");
        udp_pods.insert(pod_of(&a));
    }
    assert!(udp_pods.len() >= 2, "UDP spreads too: {udp_pods:?}");
}

#[test]
fn lab_nodeport_from_an_external_client() {
    let Some(lab) = both_agents("n") else { return };
    let node_a = lab.ip("a");
    let port: u16 = lab.var("NP_WEB_NODEPORT").parse().unwrap();
    let mut pods = BTreeSet::new();
    for i in 0..40 {
        let answer = eventually(5, || {
            tcp_line(&lab.ns("x"), sa(node_a, port), &format!("n{i}"))
        })
        .unwrap_or_else(|e| panic!("NodePort {i}: {e}\n{}", lab.agent_log("a")));
        let pod = pod_of(&answer);
        let client = client_of(&answer);
        if pod == "a1" {
            assert!(
                client.starts_with(&lab.ip("x").to_string()),
                "local backend keeps the client IP: {answer}"
            );
        } else {
            assert!(
                client.starts_with("198.19.1.0:"),
                "remote backend sees node-a's overlay IP: {answer}"
            );
        }
        pods.insert(pod);
    }
    assert!(
        pods.contains("a1") && pods.contains("b1"),
        "backends on node-a and node-b: {pods:?}"
    );
}

#[test]
fn lab_service_without_endpoints_rejects() {
    let Some(lab) = both_agents("r") else { return };
    let empty: std::net::Ipv4Addr = lab.var("NP_EMPTY_IP").parse().unwrap();
    let ns = lab.ns("a1");
    let tcp = in_netns(&ns, move || {
        std::net::TcpStream::connect_timeout(&sa(empty, 80), std::time::Duration::from_secs(3))
            .map(|_| ())
    })
    .unwrap();
    let e = tcp.expect_err("connect must fail");
    assert_eq!(
        e.kind(),
        std::io::ErrorKind::ConnectionRefused,
        "TCP RST, not a timeout: {e}"
    );
    let udp = in_netns(&ns, move || -> std::io::Result<()> {
        let s = std::net::UdpSocket::bind("0.0.0.0:0")?;
        s.connect(sa(empty, 53))?;
        s.set_read_timeout(Some(std::time::Duration::from_secs(3)))?;
        s.send(b"q")?;
        let mut b = [0u8; 64];
        s.recv(&mut b).map(|_| ())
    })
    .unwrap();
    let e = udp.expect_err("no answer expected");
    assert_eq!(
        e.kind(),
        std::io::ErrorKind::ConnectionRefused,
        "ICMP port unreachable: {e}"
    );
}

/// A TCP server on node-a's own IP must answer the external client before,
/// while and after nodeplane runs (the XDP program passes the node's traffic).
#[test]
fn lab_node_keeps_its_own_connectivity() {
    let Some(mut lab) = Lab::up("h") else { return };
    let ns_a = lab.ns("a");
    let node_a = lab.ip("a");
    let listener = in_netns(&ns_a, move || {
        std::net::TcpListener::bind(sa(node_a, 2222)).expect("bind on node-a")
    })
    .expect("netns");
    let accept = std::thread::spawn(move || {
        for s in listener.incoming().take(3).flatten() {
            let mut s = s;
            let _ = std::io::Write::write_all(&mut s, b"node-a\n");
        }
    });
    let hello = |lab: &Lab| {
        let ns = lab.ns("x");
        in_netns(&ns, move || -> Result<String, String> {
            let mut s = std::net::TcpStream::connect_timeout(
                &sa(node_a, 2222),
                std::time::Duration::from_secs(3),
            )
            .map_err(|e| e.to_string())?;
            s.set_read_timeout(Some(std::time::Duration::from_secs(3)))
                .map_err(|e| e.to_string())?;
            let mut b = String::new();
            std::io::Read::read_to_string(&mut s, &mut b).map_err(|e| e.to_string())?;
            Ok(b)
        })
        .unwrap()
    };
    assert_eq!(hello(&lab).as_deref(), Ok("node-a\n"), "before");
    lab.start_agent("a", &[]);
    assert_eq!(
        hello(&lab).as_deref(),
        Ok("node-a\n"),
        "while nodeplane runs"
    );
    assert!(lab.stop_agent("a"), "clean exit on SIGTERM");
    assert_eq!(hello(&lab).as_deref(), Ok("node-a\n"), "after");
    accept.join().unwrap();
}

/// Stopping the agent detaches everything it attached.
#[test]
fn lab_stop_restores_the_interfaces() {
    let Some(mut lab) = Lab::up("s") else { return };
    lab.start_agent("a", &[]);
    let links = |lab: &Lab| {
        let out = Command::new("ip")
            .args(["-n", &lab.ns("a"), "-d", "link", "show"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    assert!(
        links(&lab).contains("xdp"),
        "attached while running:\n{}",
        links(&lab)
    );
    assert!(
        lab.stop_agent("a"),
        "clean exit on SIGTERM:\n{}",
        lab.agent_log("a")
    );
    let after = links(&lab);
    assert!(
        !after.contains("xdp"),
        "nothing of nodeplane is left attached:\n{after}"
    );
}
