-- LakeTS: a least-privilege PostgreSQL role for the service.
--
-- Run it with psql, as a superuser (PostgreSQL 15 lets only superusers give a role the
-- REPLICATION attribute), connected to the database lakets serves:
--
--   psql "postgres://postgres@db.example:5432/app" -v ON_ERROR_STOP=1 \
--        -v lakets_password_file=/secure/path/db-password \
--        -v schemas=public \
--        -v tables=public.stock_ticks \
--        -v app_role=app \
--        -f deploy/postgresql/grants.sql
--
-- Variables (psql -v NAME=VALUE; values never appear in this file):
--   lakets_role      the service's role                                  (default: lakets)
--   lakets_password_file  a file holding its password (read by psql here, so the password
--                    is never in a command line that `ps` shows); omit it to keep the
--                    current one (or to use \password or certificate auth). A SCRAM
--                    verifier ('SCRAM-SHA-256$4096:...') in the file is stored as is.
--   harden           1: also revoke from PUBLIC what lets any role reach into lakets'
--                    stream or SQL (see section 7)                              (optional)
--   schemas          comma-separated schemas holding the tables lakets converts into
--                    ChronoTables and where it creates chunks and rollups (default: public)
--   publication      the publication lakets streams ([service] publication) (default: lakets)
--   tables           comma-separated tables that will become ChronoTables (or already are);
--                    ownership moves to lakets_role (see section 5)              (optional)
--   app_role         the application's role: keeps its access to those tables and can
--                    read what lakets creates (see section 6)                    (optional)
--   app_owner        alternative to "tables": the role that owns the application tables
--                    is granted to lakets_role instead (see section 5b)          (optional)
--
-- The script is idempotent: run it again after adding tables or schemas.
--
-- What lakets does in the database, and so what this grants:
--   * `lakets init` and every `lakets run` start apply the migrations of the `lakets`
--     schema (crates/core/src/catalog/migrations.rs): CREATE SCHEMA IF NOT EXISTS lakets, then tables.
--   * ChronoTables (crates/core/src/chronotable/): converts a table in place (LOCK, RENAME, CREATE the
--     partitioned table, copy, DROP the original, ALTER SEQUENCE ... OWNED BY, restore the
--     owner and the grants), then creates chunks (CREATE TABLE ... (LIKE parent) + ALTER
--     TABLE parent ATTACH PARTITION) and drops old ones (DROP TABLE), all as DDL.
--   * WAL (crates/wal/src/slot.rs): CREATE/ALTER PUBLICATION lakets FOR TABLE <chronotables>,
--     pg_create_logical_replication_slot(slot, 'pgoutput'), a replication=database
--     connection streaming pgoutput, pg_logical_slot_peek_binary_changes and
--     pg_drop_replication_slot for `lakets slot drop`.
--   * Last Value Cache (crates/core/src/lvc/): CREATE TABLE lakets.lvc_<table>; LOCK TABLE <table>
--     IN SHARE MODE for the initial fill; reads the table.
--   * RollUps (crates/core/src/rollup/): CREATE TABLE <schema>.<rollup> AS ... and CREATE VIEW
--     <schema>.<rollup>_realtime in the SOURCE TABLE'S schema; DELETE/INSERT on them.
--   * Tiering and retention (crates/core/src/lifecycle/): LOCK TABLE <chunk> IN EXCLUSIVE MODE, then
--     DROP TABLE <chunk>.
--   * pg_logical_emit_message (heartbeats, the gate's requests and the announcements of
--     configuration changes) and advisory locks: open to every role unless section 7
--     revokes them from PUBLIC, which then grants lakets its own EXECUTE.

\set ON_ERROR_STOP on

\if :{?lakets_role}
\else
  \set lakets_role lakets
\endif
\if :{?schemas}
\else
  \set schemas public
\endif
\if :{?publication}
\else
  \set publication lakets
\endif

SELECT current_database() AS dbname \gset
SELECT rolsuper AS running_as_superuser FROM pg_roles WHERE rolname = current_user \gset
\if :{?managed}
  -- Managed PostgreSQL (no superuser): the REPLICATION attribute is left out below; give
  -- the provider's equivalent by hand (see the notes at the end of this file).
\elif :running_as_superuser
\else
  \echo 'grants.sql: run this as a superuser (in PostgreSQL 15 only a superuser can give REPLICATION),'
  \echo 'or pass -v managed=1 on a managed service and grant replication its own way (see the end of this file).'
  \quit
\endif

BEGIN;

-- 1. The role. ----------------------------------------------------------------------------
-- LOGIN: it connects. REPLICATION: needed for the walsender connection
-- (replication=database) that streams pgoutput, and for pg_create_logical_replication_slot,
-- pg_logical_slot_peek_binary_changes and pg_drop_replication_slot. Without it `lakets run`
-- stops at its preflight check with "role lakets may not stream the WAL: run ALTER ROLE
-- lakets REPLICATION". REPLICATION is never inherited through role membership, so it
-- grants nothing to roles that are members of lakets.
-- Explicitly NOT given: SUPERUSER, CREATEDB, CREATEROLE, BYPASSRLS.
SELECT format('CREATE ROLE %I LOGIN', :'lakets_role')
 WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = :'lakets_role') \gexec
\if :{?managed}
ALTER ROLE :"lakets_role" WITH LOGIN INHERIT NOSUPERUSER NOCREATEDB NOCREATEROLE NOBYPASSRLS;
\else
ALTER ROLE :"lakets_role" WITH LOGIN REPLICATION INHERIT
      NOSUPERUSER NOCREATEDB NOCREATEROLE NOBYPASSRLS;
\endif
-- lakets holds about 8 connections while running (1 walsender, 4 operators, heartbeat, job
-- leader and job runner) plus one per CLI command; a limit protects the server from a bug:
-- ALTER ROLE :"lakets_role" CONNECTION LIMIT 32;

\if :{?lakets_password_file}
  -- Read by psql from the file (backquotes run a command on the client: `cat` of the
  -- quoted path), never put on a command line.
  \set lakets_password `cat :'lakets_password_file'`
  -- Keep the password out of the server log for this statement (pg_stat_statements with
  -- track_utility may still record it: prefer a SCRAM verifier or \password there).
  SET LOCAL log_statement = 'none';
  SET LOCAL log_min_duration_statement = -1;
  SET LOCAL password_encryption = 'scram-sha-256';
  ALTER ROLE :"lakets_role" PASSWORD :'lakets_password';
  \unset lakets_password
\else
  \echo 'grants.sql: no lakets_password_file given; the role keeps its current password (set one with \\password).'
\endif

-- 2. The database. ------------------------------------------------------------------------
-- CONNECT: PUBLIC normally has it; granted in case it was revoked (the walsender
-- connection of logical replication checks it too).
-- CREATE: needed for good, not only for the first install:
--   * CREATE PUBLICATION requires CREATE on the database; lakets creates `lakets` (or the
--     configured publication) on the first `lakets run` and must own it to ALTER
--     PUBLICATION ... ADD TABLE whenever a new ChronoTable is created.
--   * installing or upgrading the lakets schema runs CREATE SCHEMA IF NOT EXISTS lakets,
--     which PostgreSQL checks against CREATE on the database even when the schema exists.
--     A start with the schema already current runs no DDL, so this part matters for
--     installs and upgrades only.
--   Without it: "permission denied for database <name>" at start-up.
-- CREATE on the database lets a role create schemas, publications and trusted extensions;
-- it gives no access to other schemas' objects.
GRANT CONNECT, CREATE ON DATABASE :"dbname" TO :"lakets_role";
-- A publication created earlier by another role (a first `lakets run` as a superuser, say)
-- must be handed over, or ALTER PUBLICATION ... ADD TABLE fails with "must be owner of
-- publication lakets" when the next ChronoTable is created. (Slots have no owner.)
SELECT format('ALTER PUBLICATION %I OWNER TO %I', p.pubname, :'lakets_role')
  FROM pg_publication p
 WHERE p.pubname = :'publication'
   AND p.pubowner <> (SELECT oid FROM pg_roles WHERE rolname = :'lakets_role') \gexec

-- 3. The lakets schema. -------------------------------------------------------------------
-- lakets keeps its registries in the schema `lakets` and must own it: the migrations
-- create and alter tables there, the Last Value Cache creates lakets.lvc_<table>. Creating
-- it here (owned by the role) is equivalent to letting the first `lakets init` do it.
CREATE SCHEMA IF NOT EXISTS lakets AUTHORIZATION :"lakets_role";
ALTER SCHEMA lakets OWNER TO :"lakets_role";
-- If an earlier `lakets init` ran as a superuser, its tables belong to that superuser and
-- the service could not write them ("permission denied for table _sink_progress"): hand
-- every relation of the schema to the role (indexes follow their tables; sequences owned by
-- a column follow too).
SELECT format('ALTER %s %s OWNER TO %I',
              CASE c.relkind WHEN 'S' THEN 'SEQUENCE' WHEN 'v' THEN 'VIEW' ELSE 'TABLE' END,
              c.oid::regclass, :'lakets_role')
  FROM pg_class c
 WHERE c.relnamespace = 'lakets'::regnamespace
   AND c.relkind IN ('r', 'p', 'v', 'S')
   AND c.relowner <> (SELECT oid FROM pg_roles WHERE rolname = :'lakets_role')
   AND NOT EXISTS (SELECT FROM pg_depend d          -- sequences owned by a column move
                    WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid
                      AND d.deptype IN ('a', 'i') AND c.relkind = 'S')
 ORDER BY c.relkind = 'S', c.oid \gexec

-- 4. The application schemas. -------------------------------------------------------------
-- USAGE: to see the tables at all. CREATE: the conversion creates the new partitioned
-- table next to the old one, the partition manager creates a chunk table per interval in
-- the same schema, and `lakets rollup create` creates the rollup table and its
-- <name>_realtime view in the source table's schema. Without CREATE: "permission denied
-- for schema public" on conversion, on the first new chunk (the partition manager job
-- fails, and inserts past the last chunk fail with "no partition of relation ... found for
-- row"), and on rollup creation. Since PostgreSQL 15 PUBLIC no longer has CREATE on the
-- schema public, so this is needed there too.
SELECT format('GRANT USAGE, CREATE ON SCHEMA %I TO %I', btrim(s), :'lakets_role')
  FROM unnest(string_to_array(:'schemas', ',')) AS s
 WHERE btrim(s) <> '' \gexec

-- 5. Ownership of the tables that become ChronoTables (recommended model). ----------------
-- Everything lakets does to a ChronoTable is DDL that PostgreSQL allows only to the owner
-- (or a member of the owning role): ALTER TABLE ... RENAME / ATTACH PARTITION / REPLICA
-- IDENTITY, DROP TABLE of the original and of old chunks, ALTER PUBLICATION ... ADD TABLE
-- (which needs ownership of the table as well as of the publication), LOCK TABLE in
-- ACCESS EXCLUSIVE/EXCLUSIVE mode, ALTER SEQUENCE ... OWNED BY. No GRANT can replace
-- ownership for these. Without it: "must be owner of table stock_ticks".
-- So the tables are given to lakets. ALTER TABLE ... OWNER also moves the sequences owned
-- by their serial/identity columns. For a table that already is a ChronoTable, its chunks
-- are given too (ALTER TABLE ... OWNER does not recurse to partitions).
-- Do this BEFORE the table is converted (`lakets chronotable create`, or `lakets run` with
-- the table in [[tables]] of lakets.toml): the conversion keeps the owner it finds.
-- The previous owner loses its implicit rights: give the application its privileges back
-- with app_role (section 6), and run the application's own schema migrations (ALTER TABLE
-- ... ADD COLUMN) as lakets or as a role that is a member of it (GRANT lakets TO
-- app_migrator; membership does not pass on REPLICATION).
\if :{?tables}
WITH named AS (
       SELECT btrim(t)::regclass AS rel
         FROM unnest(string_to_array(:'tables', ',')) AS t
        WHERE btrim(t) <> ''),
     tree AS (
       SELECT rel, 0 AS level FROM named
       UNION
       SELECT p.relid, p.level FROM named, LATERAL pg_partition_tree(named.rel) AS p)
SELECT format('ALTER TABLE %s OWNER TO %I', tree.rel, :'lakets_role')
  FROM tree JOIN pg_class c ON c.oid = tree.rel
 WHERE c.relowner <> (SELECT oid FROM pg_roles WHERE rolname = :'lakets_role')
 ORDER BY tree.level, tree.rel::text \gexec
\endif

-- 5b. Alternative: membership in the owning role. -------------------------------------------
-- When the tables must stay owned by the application's owner role, make lakets a member
-- of it instead (with INHERIT, so ownership checks pass). lakets then gives new chunks to
-- that owner and restores it after a conversion; the owner role needs CREATE on the
-- schema for that. Limitation, verified on PostgreSQL 15: converting a table with a
-- serial column fails ("sequence must have same owner as table it is linked to") because
-- the new table belongs to lakets when the sequence is handed over; identity columns are
-- fine. Membership also gives lakets everything else that role may do.
\if :{?app_owner}
GRANT :"app_owner" TO :"lakets_role";
SELECT format('GRANT USAGE, CREATE ON SCHEMA %I TO %I', btrim(s), :'app_owner')
  FROM unnest(string_to_array(:'schemas', ',')) AS s
 WHERE btrim(s) <> '' \gexec
\endif

-- 6. What the application keeps and reads. ---------------------------------------------------
-- The conversion restores the table's grants on the new partitioned table, so grants made
-- here survive it. Queries through the ChronoTable need privileges on it only, not on its
-- chunks. Rollup tables, their _realtime views and new chunks are created by lakets:
-- default privileges let app_role read them. Last Value Cache tables live in schema lakets.
\if :{?app_role}
\if :{?tables}
SELECT format('GRANT SELECT, INSERT, UPDATE, DELETE ON %s TO %I', btrim(t)::regclass, :'app_role')
  FROM unnest(string_to_array(:'tables', ',')) AS t
 WHERE btrim(t) <> '' \gexec
-- serial/identity sequences of those tables (INSERT with a default needs USAGE on them)
SELECT format('GRANT USAGE ON SEQUENCE %s TO %I', d.objid::regclass, :'app_role')
  FROM unnest(string_to_array(:'tables', ',')) AS t
  JOIN pg_depend d ON d.refobjid = btrim(t)::regclass
                  AND d.classid = 'pg_class'::regclass AND d.deptype IN ('a', 'i')
  JOIN pg_class s ON s.oid = d.objid AND s.relkind = 'S'
 WHERE btrim(t) <> '' \gexec
\endif
SELECT format('GRANT USAGE ON SCHEMA %I TO %I', btrim(s), :'app_role')
  FROM unnest(string_to_array(:'schemas', ',')) AS s
 WHERE btrim(s) <> '' \gexec
SELECT format('ALTER DEFAULT PRIVILEGES FOR ROLE %I IN SCHEMA %I GRANT SELECT ON TABLES TO %I',
              :'lakets_role', btrim(s), :'app_role')
  FROM unnest(string_to_array(:'schemas', ',')) AS s
 WHERE btrim(s) <> '' \gexec
-- Last Value Cache reads (SELECT * FROM lakets.lvc_stock_ticks). Drop these two lines if
-- the application should see nothing of schema lakets.
GRANT USAGE ON SCHEMA lakets TO :"app_role";
ALTER DEFAULT PRIVILEGES FOR ROLE :"lakets_role" IN SCHEMA lakets GRANT SELECT ON TABLES TO :"app_role";
\endif

-- 7. Hardening (-v harden=1). -------------------------------------------------------------
-- lakets' role holds REPLICATION: it reads every change of every table. Two doors other
-- roles could use to reach into what it runs:
--   * CREATE on schema public: a role that may create objects there can define, say,
--     public.array_agg(double precision), an exact-type match that beats pg_catalog's, and
--     every session whose search_path includes public would run it. lakets pins its own
--     sessions to search_path = pg_catalog, pg_temp (startup options beat ALTER ROLE/
--     DATABASE ... SET), so it never runs such code; your application's sessions might.
--     PostgreSQL 15 no longer grants it to PUBLIC; databases upgraded from older versions
--     still do.
--   * pg_logical_emit_message: any role may put a message into every logical stream. lakets
--     believes a message with its prefix only when the catalog row it names was written in
--     the same transaction, and skips other prefixes' messages unread (a 300 MB one passes
--     in bounded memory), but revoking it keeps such traffic out of the WAL altogether.
--     Other logical consumers that rely on it need their own grant.
\if :{?harden}
REVOKE CREATE ON SCHEMA public FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION pg_catalog.pg_logical_emit_message(boolean, text, text) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION pg_catalog.pg_logical_emit_message(boolean, text, bytea) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION pg_catalog.pg_logical_emit_message(boolean, text, text) TO :"lakets_role";
GRANT EXECUTE ON FUNCTION pg_catalog.pg_logical_emit_message(boolean, text, bytea) TO :"lakets_role";
\else
  \echo 'grants.sql: hardening skipped; consider -v harden=1 (revokes CREATE on schema public and pg_logical_emit_message from PUBLIC, see section 7).'
\endif

COMMIT;

\echo 'grants.sql: done. Check with: lakets slot show; then start lakets run.'

-- Not needed, on purpose:
--   * SUPERUSER: nothing lakets does requires it (publications are FOR TABLE, never FOR ALL
--     TABLES, which would).
--   * CREATEDB / CREATEROLE / BYPASSRLS: never used. (Tables with row security policies
--     are refused by the conversion anyway.)
--   * pg_monitor / pg_read_all_stats: lakets reads pg_replication_slots (open to all) and
--     counts pg_stat_replication rows, which works without them.
--   * pg_read_all_data / pg_write_all_data: ownership of the ChronoTables covers it.
--   * EXECUTE on pg_current_wal_lsn, pg_current_wal_insert_lsn, pg_advisory_*: granted to
--     PUBLIC by default (pg_logical_emit_message too, unless section 7 revoked it).
--   * TEMPORARY on the database: lakets creates no temporary tables.
--
-- Server settings: see deploy/postgresql/lakets.conf (wal_level = logical needs a restart).
--
-- pg_hba.conf: a logical replication connection (replication=database) is matched like an
-- ordinary connection, on the DATABASE column; the `replication` keyword there matches
-- physical replication only. One line covers both lakets' SQL connections and its WAL
-- stream:
--
--   # TYPE  DATABASE  USER    ADDRESS         METHOD
--   host    app       lakets  10.0.0.0/8      scram-sha-256
--   # once lakets' SQL connections use TLS (sslmode=require/verify-full), prefer:
--   # hostssl app     lakets  10.0.0.0/8      scram-sha-256
--
-- then SELECT pg_reload_conf();
--
-- Managed PostgreSQL: the REPLICATION attribute is spelled differently.
--   * Amazon RDS / Aurora: set rds.logical_replication = 1 and GRANT rds_replication TO
--     lakets (as the master user) instead of ALTER ROLE ... REPLICATION. Caveat: lakets'
--     preflight check reads pg_roles.rolreplication, which rds_replication membership does
--     not set, so `lakets run` may refuse to start there until that check accepts it.
--   * Google Cloud SQL: cloudsql.logical_decoding = on; ALTER ROLE lakets REPLICATION works
--     as a cloudsqlsuperuser member.
--   * Azure Flexible Server: wal_level = logical (server parameter); ALTER ROLE lakets
--     REPLICATION works as an azure_pg_admin member.
--   Run the script with -v managed=1 as the service's admin role (it must be able to grant
--   CREATE on the database and to change the tables' owner); it then leaves REPLICATION
--   out and you grant it the provider's way.
