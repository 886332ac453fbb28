//! The metadata store: consultations, participants, sessions, call events and the webhook outbox,
//! in PostgreSQL (`[database] url = "postgres://…"`) or, by default, an SQLite file in the data
//! dir — one schema and one set of queries through sqlx's `Any` driver.
//!
//! Dialect rules that keep it portable: integers are BIGINT (times in unix milliseconds, flags
//! 0/1), JSON is TEXT, parameters are `$1…` in order, upserts use `ON CONFLICT`. Everything the
//! dialects do differently stays in this module (today: the connection URL).
//!
//! Call events are the source of truth: [`Store::apply_event`] inserts one (idempotent by id) and
//! updates the consultation/participant/session projections and the webhook outbox in the same
//! transaction, so replaying a journal twice changes nothing.

use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{AnyPool, Row};

macro_rules! select_consultation {
    () => {
        "SELECT id, status, scheduled_start, scheduled_end, max_participants, waiting_room, recording, created_at, started_at, ended_at FROM consultations"
    };
}

const MIGRATIONS: &[(i64, &str)] = &[(1, include_str!("../../migrations/0001_init.sql"))];

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Db(#[from] sqlx::Error),
    #[error("the consultation exists already")]
    Exists,
    #[error("stored data is invalid: {0}")]
    Invalid(String),
}

/// A consultation's rules.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Policy {
    pub max_participants: i64,
    pub waiting_room: bool,
    pub recording: String,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            max_participants: 5,
            waiting_room: false,
            recording: "off".into(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Consultation {
    pub id: String,
    pub status: String,
    pub scheduled_start: Option<i64>,
    pub scheduled_end: Option<i64>,
    pub policy: Policy,
    pub created_at: i64,
    pub started_at: Option<i64>,
    pub ended_at: Option<i64>,
}

/// One call event (see docs/api.md). `at` is unix milliseconds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CallEvent {
    pub id: String,
    pub seq: i64,
    pub consultation_id: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub at: i64,
    pub payload: Value,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParticipantRow {
    pub identity: String,
    pub role: String,
    pub first_joined_at: Option<i64>,
    pub last_left_at: Option<i64>,
    pub sessions: i64,
}

#[derive(Debug, Clone)]
pub struct OutboxRow {
    pub id: String,
    pub event_id: String,
    pub url: String,
    pub body: String,
    pub attempts: i64,
    pub created_at: i64,
}

/// `delivered_at` of a webhook given up after `max_age`: not NULL (so it is no longer due, and not
/// in the backlog), and not a time (so it never reads as delivered). `last_error` says why.
const ABANDONED: i64 = -1;

#[derive(Clone)]
pub struct Store {
    pool: AnyPool,
    /// PostgreSQL (several nodes may share it) rather than SQLite (one process).
    postgres: bool,
}

/// The connection URL: the configured one, or an SQLite file in the data dir.
pub fn database_url(configured: Option<&str>, data_dir: &Path) -> String {
    match configured {
        Some(u) => u.to_owned(),
        None => format!(
            "sqlite://{}?mode=rwc",
            data_dir.join("consulta.db").display()
        ),
    }
}

impl Store {
    /// Connects lazily: the pool opens connections when needed, so a database that is down at
    /// start does not stop the media server (events wait in the journal).
    pub fn connect_lazy(url: &str) -> Result<Store, StoreError> {
        sqlx::any::install_default_drivers();
        let pool = AnyPoolOptions::new()
            .max_connections(8)
            .acquire_timeout(Duration::from_secs(2))
            .connect_lazy(url)?;
        Ok(Store {
            pool,
            postgres: url.starts_with("postgres"),
        })
    }

    /// Applies the migrations not applied yet; returns how many ran.
    pub async fn migrate(&self) -> Result<usize, StoreError> {
        sqlx::query("CREATE TABLE IF NOT EXISTS schema_migrations (version BIGINT PRIMARY KEY, applied_at BIGINT NOT NULL)")
            .execute(&self.pool)
            .await?;
        let mut applied = 0;
        for (version, sql) in MIGRATIONS {
            let done: Option<AnyRow> =
                sqlx::query("SELECT version FROM schema_migrations WHERE version = $1")
                    .bind(*version)
                    .fetch_optional(&self.pool)
                    .await?;
            if done.is_some() {
                continue;
            }
            let mut tx = self.pool.begin().await?;
            for stmt in sql
                .split(';')
                .map(str::trim)
                .filter(|s| !s.is_empty() && !s.lines().all(|l| l.trim_start().starts_with("--")))
            {
                sqlx::query(stmt).execute(&mut *tx).await?;
            }
            sqlx::query("INSERT INTO schema_migrations (version, applied_at) VALUES ($1, $2)")
                .bind(*version)
                .bind(crate::unix_millis())
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            applied += 1;
        }
        Ok(applied)
    }

    pub async fn ping(&self) -> bool {
        sqlx::query("SELECT 1").execute(&self.pool).await.is_ok()
    }

    pub async fn create_consultation(&self, c: &Consultation) -> Result<(), StoreError> {
        let r = sqlx::query(
            "INSERT INTO consultations (id, status, scheduled_start, scheduled_end, max_participants, waiting_room, recording, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (id) DO NOTHING",
        )
        .bind(&c.id)
        .bind(&c.status)
        .bind(c.scheduled_start)
        .bind(c.scheduled_end)
        .bind(c.policy.max_participants)
        .bind(i64::from(c.policy.waiting_room))
        .bind(&c.policy.recording)
        .bind(c.created_at)
        .execute(&self.pool)
        .await?;
        if r.rows_affected() == 0 {
            return Err(StoreError::Exists);
        }
        Ok(())
    }

    pub async fn consultation(&self, id: &str) -> Result<Option<Consultation>, StoreError> {
        let row = sqlx::query(concat!(select_consultation!(), " WHERE id = $1"))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| consultation_from(&r)).transpose()
    }

    pub async fn consultations(
        &self,
        status: Option<&str>,
        after: &str,
        limit: i64,
    ) -> Result<Vec<Consultation>, StoreError> {
        let rows = match status {
            Some(s) => {
                sqlx::query(concat!(
                    select_consultation!(),
                    " WHERE status = $1 AND id > $2 ORDER BY id LIMIT $3"
                ))
                .bind(s)
                .bind(after)
                .bind(limit)
                .fetch_all(&self.pool)
                .await?
            }
            None => {
                sqlx::query(concat!(
                    select_consultation!(),
                    " WHERE id > $1 ORDER BY id LIMIT $2"
                ))
                .bind(after)
                .bind(limit)
                .fetch_all(&self.pool)
                .await?
            }
        };
        rows.iter().map(consultation_from).collect()
    }

    pub async fn participants(
        &self,
        consultation: &str,
    ) -> Result<Vec<ParticipantRow>, StoreError> {
        let rows = sqlx::query(
            "SELECT identity, role, first_joined_at, last_left_at, sessions FROM participants WHERE consultation_id = $1 ORDER BY identity",
        )
        .bind(consultation)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(ParticipantRow {
                    identity: r.try_get(0)?,
                    role: r.try_get(1)?,
                    first_joined_at: r.try_get(2)?,
                    last_left_at: r.try_get(3)?,
                    sessions: r.try_get(4)?,
                })
            })
            .collect()
    }

    /// Sessions of a consultation with no `participant_left` yet: (session id, identity, role).
    /// After a node died, those of its sessions are closed by the node that takes the room over.
    pub async fn open_sessions(
        &self,
        consultation: &str,
    ) -> Result<Vec<(String, String, String)>, StoreError> {
        let rows = sqlx::query(
            "SELECT session_id, identity, role FROM sessions WHERE consultation_id = $1 AND left_at IS NULL ORDER BY joined_at",
        )
        .bind(consultation)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?)))
            .collect()
    }

    /// Sessions of every consultation still open that joined before `before` (unix ms), up to
    /// `limit`: (consultation, session id, identity, role). After a single node's restart,
    /// those of a process that is gone.
    pub async fn open_sessions_before(
        &self,
        before: i64,
        limit: usize,
    ) -> Result<Vec<(String, String, String, String)>, StoreError> {
        let rows = sqlx::query(
            "SELECT consultation_id, session_id, identity, role FROM sessions WHERE left_at IS NULL AND joined_at < $1 ORDER BY joined_at LIMIT $2",
        )
        .bind(before)
        .bind(limit as i64)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?, r.try_get(3)?)))
            .collect()
    }

    /// Consultations whose call started and did not end: (id, started_at).
    pub async fn active_consultations(&self) -> Result<Vec<(String, i64)>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, COALESCE(started_at, 0) FROM consultations WHERE status = 'active' ORDER BY id LIMIT 1000",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
            .collect()
    }

    /// Scheduled consultations that never started, whose start was between `since` and
    /// `until` (unix ms), with no `no_show` recorded yet: (id, roles that joined).
    pub async fn no_show_candidates(
        &self,
        since: i64,
        until: i64,
    ) -> Result<Vec<(String, Vec<String>)>, StoreError> {
        let rows = sqlx::query(
            "SELECT c.id, p.role FROM consultations c LEFT JOIN participants p ON p.consultation_id = c.id \
             WHERE c.status = 'scheduled' AND c.scheduled_start >= $1 AND c.scheduled_start <= $2 \
             AND NOT EXISTS (SELECT 1 FROM call_events e WHERE e.consultation_id = c.id AND e.type = 'no_show') \
             ORDER BY c.id LIMIT 5000",
        )
        .bind(since)
        .bind(until)
        .fetch_all(&self.pool)
        .await?;
        let mut out: Vec<(String, Vec<String>)> = Vec::new();
        for r in &rows {
            let id: String = r.try_get(0)?;
            let role: Option<String> = r.try_get(1)?;
            if out.last().is_none_or(|(last, _)| *last != id) {
                out.push((id, Vec::new()));
            }
            if let (Some(role), Some((_, roles))) = (role, out.last_mut()) {
                roles.push(role);
            }
        }
        Ok(out)
    }

    pub async fn events(
        &self,
        consultation: &str,
        after_seq: i64,
        limit: i64,
    ) -> Result<Vec<CallEvent>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, seq, consultation_id, type, at, payload FROM call_events WHERE consultation_id = $1 AND seq > $2 ORDER BY seq LIMIT $3",
        )
        .bind(consultation)
        .bind(after_seq)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                let payload: String = r.try_get(5)?;
                Ok(CallEvent {
                    id: r.try_get(0)?,
                    seq: r.try_get(1)?,
                    consultation_id: r.try_get(2)?,
                    kind: r.try_get(3)?,
                    at: r.try_get(4)?,
                    payload: serde_json::from_str(&payload)
                        .map_err(|e| StoreError::Invalid(e.to_string()))?,
                })
            })
            .collect()
    }

    /// Stores one event with its projections and webhook deliveries; false if it was stored
    /// already (a replay).
    pub async fn apply_event(
        &self,
        ev: &CallEvent,
        webhook_urls: &[String],
    ) -> Result<bool, StoreError> {
        let mut tx = self.pool.begin().await?;
        let inserted = sqlx::query(
            "INSERT INTO call_events (id, consultation_id, seq, type, at, payload) VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (id) DO NOTHING",
        )
        .bind(&ev.id)
        .bind(&ev.consultation_id)
        .bind(ev.seq)
        .bind(&ev.kind)
        .bind(ev.at)
        .bind(ev.payload.to_string())
        .execute(&mut *tx)
        .await?
        .rows_affected()
            == 1;
        if !inserted {
            return Ok(false);
        }
        let p = &ev.payload;
        let text = |k: &str| {
            p.get(k)
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned()
        };
        // Every event implies its consultation (rooms joined without the API are created here).
        let policy: Policy = p
            .get("policy")
            .and_then(|v| serde_json::from_value(v.clone()).ok())
            .unwrap_or_default();
        sqlx::query(
            "INSERT INTO consultations (id, status, scheduled_start, scheduled_end, max_participants, waiting_room, recording, created_at) \
             VALUES ($1, 'scheduled', $2, $3, $4, $5, $6, $7) ON CONFLICT (id) DO NOTHING",
        )
        .bind(&ev.consultation_id)
        .bind(p.get("scheduled_start").and_then(Value::as_str).and_then(crate::parse_rfc3339))
        .bind(p.get("scheduled_end").and_then(Value::as_str).and_then(crate::parse_rfc3339))
        .bind(policy.max_participants)
        .bind(i64::from(policy.waiting_room))
        .bind(&policy.recording)
        .bind(ev.at)
        .execute(&mut *tx)
        .await?;
        match ev.kind.as_str() {
            "participant_joined" => {
                sqlx::query(
                    "INSERT INTO participants (consultation_id, identity, role, first_joined_at, sessions) VALUES ($1, $2, $3, $4, 1) \
                     ON CONFLICT (consultation_id, identity) DO UPDATE SET sessions = participants.sessions + 1, role = excluded.role",
                )
                .bind(&ev.consultation_id)
                .bind(text("identity"))
                .bind(text("role"))
                .bind(ev.at)
                .execute(&mut *tx)
                .await?;
                sqlx::query(
                    "INSERT INTO sessions (consultation_id, session_id, identity, role, joined_at, client_sdk) VALUES ($1, $2, $3, $4, $5, $6) \
                     ON CONFLICT (consultation_id, session_id) DO NOTHING",
                )
                .bind(&ev.consultation_id)
                .bind(text("session_id"))
                .bind(text("identity"))
                .bind(text("role"))
                .bind(ev.at)
                .bind(p.get("client_sdk").and_then(Value::as_str).map(str::to_owned))
                .execute(&mut *tx)
                .await?;
            }
            "participant_left" => {
                sqlx::query("UPDATE sessions SET left_at = $1, leave_reason = $2 WHERE consultation_id = $3 AND session_id = $4")
                    .bind(ev.at)
                    .bind(text("reason"))
                    .bind(&ev.consultation_id)
                    .bind(text("session_id"))
                    .execute(&mut *tx)
                    .await?;
                sqlx::query("UPDATE participants SET last_left_at = $1 WHERE consultation_id = $2 AND identity = $3")
                    .bind(ev.at)
                    .bind(&ev.consultation_id)
                    .bind(text("identity"))
                    .execute(&mut *tx)
                    .await?;
            }
            "started" => {
                sqlx::query("UPDATE consultations SET status = 'active', started_at = COALESCE(started_at, $1) WHERE id = $2 AND status <> 'closed'")
                    .bind(ev.at)
                    .bind(&ev.consultation_id)
                    .execute(&mut *tx)
                    .await?;
            }
            "ended" => {
                let status = if text("reason") == "closed" {
                    "closed"
                } else {
                    "ended"
                };
                sqlx::query("UPDATE consultations SET status = CASE WHEN status = 'closed' THEN 'closed' ELSE $1 END, ended_at = $2 WHERE id = $3")
                    .bind(status)
                    .bind(ev.at)
                    .bind(&ev.consultation_id)
                    .execute(&mut *tx)
                    .await?;
            }
            _ => {}
        }
        if !webhook_urls.is_empty() {
            let body = serde_json::to_string(&crate::events::EventView::from(ev))
                .map_err(|e| StoreError::Invalid(e.to_string()))?;
            for (i, url) in webhook_urls.iter().enumerate() {
                sqlx::query(
                    "INSERT INTO webhook_outbox (id, event_id, url, body, attempts, next_attempt_at, created_at) VALUES ($1, $2, $3, $4, 0, $5, $5) \
                     ON CONFLICT (id) DO NOTHING",
                )
                .bind(format!("{}:{i}", ev.id))
                .bind(&ev.id)
                .bind(url)
                .bind(&body)
                .bind(ev.at)
                .execute(&mut *tx)
                .await?;
            }
        }
        tx.commit().await?;
        Ok(true)
    }

    /// Takes up to `limit` deliveries due at `now` for this process: each is pushed to
    /// `now + lease_ms` in the same statement, so another node sharing the database (PostgreSQL:
    /// `FOR UPDATE SKIP LOCKED`) never takes it meanwhile. A process that dies with them leaves
    /// them due again when the lease ends; one that delivers records the attempt.
    pub async fn claim_webhooks(
        &self,
        now: i64,
        limit: i64,
        lease_ms: i64,
    ) -> Result<Vec<OutboxRow>, StoreError> {
        const PG: &str = "UPDATE webhook_outbox SET next_attempt_at = $2 WHERE id IN (\
             SELECT id FROM webhook_outbox WHERE delivered_at IS NULL AND next_attempt_at <= $1 \
             ORDER BY next_attempt_at, id LIMIT $3 FOR UPDATE SKIP LOCKED) \
             RETURNING id, event_id, url, body, attempts, created_at";
        // SQLite has no row locks (and one process): the single statement is enough.
        const SQLITE: &str = "UPDATE webhook_outbox SET next_attempt_at = $2 WHERE id IN (\
             SELECT id FROM webhook_outbox WHERE delivered_at IS NULL AND next_attempt_at <= $1 \
             ORDER BY next_attempt_at, id LIMIT $3) \
             RETURNING id, event_id, url, body, attempts, created_at";
        let mut rows = sqlx::query(if self.postgres { PG } else { SQLITE })
            .bind(now)
            .bind(now + lease_ms)
            .bind(limit)
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(|r| {
                Ok(OutboxRow {
                    id: r.try_get(0)?,
                    event_id: r.try_get(1)?,
                    url: r.try_get(2)?,
                    body: r.try_get(3)?,
                    attempts: r.try_get(4)?,
                    created_at: r.try_get(5)?,
                })
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        // RETURNING keeps no order: deliver oldest first.
        rows.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
        Ok(rows)
    }

    /// Records a delivery attempt: delivered, or to retry at `next_at` (None: give up).
    pub async fn webhook_attempt(
        &self,
        id: &str,
        delivered_at: Option<i64>,
        next_at: Option<i64>,
        error: Option<&str>,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE webhook_outbox SET attempts = attempts + 1, delivered_at = $1, next_attempt_at = $2, last_error = $3 WHERE id = $4",
        )
        .bind(delivered_at.or(next_at.is_none().then_some(ABANDONED)))
        .bind(next_at.unwrap_or(i64::MAX))
        .bind(error.map(str::to_owned))
        .bind(id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Webhook deliveries not made yet (for the metrics).
    pub async fn webhook_backlog(&self) -> Result<i64, StoreError> {
        let row = sqlx::query("SELECT COUNT(*) FROM webhook_outbox WHERE delivered_at IS NULL")
            .fetch_one(&self.pool)
            .await?;
        Ok(row.try_get(0)?)
    }
}

fn consultation_from(r: &AnyRow) -> Result<Consultation, StoreError> {
    let waiting: i64 = r.try_get(5)?;
    Ok(Consultation {
        id: r.try_get(0)?,
        status: r.try_get(1)?,
        scheduled_start: r.try_get(2)?,
        scheduled_end: r.try_get(3)?,
        policy: Policy {
            max_participants: r.try_get(4)?,
            waiting_room: waiting != 0,
            recording: r.try_get(6)?,
        },
        created_at: r.try_get(7)?,
        started_at: r.try_get(8)?,
        ended_at: r.try_get(9)?,
    })
}
