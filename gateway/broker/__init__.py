"""Per-run event logs and fan-out: memory (default); Redis for several processes."""

from gateway.broker.base import Broker, LogInfo, Sink, find_log
from gateway.broker.memory import MemoryBroker
from gateway.broker.redis import RedisBroker

__all__ = ["Broker", "LogInfo", "MemoryBroker", "RedisBroker", "Sink", "find_log"]
