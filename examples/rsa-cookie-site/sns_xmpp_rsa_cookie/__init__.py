"""An example sns-xmpp site plugin: log in with a (fictional) social site's RSA-signed session cookie.

The entry point ``rsa-cookie-example`` (group ``sns_xmpp.sites``) names :func:`make_site`.
"""

from sns_xmpp_rsa_cookie.site import RsaCookieSite, make_site

__all__ = ["RsaCookieSite", "make_site"]
