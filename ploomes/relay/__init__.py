"""The relay: every accepted delivery forwarded to the company's own integrations.

- `destinations`: what a destination is, its checks and its storage (a small 0600 file
  in the data dir that the command line, the dashboard and the forwarder share);
- `urls`: which URLs may be destinations (http/https, never the receiver itself; private
  and loopback addresses allowed and said so);
- `matching`: which deliveries a destination takes, and each delivery's order key;
- `transport`: the HTTP request of one attempt (Standard Webhooks signatures or the
  Ploomes key passed through), on kept-alive connections;
- `replays`: replay requests, a spool of small files the forwarder takes;
- `forwarder`: the forwarder process the receiver starts and watches;
- `metrics`: its figures on the receiver's /metrics;
- `command_line`: `python -m ploomes relay …`.

What the pages read of the attempts in DuckDB is `ploomes.queries.relay`; the dashboard's
changes go through `ploomes.actions.relay` (admins, audited).

The sending machinery (queue, retries, attempt log) is `ploomes.outbox`, shared with
the alerts.
"""
