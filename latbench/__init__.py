"""latbench: hardware latency lookup tables and on-device profiling for hardware-aware NAS."""
__version__ = "0.1.0"
