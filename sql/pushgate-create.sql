-- Pushgate's own tables, next to Kamailio's (load after Kamailio's standard-create.sql,
-- which creates the version table): psql -d kamailio -f sql/pushgate-create.sql

-- Binding refresh pushes (pushd/refresh.py, docs/refresh.md): one row per binding, the
-- lifetime (usrloc's expires, epoch seconds) last claimed for it. Every pushd claims a
-- refresh here before sending it, so several pushd on one database send it once. A claim
-- is a lease: sent = 0 until the provider's final verdict (claimed_at renewed each cycle
-- while the push is retried); a claim with sent = 0 older than pushd's refresh.lease
-- (its pushd died between claim and push) may be taken again by any pushd.
-- Version 2 added sent (sql/pushgate-upgrade-2.sql upgrades a version 1 table).
CREATE TABLE pushgate_refresh (
    ruid VARCHAR(64) PRIMARY KEY NOT NULL,
    expires BIGINT NOT NULL,
    claimed_by VARCHAR(64) DEFAULT '' NOT NULL,
    claimed_at TIMESTAMP WITHOUT TIME ZONE DEFAULT CURRENT_TIMESTAMP NOT NULL,
    sent SMALLINT DEFAULT 0 NOT NULL
);

CREATE INDEX pushgate_refresh_expires_idx ON pushgate_refresh (expires);

INSERT INTO version (table_name, table_version) values ('pushgate_refresh','2');
