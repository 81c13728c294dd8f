"""The tasks kernel: seed 002's operator loop.

Events -> analysis -> tasks -> approval -> dispatch.
"""
