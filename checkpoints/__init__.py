"""checkpoints: save / restore / load-for-evaluation on top of Orbax."""
