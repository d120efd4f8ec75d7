"""An emulated accelerator clock for the real SGLang server (issue 14).

The CPU runs the real model (small, random weights); after each forward the scheduler waits until the time an
emulated GPU would have taken for exactly that batch, so SGLang's scheduler, the policies and the clients see
GPU-like iteration times. Everything here is *emulated*: the times come from Vidur's operator profiles
(`profiles.py`, `device.py`), never from a fit to this machine.
"""
