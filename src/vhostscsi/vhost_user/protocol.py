"""Numbers of the vhost-user protocol (QEMU docs/interop/vhost-user.rst).

Kept apart from the codec so that the front-end stand-in (`vhostscsi.hostdriver`) and the back end share one
spelling of every request code and feature bit; a typo on one side would otherwise be invisible in tests.
"""

from __future__ import annotations

import enum

HEADER_SIZE = 12
VERSION = 0x1
FLAG_VERSION_MASK = 0x3
FLAG_REPLY = 1 << 2
FLAG_NEED_REPLY = 1 << 3

# The spec's "front-end message" payloads never exceed a memory table (8 regions) or a config space (256 bytes);
# anything larger is a broken or hostile peer, and refusing it keeps a peer from making us buffer gigabytes.
MAX_PAYLOAD = 4096
MAX_FDS = 8
MEMORY_BASELINE_NREGIONS = 8

# vring file payloads carry the ring index in the low byte and this flag when no fd is attached.
VRING_IDX_MASK = 0xFF
VRING_NOFD_MASK = 1 << 8


class Request(enum.IntEnum):
    """Front-end to back-end request codes."""

    NONE = 0
    GET_FEATURES = 1
    SET_FEATURES = 2
    SET_OWNER = 3
    RESET_OWNER = 4
    SET_MEM_TABLE = 5
    SET_LOG_BASE = 6
    SET_LOG_FD = 7
    SET_VRING_NUM = 8
    SET_VRING_ADDR = 9
    SET_VRING_BASE = 10
    GET_VRING_BASE = 11
    SET_VRING_KICK = 12
    SET_VRING_CALL = 13
    SET_VRING_ERR = 14
    GET_PROTOCOL_FEATURES = 15
    SET_PROTOCOL_FEATURES = 16
    GET_QUEUE_NUM = 17
    SET_VRING_ENABLE = 18
    SEND_RARP = 19
    NET_SET_MTU = 20
    SET_BACKEND_REQ_FD = 21
    IOTLB_MSG = 22
    SET_VRING_ENDIAN = 23
    GET_CONFIG = 24
    SET_CONFIG = 25
    CREATE_CRYPTO_SESSION = 26
    CLOSE_CRYPTO_SESSION = 27
    POSTCOPY_ADVISE = 28
    POSTCOPY_LISTEN = 29
    POSTCOPY_END = 30
    GET_INFLIGHT_FD = 31
    SET_INFLIGHT_FD = 32
    GPU_SET_SOCKET = 33
    RESET_DEVICE = 34
    VRING_KICK = 35
    GET_MAX_MEM_SLOTS = 36
    ADD_MEM_REG = 37
    REM_MEM_REG = 38
    SET_STATUS = 39
    GET_STATUS = 40


class ProtocolFeature(enum.IntEnum):
    """Bit numbers of GET/SET_PROTOCOL_FEATURES."""

    MQ = 0
    LOG_SHMFD = 1
    RARP = 2
    REPLY_ACK = 3
    NET_MTU = 4
    BACKEND_REQ = 5
    CROSS_ENDIAN = 6
    CRYPTO_SESSION = 7
    PAGEFAULT = 8
    CONFIG = 9
    BACKEND_SEND_FD = 10
    HOST_NOTIFIER = 11
    INFLIGHT_SHMFD = 12
    RESET_DEVICE = 13
    INBAND_NOTIFICATIONS = 14
    CONFIGURE_MEM_SLOTS = 15
    STATUS = 16


# Virtio device feature bits we care about (virtio 1.x spec, virtio-scsi section).
VIRTIO_SCSI_F_INOUT = 0
VIRTIO_SCSI_F_HOTPLUG = 1
VIRTIO_SCSI_F_CHANGE = 2
VIRTIO_SCSI_F_T10_PI = 3
VIRTIO_F_NOTIFY_ON_EMPTY = 24
VIRTIO_F_ANY_LAYOUT = 27
VIRTIO_RING_F_INDIRECT_DESC = 28
VIRTIO_RING_F_EVENT_IDX = 29
VHOST_USER_F_PROTOCOL_FEATURES = 30
VIRTIO_F_VERSION_1 = 32


def bit(n: int) -> int:
    """Mask of feature bit `n`; spelled as a function so feature sets read as lists of names."""
    return 1 << n


DEFAULT_FEATURES = (
    bit(VIRTIO_F_VERSION_1)
    | bit(VIRTIO_RING_F_EVENT_IDX)
    | bit(VIRTIO_RING_F_INDIRECT_DESC)
    | bit(VIRTIO_SCSI_F_HOTPLUG)
    | bit(VIRTIO_SCSI_F_CHANGE)
    | bit(VHOST_USER_F_PROTOCOL_FEATURES)
)

# QEMU's vhost-user-scsi reads no config space from the back end (it answers config reads itself), so CONFIG is
# not offered; RESET_DEVICE is what newer QEMU uses on device reset; INFLIGHT_SHMFD lets a restarted daemon
# resubmit what it had taken from the rings.
DEFAULT_PROTOCOL_FEATURES = (
    bit(ProtocolFeature.MQ)
    | bit(ProtocolFeature.REPLY_ACK)
    | bit(ProtocolFeature.RESET_DEVICE)
    | bit(ProtocolFeature.INFLIGHT_SHMFD)
)
