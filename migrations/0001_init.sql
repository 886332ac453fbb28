-- Consulta's schema, version 1. One SQL for PostgreSQL and SQLite: integers are BIGINT (unix
-- milliseconds for times, 0/1 for flags), text is TEXT, JSON payloads are TEXT.
CREATE TABLE consultations (
  id TEXT PRIMARY KEY,
  status TEXT NOT NULL,
  scheduled_start BIGINT,
  scheduled_end BIGINT,
  max_participants BIGINT NOT NULL,
  waiting_room BIGINT NOT NULL,
  recording TEXT NOT NULL,
  created_at BIGINT NOT NULL,
  started_at BIGINT,
  ended_at BIGINT
);
CREATE INDEX consultations_by_status ON consultations (status, id);
CREATE INDEX consultations_by_scheduled_start ON consultations (scheduled_start);
CREATE TABLE participants (
  consultation_id TEXT NOT NULL REFERENCES consultations (id),
  identity TEXT NOT NULL,
  role TEXT NOT NULL,
  display_name TEXT,
  first_joined_at BIGINT,
  last_left_at BIGINT,
  sessions BIGINT NOT NULL,
  PRIMARY KEY (consultation_id, identity)
);
CREATE TABLE sessions (
  consultation_id TEXT NOT NULL REFERENCES consultations (id),
  session_id TEXT NOT NULL,
  identity TEXT NOT NULL,
  role TEXT NOT NULL,
  joined_at BIGINT NOT NULL,
  left_at BIGINT,
  leave_reason TEXT,
  client_sdk TEXT,
  ice_path TEXT,
  PRIMARY KEY (consultation_id, session_id)
);
CREATE INDEX sessions_by_identity ON sessions (consultation_id, identity, joined_at);
CREATE TABLE call_events (
  id TEXT PRIMARY KEY,
  consultation_id TEXT NOT NULL,
  seq BIGINT NOT NULL,
  type TEXT NOT NULL,
  at BIGINT NOT NULL,
  payload TEXT NOT NULL
);
CREATE INDEX call_events_by_consultation ON call_events (consultation_id, seq);
CREATE INDEX call_events_by_type ON call_events (type, at);
CREATE TABLE webhook_outbox (
  id TEXT PRIMARY KEY,
  event_id TEXT NOT NULL,
  url TEXT NOT NULL,
  body TEXT NOT NULL,
  attempts BIGINT NOT NULL,
  next_attempt_at BIGINT NOT NULL,
  created_at BIGINT NOT NULL,
  delivered_at BIGINT,
  last_error TEXT
);
CREATE INDEX webhook_outbox_due ON webhook_outbox (delivered_at, next_attempt_at);
