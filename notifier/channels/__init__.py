"""Channels: one module per way of telling people (e-mail, each social platform, webhooks, outbox)."""
