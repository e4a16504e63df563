"""The dashboard's front door: `streamlit run dashboard.py`. It only routes.

Each page is a thin view in `views/` over query functions in `ploomes/`. Pages whose file
is not there (yet) are left out of the navigation instead of breaking it.
"""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from views.common import demo_banner

ROOT = Path(__file__).resolve().parent

# (file, title, icon); the first one is the default page
PAGES = (
    ("views/overview.py", "Overview", ":material/dashboard:"),
    ("views/events.py", "Events", ":material/list_alt:"),
    ("views/records.py", "Records", ":material/history:"),
    ("views/users.py", "Users", ":material/group:"),
    ("views/webhooks.py", "Webhooks", ":material/webhook:"),
    ("views/status.py", "Status", ":material/monitor_heart:"),
)

st.set_page_config(page_title="Ploomes webhooks", page_icon=":material/webhook:",
                   layout="wide")
pages = [st.Page(path, title=title, icon=icon, default=index == 0)
         for index, (path, title, icon) in enumerate(PAGES) if (ROOT / path).is_file()]
page = st.navigation(pages)
demo_banner()
page.run()
