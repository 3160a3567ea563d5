"""Emergency-center real-time coordination: the domain core (wire protocol, codec, store, settings)."""
