"""Streamlit pages of the dashboard: thin views over query functions in `ploomes/`."""

from ploomes.i18n import N_

# The dashboard's pages as `dashboard.py` routes them: (file, title, icon); the first
# one is the default page. bench/dashboard.py visits the same list. Icons are emoji: a
# page's `:material/…:` icon can become the tab's icon, which the browser then fetches
# from Google's font server, and the dashboard must make no request off the machine.
# Titles are English source strings, translated where the navigation is drawn.
PAGES = (
    ("views/overview.py", N_("Overview"), "📊"),
    ("views/events.py", N_("Events"), "📋"),
    ("views/records.py", N_("Records"), "🗂️"),
    ("views/users.py", N_("Users"), "👥"),
    ("views/webhooks.py", N_("Webhooks"), "🔗"),
    ("views/relay.py", N_("Relay"), "📤"),
    ("views/status.py", N_("Status"), "🩺"),
    ("views/alerts.py", N_("Alerts"), "🔔"),
    ("views/audit.py", N_("Audit"), "🧾"),  # admins only (views.access.ADMIN_PAGES)
)
