"""Prometheus metrics, in a registry of their own per sidecar (so tests can run several)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge

ENTITLEMENT_STATES = ("pending", "entitled", "denied")


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.entitlement = Gauge(
            "metering_entitlement_state",
            "1 for the sidecar's current entitlement state (pending, entitled or denied)",
            ["state"],
            registry=self.registry,
        )
        self.register_calls = Counter(
            "metering_register_usage_calls",
            "RegisterUsage calls by purpose (start or attest) and outcome (ok, retryable error code, fatal error code)",
            ["purpose", "outcome"],
            registry=self.registry,
        )
        self.attest_requests = Counter(
            "metering_attest_requests",
            "POST /v1/entitlement/attest answers by result (fresh, cached, rate_limited, refused, error)",
            ["result"],
            registry=self.registry,
        )
        self.events = Counter(
            "metering_usage_events",
            "usage events by result: accepted, duplicate (a repeated event_id), refused (bad input)",
            ["result"],
            registry=self.registry,
        )
        self.records = Counter(
            "metering_records",
            "hourly MeterUsage records by outcome: sent, retried (a failed attempt), rejected, carried",
            ["outcome"],
            registry=self.registry,
        )
        self.pending = Gauge(
            "metering_pending_quantity",
            "usage not yet acknowledged by AWS (open and sealed hours), per dimension",
            ["dimension"],
            registry=self.registry,
        )
        self.oldest_unsent = Gauge(
            "metering_oldest_unsent_seconds",
            "how long the oldest sealed, unsent record has waited since its hour closed (0 if none)",
            registry=self.registry,
        )
        self.set_entitlement("pending")

    def set_entitlement(self, state: str) -> None:
        for name in ENTITLEMENT_STATES:
            self.entitlement.labels(state=name).set(1 if name == state else 0)
