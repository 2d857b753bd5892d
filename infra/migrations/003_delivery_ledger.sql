-- The sinks' once-only ledger and retry schedule, in the delivery_ledger table of 001.
--
-- A row is a delivery_id's fate on its channel: CLAIMED (handed to a provider, outcome not yet written),
-- SENT, SUPPRESSED, DEAD (final), or RETRYING (waiting until due_at; the request's bytes are kept here, so
-- the Kafka offset can be committed and the partition's other requests go on). Claims are taken with
-- INSERT ... ON CONFLICT DO NOTHING, so one process alone hands a delivery_id to a provider.

ALTER TABLE delivery_ledger
    ADD COLUMN IF NOT EXISTS user_id     text,
    ADD COLUMN IF NOT EXISTS provider    text,
    ADD COLUMN IF NOT EXISTS claimed_by  text,
    ADD COLUMN IF NOT EXISTS claimed_at  timestamptz,
    ADD COLUMN IF NOT EXISTS due_at      timestamptz,
    ADD COLUMN IF NOT EXISTS last_error  text,
    ADD COLUMN IF NOT EXISTS request     bytea,       -- the DeliveryRequest record as read (wire format)
    ADD COLUMN IF NOT EXISTS source      jsonb,       -- topic, partition, offset, key, headers: for a dead letter
    ADD COLUMN IF NOT EXISTS done        text[] NOT NULL DEFAULT '{}',  -- sub-targets already sent (push tokens)
    ADD COLUMN IF NOT EXISTS updated_at  timestamptz NOT NULL DEFAULT now();

-- The retry poller's and the in-doubt janitor's scan.
CREATE INDEX IF NOT EXISTS delivery_ledger_due ON delivery_ledger (channel, due_at)
    WHERE status = 'RETRYING';
CREATE INDEX IF NOT EXISTS delivery_ledger_claimed ON delivery_ledger (channel, claimed_at)
    WHERE status = 'CLAIMED';
