"""Tests of banyan.rl (the RL lab)."""
