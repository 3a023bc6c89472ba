-- Refresh tokens (issue 15): an OpenID provider's refresh token (scope offline_access) for a
-- linked account, kept sealed (AES-GCM under a per-install key, base64), with which the server
-- re-confirms the account with the provider now and then, so that its devices live on without the
-- browser (sns_xmpp/auth/reconfirm.py). A revocation deletes the account's rows.

CREATE TABLE refresh_tokens (
    site TEXT NOT NULL,
    account TEXT NOT NULL,
    jid TEXT NOT NULL REFERENCES accounts (jid) ON DELETE CASCADE,
    sealed TEXT NOT NULL,
    confirmed_at DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (site, account)
);
CREATE INDEX refresh_tokens_confirmed_at ON refresh_tokens (confirmed_at);
