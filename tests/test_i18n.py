"""The interface's language (issue 18): Brazilian Portuguese by default, English on request,
every word of a page from the gettext catalog, numbers, money and dates as Brazil writes them.

Two checks catch a string that skipped translation: the catalog check (every string marked
in the code has a Portuguese translation with the same placeholders) and the pages in the
`pseudo` language, where every translation shows inside ⟦…⟧: a word on a page outside the
marks is neither translated nor data, i.e. text someone forgot to put through `_()`.
"""

from __future__ import annotations

import json
import re
import shutil
from datetime import UTC, datetime
from pathlib import Path

import pytest
from conftest import ROOT, make_settings
from rendered import rendered
from store_seeds import ACTIVITY, seed_activity
from streamlit.testing.v1 import AppTest

from ploomes import i18n
from ploomes.actions import alerts as alert_actions
from ploomes.actions import relay as relay_actions
from ploomes.actions.roles import Actor
from ploomes.config import ConfigError, load_settings
from ploomes.demo.sandbox import Sandbox
from ploomes.model import names
from ploomes.relay.destinations import generate_secret
from ploomes.store import Store

TIMEOUT = 60
USER_KEY = "i18n-test-user-key-0123456789"
RECEIVER_KEY = "i18n-receiver-key-0123456789abcdef"
CALLBACK = "https://hooks.example.com/ploomes/webhook"


@pytest.fixture(autouse=True)
def _portuguese_after():
    """A test that switches the language leaves the process in the default one."""
    yield
    i18n.activate("pt_BR")


# -- the catalog --------------------------------------------------------------------------

def test_every_marked_string_has_a_portuguese_translation():
    assert i18n.catalog_problems(i18n.catalog_path("pt_BR"), ROOT) == []


def test_the_catalog_check_finds_an_untranslated_string(tmp_path):
    # a copy of the catalog with one translation emptied, one dropped and one whose
    # placeholder was renamed: each is reported, the real catalog is untouched
    po = tmp_path / "messages.po"
    text = i18n.catalog_path("pt_BR").read_text(encoding="utf-8")
    text = text.replace('msgid "Download CSV"\nmsgstr "Baixar CSV"',
                        'msgid "Download CSV"\nmsgstr ""')
    text = text.replace('msgid "Sign out"\nmsgstr "Sair"\n', "")
    text = text.replace('msgstr "Evento nº {id}"', 'msgstr "Evento nº {numero}"')
    po.write_text(text, encoding="utf-8")
    problems = "\n".join(i18n.catalog_problems(po, ROOT))
    assert "'Download CSV': no translation" in problems
    assert "'Sign out': not in the catalog" in problems
    assert "'Event #{id}': placeholders" in problems
    assert len(problems.splitlines()) == 3


def test_a_string_missing_from_the_catalog_is_shown_unmarked_in_pseudo(tmp_path):
    # what the page test below relies on: a translation is marked, a forgotten one is not
    catalog = i18n.compile_catalog(i18n.catalog_path("pt_BR"), pseudo=True)
    assert catalog.gettext("Events") == "⟦Eventos⟧"
    assert catalog.gettext("A string nobody translated") == "A string nobody translated"
    assert leftover(catalog.gettext("Events") + " Show event") == ["Show", "event"]


# -- formats ------------------------------------------------------------------------------

def test_numbers_money_and_dates_are_brazilian_by_default():
    i18n.activate("pt_BR")
    assert i18n.format_money(1234.56) == "R$\xa01.234,56"
    assert i18n.format_number(1234567) == "1.234.567"
    assert i18n.format_number(2.5, 1) == "2,5"
    moment = datetime(2026, 12, 7, 22, 17, 5, tzinfo=UTC)
    assert i18n.format_datetime(moment, "America/Sao_Paulo") == "07/12/2026 19:17"
    assert i18n.format_datetime(moment, "America/Sao_Paulo", seconds=True) == "07/12/2026 19:17:05"
    assert i18n.weekday_names()[:3] == ["seg", "ter", "qua"]
    assert i18n.format_ago(180) == "há 3 minutos"
    locale = i18n.vega_locale()
    assert locale["number"]["decimal"] == "," and locale["number"]["thousands"] == "."
    assert locale["time"]["shortDays"][:2] == ["dom", "seg"]
    assert locale["time"]["months"][11] == "dezembro"


def test_english_formats():
    i18n.activate("en")
    assert i18n.format_money(1234.56) == "R$1,234.56"
    assert i18n.weekday_names()[:3] == ["Mon", "Tue", "Wed"]
    assert i18n._("Events") == "Events"


def test_language_setting():
    assert load_settings(env={}).language == "pt_BR"
    assert load_settings(env={"PLOOMES_LANGUAGE": "en-US"}).language == "en"
    assert load_settings(env={"PLOOMES_LANGUAGE": "pt-BR"}).language == "pt_BR"
    with pytest.raises(ConfigError, match="PLOOMES_LANGUAGE"):
        load_settings(env={"PLOOMES_LANGUAGE": "klingon"})


# -- the pages ----------------------------------------------------------------------------

MARKED = re.compile(r"⟦[^⟦⟧]*⟧")
CODE = re.compile(r"(`+)[^`]*?\1")  # code spans show URLs, paths and commands verbatim
URL = re.compile(r"https?://\S+")
WORD = re.compile(r"[^\W\d_]{2,}")
TEXT_TYPES = {"title", "header", "subheader", "caption", "markdown", "info", "warning",
              "error", "success", "toast"}
# words a page shows that are data, formats or names, not interface text
FORMAT_WORDS = {"America", "Sao_Paulo", "Sao", "Paulo", "há", "em", "segundos", "minutos",
                "minuto", "horas", "hora", "dias", "dia", "semanas", "semana", "meses", "mês",
                "anos", "ano", "KB", "MB", "GB", "Id", "ActionUserId"}


def _data_words() -> set[str]:
    words = set(FORMAT_WORDS) | {"João", "Araújo", "Cliente", "VIP"}
    words |= set(WORD.findall(json.dumps([body for _, body in ACTIVITY], ensure_ascii=False)))
    for table in (names.ENTITY_LABELS, names.ACTION_LABELS):
        for label in table.values():
            words |= set(WORD.findall(" ".join(label)))
    for fields in names.FIELD_LABELS.values():
        for label in fields.values():
            words |= set(WORD.findall(" ".join(label)))
    return words


DATA_WORDS = _data_words()


def leftover(text: str) -> list[str]:
    """Return the words of a shown text that are neither translated nor data."""
    text = rendered(text)
    while (inner := MARKED.sub(" ", text)) != text:  # marks nest: a translation inside one
        text = inner
    text = URL.sub(" ", CODE.sub(" ", text))
    return [w for w in WORD.findall(text) if w not in DATA_WORDS]


def _elements(node):
    yield node
    for child in getattr(node, "children", {}).values():
        yield from _elements(child)


def _chart_titles(spec: dict) -> list[str]:
    titles = []
    for channel in spec.get("encoding", {}).values():
        for item in channel if isinstance(channel, list) else [channel]:
            if isinstance(item, dict) and isinstance(item.get("title"), str):
                titles.append(item["title"])
    return titles


def shown_texts(at: AppTest) -> list[tuple[str, str]]:
    """Return (what, text) for every interface text of a page: titles, messages, widget
    labels and help, metric labels, table headers, chart titles."""
    found = []
    for root in (at.main, at.sidebar):
        for element in _elements(root):
            kind = getattr(element, "type", "")
            if kind in TEXT_TYPES:
                found.append((kind, element.value))
            for attr in ("label", "help", "placeholder"):
                value = getattr(element, attr, None)
                if isinstance(value, str) and value:
                    found.append((f"{kind}.{attr}", value))
            if kind in ("arrow_data_frame", "dataframe"):
                config = json.loads(element.proto.columns or "{}")
                for column in element.value.columns:
                    label = config.get(str(column), {}).get("label") or str(column)
                    found.append(("table column", label))
            if kind in ("arrow_vega_lite_chart", "vega_lite_chart"):
                found += [("chart title", t) for t in _chart_titles(json.loads(element.proto.spec))]
    return found


def untranslated(at: AppTest) -> list[str]:
    return [f"{what}: {text!r} → {words}" for what, text in shown_texts(at)
            if (words := leftover(text))]


@pytest.fixture(scope="module")
def seeded(tmp_path_factory) -> Path:
    data_dir = tmp_path_factory.mktemp("i18n") / "data"
    seed_activity(data_dir)
    return data_dir


def run(page: str, monkeypatch, data_dir: Path, language: str, **params) -> AppTest:
    monkeypatch.setenv("PLOOMES_DATA_DIR", str(data_dir))
    monkeypatch.setenv("PLOOMES_LANGUAGE", language)
    at = AppTest.from_file(str(ROOT / page), default_timeout=TIMEOUT)
    for key, value in params.items():
        at.query_params[key] = str(value)
    at.run()
    assert not at.exception, at.exception
    return at


PAGES = [
    ("dashboard.py", {}),
    ("views/events.py", {}),
    ("views/events.py", {"event": 2}),
    ("views/records.py", {"entity": "Deals", "record": 101}),
    ("views/users.py", {}),
    ("views/status.py", {}),
    ("views/audit.py", {}),
]


@pytest.mark.parametrize(("page", "params"), PAGES, ids=[f"{p}{q}" for p, q in PAGES])
def test_every_text_on_a_page_comes_from_the_catalog(page, params, seeded, monkeypatch):
    at = run(page, monkeypatch, seeded, "pseudo", **params)
    assert len(shown_texts(at)) > 2
    assert untranslated(at) == []


@pytest.fixture
def sandbox():
    with Sandbox(user_key=USER_KEY, seed=5, rate_limit=0) as sb:
        yield sb


def test_every_text_on_the_webhooks_page_comes_from_the_catalog(sandbox, seeded, monkeypatch,
                                                                 tmp_path):
    sandbox.subscribe_all(CALLBACK, RECEIVER_KEY, pairs=(("Deals", "Win"), ("Contacts", "Create")))
    monkeypatch.setenv("PLOOMES_API_URL", sandbox.url)
    monkeypatch.setenv("PLOOMES_USER_KEY", USER_KEY)
    monkeypatch.setenv("PLOOMES_CALLBACK_URL", CALLBACK)
    monkeypatch.setenv("PLOOMES_VALIDATION_KEYS", RECEIVER_KEY)
    data_dir = tmp_path / "data"
    shutil.copytree(seeded, data_dir)
    at = run("views/webhooks.py", monkeypatch, data_dir, "pseudo")
    assert any("Inscrições" in text for _, text in shown_texts(at))
    assert untranslated(at) == []


def test_every_text_of_the_first_run_screen_comes_from_the_catalog(tmp_path, monkeypatch):
    at = run("dashboard.py", monkeypatch, tmp_path / "data", "pseudo")
    assert at.title[0].value == "⟦Boas-vindas ao monitor de webhooks do Ploomes⟧"
    assert untranslated(at) == []


def test_every_text_of_the_webhooks_page_without_a_key_comes_from_the_catalog(seeded,
                                                                             monkeypatch):
    at = run("views/webhooks.py", monkeypatch, seeded, "pseudo")
    assert any("User-Key" in text for _, text in shown_texts(at))
    assert untranslated(at) == []


def test_pages_speak_portuguese_by_default(seeded, monkeypatch):
    monkeypatch.setenv("PLOOMES_DATA_DIR", str(seeded))
    at = AppTest.from_file(str(ROOT / "views" / "events.py"), default_timeout=TIMEOUT)
    at.run()
    assert not at.exception, at.exception
    assert at.title[0].value == "Eventos"
    assert at.expander[0].label == "Filtros"
    assert {"Entidade", "Ação", "Usuário"} <= {s.label for s in at.selectbox}
    assert "Mostrar entregas de teste" in {t.label for t in at.toggle}
    caption = " ".join(rendered(c.value) for c in at.caption)
    assert "mais novos primeiro" in caption and "America/Sao_Paulo" in caption


def test_english_on_request(seeded, monkeypatch):
    at = run("views/events.py", monkeypatch, seeded, "en")
    assert at.title[0].value == "Events"
    assert at.expander[0].label == "Filters"
    assert {"Entity", "Action", "User"} <= {s.label for s in at.selectbox}
    caption = " ".join(rendered(c.value) for c in at.caption)
    assert "newest first" in caption
    users = run("views/users.py", monkeypatch, seeded, "en")
    assert users.title[0].value == "Users"


# the relay and the alerts, seeded the way an admin would (ploomes.actions: checked, audited)
LOCAL = Actor(None)  # the machine's own user: an admin while no sign-in is set up
DESTINATION = "erp"
RULE = "Ganhos"


@pytest.fixture
def relay_and_alerts(seeded, tmp_path) -> Path:
    data_dir = tmp_path / "data"
    shutil.copytree(seeded, data_dir)
    settings = make_settings(data_dir)
    store = Store(settings)
    relay_actions.add(LOCAL, settings, store, DESTINATION, "http://127.0.0.1:9/hook",
                      entities=["Deals"], secret=generate_secret())
    alert_actions.add(LOCAL, settings, store, RULE, "change",
                      {"entity": "Deals", "actions": ["Win"]}, "json://127.0.0.1:9/segredo")
    return data_dir


def test_every_text_on_the_relay_page_comes_from_the_catalog(relay_and_alerts, monkeypatch):
    at = run("views/relay.py", monkeypatch, relay_and_alerts, "pseudo")
    shown = shown_texts(at)
    assert ("table column", "⟦Nome⟧") in shown and ("subheader", "⟦Destinos⟧") in shown
    assert any(what.startswith("text_input") for what, _ in shown)  # the admin's form
    assert untranslated(at) == []


def test_every_text_on_the_alerts_page_comes_from_the_catalog(relay_and_alerts, monkeypatch):
    at = run("views/alerts.py", monkeypatch, relay_and_alerts, "pseudo")
    shown = shown_texts(at)
    assert ("table column", "⟦Condições⟧") in shown and ("subheader", "⟦Nova regra⟧") in shown
    assert untranslated(at) == []


@pytest.mark.parametrize("params", [{}, {"event": 2}], ids=["list", "detail"])
def test_the_relay_parts_of_the_events_page_come_from_the_catalog(params, relay_and_alerts,
                                                                    monkeypatch):
    at = run("views/events.py", monkeypatch, relay_and_alerts, "pseudo", **params)
    shown = shown_texts(at)
    relay_part = ("subheader", "⟦Relay⟧") if params else (
        "expander.label", "⟦Reenviar estes eventos a um destino do relay⟧")
    assert relay_part in shown
    assert untranslated(at) == []
