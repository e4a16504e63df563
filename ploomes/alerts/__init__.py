"""Alerts: rules over what the receiver gets, and notifications through Apprise.

- `rules`: the four kinds of rule (a change, a burst, silence, data quality), their
  checks, storage (`alert_rules`) and the business hours;
- `matching`: whether one event matches a rule (used live and by `backtest`);
- `messages`: the Portuguese messages, with Ploomes' labels and the stored names;
- `decide`: the ingest's hook: rules evaluated once per event inside the stage-2
  transaction, bursts grouped, a rate per rule, and the time-based rules' check;
- `sender`: the alerts' outbox (its own log in `data/alerts/outbox/`), sending through
  the Apprise transport with the outbox's retries; runs in the ingest process;
- `backtest`: "test against the last 30 days";
- `commands`: `python -m ploomes alerts …`.
"""
