-- Nothing on SQLite: one process serves it, and its engine wakes its own claims and event
-- streams in process. Kept so both dialects number their migrations alike.
SELECT 1;
