"""banyan.model"""
