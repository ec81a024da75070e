"""memplan: plan, predict and measure the optimizer state of a model under a byte budget.

The library never imports typer or rich; importing it does not import torch either, so
planning from a bundled profile starts quickly. Modules that need torch import it themselves.
"""

__version__ = "0.1.0"
