"""Streamlit pages of the dashboard: thin views over query functions in `ploomes/`."""

# The dashboard's pages as `dashboard.py` routes them: (file, title, icon); the first
# one is the default page. bench/dashboard.py visits the same list. Icons are emoji: a
# page's `:material/…:` icon can become the tab's icon, which the browser then fetches
# from Google's font server, and the dashboard must make no request off the machine.
PAGES = (
    ("views/overview.py", "Overview", "📊"),
    ("views/events.py", "Events", "📋"),
    ("views/records.py", "Records", "🗂️"),
    ("views/users.py", "Users", "👥"),
    ("views/webhooks.py", "Webhooks", "🔗"),
    ("views/relay.py", "Relay", "📤"),
    ("views/status.py", "Status", "🩺"),
    ("views/alerts.py", "Alerts", "🔔"),
    ("views/audit.py", "Audit", "🧾"),  # admins only (views.access.ADMIN_PAGES)
)
