"""The Kafka layer: every Kafka client of the project, built from one `KafkaSettings`.

- `settings`: `KafkaSettings` from `client.properties`, the environment and flags;
- `clients`: aiokafka producers, consumers and admin clients, the Faust app's options;
- `topics`: creating topics from `schemas.topics` specs, describing and deleting them;
- `archive`: reading a topic by time or offset range;
- `send`: sending records in order, at a rate;
- `errors`: one-line explanations of connection, TLS, SASL and ACL failures;
- `cli`: the `--kafka-config`, `--bootstrap` and `--kafka-set` options.

It imports only `schemas` and the Kafka client libraries, so `stream_app` and
`batch_training` both use it without importing each other.
"""

from kafka_io.settings import DEFAULT_BOOTSTRAP, KafkaConfigError, KafkaSettings, load_settings

__all__ = ["DEFAULT_BOOTSTRAP", "KafkaConfigError", "KafkaSettings", "load_settings"]
