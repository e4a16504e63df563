"""The one generator of realistic Ploomes deliveries (benchmark, demo data, API sandbox).

A ``Simulation`` is a small Brazilian company's Ploomes account: users, custom fields,
tags, pipelines and stages, plus live Contacts, Deals and Tasks that evolve through
create → updates → win/lose (→ reopen) → maybe delete. Each ``step`` advances a simulated
clock and returns one ``Change`` with full before/after snapshots; ``delivery_body``
turns a change into the exact body Ploomes POSTs. Everything is drawn from one
``random.Random(seed)``, so a seed replays exactly.

Snapshots are copy-on-write: a change never mutates an earlier snapshot, and
consecutive changes share unchanged nested values. Treat ``Change.old``/``Change.new``
(and bodies built from them) as read-only, or deep-copy them first.
"""

from __future__ import annotations

import json
import math
import random
import unicodedata
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from ploomes.model.vocabulary import ACTION_IDS

SIMULATED_ENTITIES = ("Contacts", "Deals", "Tasks")
DEAL_ONLY_ACTIONS = frozenset({"Win", "Lose", "Reopen"})
DEFAULT_START = datetime(2026, 11, 2, 11, 0, tzinfo=UTC)  # a Monday, 08:00 in São Paulo

STATUS_OPEN, STATUS_WON, STATUS_LOST = 1, 2, 3
TYPE_COMPANY, TYPE_PERSON = 1, 2

_SAO_PAULO = ZoneInfo("America/Sao_Paulo")
# formatting tables for the hot path: "07", and ".68" for 680 ms (trailing zeros dropped)
_TWO_DIGITS = tuple(f"{i:02d}" for i in range(100))
_MILLIS = tuple(f".{i:03d}".rstrip("0").rstrip(".") for i in range(1000))
_ABSENT = object()
_OFF_HOURS_ACCEPT = 0.04  # share of off-hours moments kept: a little evening/weekend work
_MAX_LIVE = 3000  # per entity; beyond it an old record is silently forgotten (flat memory)

_USER_NAMES = (
    "João Araújo",
    "Márcia Conceição",
    "Luís Gonçalves",
    "Ana Beatriz Simões",
    "Sérgio Magalhães",
    "Fernanda Brandão",
)
_INTEGRATION_USER = "Integração ERP"
# The sandbox's account has people of its own: a store holding both demo data and
# sandbox deliveries shows two accounts, never one person under two ids.
SANDBOX_USER_NAMES = (
    "Rafael Teixeira",
    "Juliana Castro",
    "Paulo Henrique Dias",
    "Beatriz Moura",
    "Tiago Nogueira",
    "Camila Rezende",
)
SANDBOX_INTEGRATION_USER = "Integração Site"
DEMO_ACCOUNT_ID = 3100210  # the demo data's account (and the default one)
SANDBOX_ACCOUNT_ID = 3104480  # the sandbox's account: distinct ids, names and records
_COMPANY_KINDS = (
    "Padaria",
    "Clínica",
    "Ferragens",
    "Construtora",
    "Farmácia",
    "Auto Peças",
    "Escola",
    "Laticínios",
    "Transportadora",
    "Óptica",
    "Açougue",
    "Livraria",
    "Distribuidora",
    "Pousada",
)
_COMPANY_NAMES = (
    "Bom Grão",
    "Santa Luzia",
    "Ouro Verde",
    "São Jorge",
    "Estrela do Sul",
    "Boa Esperança",
    "Irmãos Araújo",
    "Vitória",
    "Ipê Amarelo",
    "Maré Alta",
    "Paraíso",
    "União",
    "Jequitibá",
    "Coração de Maria",
    "Sabiá",
    "Primavera",
)
_LEGAL_SUFFIXES = (" Ltda.", " Comércio e Serviços Ltda.", " ME", " EIRELI", " S.A.")
_FIRST_NAMES = (
    "Joana",
    "José",
    "Antônio",
    "Cláudia",
    "Patrícia",
    "Rogério",
    "Tânia",
    "Júlio",
    "Letícia",
    "Otávio",
    "Mônica",
    "Vinícius",
    "Célia",
    "Caio",
    "Bárbara",
    "Inês",
)
_SURNAMES = (
    "Ribeiro",
    "Conceição",
    "Assunção",
    "Guimarães",
    "Gonçalves",
    "Fonseca",
    "Lopes",
    "Brandão",
    "Simões",
    "Magalhães",
    "Peçanha",
    "Falcão",
    "Nóbrega",
    "Araújo",
)
_AREA_CODES = (11, 11, 11, 21, 21, 31, 41, 47, 48, 51, 61, 71, 81, 85, 19)
_MAIL_HOSTS = ("gmail.com", "hotmail.com", "uol.com.br", "yahoo.com.br", "outlook.com")
_DEAL_TITLES = (
    "Implantação",
    "Renovação anual",
    "Consultoria",
    "Licenças adicionais",
    "Treinamento da equipe",
    "Plano de manutenção",
    "Expansão para filial",
)
_TASK_TITLES = (
    "Ligar para",
    "Enviar proposta para",
    "Reunião de alinhamento com",
    "Visita técnica -",
    "Cobrar retorno de",
    "Enviar contrato para",
)
_TASK_NOTES = (
    "Confirmar orçamento e prazo de instalação.",
    "Cliente pediu condições de pagamento em 3×.",
    "Verificar se a nota fiscal já foi emitida.",
    "Levar catálogo novo 📋",
    "Falar com o responsável do setor de compras.",
    None,
)
_SEGMENTS = ("Varejo", "Saúde", "Indústria", "Educação", "Serviços", "Alimentação")
_PLANS = ("Plano Essencial", "Plano Pro", "Plano Avançado", "Plano Família")
_TAGS = (
    ("VIP", 1),
    ("Inadimplente", 1),
    ("Indicação", 1),
    ("Região Sul", 1),
    ("Prioridade alta", 2),
    ("Aguardando aprovação", 2),
    ("Parceria", 2),
)
_PIPELINES = (
    ("Funil de Vendas", ("Prospecção", "Qualificação", "Proposta enviada", "Negociação")),
    ("Renovações", ("Contato inicial", "Proposta", "Fechamento")),
)
_LOSS_REASONS = (1, 2, 3, 4)
_LOSS_REASON_NAMES = ("Preço", "Concorrência", "Sem orçamento", "Sem retorno")
_TASK_TYPES = ("Ligação", "E-mail", "Reunião", "Visita")  # TypeId 1–4

# (action, weight) per entity when nothing is forced
_ENTITY_WEIGHTS = (("Contacts", 0.3), ("Deals", 0.45), ("Tasks", 0.25))
_ACTION_WEIGHTS = {
    "Contacts": (("Create", 0.2), ("Update", 0.77), ("Delete", 0.03)),
    "Deals": (
        ("Create", 0.17),
        ("Update", 0.55),
        ("Win", 0.11),
        ("Lose", 0.11),
        ("Reopen", 0.015),
        ("Delete", 0.025),
    ),
    "Tasks": (("Create", 0.35), ("Update", 0.6), ("Delete", 0.05)),
}


# the fields an Update's mutations touch, checked to be sure something really changed
_MUTABLE_FIELDS = {
    "Contacts": ("Phones", "Email", "Tags", "OtherProperties", "OwnerId", "LegalName", "Name"),
    "Deals": ("StageId", "Amount", "OtherProperties", "Tags", "OwnerId"),
    "Tasks": ("Finished", "DateTime", "Description", "OwnerId"),
}


@dataclass(frozen=True)
class Change:
    """One simulated change to one record, with full snapshots on both sides."""

    at: datetime
    entity: str
    action: str
    action_user_id: int
    record_id: int
    old: dict | None
    new: dict | None


class _Pool:
    """Ids with O(1) add, remove and uniform random pick."""

    __slots__ = ("ids", "pos")

    def __init__(self) -> None:
        self.ids: list[int] = []
        self.pos: dict[int, int] = {}

    def __len__(self) -> int:
        return len(self.ids)

    def __contains__(self, record_id: int) -> bool:
        return record_id in self.pos

    def add(self, record_id: int) -> None:
        if record_id not in self.pos:
            self.pos[record_id] = len(self.ids)
            self.ids.append(record_id)

    def discard(self, record_id: int) -> None:
        index = self.pos.pop(record_id, None)
        if index is None:
            return
        last = self.ids.pop()
        if last != record_id:
            self.ids[index] = last
            self.pos[last] = index

    def pick(self, rng: random.Random) -> int:
        return self.ids[int(rng.random() * len(self.ids))]


def _ascii_slug(text: str, sep: str = ".") -> str:
    plain = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    return sep.join(
        part for part in "".join(c.lower() if c.isalnum() else " " for c in plain).split()
    )


def _cumulative(weighted: tuple[tuple[str, float], ...]) -> tuple[tuple[str, float], ...]:
    total = sum(weight for _, weight in weighted)
    running = 0.0
    table = []
    for name, weight in weighted:
        running += weight / total
        table.append((name, running))
    return tuple(table)


def _pick(rng: random.Random, cumulative: tuple[tuple[str, float], ...]) -> str:
    r = rng.random()
    for name, bound in cumulative:
        if r < bound:
            return name
    return cumulative[-1][0]


_ENTITY_TABLE = _cumulative(_ENTITY_WEIGHTS)
_ACTION_TABLES = {entity: _cumulative(weights) for entity, weights in _ACTION_WEIGHTS.items()}


def local_stamp(timestamp: float) -> str:
    """Format an epoch time as Ploomes does: São Paulo local time, no offset, trimmed ms."""
    text = datetime.fromtimestamp(timestamp, _SAO_PAULO).isoformat(timespec="milliseconds")
    # .NET drops trailing zeros of the fraction ("…:37.68", "…:06.3"), as in real bodies
    text = text[:23].rstrip("0")
    return text[:-1] if text.endswith(".") else text


def _local_day(timestamp: float) -> tuple[float, float, float, float, str]:
    """Return (midnight, next midnight, opening, closing, date) of the local day of a time.

    The date is empty on a day whose clock was changed, where stamps need the slow path.
    Opening and closing are 08:00 and 19:00 on Monday to Friday; on weekends they are
    equal, so no moment of the day counts as business hours.
    """
    local = datetime.fromtimestamp(timestamp, _SAO_PAULO)
    midnight = local.replace(hour=0, minute=0, second=0, microsecond=0)
    start = midnight.timestamp()
    end = datetime.combine(
        midnight.date() + timedelta(days=1), datetime.min.time(), _SAO_PAULO
    ).timestamp()
    if local.weekday() < 5:
        opening, closing = start + 8 * 3600, start + 19 * 3600
    else:
        opening = closing = start
    # a day with a clock change (Brazil had summer time until 2019) gets no fast stamps
    regular = end - start == 86400.0
    return (start, end, opening, closing, midnight.date().isoformat() if regular else "")


def _local_hour_stamp(timestamp: float) -> str:
    local = datetime.fromtimestamp(timestamp, _SAO_PAULO)
    return local.replace(minute=0, second=0, microsecond=0).isoformat()[:19]


def _local_date_stamp(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, _SAO_PAULO).date().isoformat() + "T00:00:00"


class Simulation:
    """A seeded Ploomes account whose records change one realistic step at a time.

    ``mean_gap_seconds`` is the mean time between changes during business hours
    (Mon–Fri 08–19 in São Paulo); outside them only a few moments are kept. The account
    starts with some contacts, open deals and tasks that existed before ``start``.
    """

    def __init__(
        self,
        seed: int = 0,
        start: datetime | None = None,
        account_id: int = DEMO_ACCOUNT_ID,
        mean_gap_seconds: float = 600.0,
        user_names: tuple[str, ...] = _USER_NAMES,
        integration_user: str = _INTEGRATION_USER,
    ) -> None:
        start = DEFAULT_START if start is None else start
        if start.tzinfo is None:
            raise ValueError("start must be timezone-aware")
        if mean_gap_seconds <= 0:
            raise ValueError("mean_gap_seconds must be positive")
        self._rng = rng = random.Random(seed)
        self._t = start.timestamp()
        self._day = _local_day(self._t)
        self._rate = 1.0 / mean_gap_seconds
        self.account_id = account_id
        # real ids share the account's leading digits (account 3100210 → user 31007781)
        self._prefix = prefix = (account_id // 1000) * 10000
        company = rng.choice(_COMPANY_NAMES)
        self.company = company
        self.domain = _ascii_slug(company, "") + ".com.br"
        # Ploomes' JSON objects: values of mixed types, looked up by key
        self.users: list[dict[str, Any]] = [
            {
                "Id": prefix + 7700 + 11 * i + rng.randint(0, 9),
                "Name": name,
                "Email": f"{_ascii_slug(name)}@{self.domain}",
                "Suspended": False,
            }
            for i, name in enumerate(user_names)
        ]
        self.users.append(
            {
                "Id": prefix + 7799,
                "Name": integration_user,
                "Email": f"integracao@{self.domain}",
                "Suspended": False,
            }
        )
        self._people = [user["Id"] for user in self.users[:-1]]
        self._integration_id = self.users[-1]["Id"]

        def guid() -> str:
            return str(uuid.UUID(int=rng.getrandbits(128), version=4)).upper()

        # TypeIds are our guess at Ploomes' field types: 1 text, 4 integer, 10 yes/no
        self._deal_plan = f"deal_{guid()}"
        self._deal_signed = f"deal_{guid()}"
        self._deal_installments = f"deal_{guid()}"
        self._task_priority = f"task_{guid()}"
        field_specs = (
            ("contact_check", "Cliente verificado", 1, 10),
            ("contact_segment", "Segmento", 1, 1),
            ("contact_employees", "Nº de funcionários", 1, 4),
            (self._deal_plan, "Plano contratado", 2, 1),
            (self._deal_signed, "Contrato assinado?", 2, 10),
            (self._deal_installments, "Número de parcelas", 2, 4),
            (self._task_priority, "Prioridade", 12, 4),
        )
        self.fields: list[dict[str, Any]] = [
            {
                "Id": prefix + 9100 + i,
                "Key": key,
                "Name": name,
                "EntityId": entity,
                "TypeId": type_id,
            }
            for i, (key, name, entity, type_id) in enumerate(field_specs)
        ]
        self.tags: list[dict[str, Any]] = [
            {
                "Id": prefix + 4400 + i,
                "Name": name,
                "EntityId": entity,
                "Color": f"#{rng.getrandbits(24):06X}",
            }
            for i, (name, entity) in enumerate(_TAGS)
        ]
        self._contact_tags = [tag["Id"] for tag in self.tags if tag["EntityId"] == 1]
        self._deal_tags = [tag["Id"] for tag in self.tags if tag["EntityId"] == 2]
        self.pipelines: list[dict[str, Any]] = []
        self.stages: list[dict[str, Any]] = []
        self._pipeline_stages: dict[int, list[int]] = {}
        for p, (pipeline_name, stage_names) in enumerate(_PIPELINES):
            pipeline_id = prefix + 20011 + p
            self.pipelines.append({"Id": pipeline_id, "Name": pipeline_name})
            stage_ids = []
            for s, stage_name in enumerate(stage_names):
                stage_id = prefix + 88100 + 10 * p + s
                stage_ids.append(stage_id)
                self.stages.append(
                    {"Id": stage_id, "Name": stage_name, "PipelineId": pipeline_id, "Ordination": s}
                )
            self._pipeline_stages[pipeline_id] = stage_ids

        self.loss_reasons: list[dict[str, Any]] = [
            {"Id": prefix + 6600 + i, "Name": name}
            for i, name in zip(_LOSS_REASONS, _LOSS_REASON_NAMES, strict=True)
        ]
        self.task_types: list[dict[str, Any]] = [
            {"Id": i, "Name": name} for i, name in enumerate(_TASK_TYPES, 1)
        ]
        self._records: dict[str, dict[int, dict]] = {e: {} for e in SIMULATED_ENTITIES}
        self._pools: dict[str, _Pool] = {e: _Pool() for e in SIMULATED_ENTITIES}
        self._open_deals = _Pool()
        self._closed_deals = _Pool()
        self._stage_since: dict[int, float] = {}
        # record ids apart per account: two simulated accounts in one store never share one
        offset = (account_id % 1000) * 10_000
        self._next_id = {
            "Contacts": 509_900_000 + offset + rng.randint(0, 9999),
            "Deals": 517_000_000 + offset + rng.randint(0, 9999),
            "Tasks": 612_000_000 + offset + rng.randint(0, 9999),
        }
        self._seed_existing_records()

    # --- public -------------------------------------------------------------------

    def records(self, entity: str) -> list[dict]:
        """Return deep copies of the live records of one entity."""
        if entity not in self._records:
            raise ValueError(f"unknown entity {entity!r}; use one of {SIMULATED_ENTITIES}")
        # JSON round trip: a deep copy that is cheap and proves the snapshots are JSON
        return json.loads(json.dumps(list(self._records[entity].values())))

    def step(self, entity: str | None = None, action: str | None = None) -> Change:
        """Advance the clock and make one change, forced to an entity/action when given."""
        if entity is not None and entity not in SIMULATED_ENTITIES:
            raise ValueError(f"unknown entity {entity!r}; use one of {SIMULATED_ENTITIES}")
        if action is not None and action not in ACTION_IDS:
            raise ValueError(f"unknown action {action!r}; use one of {tuple(ACTION_IDS)}")
        if action in DEAL_ONLY_ACTIONS:
            if entity not in (None, "Deals"):
                raise ValueError(f"{action} exists only for Deals")
            entity = "Deals"
        rng = self._rng
        if entity is None:
            entity = _pick(rng, _ENTITY_TABLE)
        if action is None:
            action = _pick(rng, _ACTION_TABLES[entity])
        self._advance()
        return self._make(entity, action)

    def steps(self, n: int) -> Iterator[Change]:
        """Yield ``n`` unforced changes."""
        step = self.step
        for _ in range(n):
            yield step()

    # --- clock ----------------------------------------------------------------------

    def _advance(self) -> None:
        """Move to the next moment: exponential gaps thinned outside business hours."""
        rng = self._rng
        rate = self._rate
        t = self._t
        day = self._day
        while True:
            t += rng.expovariate(rate)
            if not day[0] <= t < day[1]:
                day = self._day = _local_day(t)
            if day[2] <= t < day[3]:
                break
            if rng.random() < _OFF_HOURS_ACCEPT:
                break
        self._t = t

    def _stamp_at(self, timestamp: float) -> str:
        """Format a moment as Ploomes does, the fast way when it is the current one."""
        return self._stamp() if timestamp == self._t else local_stamp(timestamp)

    def _stamp(self) -> str:
        """Format the current moment like ``local_stamp``, without a time-zone lookup."""
        day = self._day
        if not day[0] <= self._t < day[1]:
            day = self._day = _local_day(self._t)
        if not day[4]:
            return local_stamp(self._t)
        # round to microseconds the way datetime.fromtimestamp does, then truncate to ms
        fraction, whole = math.modf(self._t)
        micros = round(fraction * 1e6)
        if micros >= 1_000_000:
            whole, micros = whole + 1, micros - 1_000_000
        elif micros < 0:
            whole, micros = whole - 1, micros + 1_000_000
        seconds = int(whole) - int(day[0])
        millis = micros // 1000
        minutes, seconds = divmod(seconds, 60)
        hours, minutes = divmod(minutes, 60)
        two = _TWO_DIGITS
        return f"{day[4]}T{two[hours]}:{two[minutes]}:{two[seconds]}{_MILLIS[millis]}"

    # --- dispatch -------------------------------------------------------------------

    def _make(self, entity: str, action: str) -> Change:
        """Make the change, or the prerequisite change when it is not possible yet."""
        pool = self._pools[entity]
        if action == "Create" or not pool:
            return self._create(entity)
        if action == "Delete":
            return self._delete(entity, pool.pick(self._rng))
        if action == "Update":
            if entity == "Deals":
                use_open = self._open_deals and (
                    not self._closed_deals or self._rng.random() < 0.85
                )
                deal_id = (self._open_deals if use_open else self._closed_deals).pick(self._rng)
                return self._update(entity, deal_id)
            return self._update(entity, pool.pick(self._rng))
        if action in ("Win", "Lose"):
            if not self._open_deals:
                return self._create(entity)
            return self._close(self._open_deals.pick(self._rng), action)
        # Reopen: needs a closed deal; otherwise close an open one first
        if self._closed_deals:
            return self._reopen(self._closed_deals.pick(self._rng))
        if self._open_deals:
            won = self._rng.random() < 0.5
            return self._close(self._open_deals.pick(self._rng), "Win" if won else "Lose")
        return self._create(entity)

    def _actor(self, owner_id: int | None) -> int:
        r = self._rng.random()
        if r < 0.05:
            return self._integration_id  # integrations' API writes fire webhooks too
        if owner_id is not None and r < 0.65:
            return owner_id
        return self._rng.choice(self._people)

    def _change(
        self, entity: str, action: str, user: int, old: dict | None, new: dict | None
    ) -> Change:
        record_id = (new or old)["Id"]  # type: ignore[index]
        return Change(
            at=datetime.fromtimestamp(self._t, UTC),
            entity=entity,
            action=action,
            action_user_id=user,
            record_id=record_id,
            old=old,
            new=new,
        )

    def _store(self, entity: str, record: dict) -> None:
        records = self._records[entity]
        record_id = record["Id"]
        if record_id not in records:
            if len(records) >= _MAX_LIVE:
                self._forget(entity, self._pools[entity].pick(self._rng))
            self._pools[entity].add(record_id)
        records[record_id] = record
        if entity == "Deals":
            if record["StatusId"] == STATUS_OPEN:
                self._closed_deals.discard(record_id)
                self._open_deals.add(record_id)
            else:
                self._open_deals.discard(record_id)
                self._closed_deals.add(record_id)

    def _forget(self, entity: str, record_id: int) -> None:
        self._records[entity].pop(record_id, None)
        self._pools[entity].discard(record_id)
        if entity == "Deals":
            self._open_deals.discard(record_id)
            self._closed_deals.discard(record_id)
            self._stage_since.pop(record_id, None)

    def _new_id(self, entity: str) -> int:
        self._next_id[entity] += self._rng.randint(1, 37)
        return self._next_id[entity]

    # --- create / delete --------------------------------------------------------------

    def _create(self, entity: str) -> Change:
        user = self._actor(None)
        builder = {
            "Contacts": self._new_contact,
            "Deals": self._new_deal,
            "Tasks": self._new_task,
        }[entity]
        record = builder(self._t, user)
        self._store(entity, record)
        return self._change(entity, "Create", user, None, record)

    def _delete(self, entity: str, record_id: int) -> Change:
        old = self._records[entity][record_id]
        user = self._actor(old.get("OwnerId"))
        self._forget(entity, record_id)
        return self._change(entity, "Delete", user, old, None)

    def _phone(self) -> dict:
        rng = self._rng
        area = rng.choice(_AREA_CODES)
        if rng.random() < 0.7:
            number = f"({area}) 9{rng.randint(6000, 9999)}-{rng.randint(0, 9999):04d}"
            return {"PhoneNumber": number, "TypeId": 2, "CountryId": 76}
        number = f"({area}) {rng.randint(2000, 3999)}-{rng.randint(0, 9999):04d}"
        return {"PhoneNumber": number, "TypeId": 1, "CountryId": 76}

    def _person_name(self) -> str:
        rng = self._rng
        return f"{rng.choice(_FIRST_NAMES)} {rng.choice(_SURNAMES)}"

    def _new_contact(self, t: float, user: int) -> dict:
        rng = self._rng
        stamp = self._stamp_at(t)
        if rng.random() < 0.6:
            name = f"{rng.choice(_COMPANY_KINDS)} {rng.choice(_COMPANY_NAMES)}"
            type_id, legal_name = TYPE_COMPANY, name + rng.choice(_LEGAL_SUFFIXES)
            email = f"contato@{_ascii_slug(name, '')}.com.br"
        else:
            name = self._person_name()
            type_id, legal_name = TYPE_PERSON, None
            email = f"{_ascii_slug(name)}{rng.randint(1, 99)}@{rng.choice(_MAIL_HOSTS)}"
        phones = [self._phone() for _ in range(1 if rng.random() < 0.8 else 2)]
        tags = [{"TagId": rng.choice(self._contact_tags)}] if rng.random() < 0.3 else []
        return {
            "Id": self._new_id("Contacts"),
            "Name": name,
            "LegalName": legal_name,
            "TypeId": type_id,
            "Email": email,
            "Phones": phones,
            "OwnerId": rng.choice(self._people),
            "Tags": tags,
            "OtherProperties": {
                "contact_check": rng.random() < 0.5,
                "contact_segment": rng.choice(_SEGMENTS),
                "contact_employees": rng.randint(1, 250),
            },
            "CreatorId": user,
            "UpdaterId": user,
            "CreateDate": stamp,
            "LastUpdateDate": stamp,
        }

    def _new_deal(self, t: float, user: int) -> dict:
        rng = self._rng
        stamp = self._stamp_at(t)
        contacts = self._pools["Contacts"]
        contact = self._records["Contacts"][contacts.pick(rng)] if contacts else None
        contact_name = contact["Name"] if contact else None
        title = rng.choice(_DEAL_TITLES)
        pipeline_id = self.pipelines[0 if rng.random() < 0.75 else 1]["Id"]
        amount = float(rng.randint(4, 400) * 250)
        record_id = self._new_id("Deals")
        self._stage_since[record_id] = t
        return {
            "Id": record_id,
            "Title": f"{title} - {contact_name}" if contact_name else title,
            "ContactId": contact["Id"] if contact else None,
            "ContactName": contact_name,
            "PipelineId": pipeline_id,
            "StageId": self._pipeline_stages[pipeline_id][0],
            "StatusId": STATUS_OPEN,
            "LastStageId": None,
            "LossReasonId": None,
            "OwnerId": user if user in self._people else rng.choice(self._people),
            "CurrencyId": 1,
            "Amount": amount,
            "StartAmount": amount,
            "StartDate": _local_date_stamp(t),
            "FinishDate": None,
            "DaysInStage": 0,
            "HoursInStage": 0,
            "Tags": [{"TagId": rng.choice(self._deal_tags)}] if rng.random() < 0.25 else [],
            "OtherProperties": {
                self._deal_plan: rng.choice(_PLANS),
                self._deal_signed: False,
                self._deal_installments: rng.choice((1, 1, 3, 6, 12)),
            },
            "CreatorId": user,
            "UpdaterId": user,
            "CreateDate": stamp,
            "LastUpdateDate": stamp,
        }

    def _new_task(self, t: float, user: int) -> dict:
        rng = self._rng
        stamp = self._stamp_at(t)
        contacts = self._pools["Contacts"]
        contact = self._records["Contacts"][contacts.pick(rng)] if contacts else None
        deal_id = None
        if self._open_deals and rng.random() < 0.5:
            deal_id = self._open_deals.pick(rng)
            contact_id = self._records["Deals"][deal_id]["ContactId"]
            contact = self._records["Contacts"].get(contact_id, contact)
        who = contact["Name"] if contact else self._person_name()
        return {
            "Id": self._new_id("Tasks"),
            "Title": f"{rng.choice(_TASK_TITLES)} {who}",
            "Description": rng.choice(_TASK_NOTES),
            "TypeId": rng.randint(1, 4),
            "ContactId": contact["Id"] if contact else None,
            "DealId": deal_id,
            "OwnerId": user if user in self._people else rng.choice(self._people),
            "DateTime": _local_hour_stamp(
                t + rng.randint(1, 10) * 86400 + rng.randint(0, 8) * 3600
            ),
            "Finished": False,
            "FinishDate": None,
            "Tags": [],
            "OtherProperties": {self._task_priority: rng.randint(1, 3)},
            "CreatorId": user,
            "UpdaterId": user,
            "CreateDate": stamp,
            "LastUpdateDate": stamp,
        }

    def _seed_existing_records(self) -> None:
        """Fill the account with records that existed before the simulation starts."""
        rng = self._rng
        start = self._t
        plan = (("Contacts", 30), ("Deals", 14), ("Tasks", 10))
        for entity, count in plan:
            for _ in range(count):
                t = start - rng.uniform(2, 180) * 86400
                builder = {
                    "Contacts": self._new_contact,
                    "Deals": self._new_deal,
                    "Tasks": self._new_task,
                }[entity]
                self._store(entity, builder(t, rng.choice(self._people)))

    # --- updates ------------------------------------------------------------------------

    def _touch(self, entity: str, new: dict, user: int) -> None:
        """Set the bookkeeping fields every Ploomes write rewrites."""
        new["UpdaterId"] = user
        new["LastUpdateDate"] = self._stamp()
        if entity == "Deals":
            since = self._stage_since.get(new["Id"], self._t)
            hours = int((self._t - since) // 3600)
            new["DaysInStage"] = hours // 24
            new["HoursInStage"] = hours

    def _update(self, entity: str, record_id: int) -> Change:
        rng = self._rng
        old = self._records[entity][record_id]
        new = dict(old)
        user = self._actor(old.get("OwnerId"))
        mutate = {
            "Contacts": self._mutate_contact,
            "Deals": self._mutate_deal,
            "Tasks": self._mutate_task,
        }[entity]
        r = rng.random()
        for _ in range(1 if r < 0.7 else 2 if r < 0.95 else 3):
            mutate(new)
        # two mutations can cancel out (a tag added then removed): every Update must
        # change something real, or the demo's missed change would be invisible
        touched = _MUTABLE_FIELDS[entity]
        while all(old.get(key, _ABSENT) == new.get(key, _ABSENT) for key in touched):
            mutate(new)
        self._touch(entity, new, user)
        self._store(entity, new)
        return self._change(entity, "Update", user, old, new)

    def _other_owner(self, current: int | None) -> int:
        choices = [u for u in self._people if u != current]
        return self._rng.choice(choices)

    def _toggle_tag(self, record: dict, tag_ids: list[int]) -> None:
        rng = self._rng
        present = [item["TagId"] for item in record.get("Tags") or ()]
        absent = [tag_id for tag_id in tag_ids if tag_id not in present]
        if present and (not absent or rng.random() < 0.4):
            drop = rng.choice(present)
            record["Tags"] = [item for item in record["Tags"] if item["TagId"] != drop]
        else:
            record["Tags"] = [*(record.get("Tags") or ()), {"TagId": rng.choice(absent)}]

    def _set_property(self, record: dict, key: str, value: object) -> None:
        props = dict(record.get("OtherProperties") or {})
        props[key] = value
        record["OtherProperties"] = props

    def _mutate_contact(self, record: dict) -> None:
        rng = self._rng
        what = rng.randrange(8)
        props = record.get("OtherProperties") or {}
        if what == 0:
            phones = list(record.get("Phones") or ())
            if phones and rng.random() < 0.7:
                phones[rng.randrange(len(phones))] = self._phone()
            else:
                phones.append(self._phone())
            record["Phones"] = phones
        elif what == 1:
            local, _, _ = (record.get("Email") or "contato@x").partition("@")
            record["Email"] = f"{local}@{rng.choice(_MAIL_HOSTS)}" + (
                "" if rng.random() < 0.5 else ".br"
            )
            if record["Email"] == self._records["Contacts"].get(record["Id"], {}).get("Email"):
                record["Email"] = f"{local}.{rng.randint(2, 99)}@{rng.choice(_MAIL_HOSTS)}"
        elif what == 2:
            self._toggle_tag(record, self._contact_tags)
        elif what == 3:
            self._set_property(record, "contact_check", not props.get("contact_check", False))
        elif what == 4:
            current = props.get("contact_segment")
            self._set_property(
                record, "contact_segment", rng.choice([s for s in _SEGMENTS if s != current])
            )
        elif what == 5:
            current = props.get("contact_employees") or 0
            self._set_property(
                record, "contact_employees", current + rng.choice((-3, -1, 1, 2, 5, 10))
            )
        elif what == 6:
            record["OwnerId"] = self._other_owner(record.get("OwnerId"))
        elif record.get("TypeId") == TYPE_COMPANY:
            base = record["Name"]
            choices = [base + s for s in _LEGAL_SUFFIXES if base + s != record.get("LegalName")]
            record["LegalName"] = rng.choice(choices)
        else:
            first = (record.get("Name") or "Sem Nome").split(" ")[0]
            surname = rng.choice(
                [s for s in _SURNAMES if not (record.get("Name") or "").endswith(s)]
            )
            record["Name"] = f"{first} {surname}"

    def _mutate_deal(self, record: dict) -> None:
        rng = self._rng
        is_open = record.get("StatusId") == STATUS_OPEN
        what = rng.randrange(7) if is_open else rng.randrange(2, 6)
        if what <= 1:
            stages = self._pipeline_stages.get(record["PipelineId"], [])  # every deal has one
            position = stages.index(record["StageId"]) if record.get("StageId") in stages else -1
            if position + 1 < len(stages) and (position <= 0 or rng.random() < 0.85):
                target = stages[position + 1]
            elif position > 0:
                target = stages[position - 1]
            else:
                record["Amount"] = float(rng.randint(4, 400) * 250)
                return
            record["StageId"] = target
            self._stage_since[record["Id"]] = self._t
        elif what == 2:
            amount = record.get("Amount") or 0.0
            record["Amount"] = float(max(250, round(amount * rng.uniform(0.7, 1.3) / 250) * 250))
            if record["Amount"] == amount:
                record["Amount"] = amount + 250.0
        elif what == 3:
            plans = record.get("OtherProperties") or {}
            current = plans.get(self._deal_plan)
            self._set_property(
                record, self._deal_plan, rng.choice([p for p in _PLANS if p != current])
            )
        elif what == 4:
            props = record.get("OtherProperties") or {}
            if rng.random() < 0.5:
                self._set_property(
                    record, self._deal_signed, not props.get(self._deal_signed, False)
                )
            else:
                current = props.get(self._deal_installments)
                choices = [n for n in (1, 2, 3, 6, 10, 12) if n != current]
                self._set_property(record, self._deal_installments, rng.choice(choices))
        elif what == 5:
            self._toggle_tag(record, self._deal_tags)
        else:
            record["OwnerId"] = self._other_owner(record.get("OwnerId"))

    def _mutate_task(self, record: dict) -> None:
        rng = self._rng
        what = rng.randrange(5)
        if what <= 1:
            if not record.get("Finished"):
                record["Finished"] = True
                record["FinishDate"] = self._stamp()
            else:
                record["Finished"] = False
                record["FinishDate"] = None
        elif what == 2:
            shift = rng.choice((-1, 1, 1, 2, 3, 7)) * 86400 + rng.randint(-3, 3) * 3600
            when = datetime.fromisoformat(record.get("DateTime") or self._stamp())
            moved = when.replace(tzinfo=_SAO_PAULO).timestamp() + shift
            record["DateTime"] = _local_hour_stamp(moved)
            if record["DateTime"] == (self._records["Tasks"][record["Id"]].get("DateTime")):
                record["DateTime"] = _local_hour_stamp(moved + 86400)
        elif what == 3:
            current = record.get("Description")
            record["Description"] = rng.choice([n for n in _TASK_NOTES if n != current])
        else:
            record["OwnerId"] = self._other_owner(record.get("OwnerId"))

    # --- deal outcomes --------------------------------------------------------------------

    def _close(self, deal_id: int, action: str) -> Change:
        old = self._records["Deals"][deal_id]
        new = dict(old)
        user = self._actor(old.get("OwnerId"))
        new["StatusId"] = STATUS_WON if action == "Win" else STATUS_LOST
        new["LastStageId"] = old.get("StageId")
        new["FinishDate"] = self._stamp()
        if action == "Lose":
            new["LossReasonId"] = self._prefix + 6600 + self._rng.choice(_LOSS_REASONS)
        else:
            self._set_property(new, self._deal_signed, True)
        self._touch("Deals", new, user)
        self._store("Deals", new)
        return self._change("Deals", action, user, old, new)

    def _reopen(self, deal_id: int) -> Change:
        old = self._records["Deals"][deal_id]
        new = dict(old)
        user = self._actor(old.get("OwnerId"))
        new["StatusId"] = STATUS_OPEN
        new["FinishDate"] = None
        new["LossReasonId"] = None
        self._touch("Deals", new, user)
        self._store("Deals", new)
        return self._change("Deals", "Reopen", user, old, new)


def delivery_body(
    change: Change,
    *,
    account_id: int,
    webhook_id: int | None,
    webhook_creator_id: int | None,
    short_new: bool = False,
) -> dict:
    """Build the JSON body Ploomes would POST for a change (shares the snapshots)."""
    new = change.new
    old = change.old
    if short_new and new is not None and old is not None:
        short = {"Id": new.get("Id")}
        for key, value in new.items():
            if key != "Id" and (key not in old or old[key] != value):
                short[key] = value
        new = short
    return {
        "Action": change.action,
        "Entity": change.entity,
        "SecondaryEntityId": None,
        "AccountId": account_id,
        "ActionUserId": change.action_user_id,
        "WebhookId": webhook_id,
        "WebhookCreatorId": webhook_creator_id,
        "Old": old,
        "New": new,
    }


_DEMO_SUBSCRIPTIONS = (
    ("Contacts", "Create"),
    ("Contacts", "Update"),
    ("Contacts", "Delete"),
    ("Deals", "Create"),
    ("Deals", "Update"),
    ("Deals", "Delete"),
    ("Deals", "Win"),
    ("Deals", "Lose"),
    ("Deals", "Reopen"),
    ("Tasks", "Create"),
    ("Tasks", "Update"),
    ("Tasks", "Delete"),
)


def demo_subscriptions(account_id: int = DEMO_ACCOUNT_ID) -> dict[tuple[str, str], int]:
    """Return the demo account's WebhookId for each subscribed (entity, action)."""
    prefix = (account_id // 1000) * 10000
    return {pair: prefix + 5110 + i for i, pair in enumerate(_DEMO_SUBSCRIPTIONS)}


def demo_deliveries(
    seed: int = 7,
    days: int = 30,
    end: datetime | None = None,
    duplicate_rate: float = 0.02,
    drop_one_update: bool = True,
) -> list[tuple[datetime, dict]]:
    """Return (received_at, body) pairs for a realistic month, with duplicates and one gap."""
    end = datetime.now(UTC) if end is None else end
    if end.tzinfo is None:
        raise ValueError("end must be timezone-aware")
    # a 7-minute mean gap in business hours gives ~2,000 changes a month
    sim = Simulation(seed=seed, start=end - timedelta(days=days), mean_gap_seconds=420.0)
    changes: list[Change] = []
    while True:
        change = sim.step()
        if change.at > end:
            break
        changes.append(change)

    rng = random.Random(seed * 7919 + 17)  # delivery noise, independent of the simulation
    hooks = demo_subscriptions(sim.account_id)
    creator_id = sim.users[0]["Id"]
    second_hook = max(hooks.values()) + 7  # a subscription someone added for Wins, once

    drop = -1
    if drop_one_update:
        # the missed Update needs a delivery of the same record before it (to hold the
        # New it should have replaced) and one after it (whose Old then disagrees)
        seen: dict[tuple[str, int], list[int]] = {}
        for index, change in enumerate(changes):
            seen.setdefault((change.entity, change.record_id), []).append(index)
        candidates = [
            indexes[k]
            for indexes in seen.values()
            for k in range(1, len(indexes) - 1)
            if changes[indexes[k]].action == "Update"
        ]
        if candidates:
            drop = rng.choice(sorted(candidates))
    wins = [i for i, change in enumerate(changes) if change.action == "Win" and i != drop]
    twin = rng.choice(wins) if wins else -1

    deliveries: list[tuple[datetime, dict]] = []
    last_received = end - timedelta(days=days)
    for index, change in enumerate(changes):
        if index == drop:
            continue
        body = delivery_body(
            change,
            account_id=sim.account_id,
            webhook_id=hooks[(change.entity, change.action)],
            webhook_creator_id=creator_id,
        )
        # keep first deliveries in change order: the monitor's gap logic relies on it
        received = max(
            change.at + timedelta(milliseconds=rng.randint(120, 2400)),
            last_received + timedelta(milliseconds=1),
        )
        last_received = received
        deliveries.append((received, body))
        if index == twin:
            other = dict(body, WebhookId=second_hook)
            deliveries.append((received + timedelta(milliseconds=rng.randint(40, 900)), other))
        if rng.random() < duplicate_rate:
            resent = received + timedelta(seconds=rng.uniform(2.0, 45.0))
            deliveries.append((resent, body))
    deliveries.sort(key=lambda pair: pair[0])
    # JSON round trip: every body is independent and guaranteed to be plain JSON
    return [(received, json.loads(json.dumps(body))) for received, body in deliveries]
