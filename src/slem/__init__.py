"""slem: simulating learning methodology.

SLeM learns the *rule* that sets a learning process (which samples to trust, which loss, what
learning rate) by bilevel optimization on tasks that have a small trusted meta set, then applies
that rule frozen to new tasks. See ``DESIGN.md`` for the layers.
"""

from slem._version import __version__
from slem.errors import SlemError

__all__ = ["SlemError", "__version__"]
