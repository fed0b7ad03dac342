"""The QEMU stand-in: guest RAM in a memfd, split rings in it, and the vhost-user front end over a real socket.

Integration tests and benchmarks drive the daemon through it exactly as QEMU and a guest driver would, and can
also send what neither would (malformed descriptors) to check the back end refuses it cleanly.
"""
