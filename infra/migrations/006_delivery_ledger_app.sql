-- Which Herald deployment (HERALD_APP_ID) claimed a ledger row. Deployments that share one database (two
-- environments, a shadow stack, the test suite) must each retry, report and settle only their own rows: a
-- sink that took another deployment's retry would send it with its own contacts and report it on its own
-- status topic. Rows from before this column have no app and stay visible to every deployment, as before.
ALTER TABLE delivery_ledger ADD COLUMN IF NOT EXISTS app text;

DROP INDEX IF EXISTS delivery_ledger_due;
DROP INDEX IF EXISTS delivery_ledger_claimed;
DROP INDEX IF EXISTS delivery_ledger_unreported;
CREATE INDEX IF NOT EXISTS delivery_ledger_app_due ON delivery_ledger (app, channel, due_at)
    WHERE status = 'RETRYING';
CREATE INDEX IF NOT EXISTS delivery_ledger_app_claimed ON delivery_ledger (app, channel, claimed_at)
    WHERE status = 'CLAIMED';
CREATE INDEX IF NOT EXISTS delivery_ledger_app_unreported ON delivery_ledger (app, channel, updated_at)
    WHERE NOT reported;
