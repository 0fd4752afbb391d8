"""The lock relay on gpiozero's mock pins: locked at start, on close and on leaving `with`."""

import pytest

from blindgate.device.lock import DoorLock, Lock, LockClosed, make_pin_factory
from blindgate.shared.config import ConfigError
from blindgate.shared.errors import BlindgateError


def test_lock_is_a_door_lock():
    lock: DoorLock = Lock("GPIO24", pin_factory="mock")  # mypy checks the protocol here
    lock.unlock()
    assert not lock.is_locked
    lock.close()
    assert lock.is_locked


def test_locked_at_start_unlock_lock_active_high():
    lock = Lock("GPIO17", active_high=True, pin_factory="mock")
    pin = lock.pin
    assert lock.is_locked and pin.state == 0
    lock.unlock()
    assert not lock.is_locked and pin.state == 1
    lock.lock()
    assert lock.is_locked and pin.state == 0
    lock.close()


def test_active_low_relay_idles_high():
    lock = Lock("GPIO27", active_high=False, pin_factory="mock")
    pin = lock.pin
    assert lock.is_locked and pin.state == 1
    lock.unlock()
    assert pin.state == 0 and not lock.is_locked
    lock.close()
    assert pin.state == 1


def test_close_and_context_exit_lock_the_door():
    with Lock("GPIO22", pin_factory="mock") as lock:
        pin = lock.pin
        lock.unlock()
        assert pin.state == 1
    assert pin.state == 0 and lock.is_locked
    lock.close()  # idempotent
    with pytest.raises(LockClosed) as caught:
        lock.unlock()
    assert isinstance(caught.value, (RuntimeError, BlindgateError))
    assert pin.state == 0


def test_exception_inside_with_still_locks():
    with pytest.raises(ZeroDivisionError):
        with Lock("GPIO23", pin_factory="mock") as lock:
            pin = lock.pin
            lock.unlock()
            raise ZeroDivisionError
    assert pin.state == 0


def test_unknown_pin_factory_is_an_error():
    with pytest.raises(ConfigError, match="unknown pin factory 'bogus'"):
        make_pin_factory("bogus")
    assert make_pin_factory("") is None
