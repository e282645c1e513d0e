"""banyan.dist"""
