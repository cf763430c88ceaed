"""Pushes to a Pushgateway with the real prometheus_client library, as a batch job would.

Usage: push.py GATEWAY STEP
Each STEP is one call of the library's push API; the Rust test checks the result over HTTP.
Exits non-zero (with the library's exception) when the gateway refuses a push.
"""
import sys

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Summary
from prometheus_client.exposition import delete_from_gateway, push_to_gateway, pushadd_to_gateway


def registry(value):
    reg = CollectorRegistry()
    g = Gauge("job_last_success_unixtime", "Last time the batch job succeeded.", ["stage"], registry=reg)
    g.labels(stage="load").set(value)
    c = Counter("job_records_processed", "Records processed.", registry=reg)
    c.inc(value)
    h = Histogram("job_duration_seconds", "Duration of the job.", buckets=(0.5, 1, 5), registry=reg)
    h.observe(0.7)
    h.observe(3)
    s = Summary("job_batch_size", "Size of the batches.", registry=reg)
    s.observe(12)
    return reg


def main():
    gateway, step = sys.argv[1], sys.argv[2]
    if step == "push":
        push_to_gateway(gateway, job="batch", registry=registry(1), grouping_key={"instance": "host-1"})
    elif step == "pushadd":
        reg = CollectorRegistry()
        Gauge("job_extra", "An extra gauge.", registry=reg).set(7)
        pushadd_to_gateway(gateway, job="batch", registry=reg, grouping_key={"instance": "host-1"})
    elif step == "push_gzip":
        push_to_gateway(gateway, job="gz", registry=registry(2), compression="gzip")
    elif step == "push_base64":
        # Values with '/' and empty values make the library use the @base64 URL form.
        push_to_gateway(gateway, job="path/job", registry=registry(3), grouping_key={"dir": "/var/lib", "empty": ""})
    elif step == "delete":
        delete_from_gateway(gateway, job="batch", grouping_key={"instance": "host-1"})
    elif step == "conflict":
        # Pushing a family under a different type than another group holds must fail (400).
        reg = CollectorRegistry()
        Gauge("job_records_processed_total", "Now a gauge.", registry=reg).set(1)
        push_to_gateway(gateway, job="other", registry=reg)
    else:
        raise SystemExit(f"unknown step {step}")


if __name__ == "__main__":
    main()
