"""banyan.eval"""
