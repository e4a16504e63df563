"""Streamlit pages of the dashboard: thin views over query functions in `ploomes/`."""

# The dashboard's pages as `dashboard.py` routes them: (file, title, icon); the first
# one is the default page. bench/dashboard.py visits the same list.
PAGES = (
    ("views/overview.py", "Overview", ":material/dashboard:"),
    ("views/events.py", "Events", ":material/list_alt:"),
    ("views/records.py", "Records", ":material/history:"),
    ("views/users.py", "Users", ":material/group:"),
    ("views/webhooks.py", "Webhooks", ":material/webhook:"),
    ("views/status.py", "Status", ":material/monitor_heart:"),
)
