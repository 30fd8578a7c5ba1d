package store

import (
	"context"
	"database/sql"
	"fmt"
	"strings"
)

// migrations is the schema's history: each entry runs once, in order, in its own
// transaction together with the bump of schema_version. Append; never edit.
//
// {{serial}} is an auto-incrementing integer primary key on either engine.
var migrations = []string{
	`
CREATE TABLE settings (
	name  TEXT PRIMARY KEY,
	value TEXT NOT NULL
);
CREATE TABLE accounts (
	id           TEXT PRIMARY KEY,
	name         TEXT NOT NULL UNIQUE,
	ca_cert      TEXT NOT NULL,
	ca_key       TEXT NOT NULL,
	director_key TEXT NOT NULL,
	created_at   BIGINT NOT NULL
);
CREATE TABLE release_keys (
	account_id TEXT NOT NULL REFERENCES accounts(id),
	key_id     TEXT NOT NULL,
	name       TEXT NOT NULL,
	public_key TEXT NOT NULL,
	created_at BIGINT NOT NULL,
	PRIMARY KEY (account_id, key_id)
);
CREATE TABLE api_keys (
	id         TEXT PRIMARY KEY,
	account_id TEXT NOT NULL REFERENCES accounts(id),
	name       TEXT NOT NULL,
	role       TEXT NOT NULL,
	hash       TEXT NOT NULL,
	created_at BIGINT NOT NULL,
	revoked_at BIGINT NOT NULL DEFAULT 0
);
CREATE INDEX api_keys_account ON api_keys(account_id);
CREATE TABLE enrollment_tokens (
	id          TEXT PRIMARY KEY,
	account_id  TEXT NOT NULL REFERENCES accounts(id),
	description TEXT NOT NULL,
	hash        TEXT NOT NULL,
	labels      TEXT NOT NULL,
	approval    TEXT NOT NULL,
	max_uses    INTEGER NOT NULL,
	uses        INTEGER NOT NULL DEFAULT 0,
	expires_at  BIGINT NOT NULL,
	created_at  BIGINT NOT NULL,
	revoked_at  BIGINT NOT NULL DEFAULT 0
);
CREATE INDEX enrollment_tokens_account ON enrollment_tokens(account_id);
CREATE TABLE devices (
	id                TEXT PRIMARY KEY,
	account_id        TEXT NOT NULL REFERENCES accounts(id),
	token_id          TEXT NOT NULL,
	status            TEXT NOT NULL,
	key_fingerprint   TEXT NOT NULL,
	cert_serial       TEXT NOT NULL DEFAULT '',
	cert_fingerprint  TEXT NOT NULL DEFAULT '',
	cert_not_after    BIGINT NOT NULL DEFAULT 0,
	labels            TEXT NOT NULL DEFAULT '{}',
	online            INTEGER NOT NULL DEFAULT 0,
	session           TEXT NOT NULL DEFAULT '',
	remote_addr       TEXT NOT NULL DEFAULT '',
	last_seen         BIGINT NOT NULL DEFAULT 0,
	reported          TEXT NOT NULL DEFAULT '',
	reported_at       BIGINT NOT NULL DEFAULT 0,
	created_at        BIGINT NOT NULL,
	updated_at        BIGINT NOT NULL,
	decommissioned_at BIGINT NOT NULL DEFAULT 0
);
CREATE INDEX devices_account ON devices(account_id, id);
CREATE TABLE device_labels (
	device_id TEXT NOT NULL REFERENCES devices(id),
	name      TEXT NOT NULL,
	value     TEXT NOT NULL,
	PRIMARY KEY (device_id, name)
);
CREATE INDEX device_labels_kv ON device_labels(name, value);
CREATE TABLE connections (
	id              {{serial}},
	device_id       TEXT NOT NULL REFERENCES devices(id),
	session         TEXT NOT NULL,
	remote_addr     TEXT NOT NULL,
	connected_at    BIGINT NOT NULL,
	disconnected_at BIGINT NOT NULL DEFAULT 0
);
CREATE INDEX connections_device ON connections(device_id, id);
CREATE TABLE events (
	seq        {{serial}},
	account_id TEXT NOT NULL,
	type       TEXT NOT NULL,
	device_id  TEXT NOT NULL,
	data       TEXT NOT NULL,
	at         BIGINT NOT NULL
);
CREATE INDEX events_account ON events(account_id, seq);
CREATE TABLE device_groups (
	id         TEXT PRIMARY KEY,
	account_id TEXT NOT NULL REFERENCES accounts(id),
	name       TEXT NOT NULL,
	selector   TEXT NOT NULL,
	created_at BIGINT NOT NULL,
	UNIQUE (account_id, name)
);
CREATE TABLE group_members (
	group_id  TEXT NOT NULL REFERENCES device_groups(id) ON DELETE CASCADE,
	device_id TEXT NOT NULL REFERENCES devices(id),
	PRIMARY KEY (group_id, device_id)
);
CREATE TABLE webhooks (
	id         TEXT PRIMARY KEY,
	account_id TEXT NOT NULL REFERENCES accounts(id),
	url        TEXT NOT NULL,
	secret     TEXT NOT NULL,
	events     TEXT NOT NULL,
	created_at BIGINT NOT NULL
);
CREATE TABLE webhook_deliveries (
	id          {{serial}},
	webhook_id  TEXT NOT NULL REFERENCES webhooks(id) ON DELETE CASCADE,
	event_seq   BIGINT NOT NULL,
	status      TEXT NOT NULL,
	attempts    INTEGER NOT NULL DEFAULT 0,
	last_code   INTEGER NOT NULL DEFAULT 0,
	last_error  TEXT NOT NULL DEFAULT '',
	next_at     BIGINT NOT NULL,
	updated_at  BIGINT NOT NULL
);
CREATE INDEX webhook_deliveries_due ON webhook_deliveries(status, next_at);
`,
	// 2: releases, desired state, device events, campaigns (issue 6).
	`
CREATE TABLE packages (
	account_id TEXT NOT NULL REFERENCES accounts(id),
	digest     TEXT NOT NULL,
	kind       TEXT NOT NULL,
	name       TEXT NOT NULL,
	version    TEXT NOT NULL,
	size       BIGINT NOT NULL,
	manifest   TEXT NOT NULL,
	sig        TEXT NOT NULL,
	created_at BIGINT NOT NULL,
	PRIMARY KEY (account_id, digest)
);
CREATE TABLE package_blobs (
	account_id TEXT NOT NULL,
	package    TEXT NOT NULL,
	blob       TEXT NOT NULL,
	size       BIGINT NOT NULL,
	PRIMARY KEY (account_id, package, blob)
);
CREATE INDEX package_blobs_blob ON package_blobs(account_id, blob);
CREATE TABLE releases (
	id         TEXT PRIMARY KEY,
	account_id TEXT NOT NULL REFERENCES accounts(id),
	name       TEXT NOT NULL,
	created_at BIGINT NOT NULL,
	UNIQUE (account_id, name)
);
CREATE TABLE release_packages (
	release_id TEXT NOT NULL REFERENCES releases(id),
	account_id TEXT NOT NULL,
	package    TEXT NOT NULL,
	position   INTEGER NOT NULL,
	PRIMARY KEY (release_id, package)
);
CREATE INDEX release_packages_package ON release_packages(account_id, package);
CREATE TABLE desired (
	device_id      TEXT PRIMARY KEY REFERENCES devices(id),
	account_id     TEXT NOT NULL,
	version        BIGINT NOT NULL,
	target_since   BIGINT NOT NULL,
	release_id     TEXT NOT NULL,
	release_name   TEXT NOT NULL,
	campaign_id    TEXT NOT NULL,
	packages       TEXT NOT NULL,
	envelope       TEXT NOT NULL,
	expires_at     BIGINT NOT NULL,
	published      INTEGER NOT NULL,
	status         TEXT NOT NULL,
	status_version BIGINT NOT NULL,
	message        TEXT NOT NULL,
	updated_at     BIGINT NOT NULL
);
CREATE INDEX desired_expiry ON desired(expires_at);
CREATE INDEX desired_unpublished ON desired(published);
CREATE TABLE device_events (
	id        {{serial}},
	device_id TEXT NOT NULL REFERENCES devices(id),
	seq       BIGINT NOT NULL,
	kind      TEXT NOT NULL,
	data      TEXT NOT NULL,
	at        BIGINT NOT NULL
);
CREATE INDEX device_events_device ON device_events(device_id, id);
CREATE UNIQUE INDEX device_events_seq ON device_events(device_id, seq) WHERE seq > 0;
CREATE TABLE campaigns (
	id                 TEXT PRIMARY KEY,
	account_id         TEXT NOT NULL REFERENCES accounts(id),
	name               TEXT NOT NULL,
	release_id         TEXT NOT NULL REFERENCES releases(id),
	target             TEXT NOT NULL,
	spec               TEXT NOT NULL,
	state              TEXT NOT NULL,
	reason             TEXT NOT NULL,
	phase              INTEGER NOT NULL,
	phase_started      BIGINT NOT NULL,
	phase_done         BIGINT NOT NULL,
	ack_failures       INTEGER NOT NULL,
	ack_phase_failures INTEGER NOT NULL,
	created_at         BIGINT NOT NULL,
	updated_at         BIGINT NOT NULL,
	UNIQUE (account_id, name)
);
CREATE INDEX campaigns_state ON campaigns(state);
CREATE TABLE campaign_devices (
	campaign_id     TEXT NOT NULL REFERENCES campaigns(id),
	device_id       TEXT NOT NULL REFERENCES devices(id),
	phase           INTEGER NOT NULL,
	position        INTEGER NOT NULL,
	state           TEXT NOT NULL,
	message         TEXT NOT NULL,
	desired_version BIGINT NOT NULL,
	prev_release    TEXT NOT NULL,
	prev_packages   TEXT NOT NULL,
	updated_at      BIGINT NOT NULL,
	PRIMARY KEY (campaign_id, device_id)
);
CREATE INDEX campaign_devices_device ON campaign_devices(device_id);
`,
	`
CREATE TABLE device_logs (
	id        {{serial}},
	device_id TEXT NOT NULL REFERENCES devices(id),
	at        BIGINT NOT NULL,
	app       TEXT NOT NULL,
	version   TEXT NOT NULL,
	stream    TEXT NOT NULL,
	level     TEXT NOT NULL,
	line      TEXT NOT NULL,
	received  BIGINT NOT NULL
);
CREATE INDEX device_logs_device ON device_logs(device_id, id);
CREATE INDEX device_logs_received ON device_logs(received);
`,
	// An account's developer-mode policy, and the policy each device's current
	// desired-state document carries (so that a change of policy finds the
	// devices whose document must be re-issued).
	`
ALTER TABLE accounts ADD COLUMN devmode TEXT NOT NULL DEFAULT 'allow';
ALTER TABLE desired ADD COLUMN devmode TEXT NOT NULL DEFAULT 'allow';
`,
	// A campaign step reads its devices in position order: without this index,
	// SQLite sorted every device of the campaign at every step.
	`
CREATE INDEX campaign_devices_position ON campaign_devices(campaign_id, position);
`,
}

// migrate applies the migrations not yet applied. On PostgreSQL an advisory lock
// keeps two replicas starting at once from racing.
func (s *Store) migrate(ctx context.Context) error {
	serial := "INTEGER PRIMARY KEY AUTOINCREMENT"
	if s.dialect == Postgres {
		serial = "BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY"
	}
	if _, err := s.db.ExecContext(ctx, `CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)`); err != nil {
		return err
	}
	return s.tx(ctx, func(tx *sql.Tx) (bool, error) {
		if s.dialect == Postgres {
			if _, err := tx.ExecContext(ctx, `SELECT pg_advisory_xact_lock(7428001)`); err != nil {
				return false, err
			}
		}
		var version int
		err := tx.QueryRowContext(ctx, `SELECT version FROM schema_version`).Scan(&version)
		switch {
		case err == sql.ErrNoRows:
			if _, err := tx.ExecContext(ctx, `INSERT INTO schema_version (version) VALUES (0)`); err != nil {
				return false, err
			}
		case err != nil:
			return false, err
		}
		if version > len(migrations) {
			return false, fmt.Errorf("database schema version %d is newer than this server (%d)", version, len(migrations))
		}
		for i := version; i < len(migrations); i++ {
			for _, stmt := range strings.Split(strings.ReplaceAll(migrations[i], "{{serial}}", serial), ";") {
				if strings.TrimSpace(stmt) == "" {
					continue
				}
				if _, err := tx.ExecContext(ctx, stmt); err != nil {
					return false, fmt.Errorf("migration %d: %w", i+1, err)
				}
			}
			if _, err := tx.ExecContext(ctx, s.q(`UPDATE schema_version SET version = ?`), i+1); err != nil {
				return false, err
			}
		}
		return false, nil
	})
}
