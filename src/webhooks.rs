//! Webhook delivery from the durable outbox (rows written with their event, see
//! `Store::apply_event`): at-least-once, signed, retried with exponential backoff.
//!
//! Signature: `X-Consulta-Signature: v1=` + hex(HMAC-SHA256(secret, timestamp + "." + body)),
//! with `X-Consulta-Timestamp` (unix seconds) and `X-Consulta-Event-Id`. Only rows due now are
//! read, a batch at a time, so a dead receiver costs a row per event in the database and nothing
//! in memory. Rows are claimed as they are read (`Store::claim_webhooks`), so nodes sharing one
//! PostgreSQL database send each event once.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::store::Store;

/// Deliveries taken at a time, and how long they stay taken: each may take the client's 10 s
/// timeout, plus a margin. Another node (cluster mode) skips them meanwhile.
const BATCH: i64 = 10;
const CLAIM_LEASE_MS: i64 = BATCH * 10_000 + 30_000;
const MAX_BACKOFF_MS: i64 = 600_000;

#[derive(Default)]
pub struct WebhookStats {
    pub delivered: AtomicU64,
    pub failed_attempts: AtomicU64,
    pub abandoned: AtomicU64,
    pub backlog: AtomicI64,
}

/// The signature header value for `body` sent at `timestamp`.
pub fn signature(secret: &[u8], timestamp: i64, body: &str) -> String {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret).expect("HMAC takes any key length");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body.as_bytes());
    format!("v1={}", hex::encode(mac.finalize().into_bytes()))
}

/// Backoff after `attempts` failures: 0.5 s, 1 s, 2 s … capped at 10 minutes.
pub fn backoff_ms(attempts: i64) -> i64 {
    500i64
        .saturating_mul(1 << attempts.clamp(0, 20))
        .min(MAX_BACKOFF_MS)
}

/// The delivery client: a 10 s timeout, and no redirect followed. A receiver that answers
/// 3xx has not taken the event (the attempt fails and is retried); following it would send
/// signed call events to wherever the receiver (or whoever took over its name) points, an
/// internal address included.
pub fn client() -> reqwest::Result<reqwest::Client> {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .redirect(reqwest::redirect::Policy::none())
        .build()
}

/// POSTs one signed event; `None` when the receiver took it (2xx), else why not.
pub async fn deliver(
    client: &reqwest::Client,
    url: &str,
    secret: &[u8],
    event_id: &str,
    ts: i64,
    body: &str,
) -> Option<String> {
    let result = client
        .post(url)
        .header("Content-Type", "application/json")
        .header("X-Consulta-Event-Id", event_id)
        .header("X-Consulta-Timestamp", ts.to_string())
        .header("X-Consulta-Signature", signature(secret, ts, body))
        .body(body.to_owned())
        .send()
        .await;
    match result {
        Ok(r) if r.status().is_success() => None,
        Ok(r) => Some(format!("HTTP {}", r.status().as_u16())),
        Err(e) => Some(if e.is_timeout() {
            "timeout".to_owned()
        } else {
            "connection failed".to_owned()
        }),
    }
}

pub fn start(store: Store, secret: Vec<u8>, max_age_secs: u64) -> Arc<WebhookStats> {
    let stats = Arc::new(WebhookStats::default());
    let s = stats.clone();
    tokio::spawn(async move {
        let client = match client() {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(error = %e, "cannot build the webhook HTTP client");
                return;
            }
        };
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        loop {
            tick.tick().await;
            if let Ok(n) = store.webhook_backlog().await {
                s.backlog.store(n, Ordering::Relaxed);
            }
            let claimed = store.claim_webhooks(crate::unix_millis(), BATCH, CLAIM_LEASE_MS);
            let Ok(due) = claimed.await else {
                continue;
            };
            for row in due {
                let now = crate::unix_millis();
                let ts = now / 1000;
                let error = deliver(&client, &row.url, &secret, &row.event_id, ts, &row.body).await;
                let outcome = match &error {
                    None => {
                        s.delivered.fetch_add(1, Ordering::Relaxed);
                        store.webhook_attempt(&row.id, Some(now), None, None).await
                    }
                    Some(err) if now - row.created_at > max_age_secs as i64 * 1000 => {
                        s.abandoned.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(event = %row.event_id, error = %err, "webhook abandoned after max_age");
                        store.webhook_attempt(&row.id, None, None, Some(err)).await
                    }
                    Some(err) => {
                        s.failed_attempts.fetch_add(1, Ordering::Relaxed);
                        store
                            .webhook_attempt(
                                &row.id,
                                None,
                                Some(now + backoff_ms(row.attempts)),
                                Some(err),
                            )
                            .await
                    }
                };
                if outcome.is_err() {
                    break; // database gone: try again next tick
                }
            }
        }
    });
    stats
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_is_hmac_sha256_of_timestamp_dot_body() {
        // openssl dgst -sha256 -hmac secret-0123456789 <<< -n '1700000000.{"a":1}'
        let s = signature(b"secret-0123456789", 1_700_000_000, r#"{"a":1}"#);
        // Computed independently with openssl and PHP's hash_hmac.
        assert_eq!(
            s,
            "v1=692511b180bbcd561410894fd2bedac27a99690e45169490ea808f433b5d0097"
        );
        assert_ne!(
            s,
            signature(b"secret-0123456789", 1_700_000_001, r#"{"a":1}"#)
        );
    }

    #[tokio::test]
    async fn redirects_are_not_followed() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let target = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let target_addr = target.local_addr().unwrap();
        let hit = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let h = hit.clone();
        tokio::spawn(async move {
            while let Ok((mut c, _)) = target.accept().await {
                h.store(true, Ordering::SeqCst);
                let mut buf = [0u8; 4096];
                let _ = c.read(&mut buf).await;
                let _ = c
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
                    .await;
            }
        });
        let hook = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let hook_addr = hook.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut c, _)) = hook.accept().await {
                let mut buf = [0u8; 4096];
                let _ = c.read(&mut buf).await;
                let reply = format!(
                    "HTTP/1.1 307 Temporary Redirect\r\nlocation: http://{target_addr}/internal\r\ncontent-length: 0\r\n\r\n"
                );
                let _ = c.write_all(reply.as_bytes()).await;
            }
        });
        let client = client().unwrap();
        let url = format!("http://{hook_addr}/hook");
        let err = deliver(&client, &url, b"secret-0123456789", "e1", 1, "{}").await;
        assert_eq!(err.as_deref(), Some("HTTP 307"));
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(!hit.load(Ordering::SeqCst), "the redirect was followed");
    }

    #[test]
    fn backoff_doubles_and_caps() {
        assert_eq!(backoff_ms(0), 500);
        assert_eq!(backoff_ms(3), 4000);
        assert_eq!(backoff_ms(50), MAX_BACKOFF_MS);
    }
}
