"""The notifier: anomalies to people (e-mail, webhook, apprise) through a durable outbox."""
