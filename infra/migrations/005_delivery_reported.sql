-- Whether a ledger outcome's status record is known to be in Kafka. The sink writes an outcome with
-- reported = false and sets it true once the broker has acknowledged the status record; a sink that reads a
-- delivery whose outcome was never reported (its process died in between) reports it then, so no attempt's
-- status is lost to a crash. Rows from before this column count as reported.
ALTER TABLE delivery_ledger ADD COLUMN IF NOT EXISTS reported boolean NOT NULL DEFAULT true;
CREATE INDEX IF NOT EXISTS delivery_ledger_unreported ON delivery_ledger (channel, updated_at) WHERE NOT reported;
