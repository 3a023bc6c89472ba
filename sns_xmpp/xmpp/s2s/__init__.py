"""Server-to-server links (RFC 6120): streams, dialback, and finding a remote domain's servers."""
