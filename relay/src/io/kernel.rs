//! The kernel fast path's shell: loads `bpf/forward.bpf.c` (built by
//! build.rs), attaches it at TC ingress of the interfaces holding the relay
//! addresses, and gives each worker its own handles on the maps.
//!
//! A route is installed in three writes: its slot's starting state (under
//! the slot's lock), the slot's control word (the route's generation), then
//! the route itself. It ends in the reverse order: control word cleared,
//! route deleted, slot read under its lock. The program checks the control
//! word under the same lock before it counts and forwards a packet, so the
//! final read holds every packet the kernel forwarded, and a packet after
//! it goes up to the worker (see the program's header comment).
//!
//! The loader is aya: pure Rust, from the registry, no libbpf to build.

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use aya::maps::{Array, HashMap, Map, MapData, PerCpuArray};
use aya::programs::{SchedClassifier, TcAttachType};
use aya::{Ebpf, EbpfLoader};
use tracing::{debug, info};

use crate::core::fastpath::{FastPath, FastProgress, FastStart};
use crate::io::sys::bpf::{RouteKey, RouteRecord, SlotRecord};
use crate::io::sys::monotonic_ns;

/// BPF_F_LOCK: map reads and writes under the value's spin lock.
const F_LOCK: u64 = 4;
/// The program's name in the object.
const PROGRAM: &str = "baton_forward";

#[cfg(baton_bpf)]
static OBJECT: Option<&[u8]> = Some(include_bytes!(concat!(env!("OUT_DIR"), "/forward.bpf.o")));
#[cfg(not(baton_bpf))]
static OBJECT: Option<&[u8]> = None;

/// Why the kernel fast path is not on.
#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    /// Built without clang.
    #[error("this baton was built without its BPF program (clang was not found at build time)")]
    NotBuilt,
    /// No CAP_BPF / CAP_NET_ADMIN.
    #[error("loading BPF programs needs CAP_BPF and CAP_NET_ADMIN (or root): {0}")]
    Permission(String),
    /// No relay address the program can serve.
    #[error("no relay address can use the kernel fast path: {0}")]
    NoAddress(String),
    /// The kernel refused the program or a map.
    #[error("the kernel refused the BPF program: {0}")]
    Load(String),
    /// Attaching at TC ingress failed.
    #[error("cannot attach the BPF program to {interface}: {reason}")]
    Attach {
        /// The interface.
        interface: String,
        /// What the kernel said.
        reason: String,
    },
    /// A map operation failed.
    #[error("BPF map {op} failed: {reason}")]
    Map {
        /// What was done.
        op: &'static str,
        /// What the kernel said.
        reason: String,
    },
    /// Every slot of this worker is in use.
    #[error("all {0} kernel routes of this worker are in use")]
    Full(u32),
}

fn map_error(op: &'static str) -> impl Fn(aya::maps::MapError) -> KernelError {
    move |e| KernelError::Map {
        op,
        reason: e.to_string(),
    }
}

/// What the program decided, summed over CPUs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KernelCounters {
    /// Packets the kernel forwarded.
    pub forwarded: u64,
    /// UDP packets with no route (most traffic on a busy interface).
    pub no_route: u64,
    /// Packets of a route handed to the worker: not the newest in order.
    pub not_newest: u64,
    /// Packets of a route handed to the worker: no next hop known.
    pub no_next_hop: u64,
    /// Packets of a route handed to the worker for another reason (RTCP,
    /// DTMF, another SSRC, malformed).
    pub other: u64,
}

/// The loaded and attached program; dropping it detaches it.
pub struct KernelPath {
    ebpf: std::sync::Mutex<Ebpf>,
    routes: MapData,
    slots: MapData,
    control: MapData,
    interfaces: Vec<String>,
    addresses: Vec<IpAddr>,
    slots_per_worker: u32,
    generations: Arc<AtomicU32>,
}

impl std::fmt::Debug for KernelPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KernelPath")
            .field("interfaces", &self.interfaces)
            .field("addresses", &self.addresses)
            .field("slots_per_worker", &self.slots_per_worker)
            .finish_non_exhaustive()
    }
}

impl KernelPath {
    /// Loads the program with room for `routes` routes shared by
    /// `workers` workers and attaches it to the interfaces that hold
    /// `addresses` (relay addresses bound to a wildcard are left out).
    pub fn load(addresses: &[IpAddr], routes: u32, workers: usize) -> Result<Self, KernelError> {
        let object = OBJECT.ok_or(KernelError::NotBuilt)?;
        let served: Vec<IpAddr> = addresses
            .iter()
            .copied()
            .filter(|ip| !ip.is_unspecified())
            .collect();
        if served.is_empty() {
            return Err(KernelError::NoAddress(
                "every relay address is a wildcard (0.0.0.0 or ::); name the interface's address"
                    .to_owned(),
            ));
        }
        let interfaces = interfaces_of(&served)?;
        let workers_u32 = u32::try_from(workers.max(1)).unwrap_or(u32::MAX);
        let slots_per_worker = (routes / workers_u32).max(1);
        let capacity = slots_per_worker * workers_u32;
        let mut ebpf = EbpfLoader::new()
            .map_max_entries("baton_routes", capacity)
            .map_max_entries("baton_slots", capacity)
            .map_max_entries("baton_control", capacity)
            .load(object)
            .map_err(|e| classify(&e))?;
        let program: &mut SchedClassifier = ebpf
            .program_mut(PROGRAM)
            .ok_or_else(|| KernelError::Load(format!("no program {PROGRAM} in the object")))?
            .try_into()
            .map_err(|e: aya::programs::ProgramError| KernelError::Load(e.to_string()))?;
        program.load().map_err(|e| classify(&e))?;
        let tcx = aya::util::KernelVersion::current()
            .map(|v| v >= aya::util::KernelVersion::new(6, 6, 0))
            .unwrap_or(false);
        for interface in &interfaces {
            if !tcx {
                // The legacy hook needs the clsact qdisc; a filter an earlier
                // process left behind (killed before it could detach) goes.
                let _ = aya::programs::tc::qdisc_add_clsact(interface);
                let _ = aya::programs::tc::qdisc_detach_program(
                    interface,
                    TcAttachType::Ingress,
                    PROGRAM,
                );
            }
            program
                .attach(interface, TcAttachType::Ingress)
                .map_err(|e| KernelError::Attach {
                    interface: interface.clone(),
                    reason: e.to_string(),
                })?;
        }
        let clone = |name: &str| -> Result<MapData, KernelError> {
            let Some(Map::HashMap(data) | Map::Array(data)) = ebpf.map(name) else {
                return Err(KernelError::Map {
                    op: "lookup",
                    reason: format!("no hash or array map {name} in the object"),
                });
            };
            duplicate(data)
        };
        let routes_map = clone("baton_routes")?;
        let slots = clone("baton_slots")?;
        let control = clone("baton_control")?;
        info!(
            interfaces = ?interfaces,
            routes = capacity,
            hook = if tcx { "tcx" } else { "tc (netlink)" },
            "kernel fast path on"
        );
        Ok(Self {
            ebpf: std::sync::Mutex::new(ebpf),
            routes: routes_map,
            slots,
            control,
            interfaces,
            addresses: served,
            slots_per_worker,
            generations: Arc::new(AtomicU32::new(1)),
        })
    }

    /// The interfaces the program is attached to.
    pub fn interfaces(&self) -> &[String] {
        &self.interfaces
    }

    /// Worker `index`'s own handles and slots.
    pub fn maps(&self, index: usize) -> Result<KernelMaps, KernelError> {
        let dup = duplicate;
        let first = u32::try_from(index)
            .unwrap_or(u32::MAX)
            .saturating_mul(self.slots_per_worker);
        let slots = first..first + self.slots_per_worker;
        let mut routes: HashMap<MapData, RouteKey, RouteRecord> =
            HashMap::try_from(Map::HashMap(dup(&self.routes)?)).map_err(map_error("open"))?;
        let mut control: Array<MapData, u32> =
            Array::try_from(Map::Array(dup(&self.control)?)).map_err(map_error("open"))?;
        // A worker that failed left its routes: they end before its
        // successor takes the slots.
        let stale: Vec<RouteKey> = routes
            .iter()
            .filter_map(Result::ok)
            .filter(|(_, record)| slots.contains(&record.slot))
            .map(|(key, _)| key)
            .collect();
        for slot in slots.clone() {
            control
                .set(slot, 0, 0)
                .map_err(map_error("control write"))?;
        }
        for key in stale {
            if let Err(e) = routes.remove(&key) {
                tracing::warn!("a failed worker's kernel route could not be removed: {e}");
            }
        }
        Ok(KernelMaps {
            routes,
            slots: Array::try_from(Map::Array(dup(&self.slots)?)).map_err(map_error("open"))?,
            control,
            // Popped from the end: the lowest slot first.
            free: (first..first + self.slots_per_worker).rev().collect(),
            capacity: self.slots_per_worker,
            generations: Arc::clone(&self.generations),
            addresses: self.addresses.clone(),
            installed: vec![None; self.slots_per_worker as usize],
            first,
            interfaces: std::collections::HashMap::new(),
        })
    }

    /// The program's outcome counters, summed over CPUs.
    pub fn counters(&self) -> KernelCounters {
        let ebpf = self
            .ebpf
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let Some(map) = ebpf.map("baton_kstats") else {
            return KernelCounters::default();
        };
        let Ok(stats) = PerCpuArray::<_, u64>::try_from(map) else {
            return KernelCounters::default();
        };
        let sum = |index: u32| {
            stats
                .get(&index, 0)
                .map(|values| values.iter().sum::<u64>())
                .unwrap_or(0)
        };
        KernelCounters {
            forwarded: sum(0),
            no_route: sum(1),
            not_newest: sum(2),
            no_next_hop: sum(3),
            other: sum(4),
        }
    }
}

/// A handle of its own on a map (a new descriptor for the same map).
fn duplicate(data: &MapData) -> Result<MapData, KernelError> {
    let fd = data
        .fd()
        .as_fd()
        .try_clone_to_owned()
        .map_err(|e| KernelError::Map {
            op: "dup",
            reason: e.to_string(),
        })?;
    MapData::from_fd(fd).map_err(map_error("open"))
}

/// Permission errors say what is missing; the rest as the kernel said,
/// with every cause in the chain.
fn classify(error: &dyn std::error::Error) -> KernelError {
    let mut message = error.to_string();
    let mut denied = false;
    let mut cause = error.source();
    while let Some(e) = cause {
        message.push_str(": ");
        message.push_str(&e.to_string());
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            denied |= io.kind() == std::io::ErrorKind::PermissionDenied;
        }
        cause = e.source();
    }
    if denied || message.contains("Operation not permitted") {
        KernelError::Permission(message)
    } else {
        KernelError::Load(message)
    }
}

/// The interfaces holding `addresses` (loopback addresses: `lo`).
fn interfaces_of(addresses: &[IpAddr]) -> Result<Vec<String>, KernelError> {
    let mut names = BTreeSet::new();
    let mut missing = Vec::new();
    let table: Vec<(String, IpAddr)> = nix::ifaddrs::getifaddrs()
        .map_err(|e| KernelError::NoAddress(format!("cannot list interfaces: {e}")))?
        .filter_map(|ifa| {
            let address = ifa.address?;
            let ip = if let Some(v4) = address.as_sockaddr_in() {
                IpAddr::V4(v4.ip())
            } else {
                IpAddr::V6(address.as_sockaddr_in6()?.ip())
            };
            Some((ifa.interface_name, ip))
        })
        .collect();
    for ip in addresses {
        let found: Vec<&String> = table
            .iter()
            .filter(|(_, held)| held == ip)
            .map(|(name, _)| name)
            .collect();
        if found.is_empty() {
            if ip.is_loopback() {
                names.insert("lo".to_owned());
            } else {
                missing.push(ip.to_string());
            }
        }
        for name in found {
            names.insert(name.clone());
        }
    }
    if names.is_empty() {
        return Err(KernelError::NoAddress(format!(
            "no interface holds {}",
            missing.join(", ")
        )));
    }
    if !missing.is_empty() {
        debug!(addresses = ?missing, "no interface holds these relay addresses now");
    }
    Ok(names.into_iter().collect())
}

/// A route a worker installed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RouteHandle {
    key: RouteKey,
    slot: u32,
    generation: u32,
    /// The slot's totals when last read.
    seen: SlotTotals,
    /// (relay address, peer) of the way out and of the way back to the
    /// source, and the interfaces the routing table gave for them.
    ways: [(IpAddr, IpAddr, u32); 2],
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct SlotTotals {
    packets: u64,
    bytes: u64,
    payload_bytes: u64,
    seq_advance: u64,
}

/// One worker's handles on the maps, and its share of the slots.
pub struct KernelMaps {
    routes: HashMap<MapData, RouteKey, RouteRecord>,
    slots: Array<MapData, SlotRecord>,
    control: Array<MapData, u32>,
    free: Vec<u32>,
    capacity: u32,
    /// Generations are unique per process, across workers and their
    /// restarts: a route left by a failed worker never matches a slot's
    /// later control word.
    generations: Arc<AtomicU32>,
    addresses: Vec<IpAddr>,
    /// Installed routes by slot (offset from the worker's first), ended
    /// when the maps are dropped (a worker that stops or fails).
    installed: Vec<Option<RouteKey>>,
    first: u32,
    /// Routing table answers: (from, to) → (interface, when asked).
    interfaces: std::collections::HashMap<(IpAddr, IpAddr), (u32, Instant)>,
}

/// How long a routing table answer is kept: a route change reaches the
/// kernel's routes within about this plus a visit.
const INTERFACE_ANSWER_FOR: Duration = Duration::from_secs(5);
/// Most routing table answers kept per worker.
const INTERFACE_ANSWERS: usize = 4096;

impl Drop for KernelMaps {
    fn drop(&mut self) {
        for (offset, key) in self.installed.iter().enumerate() {
            if let Some(key) = key {
                let slot = self.first + u32::try_from(offset).unwrap_or(0);
                let _ = self.control.set(slot, 0, 0);
                let _ = self.routes.remove(key);
            }
        }
    }
}

impl std::fmt::Debug for KernelMaps {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KernelMaps")
            .field("free", &self.free.len())
            .field("capacity", &self.capacity)
            .finish_non_exhaustive()
    }
}

fn address_bytes(ip: IpAddr) -> [u8; 16] {
    let mut bytes = [0; 16];
    match ip {
        IpAddr::V4(v4) => bytes[..4].copy_from_slice(&v4.octets()),
        IpAddr::V6(v6) => bytes = v6.octets(),
    }
    bytes
}

/// The same family for all four addresses (the program does not
/// translate between IPv4 and IPv6), with IPv4-mapped IPv6 as IPv4.
fn family(addresses: [IpAddr; 4]) -> Option<u32> {
    let v4 = addresses.iter().all(|ip| ip.to_canonical().is_ipv4());
    let v6 = addresses.iter().all(|ip| !ip.to_canonical().is_ipv4());
    match (v4, v6) {
        (true, _) => Some(4),
        (_, true) => Some(6),
        _ => None,
    }
}

/// Converts between kernel monotonic times and instants, from one reading
/// of both clocks.
#[derive(Debug, Clone, Copy)]
pub struct Clocks {
    now: Instant,
    now_ns: u64,
}

impl Clocks {
    /// Both clocks now.
    pub fn read() -> Self {
        Self {
            now: Instant::now(),
            now_ns: monotonic_ns(),
        }
    }

    fn instant(&self, ns: u64) -> Instant {
        if ns <= self.now_ns {
            self.now
                .checked_sub(Duration::from_nanos(self.now_ns - ns))
                .unwrap_or(self.now)
        } else {
            self.now + Duration::from_nanos(ns - self.now_ns)
        }
    }

    fn ns(&self, at: Instant) -> u64 {
        let before = u64::try_from(self.now.saturating_duration_since(at).as_nanos()).unwrap_or(0);
        self.now_ns.saturating_sub(before)
    }
}

impl KernelMaps {
    /// Routes this worker has installed now.
    pub fn installed(&self) -> usize {
        (self.capacity as usize).saturating_sub(self.free.len())
    }

    /// Whether the program is attached where `ip` is.
    pub fn serves(&self, ip: IpAddr) -> bool {
        self.addresses.contains(&ip)
    }

    /// Installs `path` for packets arriving on the relay socket `local_in`
    /// and leaving from `local_out`.
    pub fn install(
        &mut self,
        path: &FastPath,
        start: &FastStart,
        local_in: SocketAddr,
        local_out: SocketAddr,
        clocks: &Clocks,
    ) -> Result<RouteHandle, KernelError> {
        let canonical = |a: SocketAddr| SocketAddr::new(a.ip().to_canonical(), a.port());
        let (source, local_in, local_out, destination) = (
            canonical(path.source),
            canonical(local_in),
            canonical(local_out),
            canonical(path.destination),
        );
        let family = family([source.ip(), local_in.ip(), local_out.ip(), destination.ip()]).ok_or(
            KernelError::Map {
                op: "install",
                reason: "the legs' address families differ".to_owned(),
            },
        )?;
        let out_ifindex = self.interface(local_out.ip(), destination.ip(), clocks.now)?;
        let in_ifindex = self.interface(local_in.ip(), source.ip(), clocks.now)?;
        let slot = self.free.pop().ok_or(KernelError::Full(self.capacity))?;
        let generation = loop {
            let generation = self.generations.fetch_add(1, Ordering::Relaxed);
            if generation != 0 {
                break generation;
            }
        };
        let key = RouteKey {
            src: address_bytes(source.ip()),
            dst: address_bytes(local_in.ip()),
            sport: source.port().to_be(),
            dport: local_in.port().to_be(),
            family,
        };
        let record = RouteRecord {
            slot,
            generation,
            out_src: address_bytes(local_out.ip()),
            out_dst: address_bytes(destination.ip()),
            out_sport: local_out.port().to_be(),
            out_dport: destination.port().to_be(),
            in_ssrc: path.in_ssrc,
            out_ssrc: path.out_ssrc,
            ts_offset: path.ts_offset,
            clock_rate: path.clock_rate,
            seq_offset: path.seq_offset,
            rewrite_ssrc_ts: u8::from(path.rewrite_ssrc_ts),
            check_ts: u8::from(path.check_ts),
            epoch_ns: clocks.ns(path.epoch),
            pt_map: path.payload_types,
            out_ifindex,
            in_ifindex,
        };
        let state = SlotRecord {
            max_seq: u32::from(start.max_seq),
            last_ts: start.last_ts,
            last_ns: clocks.now_ns,
            seen: start.seen,
            jitter_x16: start.jitter_x16,
            transit: start.transit.unwrap_or(0),
            has_transit: u32::from(start.transit.is_some()),
            ..SlotRecord::default()
        };
        let installed = self
            .slots
            .set(slot, state, F_LOCK)
            .map_err(map_error("slot write"))
            .and_then(|()| {
                self.control
                    .set(slot, generation, 0)
                    .map_err(map_error("control write"))
            })
            .and_then(|()| {
                self.routes
                    .insert(key, record, 0)
                    .map_err(map_error("route insert"))
            });
        match installed {
            Ok(()) => {
                if let Some(entry) = self.installed.get_mut((slot - self.first) as usize) {
                    *entry = Some(key);
                }
                Ok(RouteHandle {
                    key,
                    slot,
                    generation,
                    seen: SlotTotals::default(),
                    ways: [
                        (local_out.ip(), destination.ip(), out_ifindex),
                        (local_in.ip(), source.ip(), in_ifindex),
                    ],
                })
            }
            Err(e) => {
                let _ = self.control.set(slot, 0, 0);
                let _ = self.routes.remove(&key);
                self.free.push(slot);
                Err(e)
            }
        }
    }

    /// What the kernel forwarded on `route` since the last read.
    pub fn read(
        &self,
        route: &mut RouteHandle,
        clocks: &Clocks,
    ) -> Result<FastProgress, KernelError> {
        let state = self
            .slots
            .get(&route.slot, F_LOCK)
            .map_err(map_error("slot read"))?;
        Ok(progress(route, &state, clocks))
    }

    /// Ends `route`: after this the kernel forwards none of its packets;
    /// returns what it forwarded since the last read.
    pub fn remove(
        &mut self,
        route: &mut RouteHandle,
        clocks: &Clocks,
    ) -> Result<FastProgress, KernelError> {
        let cleared = self.control.set(route.slot, 0, 0);
        let _ = self.routes.remove(&route.key);
        // The slot is reused only once nothing can still count into it.
        let state = cleared.map_err(map_error("control write")).and_then(|()| {
            self.slots
                .get(&route.slot, F_LOCK)
                .map_err(map_error("slot read"))
        });
        if state.is_ok() {
            self.free.push(route.slot);
            if let Some(entry) = self.installed.get_mut((route.slot - self.first) as usize) {
                *entry = None;
            }
        }
        Ok(progress(route, &state?, clocks))
    }

    /// Whether the routing table now sends `route`'s packets, or expects
    /// its source's, through other interfaces than when it was installed
    /// (a route change, a link gone): then it must be installed again.
    pub fn moved(&mut self, route: &RouteHandle, now: Instant) -> bool {
        route
            .ways
            .iter()
            .any(|&(from, to, ifindex)| self.interface(from, to, now).ok() != Some(ifindex))
    }

    /// The interface from `from` to `to`, as the routing table says (kept
    /// for [`INTERFACE_ANSWER_FOR`]).
    fn interface(&mut self, from: IpAddr, to: IpAddr, now: Instant) -> Result<u32, KernelError> {
        if let Some(&(ifindex, at)) = self.interfaces.get(&(from, to))
            && now.saturating_duration_since(at) < INTERFACE_ANSWER_FOR
        {
            return Ok(ifindex);
        }
        let ifindex = egress_interface(from, to).map_err(|reason| KernelError::Map {
            op: "route lookup",
            reason,
        })?;
        if self.interfaces.len() >= INTERFACE_ANSWERS {
            self.interfaces.clear();
        }
        self.interfaces.insert((from, to), (ifindex, now));
        Ok(ifindex)
    }
}

/// The interface the kernel sends through from `source` to `destination`,
/// asked over rtnetlink as `ip route get DESTINATION from SOURCE` asks
/// (policy routing by source included). Done once per route install.
pub fn egress_interface(source: IpAddr, destination: IpAddr) -> Result<u32, String> {
    use nix::sys::socket::{
        AddressFamily, MsgFlags, NetlinkAddr, SockFlag, SockProtocol, SockType, recv, sendto,
        setsockopt, socket, sockopt,
    };
    use std::os::fd::AsRawFd;

    const RTM_NEWROUTE: u16 = 24;
    const RTM_GETROUTE: u16 = 26;
    const NLMSG_ERROR: u16 = 2;
    const NLM_F_REQUEST: u16 = 1;
    const RTA_DST: u16 = 1;
    const RTA_SRC: u16 = 2;
    const RTA_OIF: u16 = 4;

    let (family, bits, src, dst): (u8, u8, Vec<u8>, Vec<u8>) =
        match (source.to_canonical(), destination.to_canonical()) {
            (IpAddr::V4(s), IpAddr::V4(d)) => (2, 32, s.octets().to_vec(), d.octets().to_vec()),
            (IpAddr::V6(s), IpAddr::V6(d)) => (10, 128, s.octets().to_vec(), d.octets().to_vec()),
            _ => return Err("the addresses' families differ".to_owned()),
        };
    let attribute = |kind: u16, value: &[u8]| {
        let mut a = Vec::with_capacity(4 + value.len());
        a.extend_from_slice(&u16::try_from(4 + value.len()).unwrap_or(0).to_ne_bytes());
        a.extend_from_slice(&kind.to_ne_bytes());
        a.extend_from_slice(value);
        a
    };
    // rtmsg: family, dst_len, src_len, tos, table, protocol, scope, type,
    // flags (u32).
    let mut body = vec![family, bits, bits, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    body.extend(attribute(RTA_DST, &dst));
    body.extend(attribute(RTA_SRC, &src));
    let mut request = Vec::with_capacity(16 + body.len());
    request.extend_from_slice(&u32::try_from(16 + body.len()).unwrap_or(0).to_ne_bytes());
    request.extend_from_slice(&RTM_GETROUTE.to_ne_bytes());
    request.extend_from_slice(&NLM_F_REQUEST.to_ne_bytes());
    request.extend_from_slice(&1u32.to_ne_bytes());
    request.extend_from_slice(&0u32.to_ne_bytes());
    request.extend(body);

    let fd = socket(
        AddressFamily::Netlink,
        SockType::Raw,
        SockFlag::SOCK_CLOEXEC,
        SockProtocol::NetlinkRoute,
    )
    .map_err(|e| format!("netlink socket: {e}"))?;
    // The kernel answers from its tables at once; a worker waits no longer.
    setsockopt(
        &fd,
        sockopt::ReceiveTimeout,
        &nix::sys::time::TimeVal::new(0, 100_000),
    )
    .map_err(|e| format!("netlink timeout: {e}"))?;
    sendto(
        fd.as_raw_fd(),
        &request,
        &NetlinkAddr::new(0, 0),
        MsgFlags::empty(),
    )
    .map_err(|e| format!("netlink send: {e}"))?;
    let mut reply = [0u8; 4096];
    let len = recv(fd.as_raw_fd(), &mut reply, MsgFlags::empty())
        .map_err(|e| format!("netlink receive: {e}"))?;
    let reply = &reply[..len.min(reply.len())];
    let u16_at = |at: usize| {
        reply
            .get(at..at + 2)
            .map(|b| u16::from_ne_bytes([b[0], b[1]]))
    };
    let u32_at = |at: usize| {
        reply
            .get(at..at + 4)
            .map(|b| u32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
    };
    let total = u32_at(0).ok_or("short netlink reply")? as usize;
    match u16_at(4) {
        Some(RTM_NEWROUTE) => {}
        Some(NLMSG_ERROR) => {
            let errno = u32_at(16).map_or(0, |e| e as i32);
            return Err(format!(
                "no route: {}",
                std::io::Error::from_raw_os_error(-errno)
            ));
        }
        other => return Err(format!("unexpected netlink reply {other:?}")),
    }
    // Attributes after the 16-byte header and the 12-byte rtmsg.
    let mut at = 28;
    while at + 4 <= total.min(reply.len()) {
        let (Some(size), Some(kind)) = (u16_at(at), u16_at(at + 2)) else {
            break;
        };
        let size = usize::from(size);
        if size < 4 {
            break;
        }
        if kind == RTA_OIF {
            return u32_at(at + 4).ok_or_else(|| "short RTA_OIF".to_owned());
        }
        at += size.div_ceil(4) * 4;
    }
    Err("the route names no interface".to_owned())
}

fn progress(route: &mut RouteHandle, state: &SlotRecord, clocks: &Clocks) -> FastProgress {
    let totals = SlotTotals {
        packets: state.packets,
        bytes: state.bytes,
        payload_bytes: state.payload_bytes,
        seq_advance: state.seq_advance,
    };
    let before = std::mem::replace(&mut route.seen, totals);
    FastProgress {
        in_kernel: true,
        unsent: 0,
        unsent_bytes: 0,
        packets: totals.packets.saturating_sub(before.packets),
        bytes: totals.bytes.saturating_sub(before.bytes),
        payload_bytes: totals.payload_bytes.saturating_sub(before.payload_bytes),
        seq_advance: totals.seq_advance.saturating_sub(before.seq_advance),
        max_seq: state.max_seq as u16,
        last_ts: state.last_ts,
        last_at: clocks.instant(state.last_ns),
        seen: state.seen,
        step: (state.last_step_seq > 0).then(|| {
            (
                state.last_step_ts,
                u16::try_from(state.last_step_seq).unwrap_or(u16::MAX),
            )
        }),
        transit: (state.has_transit != 0).then_some(state.transit),
        jitter_x16: state.jitter_x16,
    }
}
