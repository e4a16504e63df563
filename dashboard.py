"""The dashboard's front door: `streamlit run dashboard.py`. It only routes.

Each page is a thin view in `views/` over query functions in `ploomes/`. Pages whose file
is not there (yet) are left out of the navigation instead of breaking it.

`streamlit run` first imports this file to look for an `st.App`: that import declares
one, whose start-up imports what the pages need (pandas, DuckDB, the query modules:
~1 s here) before the server takes its first request, so the first visitor does not
wait for them. Every session then runs this file as `__main__`: the routing below.
"""

from __future__ import annotations

from pathlib import Path

import streamlit as st

ROOT = Path(__file__).resolve().parent

if __name__ != "__main__":
    # `streamlit run dashboard.py` imports this file once to find `app`, then serves
    # this same file with it (each session runs it as __main__, the branch below)
    import asyncio
    from contextlib import asynccontextmanager

    def _warm_up() -> None:
        try:
            import views.common  # noqa: F401 - pandas, DuckDB, the query modules: ~1 s
            from ploomes import i18n
            from ploomes.config import load_settings

            # the catalog and Babel's locale data: ~80 ms the first page would wait for
            i18n.activate(load_settings().language)
            i18n.translations(i18n.language())
            i18n.vega_locale()
        except Exception:  # noqa: BLE001, S110 - the page itself will say what is wrong
            pass

    @asynccontextmanager
    async def _lifespan(_app):
        await asyncio.to_thread(_warm_up)  # before the server takes its first request
        yield

    app = st.App(__file__, lifespan=_lifespan)
else:
    from ploomes.i18n import _
    from views import PAGES
    from views.access import gate, page_allowed
    from views.common import demo_banner, settings

    settings()  # the language (PLOOMES_LANGUAGE) before the first word is drawn
    # an emoji: a ":material/…:" tab icon is fetched from Google's font server
    st.set_page_config(page_title=_("Ploomes webhooks"), page_icon="📬",
                       layout="wide")
    # sign-in first: someone who may not see the data gets no page at all (views/access.py)
    access = gate()
    pages = [st.Page(path, title=_(title), icon=icon, default=index == 0)
             for index, (path, title, icon) in enumerate(PAGES)
             if (ROOT / path).is_file() and page_allowed(path, access)]
    page = st.navigation(pages)
    demo_banner(access)
    page.run()
