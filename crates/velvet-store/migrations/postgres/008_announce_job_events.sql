-- Wake-ups across replicas: each job event is announced on the channel `velvet_jobs` at commit,
-- as "<job id> <event>", so another replica's engine claims a new job at once and its event
-- streams read the change without polling. PostgreSQL folds identical notifications of one
-- transaction into one.
CREATE FUNCTION velvet_announce_job_event() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('velvet_jobs', NEW.job_id || ' ' || NEW.event);
    RETURN NULL;
END $$;

CREATE TRIGGER rotation_events_announce AFTER INSERT ON rotation_events
    FOR EACH ROW EXECUTE FUNCTION velvet_announce_job_event();
