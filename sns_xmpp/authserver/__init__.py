"""The auth server on its own: social login for an existing ejabberd or Prosody (issue 21).

`extauth` speaks ejabberd's external authentication protocol on stdin and stdout (the
``sns-xmpp-extauth`` command, `main`); `component` is the XEP-0114 component that tells such a
server's clients the sites and their login entries. Prosody's HTTP authentication is on the HTTP
side (`sns_xmpp.http.auth_endpoint`). docs/operations.md has the deployment.
"""
