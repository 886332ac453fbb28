//! A standalone TURN server for manual tests and benchmarks:
//!
//! ```sh
//! cargo run --release -p consulta-turn --example turn-server -- \
//!     --listen 127.0.0.1 --port 3478 --secret S --realm R --allow 127.0.0.0/8
//! ```
//!
//! Flags: `--listen IP`, `--port N` (UDP and TCP), `--tls-port N --cert PEM --key PEM`,
//! `--secret S` (repeatable), `--realm R`, `--allow CIDR` (repeatable), `--bandwidth BYTES/S`, `--max-per-user N`,
//! `--legacy-channels` (accept RFC 5766 channel numbers up to 0x7FFF).

use consulta_turn::TurnConfig;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut c = TurnConfig {
        enabled: true,
        tls_port: 0,
        ..TurnConfig::default()
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let mut value = || args.next().ok_or(format!("{flag} needs a value"));
        match flag.as_str() {
            "--listen" => c.listen_ip = value()?.parse()?,
            "--port" => {
                c.udp_port = value()?.parse()?;
                c.tcp_port = c.udp_port;
            }
            "--tls-port" => c.tls_port = value()?.parse()?,
            "--cert" => c.tls_cert = Some(value()?.into()),
            "--key" => c.tls_key = Some(value()?.into()),
            "--secret" => c.secrets.push(value()?),
            "--realm" => c.realm = value()?,
            "--allow" => c.allowed_peer_ranges.push(value()?),
            "--max-per-user" => c.max_allocations_per_user = value()?.parse()?,
            "--legacy-channels" => c.legacy_channel_numbers = true,
            "--bandwidth" => c.max_bandwidth_per_allocation = value()?.parse()?,
            other => return Err(format!("unknown flag {other}").into()),
        }
    }
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let handle = consulta_turn::start(c, Vec::new(), stop_rx).await?;
    println!(
        "turn udp {} tcp {} tls {:?}",
        handle.udp_addr, handle.tcp_addr, handle.tls_addr
    );
    tokio::signal::ctrl_c().await?;
    let _ = stop_tx.send(true);
    println!("{:?}", handle.counters());
    handle.stopped().await;
    Ok(())
}
