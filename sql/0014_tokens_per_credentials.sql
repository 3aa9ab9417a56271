-- 0014: OAuth tokens per (provider, credentials) instead of per (company, provider). A client-credentials token
-- belongs to the client that asked for it, not to a company: companies that share a provider's credentials (the
-- platform's GOODERA_CLIENT_ID, say) share its token, so a night of 1,000 such companies asks the token endpoint
-- once instead of 1,000 times. `credential_key` is a hash of the token URL, the client id and the scope asked for.
-- Existing rows: the one that expires last of each (provider, credentials) is kept. Portable DDL.
CREATE TABLE impact_provider_tokens_by_credentials (
    provider                 TEXT NOT NULL,
    credential_key           TEXT NOT NULL,
    access_token_encrypted   TEXT NOT NULL,
    refresh_token_encrypted  TEXT,
    token_type               TEXT,
    expires_at               TIMESTAMP WITH TIME ZONE NOT NULL,
    created_at               TIMESTAMP WITH TIME ZONE NOT NULL,
    updated_at               TIMESTAMP WITH TIME ZONE NOT NULL,
    PRIMARY KEY (provider, credential_key)
);
INSERT INTO impact_provider_tokens_by_credentials (provider, credential_key, access_token_encrypted,
                                                   refresh_token_encrypted, token_type, expires_at, created_at,
                                                   updated_at)
SELECT t.provider, t.credential_key, t.access_token_encrypted, t.refresh_token_encrypted, t.token_type, t.expires_at,
       t.created_at, t.updated_at
FROM impact_provider_tokens AS t
WHERE NOT EXISTS (
    SELECT 1 FROM impact_provider_tokens AS u
    WHERE u.provider = t.provider AND u.credential_key = t.credential_key
      AND (u.expires_at > t.expires_at OR (u.expires_at = t.expires_at AND u.company_id > t.company_id))
);
DROP TABLE impact_provider_tokens;
ALTER TABLE impact_provider_tokens_by_credentials RENAME TO impact_provider_tokens;
-- postgresql:
ALTER INDEX impact_provider_tokens_by_credentials_pkey RENAME TO impact_provider_tokens_pkey;
