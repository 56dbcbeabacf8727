-- The work queue's first schema: the engine's outputs as the sink keeps them (latest
-- revision per key + every revision), the people's workflow beside them, users, sessions
-- and the access audit. Applied by `chargecap queue migrate` as the database owner; the
-- service connects as a member of chargecap_queue_service, which gets only the grants
-- below (the audit and the histories are append-only for it).

DO $$
BEGIN
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'chargecap_queue_service') THEN
    CREATE ROLE chargecap_queue_service NOLOGIN;
  END IF;
END
$$;

-- One row per correction alert: its highest revision seen on billing.correction-alerts.
CREATE TABLE alert (
  alert_id          text PRIMARY KEY,
  revision          bigint      NOT NULL,
  state             text        NOT NULL CHECK (state IN ('open', 'resolved')),
  final             boolean     NOT NULL DEFAULT false,
  reason_code       text        NOT NULL,
  severity          text,
  work_queue        text        NOT NULL,
  payer_class       text,
  service_date      date,
  code              text,
  line_id           text,
  revenue_at_risk   numeric(14, 2) NOT NULL DEFAULT 0,
  source_event_ids  text[]      NOT NULL DEFAULT '{}',
  payload           jsonb       NOT NULL,
  -- Kafka timestamps, so that a replay of the topics writes the same values again.
  first_seen_at     timestamptz NOT NULL,
  updated_at        timestamptz NOT NULL,
  resolved_at       timestamptz
);
CREATE INDEX alert_queue_open_risk ON alert (work_queue, revenue_at_risk DESC, alert_id)
  WHERE state = 'open';
-- INCLUDE: the queue overview's counts and sums read the index alone.
CREATE INDEX alert_queue_open_age ON alert (work_queue, first_seen_at, alert_id) INCLUDE (revenue_at_risk)
  WHERE state = 'open';
-- The list's filters count their matches from these alone.
CREATE INDEX alert_queue_open_payer ON alert (work_queue, payer_class) WHERE state = 'open';
CREATE INDEX alert_queue_open_reason ON alert (work_queue, reason_code) WHERE state = 'open';
CREATE INDEX alert_queue_resolved ON alert (work_queue, resolved_at) WHERE state = 'resolved';
CREATE INDEX alert_queue_all_risk ON alert (work_queue, revenue_at_risk DESC, alert_id);
CREATE INDEX alert_line ON alert (line_id);
-- The list's search: a biller looks an item up by the patient or encounter in front of them.
CREATE INDEX alert_patient ON alert ((payload->>'patient_id'));
CREATE INDEX alert_encounter ON alert ((payload->>'encounter_id'));

-- Every revision of every alert, append-only.
CREATE TABLE alert_revision (
  alert_id   text        NOT NULL,
  revision   bigint      NOT NULL,
  state      text        NOT NULL,
  payload    jsonb       NOT NULL,
  kafka_ts   timestamptz NOT NULL,
  PRIMARY KEY (alert_id, revision)
);

-- One row per charge line: its highest revision seen on billing.charge-lines.
CREATE TABLE charge_line (
  line_id                 text PRIMARY KEY,
  revision                bigint      NOT NULL,
  state                   text        NOT NULL CHECK (state IN ('active', 'void')),
  final                   boolean     NOT NULL DEFAULT false,
  payer_class             text,
  service_date            date,
  code                    text,
  rendering_npi           text,
  expected_reimbursement  numeric(14, 2),
  source_event_ids        text[]      NOT NULL DEFAULT '{}',
  payload                 jsonb       NOT NULL,
  first_seen_at           timestamptz NOT NULL,
  updated_at              timestamptz NOT NULL
);
CREATE INDEX charge_line_npi ON charge_line (rendering_npi);
CREATE INDEX charge_line_sources ON charge_line USING gin (source_event_ids);

CREATE TABLE charge_line_revision (
  line_id    text        NOT NULL,
  revision   bigint      NOT NULL,
  state      text        NOT NULL,
  payload    jsonb       NOT NULL,
  kafka_ts   timestamptz NOT NULL,
  PRIMARY KEY (line_id, revision)
);

-- Messages the sink could not use (not JSON, no key field, no revision): where and why,
-- never the value (it may hold PHI).
CREATE TABLE sink_reject (
  topic      text        NOT NULL,
  partition  integer     NOT NULL,
  "offset"   bigint      NOT NULL,
  error      text        NOT NULL,
  seen_at    timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (topic, partition, "offset")
);

-- What people do with an alert. The engine's state stays in `alert`; this is beside it.
CREATE TABLE alert_workflow (
  alert_id    text PRIMARY KEY,
  status      text NOT NULL DEFAULT 'new' CHECK (status IN (
                'new', 'in_progress', 'waiting_clinician', 'waiting_pharmacy',
                'waiting_payer', 'done')),
  assignee    text,
  updated_at  timestamptz NOT NULL DEFAULT now(),
  updated_by  text NOT NULL
);
CREATE INDEX alert_workflow_status ON alert_workflow (status);
CREATE INDEX alert_workflow_assignee ON alert_workflow (assignee);

CREATE TABLE alert_note (
  note_id     bigserial PRIMARY KEY,
  alert_id    text        NOT NULL,
  author      text        NOT NULL,
  body        text        NOT NULL,
  created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX alert_note_alert ON alert_note (alert_id, created_at);

CREATE TABLE queue_user (
  username       text PRIMARY KEY,
  password_hash  text,              -- Argon2id; NULL for users who only sign in through SSO
  queues         text[]      NOT NULL,
  disabled       boolean     NOT NULL DEFAULT false,
  created_at     timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE user_session (
  token_sha256  text PRIMARY KEY,   -- the cookie's token is never stored, only its hash
  username      text        NOT NULL REFERENCES queue_user (username) ON DELETE CASCADE,
  csrf_token    text        NOT NULL,
  created_at    timestamptz NOT NULL DEFAULT now(),
  expires_at    timestamptz NOT NULL
);
CREATE INDEX user_session_expiry ON user_session (expires_at);

CREATE TABLE login_failure (
  username         text PRIMARY KEY,
  failures         integer     NOT NULL,
  last_failure_at  timestamptz NOT NULL,
  locked_until     timestamptz
);

-- Every view of an item and every action: who, when, which item, what.
CREATE TABLE access_audit (
  audit_id    bigserial PRIMARY KEY,
  at          timestamptz NOT NULL DEFAULT clock_timestamp(),
  username    text        NOT NULL,
  action      text        NOT NULL,
  alert_id    text,
  work_queue  text,
  detail      jsonb       NOT NULL DEFAULT '{}'
);
CREATE INDEX access_audit_at ON access_audit (at);
CREATE INDEX access_audit_user ON access_audit (username, at);
CREATE INDEX access_audit_alert ON access_audit (alert_id, at);

-- The service's grants. Append-only tables get INSERT and SELECT only.
GRANT USAGE ON SCHEMA public TO chargecap_queue_service;
GRANT SELECT, INSERT, UPDATE ON alert, charge_line TO chargecap_queue_service;
GRANT SELECT, INSERT ON alert_revision, charge_line_revision, sink_reject, alert_note, access_audit
  TO chargecap_queue_service;
GRANT SELECT, INSERT, UPDATE ON alert_workflow TO chargecap_queue_service;
GRANT SELECT ON queue_user TO chargecap_queue_service;
GRANT SELECT, INSERT, UPDATE, DELETE ON user_session, login_failure TO chargecap_queue_service;
GRANT USAGE ON SEQUENCE alert_note_note_id_seq, access_audit_audit_id_seq TO chargecap_queue_service;
