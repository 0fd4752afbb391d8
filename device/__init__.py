"""The door device. It refuses at import on a 32-bit OS, before tenseal or dlib fail to load."""

from blindgate.device.platform_check import require_64bit

require_64bit()
