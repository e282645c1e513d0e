"""banyan.train"""
