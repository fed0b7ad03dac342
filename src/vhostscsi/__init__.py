"""vhostscsi: a vhost-scsi target in Python.

One declarative configuration (targetcli's saveconfig.json schema) served by two engines: our own
vhost-user-scsi data plane in userspace, and the kernel's LIO through configfs.
"""

__version__ = "0.1.0"
