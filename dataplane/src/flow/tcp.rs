//! Connection-tracking state: the TCP state machine (after Linux conntrack's
//! main transitions), the TCP flag bits it reads, and the timeouts per state
//! (Linux and kube-proxy defaults). Pure functions of a state and a packet's
//! flags; the table applies them. No table, no packet bytes here.

pub(super) const NS: u64 = 1_000_000_000;

/// TCP flag bits as they sit in the header.
pub mod tcp_flags {
    pub const FIN: u8 = 0x01;
    pub const SYN: u8 = 0x02;
    pub const RST: u8 = 0x04;
    pub const ACK: u8 = 0x10;
}

/// Connection-tracking state of a flow.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
#[repr(u8)]
pub enum FlowState {
    /// UDP (or other) flow that has not seen a reply.
    #[default]
    UdpUnreplied,
    /// UDP flow that has seen a reply (assured).
    UdpReplied,
    TcpSynSent,
    TcpSynRecv,
    /// Assured.
    TcpEstablished,
    /// One side sent FIN.
    TcpFinWait,
    /// The other side has closed its half but this one has not (CLOSE_WAIT).
    TcpCloseWait,
    /// Both sides sent FIN; the last one is not acknowledged yet (LAST_ACK).
    TcpLastAck,
    /// Both sides sent FIN and the last one was acknowledged.
    TcpTimeWait,
    /// RST seen.
    TcpClose,
}

impl FlowState {
    pub(super) const COUNT: usize = 10;
    /// Every state, in discriminant order.
    pub(super) const ALL: [FlowState; Self::COUNT] = [
        FlowState::UdpUnreplied,
        FlowState::UdpReplied,
        FlowState::TcpSynSent,
        FlowState::TcpSynRecv,
        FlowState::TcpEstablished,
        FlowState::TcpFinWait,
        FlowState::TcpCloseWait,
        FlowState::TcpLastAck,
        FlowState::TcpTimeWait,
        FlowState::TcpClose,
    ];

    pub fn is_assured(self) -> bool {
        matches!(
            self,
            FlowState::UdpReplied
                | FlowState::TcpEstablished
                | FlowState::TcpFinWait
                | FlowState::TcpCloseWait
                | FlowState::TcpLastAck
                | FlowState::TcpTimeWait
        )
    }
}

/// Timeouts in seconds, Linux/kube-proxy defaults.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timeouts {
    pub tcp_syn_sent: u32,
    pub tcp_syn_recv: u32,
    /// kube-proxy sets nf_conntrack_tcp_timeout_established to 86400.
    pub tcp_established: u32,
    pub tcp_fin_wait: u32,
    /// kube-proxy sets nf_conntrack_tcp_timeout_close_wait to 3600.
    pub tcp_close_wait: u32,
    pub tcp_last_ack: u32,
    pub tcp_time_wait: u32,
    pub tcp_close: u32,
    pub udp: u32,
    pub udp_stream: u32,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            tcp_syn_sent: 120,
            tcp_syn_recv: 60,
            tcp_established: 86400,
            tcp_fin_wait: 120,
            tcp_close_wait: 3600,
            tcp_last_ack: 30,
            tcp_time_wait: 120,
            tcp_close: 10,
            udp: 30,
            udp_stream: 120,
        }
    }
}

impl Timeouts {
    /// Each state's timeout in nanoseconds, indexed by `FlowState as usize`.
    pub(super) fn by_state_ns(&self) -> [u64; FlowState::COUNT] {
        FlowState::ALL.map(|s| self.of(s))
    }

    fn of(&self, s: FlowState) -> u64 {
        u64::from(match s {
            FlowState::UdpUnreplied => self.udp,
            FlowState::UdpReplied => self.udp_stream,
            FlowState::TcpSynSent => self.tcp_syn_sent,
            FlowState::TcpSynRecv => self.tcp_syn_recv,
            FlowState::TcpEstablished => self.tcp_established,
            FlowState::TcpFinWait => self.tcp_fin_wait,
            FlowState::TcpCloseWait => self.tcp_close_wait,
            FlowState::TcpLastAck => self.tcp_last_ack,
            FlowState::TcpTimeWait => self.tcp_time_wait,
            FlowState::TcpClose => self.tcp_close,
        }) * NS
    }
}

/// A compact TCP state machine after Linux conntrack's main transitions.
pub(super) fn next_tcp_state(s: FlowState, fins: &mut u8, flags: u8, reply: bool) -> FlowState {
    use tcp_flags::*;
    if flags & RST != 0 {
        return FlowState::TcpClose;
    }
    if flags & FIN != 0 {
        *fins |= if reply { 2 } else { 1 };
        return if *fins == 3 {
            FlowState::TcpLastAck
        } else if s == FlowState::TcpEstablished
            || s == FlowState::TcpFinWait
            || s == FlowState::TcpCloseWait
        {
            if reply {
                FlowState::TcpCloseWait
            } else {
                FlowState::TcpFinWait
            }
        } else {
            s
        };
    }
    match s {
        // The ACK of the last FIN.
        FlowState::TcpLastAck if flags & ACK != 0 && flags & SYN == 0 => FlowState::TcpTimeWait,
        FlowState::TcpSynSent if reply && flags & SYN != 0 && flags & ACK != 0 => {
            FlowState::TcpSynRecv
        }
        FlowState::TcpSynRecv if !reply && flags & ACK != 0 => FlowState::TcpEstablished,
        // A flow picked up mid-stream (e.g. after an agent restart) is marked
        // established once both sides have sent non-SYN segments.
        FlowState::TcpSynSent if reply && flags & SYN == 0 && flags & ACK != 0 => {
            FlowState::TcpEstablished
        }
        // The client opens a new connection on the same tuple (Linux
        // conntrack: SYN in CLOSE or TIME_WAIT → SYN_SENT).
        FlowState::TcpClose | FlowState::TcpTimeWait
            if flags & SYN != 0 && flags & ACK == 0 && !reply =>
        {
            *fins = 0;
            FlowState::TcpSynSent
        }
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_are_listed_in_discriminant_order() {
        for (i, s) in FlowState::ALL.iter().enumerate() {
            assert_eq!(*s as usize, i);
        }
    }
}
