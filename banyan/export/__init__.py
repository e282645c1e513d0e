"""banyan.export"""
