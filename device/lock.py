"""The door's lock relay, the only thing the agent drives on the GPIO header.

A `Lock` wraps one gpiozero `DigitalOutputDevice`: "active" means UNLOCKED (the relay energised),
so a device that is off, reset, closed or crashed is locked. The lock is locked when created and
again when closed (also on leaving a `with` block).

`DoorLock` is the seam the agent is typed against: `Lock` is its real implementation, and
off the Pi `pin_factory="mock"` runs that same class on gpiozero's MockFactory (tests read the
physical level back with `lock.pin.state`).
"""

from __future__ import annotations

import threading
from types import TracebackType
from typing import Protocol

from gpiozero import DigitalOutputDevice, Factory, Pin

from blindgate.shared.config import ConfigError
from blindgate.shared.errors import BlindgateError


class LockClosed(BlindgateError, RuntimeError):
    """The lock was closed (its pin released): it stays locked and cannot be driven any more."""


class DoorLock(Protocol):
    """What the agent needs of a door lock; fail-secure: anything but a current `unlock()` is locked."""

    @property
    def is_locked(self) -> bool: ...

    def lock(self) -> None: ...

    def unlock(self) -> None: ...

    def close(self) -> None: ...


def make_pin_factory(name: str) -> Factory | None:
    """The gpiozero pin factory a config names; None lets gpiozero choose (lgpio on a Pi 5...).

    Each backend is imported only when named: most need their C library, present only on a Pi.
    """
    name = (name or "").strip().lower()
    if not name:
        return None
    if name == "mock":
        from gpiozero.pins.mock import MockFactory

        return MockFactory()
    if name == "lgpio":
        from gpiozero.pins.lgpio import LGPIOFactory

        return LGPIOFactory()
    if name == "rpigpio":
        from gpiozero.pins.rpigpio import RPiGPIOFactory

        return RPiGPIOFactory()
    if name == "pigpio":
        from gpiozero.pins.pigpio import PiGPIOFactory

        return PiGPIOFactory()
    if name == "native":
        from gpiozero.pins.native import NativeFactory

        return NativeFactory()
    raise ConfigError(f"unknown pin factory {name!r}: use mock, lgpio, rpigpio, pigpio, native or leave empty")


class Lock:
    """The gpiozero `DoorLock`: one output pin, locked unless explicitly and currently unlocked."""

    def __init__(self, pin: str | int = "GPIO17", active_high: bool = True, pin_factory: str = "") -> None:
        self._guard = threading.Lock()
        self._device = DigitalOutputDevice(
            pin, active_high=active_high, initial_value=False, pin_factory=make_pin_factory(pin_factory)
        )
        self._closed = False

    @property
    def pin(self) -> Pin:
        """The gpiozero pin object (tests read `.state` on a mock pin: the physical level)."""
        return self._device.pin

    @property
    def is_locked(self) -> bool:
        with self._guard:
            return self._closed or not self._device.value

    def unlock(self) -> None:
        with self._guard:
            if self._closed:
                raise LockClosed("lock is closed")
            self._device.on()

    def lock(self) -> None:
        with self._guard:
            if not self._closed:
                self._device.off()

    def close(self) -> None:
        """Lock, then release the pin. Safe to call more than once."""
        with self._guard:
            if self._closed:
                return
            try:
                self._device.off()
            finally:
                self._closed = True
                self._device.close()

    def __enter__(self) -> Lock:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()
