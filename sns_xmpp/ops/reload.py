"""SIGHUP: read the configuration file again and swap in its sites, keeping every connection.

Only the sites (keys, enabling, new or removed sites) are reloaded; listeners,
domains and the store need a restart. A file that does not load is refused with
a logged reason and the running sites stay as they were.
"""

from __future__ import annotations

from pathlib import Path

from sns_xmpp.config import ConfigError, load_config
from sns_xmpp.observe.log_gate import GatedLogger
from sns_xmpp.sites.interface import SiteContext
from sns_xmpp.sites.registry import SiteRegistry, load_sites

log = GatedLogger()


class SiteReloader:
    def __init__(self, config_path: Path, registry: SiteRegistry, context: SiteContext) -> None:
        self.config_path = config_path
        self.registry = registry
        self.context = context

    def reload(self) -> bool:
        try:
            config = load_config(self.config_path)
            fresh = load_sites(config.sites, self.context)
        except ConfigError as error:
            log.error("sites.reload_refused reason={reason}", reason=str(error))
            return False
        except Exception:
            log.failure("sites.reload_failed")
            return False
        self.registry.replace(fresh.sites, fresh.policies, fresh.lifetimes)
        return True
