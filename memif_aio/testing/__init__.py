"""Test helpers for memif_aio users: a pytest plugin and a DPDK testpmd driver."""
