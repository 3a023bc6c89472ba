-- A device's lifetime (issue 15): how long a FAST token or a device password of a social account
-- lasts without the site confirming the account again (the site's device_lifetime, counted from
-- the login that made it; or the site's credentials' expiry, for session_policy = "token").
-- NULL: no such bound (local accounts). A FAST token's rotations keep it.

ALTER TABLE fast_tokens ADD COLUMN confirmed_until DOUBLE PRECISION;
ALTER TABLE device_passwords ADD COLUMN expires_at DOUBLE PRECISION;
