"""Multi-User Chat (XEP-0045) as an in-process service at conference.<domain>.

On by default (leave it out with "muc" in [xmpp.features] disabled); its limits are
[xmpp.muc]'s. The service (`service.py`) takes what the router sends to its domains and hands
each room (`room.py`) its stanzas; owners, admins and moderators act through `admin.py`; the
owner's form and the room's disco form are `forms.py`'s; a groupchat message is written once for
all its recipients (`delivery.py`). Persistent rooms live in the store (store/muc.py, schema 013).

Also here: occupant ids (XEP-0421), self-ping (XEP-0410), the reserved-nick query answered with
the user's display name (section 7.12), and the archives of persistent rooms (XEP-0313 on the
room's JID, `archive.py`). Direct invitations (XEP-0249) are messages between users
that the server routes as any other; the rooms' own mediated invitations are section 7.8.2's.
"""

from __future__ import annotations

from twisted.internet.defer import Deferred

from sns_xmpp.xmpp.features import Feature, FeatureRegistry
from sns_xmpp.xmpp.features.muc.service import MUCService
from sns_xmpp.xmpp.hooks import SESSION_UNBOUND

SERVICE_NAME = "muc"


def install(registry: FeatureRegistry) -> None:
    service = MUCService(registry, registry.config.muc)
    registry.services[SERVICE_NAME] = service
    registry.stores("muc_rooms", per_account=False, what="the conference service's persistent rooms")
    registry.stores("muc_affiliations", per_account=False, what="the persistent rooms' owners, admins, "
                                                                "members and outcasts")
    registry.stores("muc_archive", per_account=False, what="the persistent rooms' archives (XEP-0313)")
    registry.sessions.metrics.watch_rooms(lambda: len(service.rooms), service.occupants)
    registry.hook(SESSION_UNBOUND, service.unbound)  # after presence's unavailable (priority 10)

    def stop() -> Deferred[None]:
        service.stopped = True
        return service.archive.flush()  # what waits is written before the store closes

    registry.on_stop(stop)
    service.load()


def muc_service(services: dict[str, object]) -> MUCService | None:
    """The running MUC service among a registry's services (for the console), if installed."""
    found = services.get(SERVICE_NAME)
    return found if isinstance(found, MUCService) else None


FEATURE = Feature("muc", install)
