-- Probes (design §11): each consumer's latest check against the current version, and the
-- source's latest verifying login, as JSON `{state, checked_at, detail}`.
ALTER TABLE consumers ADD COLUMN health TEXT;
ALTER TABLE tokens ADD COLUMN source_health TEXT;
