//! The kernel's drop counts of our SIP UDP sockets through `sock_diag`
//! netlink (what `ss -uam` reads), asked for our ports only.
//!
//! `/proc/net/udp` prints every UDP socket of the namespace as text, and
//! the kernel's cost grows faster than their number: 156 ms for one read
//! with 16,000 sockets open on the 2-core VM, each second. A node with
//! 4,000 calls up has that many RTP sockets. Here the kernel walks its
//! table with a filter on the local port (`INET_DIAG_BC_S_EQ`) and sends
//! back a few dozen bytes per SIP socket. Safe code over `rustix`: the
//! messages are laid out by hand, as `linux/inet_diag.h` defines them.

use std::io;

use rustix::net::netlink::{self, SocketAddrNetlink};
use rustix::net::{AddressFamily, RecvFlags, SendFlags, SocketFlags, SocketType};

const SOCK_DIAG_BY_FAMILY: u16 = 20;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_DUMP: u16 = 0x300;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const IPPROTO_UDP: u8 = 17;
/// `INET_DIAG_SKMEMINFO`: the `SK_MEMINFO_*` counters, asked by bit
/// `INET_DIAG_SKMEMINFO - 1` of `idiag_ext`.
const INET_DIAG_SKMEMINFO: u16 = 7;
const SK_MEMINFO_DROPS: usize = 8;
const INET_DIAG_REQ_BYTECODE: u16 = 1;
const INET_DIAG_BC_S_EQ: u8 = 11;
const HEADER: usize = 16;
/// `struct inet_diag_msg`.
const DIAG_MSG: usize = 72;
/// The most one read, and all the dumps of one call, may take.
const WITHIN: std::time::Duration = std::time::Duration::from_secs(1);

/// What the kernel dropped on the UDP sockets bound to `ports` (IPv4 and
/// IPv6), as `/proc/net/udp`'s `drops` column sums it.
pub(crate) fn udp_drops(ports: &[u16]) -> io::Result<u64> {
    let fd = rustix::net::socket_with(
        AddressFamily::NETLINK,
        SocketType::DGRAM,
        SocketFlags::CLOEXEC,
        Some(netlink::SOCK_DIAG),
    )?;
    // A dump that never ends must not hold the watcher for good: each
    // read waits at most a second, and the whole answer may take that.
    rustix::net::sockopt::set_socket_timeout(
        &fd,
        rustix::net::sockopt::Timeout::Recv,
        Some(WITHIN),
    )?;
    let until = std::time::Instant::now() + WITHIN;
    // Two listeners on one port (IPv4 and IPv6) are one port to ask for.
    let mut ports = ports.to_vec();
    ports.sort_unstable();
    ports.dedup();
    let mut buf = vec![0u8; 32 * 1024];
    let mut total = 0;
    let mut seq = 0;
    for family in [AddressFamily::INET, AddressFamily::INET6] {
        for &port in &ports {
            seq += 1;
            let req = request(family.as_raw() as u8, port, seq);
            rustix::net::sendto(&fd, &req, SendFlags::empty(), &SocketAddrNetlink::new(0, 0))?;
            total += read_dump(&fd, &mut buf, port, until)?;
        }
    }
    Ok(total)
}

/// A dump request for the UDP sockets of `family` whose local port is
/// `port`, with their memory counters.
fn request(family: u8, port: u16, seq: u32) -> Vec<u8> {
    // nlmsghdr, inet_diag_req_v2, then the filter as an attribute:
    // "source port equals `port`: accept (jump to the end); else jump
    // past it: reject".
    let len = HEADER + 56 + 4 + 8;
    let mut m = Vec::with_capacity(len);
    m.extend_from_slice(&(len as u32).to_ne_bytes());
    m.extend_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    m.extend_from_slice(&(NLM_F_REQUEST | NLM_F_DUMP).to_ne_bytes());
    m.extend_from_slice(&seq.to_ne_bytes());
    m.extend_from_slice(&0u32.to_ne_bytes());
    m.extend_from_slice(&[family, IPPROTO_UDP, 1 << (INET_DIAG_SKMEMINFO - 1), 0]);
    m.extend_from_slice(&u32::MAX.to_ne_bytes()); // every state
    m.extend_from_slice(&[0u8; 48]); // inet_diag_sockid: unused by a dump
    m.extend_from_slice(&12u16.to_ne_bytes());
    m.extend_from_slice(&INET_DIAG_REQ_BYTECODE.to_ne_bytes());
    m.extend_from_slice(&[INET_DIAG_BC_S_EQ, 8]);
    m.extend_from_slice(&12u16.to_ne_bytes());
    m.extend_from_slice(&[0, 0]);
    m.extend_from_slice(&port.to_ne_bytes());
    m
}

/// Reads a dump's answers to its end: the drops of the sockets on `port`.
fn read_dump(
    fd: &std::os::fd::OwnedFd,
    buf: &mut [u8],
    port: u16,
    until: std::time::Instant,
) -> io::Result<u64> {
    let mut total = 0;
    loop {
        if std::time::Instant::now() > until {
            return Err(io::ErrorKind::TimedOut.into());
        }
        let (_, n) = rustix::net::recv(fd, &mut *buf, RecvFlags::empty())?;
        let mut at = &buf[..n.min(buf.len())];
        while at.len() >= HEADER {
            let len = u32_at(at, 0) as usize;
            let kind = u16::from_ne_bytes([at[4], at[5]]);
            if len < HEADER || len > at.len() {
                return Err(io::Error::other("a sock_diag answer cut short"));
            }
            let body = &at[HEADER..len];
            match kind {
                NLMSG_DONE => return Ok(total),
                NLMSG_ERROR => {
                    let code = body
                        .get(..4)
                        .map_or(0, |b| i32::from_ne_bytes([b[0], b[1], b[2], b[3]]));
                    // 0 is an acknowledgement: the dump is over.
                    return match code.checked_neg() {
                        Some(0) => Ok(total),
                        Some(errno) => Err(io::Error::from_raw_os_error(errno)),
                        None => Err(io::Error::other("a sock_diag error out of range")),
                    };
                }
                SOCK_DIAG_BY_FAMILY => total += socket_drops(body, port),
                _ => {}
            }
            at = &at[len.next_multiple_of(4).min(at.len())..];
        }
    }
}

/// The drops of one socket's answer (`inet_diag_msg`, then attributes),
/// 0 unless it is bound to `port` (the kernel filtered already).
fn socket_drops(body: &[u8], port: u16) -> u64 {
    let Some(msg) = body.get(..DIAG_MSG) else {
        return 0;
    };
    if u16::from_be_bytes([msg[4], msg[5]]) != port {
        return 0;
    }
    let mut attrs = &body[DIAG_MSG..];
    while attrs.len() >= 4 {
        let len = usize::from(u16::from_ne_bytes([attrs[0], attrs[1]]));
        let kind = u16::from_ne_bytes([attrs[2], attrs[3]]);
        if len < 4 || len > attrs.len() {
            return 0;
        }
        if kind == INET_DIAG_SKMEMINFO {
            let at = 4 + SK_MEMINFO_DROPS * 4;
            return attrs[..len]
                .get(at..at + 4)
                .map_or(0, |_| u64::from(u32_at(attrs, at)));
        }
        attrs = &attrs[len.next_multiple_of(4).min(attrs.len())..];
    }
    0
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_ne_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::UdpSocket;

    /// Datagrams sent to a socket nobody reads, past its buffer: the
    /// kernel's drops, the same count as `/proc/net/udp` shows, and none
    /// for another port.
    #[test]
    fn drops_are_read_for_our_ports_as_proc_net_udp_counts_them() {
        let full = UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = full.local_addr().unwrap().port();
        let quiet = UdpSocket::bind("127.0.0.1:0").unwrap();
        let other = quiet.local_addr().unwrap().port();
        let sender = UdpSocket::bind("127.0.0.1:0").unwrap();
        let datagram = [0u8; 1200];
        // Loopback delivers at send: a default buffer (about 200 KiB)
        // holds far fewer than these.
        let mut sent = 0;
        while super::super::udp_drops_in_proc(&[port]).unwrap_or(0) == 0 {
            for _ in 0..1000 {
                sender.send_to(&datagram, ("127.0.0.1", port)).unwrap();
            }
            sent += 1000;
            assert!(sent < 1_000_000, "no drop after {sent} datagrams");
        }
        let proc = super::super::udp_drops_in_proc(&[port]).unwrap();
        let diag = udp_drops(&[port]).unwrap();
        assert!(diag > 0);
        assert_eq!(diag, proc, "the same counter");
        assert_eq!(udp_drops(&[other]).unwrap(), 0);
        assert_eq!(udp_drops(&[port, other]).unwrap(), diag);
    }

    /// Answers are read defensively: cut, empty or for another port, they
    /// count nothing and never panic.
    #[test]
    fn broken_answers_count_nothing() {
        assert_eq!(socket_drops(&[], 5060), 0);
        let mut body = vec![0u8; DIAG_MSG];
        body[4..6].copy_from_slice(&5060u16.to_be_bytes());
        // An attribute claiming more than there is.
        body.extend_from_slice(&200u16.to_ne_bytes());
        body.extend_from_slice(&INET_DIAG_SKMEMINFO.to_ne_bytes());
        assert_eq!(socket_drops(&body, 5060), 0);
        // A short meminfo.
        body.truncate(DIAG_MSG);
        body.extend_from_slice(&8u16.to_ne_bytes());
        body.extend_from_slice(&INET_DIAG_SKMEMINFO.to_ne_bytes());
        body.extend_from_slice(&[1, 2, 3, 4]);
        assert_eq!(socket_drops(&body, 5060), 0);
        assert_eq!(socket_drops(&body, 5061), 0);
    }
}
