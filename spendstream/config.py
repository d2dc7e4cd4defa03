"""Configuration from environment variables (prefix ``SPENDSTREAM_``).

Every process (worker, sink, CLI, demo) reads the same settings, so one set of
variables wires a whole deployment. Defaults run everything on this machine:
a local Kafka broker on loopback and an embedded chDB under the data directory.
"""

from __future__ import annotations

import json
import os
import re
from decimal import Decimal
from pathlib import Path
from typing import Literal
from urllib.parse import urlparse

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from spendstream.errors import UserError
from spendstream.sources.registry import WIRE_KINDS

ENV_PREFIX = "SPENDSTREAM_"


def _default_data_dir() -> Path:
    xdg = os.environ.get("XDG_DATA_HOME")
    base = Path(xdg) if xdg else Path.home() / ".local" / "share"
    return base / "spendstream"


def _default_cache_dir() -> Path:
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg) if xdg else Path.home() / ".cache"
    return base / "spendstream" / "kafka-jars"


class Settings(BaseSettings):
    """All runtime settings. Field name ``x_y`` is read from ``SPENDSTREAM_X_Y``."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, env_file=None, extra="ignore", validate_default=True
    )

    # --- where state lives ---------------------------------------------------------------
    data_dir: Path = Field(
        default_factory=_default_data_dir,
        description="Root for local state: Kafka jars and logs, worker tables, chDB data.",
    )

    # --- Kafka ---------------------------------------------------------------------------
    kafka_bootstrap_servers: str = Field(
        default="",
        description="host:port list of an existing cluster. Empty = use the local broker.",
    )
    kafka_check_s: float | None = Field(
        default=None,
        gt=0,
        le=600,
        description="Seconds a command waits for Kafka to answer before it says Kafka is "
        "unreachable. Empty = 5 (the demo, which may have just started the local broker: 15).",
    )
    kafka_local_port: int = Field(
        default=19092, ge=1024, le=65535, description="Port of the local broker."
    )
    kafka_local_controller_port: int = Field(
        default=19093, ge=1024, le=65535, description="KRaft controller port of the local broker."
    )
    kafka_version: str = Field(
        default="3.9.1", description="Apache Kafka version the local broker resolves via Maven."
    )
    kafka_jars_dir: Path = Field(
        default_factory=_default_cache_dir,
        description="Cache of the Kafka jars Maven resolves, shared by every data directory.",
    )
    kafka_heap: str = Field(default="768m", description="JVM heap of the local broker (-Xmx).")
    kafka_jvm_options: str = Field(
        default="-XX:TieredStopAtLevel=1",
        description="Extra JVM options of the local broker. The default keeps the JIT at its "
        "first tier: on a 2-core machine the full JIT compiled for a whole core during the "
        "broker's first minutes, more than the broker's own work (measured).",
    )
    topic_prefix: str = Field(default="", description="Prefix for every topic name.")
    topic_partitions: int = Field(default=4, ge=1, le=1024, description="Partitions per topic.")
    topic_replication: int = Field(default=1, ge=1, le=16, description="Replication factor.")

    schema_registry_url: str = Field(
        default="",
        description="Confluent Schema Registry URL; empty = Avro single-object encoding.",
    )

    # --- workers -------------------------------------------------------------------------
    app_id: str = Field(default="spendstream", description="Consumer group / faust app id.")
    worker_web_port: int = Field(
        default=6066, ge=1024, le=65535, description="Worker HTTP port (faust web)."
    )
    worker_web_bind: str = Field(
        default="127.0.0.1", description="Address the worker HTTP API binds (0.0.0.0 in Docker)."
    )
    budgets_file: Path | None = Field(
        default=None, description="YAML/JSON budgets published to the budgets topic at start."
    )
    batch_size: int = Field(default=500, ge=1, le=100_000, description="Worker micro-batch size.")
    batch_linger_ms: int = Field(
        default=50, ge=1, le=60_000, description="Worker micro-batch wait."
    )
    worker_gc_threshold: int = Field(
        default=50_000,
        ge=0,
        le=10_000_000,
        description="Allocations between two young-generation garbage collections in a "
        "worker stage (CPython's 700 cost the price stage a quarter of its CPU); 0 keeps "
        "CPython's default.",
    )
    worker_session_timeout_s: int = Field(
        default=10,
        ge=6,
        le=300,
        description="A worker that stops heartbeating (crashed) loses its partitions to the "
        "others after this long.",
    )
    worker_recovery_timeout_s: int = Field(
        default=300,
        ge=10,
        le=86_400,
        description="A worker whose table recovery makes no headway this long restarts.",
    )
    worker_commit_interval_ms: int = Field(
        default=1000,
        ge=10,
        le=60_000,
        description="The aggregator's checkpoint: spend state, statuses and forecast and "
        "anomaly alerts at most this often per budget period (threshold alerts go out at once).",
    )
    worker_trace_batches: bool = Field(
        default=False,
        description="Log every batch's input offsets per topic-partition (traces a record "
        "through rebalances and restarts).",
    )
    dedupe_window_s: int = Field(
        default=86_400,
        ge=60,
        description="A duplicate event_id is dropped if seen within this window (up to 2x).",
    )
    price_catalog: Path | None = Field(
        default=None,
        description="Your price catalog (YAML), layered over the bundled one: negotiated "
        "rates, models genai-prices lacks, Apify and workflow plans.",
    )
    unknown_price: Literal["dlq", "flag"] = Field(
        default="dlq", description="Unknown model/platform: reject to DLQ or pass unpriced."
    )
    max_clock_skew_s: int = Field(
        default=300, ge=0, description="How far in the future occurred_at may be."
    )
    late_periods: int = Field(
        default=1,
        ge=0,
        le=1000,
        description="Past periods a late event may still count toward; older go to the DLQ.",
    )
    alert_cooldown_s: int = Field(
        default=3600, ge=0, description="Minimum gap between two anomaly alerts of a budget."
    )
    anomaly_factor: Decimal = Field(
        default=Decimal(5),
        gt=1,
        description="An hour spending this many times the hourly baseline is an anomaly.",
    )
    forecast_min_elapsed: Decimal = Field(
        default=Decimal("0.1"),
        ge=0,
        le=1,
        description="Fraction of a period that must pass before forecast alerts fire.",
    )
    api_token: SecretStr = Field(
        default=SecretStr(""),
        description="Bearer token the worker HTTP API requires for changes (empty = read-only).",
    )
    api_token_name: str = Field(
        default="api",
        description="Actor recorded for changes made with SPENDSTREAM_API_TOKEN.",
    )
    api_tokens: SecretStr = Field(
        default=SecretStr(""),
        description="Named API tokens, name=token[,name=token...]: a change through the API "
        "records the name of the token it came with as its actor.",
    )

    # --- ClickHouse / sink ----------------------------------------------------------------
    clickhouse_dsn: str = Field(
        default="",
        description="chdb:///path or http(s)://user:pass@host:8123/db. Empty = chDB under data_dir.",
    )
    clickhouse_database: str = Field(default="spendstream", description="Database name.")
    sink_batch_rows: int = Field(default=20_000, ge=1, le=1_000_000, description="Rows per insert.")
    sink_linger_ms: int = Field(default=500, ge=1, le=600_000, description="Max wait for a batch.")
    sink_session_timeout_s: int = Field(
        default=10,
        ge=6,
        le=300,
        description="A sink that stops heartbeating (crashed) releases its partitions to the "
        "next sink after this long.",
    )
    sink_startup_wait_s: float = Field(
        default=300,
        ge=0,
        le=86_400,
        description="How long a starting sink waits for a ClickHouse server to answer.",
    )
    sink_native_avro: bool = Field(
        default=True,
        description="Let ClickHouse decode cost-allocation records itself (FORMAT Avro); "
        "false decodes them in the sink.",
    )
    sink_query_port: int = Field(
        default=8124,
        ge=0,
        le=65535,
        description="Loopback port where a sink holding chDB answers queries (0 = any free).",
    )
    sink_group: str = Field(default="spendstream-sink", description="Sink consumer group.")
    sink_metrics_port: int = Field(
        default=9465,
        ge=0,
        le=65535,
        description="Port of the sink's /metrics, /healthz and /readyz (0 = any free).",
    )
    sink_metrics_bind: str = Field(
        default="127.0.0.1",
        description="Address the sink's metrics port binds (0.0.0.0 in Docker).",
    )

    # --- alert delivery (spendstream notify) ----------------------------------------------
    notify_rules: Path | None = Field(
        default=None,
        description="Routing rules and channels of `spendstream notify` (YAML; see README).",
    )
    notify_group: str = Field(
        default="spendstream-notify", description="Consumer group of `spendstream notify`."
    )
    notify_workers: int = Field(
        default=8, ge=1, le=256, description="Deliveries `spendstream notify` sends at once."
    )
    notify_metrics_port: int = Field(
        default=9466,
        ge=0,
        le=65535,
        description="Port of `spendstream notify`'s /metrics, /healthz and /readyz (0 = any free).",
    )
    notify_metrics_bind: str = Field(
        default="127.0.0.1",
        description="Address `spendstream notify`'s metrics port binds (0.0.0.0 in Docker).",
    )

    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        default="INFO", description="Log level of workers, sink and CLI."
    )

    @field_validator("data_dir")
    @classmethod
    def _absolute_data_dir(cls, value: Path) -> Path:
        return value.expanduser().resolve()

    @field_validator("kafka_bootstrap_servers")
    @classmethod
    def _check_bootstrap(cls, value: str) -> str:
        value = value.strip()
        for server in filter(None, (s.strip() for s in value.split(","))):
            host, _, port = server.rpartition(":")
            if not host or not port.isdigit():
                raise ValueError(f"'{server}' is not host:port (e.g. 127.0.0.1:9092)")
        return value

    @field_validator("clickhouse_dsn")
    @classmethod
    def _check_dsn(cls, value: str) -> str:
        value = value.strip()
        if value and urlparse(value).scheme not in ("chdb", "http", "https"):
            raise ValueError("must start with chdb://, http:// or https://")
        return value

    @field_validator("topic_prefix")
    @classmethod
    def _check_prefix(cls, value: str) -> str:
        allowed = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")
        if not set(value) <= allowed:
            raise ValueError("may only hold letters, digits, '.', '_' and '-'")
        return value

    @field_validator("api_token_name")
    @classmethod
    def _check_token_name(cls, value: str) -> str:
        return _token_name(value.strip())

    @field_validator("api_tokens")
    @classmethod
    def _check_tokens(cls, value: SecretStr) -> SecretStr:
        parse_api_tokens(value.get_secret_value())
        return value

    @model_validator(mode="after")
    def _check_ports(self) -> Settings:
        if self.kafka_local_port == self.kafka_local_controller_port:
            raise ValueError("kafka_local_port and kafka_local_controller_port must differ")
        self.api_token_names()  # the single token must not clash with the named ones
        return self

    def api_token_names(self) -> dict[str, str]:
        """Token -> actor name of every token the worker API accepts for changes: the named
        tokens, and SPENDSTREAM_API_TOKEN under SPENDSTREAM_API_TOKEN_NAME."""
        named = parse_api_tokens(self.api_tokens.get_secret_value())
        single = self.api_token.get_secret_value().strip()
        if single:
            if single in named and named[single] != self.api_token_name:
                raise ValueError(
                    "SPENDSTREAM_API_TOKEN is also in SPENDSTREAM_API_TOKENS under another "
                    f"name ('{named[single]}'): a change could not say who made it"
                )
            if self.api_token_name in named.values() and named.get(single) is None:
                raise ValueError(
                    f"the name '{self.api_token_name}' (SPENDSTREAM_API_TOKEN_NAME) is also a "
                    "name in SPENDSTREAM_API_TOKENS: give each token its own name"
                )
            named[single] = self.api_token_name
        return named

    # --- derived values --------------------------------------------------------------------
    @property
    def uses_local_kafka(self) -> bool:
        return not self.kafka_bootstrap_servers

    @property
    def bootstrap_servers(self) -> str:
        return self.kafka_bootstrap_servers or f"127.0.0.1:{self.kafka_local_port}"

    @property
    def kafka_dir(self) -> Path:
        return self.data_dir / "kafka"

    @property
    def worker_dir(self) -> Path:
        return self.data_dir / "worker"

    @property
    def chdb_path(self) -> Path:
        return self.data_dir / "chdb"

    @property
    def effective_clickhouse_dsn(self) -> str:
        return self.clickhouse_dsn or f"chdb://{self.chdb_path}"

    @property
    def is_embedded_clickhouse(self) -> bool:
        return self.effective_clickhouse_dsn.startswith("chdb://")

    def to_env(self) -> dict[str, str]:
        """These settings as environment variables, to hand to child processes."""
        env = {}
        for name, value in self.model_dump(mode="json").items():
            if value is None:
                continue
            text = json.dumps(value) if isinstance(value, (list, dict)) else str(value)
            env[ENV_PREFIX + name.upper()] = text
        env[ENV_PREFIX + "API_TOKEN"] = self.api_token.get_secret_value()
        env[ENV_PREFIX + "API_TOKENS"] = self.api_tokens.get_secret_value()
        return env

    @property
    def topics(self) -> Topics:
        """A plain property, not cached: ``model_copy(update={"topic_prefix": ...})``
        copies cached values, and the copy then named the original's topics (the pipeline
        benchmark's two-worker run read topics it never loaded)."""
        return Topics(self.topic_prefix)


class Topics:
    """Topic names with the configured prefix applied."""

    #: one input topic per wire kind of source (spendstream/sources/registry.py)
    SOURCES = tuple(f"usage.{wire}" for wire in WIRE_KINDS)

    def __init__(self, prefix: str = "") -> None:
        self.prefix = prefix

    def name(self, base: str) -> str:
        return f"{self.prefix}{base}"

    @property
    def sources(self) -> list[str]:
        return [self.name(t) for t in self.SOURCES]

    @property
    def llm(self) -> str:
        return self.name("usage.llm")

    @property
    def priced(self) -> str:
        return self.name("usage.priced")

    @property
    def dlq(self) -> str:
        return self.name("usage.dlq")

    @property
    def budgets(self) -> str:
        return self.name("budgets")

    @property
    def allocations(self) -> str:
        return self.name("cost-allocations")

    @property
    def status(self) -> str:
        return self.name("budget-status")

    @property
    def alerts(self) -> str:
        return self.name("budget-alerts")

    @property
    def alert_actions(self) -> str:
        """Acknowledgements and resolutions of alerts (compacted, key = alert_id)."""
        return self.name("alert-actions")

    @property
    def alert_deliveries(self) -> str:
        """The delivery log of `spendstream notify`: every attempt, keyed by alert_id."""
        return self.name("alert-deliveries")

    @property
    def alerts_dlq(self) -> str:
        """Alerts a notification channel gave up on, with the channel and the reason."""
        return self.name("alerts.dlq")

    @property
    def fx_rates(self) -> str:
        """Reference exchange rates (compacted, key = base/quote/day; fx.py)."""
        return self.name("fx-rates")

    @property
    def conversions(self) -> str:
        """Allocations the aggregator converted to their budget's currency (conversions/1)."""
        return self.name("allocation-conversions")

    def source_family(self, topic: str) -> str:
        """'usage.llm' (with prefix) -> 'llm'."""
        base = topic[len(self.prefix) :] if topic.startswith(self.prefix) else topic
        return base.split(".", 1)[1] if base.startswith("usage.") else base

    def all_topics(self) -> dict[str, dict[str, str]]:
        """Every topic with its Kafka config; compacted where the latest value is the truth."""
        compacted = {"cleanup.policy": "compact", "min.compaction.lag.ms": "0"}
        configs: dict[str, dict[str, str]] = {t: {} for t in self.sources}
        configs[self.priced] = {}
        configs[self.dlq] = {}
        configs[self.allocations] = {}
        configs[self.alerts] = {}
        configs[self.alert_deliveries] = {}
        configs[self.alerts_dlq] = {}
        configs[self.conversions] = {}
        configs[self.fx_rates] = dict(compacted)
        configs[self.budgets] = dict(compacted)
        configs[self.status] = dict(compacted)
        configs[self.alert_actions] = dict(compacted)
        return configs


#: an API token's name: it becomes the actor of every change made with the token
TOKEN_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$"
#: settings whose values never appear in an error message
SECRET_FIELDS = {"api_token", "api_tokens"}


def _token_name(name: str) -> str:
    if not re.fullmatch(TOKEN_NAME_PATTERN, name):
        raise ValueError(
            f"'{name}' is not a token name: use 1-64 letters, digits, '.', '_', '@' or '-', "
            "starting with a letter or digit"
        )
    return name


def parse_api_tokens(text: str) -> dict[str, str]:
    """``name=token[,name=token...]`` -> {token: name}. Errors name the entry by its
    position and name, never the token."""
    tokens: dict[str, str] = {}
    names: set[str] = set()
    for index, entry in enumerate((e.strip() for e in text.split(",")), start=1):
        if not entry:
            continue
        name, sep, token = entry.partition("=")
        name, token = name.strip(), token.strip()
        if not sep or not token:
            raise ValueError(f"entry {index} is not name=token")
        _token_name(name)
        if name in names:
            raise ValueError(f"the name '{name}' is given twice")
        if token in tokens:
            raise ValueError(f"'{tokens[token]}' and '{name}' have the same token")
        names.add(name)
        tokens[token] = name
    return tokens


class ConfigError(UserError):
    """Raised with a message a person can act on when settings are invalid."""


def load_settings(**overrides: object) -> Settings:
    """Load and validate settings; turn pydantic's report into one readable message."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            field = ".".join(str(p) for p in err["loc"]) or "settings"
            env = ENV_PREFIX + field.upper() if field != "settings" else ENV_PREFIX + "*"
            hidden = field in SECRET_FIELDS or field == "settings"  # the whole input: secrets too
            shown = "" if hidden else f" (got {err.get('input')!r})"
            lines.append(f"  {env}: {err['msg']}{shown}")
        raise ConfigError("invalid configuration:\n" + "\n".join(lines)) from None


def settings_env_names() -> set[str]:
    """Every environment variable name the settings understand."""
    return {ENV_PREFIX + name.upper() for name in Settings.model_fields}
