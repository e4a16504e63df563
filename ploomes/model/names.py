"""Ploomes' own names: entities, actions and built-in fields as Ploomes shows them.

Each name is a pair (Portuguese, English): the Portuguese one is what Ploomes' own
screens say (Clientes, Negócios, Responsável, Estágio…), the English one is kept beside
it for an interface in English. `LANGUAGE` is the one shown by default.

Built-in fields that hold an id are named here too (`VALUE_KINDS`): which of the API's
lookups (`Deals@Stages`, `Users`, `Tags`…) or which records (a `ContactId` names a
contact) say what the id means. Values with a fixed meaning (a deal's `StatusId`, a
contact's `TypeId`) are in `FIXED_VALUES`.
"""

from __future__ import annotations

from typing import Final

from ploomes.model.vocabulary import OTHER_PREFIX

Label = tuple[str, str]  # (Portuguese, English)
LANGUAGES: Final = ("pt", "en")
LANGUAGE = "pt"

ENTITY_LABELS: dict[str, Label] = {
    "Contacts": ("Clientes", "Contacts"),
    "Deals": ("Negócios", "Deals"),
    "Orders": ("Vendas", "Orders"),
    "Quotes": ("Propostas", "Quotes"),
    "Tasks": ("Tarefas", "Tasks"),
    "Products": ("Produtos", "Products"),
    "Leads": ("Leads", "Leads"),
    "OrderSections": ("Seções de venda", "Order sections"),
    "QuoteSections": ("Seções de proposta", "Quote sections"),
    "QuoteProducts": ("Produtos de proposta", "Quote products"),
    "OrderProducts": ("Produtos de venda", "Order products"),
    "InteractionRecords": ("Registros de interação", "Interaction records"),
}

ACTION_LABELS: dict[str, Label] = {
    "Create": ("Criação", "Create"),
    "Update": ("Alteração", "Update"),
    "Delete": ("Exclusão", "Delete"),
    "Win": ("Ganho", "Win"),
    "Lose": ("Perda", "Lose"),
    "Reopen": ("Reabertura", "Reopen"),
    "Finish": ("Finalização", "Finish"),
}

# Fields every record has.
_COMMON: dict[str, Label] = {
    "Id": ("Código", "Id"),
    "OwnerId": ("Responsável", "Owner"),
    "CreatorId": ("Criador", "Created by"),
    "UpdaterId": ("Atualizador", "Updated by"),
    "CreateDate": ("Data de criação", "Created on"),
    "LastUpdateDate": ("Data de atualização", "Updated on"),
    "Tags": ("Marcadores", "Tags"),
    "OtherProperties": ("Campos personalizados", "Custom fields"),
    "Description": ("Descrição", "Description"),
    "CurrencyId": ("Moeda", "Currency"),
    "Amount": ("Valor", "Amount"),
    "Discount": ("Desconto", "Discount"),
    "ContactId": ("Cliente", "Client"),
    "ContactName": ("Nome do cliente", "Client name"),
    "PersonId": ("Contato", "Contact person"),
    "DealId": ("Negócio", "Deal"),
    "Date": ("Data", "Date"),
    "StageId": ("Estágio", "Stage"),
}

FIELD_LABELS: dict[str, dict[str, Label]] = {
    "Contacts": {
        "Name": ("Nome", "Name"),
        "LegalName": ("Razão social", "Legal name"),
        "TypeId": ("Tipo", "Type"),
        "Register": ("CPF/CNPJ", "Tax id (CPF/CNPJ)"),
        "CNPJ": ("CNPJ", "CNPJ"),
        "CPF": ("CPF", "CPF"),
        "Email": ("E-mail", "E-mail"),
        "Phones": ("Telefones", "Phones"),
        "StatusId": ("Status", "Status"),
        "Note": ("Observação", "Note"),
        "Website": ("Site", "Website"),
        "ZipCode": ("CEP", "Postal code"),
        "StreetAddress": ("Endereço", "Street address"),
        "StreetAddressNumber": ("Número", "Number"),
        "StreetAddressLine2": ("Complemento", "Address line 2"),
        "Neighborhood": ("Bairro", "Neighbourhood"),
        "CityId": ("Cidade", "City"),
        "StateId": ("Estado", "State"),
        "CountryId": ("País", "Country"),
        "CompanyId": ("Empresa", "Company"),
        "RoleId": ("Cargo", "Role"),
        "DepartmentId": ("Departamento", "Department"),
        "LineOfBusinessId": ("Ramo de atividade", "Line of business"),
        "OriginId": ("Origem", "Origin"),
        "Birthday": ("Aniversário", "Birthday"),
        "NumberOfEmployeesId": ("Número de funcionários", "Number of employees"),
    },
    "Deals": {
        "Title": ("Título", "Title"),
        "PipelineId": ("Funil", "Pipeline"),
        "StatusId": ("Situação", "Status"),
        "LastStageId": ("Último estágio", "Last stage"),
        "LossReasonId": ("Motivo de perda", "Loss reason"),
        "StartAmount": ("Valor inicial", "Initial amount"),
        "StartDate": ("Data de início", "Start date"),
        "FinishDate": ("Data de finalização", "Close date"),
        "DaysInStage": ("Dias no estágio", "Days in stage"),
        "HoursInStage": ("Horas no estágio", "Hours in stage"),
    },
    "Tasks": {
        "Title": ("Assunto", "Subject"),
        "TypeId": ("Tipo", "Type"),
        "DateTime": ("Data", "Date"),
        "Finished": ("Finalizada", "Finished"),
        "FinishDate": ("Data de finalização", "Finished on"),
        "Pending": ("Pendente", "Pending"),
    },
    "Orders": {
        "OrderNumber": ("Número", "Number"),
        "QuoteId": ("Proposta", "Quote"),
        "DocumentUrl": ("Documento", "Document"),
    },
    "Quotes": {
        "QuoteNumber": ("Número", "Number"),
        "ReviewNumber": ("Revisão", "Revision"),
        "ExpirationDate": ("Validade", "Valid until"),
        "Notes": ("Observações", "Notes"),
        "ApprovalStatusId": ("Status de aprovação", "Approval status"),
        "DocumentUrl": ("Documento", "Document"),
    },
    "Products": {
        "Name": ("Nome", "Name"),
        "Code": ("Código", "Code"),
        "GroupId": ("Grupo", "Group"),
        "FamilyId": ("Família", "Family"),
        "UnitPrice": ("Preço unitário", "Unit price"),
        "MeasurementUnit": ("Unidade de medida", "Unit of measure"),
        "Suspended": ("Suspenso", "Suspended"),
    },
}

# Kinds of id values: a lookup the directory sync copies (`lookups.kind`), `user`, or a
# record of an entity (`record:Contacts`).
USER = "user"
STAGE = "stage"
PIPELINE = "pipeline"
TAG = "tag"
LOSS_REASON = "loss_reason"
TASK_TYPE = "task_type"
ORDER_STAGE = "order_stage"
PRODUCT_GROUP = "product_group"
PRODUCT_FAMILY = "product_family"
DEAL_STATUS = "deal_status"
CONTACT_TYPE = "contact_type"
RECORD_PREFIX = "record:"
CONTACT = RECORD_PREFIX + "Contacts"
DEAL = RECORD_PREFIX + "Deals"

_USER_FIELDS = {"OwnerId": USER, "CreatorId": USER, "UpdaterId": USER}
VALUE_KINDS: dict[str, dict[str, str]] = {
    "Contacts": {**_USER_FIELDS, "TypeId": CONTACT_TYPE, "CompanyId": CONTACT},
    "Deals": {**_USER_FIELDS, "StageId": STAGE, "LastStageId": STAGE, "PipelineId": PIPELINE,
              "StatusId": DEAL_STATUS, "LossReasonId": LOSS_REASON, "ContactId": CONTACT,
              "PersonId": CONTACT},
    "Tasks": {**_USER_FIELDS, "TypeId": TASK_TYPE, "ContactId": CONTACT, "DealId": DEAL},
    "Orders": {**_USER_FIELDS, "StageId": ORDER_STAGE, "ContactId": CONTACT, "DealId": DEAL,
               "PersonId": CONTACT},
    "Quotes": {**_USER_FIELDS, "ContactId": CONTACT, "DealId": DEAL, "PersonId": CONTACT},
    "Products": {**_USER_FIELDS, "GroupId": PRODUCT_GROUP, "FamilyId": PRODUCT_FAMILY},
}

# Ids whose meaning is fixed in Ploomes (a lookup synced from the account wins over these).
FIXED_VALUES: dict[str, dict[int, Label]] = {
    DEAL_STATUS: {1: ("Em aberto", "Open"), 2: ("Ganho", "Won"), 3: ("Perdido", "Lost")},
    CONTACT_TYPE: {1: ("Empresa", "Company"), 2: ("Pessoa", "Person")},
}


def pick(label: Label, lang: str = LANGUAGE) -> str:
    """Return the label's name in `lang` ('pt' or 'en')."""
    return label[1] if lang == "en" else label[0]


def entity_label(entity: str | None, lang: str = LANGUAGE) -> str:
    """Return an entity's name as Ploomes shows it (the API name when unknown)."""
    if entity is None:
        return ""
    known = ENTITY_LABELS.get(entity)
    return pick(known, lang) if known else entity


def action_label(action: str | None, lang: str = LANGUAGE) -> str:
    """Return an action's name as Ploomes shows it (the API name when unknown)."""
    if action is None:
        return ""
    known = ACTION_LABELS.get(action)
    return pick(known, lang) if known else action


def builtin_field_label(entity: str | None, path: str, lang: str = LANGUAGE) -> str | None:
    """Return a built-in field's name as Ploomes shows it, or None (custom or unknown)."""
    if path.startswith(OTHER_PREFIX):
        return None
    known = FIELD_LABELS.get(entity or "", {}).get(path) or _COMMON.get(path)
    return pick(known, lang) if known else None


def value_kind(entity: str | None, path: str) -> str | None:
    """Return what names the ids a built-in field holds (a lookup kind, `user`, or a
    record entity), or None."""
    return VALUE_KINDS.get(entity or "", {}).get(path)


def fixed_value(kind: str, value: int, lang: str = LANGUAGE) -> str | None:
    """Return the fixed name of an id of `kind` (a deal's status…), or None."""
    known = FIXED_VALUES.get(kind, {}).get(value)
    return pick(known, lang) if known else None
