"""Scan operators. `selective_scan_2d` is the Mamba2D 2D selective scan (a torch.library custom op)."""
from .scan2d_ref import selective_scan_2d_naive, selective_scan_2d_ref
from .selective_scan_2d import BACKENDS, backend_unavailable_reason, resolve_backend, selective_scan_2d

__all__ = ["BACKENDS", "backend_unavailable_reason", "resolve_backend", "selective_scan_2d", "selective_scan_2d_ref",
           "selective_scan_2d_naive"]
