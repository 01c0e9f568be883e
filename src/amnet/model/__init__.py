"""The AMNet model: embedding, AME, GAM pyramid, heads and losses."""

from amnet.model.amnet import AMNet, AMNetLoss, AMNetOutput

__all__ = ["AMNet", "AMNetLoss", "AMNetOutput"]
