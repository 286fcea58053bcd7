-- The requester's role at kickoff: an unattended revoke (auto, emergency) runs only for a
-- requester holding rotations.revoke and the gate's roles (design §4, I2b). NULL for jobs made
-- before it was recorded, which therefore pause at proceed_revoke.
ALTER TABLE rotation_jobs ADD COLUMN requested_role TEXT;
