"""The one list of built-in feature modules, and their installation (see the package's doc)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from twisted.internet.interfaces import IReactorTime

from sns_xmpp.config import XMPPConfig
from sns_xmpp.xmpp.features import (
    FeatureRegistry,
    IFeature,
    SiteListing,
    blocking,
    caps,
    carbons,
    client_state,
    credential_expiry,
    disco,
    entity_time,
    external_services,
    http_upload,
    legacy_session,
    mam,
    muc,
    offline,
    pep,
    ping,
    presence,
    private_storage,
    push,
    roster,
    social_sites,
    stream_management,
    vcard,
    version,
)
from sns_xmpp.xmpp.routing import StanzaRouter
from sns_xmpp.xmpp.sessions import SessionManager

BUILT_IN: tuple[IFeature, ...] = (
    roster.FEATURE,  # RFC 6121 section 2
    offline.FEATURE,  # XEP-0160
    presence.FEATURE,  # RFC 6121 sections 3 and 4
    stream_management.FEATURE,  # XEP-0198
    disco.FEATURE,  # XEP-0030
    ping.FEATURE,  # XEP-0199
    version.FEATURE,  # XEP-0092
    entity_time.FEATURE,  # XEP-0202
    legacy_session.FEATURE,  # RFC 3921's session establishment, which old clients still send
    social_sites.FEATURE,  # the patent's sites in the stream features (docs/protocol.md)
    credential_expiry.FEATURE,  # sessions that end with the site's credentials (session_policy = "token")
    carbons.FEATURE,  # XEP-0280
    client_state.FEATURE,  # XEP-0352
    mam.FEATURE,  # XEP-0313, XEP-0359, XEP-0441
    blocking.FEATURE,  # XEP-0191
    caps.FEATURE,  # XEP-0115, for PEP's +notify (before pep)
    pep.FEATURE,  # XEP-0163 on XEP-0060 (before the features that publish through it)
    private_storage.FEATURE,  # XEP-0049 (bookmarks of XEP-0048 among its fragments)
    external_services.FEATURE,  # XEP-0215 (STUN/TURN from [xmpp.external_services])
    vcard.FEATURE,  # XEP-0054, XEP-0153, XEP-0398
    muc.FEATURE,  # XEP-0045, XEP-0410, XEP-0421 at conference.<domain>
    http_upload.FEATURE,  # XEP-0363 at upload.<domain>, its files on the HTTP listener
    push.FEATURE,  # XEP-0357: notifications to the app servers of the account's devices
)


class UnknownFeature(ValueError):
    pass


def install_features(sessions: SessionManager, router: StanzaRouter | None = None,
                     clock: IReactorTime | None = None, *, config: XMPPConfig | None = None,
                     sites: SiteListing | None = None, disabled: Iterable[str] = (),
                     features: Sequence[IFeature] = BUILT_IN) -> FeatureRegistry:
    """Install *features* on *sessions*, less those named in *disabled*; return the registry.

    Raises UnknownFeature for a disabled name that no feature has (a typo in the configuration
    would otherwise leave on what the operator meant to turn off)."""
    left_out = set(disabled)
    unknown = left_out - {feature.name for feature in features}
    if unknown:
        known = ", ".join(feature.name for feature in features)
        raise UnknownFeature(f"no feature {', '.join(sorted(unknown))!s}; the features are {known}")
    registry = FeatureRegistry(sessions, clock or sessions.clock, router, config or XMPPConfig(), sites)
    for feature in features:
        if feature.name in left_out:
            continue
        registry.installing = feature.name
        feature.install(registry)
        registry.installed.append(feature.name)
    registry.installing = ""
    return registry
