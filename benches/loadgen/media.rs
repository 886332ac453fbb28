//! The UDP side of one synthetic participant, kept cheap so that the generator leaves the
//! machine's cores to the server it measures: received datagrams are drained in bursts once the
//! socket is readable, and everything its peer connections produce leaves in one `sendmmsg`
//! (the packets of a video frame as one UDP GSO send), as the server itself sends.

use std::collections::HashMap;
use std::io::ErrorKind;
use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

use anyhow::Result;
use consulta_sfu::{GroRecv, SendBatch};
use futures_util::StreamExt;
use str0m::format::Codec;
use str0m::media::{MediaTime, Mid};
use str0m::net::{Protocol, Receive, Transmit};
use str0m::{Event, Input, Output, Rtc};
use tokio::net::UdpSocket;
use tokio_tungstenite::tungstenite::Message;

use crate::{on_media, Heard, Stats};

/// Datagrams read back to back before the participant's other inputs get a turn.
pub const BURST: usize = 64;

pub struct MediaSocket {
    /// Await `socket.readable()`, then [`MediaSocket::try_recv`] what arrived.
    pub socket: UdpSocket,
    /// The same socket, for `sendmmsg`.
    send: std::net::UdpSocket,
    out: SendBatch,
    rx: GroRecv,
    pub local: SocketAddr,
}

impl MediaSocket {
    pub fn bind(ip: IpAddr) -> Result<MediaSocket> {
        let send = std::net::UdpSocket::bind((ip, 0))?;
        send.set_nonblocking(true)?;
        let local = send.local_addr()?;
        let socket = UdpSocket::from_std(send.try_clone()?)?;
        Ok(MediaSocket {
            out: SendBatch::with_gso(consulta_sfu::gso_supported(&send)),
            rx: GroRecv::new(&send),
            socket,
            send,
            local,
        })
    }

    /// Queues one transmit; it leaves at the next [`MediaSocket::flush`].
    pub fn queue(&mut self, t: &Transmit) {
        if self.out.is_full() {
            self.out.flush(&self.send);
        }
        self.out.push(t.destination, &t.contents);
    }

    /// Sends what is queued. A datagram the kernel refuses (a full send buffer) is lost, as on
    /// a real network, and counted: a loss the generator caused, not the server.
    pub fn flush(&mut self, stats: &Stats) {
        self.out.flush(&self.send);
        let refused = std::mem::take(&mut self.out.errors);
        if refused > 0 {
            stats
                .send_refused
                .fetch_add(refused, std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// The next datagram that has arrived, if any: its length and source. A run of datagrams the
    /// server sent as one GSO message is read in one call (`UDP_GRO`): the kernel queues it
    /// whole instead of splitting it and queueing and waking this participant per datagram. On
    /// loopback that work runs inside the sender's `sendmmsg` and was charged to the server; on
    /// a network the receiving machine does it.
    pub fn try_recv(&mut self) -> Result<Option<(usize, SocketAddr)>> {
        loop {
            if let Some(r) = self.rx.next_datagram() {
                return Ok(Some(r));
            }
            let (rx, send) = (&mut self.rx, &self.send);
            match self
                .socket
                .try_io(tokio::io::Interest::READABLE, || rx.read(send))
            {
                Ok(()) => {}
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(None),
                // An ICMP error from an earlier send: nothing to read, keep going.
                Err(e) if e.kind() == ErrorKind::ConnectionRefused => {}
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// The bytes of the datagram [`MediaSocket::try_recv`] returned (`n` bytes long).
    pub fn data(&self, n: usize) -> &[u8] {
        &self.rx.data()[..n]
    }

    /// That datagram as an `Rtc` input (`None` if it is nothing WebRTC), received at `at`
    /// (see [`burst_time`]).
    pub fn input(&self, n: usize, source: SocketAddr, at: Instant) -> Option<Input<'_>> {
        let contents = self.data(n).try_into().ok()?;
        Some(Input::Receive(
            at,
            Receive {
                proto: Protocol::Udp,
                source,
                destination: self.local,
                contents,
            },
        ))
    }
}

/// The time to date a burst's datagrams with, once the `Rtc`s reading them were driven to
/// `now`: just before it (they were queued by then). str0m runs all its timers whenever an input
/// moves its clock forward; dated this way, a burst moves it once (the `Timeout(now)` before
/// it) instead of once per datagram, which was a sixth of the generator's CPU. The server gets
/// the same from the kernel's receive timestamps.
pub fn burst_time(now: Instant) -> Instant {
    now.checked_sub(std::time::Duration::from_micros(1))
        .unwrap_or(now)
}

/// A participant's capture clocks: a video frame every 33 ms and an audio frame every 20 ms,
/// each starting at a phase of its own (spread by the participant's id), as independent cameras
/// and microphones are. Started together, every publisher's frames would reach the server in
/// the same millisecond, a burst no real consultation sends.
pub fn capture_ticks(id: u32) -> (tokio::time::Interval, tokio::time::Interval) {
    // The golden ratio's fractional part spreads consecutive ids evenly over a period.
    let phase = (f64::from(id) * 0.618_033_988_75).fract();
    let start = tokio::time::Instant::now();
    let tick = |period_ms: u64| {
        let period = std::time::Duration::from_millis(period_ms);
        tokio::time::interval_at(start + period.mul_f64(phase), period)
    };
    (tick(33), tick(20))
}

/// What a participant keeps of the media it receives, and whether it owes a keyframe.
pub struct Inbox<'a> {
    pub stats: &'a Stats,
    /// When the participant started (for the time to first media).
    pub t0: Instant,
    pub heard: HashMap<u32, Heard>,
    pub first_media: bool,
    /// The SFU asked for a keyframe (a new subscriber): the next video frame is one.
    pub force_key: bool,
}

impl<'a> Inbox<'a> {
    pub fn new(stats: &'a Stats, t0: Instant) -> Self {
        Inbox {
            stats,
            t0,
            heard: HashMap::new(),
            first_media: false,
            force_key: false,
        }
    }

    fn on_event(&mut self, e: Event) -> Option<Event> {
        match e {
            Event::MediaData(m) => {
                on_media(&m, self);
                None
            }
            Event::KeyframeRequest(_) => {
                self.force_key = true;
                None
            }
            e => Some(e),
        }
    }
}

/// Polls an `Rtc` until it asks for a timeout (str0m wants that after every change to it):
/// transmits are queued on `udp` (sent at its next flush), events go to `inbox`, and those it
/// does not take to `other`. Returns the deadline.
pub fn poll(
    rtc: &mut Rtc,
    udp: &mut MediaSocket,
    inbox: &mut Inbox,
    mut other: impl FnMut(Event),
) -> Result<Instant> {
    loop {
        match rtc.poll_output()? {
            Output::Timeout(t) => return Ok(t),
            Output::Transmit(t) => udp.queue(&t),
            Output::Event(e) => {
                if let Some(e) = inbox.on_event(e) {
                    other(e);
                }
            }
        }
    }
}

/// Moves an `Rtc`'s clock to `now` and polls it.
pub fn tick(rtc: &mut Rtc, udp: &mut MediaSocket, inbox: &mut Inbox, now: Instant) -> Result<()> {
    rtc.handle_input(Input::Timeout(now))?;
    poll(rtc, udp, inbox, |_| {})?;
    Ok(())
}

/// Writes one frame of `codec` on `mid` (on its simulcast layer `rid`, if any) and has it
/// packetized at once: str0m packetizes a written frame when its clock next moves, so the clock
/// is moved to now (received datagrams no longer move it one by one; see [`burst_time`]).
pub fn write(
    rtc: &mut Rtc,
    udp: &mut MediaSocket,
    inbox: &mut Inbox,
    (mid, rid): (Mid, Option<&str>),
    codec: Codec,
    time: MediaTime,
    data: &[u8],
) -> Result<()> {
    let Some(mut w) = rtc.writer(mid) else {
        return Ok(());
    };
    if let Some(rid) = rid {
        w = w.rid(rid.into());
    }
    let Some(pt) = w
        .payload_params()
        .find(|p| p.spec().codec == codec)
        .map(|p| p.pt())
    else {
        return Ok(());
    };
    w.write(pt, Instant::now(), time, data.to_vec())?;
    poll(rtc, udp, inbox, |_| {})?;
    tick(rtc, udp, inbox, Instant::now())
}

/// The sending half of a participant's signaling WebSocket.
pub type WsSink = futures_util::stream::SplitSink<Ws, Message>;
pub type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Splits a signaling WebSocket: its text messages are read on their own task and arrive on
/// the returned channel (closed when the socket is). A participant's loop waits on the channel
/// instead of the socket: polling tungstenite's stream on every turn of that loop zeroes its
/// read buffer each time, which was 17% of the generator's CPU at 50 consultations.
pub fn split_ws(ws: Ws) -> (WsSink, tokio::sync::mpsc::Receiver<String>) {
    let (sink, mut stream) = ws.split();
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    tokio::spawn(async move {
        while let Some(Ok(m)) = stream.next().await {
            if let Message::Text(t) = m {
                if tx.send(t.to_string()).await.is_err() {
                    break;
                }
            }
        }
    });
    (sink, rx)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A video frame's packets queued to one peer leave in one flush (as one GSO send where the
    /// kernel has it) and arrive as the separate datagrams they were; an empty socket reads as
    /// nothing rather than blocking.
    #[tokio::test(flavor = "current_thread")]
    async fn queued_datagrams_leave_in_one_flush_and_arrive_whole() {
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        let (mut a, mut b) = (
            MediaSocket::bind(ip).unwrap(),
            MediaSocket::bind(ip).unwrap(),
        );
        assert!(b.try_recv().unwrap().is_none());
        let sizes = [1200usize, 1200, 1200, 700];
        for (i, n) in sizes.iter().enumerate() {
            let t = Transmit {
                proto: Protocol::Udp,
                source: a.local,
                destination: b.local,
                contents: vec![i as u8; *n].into(),
            };
            a.queue(&t);
        }
        // Nothing leaves before the flush.
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        assert!(b.try_recv().unwrap().is_none());
        let stats = Stats::default();
        a.flush(&stats);
        assert_eq!(
            stats
                .send_refused
                .load(std::sync::atomic::Ordering::Relaxed),
            0
        );
        let mut got = Vec::new();
        let deadline = Instant::now() + std::time::Duration::from_secs(2);
        while got.len() < sizes.len() && Instant::now() < deadline {
            b.socket.readable().await.unwrap();
            while let Some((n, from)) = b.try_recv().unwrap() {
                assert_eq!(from, a.local);
                got.push((n, b.data(n)[0]));
            }
        }
        assert_eq!(got, vec![(1200, 0), (1200, 1), (1200, 2), (700, 3)]);
        // Dated just before the clock move that precedes the burst.
        let now = Instant::now();
        assert!(burst_time(now) < now);
    }
}
