"""Alertas: every alert sent or pending, the rules, and a form for every kind of rule
with a test against the last 30 days before saving (changes: admins only, audited)."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from ploomes.actions import alerts as alert_actions
from ploomes.actions.roles import NotAllowed
from ploomes.alerts.backtest import backtest
from ploomes.alerts.commands import describe
from ploomes.alerts.rules import (
    CONDITIONS,
    QUALITY,
    Rule,
    RuleError,
    business_hours,
    check_notify,
    check_spec,
    list_rules,
    masked_notify,
)
from ploomes.config import ConfigError
from ploomes.model.names import ACTION_LABELS, ENTITY_LABELS
from ploomes.queries.alerts import alert_list
from ploomes.store import StoreError
from views import access
from views.common import clear_query_cache, run_query, settings, store, to_local
from views.text import plain

KINDS = {"change": "Mudança", "burst": "Rajada", "silence": "Silêncio",
         "quality": "Qualidade dos dados"}
CONDITION_TEXT = {"any": "qualquer evento", "changed": "mudou", "changed_to": "mudou para",
                  "changed_from": "mudou de", "equals": "igual a", "greater": "maior que",
                  "contains": "contém"}
QUALITY_TEXT = {"gaps": "lacunas de continuidade", "refused": "entregas recusadas",
                "relay_paused": "destino do relay pausado"}
STATUS_TEXT = {"delivered": "entregue", "retrying": "tentando de novo", "failed": "falhou",
               "pending": "pendente", "limited": "não enviado (limite por hora)"}


def _ids(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def _alerts_table(tz: str, default_channel: str) -> None:
    st.subheader("Alertas enviados e pendentes")
    found = run_query(alert_list, 500)
    if found.empty:
        st.info("Nenhum alerta ainda.")
        return
    st.dataframe(pd.DataFrame({
        "Quando": to_local(found["fired_at"], tz).dt.strftime("%d/%m/%Y %H:%M:%S"),
        "Regra": found["rule_name"],
        "Evento": found["event_id"],
        "Canal": found["channel"].fillna(default_channel),
        "Tentativas": found["attempts"],
        "Situação": found["status"].map(lambda s: STATUS_TEXT.get(s, s)),
        "Último erro": found["last_error"],
        "Mensagem": found["title"],
    }), hide_index=True, key="alerts_table")


def _rules_table(rules: list[Rule], is_admin: bool) -> None:
    st.subheader("Regras")
    if not rules:
        st.info("Nenhuma regra. Crie uma abaixo, ou com `python -m ploomes alerts add`.")
        return
    st.dataframe(pd.DataFrame({
        "Nome": [r.name for r in rules],
        "Tipo": [KINDS[r.kind] for r in rules],
        "Condições": [describe(r.kind, r.spec) for r in rules],
        "Situação": ["silenciada" if r.muted else "ativa" for r in rules],
        "Limite/h": [r.per_hour for r in rules],
        "Notificar": [masked_notify(r.notify) for r in rules],
    }), hide_index=True, key="rules_table")
    if not is_admin:
        return
    names = [r.name for r in rules]
    chosen = st.selectbox("Regra", names, key="rule_chosen")
    rule = next(r for r in rules if r.name == chosen)
    cols = st.columns(2)
    if rule.muted:
        if cols[0].button("Reativar", key="rule_unmute"):
            _do(lambda: alert_actions.set_muted(_actor(), settings(), store(), chosen, False),
                f"Regra {chosen} ativa de novo.")
    elif cols[0].button("Silenciar", key="rule_mute"):
        _do(lambda: alert_actions.set_muted(_actor(), settings(), store(), chosen, True),
            f"Regra {chosen} silenciada.")
    if cols[1].button("Remover", key="rule_remove"):
        _do(lambda: alert_actions.remove(_actor(), settings(), store(), chosen),
            f"Regra {chosen} removida.")


def _actor():
    return access.current().actor


def _do(action, done: str) -> None:
    try:
        action()
    except (RuleError, NotAllowed, StoreError) as exc:
        st.error(plain(exc))
        return
    clear_query_cache()
    st.session_state["alerts_notice"] = done
    st.rerun()


def _form_spec(kind: str) -> tuple[dict, str]:
    """Return the conditions the form describes, and the rule's name."""
    name = st.text_input("Nome da regra", key="new_name")
    spec: dict = {}
    if kind in ("change", "burst"):
        entity = st.selectbox("Entidade", ["", *ENTITY_LABELS], key="new_entity",
                              format_func=lambda e: ENTITY_LABELS[e][0] if e else "qualquer")
        spec["entity"] = entity or None
        spec["actions"] = st.multiselect("Ações", list(ACTION_LABELS), key="new_actions",
                                         format_func=lambda a: ACTION_LABELS[a][0])
        spec["condition"] = st.selectbox("Condição", list(CONDITIONS), key="new_condition",
                                         format_func=lambda c: CONDITION_TEXT[c])
        if spec["condition"] != "any":
            spec["field"] = st.text_input("Campo (chave do Ploomes: Amount, StageId, "
                                          "contact_check…)", key="new_field")
        if spec["condition"] in ("changed", "changed_from"):
            spec["from"] = st.text_input("Valor antes (vazio: qualquer)", key="new_from")
        if spec["condition"] in ("changed", "changed_to"):
            spec["to"] = st.text_input("Valor depois (vazio: qualquer)", key="new_to")
        if spec["condition"] in ("equals", "greater", "contains"):
            spec["value"] = st.text_input("Valor", key="new_value")
        spec["users"] = _ids(st.text_input("Só destes usuários (ids, separados por vírgula)",
                                           key="new_users"))
        spec["not_users"] = _ids(st.text_input("Exceto estes usuários (ids)",
                                               key="new_not_users"))
        spec["accounts"] = _ids(st.text_input("Só destas contas (ids)", key="new_accounts"))
        if kind == "burst":
            spec["count"] = st.number_input("Pelo menos N eventos", min_value=2, value=20,
                                            key="new_count")
            spec["minutes"] = st.number_input("…de um usuário em M minutos", min_value=1.0,
                                              value=10.0, key="new_minutes")
    elif kind == "silence":
        spec["minutes"] = st.number_input("Sem entregas por X minutos (em horário "
                                          "comercial)", min_value=1.0, value=60.0,
                                          key="new_minutes")
        spec["entity"] = st.selectbox(
            "Entidade", ["", *ENTITY_LABELS], key="new_entity",
            format_func=lambda e: ENTITY_LABELS[e][0] if e else "todas") or None
        webhook = st.text_input("Ou só uma inscrição (WebhookId)", key="new_webhook")
        spec["webhook_id"] = webhook.strip() or None
    else:
        spec["what"] = st.selectbox("O que observar", list(QUALITY), key="new_what",
                                    format_func=lambda q: QUALITY_TEXT[q])
        if spec["what"] != "relay_paused":
            spec["count"] = st.number_input("Pelo menos", min_value=1, value=5, key="new_count")
            spec["minutes"] = st.number_input("em minutos", min_value=1.0, value=60.0,
                                              key="new_minutes")
    return spec, name


def _new_rule_form() -> None:
    st.subheader("Nova regra")
    kind = st.radio("Tipo", list(KINDS), key="new_kind", format_func=lambda k: KINDS[k],
                    horizontal=True)
    spec, name = _form_spec(kind)
    notify = st.text_input("Notificar (endereço Apprise: mailto://, json://, slack://, "
                           "msteams://, tgram://…; vazio: PLOOMES_ALERTS_NOTIFY)",
                           key="new_notify", type="password")
    per_hour = st.number_input("No máximo N mensagens por hora", min_value=1, value=30,
                               key="new_per_hour")
    cols = st.columns(2)
    if cols[0].button("Testar contra os últimos 30 dias", key="new_test"):
        try:
            rule = Rule(0, name or "(nova)", kind, check_spec(kind, spec))
            result = run_query(backtest, rule, 30.0, business_hours(settings()))
        except (RuleError, ConfigError) as exc:
            st.error(plain(exc))
        else:
            st.info(f"Teria disparado {result.fired} vezes nos últimos 30 dias.")
            if result.note:
                st.caption(plain(result.note))
            if result.rows:
                st.dataframe(pd.DataFrame(result.rows), hide_index=True, key="new_test_rows")
    if cols[1].button("Salvar regra", key="new_save", type="primary"):
        try:
            check_notify(notify)
        except RuleError as exc:
            st.error(plain(exc))
            return
        _do(lambda: alert_actions.add(_actor(), settings(), store(), name, kind, spec,
                                      notify or None, int(per_hour)),
            f"Regra {name} criada.")


def render() -> None:
    """Render the Alerts page."""
    who = access.current()
    cfg = settings()
    st.title("Alertas")
    st.caption("Regras avaliadas uma vez por evento ao serem processados; silêncio e "
               "qualidade dos dados a cada poucos segundos. Mensagens pelo Apprise, com "
               "novas tentativas enquanto o canal falhar.")
    notice = st.session_state.pop("alerts_notice", None)
    if notice:
        st.success(plain(notice))
    default = cfg.alerts_notify.split("://", 1)[0] if cfg.alerts_notify else "(nenhum)"
    _alerts_table(cfg.timezone, f"{default} (padrão)")
    try:
        rules = list_rules(store())
    except StoreError as exc:
        st.error(plain(exc))
        return
    _rules_table(rules, who.is_admin)
    if who.is_admin:
        _new_rule_form()
    else:
        st.caption("Só administradores criam ou mudam regras (PLOOMES_DASHBOARD_ADMINS).")
    st.caption(f"Horário comercial: dias {plain(cfg.business_days)} (0 = segunda), "
               f"{plain(cfg.business_hours)}, {plain(cfg.timezone)}. Endereço padrão: "
               f"{plain(masked_notify(cfg.alerts_notify))}.")


render()
