"""banyan.losses"""
