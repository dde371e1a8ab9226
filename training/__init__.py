"""img2music training: Study II dataset construction, projector models, losses, training, evaluation."""
