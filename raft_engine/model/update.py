"""The recurrent update operator: motion encoder, convolutional GRU, flow head and upsampling-mask head.

Names follow the published code (`encoder`, `gru`, `flow_head`, `mask`) so its checkpoints load by name.
Each block runs in the dtype of its weights (half precision in the mixed modes); the caller keeps the
coordinates and the correlation in float32 and casts what it hands over.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from raft_engine.model.config import RAFTConfig


class BasicMotionEncoder(nn.Module):
    """RAFT-large: correlation (324 ch) and flow (2 ch) -> 126 features, with the flow appended (128)."""

    def __init__(self, corr_channels: int) -> None:
        super().__init__()
        self.convc1 = nn.Conv2d(corr_channels, 256, 1)
        self.convc2 = nn.Conv2d(256, 192, 3, padding=1)
        self.convf1 = nn.Conv2d(2, 128, 7, padding=3)
        self.convf2 = nn.Conv2d(128, 64, 3, padding=1)
        self.conv = nn.Conv2d(64 + 192, 128 - 2, 3, padding=1)
        self.out_channels = 128

    def forward(self, flow: torch.Tensor, corr: torch.Tensor) -> torch.Tensor:
        cor = F.relu(self.convc2(F.relu(self.convc1(corr))))
        flo = F.relu(self.convf2(F.relu(self.convf1(flow))))
        out = F.relu(self.conv(torch.cat([cor, flo], dim=1)))
        return torch.cat([out, flow], dim=1)


class SmallMotionEncoder(nn.Module):
    """RAFT-small: correlation (196 ch) and flow -> 80 features, with the flow appended (82)."""

    def __init__(self, corr_channels: int) -> None:
        super().__init__()
        self.convc1 = nn.Conv2d(corr_channels, 96, 1)
        self.convf1 = nn.Conv2d(2, 64, 7, padding=3)
        self.convf2 = nn.Conv2d(64, 32, 3, padding=1)
        self.conv = nn.Conv2d(128, 80, 3, padding=1)
        self.out_channels = 82

    def forward(self, flow: torch.Tensor, corr: torch.Tensor) -> torch.Tensor:
        cor = F.relu(self.convc1(corr))
        flo = F.relu(self.convf2(F.relu(self.convf1(flow))))
        out = F.relu(self.conv(torch.cat([cor, flo], dim=1)))
        return torch.cat([out, flow], dim=1)


def _gru_step(h: torch.Tensor, x: torch.Tensor, convz: nn.Conv2d, convr: nn.Conv2d, convq: nn.Conv2d) -> torch.Tensor:
    hx = torch.cat([h, x], dim=1)
    z = torch.sigmoid(convz(hx))
    r = torch.sigmoid(convr(hx))
    q = torch.tanh(convq(torch.cat([r * h, x], dim=1)))
    return (1 - z) * h + z * q


class ConvGRU(nn.Module):
    """RAFT-small: one GRU with 3x3 convolutions."""

    def __init__(self, hidden_dim: int, input_dim: int) -> None:
        super().__init__()
        channels = hidden_dim + input_dim
        self.convz = nn.Conv2d(channels, hidden_dim, 3, padding=1)
        self.convr = nn.Conv2d(channels, hidden_dim, 3, padding=1)
        self.convq = nn.Conv2d(channels, hidden_dim, 3, padding=1)

    def forward(self, h: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return _gru_step(h, x, self.convz, self.convr, self.convq)


class SepConvGRU(nn.Module):
    """RAFT-large: a horizontal (1x5) GRU step followed by a vertical (5x1) one."""

    def __init__(self, hidden_dim: int, input_dim: int) -> None:
        super().__init__()
        channels = hidden_dim + input_dim
        self.convz1 = nn.Conv2d(channels, hidden_dim, (1, 5), padding=(0, 2))
        self.convr1 = nn.Conv2d(channels, hidden_dim, (1, 5), padding=(0, 2))
        self.convq1 = nn.Conv2d(channels, hidden_dim, (1, 5), padding=(0, 2))
        self.convz2 = nn.Conv2d(channels, hidden_dim, (5, 1), padding=(2, 0))
        self.convr2 = nn.Conv2d(channels, hidden_dim, (5, 1), padding=(2, 0))
        self.convq2 = nn.Conv2d(channels, hidden_dim, (5, 1), padding=(2, 0))

    def forward(self, h: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        h = _gru_step(h, x, self.convz1, self.convr1, self.convq1)
        return _gru_step(h, x, self.convz2, self.convr2, self.convq2)


class FlowHead(nn.Module):
    def __init__(self, input_dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(input_dim, hidden_dim, 3, padding=1)
        self.conv2 = nn.Conv2d(hidden_dim, 2, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(F.relu(self.conv1(x)))


class UpdateBlock(nn.Module):
    """One refinement step: (hidden, context, correlation, flow) -> (hidden', delta_flow).

    The upsampling-mask head (RAFT-large only) is separate, `up_mask`, because inference needs the
    mask of the last hidden state alone; the published loop evaluates it at every iteration.
    """

    def __init__(self, config: RAFTConfig) -> None:
        super().__init__()
        self.encoder: BasicMotionEncoder | SmallMotionEncoder
        self.gru: SepConvGRU | ConvGRU
        self.mask: nn.Sequential | None
        if config.variant == "large":
            self.encoder = BasicMotionEncoder(config.corr_channels)
            self.gru = SepConvGRU(config.hidden_dim, config.context_dim + self.encoder.out_channels)
            self.flow_head = FlowHead(config.hidden_dim, 256)
        else:
            self.encoder = SmallMotionEncoder(config.corr_channels)
            self.gru = ConvGRU(config.hidden_dim, config.context_dim + self.encoder.out_channels)
            self.flow_head = FlowHead(config.hidden_dim, 128)
        if config.convex_upsampling:
            self.mask = nn.Sequential(
                nn.Conv2d(config.hidden_dim, 256, 3, padding=1),
                nn.ReLU(inplace=True),
                nn.Conv2d(256, 64 * 9, 1),
            )
        else:
            self.mask = None

    @property
    def dtype(self) -> torch.dtype:
        return self.flow_head.conv1.weight.dtype

    def motion_features(self, corr: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
        """corr: (B, L*(2r+1)^2, H, W), flow: (B, 2, H, W), both float32 -> (B, C, H, W) in self.dtype."""
        return self.encoder(flow.to(self.dtype), corr.to(self.dtype))

    def forward(
        self, net: torch.Tensor, inp: torch.Tensor, corr: torch.Tensor, flow: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns the new hidden state (self.dtype) and delta_flow (B, 2, H, W) float32."""
        return self.refine(net, inp, self.motion_features(corr, flow))

    def refine(self, net: torch.Tensor, inp: torch.Tensor, motion: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The GRU and the flow head, given the motion features -> (net, delta_flow float32)."""
        net = self.gru(net, torch.cat([inp, motion], dim=1))
        return net, self.flow_head(net).float()

    def up_mask(self, net: torch.Tensor) -> torch.Tensor | None:
        """Convex-upsampling logits (B, 9*8*8, H, W) float32, or None for bilinear upsampling."""
        if self.mask is None:
            return None
        # Scaled by 0.25 as in the published code, "to balance gradients" (RAFT, core/update.py);
        # trained weights expect it.
        return 0.25 * self.mask(net).float()
