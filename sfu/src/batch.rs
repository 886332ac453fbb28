//! Batched UDP I/O: `recvmmsg` (with `UDP_GRO` runs split back into datagrams) for the demux
//! thread or the direct worker, `sendmmsg` (with UDP GSO) for the workers, and a one-at-a-time
//! `UDP_GRO` receiver for the load generator.
//!
//! One syscall per datagram was a large share of the server's CPU under load (profile in
//! docs/performance.md). Receiving takes up to [`RECV_BATCH`] datagrams per call (the
//! packets of a video frame arrive back to back); sending queues a worker's datagrams while it
//! handles a round of input and hands them to the kernel in one call per round. Both reuse
//! their arrays: nothing is allocated per datagram.

use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;

use crate::demux::{BufferPool, PacketBuf, MAX_DATAGRAM};

/// Datagrams taken per `recvmmsg`.
pub(crate) const RECV_BATCH: usize = 32;
/// Datagrams queued before a `sendmmsg` (the worker also flushes after every round).
pub(crate) const SEND_BATCH: usize = 64;
/// Linux UDP generic segmentation offload (not in every libc target's constants).
const SOL_UDP: libc::c_int = 17;
const UDP_SEGMENT: libc::c_int = 103;
/// Linux UDP generic receive offload: runs arrive whole, with their segment size.
const UDP_GRO: libc::c_int = 104;
/// Most bytes one GSO send may carry (the IP datagram limit, with headroom).
const GSO_MAX_BYTES: usize = 60_000;

/// Whether the kernel segments UDP for us (Linux ≥ 4.18).
pub fn gso_supported(socket: &UdpSocket) -> bool {
    int_option(socket, SOL_UDP, UDP_SEGMENT).is_ok()
}

/// Sets an int socket option.
fn set_int_option(
    socket: &impl AsRawFd,
    level: libc::c_int,
    name: libc::c_int,
    value: libc::c_int,
) -> io::Result<()> {
    // SAFETY: passes a live c_int of the stated size.
    let r = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            level,
            name,
            &value as *const _ as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Reads an int socket option (an error if the kernel does not know it).
fn int_option(
    socket: &impl AsRawFd,
    level: libc::c_int,
    name: libc::c_int,
) -> io::Result<libc::c_int> {
    let mut v: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `v` and `len` are valid for the call.
    let r = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            level,
            name,
            &mut v as *mut _ as *mut libc::c_void,
            &mut len,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(v)
}

fn to_storage(addr: &SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    let sa = socket2::SockAddr::from(*addr);
    // SAFETY: sockaddr_storage is plain old data; all zeroes is a valid value.
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let len = sa.len() as usize;
    // SAFETY: `sa` holds `len` initialized bytes of a sockaddr, which fit a sockaddr_storage;
    // the two regions do not overlap.
    unsafe {
        std::ptr::copy_nonoverlapping(
            sa.as_ptr() as *const u8,
            &mut storage as *mut _ as *mut u8,
            len.min(std::mem::size_of::<libc::sockaddr_storage>()),
        );
    }
    (storage, sa.len())
}

fn from_storage(storage: &libc::sockaddr_storage, len: libc::socklen_t) -> Option<SocketAddr> {
    // SAFETY: the kernel wrote a sockaddr of `len` bytes into `storage`.
    let sa = unsafe {
        socket2::SockAddr::try_init(|s, l| {
            std::ptr::copy_nonoverlapping(
                storage as *const _ as *const u8,
                s as *mut u8,
                std::mem::size_of::<libc::sockaddr_storage>(),
            );
            *l = len;
            Ok(())
        })
    }
    .ok()?
    .1;
    sa.as_socket()
}

/// Asks the kernel to stamp every received datagram with its arrival time (`SO_TIMESTAMPNS`,
/// wall clock), read back by [`RecvBatch::arrival`].
pub(crate) fn enable_rx_timestamps(socket: &UdpSocket) -> io::Result<()> {
    set_int_option(socket, libc::SOL_SOCKET, libc::SO_TIMESTAMPNS, 1)
}

/// Both clocks read once per batch, to turn kernel timestamps (wall clock) into `Instant`s.
pub(crate) struct Clocks {
    mono: std::time::Instant,
    wall_ns: i128,
}

impl Clocks {
    pub fn now() -> Clocks {
        let wall = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as i128);
        Clocks {
            mono: std::time::Instant::now(),
            wall_ns: wall,
        }
    }
}

/// Room for an `SCM_TIMESTAMPNS` and a `UDP_GRO` control message (CMSG_SPACE of a timespec and
/// of an int), 8-byte aligned.
type Control = [u64; 8];

/// Bytes one message may bring with `UDP_GRO` on: a whole run (at most 64 KiB).
const GRO_SLOT: usize = 65_536;
/// Slots are this far apart rather than exactly 64 KiB, so that the starts of the messages of
/// one call do not all fall in the same cache sets.
const GRO_STRIDE: usize = GRO_SLOT + 256;

/// Asks the kernel to deliver runs of same-size datagrams from one source whole (`UDP_GRO`,
/// Linux ≥ 5.0): the NIC's GRO coalesces the back-to-back packets of a video frame, a sender's
/// GSO run stays one buffer, and [`RecvBatch`] splits them again. One skb and one message per
/// run instead of per datagram.
pub(crate) fn enable_gro(socket: &impl AsRawFd) -> io::Result<()> {
    set_int_option(socket, SOL_UDP, UDP_GRO, 1)
}

/// Whether `UDP_GRO` is on for `socket`.
fn gro_enabled(socket: &UdpSocket) -> bool {
    int_option(socket, SOL_UDP, UDP_GRO).is_ok_and(|v| v != 0)
}

/// `SO_MEMINFO` (Linux ≥ 3.6; not in every libc target's constants).
const SO_MEMINFO: libc::c_int = 55;
/// Entries of the `SO_MEMINFO` array we know of (up to `SK_MEMINFO_DROPS`, Linux ≥ 4.15).
const SK_MEMINFO_VARS: usize = 9;

/// The kernel's own accounting of one socket: what it lets the socket queue, and what it
/// dropped. Read with one `getsockopt(SO_MEMINFO)`, off the media path.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SocketMemory {
    /// Bytes the receive queue may hold, as the kernel counts them (it doubles what
    /// `SO_RCVBUF` asked for, up to `net.core.rmem_max`, for its bookkeeping).
    pub receive_buffer: u64,
    /// The same for the send queue (`net.core.wmem_max`).
    pub send_buffer: u64,
    /// Datagrams the kernel dropped on their way into this socket since it was opened, nearly
    /// always because the receive queue was full: the reader was not keeping up. The kernel
    /// counts in 32 bits, so this wraps after 4 G.
    pub drops: u64,
}

/// What the kernel says about `socket`'s queues and drops (`SO_MEMINFO`).
pub fn socket_memory(socket: &impl AsRawFd) -> io::Result<SocketMemory> {
    let mut v = [0u32; SK_MEMINFO_VARS];
    let mut len = std::mem::size_of_val(&v) as libc::socklen_t;
    // SAFETY: `v` and `len` are valid for the call; the kernel writes at most `len` bytes.
    let r = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            SO_MEMINFO,
            v.as_mut_ptr() as *mut libc::c_void,
            &mut len,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    let at = |i: libc::c_int| {
        let i = i as usize;
        // An old kernel that fills fewer entries has no drop counter: report none.
        if (i + 1) * 4 <= len as usize {
            u64::from(v[i])
        } else {
            0
        }
    };
    Ok(SocketMemory {
        receive_buffer: at(libc::SK_MEMINFO_RCVBUF),
        send_buffer: at(libc::SK_MEMINFO_SNDBUF),
        drops: at(libc::SK_MEMINFO_DROPS),
    })
}

/// One datagram of the last call: its message, where it starts in the arena, its length.
#[derive(Clone, Copy)]
struct Datagram {
    msg: u16,
    truncated: bool,
    start: u32,
    len: u32,
}

/// Receives up to [`RECV_BATCH`] messages per syscall into one arena, and splits the runs that
/// `UDP_GRO` delivered whole back into their datagrams. Nothing is allocated per datagram.
pub(crate) struct RecvBatch {
    arena: Vec<u8>,
    /// Bytes one message may take, and the distance between two messages' slots.
    slot: usize,
    stride: usize,
    iovs: Vec<libc::iovec>,
    addrs: Vec<libc::sockaddr_storage>,
    controls: Vec<Control>,
    hdrs: Vec<libc::mmsghdr>,
    messages: usize,
    datagrams: Vec<Datagram>,
}

impl RecvBatch {
    /// For `socket`: 64 KiB per message when it has `UDP_GRO` on, one datagram's room if not.
    pub fn new(socket: &UdpSocket) -> Self {
        let (slot, stride) = if gro_enabled(socket) {
            (GRO_SLOT, GRO_STRIDE)
        } else {
            (MAX_DATAGRAM, MAX_DATAGRAM)
        };
        RecvBatch {
            arena: vec![0; stride * RECV_BATCH],
            slot,
            stride,
            // SAFETY (all three): plain old data, all zeroes is valid; filled before each call.
            iovs: vec![unsafe { std::mem::zeroed() }; RECV_BATCH],
            addrs: vec![unsafe { std::mem::zeroed() }; RECV_BATCH],
            controls: vec![[0; 8]; RECV_BATCH],
            hdrs: vec![unsafe { std::mem::zeroed() }; RECV_BATCH],
            messages: 0,
            // A run holds at most 64 datagrams (the kernel's UDP_GRO_CNT_MAX; a local GSO
            // sender's at most 128): room for the usual case up front.
            datagrams: Vec::with_capacity(RECV_BATCH * 8),
        }
    }

    /// Waits for at least one datagram (up to the socket's read timeout), then takes what is
    /// queued up to the batch size. Returns how many datagrams arrived.
    pub fn recv(&mut self, socket: &UdpSocket) -> io::Result<usize> {
        self.recv_with(socket, libc::MSG_WAITFORONE)
    }

    /// Takes what is queued without waiting (0 when nothing is).
    pub fn recv_now(&mut self, socket: &UdpSocket) -> io::Result<usize> {
        match self.recv_with(socket, libc::MSG_DONTWAIT) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(0),
            r => r,
        }
    }

    /// Whether the last call filled every message slot (more may be queued).
    pub fn was_full(&self) -> bool {
        self.messages == RECV_BATCH
    }

    fn recv_with(&mut self, socket: &UdpSocket, flags: libc::c_int) -> io::Result<usize> {
        self.messages = 0;
        self.datagrams.clear();
        let base = self.arena.as_mut_ptr();
        for i in 0..RECV_BATCH {
            self.iovs[i] = libc::iovec {
                // SAFETY: slot `i` lies within the arena (RECV_BATCH strides of `slot` or more).
                iov_base: unsafe { base.add(i * self.stride) } as *mut libc::c_void,
                iov_len: self.slot,
            };
            let h = &mut self.hdrs[i].msg_hdr;
            h.msg_name = &mut self.addrs[i] as *mut _ as *mut libc::c_void;
            h.msg_namelen = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            h.msg_iov = &mut self.iovs[i];
            h.msg_iovlen = 1;
            h.msg_control = self.controls[i].as_mut_ptr() as *mut libc::c_void;
            h.msg_controllen = std::mem::size_of::<Control>() as _;
            h.msg_flags = 0;
            self.hdrs[i].msg_len = 0;
        }
        // SAFETY: every header points at live buffers of the sizes it states, owned by `self`
        // for the duration of the call.
        let n = unsafe {
            libc::recvmmsg(
                socket.as_raw_fd(),
                self.hdrs.as_mut_ptr(),
                RECV_BATCH as libc::c_uint,
                flags,
                std::ptr::null_mut(),
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        self.messages = n as usize;
        for m in 0..self.messages {
            let h = &self.hdrs[m];
            let len = (h.msg_len as usize).min(self.slot);
            let truncated = h.msg_hdr.msg_flags & libc::MSG_TRUNC != 0;
            let seg = match gro_segment(&h.msg_hdr) {
                Some(g) if !truncated && g < len => g,
                _ => len.max(1),
            };
            let at = m * self.stride;
            let mut off = 0;
            loop {
                let l = seg.min(len - off);
                self.datagrams.push(Datagram {
                    msg: m as u16,
                    truncated,
                    start: (at + off) as u32,
                    len: l as u32,
                });
                off += l;
                if off >= len {
                    break;
                }
            }
        }
        Ok(self.datagrams.len())
    }

    /// Datagram `i` of the last call: its length (truncated ones report MAX_DATAGRAM or more)
    /// and source.
    pub fn get(&self, i: usize) -> (usize, Option<SocketAddr>) {
        let d = self.datagrams[i];
        let len = if d.truncated {
            MAX_DATAGRAM.max(d.len as usize)
        } else {
            d.len as usize
        };
        let m = usize::from(d.msg);
        (
            len,
            from_storage(&self.addrs[m], self.hdrs[m].msg_hdr.msg_namelen),
        )
    }

    /// When datagram `i` of the last call reached the kernel, as an `Instant` (`clocks` read
    /// right after the call). Without a kernel timestamp, or with one that does not fit the
    /// clocks (the wall clock was stepped), the time of the read. The datagrams of one run
    /// share their message's time.
    pub fn arrival(&self, i: usize, clocks: &Clocks) -> std::time::Instant {
        let Some(d) = self.datagrams.get(i) else {
            return clocks.mono;
        };
        let h = &self.hdrs[usize::from(d.msg)].msg_hdr;
        let mut ts: Option<libc::timespec> = None;
        // SAFETY: the header's control buffer is ours and the kernel set its length; the CMSG
        // macros stay within it, and the timestamp is read unaligned from the message data.
        unsafe {
            let mut c = libc::CMSG_FIRSTHDR(h);
            while !c.is_null() {
                if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_TIMESTAMPNS {
                    ts = Some(std::ptr::read_unaligned(
                        libc::CMSG_DATA(c) as *const libc::timespec
                    ));
                    break;
                }
                c = libc::CMSG_NXTHDR(h, c);
            }
        }
        let Some(ts) = ts else {
            return clocks.mono;
        };
        let kernel_ns = i128::from(ts.tv_sec) * 1_000_000_000 + i128::from(ts.tv_nsec);
        let age = clocks.wall_ns - kernel_ns;
        if !(0..1_000_000_000).contains(&age) {
            return clocks.mono;
        }
        clocks
            .mono
            .checked_sub(std::time::Duration::from_nanos(age as u64))
            .unwrap_or(clocks.mono)
    }

    /// The bytes of datagram `i` of the last call.
    pub fn buf(&self, i: usize) -> &[u8] {
        let d = self.datagrams[i];
        &self.arena[d.start as usize..][..d.len as usize]
    }

    /// Datagram `i` copied into a buffer from the pool (for a worker).
    pub fn take(&mut self, i: usize, pool: &BufferPool) -> PacketBuf {
        let mut b = pool.take();
        let data = self.buf(i);
        let n = data.len().min(MAX_DATAGRAM);
        b[..n].copy_from_slice(&data[..n]);
        b
    }
}

/// The segment size of a run `UDP_GRO` delivered whole, from the message's control data.
fn gro_segment(h: &libc::msghdr) -> Option<usize> {
    // SAFETY: the header's control buffer is ours and the kernel set its length; the CMSG
    // macros stay within it, and the value is read unaligned from the message data.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(h);
        while !c.is_null() {
            if (*c).cmsg_level == SOL_UDP && (*c).cmsg_type == UDP_GRO {
                let g = std::ptr::read_unaligned(libc::CMSG_DATA(c) as *const libc::c_int);
                return usize::try_from(g).ok().filter(|g| *g > 0);
            }
            c = libc::CMSG_NXTHDR(h, c);
        }
    }
    None
}

/// Queues datagrams and sends them with one `sendmmsg`. Runs of datagrams to the same
/// destination with the same size (the packets of one video frame to one subscriber) go as one
/// message with UDP GSO when the kernel has it: one trip through the IP stack for the run.
pub struct SendBatch {
    data: Vec<u8>,
    /// (offset in `data`, length, destination)
    msgs: Vec<(usize, usize, SocketAddr)>,
    iovs: Vec<libc::iovec>,
    addrs: Vec<(libc::sockaddr_storage, libc::socklen_t)>,
    /// One control buffer per message (a UDP_SEGMENT cmsg), 8-byte aligned.
    ctrl: Vec<[u64; 4]>,
    hdrs: Vec<libc::mmsghdr>,
    /// Datagrams per message, to count refusals.
    counts: Vec<usize>,
    /// GSO segment size per message (0: a single datagram).
    segs: Vec<u16>,
    gso: bool,
    /// Datagrams the kernel refused (unreachable destination, full send buffer: the send never
    /// waits for room).
    pub errors: u64,
    /// GSO was turned off after the kernel refused a GSO send with `EIO` (a device that cannot
    /// segment or checksum it): from then on every datagram goes on its own.
    pub gso_failed: bool,
    /// Datagrams sent inside GSO messages (for the benchmarks).
    pub gso_datagrams: u64,
}

// SAFETY: the raw pointers in `iovs` and `hdrs` point into the batch's own buffers; they are
// rebuilt at the start of every `flush` and never read outside it, so moving the batch to
// another thread between flushes is sound.
unsafe impl Send for SendBatch {}

impl Default for SendBatch {
    fn default() -> Self {
        SendBatch {
            data: Vec::with_capacity(SEND_BATCH * MAX_DATAGRAM),
            msgs: Vec::with_capacity(SEND_BATCH),
            iovs: Vec::with_capacity(SEND_BATCH),
            addrs: Vec::with_capacity(SEND_BATCH),
            ctrl: Vec::with_capacity(SEND_BATCH),
            hdrs: Vec::with_capacity(SEND_BATCH),
            counts: Vec::with_capacity(SEND_BATCH),
            segs: Vec::with_capacity(SEND_BATCH),
            gso: false,
            errors: 0,
            gso_failed: false,
            gso_datagrams: 0,
        }
    }
}

impl SendBatch {
    pub fn with_gso(gso: bool) -> Self {
        SendBatch {
            gso,
            ..Default::default()
        }
    }

    pub fn is_full(&self) -> bool {
        self.msgs.len() >= SEND_BATCH || self.data.len() + MAX_DATAGRAM > self.data.capacity()
    }

    pub fn push(&mut self, to: SocketAddr, data: &[u8]) {
        let at = self.data.len();
        self.data.extend_from_slice(data);
        self.msgs.push((at, data.len(), to));
    }

    /// Sends everything queued. A datagram the kernel refuses is counted and skipped.
    pub fn flush(&mut self, socket: &UdpSocket) {
        if self.msgs.is_empty() {
            return;
        }
        self.group();
        let mut start = 0;
        while start < self.hdrs.len() {
            // SAFETY: headers from `start` on point at `self.data`, `self.iovs` and
            // `self.addrs`, which are not touched until the call returns. MSG_DONTWAIT: a full
            // send buffer drops (counted), it never blocks the worker.
            let n = unsafe {
                libc::sendmmsg(
                    socket.as_raw_fd(),
                    self.hdrs[start..].as_mut_ptr(),
                    (self.hdrs.len() - start) as libc::c_uint,
                    libc::MSG_DONTWAIT,
                )
            };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                self.refused(socket, start, &e);
                start += 1;
            } else {
                start += n as usize;
            }
        }
        self.msgs.clear();
        self.data.clear();
    }

    /// Builds the messages of a flush from the queued datagrams: runs to one destination in
    /// one GSO message where allowed.
    fn group(&mut self) {
        self.iovs.clear();
        self.addrs.clear();
        self.ctrl.clear();
        self.hdrs.clear();
        self.counts.clear();
        // Group runs: same destination, same size (the last of a run may be shorter); the
        // bytes of a run are contiguous in `data`, so one iovec covers it.
        self.segs.clear();
        let mut i = 0;
        while i < self.msgs.len() {
            let (at, len, to) = self.msgs[i];
            let mut j = i + 1;
            let mut total = len;
            if self.gso && len > 0 {
                while j < self.msgs.len()
                    && j - i < 64
                    && self.msgs[j].2 == to
                    && self.msgs[j].1 <= len
                    && self.msgs[j].1 > 0
                    && total + self.msgs[j].1 <= GSO_MAX_BYTES
                {
                    total += self.msgs[j].1;
                    j += 1;
                    if self.msgs[j - 1].1 < len {
                        break; // only the last segment may be short
                    }
                }
            }
            self.iovs.push(libc::iovec {
                iov_base: self.data[at..].as_ptr() as *mut libc::c_void,
                iov_len: total,
            });
            self.addrs.push(to_storage(&to));
            self.ctrl.push([0u64; 4]);
            self.segs.push(if j - i > 1 { len as u16 } else { 0 });
            self.counts.push(j - i);
            if j - i > 1 {
                self.gso_datagrams += (j - i) as u64;
            }
            i = j;
        }
        for k in 0..self.iovs.len() {
            // SAFETY: plain old data; all zeroes is valid.
            let mut h: libc::mmsghdr = unsafe { std::mem::zeroed() };
            h.msg_hdr.msg_name = &mut self.addrs[k].0 as *mut _ as *mut libc::c_void;
            h.msg_hdr.msg_namelen = self.addrs[k].1;
            h.msg_hdr.msg_iov = &mut self.iovs[k];
            h.msg_hdr.msg_iovlen = 1;
            if self.segs[k] > 0 {
                let buf = &mut self.ctrl[k];
                h.msg_hdr.msg_control = buf.as_mut_ptr() as *mut libc::c_void;
                // SAFETY: CMSG_SPACE of a u16 (24 bytes on 64-bit) fits the 32-byte buffer;
                // the header points at it, and CMSG_FIRSTHDR/CMSG_DATA stay inside it.
                unsafe {
                    h.msg_hdr.msg_controllen =
                        libc::CMSG_SPACE(std::mem::size_of::<u16>() as u32) as _;
                    let c = libc::CMSG_FIRSTHDR(&h.msg_hdr);
                    (*c).cmsg_level = SOL_UDP;
                    (*c).cmsg_type = UDP_SEGMENT;
                    (*c).cmsg_len = libc::CMSG_LEN(std::mem::size_of::<u16>() as u32) as _;
                    std::ptr::write_unaligned(libc::CMSG_DATA(c) as *mut u16, self.segs[k]);
                }
            }
            self.hdrs.push(h);
        }
    }

    /// Message `k` of the current flush failed with `e`: skipped and counted, except a GSO run
    /// refused with `EIO`, which turns GSO off and goes as single datagrams.
    fn refused(&mut self, socket: &UdpSocket, k: usize, e: &io::Error) {
        if self.segs[k] == 0 || e.raw_os_error() != Some(libc::EIO) {
            self.errors += self.counts[k] as u64;
            return;
        }
        if !self.gso_failed {
            tracing::warn!(error = %e, "UDP GSO send refused; sending datagrams one by one from now on");
        }
        self.gso = false;
        self.gso_failed = true;
        let first: usize = self.counts[..k].iter().sum();
        for i in first..first + self.counts[k] {
            let (at, len, to) = self.msgs[i];
            let (addr, addr_len) = to_storage(&to);
            // SAFETY: a plain sendto of a slice of `data` to an address built from `to`.
            let sent = unsafe {
                libc::sendto(
                    socket.as_raw_fd(),
                    self.data[at..at + len].as_ptr() as *const libc::c_void,
                    len,
                    libc::MSG_DONTWAIT,
                    &addr as *const _ as *const libc::sockaddr,
                    addr_len,
                )
            };
            if sent < 0 {
                self.errors += 1;
            }
        }
    }
}

/// Receives one datagram per call, with UDP generic receive offload (`UDP_GRO`, Linux ≥ 5.0)
/// when the kernel has it: a run of same-size datagrams from one source that its sender sent
/// as one GSO message (or that the NIC coalesced) is read whole, in one call, and split here
/// into its datagrams. Without it the receiving kernel splits the run and queues, wakes and
/// copies out each datagram on its own. Nothing is allocated per datagram.
pub struct GroRecv {
    buf: Vec<u8>,
    /// Bytes of the last read, its segment size, and where the current datagram starts and
    /// the next one will.
    len: usize,
    seg: usize,
    start: usize,
    next: usize,
    from: Option<SocketAddr>,
    addr: libc::sockaddr_storage,
    control: [u64; 4],
    /// Whether the socket delivers runs whole.
    pub gro: bool,
    /// Reads made (runs count once), against datagrams returned.
    pub reads: u64,
}

impl GroRecv {
    /// Asks `socket` for `UDP_GRO`; without it, every read is one datagram.
    pub fn new(socket: &impl AsRawFd) -> GroRecv {
        let gro = enable_gro(socket).is_ok();
        GroRecv {
            buf: vec![0; if gro { u16::MAX as usize } else { 2048 }],
            len: 0,
            seg: 0,
            start: 0,
            next: 0,
            from: None,
            // SAFETY: plain old data, all zeroes is valid.
            addr: unsafe { std::mem::zeroed() },
            control: [0; 4],
            gro,
            reads: 0,
        }
    }

    /// The next datagram of the last read (its length and source), or `None` once it is used up.
    pub fn next_datagram(&mut self) -> Option<(usize, SocketAddr)> {
        while self.next < self.len {
            self.start = self.next;
            self.next = (self.start + self.seg).min(self.len);
            if let Some(from) = self.from {
                return Some((self.next - self.start, from));
            }
        }
        None
    }

    /// The bytes of the datagram [`GroRecv::next_datagram`] returned last.
    pub fn data(&self) -> &[u8] {
        &self.buf[self.start..self.next]
    }

    /// Reads what is queued on `socket` without waiting: one datagram, or one whole run. A
    /// `WouldBlock` error when nothing is; the datagrams of the previous read are dropped.
    pub fn read(&mut self, socket: &impl AsRawFd) -> io::Result<()> {
        self.len = 0;
        self.next = 0;
        self.start = 0;
        let mut iov = libc::iovec {
            iov_base: self.buf.as_mut_ptr() as *mut libc::c_void,
            iov_len: self.buf.len(),
        };
        // SAFETY: plain old data, all zeroes is valid; the pointers are set below.
        let mut h: libc::msghdr = unsafe { std::mem::zeroed() };
        h.msg_name = &mut self.addr as *mut _ as *mut libc::c_void;
        h.msg_namelen = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
        h.msg_iov = &mut iov;
        h.msg_iovlen = 1;
        h.msg_control = self.control.as_mut_ptr() as *mut libc::c_void;
        h.msg_controllen = std::mem::size_of_val(&self.control) as _;
        // SAFETY: the header points at live buffers of the sizes it states, owned by `self`.
        let n = unsafe { libc::recvmsg(socket.as_raw_fd(), &mut h, libc::MSG_DONTWAIT) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        self.reads += 1;
        let n = n as usize;
        let seg = gro_segment(&h).unwrap_or(n);
        // A truncated datagram (only possible without GRO, past 2 KiB) is no RTP of ours.
        if h.msg_flags & libc::MSG_TRUNC != 0 {
            return Ok(());
        }
        self.len = n;
        self.seg = seg.max(1);
        self.from = from_storage(&self.addr, h.msg_namelen);
        Ok(())
    }
}

#[cfg(test)]
#[path = "batch_tests.rs"]
mod tests;
