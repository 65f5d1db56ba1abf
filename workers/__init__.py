"""Workers: the backends that serve model roles (``backend``: the protocol; ``local``, ``remote``, ``embedder``:
one file each; ``factory``: which one a role's configuration asks for) and the pool that routes calls to them."""
