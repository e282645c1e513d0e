"""banyan.rl"""
