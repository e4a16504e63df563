"""Names and numbers Ploomes and this project agree on: ids, header, paths."""

from __future__ import annotations

# The ids the Ploomes API uses for the entities and actions webhooks are known for.
ENTITY_IDS: dict[str, int] = {"Contacts": 1, "Deals": 2, "Orders": 4, "Products": 10,
                              "Tasks": 12}
ACTION_IDS: dict[str, int] = {"Create": 1, "Update": 2, "Delete": 3, "Win": 4, "Lose": 5,
                              "Reopen": 6}
ENTITY_NAMES: dict[int, str] = {i: n for n, i in ENTITY_IDS.items()}
ACTION_NAMES: dict[int, str] = {i: n for n, i in ACTION_IDS.items()}

# The header that carries a subscription's ValidationKey, and its query-string form
# (some integrators put the key in the callback URL instead).
VALIDATION_HEADER = "X-Ploomes-Validation-Key"
VALIDATION_QUERY = "validation_key"
# The header this project's own test deliveries carry (Webhooks page, "Send a test
# delivery"): the receiver journals such a delivery as a test, never as a real change.
TEST_HEADER = "X-Ploomes-Monitor-Test"

# Paths of the receiver: where Ploomes posts, and where the dashboard hands demo data.
WEBHOOK_PATH = "/ploomes/webhook"
DEMO_PATH = "/ploomes/demo"

# Custom fields of a record live under this key; a field change's path is prefixed by it.
OTHER_PROPERTIES = "OtherProperties"
OTHER_PREFIX = OTHER_PROPERTIES + "."
TAGS = "Tags"

# A record's title is the first of these it has; a name search looks in the first three.
TITLE_KEYS = ("Name", "LegalName", "Title", "ContactName")
NAME_KEYS = ("Name", "LegalName", "Title")
