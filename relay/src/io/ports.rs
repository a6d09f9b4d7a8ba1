//! Relay ports: a pool of even/odd pairs on one local IP, handed out in an
//! unpredictable order (an attacker cannot guess the next call's ports) and
//! reusable as soon as their sockets are closed.

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::sync::{Arc, Mutex, PoisonError};

use rand::Rng;
use socket2::{Domain, Protocol, Socket, Type};

/// Why no port pair could be had.
#[derive(Debug, thiserror::Error)]
pub enum PortError {
    /// Every pair in the range is in use.
    #[error("no free relay ports on {ip} (range {lo}-{hi} exhausted)")]
    Exhausted {
        /// The pool's IP.
        ip: IpAddr,
        /// Lowest port of the range.
        lo: u16,
        /// Highest port of the range.
        hi: u16,
    },
    /// The pair asked for is not free here: outside the range, odd, or
    /// held by a session already.
    #[error("relay port {port} on {ip} is not a free pair of this relay's range")]
    Taken {
        /// The pool's IP.
        ip: IpAddr,
        /// The port asked for.
        port: u16,
    },
    /// Free pairs exist but none could be bound (held by other programs).
    #[error("cannot bind relay ports on {ip}: {source}")]
    Bind {
        /// The pool's IP.
        ip: IpAddr,
        /// The last bind error.
        source: std::io::Error,
    },
}

/// Free port pairs on one IP.
#[derive(Debug)]
pub struct PortPool {
    ip: IpAddr,
    lo: u16,
    hi: u16,
    /// Even ports whose pair is free.
    free: Vec<u16>,
    capacity: usize,
}

/// Tries per allocation before giving up on pairs other programs hold.
const BIND_ATTEMPTS: usize = 16;

impl PortPool {
    /// A pool of the even ports `p` in `lo..=hi` with `p + 1 <= hi`.
    pub fn new(ip: IpAddr, lo: u16, hi: u16) -> Self {
        let first_even = lo + (lo % 2);
        let free: Vec<u16> = (first_even..hi).step_by(2).collect();
        let capacity = free.len();
        Self {
            ip,
            lo,
            hi,
            free,
            capacity,
        }
    }

    /// The IP the pool binds on.
    pub fn ip(&self) -> IpAddr {
        self.ip
    }

    /// Pairs free now.
    pub fn free_pairs(&self) -> usize {
        self.free.len()
    }

    /// Pairs in the range.
    pub fn capacity(&self) -> usize {
        self.capacity
    }
}

/// A port pair taken from a pool; returned to it when dropped. Drop it only
/// after closing its sockets, so the next user can bind them.
#[derive(Debug)]
pub struct PortLease {
    pool: Arc<Mutex<PortPool>>,
    port: u16,
}

impl PortLease {
    /// The even (RTP) port.
    pub fn port(&self) -> u16 {
        self.port
    }
}

impl Drop for PortLease {
    fn drop(&mut self) {
        let mut pool = self.pool.lock().unwrap_or_else(PoisonError::into_inner);
        pool.free.push(self.port);
    }
}

/// The sockets of one leg: RTP on the even port, RTCP on the odd one unless
/// the leg multiplexes them.
#[derive(Debug)]
pub struct LegSockets {
    /// The RTP (or rtcp-mux) socket, non-blocking.
    pub rtp: UdpSocket,
    /// The RTCP socket, non-blocking; `None` with rtcp-mux.
    pub rtcp: Option<UdpSocket>,
    /// The pair's lease; declared last so it is dropped after the sockets.
    pub lease: PortLease,
}

/// Takes a random free pair from `pool` and binds it.
pub fn allocate(pool: &Arc<Mutex<PortPool>>, rtcp_mux: bool) -> Result<LegSockets, PortError> {
    let mut guard = pool.lock().unwrap_or_else(PoisonError::into_inner);
    let ip = guard.ip;
    let mut last_error = None;
    let mut held_elsewhere = Vec::new();
    let mut rng = rand::rng();
    for _ in 0..BIND_ATTEMPTS {
        if guard.free.is_empty() {
            break;
        }
        let index = rng.random_range(0..guard.free.len());
        let port = guard.free.swap_remove(index);
        let bound = bind(ip, port).and_then(|rtp| {
            let rtcp = if rtcp_mux {
                None
            } else {
                Some(bind(ip, port + 1)?)
            };
            Ok((rtp, rtcp))
        });
        match bound {
            Ok((rtp, rtcp)) => {
                guard.free.extend(held_elsewhere);
                return Ok(LegSockets {
                    rtp,
                    rtcp,
                    lease: PortLease {
                        pool: Arc::clone(pool),
                        port,
                    },
                });
            }
            Err(e) => {
                // Another program holds it: keep it out of this round.
                held_elsewhere.push(port);
                last_error = Some(e);
            }
        }
    }
    guard.free.extend(held_elsewhere);
    match last_error {
        Some(source) => Err(PortError::Bind { ip, source }),
        None => Err(PortError::Exhausted {
            ip,
            lo: guard.lo,
            hi: guard.hi,
        }),
    }
}

/// Takes the pair starting at `port` from `pool` and binds it: a session
/// another relay process served goes on at the ports its parties know.
pub fn allocate_at(
    pool: &Arc<Mutex<PortPool>>,
    port: u16,
    rtcp_mux: bool,
) -> Result<LegSockets, PortError> {
    let mut guard = pool.lock().unwrap_or_else(PoisonError::into_inner);
    let ip = guard.ip;
    let Some(index) = guard.free.iter().position(|&p| p == port) else {
        return Err(PortError::Taken { ip, port });
    };
    let rtp = bind(ip, port).map_err(|source| PortError::Bind { ip, source })?;
    let rtcp = if rtcp_mux {
        None
    } else {
        Some(bind(ip, port + 1).map_err(|source| PortError::Bind { ip, source })?)
    };
    guard.free.swap_remove(index);
    Ok(LegSockets {
        rtp,
        rtcp,
        lease: PortLease {
            pool: Arc::clone(pool),
            port,
        },
    })
}

fn bind(ip: IpAddr, port: u16) -> std::io::Result<UdpSocket> {
    let addr = SocketAddr::new(ip, port);
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if ip.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    Ok(socket.into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn pool(lo: u16, hi: u16) -> Arc<Mutex<PortPool>> {
        Arc::new(Mutex::new(PortPool::new(
            IpAddr::V4(Ipv4Addr::LOCALHOST),
            lo,
            hi,
        )))
    }

    #[test]
    fn pairs_are_even_odd_and_in_range() {
        let pool = pool(41001, 41010);
        // Even ports 41002..=41008 have their odd partner in range.
        assert_eq!(pool.lock().expect("lock").capacity(), 4);
        let legs: Vec<LegSockets> = (0..4)
            .map(|_| allocate(&pool, false).expect("free pair"))
            .collect();
        for leg in &legs {
            let rtp = leg.rtp.local_addr().expect("addr").port();
            let rtcp = leg
                .rtcp
                .as_ref()
                .expect("rtcp")
                .local_addr()
                .expect("addr")
                .port();
            assert_eq!(rtp % 2, 0);
            assert_eq!(rtcp, rtp + 1);
            assert!((41002..=41009).contains(&rtp) && rtcp <= 41010);
        }
    }

    #[test]
    fn exhaustion_is_an_error_and_release_makes_ports_reusable() {
        let pool = pool(41100, 41103);
        let a = allocate(&pool, true).expect("first");
        let b = allocate(&pool, false).expect("second");
        let err = allocate(&pool, false).expect_err("exhausted");
        assert!(matches!(err, PortError::Exhausted { .. }), "{err}");
        assert!(err.to_string().contains("41100-41103"));
        let port = b.lease.port();
        drop(b);
        let c = allocate(&pool, false).expect("reused");
        assert_eq!(c.lease.port(), port);
        assert!(a.rtcp.is_none(), "rtcp-mux legs bind one socket");
    }

    #[test]
    fn ports_held_by_other_programs_are_skipped() {
        let pool = pool(41200, 41205);
        // Someone else holds 41201 (the odd half of the 41200 pair).
        let squatter = UdpSocket::bind("127.0.0.1:41201").expect("squat");
        let mut ports: Vec<u16> = (0..2)
            .map(|_| {
                allocate(&pool, false)
                    .expect("a pair not held")
                    .lease
                    .port()
            })
            .collect();
        ports.sort_unstable();
        assert!(!ports.contains(&41200), "{ports:?}");
        drop(squatter);
    }

    #[test]
    fn order_is_not_sequential() {
        let pool = pool(42000, 42999);
        let leases: Vec<LegSockets> = (0..20)
            .map(|_| allocate(&pool, true).expect("pair"))
            .collect();
        let ports: Vec<u16> = leases.iter().map(|l| l.lease.port()).collect();
        let sequential = ports.windows(2).all(|w| w[1] == w[0] + 2);
        assert!(!sequential, "{ports:?}");
    }
}
