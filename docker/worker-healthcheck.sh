#!/bin/sh
# The worker serves its Prometheus metrics on KEDIT_WORKER_METRICS_PORT; a scrape that answers
# means the process is up (a standby worker is healthy too: it is waiting for the writer lock).
exec curl -fsS "http://127.0.0.1:${KEDIT_WORKER_METRICS_PORT:-9100}/metrics" -o /dev/null
