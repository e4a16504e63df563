"""Names anyone who can edit a record, a user or a custom field in Ploomes can choose, and
deliveries that carry them: for the tests that check the dashboard shows them as text.

Each record is created with a hostile Name, then updated by an Action of the same name
(the 100 KB one is too long for an Action) whose Old disagrees with what was delivered
before, so the record has a continuity gap that quotes the name and the custom field.
"""

from __future__ import annotations

LINK = "![p](http://attacker.example/track.png) [Log in again](https://evil.example/login)"
BOLD = "**bold**"
LATEX = "$$\\frac12$$"
RED = ":red[red]"
HTML = "<img src=x onerror=alert(1)>"
SHORT = (LINK, BOLD, LATEX, RED, HTML)
HUGE = ("Razão social sem fim " * 5200)[: 100 * 1024]  # a 100 KB Name
NAMES = (*SHORT, HUGE)
# a value for every address parameter: the backtick first closes a code span around it
REFLECTED = "` " + " ".join(SHORT) + " `"

FIRST_RECORD = 905_000_000
ENTITY_RECORD = FIRST_RECORD + len(NAMES)  # the one record of an entity named LINK
FIELD_KEY = "contact_check"  # a Contacts custom field, named LINK by the directory
ACCOUNT_ID = 3100210


def record_id(name: str) -> int:
    """Return the id of the Contacts record named `name`."""
    return FIRST_RECORD + NAMES.index(name)


def update_action(name: str) -> str:
    """Return the Action of the update of the record named `name`."""
    return name if len(name) <= 100 else "Update"


def deliveries(user_ids: list[int]) -> list[dict]:
    """Return the delivery bodies, in order: per name a Create and an Update (made by the
    user of the same index), then the Create of the record of the entity named LINK."""
    bodies = []
    for index, name in enumerate(NAMES):
        rid = record_id(name)
        head = {"Entity": "Contacts", "AccountId": ACCOUNT_ID,
                "ActionUserId": user_ids[index], "WebhookId": 700 + index}
        bodies.append({**head, "Action": "Create", "Old": None,
                       "New": {"Id": rid, "Name": name,
                               "OtherProperties": {FIELD_KEY: False}}})
        bodies.append({**head, "Action": update_action(name),
                       "Old": {"Id": rid, "Name": f"Antes: {name}",
                               "OtherProperties": {FIELD_KEY: True}},
                       "New": {"Id": rid, "Name": name,
                               "OtherProperties": {FIELD_KEY: True}}})
    bodies.append({"Action": "Create", "Entity": LINK, "AccountId": ACCOUNT_ID,
                   "ActionUserId": user_ids[0], "Old": None,
                   "New": {"Id": ENTITY_RECORD, "Name": RED}})
    return bodies


def users(user_ids: list[int]) -> list[dict]:
    """Return Ploomes users (as GET /Users gives them) named after NAMES."""
    return [{"Id": uid, "Name": name, "Email": f"user{uid}@empresa.com.br", "Suspended": False}
            for uid, name in zip(user_ids, NAMES, strict=True)]


def custom_field() -> dict:
    """Return the custom field FIELD_KEY (as GET /Fields gives it), named LINK."""
    return {"Key": FIELD_KEY, "Name": LINK, "EntityId": 1, "TypeId": 10}
