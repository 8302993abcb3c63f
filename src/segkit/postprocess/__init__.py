"""From probabilities to final masks: the tuned parameters and the steps they choose."""
