"""The room's configuration and its data forms (XEP-0004): the owner's muc#roomconfig form
(XEP-0045 section 10.2, the fields of section 15.5.3) and the muc#roominfo form of disco#info
(section 6.4).

Forms are built and read here with ``add_element`` rather than wokkel.data_form: that module needs
the wokkel compatibility patch installed before it can even be imported (a feature module is
imported before start-up installs it), and its builder links children to parents (cycles, see
stanzas.add_element). What is read of a submitted form is a field's values by its var.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any

from twisted.words.xish import domish

from sns_xmpp.xmpp.features.muc.protocol import NS_DATA, NS_ROOMCONFIG, NS_ROOMINFO, refusal
from sns_xmpp.xmpp.stanzas import add_element

WHOIS = ("moderators", "anyone")
MAX_NAME_CHARS = 200
MAX_DESCRIPTION_CHARS = 2000
MAX_PASSWORD_CHARS = 200


@dataclass(frozen=True)
class RoomConfig:
    """What an owner configures (section 10.2); the defaults are a new room's."""

    name: str = ""
    description: str = ""
    persistent: bool = False
    public: bool = True
    members_only: bool = False
    moderated: bool = False
    password_protected: bool = False
    password: str = ""
    whois: str = "moderators"  # semi-anonymous: only moderators see real JIDs (section 7.2.5)
    max_users: int = 0  # 0: the service's limit
    history_length: int = 20
    change_subject: bool = False  # participants may change the subject (section 8.1)
    allow_invites: bool = False  # participants may invite in a members-only room (section 7.8.2)

    @property
    def locked_by_password(self) -> bool:
        return self.password_protected and bool(self.password)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> RoomConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{key: value for key, value in json.loads(text).items() if key in known})


def _field(form: domish.Element, var: str, kind: str, label: str, values: list[str],
           options: tuple[tuple[str, str], ...] = ()) -> None:
    field = add_element(form, "field")
    field["var"], field["type"] = var, kind
    if label:
        field["label"] = label
    for value in values:
        add_element(field, "value", content=value)
    for value, option_label in options:
        option = add_element(field, "option")
        option["label"] = option_label
        add_element(option, "value", content=value)


def _bool(value: bool) -> list[str]:
    return ["1" if value else "0"]


def config_form(config: RoomConfig, max_users: int, max_history: int) -> domish.Element:
    """The form an owner gets (section 10.2, example 165's fields)."""
    form = domish.Element((NS_DATA, "x"))
    form["type"] = "form"
    add_element(form, "title", content="Room configuration")
    _field(form, "FORM_TYPE", "hidden", "", [NS_ROOMCONFIG])
    _field(form, "muc#roomconfig_roomname", "text-single", "Name", [config.name])
    _field(form, "muc#roomconfig_roomdesc", "text-single", "Description", [config.description])
    _field(form, "muc#roomconfig_persistentroom", "boolean", "Keep the room when it is empty",
           _bool(config.persistent))
    _field(form, "muc#roomconfig_publicroom", "boolean", "List the room publicly", _bool(config.public))
    _field(form, "muc#roomconfig_membersonly", "boolean", "Members only", _bool(config.members_only))
    _field(form, "muc#roomconfig_moderatedroom", "boolean", "Moderated (visitors need voice)",
           _bool(config.moderated))
    _field(form, "muc#roomconfig_passwordprotectedroom", "boolean", "Password required",
           _bool(config.password_protected))
    _field(form, "muc#roomconfig_roomsecret", "text-private", "Password", [config.password])
    _field(form, "muc#roomconfig_whois", "list-single", "Who may see occupants' real addresses",
           [config.whois], (("moderators", "Moderators only"), ("anyone", "Anyone")))
    _field(form, "muc#roomconfig_maxusers", "text-single", f"Most occupants (at most {max_users})",
           [str(config.max_users or max_users)])
    _field(form, "muc#roomconfig_historylength", "text-single", f"Messages new occupants get (at most {max_history})",
           [str(config.history_length)])
    _field(form, "muc#roomconfig_changesubject", "boolean", "Participants may change the subject",
           _bool(config.change_subject))
    _field(form, "muc#roomconfig_allowinvites", "boolean", "Participants may invite others",
           _bool(config.allow_invites))
    return form


def submitted_values(form: domish.Element) -> dict[str, list[str]]:
    """A submitted form's values by var (XEP-0004 section 3.2)."""
    values: dict[str, list[str]] = {}
    for field in form.elements(NS_DATA, "field"):
        var = field.getAttribute("var")
        if var:
            values[var] = [str(value) for value in field.elements(NS_DATA, "value")]
    return values


def _parse_bool(var: str, values: list[str]) -> bool:
    if not values or values[0].strip() not in ("0", "1", "true", "false"):
        raise refusal("not-acceptable", f"{var}: a boolean")
    return values[0].strip() in ("1", "true")


def _parse_int(var: str, values: list[str], low: int, high: int) -> int:
    try:
        number = int(values[0].strip()) if values else -1
    except ValueError:
        number = -1
    if not low <= number <= high:
        raise refusal("not-acceptable", f"{var}: a number {low}-{high}")
    return number


def apply_form(config: RoomConfig, form: domish.Element, max_users: int, max_history: int) -> RoomConfig:
    """*config* changed as the submitted form says; fields it leaves out keep their values
    (section 10.2: an empty submission accepts the current configuration, the instant room of
    section 10.1.2). An unacceptable value: not-acceptable."""
    values = submitted_values(form)
    form_type = values.get("FORM_TYPE")
    if form_type is not None and form_type != [NS_ROOMCONFIG]:
        raise refusal("not-acceptable", "not a muc#roomconfig form")
    changes: dict[str, Any] = {}
    texts = (("muc#roomconfig_roomname", "name", MAX_NAME_CHARS),
             ("muc#roomconfig_roomdesc", "description", MAX_DESCRIPTION_CHARS),
             ("muc#roomconfig_roomsecret", "password", MAX_PASSWORD_CHARS))
    for var, name, most in texts:
        if var in values:
            text = values[var][0] if values[var] else ""
            if len(text) > most:
                raise refusal("not-acceptable", f"{var}: at most {most} characters")
            changes[name] = text
    flags = (("muc#roomconfig_persistentroom", "persistent"), ("muc#roomconfig_publicroom", "public"),
             ("muc#roomconfig_membersonly", "members_only"), ("muc#roomconfig_moderatedroom", "moderated"),
             ("muc#roomconfig_passwordprotectedroom", "password_protected"),
             ("muc#roomconfig_changesubject", "change_subject"), ("muc#roomconfig_allowinvites", "allow_invites"))
    for var, name in flags:
        if var in values:
            changes[name] = _parse_bool(var, values[var])
    if "muc#roomconfig_whois" in values:
        whois = values["muc#roomconfig_whois"][0].strip() if values["muc#roomconfig_whois"] else ""
        if whois not in WHOIS:
            raise refusal("not-acceptable", "muc#roomconfig_whois: moderators or anyone")
        changes["whois"] = whois
    if "muc#roomconfig_maxusers" in values:
        maximum = values["muc#roomconfig_maxusers"]
        changes["max_users"] = 0 if maximum in ([], [""], ["none"]) else _parse_int(
            "muc#roomconfig_maxusers", maximum, 1, max_users)
    if "muc#roomconfig_historylength" in values:
        changes["history_length"] = _parse_int("muc#roomconfig_historylength",
                                               values["muc#roomconfig_historylength"], 0, max_history)
    changed = dataclasses.replace(config, **changes)
    if changed.password_protected and not changed.password:
        raise refusal("not-acceptable", "a password-protected room needs muc#roomconfig_roomsecret")
    return changed


def room_info_form(config: RoomConfig, occupants: int, subject: str) -> domish.Element:
    """The muc#roominfo extension of the room's disco#info (section 6.4, example 10)."""
    form = domish.Element((NS_DATA, "x"))
    form["type"] = "result"
    _field(form, "FORM_TYPE", "hidden", "", [NS_ROOMINFO])
    _field(form, "muc#roominfo_description", "text-single", "Description", [config.description])
    _field(form, "muc#roominfo_occupants", "text-single", "Number of occupants", [str(occupants)])
    _field(form, "muc#roominfo_subject", "text-single", "Subject", [subject])
    _field(form, "muc#roomconfig_roomname", "text-single", "Name", [config.name])
    return form


def room_features(config: RoomConfig) -> list[str]:
    """The room's muc_* features (section 15.6.3)."""
    return [
        "muc_public" if config.public else "muc_hidden",
        "muc_persistent" if config.persistent else "muc_temporary",
        "muc_membersonly" if config.members_only else "muc_open",
        "muc_moderated" if config.moderated else "muc_unmoderated",
        "muc_nonanonymous" if config.whois == "anyone" else "muc_semianonymous",
        "muc_passwordprotected" if config.locked_by_password else "muc_unsecured",
    ]
