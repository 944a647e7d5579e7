"""Architecture configuration of RAFT (Teed & Deng, ECCV 2020)."""

from __future__ import annotations

from dataclasses import dataclass

from raft_engine.errors import InputError

VARIANTS = ("large", "small")


@dataclass(frozen=True)
class RAFTConfig:
    """What distinguishes one RAFT architecture from another.

    The two presets (`large`, `small`) reproduce the published networks; trained checkpoints only fit them.

    Attributes:
        variant: "large" or "small".
        encoder_widths: Stem and layer widths of the feature and context encoders (stem, layer1, layer2,
            layer3).
        encoder_block: "residual" (two 3x3 convs, RAFT-large) or "bottleneck" (1x1-3x3-1x1, RAFT-small).
        context_norm: Normalisation of the context encoder: "batch" (BatchNorm, eval statistics) for large,
            "none" for small.
        feature_dim: Channels of the feature encoder's output.
        hidden_dim: Channels of the update block's hidden state (the first part of the context encoder's
            output).
        context_dim: Channels of the context features (the rest of the context encoder's output).
        corr_levels: Levels of the correlation pyramid.
        corr_radius: Radius r of the correlation lookup: a (2r+1)^2 window on each level.
        convex_upsampling: Convex upsampling with a learned 9x8x8 mask (large), else bilinear x8 (small).

    Raises:
        InputError: An unknown variant, encoder_block or context_norm, or corr_levels or corr_radius below 1.
    """

    variant: str
    # Stem and layer widths of the feature and context encoders (stem, layer1, layer2, layer3).
    encoder_widths: tuple[int, int, int, int]
    # "residual" (two 3x3 convs, RAFT-large) or "bottleneck" (1x1-3x3-1x1, RAFT-small).
    encoder_block: str
    # Normalisation of the context encoder: BatchNorm (eval statistics) for large, none for small.
    context_norm: str
    feature_dim: int
    hidden_dim: int
    context_dim: int
    corr_levels: int
    corr_radius: int
    # Convex upsampling with a learned 9x8x8 mask (large) or bilinear x8 (small).
    convex_upsampling: bool

    def __post_init__(self) -> None:
        if self.variant not in VARIANTS:
            raise InputError(f"unknown RAFT variant {self.variant!r}; expected one of {VARIANTS}")
        if self.encoder_block not in ("residual", "bottleneck"):
            raise InputError(f"unknown encoder_block {self.encoder_block!r}; expected 'residual' or 'bottleneck'")
        if self.context_norm not in ("batch", "none"):
            raise InputError(f"unknown context_norm {self.context_norm!r}; expected 'batch' or 'none'")
        if self.corr_levels < 1 or self.corr_radius < 1:
            raise InputError(f"corr_levels and corr_radius must be >= 1, got {self.corr_levels} and {self.corr_radius}")

    @classmethod
    def large(cls) -> RAFTConfig:
        """The published RAFT-large."""
        return cls(
            variant="large",
            encoder_widths=(64, 64, 96, 128),
            encoder_block="residual",
            context_norm="batch",
            feature_dim=256,
            hidden_dim=128,
            context_dim=128,
            corr_levels=4,
            corr_radius=4,
            convex_upsampling=True,
        )

    @classmethod
    def small(cls) -> RAFTConfig:
        """The published RAFT-small."""
        return cls(
            variant="small",
            encoder_widths=(32, 32, 64, 96),
            encoder_block="bottleneck",
            context_norm="none",
            feature_dim=128,
            hidden_dim=96,
            context_dim=64,
            corr_levels=4,
            corr_radius=3,
            convex_upsampling=False,
        )

    @classmethod
    def from_variant(cls, variant: str) -> RAFTConfig:
        """The preset of a variant name.

        Args:
            variant: "large" or "small".

        Returns:
            `RAFTConfig.large()` or `RAFTConfig.small()`.

        Raises:
            InputError: Another name.
        """
        if variant == "large":
            return cls.large()
        if variant == "small":
            return cls.small()
        raise InputError(f"unknown RAFT variant {variant!r}; expected one of {VARIANTS}")

    @property
    def corr_channels(self) -> int:
        """Channels of the motion encoder's correlation input: levels x (2r+1)^2."""
        return self.corr_levels * (2 * self.corr_radius + 1) ** 2

    @property
    def min_feature_size(self) -> int:
        """Smallest side of the 1/8 feature grid: the coarsest pyramid level must keep 2 cells.

        The published lookup normalises coordinates by (size - 1), undefined for a 1-cell level.
        """
        return 2**self.corr_levels

    @property
    def min_image_size(self) -> int:
        """Smallest side of a padded input image in pixels: 8 x `min_feature_size`."""
        return 8 * self.min_feature_size
