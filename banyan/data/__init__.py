"""banyan.data"""
