"""The patent's "notify the client over the XML stream": the sites, in the stream features.

Before authentication the features carry, in the project namespace, every
enabled site with its login entry, so a client offering "log in with X" knows
where to send the person with no extra round trip (see docs/protocol.md).
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.words.xish import domish

from sns_xmpp.xmpp.features import Feature, FeatureRegistry, SiteListing
from sns_xmpp.xmpp.stanzas import add_element

NS_SITES = "urn:x-sns-xmpp:sites:0"


def sites_feature(web: SiteListing) -> Callable[[str], domish.Element | None]:
    """The feature for a domain; the same element until the sites are reloaded, so that the
    stream features built around it can be cached (see ClientNegotiator._features_xml)."""
    made: dict[int, domish.Element | None] = {}  # by the sites' generation: the current one only

    def feature(domain: str) -> domish.Element | None:
        generation = web.sites.generation
        if generation not in made:
            made.clear()
            made[generation] = _make(web)
        return made[generation]

    return feature


def _make(web: SiteListing) -> domish.Element | None:
    listing = web.site_list()
    if not listing["sites"]:
        return None
    element = domish.Element((NS_SITES, "sites"))
    element["list"] = f"{web.public_url}/sites"
    for site in listing["sites"]:
        entry = add_element(element, "site")
        entry["id"] = site["id"]
        entry["name"] = site["name"]
        entry["login"] = site["login"]
    return element


def install(registry: FeatureRegistry) -> None:
    if registry.sites is not None:  # no HTTP side, no login entries to announce
        registry.stream_feature(sites_feature(registry.sites), after_auth=False)


FEATURE = Feature("social-sites", install)
