"""A PEP node's configuration (XEP-0060 section 16.4, pubsub#node_config), its data forms, the
publish-options preconditions (section 7.1.5), and the errors of XEP-0060 with their
pubsub#errors conditions. Pure: no store, no sessions."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from types import ModuleType
from typing import TYPE_CHECKING

from twisted.words.protocols.jabber.error import StanzaError
from twisted.words.xish import domish

if TYPE_CHECKING:  # wokkel's data_form imports only after the start-up call (sns_xmpp/compat.py)
    from wokkel import data_form

NS_PUBSUB = "http://jabber.org/protocol/pubsub"
NS_PUBSUB_OWNER = NS_PUBSUB + "#owner"
NS_PUBSUB_EVENT = NS_PUBSUB + "#event"
NS_PUBSUB_ERRORS = NS_PUBSUB + "#errors"
NS_NODE_CONFIG = NS_PUBSUB + "#node_config"
NS_PUBLISH_OPTIONS = NS_PUBSUB + "#publish-options"

ACCESS_MODELS = ("presence", "open", "whitelist")
LAST_ITEM_POLICIES = ("never", "on_sub", "on_sub_and_presence")


@dataclass(frozen=True)
class Limits:
    """What one account may keep. The defaults fit OMEMO (a bundle is a few KiB, one node per
    device), XEP-0084 avatars (its schema makes an image's size an unsignedShort: at most 65,535
    bytes, some 87 KiB as base64, within 128 KiB) and XEP-0402 bookmarks (one item per room)."""

    nodes_per_account: int = 256
    max_items: int = 256  # the most items one node keeps; 'max' in a form means this
    item_bytes: int = 128 * 1024  # one item's payload, serialised


@dataclass(frozen=True)
class NodeConfig:
    """The fields this service honours; the defaults are XEP-0163 section 4's PEP defaults
    (presence access, the last item sent on presence, one item kept)."""

    access_model: str = "presence"
    max_items: int = 1
    persist_items: bool = True
    send_last_published_item: str = "on_sub_and_presence"
    notify_retract: bool = True
    notify_delete: bool = True
    deliver_payloads: bool = True
    title: str = ""

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> NodeConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{key: value for key, value in json.loads(text).items() if key in known})


def pubsub_error(condition: str, pubsub_condition: str | None = None, **attributes: str) -> StanzaError:
    """A StanzaError with XEP-0060's application condition (section 7.1.3 and on)."""
    app = None
    if pubsub_condition is not None:
        app = domish.Element((NS_PUBSUB_ERRORS, pubsub_condition))
        for key, value in attributes.items():
            app[key] = value
    return StanzaError(condition, appCondition=app)


def unsupported(feature: str) -> StanzaError:
    """Section 4.6: a feature this service does not offer."""
    return pubsub_error("feature-not-implemented", "unsupported", feature=feature)


def _boolean(value: str) -> bool:
    value = value.lower()  # wokkel reads a typed boolean field as a bool: str() makes it 'True'
    if value in ("1", "true"):
        return True
    if value in ("0", "false"):
        return False
    raise ValueError(value)


def _parse(field: str, value: str, limits: Limits) -> object:
    """A field's value as NodeConfig holds it; ValueError if it is not one this service takes."""
    name = field.removeprefix("pubsub#")
    if name == "access_model":
        if value not in ACCESS_MODELS:
            raise ValueError(value)
        return value
    if name == "max_items":
        number = limits.max_items if value == "max" else int(value)
        if not 1 <= number <= limits.max_items:
            raise ValueError(value)
        return number
    if name == "send_last_published_item":
        if value not in LAST_ITEM_POLICIES:
            raise ValueError(value)
        return value
    if name in ("persist_items", "notify_retract", "notify_delete", "deliver_payloads"):
        return _boolean(value)
    if name == "title":
        return value[:1024]
    raise KeyError(field)


# Fields a client may send that change nothing here (they describe what PEP always does).
FIXED = {"pubsub#publish_model": "publishers", "pubsub#node_type": "leaf", "pubsub#deliver_notifications": "1",
         "pubsub#presence_based_delivery": "true", "pubsub#notification_type": "headline"}


def _values(form: data_form.Form) -> dict[str, str]:
    values = {}
    for var, field in form.fields.items():
        if var == "FORM_TYPE" or not field.values:
            continue
        values[var] = str(field.values[0])
    return values


def configured(config: NodeConfig, form: data_form.Form, limits: Limits) -> NodeConfig:
    """Section 8.2.5: *config* changed by a submitted configuration form; not-acceptable for a
    value this service cannot take (8.2.5.3)."""
    changes: dict[str, object] = {}
    for var, value in _values(form).items():
        if var in FIXED:
            continue
        try:
            changes[var.removeprefix("pubsub#")] = _parse(var, value, limits)
        except KeyError:
            continue  # a field this service does not know; section 8.2.4 lets it leave them out
        except ValueError:
            raise StanzaError("not-acceptable", text=f"{var} cannot be {value!r}") from None
    return dataclasses.replace(config, **changes)  # type: ignore[arg-type]


def meets(config: NodeConfig, options: data_form.Form, limits: Limits) -> bool:
    """Section 7.1.5: whether an existing node's configuration is what the publish-options ask."""
    for var, value in _values(options).items():
        if var in FIXED:
            if value != FIXED[var] and not (var == "pubsub#deliver_notifications" and value == "true"):
                return False
            continue
        try:
            wanted = _parse(var, value, limits)
        except (KeyError, ValueError):
            return False  # a precondition this service cannot meet
        if getattr(config, var.removeprefix("pubsub#")) != wanted:
            return False
    return True


def created_with(options: data_form.Form | None, limits: Limits) -> NodeConfig:
    """The configuration of a node a publish makes (section 7.1.5: the publish-options' values);
    precondition-not-met for options this service cannot meet."""
    if options is None:
        return NodeConfig()
    try:
        config = configured(NodeConfig(), options, limits)
    except StanzaError:
        raise pubsub_error("conflict", "precondition-not-met") from None
    if not meets(config, options, limits):
        raise pubsub_error("conflict", "precondition-not-met")
    return config


def _data_form() -> ModuleType:
    from wokkel import data_form  # noqa: PLC0415 - see the import above

    return data_form


def options_form(values: dict[str, str], form_type: str = NS_PUBLISH_OPTIONS) -> data_form.Form:
    """A submitted form, as a client sends publish-options (for callers of the in-process API)."""
    data_form = _data_form()
    form = data_form.Form("submit", formNamespace=form_type)
    for var, value in values.items():
        form.addField(data_form.Field(var=var, value=value))
    return form


def config_form(config: NodeConfig, limits: Limits) -> data_form.Form:
    """Section 8.2.1: the node's configuration as a form to fill in."""
    data_form = _data_form()
    form = data_form.Form("form", formNamespace=NS_NODE_CONFIG)
    form.addField(data_form.Field("list-single", "pubsub#access_model", config.access_model,
                                  label="Who may subscribe and retrieve items",
                                  options=[data_form.Option(m) for m in ACCESS_MODELS]))
    form.addField(data_form.Field("text-single", "pubsub#max_items", str(config.max_items),
                                  label=f"Max items to persist (at most {limits.max_items})"))
    form.addField(data_form.Field("boolean", "pubsub#persist_items", config.persist_items,
                                  label="Persist items to storage"))
    form.addField(data_form.Field("list-single", "pubsub#send_last_published_item", config.send_last_published_item,
                                  label="When to send the last published item",
                                  options=[data_form.Option(p) for p in LAST_ITEM_POLICIES]))
    for name, label in (("notify_retract", "Notify subscribers when items are removed"),
                        ("notify_delete", "Notify subscribers when the node is deleted"),
                        ("deliver_payloads", "Deliver payloads with event notifications")):
        form.addField(data_form.Field("boolean", "pubsub#" + name, getattr(config, name), label=label))
    form.addField(data_form.Field("text-single", "pubsub#title", config.title, label="A friendly name"))
    form.addField(data_form.Field("list-single", "pubsub#publish_model", "publishers",
                                  options=[data_form.Option("publishers")], label="Who may publish"))
    return form


NS_DATA = "jabber:x:data"


def typed_form_types(pubsub: domish.Element) -> None:
    """Mark the FORM_TYPE of each submitted form in a request hidden where the client left its
    type out: XEP-0068 (1.3) lets a submitted form do so, as XEP-0004 lets it leave every field
    type out (slixmpp, Profanity), but wokkel takes a form's namespace only from a hidden field,
    and would not find the form at all (publish-options ignored, a configuration refused)."""
    for child in pubsub.elements():
        for form in child.elements(NS_DATA, "x"):
            if form.getAttribute("type") not in ("submit", None):
                continue
            for field in form.elements(NS_DATA, "field"):
                if field.getAttribute("var") == "FORM_TYPE" and not field.hasAttribute("type"):
                    field["type"] = "hidden"


def find_form(parent: domish.Element | None, form_type: str) -> data_form.Form | None:
    """The submitted form of *form_type* in *parent*; bad-request for a form of another kind."""
    if parent is None:
        return None
    form = _data_form().findForm(parent, form_type)
    if form is None and next(parent.elements(NS_DATA, "x"), None) is not None:
        raise StanzaError("bad-request", text=f"no submitted form of FORM_TYPE {form_type}")
    if form is not None and form.formType not in ("submit", "cancel"):
        raise StanzaError("bad-request", text=f"a {form.formType!r} form where a submitted one belongs")
    return form
