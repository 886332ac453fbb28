//! Batched UDP I/O: `recvmmsg` for the demux thread, `sendmmsg` for the workers.
//!
//! One syscall per datagram was a large share of the server's CPU under load (profile in the
//! README's Performance section). Receiving takes up to [`RECV_BATCH`] datagrams per call (the
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

/// Receives up to [`RECV_BATCH`] datagrams per syscall into pool buffers.
pub(crate) struct RecvBatch {
    bufs: Vec<PacketBuf>,
    iovs: Vec<libc::iovec>,
    addrs: Vec<libc::sockaddr_storage>,
    hdrs: Vec<libc::mmsghdr>,
}

impl RecvBatch {
    pub fn new(pool: &BufferPool) -> Self {
        RecvBatch {
            bufs: (0..RECV_BATCH).map(|_| pool.take()).collect(),
            // SAFETY (all three): plain old data, all zeroes is valid; filled before each call.
            iovs: vec![unsafe { std::mem::zeroed() }; RECV_BATCH],
            addrs: vec![unsafe { std::mem::zeroed() }; RECV_BATCH],
            hdrs: vec![unsafe { std::mem::zeroed() }; RECV_BATCH],
        }
    }

    /// Blocks (up to the socket's read timeout) for at least one datagram, then takes what is
    /// queued up to the batch size. Returns how many arrived.
    pub fn recv(&mut self, socket: &UdpSocket) -> io::Result<usize> {
        for i in 0..RECV_BATCH {
            self.iovs[i] = libc::iovec {
                iov_base: self.bufs[i].as_mut_ptr() as *mut libc::c_void,
                iov_len: MAX_DATAGRAM,
            };
            let h = &mut self.hdrs[i].msg_hdr;
            h.msg_name = &mut self.addrs[i] as *mut _ as *mut libc::c_void;
            h.msg_namelen = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            h.msg_iov = &mut self.iovs[i];
            h.msg_iovlen = 1;
            h.msg_control = std::ptr::null_mut();
            h.msg_controllen = 0;
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
                libc::MSG_WAITFORONE,
                std::ptr::null_mut(),
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(n as usize)
    }

    /// Datagram `i` of the last call: its length (truncated ones report MAX_DATAGRAM or more)
    /// and source.
    pub fn get(&self, i: usize) -> (usize, Option<SocketAddr>) {
        let h = &self.hdrs[i];
        let truncated = h.msg_hdr.msg_flags & libc::MSG_TRUNC != 0;
        let len = if truncated {
            MAX_DATAGRAM
        } else {
            h.msg_len as usize
        };
        (len, from_storage(&self.addrs[i], h.msg_hdr.msg_namelen))
    }

    pub fn buf(&self, i: usize) -> &[u8] {
        &self.bufs[i][..]
    }

    /// Takes datagram `i`'s buffer (for a worker), leaving a fresh one from the pool.
    pub fn take(&mut self, i: usize, pool: &BufferPool) -> PacketBuf {
        std::mem::replace(&mut self.bufs[i], pool.take())
    }
}

/// Queues datagrams and sends them with one `sendmmsg`.
pub(crate) struct SendBatch {
    data: Vec<u8>,
    /// (offset in `data`, length, destination)
    msgs: Vec<(usize, usize, SocketAddr)>,
    iovs: Vec<libc::iovec>,
    addrs: Vec<(libc::sockaddr_storage, libc::socklen_t)>,
    hdrs: Vec<libc::mmsghdr>,
    /// Datagrams the kernel refused (unreachable destination, full buffer).
    pub errors: u64,
}

impl Default for SendBatch {
    fn default() -> Self {
        SendBatch {
            data: Vec::with_capacity(SEND_BATCH * MAX_DATAGRAM),
            msgs: Vec::with_capacity(SEND_BATCH),
            iovs: Vec::with_capacity(SEND_BATCH),
            addrs: Vec::with_capacity(SEND_BATCH),
            hdrs: Vec::with_capacity(SEND_BATCH),
            errors: 0,
        }
    }
}

impl SendBatch {
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
        self.iovs.clear();
        self.addrs.clear();
        self.hdrs.clear();
        for (at, len, to) in &self.msgs {
            self.iovs.push(libc::iovec {
                iov_base: self.data[*at..].as_ptr() as *mut libc::c_void,
                iov_len: *len,
            });
            self.addrs.push(to_storage(to));
        }
        for i in 0..self.msgs.len() {
            // SAFETY: plain old data; all zeroes is valid.
            let mut h: libc::mmsghdr = unsafe { std::mem::zeroed() };
            h.msg_hdr.msg_name = &mut self.addrs[i].0 as *mut _ as *mut libc::c_void;
            h.msg_hdr.msg_namelen = self.addrs[i].1;
            h.msg_hdr.msg_iov = &mut self.iovs[i];
            h.msg_hdr.msg_iovlen = 1;
            self.hdrs.push(h);
        }
        let mut start = 0;
        while start < self.hdrs.len() {
            // SAFETY: headers from `start` on point at `self.data`, `self.iovs` and
            // `self.addrs`, which are not touched until the call returns.
            let n = unsafe {
                libc::sendmmsg(
                    socket.as_raw_fd(),
                    self.hdrs[start..].as_mut_ptr(),
                    (self.hdrs.len() - start) as libc::c_uint,
                    0,
                )
            };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                // The first datagram failed: skip it, send the rest.
                self.errors += 1;
                start += 1;
            } else {
                start += n as usize;
            }
        }
        self.msgs.clear();
        self.data.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_goes_out_and_comes_back_in_order() {
        let a = UdpSocket::bind("127.0.0.1:0").unwrap();
        let b = UdpSocket::bind("127.0.0.1:0").unwrap();
        b.set_read_timeout(Some(std::time::Duration::from_secs(2)))
            .unwrap();
        let to = b.local_addr().unwrap();
        let mut out = SendBatch::default();
        for i in 0..40u8 {
            out.push(to, &[i; 100][..usize::from(i) + 1]);
        }
        // A destination nobody can reach is skipped, the rest still go.
        out.push("255.255.255.255:9".parse().unwrap(), b"nowhere");
        out.push(to, b"last");
        out.flush(&a);
        let pool = BufferPool::new(64);
        let mut rx = RecvBatch::new(&pool);
        let mut got = Vec::new();
        while got.len() < 41 {
            let n = rx.recv(&b).unwrap();
            for i in 0..n {
                let (len, from) = rx.get(i);
                assert_eq!(from, Some(a.local_addr().unwrap()));
                got.push(rx.buf(i)[..len].to_vec());
            }
        }
        for (i, d) in got.iter().take(40).enumerate() {
            assert_eq!(d.len(), i + 1);
            assert!(d.iter().all(|x| usize::from(*x) == i));
        }
        assert_eq!(got[40], b"last");
        assert_eq!(out.errors, 1);
    }
}
