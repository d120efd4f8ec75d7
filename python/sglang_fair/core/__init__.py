"""Pure-Python scheduling core: the snapshot/plan contract, the cost model, the load estimate.

Nothing in this package imports torch or sglang; the same objects run in the simulator and in the live adapter.
"""
