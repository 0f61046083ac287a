"""Scan operators (torch.library custom ops): `selective_scan_2d` is the Mamba2D 2D selective scan, `selective_scan`
the 1D selective scan (Mamba's S6) with K scan directions (orders from `scan_orders`), `selective_scan_2pass` the
two-pass 2D selective scan of 2DVMamba in the four cross-scan directions,
`state_scan` / `state_fusion` Spatial-Mamba's state-returning scan and structure-aware state fusion, `state_scan_fusion`
both with the C read-out in one op; `depthwise_conv2d` the blocks' depthwise convolutions of channels-last maps
with their residual and activation; `direction_readout` LocalMamba's gated sum over directions with its
LayerNorm and SiLU gate."""
from .depthwise_conv import depthwise_conv2d
from .direction_readout import direction_readout
from .scan2d_ref import selective_scan_2d_naive, selective_scan_2d_ref
from .scan_orders import cross_scan_orders
from .selective_scan import selective_scan
from .selective_scan_2pass import selective_scan_2pass
from .selective_scan_2d import BACKENDS, backend_unavailable_reason, resolve_backend, selective_scan_2d
from .selective_scan_ref import selective_scan_ref
from .state_fusion import merge_dilated_kernels, state_fusion
from .state_scan import state_scan
from .state_scan_fusion import state_scan_fusion

__all__ = ["BACKENDS", "backend_unavailable_reason", "resolve_backend", "selective_scan_2d", "selective_scan_2d_ref",
           "selective_scan_2d_naive",
           "selective_scan", "selective_scan_ref", "cross_scan_orders", "selective_scan_2pass",
           "state_scan", "state_fusion", "state_scan_fusion", "merge_dilated_kernels", "depthwise_conv2d",
           "direction_readout"]
