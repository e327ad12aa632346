-- The spec's trigger design, for `lakets bench all` (write path): what the earlier design
-- ran inside every writer's transaction, as plpgsql row triggers on stock_ticks.
--
--   * Last Value Cache: upsert the latest price and volume per symbol into a cache table
--     (writers of one symbol serialize on its row);
--   * rollup invalidation: when a row lands in a bucket that is already materialized
--     (older than the rollup's watermark), insert that bucket into the invalidation log;
--   * CDF mirror: an unpartitioned shadow of the table with full replica identity, kept
--     equal by a true-mirror trigger (insert -> insert, update -> update, delete -> delete).
--
-- lakets replaces all three with its WAL consumer. This file installs the objects; the
-- benchmark calls lakets_bench_spec_triggers(true|false) to attach or detach the triggers
-- around its measurements. Statements are separated by lines holding only `--;;` so the
-- benchmark can run them one by one.

CREATE SCHEMA IF NOT EXISTS lakets_cdf;
--;;
CREATE TABLE IF NOT EXISTS spec_lvc_stock_ticks (
    symbol text PRIMARY KEY,
    time timestamptz NOT NULL,
    price double precision NOT NULL,
    volume bigint NOT NULL
);
--;;
CREATE TABLE IF NOT EXISTS spec_rollup_watermark (
    rollup_name text PRIMARY KEY,
    bucket_width interval NOT NULL,
    watermark timestamptz NOT NULL
);
--;;
INSERT INTO spec_rollup_watermark VALUES ('ohlcv_1min', interval '1 minute', now() - interval '1 hour')
ON CONFLICT (rollup_name) DO NOTHING;
--;;
CREATE TABLE IF NOT EXISTS spec_rollup_invalidation_log (
    rollup_name text NOT NULL,
    bucket_start timestamptz NOT NULL,
    logged_at timestamptz NOT NULL DEFAULT now()
);
--;;
CREATE TABLE IF NOT EXISTS lakets_cdf.stock_ticks (LIKE stock_ticks);
--;;
ALTER TABLE lakets_cdf.stock_ticks REPLICA IDENTITY FULL;
--;;
CREATE OR REPLACE FUNCTION spec_lvc_upsert() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO spec_lvc_stock_ticks (symbol, time, price, volume)
    VALUES (NEW.symbol, NEW.time, NEW.price, NEW.volume)
    ON CONFLICT (symbol) DO UPDATE
        SET time = EXCLUDED.time, price = EXCLUDED.price, volume = EXCLUDED.volume
        WHERE spec_lvc_stock_ticks.time <= EXCLUDED.time;
    RETURN NULL;
END $$;
--;;
CREATE OR REPLACE FUNCTION spec_rollup_invalidate() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    w record;
    t timestamptz;
BEGIN
    t := CASE WHEN TG_OP = 'DELETE' THEN OLD.time ELSE NEW.time END;
    FOR w IN SELECT rollup_name, bucket_width, watermark FROM spec_rollup_watermark LOOP
        IF t < w.watermark THEN
            INSERT INTO spec_rollup_invalidation_log (rollup_name, bucket_start)
            VALUES (w.rollup_name, date_bin(w.bucket_width, t, timestamptz '2000-01-01'));
        END IF;
    END LOOP;
    RETURN NULL;
END $$;
--;;
CREATE OR REPLACE FUNCTION spec_cdf_mirror() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        INSERT INTO lakets_cdf.stock_ticks SELECT NEW.*;
    ELSIF TG_OP = 'UPDATE' THEN
        DELETE FROM lakets_cdf.stock_ticks s WHERE s = OLD;
        INSERT INTO lakets_cdf.stock_ticks SELECT NEW.*;
    ELSE
        DELETE FROM lakets_cdf.stock_ticks s WHERE s = OLD;
    END IF;
    RETURN NULL;
END $$;
--;;
CREATE OR REPLACE FUNCTION lakets_bench_spec_triggers(attach boolean) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    DROP TRIGGER IF EXISTS spec_lvc ON stock_ticks;
    DROP TRIGGER IF EXISTS spec_invalidate ON stock_ticks;
    DROP TRIGGER IF EXISTS spec_cdf ON stock_ticks;
    IF attach THEN
        CREATE TRIGGER spec_lvc AFTER INSERT ON stock_ticks
            FOR EACH ROW EXECUTE FUNCTION spec_lvc_upsert();
        CREATE TRIGGER spec_invalidate AFTER INSERT OR UPDATE OR DELETE ON stock_ticks
            FOR EACH ROW EXECUTE FUNCTION spec_rollup_invalidate();
        CREATE TRIGGER spec_cdf AFTER INSERT OR UPDATE OR DELETE ON stock_ticks
            FOR EACH ROW EXECUTE FUNCTION spec_cdf_mirror();
    END IF;
END $$;
