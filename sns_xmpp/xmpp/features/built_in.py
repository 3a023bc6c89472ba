"""The one list of built-in feature modules, and their installation (see the package's doc)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from twisted.internet.interfaces import IReactorTime

from sns_xmpp.xmpp.features import (
    CORE_DISCO_FEATURES,
    FeatureRegistry,
    IFeature,
    disco,
    entity_time,
    legacy_session,
    ping,
    version,
)
from sns_xmpp.xmpp.sessions import SessionManager

BUILT_IN: tuple[IFeature, ...] = (
    disco.FEATURE,  # XEP-0030
    ping.FEATURE,  # XEP-0199
    version.FEATURE,  # XEP-0092
    entity_time.FEATURE,  # XEP-0202
    legacy_session.FEATURE,  # RFC 3921's session establishment, which old clients still send
)


def install_features(sessions: SessionManager, router: Any, clock: IReactorTime,
                     features: Sequence[IFeature] = BUILT_IN) -> FeatureRegistry:
    """Install *features* on *sessions*; return the registry."""
    registry = FeatureRegistry(sessions, router, clock)
    for var in CORE_DISCO_FEATURES:
        registry.disco_feature(var)
    for feature in features:
        feature.install(registry)
        registry.installed.append(feature.name)
    return registry
