"""Live end-to-end tests of the monitoring stack (real Prometheus/Alertmanager, emulated exporters)."""
