//! How a direct media worker waits: an epoll set over its UDP socket and its [`Waker`] (an
//! eventfd that signaling commands and ICE-TCP frames ring), registered once. Reading and
//! writing the socket is `batch.rs`.

use std::io;
use std::net::UdpSocket;
use std::os::fd::AsRawFd;

/// Wakes a worker that waits on its socket (an eventfd), for input that comes through channels
/// (signaling commands, ICE-TCP frames) rather than the socket.
pub(crate) struct Waker {
    fd: std::os::fd::OwnedFd,
}

impl Waker {
    pub fn new() -> io::Result<Waker> {
        // SAFETY: eventfd has no pointer arguments; the result is checked.
        let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` was just opened and is owned by nobody else.
        Ok(Waker {
            fd: unsafe { std::os::fd::FromRawFd::from_raw_fd(fd) },
        })
    }

    pub fn wake(&self) {
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a live u64. A full counter (EAGAIN) is already a wake.
        unsafe {
            libc::write(
                self.fd.as_raw_fd(),
                &one as *const u64 as *const libc::c_void,
                8,
            )
        };
    }

    /// Clears pending wakes (before the channels are drained, so none is lost).
    pub fn reset(&self) {
        let mut v: u64 = 0;
        // SAFETY: reads at most 8 bytes into a live u64; EAGAIN when nothing is pending.
        unsafe {
            libc::read(
                self.fd.as_raw_fd(),
                &mut v as *mut u64 as *mut libc::c_void,
                8,
            )
        };
    }
}

/// What a direct worker waits on: an epoll set holding its socket and its [`Waker`]'s eventfd,
/// registered once. (`ppoll` set up and tore down a wait-queue entry for both on every wait, and
/// the worker waits thousands of times a second: ~5 % of its CPU time at 25 consultations.)
pub(crate) struct Poller {
    epoll: std::os::fd::OwnedFd,
    /// `epoll_pwait2` (Linux 5.11, nanosecond timeouts) works here; otherwise (an older kernel,
    /// or a seccomp filter that refuses it) `epoll_wait`, with the timeout rounded up to whole
    /// milliseconds.
    pwait2: std::cell::Cell<bool>,
}

const SOCKET_READY: u64 = 0;
const WAKE_READY: u64 = 1;

impl Poller {
    pub fn new(socket: &UdpSocket, waker: &Waker) -> io::Result<Poller> {
        // SAFETY: no pointer arguments; the result is checked.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` was just opened and is owned by nobody else.
        let epoll: std::os::fd::OwnedFd = unsafe { std::os::fd::FromRawFd::from_raw_fd(fd) };
        for (watched, token) in [
            (socket.as_raw_fd(), SOCKET_READY),
            (waker.fd.as_raw_fd(), WAKE_READY),
        ] {
            // Level-triggered: a socket the worker did not drain stays ready.
            let mut ev = libc::epoll_event {
                events: libc::EPOLLIN as u32,
                u64: token,
            };
            // SAFETY: `ev` is live for the call; both descriptors are open.
            if unsafe { libc::epoll_ctl(fd, libc::EPOLL_CTL_ADD, watched, &mut ev) } != 0 {
                return Err(io::Error::last_os_error());
            }
        }
        Ok(Poller {
            epoll,
            pwait2: std::cell::Cell::new(true),
        })
    }

    /// Waits until the socket has a datagram, a wake comes, or `timeout` passes, and says
    /// which of them is ready.
    pub fn wait(&self, timeout: std::time::Duration) -> Ready {
        let timeout = timeout.min(std::time::Duration::from_secs(10));
        let mut events = [libc::epoll_event { events: 0, u64: 0 }; 2];
        let fd = self.epoll.as_raw_fd();
        let mut n = -1;
        if self.pwait2.get() {
            let ts = libc::timespec {
                tv_sec: timeout.as_secs() as libc::time_t,
                tv_nsec: timeout.subsec_nanos() as libc::c_long,
            };
            // SAFETY: `events` (2 entries) and `ts` are live for the call; no signal mask.
            n = unsafe {
                libc::syscall(
                    libc::SYS_epoll_pwait2,
                    fd,
                    events.as_mut_ptr(),
                    2 as libc::c_int,
                    &ts as *const libc::timespec,
                    std::ptr::null::<libc::sigset_t>(),
                    0usize,
                )
            } as i32;
            // ENOSYS before Linux 5.11; EPERM where a seccomp filter (an older container
            // runtime's default) does not know the call. Anything but EINTR: epoll_wait from now.
            if n < 0 && io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
                self.pwait2.set(false);
            }
        }
        if !self.pwait2.get() {
            let ms = timeout.as_nanos().div_ceil(1_000_000) as libc::c_int;
            // SAFETY: `events` (2 entries) is live for the call.
            n = unsafe { libc::epoll_wait(fd, events.as_mut_ptr(), 2, ms) };
        }
        if n < 0 {
            // EINTR (or worse): the caller looks at everything, as before a first wait.
            return Ready::ALL;
        }
        // An error or hang-up condition counts as readable: the next read reports and clears it.
        let mut ready = Ready {
            socket: false,
            woken: false,
        };
        for ev in &events[..n as usize] {
            match ev.u64 {
                SOCKET_READY => ready.socket = true,
                _ => ready.woken = true,
            }
        }
        ready
    }
}

/// What a [`Poller::wait`] found ready.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Ready {
    /// The socket has a datagram (or an error) to read.
    pub socket: bool,
    /// A wake came: the worker's channels have input.
    pub woken: bool,
}

impl Ready {
    /// Everything may be ready: no wait told otherwise.
    pub const ALL: Ready = Ready {
        socket: true,
        woken: true,
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_poller_reports_datagrams_and_wakes_until_they_are_taken() {
        use std::time::Duration;
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        socket.set_nonblocking(true).unwrap();
        let waker = Waker::new().unwrap();
        let poller = Poller::new(&socket, &waker).unwrap();
        let nothing = Ready {
            socket: false,
            woken: false,
        };
        // Nothing to read: the wait ends on its timeout.
        assert_eq!(poller.wait(Duration::from_millis(5)), nothing);
        let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
        tx.send_to(b"media", socket.local_addr().unwrap()).unwrap();
        let ready = Ready {
            socket: true,
            woken: false,
        };
        assert_eq!(poller.wait(Duration::from_secs(2)), ready);
        // Level-triggered: a datagram not read yet is still reported.
        assert_eq!(poller.wait(Duration::from_secs(2)), ready);
        let mut buf = [0u8; 64];
        assert_eq!(socket.recv(&mut buf).unwrap(), 5);
        waker.wake();
        let woken = Ready {
            socket: false,
            woken: true,
        };
        assert_eq!(poller.wait(Duration::from_secs(2)), woken);
        waker.reset();
        assert_eq!(poller.wait(Duration::from_millis(5)), nothing);
        // The same with `epoll_wait`, for kernels before `epoll_pwait2`.
        poller.pwait2.set(false);
        assert_eq!(poller.wait(Duration::from_micros(10)), nothing);
        tx.send_to(b"media", socket.local_addr().unwrap()).unwrap();
        assert_eq!(poller.wait(Duration::from_secs(2)), ready);
    }
}
