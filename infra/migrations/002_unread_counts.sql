-- Each user's unread and unseen counts, kept equal to a recount of `notifications` by triggers, so the
-- unread-count API reads one row instead of counting up to every notification the user has (a count that
-- visits one heap page per notification once the table outgrows memory).
--
-- What is counted, as the API always has: rows with archived_at IS NULL; unread when read_at IS NULL,
-- unseen when seen_at IS NULL. Statement-level triggers with transition tables fold a whole statement
-- (a sink's batch insert, a read-all) into one upsert per user, in user_id order so that concurrent
-- writers lock the counter rows in the same order. Every writer (the sink, the API, an operator's SQL)
-- keeps the counts right, and a redelivered insert that ON CONFLICT DO NOTHING skips counts nothing.
-- A user without a row has no counted notifications. Idempotent: running it again recounts.

LOCK TABLE notifications IN SHARE ROW EXCLUSIVE MODE;  -- no writes between the recount and the triggers

CREATE TABLE IF NOT EXISTS unread_counts (
    user_id text   PRIMARY KEY,
    unread  bigint NOT NULL DEFAULT 0,
    unseen  bigint NOT NULL DEFAULT 0
);

CREATE OR REPLACE FUNCTION unread_counts_add_inserted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO unread_counts AS c (user_id, unread, unseen)
    SELECT user_id, count(*) FILTER (WHERE read_at IS NULL), count(*) FILTER (WHERE seen_at IS NULL)
    FROM inserted WHERE archived_at IS NULL
    GROUP BY user_id
    HAVING count(*) FILTER (WHERE read_at IS NULL OR seen_at IS NULL) > 0
    ORDER BY user_id
    ON CONFLICT (user_id) DO UPDATE SET unread = c.unread + excluded.unread, unseen = c.unseen + excluded.unseen;
    RETURN NULL;
END $$;

CREATE OR REPLACE FUNCTION unread_counts_add_updated() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO unread_counts AS c (user_id, unread, unseen)
    SELECT user_id, sum(unread), sum(unseen)
    FROM (SELECT user_id, (read_at IS NULL)::int AS unread, (seen_at IS NULL)::int AS unseen
          FROM new_rows WHERE archived_at IS NULL
          UNION ALL
          SELECT user_id, -(read_at IS NULL)::int, -(seen_at IS NULL)::int
          FROM old_rows WHERE archived_at IS NULL) AS delta
    GROUP BY user_id
    HAVING sum(unread) <> 0 OR sum(unseen) <> 0
    ORDER BY user_id
    ON CONFLICT (user_id) DO UPDATE SET unread = c.unread + excluded.unread, unseen = c.unseen + excluded.unseen;
    RETURN NULL;
END $$;

CREATE OR REPLACE FUNCTION unread_counts_remove_deleted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO unread_counts AS c (user_id, unread, unseen)
    SELECT user_id, -count(*) FILTER (WHERE read_at IS NULL), -count(*) FILTER (WHERE seen_at IS NULL)
    FROM deleted WHERE archived_at IS NULL
    GROUP BY user_id
    HAVING count(*) FILTER (WHERE read_at IS NULL OR seen_at IS NULL) > 0
    ORDER BY user_id
    ON CONFLICT (user_id) DO UPDATE SET unread = c.unread + excluded.unread, unseen = c.unseen + excluded.unseen;
    RETURN NULL;
END $$;

CREATE OR REPLACE FUNCTION unread_counts_truncated() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM unread_counts;
    RETURN NULL;
END $$;

DROP TRIGGER IF EXISTS unread_counts_insert ON notifications;
CREATE TRIGGER unread_counts_insert AFTER INSERT ON notifications
    REFERENCING NEW TABLE AS inserted FOR EACH STATEMENT EXECUTE FUNCTION unread_counts_add_inserted();
DROP TRIGGER IF EXISTS unread_counts_update ON notifications;
CREATE TRIGGER unread_counts_update AFTER UPDATE ON notifications
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION unread_counts_add_updated();
DROP TRIGGER IF EXISTS unread_counts_delete ON notifications;
CREATE TRIGGER unread_counts_delete AFTER DELETE ON notifications
    REFERENCING OLD TABLE AS deleted FOR EACH STATEMENT EXECUTE FUNCTION unread_counts_remove_deleted();
DROP TRIGGER IF EXISTS unread_counts_truncate ON notifications;
CREATE TRIGGER unread_counts_truncate AFTER TRUNCATE ON notifications
    FOR EACH STATEMENT EXECUTE FUNCTION unread_counts_truncated();

-- The recount: the counts as they stand, from which the triggers carry on.
DELETE FROM unread_counts;
INSERT INTO unread_counts (user_id, unread, unseen)
SELECT user_id, count(*) FILTER (WHERE read_at IS NULL), count(*) FILTER (WHERE seen_at IS NULL)
FROM notifications WHERE archived_at IS NULL
GROUP BY user_id
HAVING count(*) FILTER (WHERE read_at IS NULL OR seen_at IS NULL) > 0;
