//! Batched UDP syscalls: `recvmmsg` and `sendmmsg` over buffers allocated
//! once per worker, and the kernel receive timestamps the load generator
//! reads. This is the only module with `unsafe` code; each block says why it
//! is sound.
//!
//! Written against libc rather than through a crate: nix's wrappers allocate
//! per call in places and quinn-udp turns on GRO/ECN socket options the relay
//! must not have (coalesced RTP would need re-splitting); the surface needed
//! here is two syscalls and two address conversions.
#![allow(unsafe_code)]

use std::io;
use std::mem::{size_of, zeroed};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::{AsRawFd, BorrowedFd};
use std::time::Duration;

/// Datagrams moved per syscall.
pub const BATCH: usize = 32;
/// Largest datagram received. RTP over UDP on an Ethernet path fits in
/// 1500 bytes; larger datagrams are flagged as truncated and dropped.
pub const RECV_LEN: usize = crate::core::rtp::MAX_DATAGRAM;
/// Buffer per datagram: the largest received one plus room for the SRTP
/// trailer the relay adds when it encrypts toward an SRTP leg.
pub const BUF_LEN: usize = RECV_LEN + crate::core::srtp::MAX_OVERHEAD;
/// Control buffer per datagram, in 8-byte words (aligned for `cmsghdr`):
/// room for one `SCM_TIMESTAMPNS` message (16-byte header + 16-byte
/// timespec) with slack.
const CONTROL_WORDS: usize = 8;

/// Buffers and headers for one `recvmmsg` call, reused for every call.
pub struct RecvBatch {
    bufs: Box<[[u8; BUF_LEN]; BATCH]>,
    names: Box<[libc::sockaddr_storage; BATCH]>,
    iovecs: Box<[libc::iovec; BATCH]>,
    headers: Box<[libc::mmsghdr; BATCH]>,
    /// Control data per datagram, only when kernel timestamps are wanted
    /// (the relay never asks for them).
    control: Option<Box<[[u64; CONTROL_WORDS]; BATCH]>>,
    /// Length of each datagram; may be changed by rewriting.
    lens: [usize; BATCH],
    received: usize,
    /// Headers whose in-out fields (name and control lengths) the last call
    /// may have changed: only those are reset before the next one. All of
    /// them are pointed at their buffers on the first call; a call mostly
    /// brings one datagram, and pointing all BATCH headers each time was
    /// about 1 % of a worker's time at 50 000 packets/s.
    touched: usize,
}

impl Default for RecvBatch {
    fn default() -> Self {
        Self::new()
    }
}

impl RecvBatch {
    /// Allocates the buffers (about 70 KiB).
    pub fn new() -> Self {
        // SAFETY: sockaddr_storage, iovec and mmsghdr are plain C structs for
        // which all-zero bytes are a valid (empty) value.
        let (names, iovecs, headers) = unsafe { (zeroed(), zeroed(), zeroed()) };
        Self {
            bufs: Box::new([[0; BUF_LEN]; BATCH]),
            names: Box::new(names),
            iovecs: Box::new(iovecs),
            headers: Box::new(headers),
            control: None,
            lens: [0; BATCH],
            received: 0,
            touched: BATCH,
        }
    }

    /// Like [`RecvBatch::new`], with room for each datagram's kernel receive
    /// timestamp (see [`enable_rx_timestamps`] and
    /// [`RecvBatch::kernel_timestamp`]).
    pub fn with_timestamps() -> Self {
        Self {
            control: Some(Box::new([[0; CONTROL_WORDS]; BATCH])),
            ..Self::new()
        }
    }

    /// Receives up to [`BATCH`] datagrams without blocking. Returns how many
    /// (0 never; `WouldBlock` when none is queued).
    pub fn recv(&mut self, fd: BorrowedFd<'_>) -> io::Result<usize> {
        // The buffers are boxed and never replaced, so pointers set once
        // stay valid; recvmmsg writes back only lengths and flags of the
        // headers it filled (and, failing, of at most the first).
        for i in 0..self.touched {
            self.iovecs[i] = libc::iovec {
                iov_base: self.bufs[i].as_mut_ptr().cast(),
                iov_len: RECV_LEN,
            };
            point_header(
                &mut self.headers[i],
                &mut self.names[i],
                size_of::<libc::sockaddr_storage>() as libc::socklen_t,
                &mut self.iovecs[i],
            );
            if let Some(control) = self.control.as_mut() {
                let header = &mut self.headers[i].msg_hdr;
                header.msg_control = control[i].as_mut_ptr().cast();
                header.msg_controllen = size_of::<[u64; CONTROL_WORDS]>() as _;
            }
        }
        debug_assert!(std::ptr::eq(
            self.headers[BATCH - 1].msg_hdr.msg_name.cast_const(),
            (&raw const self.names[BATCH - 1]).cast(),
        ));
        // Through syscall(2), not glibc's wrapper: that one is a thread
        // cancellation point, and in a multi-threaded process it turns
        // asynchronous cancellation on and off around every call (atomic
        // operations on the thread's state: about 50 ns a packet in
        // profiles at 1000 streams, BENCHMARKS.md). Nothing in baton
        // cancels threads. The arguments are the kernel's: fd, headers,
        // count, flags, no timeout.
        // SAFETY: every header points at a name buffer, one iovec and (with
        // timestamps) a control buffer of this batch, each iovec at the
        // first RECV_LEN bytes of a BUF_LEN buffer of this batch (headers
        // past `touched` were pointed by an earlier call, and the kernel
        // writes back only lengths and flags); all live in boxes owned by
        // `self` and never replaced, which is borrowed mutably for the call,
        // so nothing else touches them while the kernel writes.
        let n = unsafe {
            libc::syscall(
                libc::SYS_recvmmsg,
                fd.as_raw_fd(),
                self.headers.as_mut_ptr(),
                BATCH as libc::c_uint,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut::<libc::timespec>(),
            )
        };
        if n < 0 {
            self.received = 0;
            self.touched = 1;
            return Err(io::Error::last_os_error());
        }
        self.received = n as usize;
        self.touched = self.received.max(1);
        for i in 0..self.received {
            self.lens[i] = (self.headers[i].msg_len as usize).min(RECV_LEN);
        }
        Ok(self.received)
    }

    /// Datagram `i` of the last call: its source (None for an address family
    /// other than IPv4/IPv6), whether it was truncated, its whole buffer
    /// (room to rewrite in) and its length.
    pub fn datagram(&mut self, i: usize) -> (Option<SocketAddr>, bool, &mut [u8], usize) {
        debug_assert!(i < self.received);
        let header = &self.headers[i];
        let truncated = header.msg_hdr.msg_flags & libc::MSG_TRUNC != 0;
        let source = from_sockaddr(&self.names[i], header.msg_hdr.msg_namelen);
        (source, truncated, &mut self.bufs[i][..], self.lens[i])
    }

    /// Sets datagram `i`'s length after rewriting (at most [`BUF_LEN`]).
    pub fn set_len(&mut self, i: usize, len: usize) {
        self.lens[i] = len.min(BUF_LEN);
    }

    /// Datagram `i`'s bytes, read-only (for sending after rewriting).
    pub fn bytes(&self, i: usize) -> &[u8] {
        &self.bufs[i][..self.lens[i]]
    }

    /// When the kernel received datagram `i` of the last call (wall clock,
    /// since the Unix epoch): present for a batch made with
    /// [`RecvBatch::with_timestamps`] on a socket with
    /// [`enable_rx_timestamps`].
    pub fn kernel_timestamp(&self, i: usize) -> Option<Duration> {
        if i >= self.received || self.control.is_none() {
            return None;
        }
        let header = &self.headers[i].msg_hdr;
        if header.msg_control.is_null() || header.msg_flags & libc::MSG_CTRUNC != 0 {
            return None;
        }
        // SAFETY: msg_control points at this batch's control buffer for
        // datagram i and msg_controllen is what the kernel wrote into it;
        // CMSG_FIRSTHDR/CMSG_NXTHDR only step within those bounds and
        // return null at the end.
        let mut cmsg = unsafe { libc::CMSG_FIRSTHDR(header) };
        while !cmsg.is_null() {
            // SAFETY: non-null cmsg pointers from CMSG_FIRSTHDR/NXTHDR point
            // at a complete cmsghdr inside the control buffer.
            let message = unsafe { &*cmsg };
            if message.cmsg_level == libc::SOL_SOCKET
                && message.cmsg_type == libc::SCM_TIMESTAMPNS
                && message.cmsg_len as usize
                    >= size_of::<libc::cmsghdr>() + size_of::<libc::timespec>()
            {
                // SAFETY: the kernel wrote a timespec as this message's data
                // (its length says so); it may be unaligned, hence the
                // unaligned read.
                let time = unsafe {
                    std::ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast::<libc::timespec>())
                };
                return Some(Duration::new(
                    u64::try_from(time.tv_sec).ok()?,
                    u32::try_from(time.tv_nsec).ok()?,
                ));
            }
            // SAFETY: as for CMSG_FIRSTHDR: bounded by msg_controllen.
            cmsg = unsafe { libc::CMSG_NXTHDR(header, cmsg) };
        }
        None
    }
}

/// Lets the calling thread's timed sleeps end within a microsecond of when
/// asked, instead of the default 50 µs timer slack: the load generator
/// paces packets microseconds apart and sleeps between them.
pub fn fine_timer_slack() -> io::Result<()> {
    // SAFETY: PR_SET_TIMERSLACK takes one integer argument (nanoseconds)
    // and reads or writes no memory of ours.
    let result = unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1 as libc::c_ulong) };
    if result == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Lowers the calling thread's scheduling priority to `nice` (0 to 19):
/// work that may wait — DTLS handshakes, the load generator's WebRTC
/// clients — then yields the core to media workers whenever both could
/// run. On Linux the priority of `PRIO_PROCESS` with a thread id is that
/// thread's alone.
pub fn lower_thread_priority(nice: i32) -> io::Result<()> {
    // SAFETY: gettid takes no arguments and touches no memory.
    let tid = unsafe { libc::gettid() };
    // SAFETY: setpriority takes three integers (which, who, priority) and
    // reads or writes no memory of ours.
    let result =
        unsafe { libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, nice.clamp(0, 19)) };
    if result == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Moves the calling thread to `SCHED_IDLE`: it runs only when its core has
/// nothing else to do. For measurement side-work (the load generator's
/// WebRTC clients) that must not take time from what is measured.
pub fn idle_thread_priority() -> io::Result<()> {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: pid 0 is the calling thread; `param` is a valid sched_param
    // that outlives the call, which only reads it.
    let result = unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) };
    if result == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Asks the kernel to stamp every datagram the socket receives with its
/// arrival time (`SO_TIMESTAMPNS`), so latency measured with
/// [`RecvBatch::kernel_timestamp`] leaves out how long the datagram waited in
/// the socket's queue for the reader.
pub fn enable_rx_timestamps(fd: BorrowedFd<'_>) -> io::Result<()> {
    let on: libc::c_int = 1;
    // SAFETY: passes a pointer to a live c_int and its size, as
    // setsockopt(SO_TIMESTAMPNS) expects; the kernel only reads it.
    let result = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_TIMESTAMPNS,
            (&raw const on).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if result == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Headers for one `sendmmsg` call, reused for every call.
pub struct SendBatch {
    names: Box<[libc::sockaddr_storage; BATCH]>,
    name_lens: [libc::socklen_t; BATCH],
    iovecs: Box<[libc::iovec; BATCH]>,
    headers: Box<[libc::mmsghdr; BATCH]>,
    /// Entries `send` has pointed for its `flush`.
    queued: usize,
}

impl Default for SendBatch {
    fn default() -> Self {
        Self::new()
    }
}

/// What became of a batch of sends.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SendOutcome {
    /// Datagrams the kernel accepted.
    pub sent: usize,
    /// Their total length.
    pub sent_bytes: usize,
    /// Datagrams refused (buffer full, unreachable, …).
    pub failed: usize,
}

impl SendBatch {
    /// Allocates the headers.
    pub fn new() -> Self {
        // SAFETY: as in RecvBatch::new, all-zero is valid for these C structs.
        let (names, iovecs, headers) = unsafe { (zeroed(), zeroed(), zeroed()) };
        Self {
            names: Box::new(names),
            name_lens: [0; BATCH],
            iovecs: Box::new(iovecs),
            headers: Box::new(headers),
            queued: 0,
        }
    }

    /// Sends each `(destination, bytes)` from the socket `fd`, at most
    /// [`BATCH`] of them (any more are not taken from the iterator), in as
    /// few syscalls as the kernel allows. A refused datagram is skipped and
    /// counted, never retried: media is real-time. Only the entries used
    /// are written, so a batch of one costs one entry.
    pub fn send<'b>(
        &mut self,
        fd: BorrowedFd<'_>,
        packets: impl IntoIterator<Item = (SocketAddr, &'b [u8])>,
    ) -> SendOutcome {
        self.queued = 0;
        for (i, (to, bytes)) in packets.into_iter().take(BATCH).enumerate() {
            self.name_lens[i] = to_sockaddr(to, &mut self.names[i]);
            self.iovecs[i] = libc::iovec {
                iov_base: bytes.as_ptr().cast_mut().cast(),
                iov_len: bytes.len(),
            };
            point_header(
                &mut self.headers[i],
                &mut self.names[i],
                self.name_lens[i],
                &mut self.iovecs[i],
            );
            self.queued = i + 1;
        }
        // The bytes are borrowed for this call, which sends them all.
        self.flush(fd)
    }

    /// Sends the entries [`SendBatch::send`] just pointed at its caller's
    /// bytes, and empties the queue.
    fn flush(&mut self, fd: BorrowedFd<'_>) -> SendOutcome {
        let count = std::mem::take(&mut self.queued);
        let mut outcome = SendOutcome::default();
        let mut start = 0;
        while start < count {
            // SAFETY: headers[start..count] were pointed by `send`, in this
            // call, at names and iovecs of this batch (borrowed mutably) and
            // at byte slices borrowed by `send` until it returns; the kernel
            // only reads through iov_base.
            // Through syscall(2), as recvmmsg in RecvBatch::recv.
            let n = unsafe {
                libc::syscall(
                    libc::SYS_sendmmsg,
                    fd.as_raw_fd(),
                    self.headers[start..].as_mut_ptr(),
                    (count - start) as libc::c_uint,
                    libc::MSG_DONTWAIT,
                )
            };
            if n < 0 {
                let error = io::Error::last_os_error();
                if error.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                if error.kind() == io::ErrorKind::WouldBlock {
                    // The send buffer is full: the rest would fail too.
                    outcome.failed += count - start;
                    break;
                }
                // This datagram is refused (say, unreachable): skip it.
                outcome.failed += 1;
                start += 1;
                continue;
            }
            let n = n as usize;
            outcome.sent_bytes += self.iovecs[start..start + n]
                .iter()
                .map(|iovec| iovec.iov_len)
                .sum::<usize>();
            outcome.sent += n;
            start += n;
        }
        outcome
    }
}

/// Points a message header at one address buffer and one iovec, with no
/// control data. Only stores pointers; the syscall callers uphold validity.
fn point_header(
    header: &mut libc::mmsghdr,
    name: &mut libc::sockaddr_storage,
    name_len: libc::socklen_t,
    iovec: &mut libc::iovec,
) {
    header.msg_hdr.msg_name = (&raw mut *name).cast();
    header.msg_hdr.msg_namelen = name_len;
    header.msg_hdr.msg_iov = &raw mut *iovec;
    header.msg_hdr.msg_iovlen = 1;
    header.msg_hdr.msg_control = std::ptr::null_mut();
    header.msg_hdr.msg_controllen = 0;
    header.msg_hdr.msg_flags = 0;
    header.msg_len = 0;
}

fn from_sockaddr(storage: &libc::sockaddr_storage, len: libc::socklen_t) -> Option<SocketAddr> {
    match i32::from(storage.ss_family) {
        libc::AF_INET if len as usize >= size_of::<libc::sockaddr_in>() => {
            // SAFETY: the family says the storage holds a sockaddr_in, the
            // length says it was fully written, and sockaddr_storage is
            // aligned for every socket address type.
            let sin = unsafe { &*(&raw const *storage).cast::<libc::sockaddr_in>() };
            Some(SocketAddr::V4(SocketAddrV4::new(
                Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr)),
                u16::from_be(sin.sin_port),
            )))
        }
        libc::AF_INET6 if len as usize >= size_of::<libc::sockaddr_in6>() => {
            // SAFETY: as above, for sockaddr_in6.
            let sin6 = unsafe { &*(&raw const *storage).cast::<libc::sockaddr_in6>() };
            Some(SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(sin6.sin6_addr.s6_addr),
                u16::from_be(sin6.sin6_port),
                sin6.sin6_flowinfo,
                sin6.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

fn to_sockaddr(addr: SocketAddr, storage: &mut libc::sockaddr_storage) -> libc::socklen_t {
    match addr {
        SocketAddr::V4(v4) => {
            // SAFETY: sockaddr_storage is large and aligned enough for a
            // sockaddr_in, and we write a complete one.
            let sin = unsafe { &mut *(&raw mut *storage).cast::<libc::sockaddr_in>() };
            sin.sin_family = libc::AF_INET as libc::sa_family_t;
            sin.sin_port = v4.port().to_be();
            sin.sin_addr = libc::in_addr {
                s_addr: u32::from(*v4.ip()).to_be(),
            };
            sin.sin_zero = [0; 8];
            size_of::<libc::sockaddr_in>() as libc::socklen_t
        }
        SocketAddr::V6(v6) => {
            // SAFETY: as above, for sockaddr_in6.
            let sin6 = unsafe { &mut *(&raw mut *storage).cast::<libc::sockaddr_in6>() };
            sin6.sin6_family = libc::AF_INET6 as libc::sa_family_t;
            sin6.sin6_port = v6.port().to_be();
            sin6.sin6_flowinfo = v6.flowinfo();
            sin6.sin6_addr = libc::in6_addr {
                s6_addr: v6.ip().octets(),
            };
            sin6.sin6_scope_id = v6.scope_id();
            size_of::<libc::sockaddr_in6>() as libc::socklen_t
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::UdpSocket;
    use std::os::fd::AsFd;

    #[test]
    fn batch_round_trip_over_loopback_v4_and_v6() {
        for local in ["127.0.0.1:0", "[::1]:0"] {
            let Ok(a) = UdpSocket::bind(local) else {
                continue; // no IPv6 on this host
            };
            let b = UdpSocket::bind(local).expect("bind");
            b.set_nonblocking(true).expect("nonblocking");
            let to = b.local_addr().expect("addr");
            let payloads: Vec<Vec<u8>> = (0..40u8).map(|i| vec![i; 10 + usize::from(i)]).collect();
            let packets: Vec<(SocketAddr, &[u8])> =
                payloads.iter().map(|p| (to, p.as_slice())).collect();
            let mut send = SendBatch::new();
            let first = send.send(a.as_fd(), packets[..BATCH].iter().copied());
            let second = send.send(a.as_fd(), packets[BATCH..].iter().copied());
            assert_eq!(first.sent + second.sent, 40);
            assert_eq!(first.failed + second.failed, 0);

            let mut recv = RecvBatch::new();
            let mut got = Vec::new();
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
            while got.len() < 40 && std::time::Instant::now() < deadline {
                match recv.recv(b.as_fd()) {
                    Ok(n) => {
                        for i in 0..n {
                            let (from, truncated, _, _) = recv.datagram(i);
                            assert_eq!(from, Some(a.local_addr().expect("addr")));
                            assert!(!truncated);
                            got.push(recv.bytes(i).to_vec());
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        std::thread::sleep(std::time::Duration::from_millis(1));
                    }
                    Err(e) => panic!("recv: {e}"),
                }
            }
            assert_eq!(got, payloads);
        }
    }

    #[test]
    fn kernel_timestamps_are_read_when_enabled() {
        let a = UdpSocket::bind("127.0.0.1:0").expect("bind");
        let b = UdpSocket::bind("127.0.0.1:0").expect("bind");
        let to = b.local_addr().expect("addr");
        enable_rx_timestamps(b.as_fd()).expect("SO_TIMESTAMPNS");
        let before = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock");
        for i in 0..3u8 {
            a.send_to(&[i; 20], to).expect("send");
        }
        b.set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .expect("timeout");
        let mut peek = [0u8; 1];
        let _ = b.peek_from(&mut peek);
        let mut stamped = RecvBatch::with_timestamps();
        let n = stamped.recv(b.as_fd()).expect("recv");
        assert!(n >= 1);
        let after = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock");
        for i in 0..n {
            let at = stamped.kernel_timestamp(i).expect("a timestamp");
            assert!(
                before <= at && at <= after,
                "{before:?} <= {at:?} <= {after:?}"
            );
            assert_eq!(stamped.bytes(i), &[i as u8; 20]);
        }
        assert_eq!(stamped.kernel_timestamp(n), None);

        // A batch without control buffers reports none, even from a socket
        // that stamps.
        a.send_to(&[9; 20], to).expect("send");
        let _ = b.peek_from(&mut peek);
        let mut plain = RecvBatch::new();
        assert_eq!(plain.recv(b.as_fd()).expect("recv"), 1);
        assert_eq!(plain.kernel_timestamp(0), None);
    }

    #[test]
    fn one_batch_reads_whole_sources_and_timestamps_from_sockets_in_turn() {
        // A worker reads every socket through one batch. The kernel sets a
        // header's name and control lengths to what it wrote: 16 bytes for
        // an IPv4 source, no control data from a socket that does not stamp.
        // A header not reset before the next call would give an IPv6 source
        // whose last bytes are whatever the buffer held (the kernel still
        // reports 28), and lose the timestamp of a stamping socket's
        // datagram (MSG_CTRUNC). The name buffers are filled with junk
        // before each call so that left-over bytes cannot look right.
        let a4 = UdpSocket::bind("127.0.0.1:0").expect("bind");
        let b4 = UdpSocket::bind("127.0.0.1:0").expect("bind");
        enable_rx_timestamps(b4.as_fd()).expect("SO_TIMESTAMPNS");
        let v6 = UdpSocket::bind("[::1]:0").and_then(|a6| Ok((a6, UdpSocket::bind("[::1]:0")?)));
        let mut batch = RecvBatch::with_timestamps();
        let mut take = |from: &UdpSocket, to: &UdpSocket, count: usize, stamped: bool| {
            for i in 0..count {
                from.send_to(&[i as u8; 12], to.local_addr().expect("addr"))
                    .expect("send");
            }
            // Loopback mostly queues a datagram before send_to returns, so
            // one call usually takes them all into headers 0..count; under
            // load the kernel may defer some, and later calls take the rest.
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
            let mut got = 0;
            while got < count {
                assert!(std::time::Instant::now() < deadline, "{got} of {count}");
                for name in batch.names.iter_mut() {
                    // SAFETY: sockaddr_storage is plain bytes; any value is valid.
                    unsafe { std::ptr::write_bytes(name, 0xAA, 1) };
                }
                let n = match batch.recv(to.as_fd()) {
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                    Err(e) => panic!("recv: {e}"),
                };
                for i in 0..n {
                    let (source, truncated, bytes, len) = batch.datagram(i);
                    assert_eq!(
                        source,
                        Some(from.local_addr().expect("addr")),
                        "datagram {i}"
                    );
                    assert!(!truncated);
                    assert_eq!(&bytes[..len], &[(got + i) as u8; 12]);
                    assert_eq!(batch.kernel_timestamp(i).is_some(), stamped, "datagram {i}");
                }
                got += n;
            }
        };
        take(&a4, &b4, 3, true);
        take(&b4, &a4, 3, false);
        take(&a4, &b4, 3, true);
        if let Ok((a6, b6)) = &v6 {
            take(a6, b6, 3, false);
            take(&a4, &b4, 1, true);
            take(a6, b6, 2, false);
            take(&a4, &b4, BATCH, true);
            take(a6, b6, BATCH, false);
            take(&a4, &b4, BATCH, true);
        }
    }

    #[test]
    fn oversized_datagram_is_flagged_truncated() {
        let a = UdpSocket::bind("127.0.0.1:0").expect("bind");
        let b = UdpSocket::bind("127.0.0.1:0").expect("bind");
        b.set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .expect("timeout");
        a.send_to(&[1u8; RECV_LEN + 1], b.local_addr().expect("addr"))
            .expect("send");
        // Wait until it is queued, then take it in a batch.
        let mut peek = [0u8; 1];
        let _ = b.peek_from(&mut peek);
        let mut recv = RecvBatch::new();
        assert_eq!(recv.recv(b.as_fd()).expect("recv"), 1);
        let (_, truncated, _, len) = recv.datagram(0);
        assert!(truncated);
        // The room past RECV_LEN is for the SRTP trailer, never for input.
        assert_eq!(len, RECV_LEN);
    }
}

/// CLOCK_MONOTONIC in nanoseconds: the clock `Instant` reads and BPF's
/// `bpf_ktime_get_ns` counts, so kernel times map onto instants.
pub fn monotonic_ns() -> u64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `now` is a valid, writable timespec; CLOCK_MONOTONIC exists
    // on every Linux.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
    if rc != 0 {
        return 0;
    }
    u64::try_from(now.tv_sec).unwrap_or(0) * 1_000_000_000 + u64::try_from(now.tv_nsec).unwrap_or(0)
}

/// The kernel fast path's map records, laid out exactly as
/// `relay/bpf/forward.bpf.c` declares them: `#[repr(C)]`, the same fields
/// in the same order, no padding (the sizes are checked below).
pub mod bpf {
    /// A route's key: the datagram as it arrives. Addresses in network
    /// order (IPv4 in the first four bytes), ports in network order.
    #[repr(C)]
    #[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
    pub struct RouteKey {
        /// Sender address.
        pub src: [u8; 16],
        /// Relay address.
        pub dst: [u8; 16],
        /// Sender port.
        pub sport: u16,
        /// Relay port.
        pub dport: u16,
        /// 4 or 6.
        pub family: u32,
    }

    /// What the program does with a route's packets.
    #[repr(C)]
    #[derive(Debug, Clone, Copy)]
    pub struct RouteRecord {
        /// Index of its slot and control word.
        pub slot: u32,
        /// The control word's value while the route is live.
        pub generation: u32,
        /// Relay address it leaves from.
        pub out_src: [u8; 16],
        /// Peer address it goes to.
        pub out_dst: [u8; 16],
        /// Relay port it leaves from (network order).
        pub out_sport: u16,
        /// Peer port (network order).
        pub out_dport: u16,
        /// SSRC taken.
        pub in_ssrc: u32,
        /// SSRC written (when `rewrite_ssrc_ts`).
        pub out_ssrc: u32,
        /// Added to timestamps (when `rewrite_ssrc_ts`).
        pub ts_offset: u32,
        /// The payload types' clock rate.
        pub clock_rate: u32,
        /// Added to sequence numbers.
        pub seq_offset: u16,
        /// 1: SSRC and timestamp are rewritten.
        pub rewrite_ssrc_ts: u8,
        /// 1: timestamps must step forward by at most a second.
        pub check_ts: u8,
        /// CLOCK_MONOTONIC of the stream's epoch.
        pub epoch_ns: u64,
        /// Outward payload type by input type; 0xff: to the relay.
        pub pt_map: [u8; 128],
        /// The interface toward `out_dst`.
        pub out_ifindex: u32,
        /// The interface the peer's packets must come in on.
        pub in_ifindex: u32,
    }

    /// A route's moving state, written by the program under `lock`.
    #[repr(C)]
    #[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
    pub struct SlotRecord {
        /// `struct bpf_spin_lock`: the kernel's, never touched here.
        pub lock: u32,
        /// Newest input sequence number.
        pub max_seq: u32,
        /// Its input timestamp.
        pub last_ts: u32,
        /// Timestamp step of the last forward step.
        pub last_step_ts: u32,
        /// CLOCK_MONOTONIC of the newest packet.
        pub last_ns: u64,
        /// Packets forwarded.
        pub packets: u64,
        /// Their RTP bytes.
        pub bytes: u64,
        /// Their payload bytes.
        pub payload_bytes: u64,
        /// Sum of the sequence number steps.
        pub seq_advance: u64,
        /// Numbers seen at `max_seq - i` (bit i).
        pub seen: u64,
        /// RFC 3550 jitter × 16.
        pub jitter_x16: u64,
        /// Last transit time.
        pub transit: i64,
        /// Sequence step of the last forward step.
        pub last_step_seq: u32,
        /// 1: `transit` is set.
        pub has_transit: u32,
    }

    const _: () = assert!(std::mem::size_of::<RouteKey>() == 40);
    const _: () = assert!(std::mem::size_of::<RouteRecord>() == 208);
    const _: () = assert!(std::mem::size_of::<SlotRecord>() == 88);

    // SAFETY: each is `#[repr(C)]` of integers and byte arrays without
    // padding (sizes asserted above), so every byte is initialised and any
    // bit pattern the kernel writes back is a valid value.
    unsafe impl aya::Pod for RouteKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for RouteRecord {}
    // SAFETY: as above.
    unsafe impl aya::Pod for SlotRecord {}
}
