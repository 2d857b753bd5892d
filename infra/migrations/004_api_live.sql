-- What the API needs beyond the inbox: the users' preferences and contacts as last written through it
-- (read-your-writes from any API process), the open WebSockets, and the notifications that keep them live.
--
-- Live updates: PostgreSQL NOTIFY, sent only for users with an open WebSocket (a row in api_sockets),
-- so users without one cost an index probe per changed count and no message.
--   herald_inbox  {"u": user_id, "n": notification_id}     a notification was inserted (any writer)
--   herald_unread {"u": user_id, "r": unread, "s": unseen}  a user's counts changed (any writer)
--   herald_ws     {"u": user_id, "f": frame, "p": process}  a WebSocket delivery for sockets of other processes
-- Notifications are delivered at commit, in the order sent; inbox_notify_insert sorts before
-- unread_counts_insert, so a new item's message comes before its count's.

CREATE TABLE IF NOT EXISTS user_preferences (
    user_id    text   PRIMARY KEY,
    prefs      jsonb  NOT NULL,
    updated_at bigint NOT NULL  -- epoch ms, as in the Avro record
);

CREATE TABLE IF NOT EXISTS user_contacts (
    user_id    text   PRIMARY KEY,
    contact    jsonb  NOT NULL,
    updated_at bigint NOT NULL
);

-- One row per open WebSocket, refreshed while it is open; a process killed without closing its sockets
-- leaves rows that expire and are swept by the others.
CREATE UNLOGGED TABLE IF NOT EXISTS api_sockets (
    connection_id text        PRIMARY KEY,
    user_id       text        NOT NULL,
    process       text        NOT NULL,
    expires_at    timestamptz NOT NULL
);
CREATE INDEX IF NOT EXISTS api_sockets_user ON api_sockets (user_id);
CREATE INDEX IF NOT EXISTS api_sockets_process ON api_sockets (process);

CREATE OR REPLACE FUNCTION inbox_notify_inserted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('herald_inbox', json_build_object('u', i.user_id, 'n', i.notification_id)::text)
    FROM inserted i
    WHERE i.archived_at IS NULL AND EXISTS (SELECT 1 FROM api_sockets s WHERE s.user_id = i.user_id);
    RETURN NULL;
END $$;

DROP TRIGGER IF EXISTS inbox_notify_insert ON notifications;
CREATE TRIGGER inbox_notify_insert AFTER INSERT ON notifications
    REFERENCING NEW TABLE AS inserted FOR EACH STATEMENT EXECUTE FUNCTION inbox_notify_inserted();

CREATE OR REPLACE FUNCTION unread_notify_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'UPDATE' AND OLD.unread = NEW.unread AND OLD.unseen = NEW.unseen THEN
        RETURN NULL;
    END IF;
    IF EXISTS (SELECT 1 FROM api_sockets WHERE user_id = NEW.user_id) THEN
        PERFORM pg_notify('herald_unread', json_build_object('u', NEW.user_id, 'r', NEW.unread, 's', NEW.unseen)::text);
    END IF;
    RETURN NULL;
END $$;

DROP TRIGGER IF EXISTS unread_notify ON unread_counts;
CREATE TRIGGER unread_notify AFTER INSERT OR UPDATE ON unread_counts
    FOR EACH ROW EXECUTE FUNCTION unread_notify_changed();
