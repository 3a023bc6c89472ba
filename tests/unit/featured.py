"""A session core with the built-in feature modules, as the service builds it, for unit tests."""

from __future__ import annotations

from typing import Any

from sns_xmpp.config import C2SConfig, XMPPConfig
from sns_xmpp.xmpp.features.built_in import install_features
from sns_xmpp.xmpp.sessions import SessionManager


def featured(sessions: SessionManager, **c2s: Any) -> SessionManager:
    """*sessions* with every built-in feature installed; *c2s*: [xmpp.c2s] settings they read
    (max_offline_messages, max_offline_bytes, resume_timeout)."""
    install_features(sessions, config=XMPPConfig(c2s=C2SConfig(**c2s)))
    return sessions
