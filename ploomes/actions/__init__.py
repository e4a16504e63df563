"""The dashboard's write actions, below the pages: each takes the acting user, checks that
the allow-lists make them an admin, does the work through `crm`, `intake` or `demo`, and
records it in the audit trail (`audit_log`).

A page hides the buttons a viewer may not use, but the check that counts is here, in the
server process, against the signed-in e-mail address: nothing the browser sends can make
a viewer an admin. The pages import the modules they need (`subscriptions`, `keys`,
`demo_data`); this package's top level holds who may act and the audit trail.
"""

from ploomes.actions.audit import ACTIONS, AuditUnavailable, admin_action
from ploomes.actions.roles import LOCAL, Actor, NotAllowed, Role, matches, role_of

__all__ = ["ACTIONS", "LOCAL", "Actor", "AuditUnavailable", "NotAllowed", "Role",
           "admin_action", "matches", "role_of"]
