-- In-app notifications and the sinks' delivery ledger.
-- A notification's id is its delivery_id, so sinks insert with ON CONFLICT (notification_id) DO NOTHING
-- and a redelivered Kafka record never shows twice.

CREATE TABLE notifications (
    notification_id text PRIMARY KEY,
    user_id         text        NOT NULL,
    type            text        NOT NULL,
    priority        text        NOT NULL,
    kind            text        NOT NULL,  -- SINGLE, BATCH or DIGEST
    title           text        NOT NULL,
    body            text        NOT NULL,
    data            jsonb       NOT NULL DEFAULT '{}',
    event_ids       text[]      NOT NULL,
    created_at      timestamptz NOT NULL,
    inserted_at     timestamptz NOT NULL DEFAULT now(),
    read_at         timestamptz,
    seen_at         timestamptz,
    archived_at     timestamptz
);

-- The inbox: a user's newest first, keyset-paginated on (created_at, notification_id).
CREATE INDEX notifications_user_feed ON notifications (user_id, created_at DESC, notification_id DESC);

-- The unread badge count.
CREATE INDEX notifications_user_unread ON notifications (user_id) WHERE read_at IS NULL AND archived_at IS NULL;

CREATE TABLE delivery_ledger (
    delivery_id   text PRIMARY KEY,
    channel       text        NOT NULL,
    status        text        NOT NULL,
    attempts      int         NOT NULL DEFAULT 0,
    first_seen_at timestamptz DEFAULT now(),
    sent_at       timestamptz
);
