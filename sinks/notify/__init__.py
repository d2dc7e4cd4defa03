"""Alert delivery (`spendstream notify`): routing rules, channels, retries, delivery log.

``config`` reads and checks the rules file (``NotifyRules``), ``service_config`` holds
the service's own settings (``NotifyConfig``, built from ``Settings`` at the edge),
``routing`` picks an alert's channels, ``channels`` sends (webhook, Slack, email),
``dispatch`` schedules attempts, retries, rate limits and digests without Kafka, and
``service`` wires it to the alerts topic.
"""

from spendstream.errors import SpendstreamError


class NotifyError(SpendstreamError, RuntimeError):
    """Delivery cannot go on: the delivery log or dead letters could not be written."""
