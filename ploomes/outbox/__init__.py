"""The outbox: durable sending with retries, per-key order and a log of every attempt.

Shared by everything that sends what the receiver accepted onward: the relay
(`ploomes.relay`, HTTP to a company's own integrations) and, later, the alerts (another
transport). The parts:

- `schedule`: the retry schedule (Svix's by default) and the classification of an answer;
- `records`: the attempt record and the log's record kinds;
- `log`: the append-only durable log in `data/outbox/` (the journal's format; the
  sending process is its single writer) and the state rebuilt from it at start;
- `engine`: the queue (one message at a time per order key, keys in parallel), the
  worker threads, the per-target limits and the attempt bookkeeping;
- `tables`: the log's attempts as DuckDB rows (`outbox_attempts`, `outbox_messages`),
  written by the ingest process, the store's single writer.
"""
