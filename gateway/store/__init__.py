"""Persistence: SQLAlchemy 2 async over SQLite (default) or PostgreSQL."""

from gateway.store.models import Agent, Approval, Message, Run, Step, Tool
from gateway.store.store import Store, new_id, now_iso

__all__ = [
    "Agent",
    "Approval",
    "Message",
    "Run",
    "Step",
    "Store",
    "Tool",
    "new_id",
    "now_iso",
]
