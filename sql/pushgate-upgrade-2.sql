-- pushgate_refresh version 1 -> 2 (a claim becomes a lease: column sent). Rows claimed
-- under version 1 count as sent: they were pushed, or their pushd died long ago.
-- psql -d kamailio -f sql/pushgate-upgrade-2.sql   (stop every pushd with refresh first)
BEGIN;
ALTER TABLE pushgate_refresh ADD COLUMN sent SMALLINT DEFAULT 1 NOT NULL;
ALTER TABLE pushgate_refresh ALTER COLUMN sent SET DEFAULT 0;
UPDATE version SET table_version = '2' WHERE table_name = 'pushgate_refresh';
COMMIT;
