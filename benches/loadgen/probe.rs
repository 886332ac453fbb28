//! What the load generator reads of the server and of itself: CPU time, memory and UDP receive
//! drops from /proc, and the forwarded-packet count and forwarding-delay histogram from the
//! server's /metrics.

pub(crate) fn proc_cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    Some(ticks / 100.0)
}

/// A memory figure of `/proc/<pid>/status` (`VmRSS:` resident now, `VmHWM:` its peak), in bytes.
pub(crate) fn proc_status_bytes(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb: u64 = status
        .lines()
        .find(|l| l.starts_with(field))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some(kb * 1024)
}

/// Datagrams the kernel dropped on their way into `pid`'s UDP sockets (their receive queues
/// were full), summed over the sockets it has open now: `/proc/<pid>/fd` names the sockets,
/// `/proc/<pid>/net/udp{,6}` (its network namespace) their drop counters. Works for any server.
pub(crate) fn proc_udp_drops(pid: u32) -> Option<u64> {
    let mut inodes = std::collections::HashSet::new();
    for e in std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.flatten() {
        let Ok(link) = std::fs::read_link(e.path()) else {
            continue;
        };
        let link = link.to_string_lossy();
        if let Some(i) = link
            .strip_prefix("socket:[")
            .and_then(|r| r.strip_suffix(']'))
            .and_then(|r| r.parse::<u64>().ok())
        {
            inodes.insert(i);
        }
    }
    let mut total = 0;
    for table in ["udp", "udp6"] {
        let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/net/{table}")) else {
            continue;
        };
        total += udp_table_drops(&text)
            .filter(|(inode, _)| inodes.contains(inode))
            .map(|(_, d)| d)
            .sum::<u64>();
    }
    Some(total)
}

/// (inode, drops) of every socket in a `/proc/net/udp` table (header line skipped).
pub(crate) fn udp_table_drops(text: &str) -> impl Iterator<Item = (u64, u64)> + '_ {
    text.lines().skip(1).filter_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        // sl local rem st tx:rx tr:when retrnsmt uid timeout inode ref pointer drops
        Some((f.get(9)?.parse().ok()?, f.last()?.parse().ok()?))
    })
}

/// What the run reads from the server's /metrics.
pub(crate) struct Scrape {
    pub forwarded: f64,
    /// `consulta_forward_delay_seconds` buckets: (upper bound in s, cumulative count).
    pub delay: Vec<(f64, f64)>,
}

impl Scrape {
    /// The histogram's buckets over the time between `before` and `self`.
    pub(crate) fn delay_since(&self, before: &Scrape) -> Vec<(f64, f64)> {
        self.delay
            .iter()
            .map(|(le, n)| {
                let was = before
                    .delay
                    .iter()
                    .find(|(l, _)| l == le)
                    .map_or(0.0, |(_, c)| *c);
                (*le, n - was)
            })
            .collect()
    }
}

/// Quantile `q` of a cumulative histogram in ms, interpolated within its bucket (Prometheus'
/// `histogram_quantile`); `None` without observations or when it falls in the `+Inf` bucket.
pub(crate) fn quantile_ms(buckets: &[(f64, f64)], q: f64) -> Option<f64> {
    let total = buckets.last()?.1;
    if total <= 0.0 {
        return None;
    }
    let rank = q * total;
    let (mut lo, mut below) = (0.0, 0.0);
    for (le, n) in buckets {
        if *n >= rank {
            if le.is_infinite() {
                return None;
            }
            let within = if *n > below {
                (rank - below) / (n - below)
            } else {
                1.0
            };
            return Some((lo + (le - lo) * within) * 1000.0);
        }
        (lo, below) = (*le, *n);
    }
    None
}

pub(crate) async fn scrape(url: &str) -> Option<Scrape> {
    let rest = url.strip_prefix("http://")?;
    let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
    let mut s = tokio::net::TcpStream::connect(host).await.ok()?;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    s.write_all(format!("GET /{path} HTTP/1.0\r\nHost: {host}\r\n\r\n").as_bytes())
        .await
        .ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).await.ok()?;
    let forwarded = text.lines().find_map(|l| {
        l.strip_prefix("consulta_rtp_forwarded_total ")?
            .trim()
            .parse()
            .ok()
    })?;
    let delay = text
        .lines()
        .filter_map(|l| {
            let rest = l.strip_prefix("consulta_forward_delay_seconds_bucket{le=\"")?;
            let (le, n) = rest.split_once("\"} ")?;
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().ok()?
            };
            Some((le, n.trim().parse().ok()?))
        })
        .collect();
    Some(Scrape { forwarded, delay })
}

#[cfg(test)]
mod tests {
    use super::{proc_udp_drops, quantile_ms, udp_table_drops};

    #[test]
    fn udp_table_drops_reads_inode_and_drops() {
        let t = "   sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops\n\
  123: 0100007F:1EC4 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 48213 2 ffff8d0c9f6a8000 17\n\
  124: 0100007F:1EC5 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 48214 2 ffff8d0c9f6a8400 0\n";
        assert_eq!(
            udp_table_drops(t).collect::<Vec<_>>(),
            vec![(48213, 17), (48214, 0)]
        );
    }

    /// The generator's own sockets: a queue overflowed on purpose shows up in /proc.
    #[test]
    fn proc_udp_drops_counts_this_process_sockets() {
        use std::net::UdpSocket;
        let rx = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None).unwrap();
        rx.set_recv_buffer_size(1).unwrap();
        rx.bind(
            &"127.0.0.1:0"
                .parse::<std::net::SocketAddr>()
                .unwrap()
                .into(),
        )
        .unwrap();
        let rx: UdpSocket = rx.into();
        let before = proc_udp_drops(std::process::id()).unwrap();
        let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
        for _ in 0..200 {
            tx.send_to(&[1u8; 1000], rx.local_addr().unwrap()).unwrap();
        }
        // /proc must agree with the socket's own counter (SO_MEMINFO) once delivery is done.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            let own = consulta_sfu::socket_memory(&rx).unwrap().drops;
            let seen = proc_udp_drops(std::process::id()).unwrap() - before;
            if own > 0 && seen == own {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "socket dropped {own}, /proc says {seen}"
            );
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }

    #[test]
    fn quantiles_interpolate_within_the_bucket_like_prometheus() {
        // 100 observations: 50 up to 0.1 ms, 40 in (0.1, 0.2], 10 in (0.2, 1].
        let b = [
            (0.0001, 50.0),
            (0.0002, 90.0),
            (0.001, 100.0),
            (f64::INFINITY, 100.0),
        ];
        assert!((quantile_ms(&b, 0.5).unwrap() - 0.1).abs() < 1e-9);
        assert!((quantile_ms(&b, 0.7).unwrap() - 0.15).abs() < 1e-9);
        assert!((quantile_ms(&b, 0.99).unwrap() - 0.92).abs() < 1e-9);
        assert_eq!(
            quantile_ms(&[(0.001, 0.0), (f64::INFINITY, 0.0)], 0.5),
            None
        );
        assert_eq!(
            quantile_ms(&[(0.001, 0.0), (f64::INFINITY, 5.0)], 0.5),
            None
        );
    }
}
