"""The audit trail: redaction, HMAC-chained records, sinks, the writer process and the compliance report."""
